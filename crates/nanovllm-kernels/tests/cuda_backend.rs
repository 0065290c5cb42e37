//! The CUDA backend against naive references (the shared suite) and against the CPU
//! backend (op chains, graph capture, memory accounting).
//!
//! Without a GPU every test prints `skipped: no CUDA device (<reason>)` and passes;
//! `no_gpu_means_errors_not_panics` is the one that does real work on such machines.
#![cfg(feature = "cuda")]

use half::bf16;
use nanovllm_kernels::cuda::{self, CudaBackend};
use nanovllm_kernels::testing::check::{
    activation, assert_close, assert_close_scaled, host_f32, upload_float, upload_u32, Tol,
};
use nanovllm_kernels::testing::reference;
use nanovllm_kernels::testing::rng::Rng;
use nanovllm_kernels::{Backend, CpuBackend, DType, KernelError, Tensor};

/// `Ok` when a GPU is here. Without one the tests skip, unless `NANOVLLM_REQUIRE_GPU=1`
/// (set by `cargo xtask gpu-check`'s run.sh), which turns the skip into a failure.
fn ready() -> Result<(), String> {
    match cuda::unavailable_reason() {
        None => Ok(()),
        Some(reason) if std::env::var("NANOVLLM_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("no CUDA device ({reason}), but NANOVLLM_REQUIRE_GPU=1")
        }
        Some(reason) => Err(format!("no CUDA device ({reason})")),
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("opening cuda:0: {e}"))
}

/// Runs `body` on a fresh backend, or prints why it is skipped.
fn with_gpu(body: impl FnOnce(&CudaBackend)) {
    match ready() {
        Ok(()) => body(&backend()),
        Err(reason) => println!("skipped: {reason}"),
    }
}

nanovllm_kernels::backend_test_suite!(skip_unless: ready(), backend: backend());

#[test]
fn no_gpu_means_errors_not_panics() {
    if cuda::unavailable_reason().is_none() {
        assert!(cuda::is_available());
        assert!(cuda::device_count() >= 1);
        let count = cuda::device_count();
        assert!(matches!(
            CudaBackend::new(count),
            Err(KernelError::CudaUnavailable { .. })
        ));
        return;
    }
    assert!(!cuda::is_available());
    assert_eq!(cuda::device_count(), 0);
    match CudaBackend::new(0) {
        Err(KernelError::CudaUnavailable { reason }) => assert!(!reason.is_empty()),
        other => panic!("expected CudaUnavailable, got {other:?}"),
    }
}

/// Float weights are stored as bf16, rounded to nearest; integers are untouched.
#[test]
fn upload_weight_stores_bf16() {
    with_gpu(|be| {
        let mut rng = Rng::new(100);
        let data = rng.vec(1000, 3.0);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let host = Tensor::from_f32(data.clone(), &[10, 100])
                .and_then(|t| t.to_dtype_cpu(dtype))
                .unwrap_or_else(|e| panic!("{e}"));
            let want: Vec<f32> = host
                .to_vec_f32()
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|&x| bf16::from_f32(x).to_f32())
                .collect();
            let w = be.upload_weight(host).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(w.dtype(), DType::BF16);
            assert_eq!(w.shape(), &[10, 100]);
            assert_eq!(host_f32(be, &w), want, "{dtype} weights");
        }
        let ids = Tensor::from_u32(vec![1, 2, 3], &[3]).unwrap_or_else(|e| panic!("{e}"));
        let ids = be.upload_weight(ids).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids.dtype(), DType::U32);
    });
}

/// Device tensors refuse CPU accessors with a message naming the fix; clone and
/// copy_device copy exactly.
#[test]
fn device_tensors_copy_and_refuse_host_access() {
    with_gpu(|be| {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        let t = upload_float(be, &data, &[4, 6], DType::F32);
        match t.to_vec_f32() {
            Err(e @ KernelError::NotOnHost { .. }) => {
                assert!(e.to_string().contains("Backend::to_host"), "{e}")
            }
            other => panic!("expected NotOnHost, got {other:?}"),
        }
        let cloned = t.clone();
        assert_eq!(host_f32(be, &cloned), data);
        let mut dst = be
            .zeros(&[4, 6], DType::F32)
            .unwrap_or_else(|e| panic!("{e}"));
        be.copy_device(&t, &mut dst)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host_f32(be, &dst), data);
        let mut wrong = be
            .zeros(&[6, 4], DType::F32)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(be.copy_device(&t, &mut wrong).is_err());
    });
}

/// Allocations are counted exactly and released on drop; the peak remembers temporaries.
#[test]
fn memory_stats_track_allocations() {
    with_gpu(|be| {
        let before = be.memory_stats();
        let a = be
            .zeros(&[1024, 256], DType::BF16)
            .unwrap_or_else(|e| panic!("{e}"));
        let after_alloc = be.memory_stats();
        assert_eq!(
            after_alloc.in_use_bytes,
            before.in_use_bytes + 1024 * 256 * 2
        );
        be.reset_peak_memory();
        {
            let _tmp = be
                .zeros(&[1000], DType::F32)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                be.memory_stats().peak_bytes,
                after_alloc.in_use_bytes + 4000
            );
        }
        assert_eq!(be.memory_stats().in_use_bytes, after_alloc.in_use_bytes);
        assert_eq!(
            be.memory_stats().peak_bytes,
            after_alloc.in_use_bytes + 4000
        );
        drop(a);
        assert_eq!(be.memory_stats().in_use_bytes, before.in_use_bytes);
        let (free, total) = be.mem_info().unwrap_or_else(|e| panic!("{e}"));
        assert!(free <= total && total > 0);
    });
}

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

