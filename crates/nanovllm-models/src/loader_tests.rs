//! Tests of loading and tensor-parallel slicing against plain references.

use nanovllm_kernels::{CpuBackend, DType, Tensor};

use super::*;
use crate::dummy::DummySource;
use crate::safetensors_source::SafetensorsSource;
use crate::test_util::{iota, write_safetensors, RawTensor, TempDir};

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// Rows `rows` of a row-major `[_, cols]` matrix.
fn rows_of(data: &[f32], cols: usize, rows: Range<usize>) -> Vec<f32> {
    data[rows.start * cols..rows.end * cols].to_vec()
}

/// Concatenates row-major `[r, c_i]` matrices along dim 1.
fn concat_cols(parts: &[Vec<f32>], rows: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for r in 0..rows {
        for p in parts {
            let c = p.len() / rows;
            out.extend_from_slice(&p[r * c..(r + 1) * c]);
        }
    }
    out
}

/// A checkpoint dir with `w: [8, 12]` (f32), `n: [12]` (bf16) and `h: [4, 8]` (f16).
fn small_checkpoint() -> TempDir {
    let dir = TempDir::new("loader");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            RawTensor::f32("w", &[8, 12], &iota(96)),
            RawTensor::bf16("n", &[12], &iota(12)),
            RawTensor::f16("h", &[4, 8], &iota(32)),
        ],
    );
    dir
}

fn loader(source: &dyn WeightSource, rank: usize, world_size: usize) -> WeightLoader<'_> {
    static BACKEND: CpuBackend = CpuBackend;
    WeightLoader::new(source, &BACKEND, ShardSpec { rank, world_size })
}

#[test]
fn loads_full_tensors_in_their_stored_dtype() {
    let dir = small_checkpoint();
    let src = SafetensorsSource::open(dir.path()).unwrap();
    let l = loader(&src, 0, 1);
    let w = l.full("w", &[8, 12]).unwrap();
    assert_eq!((w.dtype(), w.shape()), (DType::F32, &[8, 12][..]));
    assert_eq!(values(&w), iota(96));
    let n = l.full("n", &[12]).unwrap();
    assert_eq!(n.dtype(), DType::BF16);
    assert_eq!(values(&n), iota(12));
    let h = l.full("h", &[4, 8]).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    assert_eq!(values(&h), iota(32));
    assert_eq!(src.names(), vec!["h", "n", "w"]);
}

/// Column and row shards of every rank concatenate back to the full tensor.
fn check_shards_reassemble(src: &dyn WeightSource, name: &str, shape: [usize; 2]) {
    let full = values(&loader(src, 0, 1).full(name, &shape).unwrap());
    for world in [1, 2, 4] {
        let mut by_rows = Vec::new();
        let mut by_cols = Vec::new();
        for rank in 0..world {
            let l = loader(src, rank, world);
            let col = l.column_shard(name, shape).unwrap();
            assert_eq!(col.shape(), &[shape[0] / world, shape[1]]);
            by_rows.extend(values(&col));
            let row = l.row_shard(name, shape).unwrap();
            assert_eq!(row.shape(), &[shape[0], shape[1] / world]);
            by_cols.push(values(&row));
        }
        assert_eq!(by_rows, full, "column shards, world {world}");
        assert_eq!(
            concat_cols(&by_cols, shape[0]),
            full,
            "row shards, world {world}"
        );
    }
}

#[test]
fn shards_reassemble_safetensors() {
    let dir = small_checkpoint();
    let src = SafetensorsSource::open(dir.path()).unwrap();
    check_shards_reassemble(&src, "w", [8, 12]);
    check_shards_reassemble(&src, "h", [4, 8]);
}

#[test]
fn shards_reassemble_dummy() {
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        check_shards_reassemble(&DummySource::new(dtype, 7), "w", [8, 12]);
    }
}

