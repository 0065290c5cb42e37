//! Bad inputs give the documented `KernelError`, never a panic or an out-of-bounds access.
//!
//! Every backend promises these errors in every build (debug and release) outside CUDA
//! graph capture. Attention metadata *values* included: the CPU reads them directly; CUDA
//! checks the host copies its u32 tensors keep when written from the host (the runner's
//! `copy_from_host`), so the check costs no device read (`cuda/host_copy.rs`).

use crate::{AttentionMetadata, Backend, DType, KernelError, KvCache, Result};

use super::check::{activation, host_f32, upload_float, upload_i64, upload_u32};
use super::paged::Scenario;
use super::rng::Rng;

/// Panics unless `result` is an error accepted by `expected`.
fn expect_err<T: std::fmt::Debug>(
    what: &str,
    result: Result<T>,
    expected: impl Fn(&KernelError) -> bool,
) {
    match result {
        Err(e) if expected(&e) => {}
        Err(e) => panic!("{what}: unexpected error kind: {e:?}"),
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
    }
}

fn is_shape(e: &KernelError) -> bool {
    matches!(e, KernelError::ShapeMismatch { .. })
}
fn is_invalid(e: &KernelError) -> bool {
    matches!(e, KernelError::Invalid { .. })
}
fn is_out_of_range(index: usize, size: usize) -> impl Fn(&KernelError) -> bool {
    move |e| matches!(e, KernelError::IndexOutOfRange { index: i, size: s, .. } if *i == index && *s == size)
}

/// A bias of the wrong length or rank, a 1-d x, and integer operands; a rejected call
/// leaves x as it was.
pub fn add_bias_rejects_bad_inputs(backend: &dyn Backend) {
    let (mut x, x_held) = activation(backend, &[0.5; 12], &[3, 4]);
    let wrong_rank = |e: &KernelError| matches!(e, KernelError::WrongRank { .. });
    let wrong_dtype = |e: &KernelError| {
        matches!(
            e,
            KernelError::WrongDType { .. } | KernelError::UnsupportedDType { .. }
        )
    };
    let short = upload_float(backend, &[1.0; 3], &[3], DType::BF16);
    expect_err(
        "add_bias bias length",
        backend.add_bias(&mut x, &short),
        is_shape,
    );
    let square = upload_float(backend, &[1.0; 16], &[4, 4], DType::BF16);
    expect_err(
        "add_bias 2-d bias",
        backend.add_bias(&mut x, &square),
        wrong_rank,
    );
    let int_bias = upload_u32(backend, &[1; 4], &[4]);
    expect_err(
        "add_bias u32 bias",
        backend.add_bias(&mut x, &int_bias),
        wrong_dtype,
    );
    assert_eq!(
        host_f32(backend, &x),
        x_held,
        "a rejected add_bias changed x"
    );
    let bias = upload_float(backend, &[1.0; 4], &[4], DType::BF16);
    let (mut flat, _) = activation(backend, &[0.5; 4], &[4]);
    expect_err(
        "add_bias 1-d x",
        backend.add_bias(&mut flat, &bias),
        wrong_rank,
    );
    let mut int_x = upload_u32(backend, &[1; 12], &[3, 4]);
    expect_err(
        "add_bias u32 x",
        backend.add_bias(&mut int_x, &bias),
        wrong_dtype,
    );
}

pub fn matmul_rejects_bad_inputs(backend: &dyn Backend) {
    let (x, _) = activation(backend, &[0.5; 12], &[3, 4]);
    let w = upload_float(backend, &[0.5; 10], &[2, 5], DType::BF16);
    expect_err("matmul K mismatch", backend.matmul(&x, &w), is_shape);
    let (x1, _) = activation(backend, &[0.5; 12], &[12]);
    let w_ok = upload_float(backend, &[0.5; 8], &[2, 4], DType::BF16);
    expect_err("matmul 1-d x", backend.matmul(&x1, &w_ok), |e| {
        matches!(e, KernelError::WrongRank { expected: 2, .. })
    });
    let ints = upload_u32(backend, &[1; 12], &[3, 4]);
    expect_err("matmul u32 x", backend.matmul(&ints, &w_ok), |e| {
        matches!(
            e,
            KernelError::WrongDType { .. } | KernelError::UnsupportedDType { .. }
        )
    });
    expect_err(
        "matmul u32 w",
        backend.matmul(&x, &upload_u32(backend, &[1; 8], &[2, 4])),
        |e| {
            matches!(
                e,
                KernelError::WrongDType { .. } | KernelError::UnsupportedDType { .. }
            )
        },
    );
}

