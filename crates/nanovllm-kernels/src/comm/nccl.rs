//! [`NcclCommunicator`]: collectives between GPUs (one rank per process, any
//! number of hosts) through NCCL, on the rank's [`CudaBackend`] stream.
//!
//! Rank 0 makes an [`NcclUniqueId`] and hands its bytes to the other ranks
//! (the engine's TCP rendezvous carries them); every rank then joins with
//! [`NcclCommunicator::new`]. Collectives are enqueued on the backend's only
//! stream, so they are ordered with the kernels around them and need no host
//! synchronisation (barrier excepted).
//!
//! - `all_reduce_sum`: NCCL sum in place, in the tensor's dtype (f32, bf16, f16).
//! - `all_gather_last_dim`: NCCL gathers rank-major `[W·M, N]`; one row gather on
//!   the device (`index_rows`: result row `m·W + r` is gathered row `r·M + m`)
//!   makes it `[M·W, N]`, i.e. `[M, W·N]`. No host round trip, no sync.
//! - `broadcast`: NCCL broadcast in place. `barrier`: a one-element all-reduce,
//!   then a stream synchronisation.
//!
//! Failure: NCCL reports errors per call; a peer that dies mid-collective can
//! leave the stream waiting, which the engine detects on its control channel.

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::Communicator;
use crate::backend::Backend;
use crate::cuda::{device_buf, device_buf_mut, CudaBackend};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::Tensor;

/// Bytes of an NCCL unique id.
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// The id rank 0 creates and every rank joins with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NcclUniqueId([u8; NCCL_UNIQUE_ID_BYTES]);

