//! Tests of strict loading: a checkpoint tensor no layer reads is an error naming it,
//! except the ones [`why_ignorable`] lists.

use std::path::Path;
use std::sync::Arc;

use nanovllm_kernels::{Communicator, CpuBackend, DType, ThreadCommunicator};

use super::*;
use crate::dummy::DummySource;
use crate::model::ModelContext;
use crate::registry::load_model;
use crate::safetensors_source::SafetensorsSource;
use crate::test_util::{cpu_ctx, fixture, iota, write_safetensors, RawTensor, TempDir};

fn config(tie_word_embeddings: bool) -> ModelConfig {
    let json = format!(
        r#"{{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 101,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": {tie_word_embeddings}, "torch_dtype": "float32"}}"#
    );
    ModelConfig::from_json_str(&json, Path::new("inline")).unwrap()
}

fn unused_names(result: Result<(), ModelError>) -> (usize, Vec<String>, String) {
    match result {
        Err(e @ ModelError::UnusedTensors { .. }) => {
            let msg = e.to_string();
            let ModelError::UnusedTensors { count, first, .. } = e else {
                unreachable!()
            };
            (count, first, msg)
        }
        other => panic!("expected UnusedTensors, got {other:?}"),
    }
}

#[test]
fn tensors_never_read_are_named() {
    let dir = TempDir::new("strict");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            RawTensor::f32("w", &[8, 12], &iota(96)),
            RawTensor::bf16("n", &[12], &iota(12)),
            RawTensor::f16("h", &[4, 8], &iota(32)),
        ],
    );
    let src = SafetensorsSource::open(dir.path()).unwrap();
    let backend = CpuBackend::new();
    let loader = WeightLoader::new(&src, &backend, ShardSpec::default());
    // A slice counts as a read.
    loader.column_shard("w", [8, 12]).unwrap();
    let (count, first, msg) = unused_names(loader.check_all_used(&config(true)));
    assert_eq!((count, first), (2, vec!["h".to_owned(), "n".to_owned()]));
    assert!(
        msg.contains("2 tensor(s) that Qwen3ForCausalLM does not use: h, n;"),
        "{msg}"
    );
    loader.full("h", &[4, 8]).unwrap();
    loader.full("n", &[12]).unwrap();
    loader.check_all_used(&config(true)).unwrap();
}

#[test]
fn many_unused_tensors_list_the_first_few_and_the_count() {
    let dir = TempDir::new("strict-many");
    let tensors: Vec<RawTensor> = (0..8)
        .map(|i| RawTensor::f32(&format!("x{i}"), &[1], &[1.0]))
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    let src = SafetensorsSource::open(dir.path()).unwrap();
    let backend = CpuBackend::new();
    let loader = WeightLoader::new(&src, &backend, ShardSpec::default());
    let (count, first, msg) = unused_names(loader.check_all_used(&config(true)));
    assert_eq!((count, first.len()), (8, 5));
    assert!(msg.contains(": x0, x1, x2, x3, x4 and 3 more;"), "{msg}");
}

#[test]
fn a_dummy_source_has_nothing_to_check() {
    let src = DummySource::new(DType::F32, 0);
    let backend = CpuBackend::new();
    let loader = WeightLoader::new(&src, &backend, ShardSpec::default());
    loader.check_all_used(&config(false)).unwrap();
}

#[test]
fn the_ignorable_list_is_explicit() {
    let (tied, untied) = (config(true), config(false));
    for name in [
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.layers.31.self_attn.rotary_emb.cos_cached",
        "model.layers.31.self_attn.rotary_emb.sin_cached",
    ] {
        assert!(why_ignorable(name, &tied).is_some(), "{name}");
        assert!(why_ignorable(name, &untied).is_some(), "{name}");
    }
    assert!(why_ignorable("lm_head.weight", &tied).is_some());
    assert!(why_ignorable("lm_head.weight", &untied).is_none());
    for name in [
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.q_norm.weight",
        "model.embed_tokens.weight",
        "inv_freq",
    ] {
        assert!(why_ignorable(name, &tied).is_none(), "{name}");
    }
}

/// `fixtures/qwen3-tiny` (tied, 4 q / 2 kv heads of 32) plus `extra` in a second file.
fn qwen3_tiny_with(extra: &[RawTensor]) -> TempDir {
    let dir = TempDir::new("strict-qwen3");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("qwen3-tiny").join(file), dir.path().join(file)).unwrap();
    }
    write_safetensors(&dir.path().join("extra.safetensors"), extra);
    dir
}

/// Loads `dir`'s model on each rank of `world_size` (loading runs no collective, so the
/// ranks load one after the other) and returns each rank's outcome.
fn load_ranks(dir: &Path, world_size: usize) -> Vec<Result<(), ModelError>> {
    let config = ModelConfig::from_dir(dir).unwrap();
    ThreadCommunicator::group(world_size)
        .into_iter()
        .map(|comm| {
            let ctx = ModelContext {
                backend: Arc::new(CpuBackend::new()),
                shard: ShardSpec {
                    rank: comm.rank(),
                    world_size,
                },
                quantization: None,
                comm: Arc::new(comm),
            };
            load_model(&config, dir, LoadFormat::Safetensors, &ctx).map(|_| ())
        })
        .collect()
}

#[test]
fn a_checkpoint_with_an_unused_tensor_fails_naming_it_on_every_rank() {
    // A Qwen2-style bias the Qwen3 loader does not read: dropping it silently would change
    // the outputs.
    let bias = "model.layers.1.self_attn.q_proj.bias";
    let dir = qwen3_tiny_with(&[RawTensor::f32(bias, &[128], &iota(128))]);
    for world_size in [1, 2] {
        for (rank, result) in load_ranks(dir.path(), world_size).into_iter().enumerate() {
            let (count, first, msg) = unused_names(result);
            assert_eq!((count, first), (1, vec![bias.to_owned()]), "rank {rank}");
            assert!(msg.contains("Qwen3ForCausalLM"), "{msg}");
        }
    }
}

#[test]
fn ignorable_tensors_load() {
    let dir = qwen3_tiny_with(&[
        RawTensor::f32(
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            &[16],
            &iota(16),
        ),
        // qwen3-tiny ties its LM head, so transformers ignores a stored one.
        RawTensor::f32("lm_head.weight", &[512, 64], &iota(512 * 64)),
    ]);
    for world_size in [1, 2] {
        for result in load_ranks(dir.path(), world_size) {
            result.unwrap();
        }
    }
}

/// Every committed fixture uses every tensor it stores (or only ignorable ones are left).
#[test]
fn every_fixture_loads_strictly() {
    let root = fixture("");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("config.json").is_file() {
            continue;
        }
        let config = ModelConfig::from_dir(&dir).unwrap();
        if let Err(e) = load_model(&config, &dir, LoadFormat::Safetensors, &cpu_ctx()) {
            panic!("{}: {e}", dir.display());
        }
        loaded += 1;
    }
    assert!(
        loaded >= 6,
        "only {loaded} fixtures under {}",
        root.display()
    );
}
