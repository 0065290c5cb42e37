use crate::dtype::DType;

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Errors of tensor construction and backend ops.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("shape mismatch in {op}: {lhs:?} vs {rhs:?}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },
    #[error("{op}: {len} elements do not fill shape {shape:?}")]
    ElementCount {
        op: &'static str,
        len: usize,
        shape: Vec<usize>,
    },
    #[error("{op} does not support dtype {dtype}")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: tensor lives on {found}, expected {expected}")]
    WrongDevice {
        op: &'static str,
        expected: String,
        found: String,
    },
    #[error("{op}: `{arg}` has dtype {got}, expected {expected}")]
    WrongDType {
        op: &'static str,
        arg: &'static str,
        expected: &'static str,
        got: DType,
    },
    #[error("{op}: `{arg}` must be {expected}-d, got shape {shape:?}")]
    WrongRank {
        op: &'static str,
        arg: &'static str,
        expected: usize,
        shape: Vec<usize>,
    },
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: usize,
        size: usize,
    },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("device error: {0}")]
    Device(String),
    /// A CPU-only accessor was called on a tensor that lives on a device.
    #[error("{op}: tensor is on {device}; copy it with Backend::to_host first")]
    NotOnHost { op: &'static str, device: String },
    /// A CUDA driver, cuBLAS or kernel-launch failure.
    #[error("cuda error in {op}: {msg}")]
    Cuda { op: &'static str, msg: String },
    /// CUDA cannot be used on this machine (no driver library or no device).
    #[error("CUDA is unavailable: {reason}")]
    CudaUnavailable { reason: String },
    #[error("communicator error: {0}")]
    Comm(String),
}