/// A captured chain replays with new inputs copied into the same buffers, and two replays
/// of the same inputs give bit-identical results equal to the eager ops.
#[test]
fn graph_capture_replays_with_new_data() {
    with_gpu(|be| {
        let (rows, cols) = (8, 64);
        let mut rng = Rng::new(102);
        let w = upload_float(be, &rng.vec(cols, 1.0), &[cols], DType::BF16);
        let mut x = be
            .zeros(&[rows, cols], DType::BF16)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = be
            .zeros(&[rows, cols], DType::BF16)
            .unwrap_or_else(|e| panic!("{e}"));

        let eager = |x: &Tensor| -> Vec<f32> {
            let mut t = be.rms_norm(x, &w, 1e-6).unwrap_or_else(|e| panic!("{e}"));
            be.add_inplace(&mut t, x).unwrap_or_else(|e| panic!("{e}"));
            host_f32(be, &t)
        };
        let host_input = |seed: u64| {
            let data = Rng::new(seed).vec(rows * cols, 2.0);
            Tensor::from_f32(data, &[rows, cols])
                .and_then(|t| t.to_dtype_cpu(DType::BF16))
                .unwrap_or_else(|e| panic!("{e}"))
        };

        be.begin_capture().unwrap_or_else(|e| panic!("{e}"));
        assert!(be.is_capturing());
        assert!(
            be.synchronize().is_err(),
            "synchronize must refuse while capturing"
        );
        {
            let mut t = be.rms_norm(&x, &w, 1e-6).unwrap_or_else(|e| panic!("{e}"));
            be.add_inplace(&mut t, &x).unwrap_or_else(|e| panic!("{e}"));
            be.copy_device(&t, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let graph = be.end_capture().unwrap_or_else(|e| panic!("{e}"));
        assert!(!be.is_capturing());

        for seed in [103, 104] {
            be.copy_from_host(&host_input(seed), &mut x)
                .unwrap_or_else(|e| panic!("{e}"));
            graph.launch().unwrap_or_else(|e| panic!("{e}"));
            let first = host_f32(be, &out);
            graph.launch().unwrap_or_else(|e| panic!("{e}"));
            let second = host_f32(be, &out);
            assert_eq!(first, second, "replays differ (seed {seed})");
            assert_eq!(
                first,
                eager(&x),
                "replay differs from eager ops (seed {seed})"
            );
        }
    });
}

/// A bf16 cos/sin table works like the f32 one with its values rounded (the suite covers
/// f32). Tolerance as the suite's rope test: 1e-6 absolute + 1e-6 relative, widened by
/// the bf16 output rounding.
#[test]
fn rope_accepts_bf16_table() {
    with_gpu(|be| {
        let (heads, head_dim, tokens, max_positions) = (4, 64, 33, 128);
        let width = heads * head_dim;
        let mut rng = Rng::new(105);
        let table = reference::rope_table(max_positions, head_dim, 10_000.0);
        let table_bf16: Vec<f32> = table.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let positions: Vec<u32> = (0..tokens)
            .map(|_| rng.below(max_positions) as u32)
            .collect();
        let (mut x, x_ref) = activation(be, &rng.vec(tokens * width, 2.0), &[tokens, width]);
        be.rope(
            &mut x,
            &upload_u32(be, &positions, &[tokens]),
            &upload_float(be, &table, &[max_positions, head_dim], DType::BF16),
            head_dim,
        )
        .unwrap_or_else(|e| panic!("rope: {e}"));
        assert_close(
            "rope with a bf16 table",
            &host_f32(be, &x),
            &reference::rope(&x_ref, &positions, &table_bf16, width, head_dim),
            Tol::for_backend(be, 1e-6, 1e-6, 2.0),
        );
    });
}

/// Ids written by a kernel (no value range recorded from the host) are still validated,
/// by reading them back: index_rows on a u32 tensor produces such a tensor.
#[test]
fn index_checks_read_back_device_written_ids() {
    with_gpu(|be| {
        let vocab = 10;
        let table = upload_float(be, &[1.0; 40], &[vocab, 4], DType::BF16);
        let ids_2d = upload_u32(be, &[3, 12, 7], &[3, 1]);
        let gather = |rows: &[u32]| {
            be.index_rows(&ids_2d, &upload_u32(be, rows, &[rows.len()]))
                .and_then(|t| t.reshape(&[rows.len()]))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let good = gather(&[0, 2, 0]);
        let out = be
            .embedding(&good, &table)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host_f32(be, &out), vec![1.0; 12]);
        let bad = gather(&[2, 1]);
        match be.embedding(&bad, &table) {
            Err(KernelError::IndexOutOfRange {
                index: 12,
                size: 10,
                ..
            }) => {}
            other => panic!("expected id 12 out of range, got {other:?}"),
        }
    });
}

/// f32 activations take matmul's exact f32 path: the suite's tolerance, 1e-5·Σ|x·w| plus
/// one bf16 rounding of the output.
#[test]
fn matmul_accepts_f32_activations() {
    with_gpu(|be| {
        let mut rng = Rng::new(106);
        let (m, k, n) = (17, 259, 131);
        let x = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 1.0);
        let out = be
            .matmul(
                &upload_float(be, &x, &[m, k], DType::F32),
                &upload_float(be, &w, &[n, k], DType::BF16),
            )
            .unwrap_or_else(|e| panic!("matmul: {e}"));
        assert_eq!(out.dtype(), DType::BF16);
        let w_ref: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let (want, magnitude) = reference::matmul(&x, &w_ref, m, k, n);
        assert_close_scaled(
            "matmul f32 x, bf16 w",
            &host_f32(be, &out),
            &want,
            &magnitude,
            1e-5,
            Tol::for_backend(be, 0.0, 0.0, 0.0),
        );
    });
}
