//! The CUDA backend against the CPU backend's ops on the same random inputs: paged
//! attention (prefill and decode, many shapes and sequence mixes), MoE routing and
//! experts on shapes larger than the shared suite's, a chain of dense ops, and sampling
//! over a real vocabulary (greedy tokens exactly; sampled tokens wherever no decision is
//! within rounding of a boundary; logprobs within a tolerance).
//!
//! Inputs are rounded to bf16 first, and the CPU gets exactly those values (f32
//! activations, the same bf16 cache / weights), so a tolerance covers only the CUDA
//! kernels' own arithmetic: bf16 outputs (one rounding, 2⁻⁹ relative), bf16 probabilities
//! in the prefill P·V product, bf16 MoE intermediates, f32 accumulation in another order,
//! and `--use_fast_math` exponentials. Each test states its bound.
//!
//! Without a GPU every test prints `skipped: <test>: <reason>` and passes, unless
//! `NANOVLLM_REQUIRE_GPU=1` (`nanovllm_kernels::testing::gpu`).
#![cfg(feature = "cuda")]

use half::bf16;
use nanovllm_kernels::sampling::uniform;
use nanovllm_kernels::testing::check::{
    assert_close, assert_close_scaled, host_f32, upload_float, upload_u32, widen, Tol,
};
use nanovllm_kernels::testing::gpu::with_gpu;
use nanovllm_kernels::testing::reference;
use nanovllm_kernels::testing::rng::Rng;
use nanovllm_kernels::testing::sampling::{logprob_tol, reference_row};
use nanovllm_kernels::{
    AttentionMetadata, Backend, CpuBackend, DType, LayerKvCache, Penalties, RowLogprobs,
    SampleOutput, SamplingRow, Tensor, TopKWeights, NO_FINITE_LOGIT,
};

fn bf16_round(xs: &[f32]) -> Vec<f32> {
    xs.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

fn bf16_tensor(xs: &[f32], shape: &[usize]) -> Tensor {
    let data = xs.iter().map(|&x| bf16::from_f32(x)).collect();
    Tensor::from_bf16(data, shape).unwrap_or_else(|e| panic!("bf16 tensor {shape:?}: {e}"))
}

fn f32_tensor(xs: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(xs.to_vec(), shape).unwrap_or_else(|e| panic!("f32 tensor {shape:?}: {e}"))
}

/// `xs` in `be`'s activation dtype (bf16 on CUDA), as a host tensor.
fn act_tensor(be: &dyn Backend, xs: &[f32], shape: &[usize]) -> Tensor {
    match be.activation_dtype() {
        DType::BF16 => bf16_tensor(xs, shape),
        _ => f32_tensor(xs, shape),
    }
}

fn u32_tensor(xs: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_u32(xs.to_vec(), shape).unwrap_or_else(|e| panic!("u32 tensor {shape:?}: {e}"))
}

fn up(be: &dyn Backend, t: &Tensor) -> Tensor {
    be.upload(t.clone())
        .unwrap_or_else(|e| panic!("upload {:?}: {e}", t.shape()))
}

fn host(be: &dyn Backend, t: &Tensor) -> Vec<f32> {
    be.to_host(t)
        .and_then(|h| h.to_vec_f32())
        .unwrap_or_else(|e| panic!("reading back {:?}: {e}", t.shape()))
}

// ---------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------

/// One attention setup: sequences `(context_len, q_len)` in a paged cache with shuffled
/// block ids and garbage-padded block tables; the first `context_len − q_len` keys are
/// a cached prefix.
#[derive(Clone, Debug)]
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    cache_dtype: DType,
    seqs: Vec<(usize, usize)>,
    /// Added to the true max context: graphs are captured with `max_model_len`.
    extra_max_context: usize,
    seed: u64,
}

/// Host tensors of a case (CPU layout; uploaded as they are for CUDA).
struct Inputs {
    q: Vec<f32>,
    k_cache: Tensor,
    v_cache: Tensor,
    cu_seqlens_q: Vec<u32>,
    context_lens: Vec<u32>,
    block_tables: Vec<u32>,
    max_blocks: usize,
    rows: usize,
}

impl Case {
    fn inputs(&self) -> Inputs {
        let mut rng = Rng::new(self.seed);
        let bs = self.block_size;
        let row_width = self.kv_heads * self.head_dim;
        let blocks: Vec<usize> = self.seqs.iter().map(|&(c, _)| c.div_ceil(bs)).collect();
        let num_blocks = blocks.iter().sum::<usize>() + 2;
        let max_blocks = blocks.iter().copied().max().unwrap_or(0) + 1;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        rng.shuffle(&mut ids);
        let mut next = ids.into_iter();
        let mut block_tables = vec![u32::MAX; self.seqs.len() * max_blocks];
        for (s, &n) in blocks.iter().enumerate() {
            for b in &mut block_tables[s * max_blocks..s * max_blocks + n] {
                *b = next.next().unwrap_or(u32::MAX);
            }
        }
        // Unused slots hold garbage (large values): kernels must never read them.
        let cache_len = num_blocks * bs * row_width;
        let mut k = vec![1.0e4f32; cache_len];
        let mut v = vec![-1.0e4f32; cache_len];
        for (s, &(ctx, _)) in self.seqs.iter().enumerate() {
            for p in 0..ctx {
                let slot = block_tables[s * max_blocks + p / bs] as usize * bs + p % bs;
                let row = slot * row_width..(slot + 1) * row_width;
                k[row.clone()].copy_from_slice(&rng.vec(row_width, 1.0));
                v[row].copy_from_slice(&rng.vec(row_width, 1.0));
            }
        }
        let shape = [num_blocks, bs, self.kv_heads, self.head_dim];
        let (k_cache, v_cache) = match self.cache_dtype {
            DType::BF16 => (bf16_tensor(&k, &shape), bf16_tensor(&v, &shape)),
            _ => (
                f32_tensor(&bf16_round(&k), &shape),
                f32_tensor(&bf16_round(&v), &shape),
            ),
        };
        let mut cu_seqlens_q = vec![0u32];
        for &(_, q_len) in &self.seqs {
            cu_seqlens_q.push(cu_seqlens_q[cu_seqlens_q.len() - 1] + q_len as u32);
        }
        let rows = *cu_seqlens_q.last().unwrap_or(&0) as usize;
        Inputs {
            q: bf16_round(&rng.vec(rows * self.heads * self.head_dim, 3.0)),
            k_cache,
            v_cache,
            cu_seqlens_q,
            context_lens: self.seqs.iter().map(|&(c, _)| c as u32).collect(),
            block_tables,
            max_blocks,
            rows,
        }
    }

