//! Architecture registry: `architectures[0]` of config.json → constructor.
//! A new architecture built from the shared layers is one file plus one line in
//! [`ARCHITECTURES`]; one that brings a new feature (biases, rope scaling, windows) also edits
//! the shared layers and `config.rs` (see docs/ARCHITECTURE.md, *Architectures*).

use std::path::Path;

use crate::config::ModelConfig;
use crate::dummy::DummySource;
use crate::error::ModelError;
use crate::loader::{LoadFormat, WeightSource};
use crate::model::{Model, ModelContext};
use crate::safetensors_source::SafetensorsSource;

/// Builds a model for one rank from its config, a weight source and the context.
pub type Constructor =
    fn(&ModelConfig, &dyn WeightSource, &ModelContext) -> Result<Box<dyn Model>, ModelError>;

/// One line per architecture: the `architectures[0]` name and its constructor.
const ARCHITECTURES: &[(&str, Constructor)] = &[
    (crate::qwen3::ARCHITECTURE, crate::qwen3::load),
    (crate::mixtral::ARCHITECTURE, crate::mixtral::load),
];

/// Seed of dummy weights: fixed, so dummy runs are reproducible.
const DUMMY_SEED: u64 = 0;

/// The architectures this build can load.
pub fn supported_architectures() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|(name, _)| *name).collect()
}

/// Builds the model named by `config.architecture`, loading weights from `dir`
/// (ignored for [`LoadFormat::Dummy`]) onto `ctx.backend`, sharded by `ctx.shard`.
pub fn load_model(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    let constructor = ARCHITECTURES
        .iter()
        .find(|(name, _)| *name == config.architecture)
        .map(|(_, c)| *c)
        .ok_or_else(|| ModelError::UnknownArchitecture {
            name: config.architecture.clone(),
            supported: supported_architectures(),
        })?;
    match format {
        LoadFormat::Safetensors => constructor(config, &SafetensorsSource::open(dir)?, ctx),
        LoadFormat::Dummy => constructor(config, &DummySource::new(config.dtype, DUMMY_SEED), ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::cpu_ctx;

    fn tiny_config(architecture: &str) -> ModelConfig {
        let json = format!(
            r#"{{"architectures": ["{architecture}"], "hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                "vocab_size": 20, "max_position_embeddings": 8, "rms_norm_eps": 1e-6,
                "torch_dtype": "bfloat16"}}"#
        );
        ModelConfig::from_json_str(&json, Path::new("inline")).unwrap()
    }

    #[test]
    fn qwen3_is_supported() {
        assert!(supported_architectures().contains(&"Qwen3ForCausalLM"));
    }

    #[test]
    fn unknown_architecture_lists_the_supported_ones() {
        let config = tiny_config("GPT2LMHeadModel");
        match load_model(&config, Path::new("."), LoadFormat::Dummy, &cpu_ctx()) {
            Err(e @ ModelError::UnknownArchitecture { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("GPT2LMHeadModel") && msg.contains("Qwen3ForCausalLM"),
                    "{msg}"
                );
            }
            Err(e) => panic!("expected UnknownArchitecture, got {e}"),
            Ok(_) => panic!("expected UnknownArchitecture, got a model"),
        }
    }

    #[test]
    fn dummy_format_builds_without_a_checkpoint() {
        let config = tiny_config("Qwen3ForCausalLM");
        let model = load_model(
            &config,
            Path::new("/nonexistent"),
            LoadFormat::Dummy,
            &cpu_ctx(),
        )
        .unwrap();
        let spec = model.kv_cache_spec();
        assert_eq!(
            (spec.num_layers, spec.num_kv_heads, spec.head_dim),
            (1, 1, 8)
        );
        assert_eq!(model.config(), &config);
    }

    #[test]
    fn safetensors_format_without_a_checkpoint_says_so() {
        let config = tiny_config("Qwen3ForCausalLM");
        let dir = crate::test_util::TempDir::new("registry-empty");
        assert!(matches!(
            load_model(&config, dir.path(), LoadFormat::Safetensors, &cpu_ctx()),
            Err(ModelError::NoCheckpoint { .. })
        ));
    }
}
