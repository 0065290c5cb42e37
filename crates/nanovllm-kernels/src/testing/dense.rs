//! Dense ops against naive references: matmul, embedding, norms, rope, silu·mul and the
//! row/column plumbing.

use crate::{Backend, DType, Tensor};

use super::check::{
    activation, assert_close, assert_close_scaled, host_f32, round_to, rounded, upload_float,
    upload_u32, widen, Tol,
};
use super::reference;
use super::rng::Rng;

/// Rows of `x`: decode (1), small batches around the dot-product/GEMM switch (16, 17),
/// and prefill-sized blocks.
const MATMUL_M: [usize; 7] = [1, 3, 16, 17, 33, 64, 300];
/// `(K, N)`: a K shorter than one vector chunk, odd K/N, and a realistic K.
const MATMUL_KN: [(usize, usize); 4] = [(5, 3), (67, 45), (259, 131), (1031, 70)];

/// Tolerance: `|got − want| ≤ 1e-5 · Σ_k |x_k·w_k|` against f64 accumulation (the sum of
/// absolute terms bounds the rounding error of any f32 summation order), plus one output
/// rounding on narrow-activation backends.
fn matmul_with_weights(backend: &dyn Backend, w_dtype: DType, seed: u64) {
    let mut rng = Rng::new(seed);
    for (k, n) in MATMUL_KN {
        for m in MATMUL_M {
            let x = rng.vec(m * k, 1.0);
            let w = rng.vec(n * k, 1.0);
            let (xt, x_ref) = activation(backend, &x, &[m, k]);
            let wt = upload_float(backend, &w, &[n, k], w_dtype);
            let out = backend
                .matmul(&xt, &wt)
                .unwrap_or_else(|e| panic!("matmul m={m} k={k} n={n}: {e}"));
            assert_eq!(out.shape(), &[m, n]);
            let (want, magnitude) = reference::matmul(&x_ref, &rounded(w_dtype, &w), m, k, n);
            assert_close_scaled(
                &format!("matmul {w_dtype} weights, m={m} k={k} n={n}"),
                &host_f32(backend, &out),
                &want,
                &magnitude,
                1e-5,
                Tol::for_backend(backend, 0.0, 0.0, 0.0),
            );
        }
    }
}

pub fn matmul_f32_weights(backend: &dyn Backend) {
    matmul_with_weights(backend, DType::F32, 1);
}

pub fn matmul_bf16_weights(backend: &dyn Backend) {
    matmul_with_weights(backend, DType::BF16, 2);
}

pub fn matmul_f16_weights(backend: &dyn Backend) {
    matmul_with_weights(backend, DType::F16, 3);
}

/// Rows are copied (widened exactly): exact on f32 backends.
pub fn embedding_all_table_dtypes(backend: &dyn Backend) {
    let mut rng = Rng::new(4);
    let (vocab, hidden) = (50, 37);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for num_tokens in [1, 20, 1000] {
            let table = rng.vec(vocab * hidden, 2.0);
            let mut ids: Vec<u32> = (0..num_tokens).map(|_| rng.below(vocab) as u32).collect();
            ids[0] = (vocab - 1) as u32;
            let out = backend
                .embedding(
                    &upload_u32(backend, &ids, &[num_tokens]),
                    &upload_float(backend, &table, &[vocab, hidden], dtype),
                )
                .unwrap_or_else(|e| panic!("embedding {dtype}: {e}"));
            assert_eq!(out.shape(), &[num_tokens, hidden]);
            let table_ref = rounded(dtype, &table);
            let want: Vec<f64> = ids
                .iter()
                .flat_map(|&id| widen(&table_ref[id as usize * hidden..(id as usize + 1) * hidden]))
                .collect();
            assert_close(
                &format!("embedding {dtype} table, {num_tokens} tokens"),
                &host_f32(backend, &out),
                &want,
                Tol::for_backend(backend, 0.0, 0.0, 0.0),
            );
        }
    }
}