impl NcclUniqueId {
    /// A fresh id (rank 0). Needs libnccl.
    pub fn new() -> Result<Self> {
        let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        let mut bytes = [0u8; NCCL_UNIQUE_ID_BYTES];
        for (b, &c) in bytes.iter_mut().zip(id.internal()) {
            *b = c as u8;
        }
        Ok(Self(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// The id rank 0 sent, or an error naming the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; NCCL_UNIQUE_ID_BYTES] = bytes.try_into().map_err(|_| {
            KernelError::Comm(format!(
                "an NCCL unique id has {NCCL_UNIQUE_ID_BYTES} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self(arr))
    }
    fn to_id(self) -> Id {
        let mut internal = [0 as std::ffi::c_char; NCCL_UNIQUE_ID_BYTES];
        for (c, &b) in internal.iter_mut().zip(&self.0) {
            *c = b as std::ffi::c_char;
        }
        Id::uninit(internal)
    }
}

/// An NCCL communicator handle. NCCL lets any thread use a communicator as long as calls
/// on it do not overlap; the mutex in [`NcclCommunicator`] serialises them.
struct CommHandle(Comm);
// SAFETY: see above; the handle is only touched under `NcclCommunicator::comm`'s lock.
unsafe impl Send for CommHandle {}

/// One rank of an NCCL group.
pub struct NcclCommunicator {
    rank: usize,
    world_size: usize,
    backend: Arc<CudaBackend>,
    comm: Mutex<CommHandle>,
}

impl std::fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

fn nccl_err(op: &str, e: impl std::fmt::Debug) -> KernelError {
    KernelError::Comm(format!("{op} failed: {e:?}"))
}

impl NcclCommunicator {
    /// Joins the group `id` as `rank` of `world_size` on `backend`'s GPU. Blocks until every
    /// rank has joined (NCCL's `ncclCommInitRank`).
    pub fn new(
        backend: Arc<CudaBackend>,
        rank: usize,
        world_size: usize,
        id: NcclUniqueId,
    ) -> Result<Self> {
        if rank >= world_size {
            return Err(KernelError::Comm(format!(
                "NCCL rank {rank} is out of range for world size {world_size}"
            )));
        }
        backend.bind_to_thread()?;
        let comm = Comm::from_rank(backend.stream().clone(), rank, world_size, id.to_id())
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self {
            rank,
            world_size,
            backend,
            comm: Mutex::new(CommHandle(comm)),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, CommHandle>> {
        self.backend.bind_to_thread()?;
        self.comm
            .lock()
            .map_err(|_| KernelError::Comm(format!("rank {}: an NCCL call panicked", self.rank)))
    }
}

/// Runs `$body` with `$view` bound to `$buf` reinterpreted as the element type of `$dtype`.
macro_rules! typed_view_mut {
    ($op:expr, $dtype:expr, $buf:expr, $len:expr, |$view:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                // SAFETY: the tensor's dtype says the bytes are f32 values, and every bit
                // pattern is one; `transmute_mut` returns None (an error here) when `len`
                // values do not fit the buffer.
                let mut v = unsafe { $buf.transmute_mut::<f32>($len) }.ok_or_else(|| short($op))?;
                let $view = &mut v;
                $body
            }
            DType::BF16 => {
                // SAFETY: as above, for bf16.
                let v = unsafe { $buf.transmute_mut::<half::bf16>($len) };
                let mut v = v.ok_or_else(|| short($op))?;
                let $view = &mut v;
                $body
            }
            DType::F16 => {
                // SAFETY: as above, for f16.
                let v = unsafe { $buf.transmute_mut::<half::f16>($len) };
                let mut v = v.ok_or_else(|| short($op))?;
                let $view = &mut v;
                $body
            }
            other => {
                return Err(KernelError::UnsupportedDType {
                    op: $op,
                    dtype: other,
                })
            }
        }
    };
}

fn short(op: &'static str) -> KernelError {
    KernelError::Invalid {
        op,
        msg: "device buffer smaller than its tensor".into(),
    }
}

/// NCCL all-gather of `len` values of `T` from `src` into `dst` (rank-major, `world * len`
/// values). `T` is the tensors' dtype; a buffer too small for that is an error.
fn all_gather_as<T: NcclType>(
    comm: &Comm,
    src: &CudaSlice<u8>,
    dst: &mut CudaSlice<u8>,
    len: usize,
    world: usize,
    op: &'static str,
) -> Result<()> {
    // SAFETY: `T` is the tensors' dtype (f32, bf16 or f16), for which every bit pattern
    // is a value; `transmute` returns None (an error here) when `len` values do not fit.
    let s = unsafe { src.transmute::<T>(len) }.ok_or_else(|| short(op))?;
    // SAFETY: as above.
    let mut d = unsafe { dst.transmute_mut::<T>(world * len) }.ok_or_else(|| short(op))?;
    comm.all_gather(&s, &mut d)
        .map_err(|e| nccl_err("ncclAllGather", e))?;
    Ok(())
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, x: &mut Tensor) -> Result<()> {
        const OP: &str = "all_reduce_sum";
        let (dtype, len) = (x.dtype(), x.numel());
        if len == 0 {
            return Ok(());
        }
        let comm = self.lock()?;
        let buf = device_buf_mut(x, OP)?;
        typed_view_mut!(OP, dtype, buf, len, |view| {
            comm.0
                .all_reduce_in_place(view, &ReduceOp::Sum)
                .map_err(|e| nccl_err("ncclAllReduce", e))?
        });
        Ok(())
    }

    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "all_gather_last_dim";
        let (rows, cols) = x.dims2()?;
        let world = self.world_size;
        let dtype = x.dtype();
        let mut gathered = self.backend.alloc(&[world * rows, cols], dtype)?;
        {
            let comm = self.lock()?;
            let src = device_buf(x, OP)?;
            let dst = device_buf_mut(&mut gathered, OP)?;
            let len = rows * cols;
            let gather = match dtype {
                DType::F32 => all_gather_as::<f32>,
                DType::BF16 => all_gather_as::<half::bf16>,
                DType::F16 => all_gather_as::<half::f16>,
                other => {
                    return Err(KernelError::UnsupportedDType {
                        op: OP,
                        dtype: other,
                    })
                }
            };
            gather(&comm.0, src, dst, len, world, OP)?;
        }
        // Rank-major [W·M, N] → [M, W·N] on the device (see the module docs).
        let order = super::reduce::interleave_ranks_order(rows, world);
        let order = self
            .backend
            .upload(Tensor::from_u32(order, &[rows * world])?)?;
        self.backend
            .index_rows(&gathered, &order)?
            .reshape(&[rows, world * cols])
    }

    fn broadcast(&self, x: &mut Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        super::check_root(root, self.world_size)?;
        let (dtype, len) = (x.dtype(), x.numel());
        if len == 0 {
            return Ok(());
        }
        let comm = self.lock()?;
        let buf = device_buf_mut(x, OP)?;
        typed_view_mut!(OP, dtype, buf, len, |view| {
            comm.0
                .broadcast_in_place(view, root as i32)
                .map_err(|e| nccl_err("ncclBroadcast", e))?
        });
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let mut one = self.backend.upload(Tensor::from_f32(vec![0.0], &[1])?)?;
        self.all_reduce_sum(&mut one)?;
        self.backend.synchronize()
    }
}
