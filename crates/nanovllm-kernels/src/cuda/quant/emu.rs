//! The quantized-matmul kernels' own code run on the host, without a GPU:
//! `kernels/quant.cu` compiled by the system C++ compiler against
//! `tests/quant_emu/quant_emu.h` (every CUDA thread a host thread; barriers, warp shuffles,
//! `ldmatrix`, `mma.m16n8k16` and `cp.async` emulated per the PTX ISA), under
//! AddressSanitizer, with the grid the launcher plans ([`super::plan`]). Each kernel's
//! output must match the f64 reference of the suite ([`assert_quantized_product`]) with the
//! CUDA backend's bounds and no activation-quantization allowance (these kernels multiply
//! bf16 `x` by the weights, exact for the GEMV, rounded to bf16 for the GEMM).
//!
//! Without a C++20 compiler (`$CXX`, else `c++`) the tests print `skipped: …` and pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use half::bf16;

use super::{plan, GEMV_MAX_M};
use crate::dtype::DType;
use crate::quant;
use crate::tensor::{CpuStorage, Tensor};
use crate::testing::check::{rounding_step, Tol};
use crate::testing::quant::{assert_quantized_product, test_weights, QuantBounds};
use crate::testing::rng::Rng;

/// The emulator binary, built once per test process; `None` (and a printed skip line)
/// without a compiler.
fn emulator() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(path) => Some(path.clone()),
        Err(reason) => {
            println!("skipped: {}: {reason}", crate::testing::gpu::current_test());
            None
        }
    }
}

fn build() -> Result<PathBuf, String> {
    crate::cuda::emu_build::build_emulator("quant_emu", "quant-emu", &[])
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs the kernel [`plan`] picks for `x [m, k]` (bf16) · `w [n, k]` (`bytes` of `dtype`).
fn run(
    emu: &Path,
    dtype: DType,
    x: &[bf16],
    bytes: &[u8],
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    let launch = plan(dtype, m, n).unwrap_or_else(|e| panic!("{e}"));
    let fmt = match dtype {
        DType::Int8G32 => 0u32,
        DType::Int4G32 => 1,
        _ => 2,
    };
    let kernel = u32::from(launch.name.starts_with("quant_gemm_"));
    let head = [
        fmt,
        kernel,
        m as u32,
        n as u32,
        k as u32,
        bytes.len() as u32,
    ];
    let mut input: Vec<u8> = bytemuck::cast_slice(&head).to_vec();
    input.extend_from_slice(bytemuck::cast_slice(x));
    input.extend_from_slice(bytes);
    let id = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("nanovllm-quant-emu-{}-{id}", std::process::id()));
    let (inp, outp) = (base.with_extension("in"), base.with_extension("out"));
    std::fs::write(&inp, &input).unwrap_or_else(|e| panic!("{e}"));
    let status = Command::new(emu)
        .arg(&inp)
        .arg(&outp)
        .status()
        .unwrap_or_else(|e| panic!("running the emulator: {e}"));
    assert!(
        status.success(),
        "the emulated {} failed: {status}",
        launch.name
    );
    let out = std::fs::read(&outp).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&inp);
    let _ = std::fs::remove_file(&outp);
    assert_eq!(out.len(), 2 * m * n);
    out.chunks_exact(2)
        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Every (m, n, k) of one dtype: GEMV rows 1..=8 and GEMM tiles (partial, whole, several),
/// N partial and whole tiles, K of one and of several Fp8G128 blocks.
fn kernels_match_reference(dtype: DType, seed: u64) {
    let Some(emu) = emulator() else { return };
    let mut rng = Rng::new(seed);
    // The CUDA backend's bounds: bf16 activations, no activation quantization.
    let bounds = QuantBounds {
        weight_step: rounding_step(DType::BF16),
        act_quant: 0.0,
        out: Tol {
            abs: 0.0,
            rel: 2.0 * rounding_step(DType::BF16),
        },
    };
    for (k, n) in [(128, 67), (384, 128)] {
        let w = test_weights(&mut rng, n, k);
        let host = Tensor::from_f32(w, &[n, k])
            .and_then(|t| quant::quantize(&t, dtype))
            .unwrap_or_else(|e| panic!("{e}"));
        let Ok(CpuStorage::Bytes { bytes, .. }) = host.cpu("test") else {
            panic!("quantize gave no bytes")
        };
        for m in [1, 3, GEMV_MAX_M, GEMV_MAX_M + 1, 64, 70] {
            let x: Vec<bf16> = rng
                .vec(m * k, 1.0)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let x_ref: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
            let got = run(&emu, dtype, &x, bytes, (m, n, k));
            assert_quantized_product(
                &format!("emulated {dtype} kernel m={m} n={n} k={k}"),
                dtype,
                bytes,
                &x_ref,
                &got,
                (m, n, k),
                bounds,
            );
        }
    }
}

#[test]
fn emulated_int8_g32_kernels_match_reference() {
    kernels_match_reference(DType::Int8G32, 190);
}

#[test]
fn emulated_int4_g32_kernels_match_reference() {
    kernels_match_reference(DType::Int4G32, 191);
}

#[test]
fn emulated_fp8_g128_kernels_match_reference() {
    kernels_match_reference(DType::Fp8G128, 192);
}