/// A vocab shard gives its own rows and zeros for every other id (exact on f32 backends).
pub fn embedding_shard_masks_other_ranks_ids(backend: &dyn Backend) {
    let mut rng = Rng::new(40);
    let (vocab, hidden) = (64, 19);
    for dtype in [DType::F32, DType::BF16] {
        for (vocab_start, shard_rows) in [(0, 16), (16, 16), (48, 16), (60, 8)] {
            let num_tokens = 200;
            let shard = rng.vec(shard_rows * hidden, 2.0);
            let mut ids: Vec<u32> = (0..num_tokens).map(|_| rng.below(vocab) as u32).collect();
            // The shard's edges and the ids just outside them.
            ids[0] = vocab_start as u32;
            ids[1] = (vocab_start + shard_rows - 1) as u32;
            ids[2] = (vocab_start + shard_rows) as u32;
            ids[3] = vocab_start.saturating_sub(1) as u32;
            let out = backend
                .embedding_shard(
                    &upload_u32(backend, &ids, &[num_tokens]),
                    &upload_float(backend, &shard, &[shard_rows, hidden], dtype),
                    vocab_start,
                )
                .unwrap_or_else(|e| panic!("embedding_shard {dtype}: {e}"));
            assert_eq!(out.shape(), &[num_tokens, hidden]);
            let shard_ref = rounded(dtype, &shard);
            let want: Vec<f64> = ids
                .iter()
                .flat_map(|&id| {
                    let id = id as usize;
                    if (vocab_start..vocab_start + shard_rows).contains(&id) {
                        let local = id - vocab_start;
                        widen(&shard_ref[local * hidden..(local + 1) * hidden])
                    } else {
                        vec![0.0; hidden]
                    }
                })
                .collect();
            assert_close(
                &format!("embedding_shard {dtype} rows {vocab_start}+{shard_rows}"),
                &host_f32(backend, &out),
                &want,
                Tol::for_backend(backend, 0.0, 0.0, 0.0),
            );
        }
    }
}

/// `copy_from_host` overwrites a device tensor in place and rejects a shape or dtype mismatch.
pub fn copy_from_host_overwrites(backend: &dyn Backend) {
    let mut dst = backend
        .zeros(&[3, 4], DType::U32)
        .unwrap_or_else(|e| panic!("zeros: {e}"));
    let src = Tensor::from_u32((0..12).collect(), &[3, 4]).unwrap_or_else(|e| panic!("{e}"));
    backend
        .copy_from_host(&src, &mut dst)
        .unwrap_or_else(|e| panic!("copy_from_host: {e}"));
    let back = backend
        .to_host(&dst)
        .unwrap_or_else(|e| panic!("to_host: {e}"));
    assert_eq!(
        back.as_u32_slice().unwrap_or_else(|e| panic!("{e}")),
        &(0..12).collect::<Vec<u32>>()[..]
    );
    let wrong_shape = Tensor::from_u32(vec![0; 6], &[2, 3]).unwrap_or_else(|e| panic!("{e}"));
    assert!(backend.copy_from_host(&wrong_shape, &mut dst).is_err());
    let wrong_dtype = Tensor::from_i64(vec![0; 12], &[3, 4]).unwrap_or_else(|e| panic!("{e}"));
    assert!(backend.copy_from_host(&wrong_dtype, &mut dst).is_err());
}

/// Tolerance: 1e-5 relative + 1e-6 absolute vs f64.
pub fn rms_norm_matches_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(5);
    let eps = 1e-6;
    for w_dtype in [DType::F32, DType::BF16, DType::F16] {
        for (m, n) in [(1, 37), (7, 1024), (300, 1024)] {
            let (xt, x_ref) = activation(backend, &rng.vec(m * n, 3.0), &[m, n]);
            let w = rng.vec(n, 1.5);
            let out = backend
                .rms_norm(&xt, &upload_float(backend, &w, &[n], w_dtype), eps)
                .unwrap_or_else(|e| panic!("rms_norm: {e}"));
            assert_eq!(out.shape(), &[m, n]);
            assert_close(
                &format!("rms_norm {w_dtype} weight, [{m}, {n}]"),
                &host_f32(backend, &out),
                &reference::rms_norm(&x_ref, &rounded(w_dtype, &w), n, eps),
                Tol::for_backend(backend, 1e-6, 1e-5, 1.0),
            );
        }
    }
}