pub fn embedding_rejects_out_of_range_ids(backend: &dyn Backend) {
    let table = upload_float(backend, &[1.0; 40], &[10, 4], DType::BF16);
    for bad in [10u32, u32::MAX] {
        let ids = upload_u32(backend, &[0, 9, bad, 1], &[4]);
        expect_err(
            &format!("embedding id {bad}"),
            backend.embedding(&ids, &table),
            is_out_of_range(bad as usize, 10),
        );
    }
}

pub fn rope_rejects_bad_inputs(backend: &dyn Backend) {
    let (head_dim, max_positions) = (8, 16);
    let table = upload_float(
        backend,
        &vec![0.5; max_positions * head_dim],
        &[max_positions, head_dim],
        DType::F32,
    );
    let (mut x, _) = activation(backend, &[1.0; 32], &[2, 16]);
    let before = host_f32(backend, &x);
    let positions = upload_u32(backend, &[3, 16], &[2]);
    expect_err(
        "rope position = max_positions",
        backend.rope(&mut x, &positions, &table, head_dim),
        is_out_of_range(16, 16),
    );
    assert_eq!(
        host_f32(backend, &x),
        before,
        "a failed rope must leave x untouched"
    );
    let ok_positions = upload_u32(backend, &[3, 4], &[2]);
    expect_err(
        "rope odd head_dim",
        backend.rope(&mut x, &ok_positions, &table, 7),
        is_invalid,
    );
    expect_err(
        "rope head_dim not dividing width",
        backend.rope(&mut x, &ok_positions, &table, 6),
        is_invalid,
    );
    let narrow = upload_float(backend, &[0.5; 64], &[16, 4], DType::F32);
    expect_err(
        "rope cos_sin width",
        backend.rope(&mut x, &ok_positions, &narrow, head_dim),
        is_shape,
    );
    let short = upload_u32(backend, &[3], &[1]);
    expect_err(
        "rope positions length",
        backend.rope(&mut x, &short, &table, head_dim),
        is_shape,
    );
}

pub fn dense_ops_reject_bad_shapes(backend: &dyn Backend) {
    let (x, _) = activation(backend, &[1.0; 12], &[3, 4]);
    let w5 = upload_float(backend, &[1.0; 5], &[5], DType::F32);
    expect_err(
        "rms_norm weight length",
        backend.rms_norm(&x, &w5, 1e-6),
        is_shape,
    );
    let (mut residual, _) = activation(backend, &[1.0; 8], &[2, 4]);
    let w4 = upload_float(backend, &[1.0; 4], &[4], DType::F32);
    expect_err(
        "add_rms_norm residual shape",
        backend.add_rms_norm(&x, &mut residual, &w4, 1e-6),
        is_shape,
    );
    // A weight that does not fit: an error, and the residual is left as it was.
    let (mut residual, before) = activation(backend, &Rng::new(92).vec(12, 1.0), &[3, 4]);
    expect_err(
        "add_rms_norm weight length",
        backend.add_rms_norm(&x, &mut residual, &w5, 1e-6),
        is_shape,
    );
    assert_eq!(
        host_f32(backend, &residual),
        before,
        "a rejected add_rms_norm changed the residual"
    );
    let (odd, _) = activation(backend, &[1.0; 9], &[3, 3]);
    expect_err("silu_mul odd width", backend.silu_mul(&odd), is_invalid);
    let (mut a, _) = activation(backend, &[1.0; 12], &[3, 4]);
    let (b, _) = activation(backend, &[1.0; 12], &[4, 3]);
    expect_err(
        "add_inplace shapes",
        backend.add_inplace(&mut a, &b),
        is_shape,
    );
    expect_err(
        "split sizes",
        backend.split_last_dim(&x, &[1, 2]),
        is_invalid,
    );
    let rows = upload_u32(backend, &[0, 3], &[2]);
    expect_err(
        "index_rows out of range",
        backend.index_rows(&x, &rows),
        is_out_of_range(3, 3),
    );
}

