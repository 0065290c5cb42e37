//! Architecture registry: `architectures[0]` of config.json → constructor and declared
//! [`Features`]. A new architecture built from the shared layers is one file (its loader
//! and its `FEATURES`) plus one line in `ARCHITECTURES`; one that brings a new feature
//! (biases, windows, a routing variant) also edits the shared layers that gain a parameter
//! and [`Features`] (see docs/ARCHITECTURE.md, *Architectures*).

use std::path::Path;

use nanovllm_kernels::DType;

use crate::cast_source::CastSource;
use crate::config::ModelConfig;
use crate::dummy::DummySource;
use crate::error::ModelError;
use crate::features::{check_features, Features};
use crate::fp8_checkpoint::Fp8CheckpointSource;
use crate::linear_weights::WeightQuantization;
use crate::loader::{LoadFormat, WeightSource};
use crate::model::{Model, ModelContext};
use crate::progress::{LoadProgressFn, ProgressSource};
use crate::safetensors_source::SafetensorsSource;

/// Builds a model for one rank from its config, a weight source and the context.
pub type Constructor =
    fn(&ModelConfig, &dyn WeightSource, &ModelContext) -> Result<Box<dyn Model>, ModelError>;

/// One registry row.
pub struct Architecture {
    /// `architectures[0]` in config.json.
    pub name: &'static str,
    pub load: Constructor,
    /// What the architecture supports; checked against the config before loading.
    pub features: &'static Features,
}

/// One line per architecture.
const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: crate::qwen3::ARCHITECTURE,
        load: crate::qwen3::load,
        features: &crate::qwen3::FEATURES,
    },
    Architecture {
        name: crate::mixtral::ARCHITECTURE,
        load: crate::mixtral::load,
        features: &crate::mixtral::FEATURES,
    },
    Architecture {
        name: crate::llama::ARCHITECTURE,
        load: crate::llama::load,
        features: &crate::llama::FEATURES,
    },
    Architecture {
        name: crate::mistral::ARCHITECTURE,
        load: crate::mistral::load,
        features: &crate::mistral::FEATURES,
    },
    Architecture {
        name: crate::qwen2::ARCHITECTURE,
        load: crate::qwen2::load,
        features: &crate::qwen2::FEATURES,
    },
    Architecture {
        name: crate::qwen3_moe::ARCHITECTURE,
        load: crate::qwen3_moe::load,
        features: &crate::qwen3_moe::FEATURES,
    },
];

/// Seed of dummy weights: fixed, so dummy runs are reproducible.
const DUMMY_SEED: u64 = 0;

/// The architectures this build can load.
pub fn supported_architectures() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|a| a.name).collect()
}

/// The declared features of architecture `name`; `None` for one this build cannot load.
pub fn features_of(name: &str) -> Option<&'static Features> {
    find(name).map(|a| a.features)
}

fn find(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.name == name)
}

/// Builds the model named by `config.architecture`, loading weights from `dir`
/// (ignored for [`LoadFormat::Dummy`]) onto `ctx.backend`, sharded by `ctx.shard`.
/// A config asking for a feature the architecture does not declare is refused first.
pub fn load_model(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, ModelError> {
    load_model_as(config, dir, format, ctx, None)
}

/// [`load_model`] with every float weight converted to `weight_dtype` while loading
/// ([`CastSource`]); `None` keeps each tensor's stored dtype (dummy weights: the config's).
/// The linear weights are then quantized when `ctx.quantization` says so
/// ([`crate::linear_weights`]); a checkpoint already quantized (`quantization_config`:
/// FP8, [`Fp8CheckpointSource`]) loads as stored, and asking to quantize it again is
/// [`ModelError::AlreadyQuantized`].
pub fn load_model_as(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    ctx: &ModelContext,
    weight_dtype: Option<DType>,
) -> Result<Box<dyn Model>, ModelError> {
    load_model_with_progress(config, dir, format, ctx, weight_dtype, &|_| {})
}

/// [`load_model_as`], reporting the bytes read so far to `progress` after every tensor
/// read (see [`crate::progress`]).
pub fn load_model_with_progress(
    config: &ModelConfig,
    dir: &Path,
    format: LoadFormat,
    ctx: &ModelContext,
    weight_dtype: Option<DType>,
    progress: LoadProgressFn<'_>,
) -> Result<Box<dyn Model>, ModelError> {
    let arch = find(&config.architecture).ok_or_else(|| ModelError::UnknownArchitecture {
        name: config.architecture.clone(),
        supported: supported_architectures(),
    })?;
    check_features(config, arch.name, arch.features)?;
    if let (Some(requested), Some(stored)) = (ctx.quantization, &config.quantization) {
        return Err(ModelError::AlreadyQuantized {
            requested: requested.dtype,
            method: stored.method().to_owned(),
        });
    }
    let whole = ctx.shard.world_size == 1;
    match format {
        LoadFormat::Safetensors => {
            // Progress counts the bytes read from the checkpoint, before conversion, so
            // that it ends at the checkpoint's size.
            let stored = SafetensorsSource::open(dir)?;
            let read = ProgressSource::new(&stored, whole, progress);
            let fp8;
            let checkpoint: &dyn WeightSource = match &config.quantization {
                Some(quantization) => {
                    fp8 = Fp8CheckpointSource::new(&read, quantization)?;
                    &fp8
                }
                None => &read,
            };
            match weight_dtype {
                None => (arch.load)(config, checkpoint, ctx),
                Some(dtype) => (arch.load)(config, &CastSource::new(checkpoint, dtype), ctx),
            }
        }
        LoadFormat::Dummy => {
            let source = DummySource::new(weight_dtype.unwrap_or(config.dtype), DUMMY_SEED);
            // Dummy weights of an FP8 checkpoint's shapes are quantized to its format.
            let ctx = &ModelContext {
                quantization: ctx.quantization.or(config.quantization.as_ref().map(|_| {
                    WeightQuantization {
                        dtype: DType::Fp8G128,
                        lm_head: false,
                    }
                })),
                ..ctx.clone()
            };
            (arch.load)(config, &ProgressSource::new(&source, whole, progress), ctx)
        }
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