/// `residual += x` is one f32 addition per element (relative error ≤ 2⁻²⁴ < 1e-7); the
/// normed output gets the rms_norm tolerance (1e-5 relative + 1e-6 absolute).
pub fn add_rms_norm_updates_residual(backend: &dyn Backend) {
    let mut rng = Rng::new(6);
    let eps = 1e-6;
    for (m, n) in [(3, 37), (300, 1024)] {
        let (xt, x_ref) = activation(backend, &rng.vec(m * n, 2.0), &[m, n]);
        let (mut residual, res_ref) = activation(backend, &rng.vec(m * n, 2.0), &[m, n]);
        let w = rng.vec(n, 1.5);
        let out = backend
            .add_rms_norm(
                &xt,
                &mut residual,
                &upload_float(backend, &w, &[n], DType::BF16),
                eps,
            )
            .unwrap_or_else(|e| panic!("add_rms_norm: {e}"));
        let sum: Vec<f64> = x_ref
            .iter()
            .zip(&res_ref)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        assert_close(
            &format!("add_rms_norm residual, [{m}, {n}]"),
            &host_f32(backend, &residual),
            &sum,
            Tol::for_backend(backend, 0.0, 1e-7, 4.0),
        );
        let sum_f32: Vec<f32> = sum.iter().map(|&s| s as f32).collect();
        assert_close(
            &format!("add_rms_norm output, [{m}, {n}]"),
            &host_f32(backend, &out),
            &reference::rms_norm(&sum_f32, &rounded(DType::BF16, &w), n, eps),
            Tol::for_backend(backend, 1e-6, 1e-5, 1.0),
        );
    }
}

/// Tolerance: 1e-6 absolute + 1e-6 relative (two products and a sum per element).
pub fn rope_neox_matches_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(7);
    let max_positions = 64;
    for (heads, head_dim, num_tokens) in [(3, 16, 5), (4, 128, 40), (16, 128, 300)] {
        let width = heads * head_dim;
        let table = reference::rope_table(max_positions, head_dim, 10_000.0);
        let mut positions: Vec<u32> = (0..num_tokens)
            .map(|_| rng.below(max_positions) as u32)
            .collect();
        positions[0] = (max_positions - 1) as u32;
        let (mut x, x_ref) = activation(
            backend,
            &rng.vec(num_tokens * width, 2.0),
            &[num_tokens, width],
        );
        backend
            .rope(
                &mut x,
                &upload_u32(backend, &positions, &[num_tokens]),
                &upload_float(backend, &table, &[max_positions, head_dim], DType::F32),
                head_dim,
            )
            .unwrap_or_else(|e| panic!("rope: {e}"));
        assert_close(
            &format!("rope heads={heads} head_dim={head_dim} tokens={num_tokens}"),
            &host_f32(backend, &x),
            &reference::rope(&x_ref, &positions, &table, width, head_dim),
            Tol::for_backend(backend, 1e-6, 1e-6, 2.0),
        );
    }
}

/// Tolerance: 1e-5 relative + 1e-6 absolute (`exp` is not correctly rounded).
pub fn silu_mul_matches_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(8);
    for (m, n) in [(1, 7), (33, 300)] {
        let (gate_up, gu_ref) = activation(backend, &rng.vec(m * 2 * n, 8.0), &[m, 2 * n]);
        let out = backend
            .silu_mul(&gate_up)
            .unwrap_or_else(|e| panic!("silu_mul: {e}"));
        assert_eq!(out.shape(), &[m, n]);
        assert_close(
            &format!("silu_mul [{m}, {n}]"),
            &host_f32(backend, &out),
            &reference::silu_mul(&gu_ref, n),
            Tol::for_backend(backend, 1e-6, 1e-5, 8.0),
        );
    }
}

/// One f32 addition per element: relative error ≤ 2⁻²⁴ < 1e-7.
pub fn add_inplace_adds(backend: &dyn Backend) {
    let mut rng = Rng::new(9);
    for (m, n) in [(37, 513), (300, 1024)] {
        let (mut x, x_ref) = activation(backend, &rng.vec(m * n, 1.0), &[m, n]);
        let (y, y_ref) = activation(backend, &rng.vec(m * n, 1.0), &[m, n]);
        backend
            .add_inplace(&mut x, &y)
            .unwrap_or_else(|e| panic!("add_inplace: {e}"));
        let want: Vec<f64> = x_ref
            .iter()
            .zip(&y_ref)
            .map(|(&a, &b)| a as f64 + b as f64)
            .collect();
        assert_close(
            &format!("add_inplace [{m}, {n}]"),
            &host_f32(backend, &x),
            &want,
            Tol::for_backend(backend, 0.0, 1e-7, 2.0),
        );
    }
}