pub fn store_kv_rejects_bad_slots(backend: &dyn Backend) {
    let (num_blocks, bs, kv_heads, head_dim) = (2, 4, 1, 4);
    let mut cache = KvCache::new(backend, 1, num_blocks, bs, kv_heads, head_dim, DType::F32)
        .unwrap_or_else(|e| panic!("allocating the KV cache: {e}"));
    let (k, _) = activation(backend, &Rng::new(90).vec(8, 1.0), &[2, 4]);
    let (v, _) = activation(backend, &Rng::new(91).vec(8, 1.0), &[2, 4]);
    let layer = &mut cache.layers[0];
    let past_end = upload_i64(backend, &[0, 8], &[2]);
    expect_err(
        "store_kv slot = num_slots",
        backend.store_kv(&k, &v, layer, &past_end),
        is_out_of_range(8, 8),
    );
    let negative = upload_i64(backend, &[-2, 1], &[2]);
    expect_err(
        "store_kv slot -2",
        backend.store_kv(&k, &v, layer, &negative),
        is_invalid,
    );
    assert!(
        host_f32(backend, &layer.k).iter().all(|&x| x == 0.0),
        "a rejected store_kv must not write anything"
    );
    let (wide, _) = activation(backend, &[1.0; 10], &[2, 5]);
    let ok = upload_i64(backend, &[0, 1], &[2]);
    expect_err(
        "store_kv k width",
        backend.store_kv(&wide, &v, layer, &ok),
        is_shape,
    );
    let one = upload_i64(backend, &[0], &[1]);
    expect_err(
        "store_kv slot_mapping length",
        backend.store_kv(&k, &v, layer, &one),
        is_shape,
    );
}

fn small_scenario(heads: usize, kv_heads: usize) -> Scenario {
    Scenario {
        heads,
        kv_heads,
        head_dim: 8,
        block_size: 4,
        cache_dtype: DType::F32,
        kv_scales: crate::KvScales::UNIT,
        seqs: vec![(6, 6), (9, 2)],
        seed: 95,
    }
}

fn prefill(
    backend: &dyn Backend,
    built: &super::paged::Built,
    meta: &AttentionMetadata,
) -> Result<crate::Tensor> {
    backend.prefill_attention(
        &built.q,
        &built.k_new,
        &built.v_new,
        &built.cache.layers[0],
        meta,
        built.scale,
    )
}

pub fn prefill_attention_rejects_bad_metadata(backend: &dyn Backend) {
    let built = small_scenario(4, 2).build(backend);
    prefill(backend, &built, &built.meta)
        .unwrap_or_else(|e| panic!("the unmodified scenario must run: {e}"));
    let num_blocks = built.cache.num_blocks;

    // heads (3) not a multiple of kv_heads (2).
    let (q3, _) = activation(backend, &vec![0.5; 8 * 3 * 8], &[8, 24]);
    expect_err(
        "prefill 3 heads over 2 kv heads",
        backend.prefill_attention(
            &q3,
            &built.k_new,
            &built.v_new,
            &built.cache.layers[0],
            &built.meta,
            built.scale,
        ),
        is_invalid,
    );

    // A used block id past the cache.
    let mut meta = built.meta.clone();
    let mut tables = super::check::host_u32(backend, &meta.block_tables);
    tables[0] = num_blocks as u32;
    meta.block_tables = upload_u32(backend, &tables, built.meta.block_tables.shape());
    expect_err(
        "prefill block id ≥ num_blocks",
        prefill(backend, &built, &meta),
        is_out_of_range(num_blocks, num_blocks),
    );

    // context_len shorter than the new tokens.
    let mut meta = built.meta.clone();
    meta.context_lens = upload_u32(backend, &[5, 9], &[2]);
    expect_err(
        "prefill context_len < q_len",
        prefill(backend, &built, &meta),
        is_invalid,
    );

    // cu_seqlens_q not covering q.
    let mut meta = built.meta.clone();
    meta.cu_seqlens_q = upload_u32(backend, &[0, 6, 7], &[3]);
    expect_err(
        "prefill cu_seqlens_q end",
        prefill(backend, &built, &meta),
        is_invalid,
    );

    // Block table too narrow for the context.
    let mut meta = built.meta.clone();
    meta.context_lens = upload_u32(backend, &[6, 40], &[2]);
    expect_err(
        "prefill context beyond block table",
        prefill(backend, &built, &meta),
        is_invalid,
    );

    // Metadata block size disagreeing with the cache.
    let mut meta = built.meta.clone();
    meta.block_size = 8;
    expect_err(
        "prefill block_size mismatch",
        prefill(backend, &built, &meta),
        is_invalid,
    );

    // k / v not matching the cache row width.
    let (k_bad, _) = activation(backend, &vec![0.5; 8 * 12], &[8, 12]);
    expect_err(
        "prefill k width",
        backend.prefill_attention(
            &built.q,
            &k_bad,
            &built.v_new,
            &built.cache.layers[0],
            &built.meta,
            built.scale,
        ),
        is_shape,
    );
}