#[test]
fn qkv_packing_puts_each_ranks_q_then_k_then_v() {
    // 4 q heads and 2 kv heads of head_dim 2, hidden 3: q [8, 3], k/v [4, 3].
    let (hd, hidden) = (2, 3);
    let q: Vec<f32> = (0..24).map(|i| 100.0 + i as f32).collect();
    let k: Vec<f32> = (0..12).map(|i| 200.0 + i as f32).collect();
    let v: Vec<f32> = (0..12).map(|i| 300.0 + i as f32).collect();
    let dir = TempDir::new("qkv");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            RawTensor::f32("a.q_proj.weight", &[8, 3], &q),
            RawTensor::f32("a.k_proj.weight", &[4, 3], &k),
            RawTensor::f32("a.v_proj.weight", &[4, 3], &v),
        ],
    );
    let src = SafetensorsSource::open(dir.path()).unwrap();
    let parts = [
        ("a.q_proj.weight", 4 * hd),
        ("a.k_proj.weight", 2 * hd),
        ("a.v_proj.weight", 2 * hd),
    ];
    for world in [1, 2] {
        for rank in 0..world {
            let packed = loader(&src, rank, world)
                .packed_column_shard(&parts, hidden)
                .unwrap();
            let (q_rows, kv_rows) = (8 / world, 4 / world);
            let mut expected = rows_of(&q, hidden, rank * q_rows..(rank + 1) * q_rows);
            expected.extend(rows_of(&k, hidden, rank * kv_rows..(rank + 1) * kv_rows));
            expected.extend(rows_of(&v, hidden, rank * kv_rows..(rank + 1) * kv_rows));
            assert_eq!(packed.shape(), &[q_rows + 2 * kv_rows, hidden]);
            assert_eq!(values(&packed), expected, "rank {rank} of {world}");
        }
    }
    // The same layer through QkvParallelLinear has the same weight.
    let qkv =
        crate::layers::QkvParallelLinear::load(&loader(&src, 1, 2), "a", hidden, 4, 2, hd, false)
            .unwrap();
    let direct = loader(&src, 1, 2)
        .packed_column_shard(&parts, hidden)
        .unwrap();
    assert_eq!(values(qkv.weight()), values(&direct));
}

#[test]
fn vocab_shards_pad_the_last_ranks_with_zero_rows() {
    let (vocab, hidden) = (10, 3);
    let dir = TempDir::new("vocab");
    let table: Vec<f32> = (1..=30).map(|i| i as f32).collect();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[RawTensor::f32("emb", &[vocab, hidden], &table)],
    );
    let src = SafetensorsSource::open(dir.path()).unwrap();
    for world in [1, 2, 3, 4] {
        let per = vocab.div_ceil(world);
        let mut real = Vec::new();
        for rank in 0..world {
            let shard = loader(&src, rank, world)
                .vocab_shard("emb", vocab, hidden)
                .unwrap();
            assert_eq!(shard.shape(), &[per, hidden]);
            let v = values(&shard);
            let spec = ShardSpec {
                rank,
                world_size: world,
            };
            let n_real = spec.vocab_range(vocab).len();
            assert!(
                v[n_real * hidden..].iter().all(|&x| x == 0.0),
                "padding of rank {rank}"
            );
            real.extend_from_slice(&v[..n_real * hidden]);
        }
        assert_eq!(real, table, "world {world}");
    }
    // World 4: 3 rows each, the last rank holds row 9 and two padding rows.
    let last = ShardSpec {
        rank: 3,
        world_size: 4,
    };
    assert_eq!(
        (last.vocab_per_rank(vocab), last.vocab_range(vocab)),
        (3, 9..10)
    );
}

#[test]
fn sharded_checkpoint_through_index() {
    let dir = TempDir::new("index");
    write_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &[RawTensor::f32("a", &[2, 2], &[1.0, 2.0, 3.0, 4.0])],
    );
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[RawTensor::bf16("b", &[3], &[5.0, 6.0, 7.0])],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 22}, "weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let src = SafetensorsSource::open(dir.path()).unwrap();
    let l = loader(&src, 0, 1);
    assert_eq!(
        values(&l.full("a", &[2, 2]).unwrap()),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(values(&l.full("b", &[3]).unwrap()), vec![5.0, 6.0, 7.0]);

    // The index naming a shard that is not there.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    match SafetensorsSource::open(dir.path()) {
        Err(ModelError::MissingShard { index, shard }) => {
            assert!(index.ends_with("model.safetensors.index.json"));
            assert!(shard.ends_with("model-00002-of-00002.safetensors"));
        }
        other => panic!("expected MissingShard, got {other:?}"),
    }
}

#[test]
fn index_naming_a_tensor_its_shard_lacks_is_invalid() {
    let dir = TempDir::new("index-lies");
    write_safetensors(
        &dir.path().join("model-1.safetensors"),
        &[RawTensor::f32("a", &[1], &[1.0])],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-1.safetensors"}}"#,
    )
    .unwrap();
    match SafetensorsSource::open(dir.path()) {
        Err(ModelError::InvalidCheckpoint { path, msg }) => {
            assert!(path.ends_with("model-1.safetensors"));
            assert!(msg.contains("tensor b"), "{msg}");
        }
        other => panic!("expected InvalidCheckpoint, got {other:?}"),
    }
}