/// `add_bias` for every x dtype (the activation dtype first) and bias dtype, at T = 0, 1,
/// odd N and a size the CPU runs in parallel. Tolerance: exact. The op's arithmetic is
/// one f32 add of the held (exactly widened) values and one round-to-nearest-even to x's
/// dtype, which the reference repeats.
pub fn add_bias_matches_reference(backend: &dyn Backend) {
    let mut rng = Rng::new(14);
    let mut x_dtypes = vec![backend.activation_dtype()];
    for d in [DType::F32, DType::BF16, DType::F16] {
        if !x_dtypes.contains(&d) {
            x_dtypes.push(d);
        }
    }
    let shapes = [(0, 7), (1, 1), (1, 13), (5, 9), (37, 513), (300, 1024)];
    for x_dtype in x_dtypes {
        for b_dtype in [DType::F32, DType::BF16, DType::F16] {
            for (t, n) in shapes {
                let x = rounded(x_dtype, &rng.vec(t * n, 2.0));
                let bias = rounded(b_dtype, &rng.vec(n, 1.0));
                let mut xt = upload_float(backend, &x, &[t, n], x_dtype);
                let bt = upload_float(backend, &bias, &[n], b_dtype);
                let what = format!("add_bias x {x_dtype} [{t}, {n}], bias {b_dtype}");
                backend
                    .add_bias(&mut xt, &bt)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!((xt.shape(), xt.dtype()), (&[t, n][..], x_dtype), "{what}");
                let want: Vec<f64> = x
                    .chunks_exact(n)
                    .flat_map(|row| row.iter().zip(&bias).map(|(&a, &b)| a + b))
                    .map(|sum| round_to(x_dtype, sum) as f64)
                    .collect();
                assert_close(&what, &host_f32(backend, &xt), &want, Tol::EXACT);
            }
        }
    }
}

/// Pure copies: exact.
pub fn split_last_dim_copies_columns(backend: &dyn Backend) {
    let mut rng = Rng::new(10);
    let (m, sizes) = (7, [3usize, 0, 6, 1]);
    let n: usize = sizes.iter().sum();
    let (x, x_ref) = activation(backend, &rng.vec(m * n, 1.0), &[m, n]);
    let parts = backend
        .split_last_dim(&x, &sizes)
        .unwrap_or_else(|e| panic!("split_last_dim: {e}"));
    assert_eq!(parts.len(), sizes.len());
    let mut offset = 0;
    for (part, &size) in parts.iter().zip(&sizes) {
        assert_eq!(part.shape(), &[m, size]);
        let want: Vec<f64> = (0..m)
            .flat_map(|r| widen(&x_ref[r * n + offset..r * n + offset + size]))
            .collect();
        assert_close(
            &format!("split part of {size} at {offset}"),
            &host_f32(backend, part),
            &want,
            Tol::EXACT,
        );
        offset += size;
    }
}

/// Pure copies: exact (repeated rows allowed).
pub fn index_rows_gathers(backend: &dyn Backend) {
    let mut rng = Rng::new(11);
    let (m, n) = (9, 5);
    let rows = [8u32, 0, 8, 3];
    let (x, x_ref) = activation(backend, &rng.vec(m * n, 1.0), &[m, n]);
    let out = backend
        .index_rows(&x, &upload_u32(backend, &rows, &[rows.len()]))
        .unwrap_or_else(|e| panic!("index_rows: {e}"));
    assert_eq!(out.shape(), &[rows.len(), n]);
    let want: Vec<f64> = rows
        .iter()
        .flat_map(|&r| widen(&x_ref[r as usize * n..(r as usize + 1) * n]))
        .collect();
    assert_close("index_rows", &host_f32(backend, &out), &want, Tol::EXACT);
}