pub fn decode_attention_rejects_bad_metadata(backend: &dyn Backend) {
    let mut scenario = small_scenario(4, 2);
    scenario.seqs = vec![(6, 1), (9, 1)];
    let mut built = scenario.build(backend);
    built.meta.is_prefill = false;
    let layer = &built.cache.layers[0];
    backend
        .decode_attention(&built.q, layer, &built.meta, built.scale)
        .unwrap_or_else(|e| panic!("the unmodified scenario must run: {e}"));

    let (q3, _) = activation(backend, &[0.5; 3 * 32], &[3, 32]);
    expect_err(
        "decode q rows ≠ num_seqs",
        backend.decode_attention(&q3, layer, &built.meta, built.scale),
        is_invalid,
    );

    let mut meta = built.meta.clone();
    meta.context_lens = upload_u32(backend, &[6, 100], &[2]);
    expect_err(
        "decode context beyond block table",
        backend.decode_attention(&built.q, layer, &meta, built.scale),
        is_invalid,
    );

    let mut meta = built.meta.clone();
    meta.context_lens = upload_u32(backend, &[6], &[1]);
    expect_err(
        "decode context_lens length",
        backend.decode_attention(&built.q, layer, &meta, built.scale),
        is_shape,
    );

    let (q_odd, _) = activation(backend, &[0.5; 2 * 30], &[2, 30]);
    expect_err(
        "decode q width not a multiple of head_dim",
        backend.decode_attention(&q_odd, layer, &built.meta, built.scale),
        is_invalid,
    );

    // The values checked are the latest written: a bad block table copied over a good
    // one in place (as the runner and decode graphs reuse their tensors), then the good
    // one again. A used block id past the cache is an error; padding past a sequence's
    // blocks is not looked at.
    let num_blocks = built.cache.num_blocks;
    let good = super::check::host_u32(backend, &built.meta.block_tables);
    let mut bad = good.clone();
    bad[0] = num_blocks as u32;
    let shape = built.meta.block_tables.shape().to_vec();
    let mut meta = built.meta.clone();
    let write = |tables: &[u32], into: &mut crate::Tensor| {
        let host = crate::Tensor::from_u32(tables.to_vec(), &shape)
            .unwrap_or_else(|e| panic!("a host block table: {e}"));
        backend
            .copy_from_host(&host, into)
            .unwrap_or_else(|e| panic!("copy_from_host: {e}"));
    };
    write(&bad, &mut meta.block_tables);
    expect_err(
        "decode block id ≥ num_blocks",
        backend.decode_attention(&built.q, layer, &meta, built.scale),
        is_out_of_range(num_blocks, num_blocks),
    );
    write(&good, &mut meta.block_tables);
    backend
        .decode_attention(&built.q, layer, &meta, built.scale)
        .unwrap_or_else(|e| panic!("the good block table written back must run: {e}"));
    assert!(
        good.contains(&u32::MAX),
        "the scenario pads its block tables with u32::MAX, which must be ignored"
    );
}
