//! Moving test data to and from a backend, and comparing results with stated tolerances.

use half::{bf16, f16};

use crate::{Backend, DType, Tensor};

/// Unit roundoff-ish step of a float dtype: the relative error of one rounding to it.
pub fn rounding_step(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => 0.0,
    }
}

/// `x` as it survives a round trip through `dtype`.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

pub fn rounded(dtype: DType, xs: &[f32]) -> Vec<f32> {
    xs.iter().map(|&x| round_to(dtype, x)).collect()
}

/// A host tensor of `dtype` holding `data` (rounded to it), uploaded to `backend`.
pub fn upload_float(backend: &dyn Backend, data: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    let host = Tensor::from_f32(data.to_vec(), shape)
        .and_then(|t| t.to_dtype_cpu(dtype))
        .unwrap_or_else(|e| panic!("building a {dtype} test tensor {shape:?}: {e}"));
    backend
        .upload(host)
        .unwrap_or_else(|e| panic!("upload failed: {e}"))
}

/// An activation on `backend` and the values the backend actually holds (rounded to
/// its activation dtype), for the reference to use.
pub fn activation(backend: &dyn Backend, data: &[f32], shape: &[usize]) -> (Tensor, Vec<f32>) {
    let dtype = backend.activation_dtype();
    (
        upload_float(backend, data, shape, dtype),
        rounded(dtype, data),
    )
}

/// A model weight: a host tensor of `dtype` holding `data`, moved onto `backend` with
/// [`Backend::upload_weight`] (which may store it narrower, e.g. bf16 on CUDA), and the
/// values the backend then holds, for the reference to use.
pub fn weight(
    backend: &dyn Backend,
    data: &[f32],
    shape: &[usize],
    dtype: DType,
) -> (Tensor, Vec<f32>) {
    let host = Tensor::from_f32(data.to_vec(), shape)
        .and_then(|t| t.to_dtype_cpu(dtype))
        .unwrap_or_else(|e| panic!("building a {dtype} test weight {shape:?}: {e}"));
    let held = backend
        .upload_weight(host)
        .unwrap_or_else(|e| panic!("upload_weight failed: {e}"));
    let values = host_f32(backend, &held);
    (held, values)
}

pub fn upload_u32(backend: &dyn Backend, data: &[u32], shape: &[usize]) -> Tensor {
    let host = Tensor::from_u32(data.to_vec(), shape).unwrap_or_else(|e| panic!("{e}"));
    backend
        .upload(host)
        .unwrap_or_else(|e| panic!("upload failed: {e}"))
}

pub fn upload_i64(backend: &dyn Backend, data: &[i64], shape: &[usize]) -> Tensor {
    let host = Tensor::from_i64(data.to_vec(), shape).unwrap_or_else(|e| panic!("{e}"));
    backend
        .upload(host)
        .unwrap_or_else(|e| panic!("upload failed: {e}"))
}

/// A backend tensor's values as f32 on the host.
pub fn host_f32(backend: &dyn Backend, t: &Tensor) -> Vec<f32> {
    backend
        .to_host(t)
        .and_then(|h| h.to_vec_f32())
        .unwrap_or_else(|e| panic!("reading back a tensor: {e}"))
}

/// A backend U32 tensor's values on the host.
pub fn host_u32(backend: &dyn Backend, t: &Tensor) -> Vec<u32> {
    backend
        .to_host(t)
        .and_then(|h| h.as_u32_slice().map(<[u32]>::to_vec))
        .unwrap_or_else(|e| panic!("reading back a u32 tensor: {e}"))
}

/// `|got − want| ≤ abs + rel·|want|`, element by element.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub abs: f64,
    pub rel: f64,
}

impl Tol {
    pub const EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };

    /// The stated f32 tolerance, widened on backends with narrower activations by one
    /// rounding of the output (`rel`) and of a value of size `magnitude` (`abs`).
    pub fn for_backend(backend: &dyn Backend, abs: f64, rel: f64, magnitude: f64) -> Tol {
        let step = rounding_step(backend.activation_dtype());
        Tol {
            abs: abs + 2.0 * step * magnitude,
            rel: rel + 2.0 * step,
        }
    }
}

/// Panics with the first offending element (and the worst error) when `got` and `want`
/// differ by more than `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: Tol) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0.0f64);
    let mut first_bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let allowed = tol.abs + tol.rel * w.abs();
        // Written so that a NaN (which compares false) counts as out of tolerance.
        let within = err <= allowed;
        if !within && first_bad.is_none() {
            first_bad = Some((i, g, w, allowed));
        }
        if err > worst.1 || err.is_nan() {
            worst = (i, err);
        }
    }
    if let Some((i, g, w, allowed)) = first_bad {
        panic!(
            "{what}: element {i} is {g}, reference {w} (error {:e} > allowed {allowed:e}); \
             worst error {:e} at {}; tolerance {tol:?}",
            (g as f64 - w).abs(),
            worst.1,
            worst.0
        );
    }
}

/// Like [`assert_close`] with a per-element absolute bound `rel · scale[i]` (e.g. the
/// `Σ|x·w|` of a dot product, which bounds its rounding error), plus `tol` on `|want|`.
pub fn assert_close_scaled(
    what: &str,
    got: &[f32],
    want: &[f64],
    scale: &[f64],
    rel: f64,
    tol: Tol,
) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs();
        let allowed = rel * s + tol.abs + tol.rel * w.abs();
        assert!(
            err <= allowed,
            "{what}: element {i} is {g}, reference {w} (error {err:e} > allowed {allowed:e} \
             = {rel:e}·Σ|terms| {s} + {tol:?})"
        );
    }
}

/// f32 → f64 for references.
pub fn widen(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| x as f64).collect()
}