#[test]
fn missing_tensor_names_tensor_and_dir() {
    let dir = small_checkpoint();
    let src = SafetensorsSource::open(dir.path()).unwrap();
    assert!(!src.contains("lm_head.weight"));
    match loader(&src, 0, 1).full("lm_head.weight", &[8, 12]) {
        Err(e @ ModelError::MissingTensor { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("lm_head.weight"), "{msg}");
            assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn wrong_shape_reports_expected_and_found() {
    let dir = small_checkpoint();
    let src = SafetensorsSource::open(dir.path()).unwrap();
    match loader(&src, 0, 1).column_shard("w", [12, 8]) {
        Err(ModelError::WrongShape {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "w");
            assert_eq!((expected, found), (vec![12, 8], vec![8, 12]));
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

#[test]
fn unsupported_dtype_is_rejected_by_name() {
    let dir = TempDir::new("dtype");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[RawTensor {
            name: "ids".into(),
            dtype: safetensors::Dtype::I32,
            shape: vec![2],
            bytes: vec![0; 8],
        }],
    );
    let src = SafetensorsSource::open(dir.path()).unwrap();
    match loader(&src, 0, 1).full("ids", &[2]) {
        Err(ModelError::UnsupportedDType { name, dtype }) => {
            assert_eq!((name.as_str(), dtype.as_str()), ("ids", "I32"))
        }
        other => panic!("expected UnsupportedDType, got {other:?}"),
    }
}

#[test]
fn truncated_file_is_an_invalid_checkpoint_naming_the_path() {
    let dir = small_checkpoint();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() / 2, 20, 4] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match SafetensorsSource::open(dir.path()) {
            Err(ModelError::InvalidCheckpoint { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected InvalidCheckpoint for {keep} bytes, got {other:?}"),
        }
    }
}

#[test]
fn empty_dir_has_no_checkpoint() {
    let dir = TempDir::new("empty");
    assert!(matches!(
        SafetensorsSource::open(dir.path()),
        Err(ModelError::NoCheckpoint { .. })
    ));
}

#[test]
fn indivisible_world_size_is_a_shard_error_listing_working_sizes() {
    let dir = small_checkpoint();
    let src = SafetensorsSource::open(dir.path()).unwrap();
    match loader(&src, 0, 3).row_shard("w", [8, 12]) {
        Ok(_) => {}
        Err(e) => panic!("12 input features split 3 ways: {e}"),
    }
    match loader(&src, 0, 3).column_shard("w", [8, 12]) {
        Err(ModelError::Shard(msg)) => {
            assert!(msg.contains("world size 3"), "{msg}");
            assert!(msg.contains("output features of w (8)"), "{msg}");
            assert!(msg.contains("[1, 2, 4, 8]"), "{msg}");
        }
        other => panic!("expected Shard error, got {other:?}"),
    }
}

#[test]
fn dummy_weights_are_seeded_bounded_and_in_the_requested_dtype() {
    let a = DummySource::new(DType::BF16, 1);
    let w = a.read("x", &[64, 256], &Slice::Full).unwrap();
    assert_eq!((w.dtype(), w.shape()), (DType::BF16, &[64, 256][..]));
    let v = values(&w);
    let bound = 1.0 / 16.0; // 1/sqrt(256)
    assert!(
        v.iter().all(|x| x.abs() <= bound * 1.01),
        "2-d values within ±1/sqrt(fan_in)"
    );
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    assert!(
        mean.abs() < 0.05 * bound,
        "mean {mean} of a uniform ±{bound}"
    );
    // Deterministic per (seed, name); different names or seeds differ.
    assert_eq!(v, values(&a.read("x", &[64, 256], &Slice::Full).unwrap()));
    assert_ne!(v, values(&a.read("y", &[64, 256], &Slice::Full).unwrap()));
    let b = DummySource::new(DType::BF16, 2);
    assert_ne!(v, values(&b.read("x", &[64, 256], &Slice::Full).unwrap()));
    // Norm weights (1-d) around 1.
    let n = values(&a.read("norm", &[1000], &Slice::Full).unwrap());
    assert!(n.iter().all(|x| (0.89..=1.11).contains(x)));
}

#[test]
fn packing_tensors_of_different_dtypes_is_an_error() {
    let dir = TempDir::new("mixed");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            RawTensor::f32("gate", &[2, 2], &iota(4)),
            RawTensor::bf16("up", &[2, 2], &iota(4)),
        ],
    );
    let src = SafetensorsSource::open(dir.path()).unwrap();
    match loader(&src, 0, 1).packed_column_shard(&[("gate", 2), ("up", 2)], 2) {
        Err(ModelError::MixedDTypes {
            first,
            first_dtype,
            second,
            second_dtype,
        }) => assert_eq!(
            (first.as_str(), first_dtype, second.as_str(), second_dtype),
            ("gate", DType::F32, "up", DType::BF16)
        ),
        other => panic!("expected MixedDTypes, got {other:?}"),
    }
}

/// Vocab shards tile `0..vocab` exactly, in rank order, for uneven sizes too (including
/// more ranks than rows, where the last ranks hold only padding).
#[test]
fn vocab_ranges_tile_the_vocab_for_uneven_sizes() {
    for vocab in [1usize, 5, 10, 101, 151_936, 32_001] {
        for world_size in 1..=8 {
            let per = vocab.div_ceil(world_size);
            let mut next = 0;
            for rank in 0..world_size {
                let spec = ShardSpec { rank, world_size };
                assert_eq!(spec.vocab_per_rank(vocab), per);
                let range = spec.vocab_range(vocab);
                assert_eq!(
                    range.start, next,
                    "vocab {vocab} world {world_size} rank {rank}"
                );
                assert!(range.len() <= per);
                next = range.end;
            }
            assert_eq!(next, vocab, "vocab {vocab} world {world_size}");
        }
    }
    // 101 over 4 ranks: 26, 26, 26, then 23 real rows and 3 padding rows.
    let last = ShardSpec {
        rank: 3,
        world_size: 4,
    };
    assert_eq!(last.vocab_range(101), 78..101);
}

/// Head ranges are contiguous per rank and tile the heads (rank r: heads r*n/W..(r+1)*n/W).
#[test]
fn head_ranges_are_contiguous_and_tile_the_heads() {
    for (heads, world_size) in [(16, 1), (16, 2), (16, 4), (16, 8), (6, 3), (40, 8), (2, 2)] {
        let ranges: Vec<_> = (0..world_size)
            .map(|rank| {
                ShardSpec { rank, world_size }
                    .even_range("heads", heads)
                    .unwrap()
            })
            .collect();
        let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(
            flat,
            (0..heads).collect::<Vec<_>>(),
            "{heads} heads / {world_size}"
        );
    }
}

fn tp_config(q_heads: usize, kv_heads: usize, intermediate: usize) -> ModelConfig {
    let json = format!(
        r#"{{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
        "intermediate_size": {intermediate}, "num_hidden_layers": 1,
        "num_attention_heads": {q_heads}, "num_key_value_heads": {kv_heads}, "head_dim": 4,
        "vocab_size": 101, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "float32"}}"#
    );
    ModelConfig::from_json_str(&json, std::path::Path::new("inline")).unwrap()
}

#[test]
fn tensor_parallel_size_must_divide_heads_and_lists_working_sizes() {
    let config = tp_config(32, 8, 256);
    // 16 and 32 replicate each of the 8 KV heads on 2 and 4 ranks.
    for ok in [1, 2, 4, 8, 16, 32] {
        check_tensor_parallel_size(&config, ok).unwrap();
    }
    let msg = check_tensor_parallel_size(&config, 3)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tensor_parallel_size = 3 does not divide num_attention_heads = 32")
            && msg.contains("use 1, 2, 4, 8, 16 or 32"),
        "{msg}"
    );
    // The KV heads are the limit: 24 q heads, 4 kv heads; 6 neither divides 4 nor is a
    // multiple of it, while 8 and 12 replicate each KV head.
    let msg = check_tensor_parallel_size(&tp_config(24, 4, 240), 6)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(
            "tensor_parallel_size = 6 neither divides nor is a multiple of \
             num_key_value_heads = 4"
        ) && msg.contains("use 1, 2, 4, 8, 12 or 24"),
        "{msg}"
    );
    // MQA: one KV head replicated on every rank.
    for ok in [1, 2, 4, 8] {
        check_tensor_parallel_size(&tp_config(8, 1, 64), ok).unwrap();
    }
    // The MLP too: 8 / 8 heads but intermediate 36 → only 1, 2 or 4.
    let msg = check_tensor_parallel_size(&tp_config(8, 8, 36), 8)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("intermediate_size = 36") && msg.contains("use 1, 2 or 4"),
        "{msg}"
    );
    assert!(check_tensor_parallel_size(&config, 0).is_err());
}

