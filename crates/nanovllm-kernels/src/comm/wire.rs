//! Tensor frames on a byte stream, for [`super::TcpCommunicator`].
//!
//! A frame is `op: u8, dtype: u8, ndim: u8, dims: ndim × u64 LE, data` where
//! `data` is the host buffer's bytes in native order (all supported hosts are
//! little-endian). The op byte lets the receiver check that both ends are in
//! the same collective.

use std::io::{Read, Write};

use crate::dtype::DType;
use crate::error::KernelError;
use crate::host_bytes::{host_bytes, host_bytes_mut};
use crate::tensor::{CpuStorage, Tensor};

/// Largest number of dims a frame may carry (tensors here are 1- to 3-d).
const MAX_DIMS: u8 = 8;

fn dtype_code(dtype: DType) -> u8 {
    match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::U32 => 3,
        DType::I64 => 4,
        DType::F8E4M3 => 5,
        DType::Int8G32 => 6,
        DType::Int4G32 => 7,
        DType::Fp8G128 => 8,
    }
}

fn dtype_of(code: u8) -> Option<DType> {
    Some(match code {
        0 => DType::F32,
        1 => DType::BF16,
        2 => DType::F16,
        3 => DType::U32,
        4 => DType::I64,
        5 => DType::F8E4M3,
        6 => DType::Int8G32,
        7 => DType::Int4G32,
        8 => DType::Fp8G128,
        _ => return None,
    })
}

/// Writes `x` (a host tensor) as one frame tagged `op`.
pub(crate) fn write_frame(w: &mut impl Write, op: u8, x: &Tensor) -> std::io::Result<()> {
    let storage = x.cpu("write_frame").map_err(std::io::Error::other)?;
    let mut header = Vec::with_capacity(3 + 8 * x.rank());
    header.extend_from_slice(&[op, dtype_code(x.dtype()), x.rank() as u8]);
    for &d in x.shape() {
        header.extend_from_slice(&(d as u64).to_le_bytes());
    }
    w.write_all(&header)?;
    w.write_all(host_bytes(storage))?;
    w.flush()
}

/// Reads one frame; returns its op tag and tensor. A malformed header is an
/// `InvalidData` error (the peer is not speaking this protocol).
pub(crate) fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, Tensor)> {
    let mut head = [0u8; 3];
    r.read_exact(&mut head)?;
    let [op, code, ndim] = head;
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let dtype = dtype_of(code).ok_or_else(|| invalid(format!("unknown dtype code {code}")))?;
    if ndim > MAX_DIMS {
        return Err(invalid(format!("frame claims {ndim} dims")));
    }
    let mut shape = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        let mut d = [0u8; 8];
        r.read_exact(&mut d)?;
        let d = usize::try_from(u64::from_le_bytes(d))
            .map_err(|_| invalid("dimension overflows usize".into()))?;
        shape.push(d);
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid(format!("shape {shape:?} overflows")))?;
    let mut storage = CpuStorage::zeros(dtype, numel);
    r.read_exact(host_bytes_mut(&mut storage))?;
    let tensor = Tensor::from_cpu(storage, &shape).map_err(std::io::Error::other)?;
    Ok((op, tensor))
}

/// Turns an I/O error talking to `peer` during `op` into a message that says what happened.
pub(crate) fn io_error(
    me: usize,
    peer: usize,
    op: &str,
    timeout: std::time::Duration,
    e: &std::io::Error,
) -> KernelError {
    use std::io::ErrorKind::*;
    let what = match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
            format!("rank {peer} closed its connection (did its process die?)")
        }
        WouldBlock | TimedOut => format!("rank {peer} did not answer within {timeout:?}"),
        _ => format!("talking to rank {peer}: {e}"),
    };
    KernelError::Comm(format!("rank {me}: {op} failed: {what}"))
}
