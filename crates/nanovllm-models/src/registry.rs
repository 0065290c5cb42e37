//! Architecture registry: `architectures[0]` of config.json → constructor.
//! A new architecture is one file plus one line here.

use std::path::Path;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::loader::LoadFormat;
use crate::model::{Model, ModelContext};

/// The architectures this build can load.
pub fn supported_architectures() -> Vec<&'static str> {
    todo!()
}

/// Builds the model named by `config.architecture`, loading weights from `dir`
/// (ignored for [`LoadFormat::Dummy`]) onto `ctx.backend`, sharded by `ctx.shard`.
pub fn load_model(
    _config: &ModelConfig,
    _dir: &Path,
    _format: LoadFormat,
    _ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    todo!()
}