/// Rank r of W holds its even share of the KV heads when W divides them, else the head
/// `r / (W / K)`; `kv_heads_per_rank` agrees, and every head is held by some rank.
#[test]
fn kv_head_ranges_split_or_replicate() {
    let range = |kv, rank, world_size| ShardSpec { rank, world_size }.kv_head_range(kv);
    for (kv, world, expected) in [
        (4, 2, vec![0..2, 2..4]),
        (2, 2, vec![0..1, 1..2]),
        (2, 4, vec![0..1, 0..1, 1..2, 1..2]),
        (1, 2, vec![0..1, 0..1]),
        (1, 4, vec![0..1; 4]),
        (8, 16, (0..16).map(|r| r / 2..r / 2 + 1).collect()),
    ] {
        let got: Vec<_> = (0..world).map(|r| range(kv, r, world).unwrap()).collect();
        assert_eq!(got, expected, "{kv} kv heads on {world} ranks");
        let spec = ShardSpec {
            rank: 0,
            world_size: world,
        };
        assert_eq!(spec.kv_heads_per_rank(kv), expected[0].len());
    }
    match range(4, 0, 6) {
        Err(ModelError::Shard(msg)) => assert!(msg.contains("num_key_value_heads (4)"), "{msg}"),
        other => panic!("expected a Shard error, got {other:?}"),
    }
}

