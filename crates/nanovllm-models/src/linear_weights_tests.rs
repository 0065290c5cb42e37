//! In-situ quantization through [`WeightLoader::linear`]: the bytes equal the reference
//! quantizer's on the same float rows, whatever the chunking, packing or sharding; plain
//! loads stay as stored; a row-parallel shard that cuts a block is refused by name.

use nanovllm_kernels::quant::quantize;
use nanovllm_kernels::{CpuBackend, CpuStorage, DType, Tensor};

use super::*;
use crate::loader::ShardSpec;
use crate::DummySource;

static BACKEND: CpuBackend = CpuBackend;

fn loader(source: &dyn WeightSource, rank: usize, world: usize, q: DType) -> WeightLoader<'_> {
    WeightLoader::new(
        source,
        &BACKEND,
        ShardSpec {
            rank,
            world_size: world,
        },
    )
    .with_quantization(Some(WeightQuantization::new(q)))
}

fn bytes(t: &Tensor) -> Vec<u8> {
    match t.cpu("test").unwrap() {
        CpuStorage::Bytes { bytes, .. } => bytes.clone(),
        other => panic!("expected a byte-backed tensor, got {}", other.dtype()),
    }
}

/// The reference: `slice` of `name` read as floats, quantized in one piece.
fn reference(
    source: &dyn WeightSource,
    name: &str,
    shape: &[usize],
    slice: Slice,
    q: DType,
) -> Vec<u8> {
    bytes(&quantize(&source.read(name, shape, &slice).unwrap(), q).unwrap())
}

#[test]
fn linear_weights_quantize_chunk_by_chunk_to_the_reference_bytes() {
    let source = DummySource::new(DType::BF16, 1);
    // 3 chunks of QUANTIZE_CHUNK_ELEMS / 64 rows, the last one partial.
    let rows = 2 * QUANTIZE_CHUNK_ELEMS / 64 + 100;
    for q in [DType::Int8G32, DType::Int4G32, DType::Fp8G128] {
        let l = loader(&source, 0, 1, q);
        let shape = if q == DType::Fp8G128 {
            [rows / 2, 128]
        } else {
            [rows, 64]
        };
        let w = l.linear().column_shard("w", shape).unwrap();
        assert_eq!((w.dtype(), w.shape()), (q, &shape[..]));
        assert_eq!(
            bytes(&w),
            reference(&source, "w", &shape, Slice::Full, q),
            "{q}"
        );
        // The plain methods keep the stored dtype; so does the LM head without lm_head.
        assert_eq!(l.column_shard("w", [4, 64]).unwrap().dtype(), DType::BF16);
        let no_head = WeightLoader::new(&source, &BACKEND, ShardSpec::default()).with_quantization(
            Some(WeightQuantization {
                dtype: q,
                lm_head: false,
            }),
        );
        assert!(!no_head.quantizes_lm_head() && l.quantizes_lm_head());
        assert_eq!(
            no_head.lm_head().vocab_shard("h", 8, 128).unwrap().dtype(),
            DType::BF16
        );
    }
}

#[test]
fn packed_and_stacked_shards_quantize_each_ranks_part() {
    let source = DummySource::new(DType::F32, 2);
    let q = DType::Int8G32;
    for rank in 0..2 {
        let l = loader(&source, rank, 2, q);
        // gate ‖ up, column-parallel: this rank's gate rows, then its up rows.
        let w = l
            .linear()
            .packed_column_shard(&[("g", 8), ("u", 8)], 64)
            .unwrap();
        let rows = rank * 4..rank * 4 + 4;
        let want = [
            reference(&source, "g", &[8, 64], Slice::Rows(rows.clone()), q),
            reference(&source, "u", &[8, 64], Slice::Rows(rows), q),
        ]
        .concat();
        assert_eq!((w.shape(), bytes(&w)), (&[8, 64][..], want));
        // Two experts' down projections, row-parallel: 64 of 128 input features each.
        let names = ["e0".to_owned(), "e1".to_owned()];
        let w2 = l.linear().stacked_row_shard(&names, [4, 128]).unwrap();
        let cols = rank * 64..rank * 64 + 64;
        let want = [
            reference(&source, "e0", &[4, 128], Slice::Cols(cols.clone()), q),
            reference(&source, "e1", &[4, 128], Slice::Cols(cols), q),
        ]
        .concat();
        assert_eq!((w2.shape(), bytes(&w2)), (&[2, 4, 64][..], want));
    }
}

#[test]
fn a_vocab_shard_pads_with_zero_blocks() {
    let source = DummySource::new(DType::F32, 3);
    // vocab 5 over 2 ranks: 3 rows each, rank 1 holds rows 3..5 and one zero row.
    let l = loader(&source, 1, 2, DType::Int4G32);
    let head = l.lm_head().vocab_shard("h", 5, 32).unwrap();
    assert_eq!(head.shape(), &[3, 32]);
    let values = head.to_vec_f32().unwrap();
    let want = quantize(
        &source.read("h", &[5, 32], &Slice::Rows(3..5)).unwrap(),
        DType::Int4G32,
    )
    .unwrap()
    .to_vec_f32()
    .unwrap();
    assert_eq!(&values[..64], &want[..]);
    assert!(values[64..].iter().all(|&x| x == 0.0));
}

#[test]
fn a_row_shard_that_cuts_a_block_is_refused_naming_the_weight() {
    let source = DummySource::new(DType::F32, 4);
    // 96 input features over 2 ranks: shards of 48 cut the 32-weight blocks.
    let err = loader(&source, 0, 2, DType::Int8G32)
        .linear()
        .row_shard("model.layers.0.mlp.down_proj.weight", [8, 96])
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ShardCutsBlock {
                shard: 48,
                block: 32,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("down_proj")
            && msg.contains("--tensor-parallel-size")
            && msg.contains("--quantization"),
        "{msg}"
    );
    // 128 over 2: whole blocks, the reference bytes.
    for rank in 0..2 {
        let w = loader(&source, rank, 2, DType::Int8G32)
            .linear()
            .row_shard("w", [8, 128])
            .unwrap();
        let cols = rank * 64..rank * 64 + 64;
        assert_eq!(
            bytes(&w),
            reference(&source, "w", &[8, 128], Slice::Cols(cols), DType::Int8G32)
        );
    }
    // Column shards split rows: any row count works.
    let w = loader(&source, 1, 3, DType::Int8G32)
        .linear()
        .column_shard("w", [9, 32])
        .unwrap();
    assert_eq!(w.shape(), &[3, 32]);
}

#[test]
fn a_last_dim_that_is_not_whole_blocks_is_refused() {
    let source = DummySource::new(DType::F32, 5);
    let err = loader(&source, 0, 1, DType::Fp8G128)
        .linear()
        .column_shard("model.layers.0.self_attn.o_proj.weight", [4, 64])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("o_proj") && err.contains("128") && err.contains("--quantization"),
        "{err}"
    );
}