    fn meta(&self, inputs: &Inputs, prefill: bool) -> AttentionMetadata {
        let num_seqs = self.seqs.len();
        AttentionMetadata {
            is_prefill: prefill,
            num_seqs,
            block_size: self.block_size,
            cu_seqlens_q: u32_tensor(&inputs.cu_seqlens_q, &[num_seqs + 1]),
            context_lens: u32_tensor(&inputs.context_lens, &[num_seqs]),
            block_tables: u32_tensor(&inputs.block_tables, &[num_seqs, inputs.max_blocks]),
            slot_mapping: Tensor::from_i64(vec![-1; inputs.rows], &[inputs.rows])
                .unwrap_or_else(|e| panic!("{e}")),
            max_seqlen_q: self.seqs.iter().map(|&(_, q)| q).max().unwrap_or(0),
            max_context_len: self.seqs.iter().map(|&(c, _)| c).max().unwrap_or(0)
                + self.extra_max_context,
        }
    }

    /// CUDA and CPU outputs of prefill (or decode) attention on this case.
    fn run(&self, be: &dyn Backend, prefill: bool) -> (Vec<f32>, Vec<f32>) {
        let inputs = self.inputs();
        let meta = self.meta(&inputs, prefill);
        let width = self.heads * self.head_dim;
        let kv_new = Tensor::zeros_cpu(&[inputs.rows, self.kv_heads * self.head_dim], DType::F32);
        let scale = 1.0 / (self.head_dim as f32).sqrt();

        let cpu = CpuBackend::new();
        let cpu_cache = LayerKvCache::new(inputs.k_cache.clone(), inputs.v_cache.clone());
        let q_cpu = f32_tensor(&inputs.q, &[inputs.rows, width]);
        let want = if prefill {
            cpu.prefill_attention(&q_cpu, &kv_new, &kv_new, &cpu_cache, &meta, scale)
        } else {
            cpu.decode_attention(&q_cpu, &cpu_cache, &meta, scale)
        }
        .unwrap_or_else(|e| panic!("cpu {self:?}: {e}"));

        let gpu_cache = LayerKvCache::new(up(be, &inputs.k_cache), up(be, &inputs.v_cache));
        let gpu_meta = AttentionMetadata {
            cu_seqlens_q: up(be, &meta.cu_seqlens_q),
            context_lens: up(be, &meta.context_lens),
            block_tables: up(be, &meta.block_tables),
            slot_mapping: up(be, &meta.slot_mapping),
            ..meta.clone()
        };
        let q_gpu = up(be, &act_tensor(be, &inputs.q, &[inputs.rows, width]));
        let kv_new_gpu = up(
            be,
            &act_tensor(be, &vec![0.0; kv_new.numel()], kv_new.shape()),
        );
        let got = if prefill {
            be.prefill_attention(
                &q_gpu,
                &kv_new_gpu,
                &kv_new_gpu,
                &gpu_cache,
                &gpu_meta,
                scale,
            )
        } else {
            be.decode_attention(&q_gpu, &gpu_cache, &gpu_meta, scale)
        }
        .unwrap_or_else(|e| panic!("cuda {self:?}: {e}"));
        assert_eq!(got.shape(), &[inputs.rows, width]);
        assert_eq!(got.dtype(), be.activation_dtype());
        let want = want.to_vec_f32().unwrap_or_else(|e| panic!("{e}"));
        (host(be, &got), want)
    }
}

/// Attention outputs are convex combinations of values in [-1, 1]. Bound: the bf16
/// output rounding (2⁻⁹·|o|), plus in prefill the bf16 rounding of the probabilities fed
/// to the tensor cores (≤ 2⁻⁹·Σp|v|/Σp ≤ 2⁻⁹), plus f32/fast-exp noise: 5e-3 absolute +
/// 8e-3 relative.
const ATTENTION_TOL: Tol = Tol {
    abs: 5e-3,
    rel: 8e-3,
};

fn check_case(be: &dyn Backend, case: &Case, prefill: bool) {
    let (got, want) = case.run(be, prefill);
    let what = if prefill { "prefill" } else { "decode" };
    assert_close(
        &format!("{what} {case:?}"),
        &got,
        &widen(&want),
        ATTENTION_TOL,
    );
}

/// `(heads, kv_heads, head_dim)`: GQA 4:1 and 1:1 at the two tensor-core head dims.
const SHAPES: [(usize, usize, usize); 4] = [(16, 4, 64), (8, 8, 64), (32, 8, 128), (8, 8, 128)];