/// q/k/v weights and biases of 4 q heads and 2 kv heads (head_dim 2, hidden 3), packed by
/// `QkvParallelLinear` at world sizes 1, 2 and 4 (4: each KV head on two ranks).
#[test]
fn qkv_weights_and_biases_pack_split_or_replicated_kv_heads() {
    let (hd, hidden, heads, kv_heads) = (2, 3, 4, 2);
    let q: Vec<f32> = (0..24).map(|i| 100.0 + i as f32).collect();
    let k: Vec<f32> = (0..12).map(|i| 200.0 + i as f32).collect();
    let v: Vec<f32> = (0..12).map(|i| 300.0 + i as f32).collect();
    let qb: Vec<f32> = (0..8).map(|i| 400.0 + i as f32).collect();
    let kb: Vec<f32> = (0..4).map(|i| 500.0 + i as f32).collect();
    let vb: Vec<f32> = (0..4).map(|i| 600.0 + i as f32).collect();
    let dir = TempDir::new("qkv-bias");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &[
            RawTensor::f32("a.q_proj.weight", &[8, 3], &q),
            RawTensor::f32("a.k_proj.weight", &[4, 3], &k),
            RawTensor::f32("a.v_proj.weight", &[4, 3], &v),
            RawTensor::f32("a.q_proj.bias", &[8], &qb),
            RawTensor::f32("a.k_proj.bias", &[4], &kb),
            RawTensor::f32("a.v_proj.bias", &[4], &vb),
        ],
    );
    let src = SafetensorsSource::open(dir.path()).unwrap();
    for world in [1, 2, 4] {
        for rank in 0..world {
            let l = loader(&src, rank, world);
            let qkv =
                crate::layers::QkvParallelLinear::load(&l, "a", hidden, heads, kv_heads, hd, true)
                    .unwrap();
            // This rank's q heads, and its KV heads: even split, or head rank / (world / 2).
            let q_heads = rank * heads / world..(rank + 1) * heads / world;
            let kv = if world > kv_heads {
                let head = rank / (world / kv_heads);
                head..head + 1
            } else {
                rank * kv_heads / world..(rank + 1) * kv_heads / world
            };
            let feats = |h: &Range<usize>| h.start * hd..h.end * hd;
            let mut weight = rows_of(&q, hidden, feats(&q_heads));
            weight.extend(rows_of(&k, hidden, feats(&kv)));
            weight.extend(rows_of(&v, hidden, feats(&kv)));
            let rows = (q_heads.len() + 2 * kv.len()) * hd;
            assert_eq!(qkv.weight().shape(), &[rows, hidden]);
            assert_eq!(
                values(qkv.weight()),
                weight,
                "weight, rank {rank} of {world}"
            );
            let mut bias = rows_of(&qb, 1, feats(&q_heads));
            bias.extend(rows_of(&kb, 1, feats(&kv)));
            bias.extend(rows_of(&vb, 1, feats(&kv)));
            let loaded = qkv.bias().unwrap();
            assert_eq!(loaded.shape(), &[rows]);
            assert_eq!(values(loaded), bias, "bias, rank {rank} of {world}");
            // Without biases none are read or held.
            let l = loader(&src, rank, world);
            let no_bias =
                crate::layers::QkvParallelLinear::load(&l, "a", hidden, heads, kv_heads, hd, false)
                    .unwrap();
            assert!(no_bias.bias().is_none());
            assert_eq!(values(no_bias.weight()), weight);
        }
    }
}
