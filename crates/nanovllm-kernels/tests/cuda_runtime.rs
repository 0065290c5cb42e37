//! The CUDA backend's runtime: errors (not panics) without a GPU, device tensors and
//! their copies, memory accounting, and graph capture and replay.
//!
//! Without a GPU every test but `no_gpu_means_errors_not_panics` (which checks exactly
//! that situation) prints `skipped: <test>: <reason>` and passes, unless
//! `NANOVLLM_REQUIRE_GPU=1` (`nanovllm_kernels::testing::gpu`).
#![cfg(feature = "cuda")]

use nanovllm_kernels::cuda::{self, CudaBackend};
use nanovllm_kernels::testing::check::{host_f32, upload_float};
use nanovllm_kernels::testing::gpu::with_gpu;
use nanovllm_kernels::testing::rng::Rng;
use nanovllm_kernels::{Backend, DType, KernelError, Tensor};

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