#[test]
fn prefill_varlen_with_cached_prefix_matches_cpu() {
    with_gpu(|be| {
        for (i, &(heads, kv_heads, head_dim)) in SHAPES.iter().enumerate() {
            for block_size in [16, 256] {
                let case = Case {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size,
                    cache_dtype: DType::BF16,
                    // Whole prompts, cached prefixes (tile-aligned and not), single tokens
                    // and a sequence longer than one 64-row query tile.
                    seqs: vec![(9, 9), (300, 172), (1, 1), (130, 64), (77, 1), (200, 130)],
                    extra_max_context: 0,
                    seed: 100 + i as u64 * 10 + block_size as u64,
                };
                check_case(be, &case, true);
            }
        }
    });
}

#[test]
fn prefill_long_prompt_matches_cpu() {
    with_gpu(|be| {
        let case = Case {
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            cache_dtype: DType::BF16,
            seqs: vec![(1500, 1000), (700, 700)],
            extra_max_context: 0,
            seed: 7,
        };
        check_case(be, &case, true);
    });
}

#[test]
fn decode_split_context_matches_cpu() {
    with_gpu(|be| {
        for (i, &(heads, kv_heads, head_dim)) in SHAPES.iter().enumerate() {
            for block_size in [16, 256] {
                let case = Case {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size,
                    cache_dtype: DType::BF16,
                    // Few sequences: the context is split (flash-decoding) and combined.
                    seqs: vec![
                        (1, 1),
                        (2, 1),
                        (63, 1),
                        (64, 1),
                        (65, 1),
                        (513, 1),
                        (4096, 1),
                    ],
                    extra_max_context: 0,
                    seed: 200 + i as u64 * 10 + block_size as u64,
                };
                check_case(be, &case, false);
            }
        }
    });
}

#[test]
fn decode_many_sequences_unsplit_matches_cpu() {
    with_gpu(|be| {
        // 128 sequences × 8 KV heads fill the GPU: one split, the kernel writes directly.
        let seqs = (0..128).map(|s| (1 + (s * 37) % 400, 1)).collect();
        let case = Case {
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            cache_dtype: DType::BF16,
            seqs,
            extra_max_context: 0,
            seed: 300,
        };
        check_case(be, &case, false);
    });
}

#[test]
fn decode_graph_bounds_and_padding_rows() {
    with_gpu(|be| {
        // As in a captured graph: max_context_len = max_model_len ≫ the real contexts,
        // and padding rows with context_len 0 (which must give zeros and read nothing).
        let case = Case {
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            cache_dtype: DType::BF16,
            seqs: vec![(5, 1), (0, 1), (300, 1), (0, 1)],
            extra_max_context: 8192,
            seed: 400,
        };
        let (got, want) = case.run(be, false);
        assert_close(
            "decode with graph bounds",
            &got,
            &widen(&want),
            ATTENTION_TOL,
        );
        let width = 16 * 128;
        assert!(got[width..2 * width].iter().all(|&x| x == 0.0));
        assert!(got[3 * width..].iter().all(|&x| x == 0.0));
        // Deterministic: a second run gives the same bits.
        let (again, _) = case.run(be, false);
        assert_eq!(got, again, "decode is not deterministic");
    });
}

#[test]
fn generic_kernel_covers_other_head_dims_and_f32_caches() {
    with_gpu(|be| {
        for (i, (head_dim, cache_dtype)) in [(40, DType::BF16), (128, DType::F32), (24, DType::F32)]
            .into_iter()
            .enumerate()
        {
            let case = Case {
                heads: 8,
                kv_heads: 2,
                head_dim,
                block_size: 16,
                cache_dtype,
                seqs: vec![(9, 9), (70, 33), (1, 1)],
                extra_max_context: 0,
                seed: 500 + i as u64,
            };
            check_case(be, &case, true);
            let mut decode = case.clone();
            decode.seqs = vec![(9, 1), (70, 1), (1, 1), (300, 1)];
            check_case(be, &decode, false);
        }
    });
}

// ---------------------------------------------------------------------------------------
// MoE
// ---------------------------------------------------------------------------------------

#[test]
fn moe_route_matches_cpu() {
    with_gpu(|be| {
        let cpu = CpuBackend::new();
        let cases = [(37, 8, 2), (5, 60, 4), (64, 128, 8), (3, 4, 4)];
        let weightings = [TopKWeights::Renormalized, TopKWeights::Probabilities];
        for (i, (tokens, experts, top_k)) in cases.into_iter().enumerate() {
            for weighting in weightings {
                let logits = bf16_round(&Rng::new(600 + i as u64).vec(tokens * experts, 4.0));
                let (want_ids, want_w) = cpu
                    .moe_route(&f32_tensor(&logits, &[tokens, experts]), top_k, weighting)
                    .unwrap_or_else(|e| panic!("cpu moe_route: {e}"));
                // Logits in the activation dtype (bf16) and in f32.
                for input in [
                    act_tensor(be, &logits, &[tokens, experts]),
                    f32_tensor(&logits, &[tokens, experts]),
                ] {
                    let (ids, weights) = be
                        .moe_route(&up(be, &input), top_k, weighting)
                        .unwrap_or_else(|e| panic!("cuda moe_route: {e}"));
                    assert_eq!(ids.dtype(), DType::U32);
                    assert_eq!(weights.shape(), &[tokens, top_k]);
                    // Ids exactly (random logits have no near-ties).
                    let ids = be
                        .to_host(&ids)
                        .and_then(|t| t.as_u32_slice().map(<[u32]>::to_vec))
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(
                        ids,
                        want_ids.as_u32_slice().unwrap_or_default(),
                        "E {experts}"
                    );
                    // Weights in [0, 1]: f32 softmax with fast-math exp and another summation
                    // order, 1e-5 absolute.
                    assert_close(
                        &format!("moe_route {weighting:?} weights E {experts} k {top_k}"),
                        &host(be, &weights),
                        &widen(want_w.as_f32_slice().unwrap_or_default()),
                        Tol {
                            abs: 1e-5,
                            rel: 0.0,
                        },
                    );
                }
            }
        }
    });
}

/// A MoE layer's inputs: `x [T, H]`, `w13 [E, 2I, H]`, `w2 [E, H, I]`, routing.
struct MoeCase {
    tokens: usize,
    hidden: usize,
    intermediate: usize,
    experts: usize,
    top_k: usize,
    seed: u64,
}

#[test]
fn moe_experts_matches_cpu() {
    with_gpu(|be| {
        let cases = [
            // Tails everywhere: H and I not multiples of the 64 / 32 tiles, a partial K tile.
            MoeCase {
                tokens: 50,
                hidden: 72,
                intermediate: 96,
                experts: 8,
                top_k: 2,
                seed: 700,
            },
            // Decode-like: few tokens, many experts (most unused).
            MoeCase {
                tokens: 3,
                hidden: 128,
                intermediate: 64,
                experts: 32,
                top_k: 4,
                seed: 701,
            },
            // Prefill-like: several row tiles per expert.
            MoeCase {
                tokens: 300,
                hidden: 256,
                intermediate: 352,
                experts: 4,
                top_k: 2,
                seed: 702,
            },
        ];
        for case in &cases {
            check_moe(be, case);
        }
    });
}

fn check_moe(be: &dyn Backend, case: &MoeCase) {
    let &MoeCase {
        tokens: t,
        hidden: h,
        intermediate: i,
        experts: e,
        top_k: k,
        seed,
    } = case;
    let mut rng = Rng::new(seed);
    let x = bf16_round(&rng.vec(t * h, 1.0));
    let w13 = bf16_round(&rng.vec(e * 2 * i * h, 1.0 / (h as f32).sqrt()));
    let w2 = bf16_round(&rng.vec(e * h * i, 1.0 / (i as f32).sqrt()));
    // Skewed routing: expert 0 is popular, the last expert is never picked.
    let mut ids = vec![0u32; t * k];
    let mut weights = vec![0f32; t * k];
    for r in 0..t {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < k {
            let id = if rng.below(3) == 0 {
                0
            } else {
                rng.below(e - 1) as u32
            };
            if !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        let raw: Vec<f32> = (0..k).map(|_| 0.1 + rng.uniform().abs()).collect();
        let sum: f32 = raw.iter().sum();
        for j in 0..k {
            ids[r * k + j] = chosen[j];
            weights[r * k + j] = raw[j] / sum;
        }
    }
    let shapes = ([t, h], [e, 2 * i, h], [e, h, i], [t, k]);
    let cpu = CpuBackend::new();
    let want = cpu
        .moe_experts(
            &f32_tensor(&x, &shapes.0),
            &bf16_tensor(&w13, &shapes.1),
            &bf16_tensor(&w2, &shapes.2),
            &u32_tensor(&ids, &shapes.3),
            &f32_tensor(&weights, &shapes.3),
        )
        .and_then(|o| o.to_vec_f32())
        .unwrap_or_else(|e| panic!("cpu moe_experts: {e}"));

    let run = || {
        be.moe_experts(
            &up(be, &act_tensor(be, &x, &shapes.0)),
            &up(be, &bf16_tensor(&w13, &shapes.1)),
            &up(be, &bf16_tensor(&w2, &shapes.2)),
            &up(be, &u32_tensor(&ids, &shapes.3)),
            &up(be, &f32_tensor(&weights, &shapes.3)),
        )
        .unwrap_or_else(|err| panic!("cuda moe_experts T {t} H {h} I {i} E {e}: {err}"))
    };
    let out = run();
    assert_eq!(out.shape(), &[t, h]);
    let got = host(be, &out);

    // Error bound per output: the bf16 rounding of act (2⁻⁹ relative) propagates as
    // 2⁻⁹·Σ_j w_j Σ_i |w2[h, i]·act_i|, the bf16 output rounding adds 2⁻⁹·|out|; both are
    // doubled (2⁻⁸) for f32 accumulation order and fast-math exp in silu.
    let scale = moe_term_scale(case, &x, &w13, &w2, &ids, &weights);
    assert_close_scaled(
        &format!("moe_experts T {t} H {h} I {i} E {e} k {k}"),
        &got,
        &widen(&want),
        &scale,
        2f64.powi(-8),
        Tol {
            abs: 1e-6,
            rel: 2f64.powi(-8),
        },
    );
    // Deterministic although the bucket order is not.
    assert_eq!(got, host(be, &run()), "moe_experts is not deterministic");
}

/// `Σ_j w_j Σ_i |w2[e_j][h, i] · act_i|` per output element (f64, naive).
fn moe_term_scale(
    case: &MoeCase,
    x: &[f32],
    w13: &[f32],
    w2: &[f32],
    ids: &[u32],
    weights: &[f32],
) -> Vec<f64> {
    let (h, i, k) = (case.hidden, case.intermediate, case.top_k);
    let mut scale = vec![0f64; case.tokens * h];
    for t in 0..case.tokens {
        let xt = &x[t * h..(t + 1) * h];
        for j in 0..k {
            let e = ids[t * k + j] as usize;
            let dot = |row: usize| -> f64 {
                let w = &w13[(e * 2 * i + row) * h..(e * 2 * i + row + 1) * h];
                xt.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let act: Vec<f64> = (0..i)
                .map(|c| {
                    let g = dot(c);
                    g / (1.0 + (-g).exp()) * dot(i + c)
                })
                .collect();
            for o in 0..h {
                let w = &w2[(e * h + o) * i..(e * h + o + 1) * i];
                let terms: f64 = w
                    .iter()
                    .zip(&act)
                    .map(|(&a, &b)| (a as f64 * b).abs())
                    .sum();
                scale[t * h + o] += weights[t * k + j] as f64 * terms;
            }
        }
    }
    scale
}

// ---------------------------------------------------------------------------------------
// Dense ops
// ---------------------------------------------------------------------------------------

/// One MLP-ish step on both backends: add_rms_norm → matmul (gate_up) → silu_mul →
/// matmul (down) → rope on a projection → index_rows. bf16 activations round after every
/// op, so the tolerance is the bf16 step (2⁻⁸) times a small op count, relative to each
/// output's magnitude: 3e-2 relative plus 2e-3 absolute (outputs are ~0.03..3).
#[test]
fn dense_chain_matches_cpu() {
    with_gpu(|be| {
        let cpu = CpuBackend::new();
        let (tokens, hidden, inter, heads, head_dim) = (37, 256, 512, 2, 128);
        let mut rng = Rng::new(101);
        let x = rng.vec(tokens * hidden, 1.0);
        let residual = rng.vec(tokens * hidden, 1.0);
        let norm_w = rng.vec(hidden, 1.0);
        let w_gate_up = rng.vec(2 * inter * hidden, 0.05);
        let w_down = rng.vec(hidden * inter, 0.05);
        let positions: Vec<u32> = (0..tokens as u32).collect();
        let table = reference::rope_table(64, head_dim, 10_000.0);
        let rows: Vec<u32> = vec![36, 0, 5];

        let run = |b: &dyn Backend| -> Vec<Vec<f32>> {
            let act = b.activation_dtype();
            let xt = upload_float(b, &x, &[tokens, hidden], act);
            let mut res = upload_float(b, &residual, &[tokens, hidden], act);
            let nw = upload_float(b, &norm_w, &[hidden], DType::BF16);
            let gu = upload_float(b, &w_gate_up, &[2 * inter, hidden], DType::BF16);
            let dn = upload_float(b, &w_down, &[hidden, inter], DType::BF16);
            let h = b
                .add_rms_norm(&xt, &mut res, &nw, 1e-6)
                .unwrap_or_else(|e| panic!("{e}"));
            let g = b.matmul(&h, &gu).unwrap_or_else(|e| panic!("{e}"));
            let a = b.silu_mul(&g).unwrap_or_else(|e| panic!("{e}"));
            let mut d = b.matmul(&a, &dn).unwrap_or_else(|e| panic!("{e}"));
            b.rope(
                &mut d,
                &upload_u32(b, &positions, &[tokens]),
                &upload_float(b, &table, &[64, head_dim], DType::F32),
                head_dim,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let picked = b
                .index_rows(&d, &upload_u32(b, &rows, &[rows.len()]))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(heads * head_dim, hidden);
            vec![
                host_f32(b, &res),
                host_f32(b, &h),
                host_f32(b, &d),
                host_f32(b, &picked),
            ]
        };
        let want = run(&cpu);
        let got = run(be);
        for (name, (g, w)) in ["residual", "normed", "down+rope", "picked"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            assert_close(
                name,
                g,
                &w64,
                Tol {
                    abs: 2e-3,
                    rel: 3e-2,
                },
            );
        }
    });
}

// ---------------------------------------------------------------------------------------

/// `Backend::sample` at the engine's shapes (Qwen3's 151 936-token vocabulary, 1 to 64
/// rows; the shared suite uses small vocabularies), both backends on the same bf16 logits:
/// greedy tokens exactly the CPU's; sampled tokens exactly the CPU's wherever the plain
/// reference finds the draw clear of every decision boundary (`testing::sampling::GUARD`),
/// which must be most rows; logprobs with the same ids, values within
/// `testing::sampling::logprob_tol` of each other's.
#[test]
fn sample_matches_cpu_at_model_shapes() {
    with_gpu(|be| {
        let cpu = CpuBackend::new();
        let vocab = 151_936;
        let mut rng = Rng::new(301);
        let mut compared = 0;
        let mut sampled_rows = 0;
        for rows in [1, 7, 64] {
            let data = bf16_round(&rng.vec(rows * vocab, 8.0));
            let specs: Vec<SamplingRow<'_>> = (0..rows)
                .map(|r| {
                    let base = match r % 4 {
                        0 => SamplingRow::default(),
                        1 => SamplingRow {
                            temperature: 0.6,
                            top_k: 20,
                            top_p: 0.95,
                            ..SamplingRow::default()
                        },
                        2 => SamplingRow {
                            temperature: 1.0,
                            ..SamplingRow::default()
                        },
                        _ => SamplingRow {
                            temperature: 0.8,
                            top_p: 0.9,
                            min_p: 0.01,
                            ..SamplingRow::default()
                        },
                    };
                    SamplingRow {
                        seed: 7 + r as u64,
                        step: r as u64 / 2,
                        num_logprobs: (r % 3 == 0).then_some(5),
                        ..base
                    }
                })
                .collect();
            let got = be
                .sample(up(be, &bf16_tensor(&data, &[rows, vocab])), &specs)
                .unwrap_or_else(|e| panic!("cuda sample of {rows} rows: {e}"));
            let want = cpu
                .sample(f32_tensor(&data, &[rows, vocab]), &specs)
                .unwrap_or_else(|e| panic!("cpu sample of {rows} rows: {e}"));
            for (r, spec) in specs.iter().enumerate() {
                let what = format!("{rows} rows, row {r} ({spec:?})");
                let certain = spec.is_greedy()
                    || reference_row(&data[r * vocab..(r + 1) * vocab], spec).certain;
                sampled_rows += usize::from(!spec.is_greedy());
                if certain {
                    compared += usize::from(!spec.is_greedy());
                    assert_eq!(got.tokens[r], want.tokens[r], "{what}");
                }
                let (Some(g), Some(w)) = (&got.logprobs[r], &want.logprobs[r]) else {
                    assert_eq!(
                        got.logprobs[r].is_some(),
                        spec.num_logprobs.is_some(),
                        "{what}"
                    );
                    assert_eq!(
                        want.logprobs[r].is_some(),
                        spec.num_logprobs.is_some(),
                        "{what}"
                    );
                    continue;
                };
                let tol = logprob_tol();
                let close = |a: f32, b: f32| {
                    (a as f64 - b as f64).abs() <= tol.abs + tol.rel * (b as f64).abs()
                };
                let ids = |t: &[(u32, f32)]| t.iter().map(|&(id, _)| id).collect::<Vec<_>>();
                assert_eq!(ids(&g.top), ids(&w.top), "{what}: top ids");
                for (a, b) in g.top.iter().zip(&w.top) {
                    assert!(close(a.1, b.1), "{what}: top {a:?} vs cpu {b:?} ({tol:?})");
                }
                if got.tokens[r] == want.tokens[r] {
                    assert!(
                        close(g.logprob, w.logprob),
                        "{what}: {} vs cpu {}",
                        g.logprob,
                        w.logprob
                    );
                }
            }
        }
        assert!(
            compared * 10 >= sampled_rows * 9,
            "only {compared} of {sampled_rows} sampled rows clear of a boundary"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------

/// Definition step 1 (`nanovllm_kernels::sampling`), in f32: mask, bias, penalties.
fn processed_logits(logits: &[f32], row: &SamplingRow<'_>) -> Vec<f32> {
    let sanitize = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut l: Vec<f32> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| match row.allowed_tokens {
            Some(m) if (m[i / 32] >> (i % 32)) & 1 == 0 => f32::NEG_INFINITY,
            _ => sanitize(x),
        })
        .collect();
    for &(id, bias) in row.logit_bias {
        l[id as usize] += bias;
    }
    if let Some(p) = &row.penalties {
        let mut seen = vec![false; l.len()];
        for &id in p
            .prompt_tokens
            .iter()
            .chain(p.output_counts.iter().map(|(id, _)| id))
        {
            seen[id as usize] = true;
        }
        for (x, _) in l.iter_mut().zip(&seen).filter(|(_, &s)| s) {
            *x = if *x > 0.0 {
                *x / p.repetition
            } else {
                *x * p.repetition
            };
        }
        for &(id, count) in p.output_counts {
            l[id as usize] -= p.frequency * count as f32 + p.presence;
        }
    }
    l.into_iter().map(sanitize).collect()
}

/// Total order of processed logits (no NaN left; −0 = +0).
fn logit_order(a: f32, b: f32) -> std::cmp::Ordering {
    a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
}

/// How far (relative) the definition's decisions for a sampled row are from a boundary
/// that rounding could cross, with f64 sums: the top-p prefix mass against `top_p × S`
/// and the two weights either side of the top-p cut (when their logits differ: equal
/// logits have equal weights in any implementation), each survivor's weight against
/// min-p, and `u × total` against the CDF steps around it. Two implementations of the
/// definition that differ only by rounding (exp ulps, summation order, the CUDA kernel's
/// fixed-point masses) pick the same token when this exceeds their rounding.
fn sample_margin(logits: &[f32], row: &SamplingRow<'_>) -> f64 {
    let l = processed_logits(logits, row);
    if row.is_greedy() || !l.iter().any(|x| x.is_finite()) {
        return f64::INFINITY;
    }
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = l
        .iter()
        .map(|&x| {
            if x == max {
                1.0
            } else {
                (((x - max) / row.temperature) as f64).exp()
            }
        })
        .collect();
    let mut ids: Vec<usize> = (0..l.len()).collect();
    if row.top_k >= 1 && row.top_k < l.len() {
        ids.sort_by(|&a, &b| logit_order(l[b], l[a]).then(a.cmp(&b)));
        ids.truncate(row.top_k);
    }
    let mut margin = f64::INFINITY;
    if row.top_p < 1.0 {
        ids.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        let total: f64 = ids.iter().map(|&i| w[i]).sum();
        let need = row.top_p as f64 * total;
        let mut acc = 0.0;
        let mut kept = 0;
        while acc < need && kept < ids.len() {
            margin = margin.min((need - acc) / total);
            acc += w[ids[kept]];
            kept += 1;
        }
        margin = margin.min((acc - need) / total);
        if let (Some(&last), Some(&next)) = (ids.get(kept - 1), ids.get(kept)) {
            if l[last] != l[next] {
                margin = margin.min((w[last] - w[next]) / w[last]);
            }
        }
        ids.truncate(kept);
    }
    if row.min_p > 0.0 {
        for &i in &ids {
            margin = margin.min((w[i] / row.min_p as f64 - 1.0).abs());
        }
        ids.retain(|&i| w[i] >= row.min_p as f64);
    }
    ids.sort_unstable();
    let total: f64 = ids.iter().map(|&i| w[i]).sum();
    let target = uniform(row.seed, row.step) * total;
    let mut run = 0.0;
    for &i in &ids {
        let before = run;
        run += w[i];
        if run > target {
            return margin
                .min((run - target) / total)
                .min((target - before) / total);
        }
    }
    0.0
}

/// Logits like a language model's, rounded to bf16: a bulk around 0 and a few spikes.
fn lm_logits(rng: &mut Rng, vocab: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..vocab)
        .map(|_| 2.0 * (rng.uniform() + rng.uniform() + rng.uniform()))
        .collect();
    for _ in 0..8 {
        let i = rng.below(vocab);
        v[i] = 8.0 + 8.0 * rng.uniform().abs();
    }
    bf16_round(&v)
}

/// The processing inputs rows borrow: an even-ids mask, biases, penalties.
struct Processing {
    mask: Vec<u32>,
    bias: Vec<(u32, f32)>,
    prompt: Vec<u32>,
    output: Vec<(u32, u32)>,
}

impl Processing {
    fn new(rng: &mut Rng, vocab: usize) -> Self {
        let mut mask = vec![0u32; vocab.div_ceil(32)];
        for i in (0..vocab).step_by(2) {
            mask[i / 32] |= 1 << (i % 32);
        }
        let mut id = || rng.below(vocab) as u32;
        let bias = vec![
            (id(), 5.0),
            (id(), -3.0),
            (7 % vocab as u32, 2.5),
            (7 % vocab as u32, 0.5),
        ];
        let mut prompt: Vec<u32> = (0..50).map(|_| id()).collect();
        prompt.sort_unstable();
        prompt.dedup();
        let mut output: Vec<(u32, u32)> = prompt.iter().take(10).map(|&t| (t, 2)).collect();
        output.extend((0..20).map(|k| (id(), 1 + k % 3)));
        output.sort_unstable_by_key(|e| e.0);
        output.dedup_by_key(|e| e.0);
        Self {
            mask,
            bias,
            prompt,
            output,
        }
    }

    fn penalties(&self) -> Penalties<'_> {
        Penalties {
            repetition: 1.3,
            frequency: 0.2,
            presence: 0.4,
            prompt_tokens: &self.prompt,
            output_counts: &self.output,
        }
    }
}

/// The settings a sampling case cycles through (greedy, each filter alone and together,
/// processing, logprobs); row `r` uses setting `r % len` and step `r / len`.
fn sampling_settings(p: &Processing) -> Vec<SamplingRow<'_>> {
    let t1 = SamplingRow {
        temperature: 1.0,
        ..SamplingRow::default()
    };
    let processing = SamplingRow {
        allowed_tokens: Some(&p.mask),
        logit_bias: &p.bias,
        penalties: Some(p.penalties()),
        ..SamplingRow::default()
    };
    vec![
        SamplingRow::default(),
        SamplingRow {
            num_logprobs: Some(20),
            ..SamplingRow::default()
        },
        t1,
        SamplingRow {
            temperature: 0.7,
            top_k: 50,
            ..t1
        },
        SamplingRow { top_p: 0.9, ..t1 },
        SamplingRow {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            num_logprobs: Some(5),
            ..t1
        },
        SamplingRow {
            temperature: 1.2,
            min_p: 0.1,
            ..t1
        },
        SamplingRow {
            top_k: 3000,
            top_p: 0.8,
            ..t1
        },
        SamplingRow {
            temperature: 1.5,
            top_k: 2048,
            ..t1
        },
        processing,
        SamplingRow {
            temperature: 0.9,
            top_p: 0.9,
            num_logprobs: Some(3),
            ..processing
        },
    ]
}

fn sample_on(
    be: &dyn Backend,
    values: &[f32],
    rows: &[SamplingRow<'_>],
    dtype: DType,
) -> SampleOutput {
    let shape = [rows.len(), values.len() / rows.len()];
    let logits = match dtype {
        DType::BF16 => bf16_tensor(values, &shape),
        _ => f32_tensor(values, &shape),
    };
    be.sample(up(be, &logits), rows)
        .unwrap_or_else(|e| panic!("sample on {:?}: {e}", be.device()))
}

/// Logprobs within `1e-4 + 1e-5·|x|`; the top ids equal except where two values are that
/// close (a near tie may order differently), or at the last place.
fn assert_logprobs_close(what: &str, got: &Option<RowLogprobs>, want: &Option<RowLogprobs>) {
    let close = |a: f32, b: f32| a == b || (a - b).abs() <= 1e-4 + 1e-5 * b.abs();
    let (got, want) = match (got, want) {
        (None, None) => return,
        (Some(g), Some(w)) => (g, w),
        _ => panic!("{what}: logprobs {got:?}, expected {want:?}"),
    };
    assert!(
        close(got.logprob, want.logprob),
        "{what}: {got:?} vs {want:?}"
    );
    assert_eq!(got.top.len(), want.top.len(), "{what}: {got:?} vs {want:?}");
    let n = want.top.len();
    for j in 0..n {
        let (g, w) = (got.top[j], want.top[j]);
        assert!(close(g.1, w.1), "{what}: place {j}: {got:?} vs {want:?}");
        let near_tie = j + 1 == n
            || (j > 0 && close(want.top[j - 1].1, w.1))
            || (j + 1 < n && close(want.top[j + 1].1, w.1));
        assert!(
            g.0 == w.0 || near_tie,
            "{what}: place {j}: {got:?} vs {want:?}"
        );
    }
}

/// CUDA (bf16 logits) against the CPU (the same values in f32) on `rows`.
fn check_sampling(be: &dyn Backend, values: &[f32], rows: &[SamplingRow<'_>]) {
    let cpu = CpuBackend::new();
    let vocab = values.len() / rows.len();
    let want = sample_on(&cpu, values, rows, DType::F32);
    let got = sample_on(be, values, rows, DType::BF16);
    assert_eq!(got.tokens.len(), rows.len());
    let (mut sampled, mut compared) = (0, 0);
    for (r, row) in rows.iter().enumerate() {
        let what = format!("row {r} of {} (vocab {vocab}): {row:?}", rows.len());
        let margin = sample_margin(&values[r * vocab..(r + 1) * vocab], row);
        if !row.is_greedy() {
            sampled += 1;
        }
        // Greedy: exactly. Sampled: where no decision is within 1e-5 of its boundary
        // (exp ulps, sums in another order or in fixed point move boundaries ≲ 1e-7).
        if margin > 1e-5 {
            compared += usize::from(!row.is_greedy());
            assert_eq!(got.tokens[r], want.tokens[r], "{what}: margin {margin:e}");
            assert_logprobs_close(&what, &got.logprobs[r], &want.logprobs[r]);
        }
        let token = got.tokens[r];
        assert!(
            token == NO_FINITE_LOGIT || (token as usize) < vocab,
            "{what}"
        );
        let asked = row.num_logprobs.is_some() && token != NO_FINITE_LOGIT;
        assert_eq!(got.logprobs[r].is_some(), asked, "{what}");
    }
    // A draw landing on a token of probability ≲ 2e-5 (the bulk of a 152k vocabulary at
    // temperature 1) is always that close to a boundary; most draws are not.
    assert!(
        compared * 3 >= sampled * 2,
        "only {compared} of {sampled} sampled rows compared"
    );
}

/// `count` rows cycling through the settings, each with its own logits.
fn sampling_rows<'a>(
    rng: &mut Rng,
    settings: &[SamplingRow<'a>],
    vocab: usize,
    count: usize,
) -> (Vec<f32>, Vec<SamplingRow<'a>>) {
    let rows: Vec<SamplingRow<'a>> = (0..count)
        .map(|r| SamplingRow {
            seed: 17 + (r % settings.len()) as u64,
            step: (r / settings.len()) as u64,
            ..settings[r % settings.len()]
        })
        .collect();
    let values = (0..count).flat_map(|_| lm_logits(rng, vocab)).collect();
    (values, rows)
}

#[test]
fn sample_matches_cpu_on_a_qwen_sized_vocabulary() {
    with_gpu(|be| {
        let vocab = 151_936;
        let mut rng = Rng::new(900);
        let p = Processing::new(&mut rng, vocab);
        let settings = sampling_settings(&p);
        let (values, rows) = sampling_rows(&mut rng, &settings, vocab, 3 * settings.len());
        check_sampling(be, &values, &rows);
    });
}

#[test]
fn sample_matches_cpu_on_512_rows() {
    with_gpu(|be| {
        let vocab = 1000;
        let mut rng = Rng::new(901);
        let p = Processing::new(&mut rng, vocab);
        let settings = sampling_settings(&p);
        let (values, rows) = sampling_rows(&mut rng, &settings, vocab, 512);
        check_sampling(be, &values, &rows);
    });
}

#[test]
fn sample_special_rows_match_cpu() {
    with_gpu(|be| {
        let vocab = 3001;
        let mut rng = Rng::new(902);
        let p = Processing::new(&mut rng, vocab);
        let base = lm_logits(&mut rng, vocab);
        let nothing = vec![0u32; vocab.div_ceil(32)];
        let mut nan = vec![f32::NAN; vocab];
        nan[5] = 1.0;
        nan[3000] = 2.0;
        let mut inf = base.clone();
        inf[10] = f32::NEG_INFINITY;
        // Coarse logits: thousands of exact ties at every top-k and top-p threshold.
        let coarse: Vec<f32> = base.iter().map(|x| x.round()).collect();
        let mut rows = Vec::new();
        let mut values = Vec::new();
        for (r, setting) in sampling_settings(&p).into_iter().enumerate() {
            for logits in [&base, &nan, &inf, &coarse] {
                rows.push(SamplingRow {
                    seed: 3,
                    step: r as u64,
                    ..setting
                });
                values.extend_from_slice(logits);
            }
            rows.push(SamplingRow {
                allowed_tokens: Some(&nothing),
                ..setting
            });
            values.extend_from_slice(&base);
        }
        check_sampling(be, &values, &rows);
        let got = sample_on(be, &values, &rows, DType::BF16);
        for (r, t) in got.tokens.iter().enumerate() {
            if r % 5 == 4 {
                assert_eq!(*t, NO_FINITE_LOGIT, "row {r}: the mask allows nothing");
                assert_eq!(got.logprobs[r], None);
            }
        }
    });
}

/// f32 logits holding the same (bf16) values give the same output as bf16 ones; a row
/// gives the same token and logprobs alone as in a batch; and every run gives the same.
#[test]
fn sample_is_deterministic_batch_independent_and_dtype_independent() {
    with_gpu(|be| {
        let vocab = 32_000;
        let mut rng = Rng::new(903);
        let p = Processing::new(&mut rng, vocab);
        let settings = sampling_settings(&p);
        let (values, rows) = sampling_rows(&mut rng, &settings, vocab, 2 * settings.len());
        let batch = sample_on(be, &values, &rows, DType::BF16);
        assert_eq!(sample_on(be, &values, &rows, DType::BF16), batch);
        assert_eq!(sample_on(be, &values, &rows, DType::F32), batch);
        for r in 0..rows.len() {
            let alone = sample_on(
                be,
                &values[r * vocab..(r + 1) * vocab],
                &rows[r..r + 1],
                DType::BF16,
            );
            assert_eq!(alone.tokens[0], batch.tokens[r], "row {r}");
            assert_eq!(alone.logprobs[0], batch.logprobs[r], "row {r}");
        }
    });
}
