//! [`crate::Backend::sample`] on CUDA: `kernels/sampling.cu` (`sample_bf16`, `sample_f32`).
//!
//! One kernel launch samples every row: one block of 1024 threads per row, each thread
//! owning a contiguous id range, so block scans over threads are scans in id order. The
//! kernel applies the token mask, logit bias and penalties on the fly while reading (in
//! f32, on the value read: the same processed logits as the CPU's from the same values),
//! takes the argmax (greedy), or filters by top-k (radix select on an order-preserving key
//! of the logit, ties by lowest id), top-p (radix select by probability mass on the key of
//! the weight, ties by lowest id) and min-p, and picks by inverse CDF in ascending id
//! order with `uniform(seed, step)` (Philox4x32-10, as in [`crate::sampling`]). Rows that
//! ask get logprobs (f64 log-sum-exp, a radix-selected top n). The kernel's header
//! comment has the pass-by-pass design and its cost.
//!
//! Invariants:
//! - **One host synchronisation.** The rows' parameters are packed (see [`pack`]) into a
//!   persistent pinned host buffer and sent in one async copy; the kernel writes tokens
//!   and logprobs into one device buffer, copied back in one async copy into a second
//!   persistent pinned buffer; then one stream synchronisation, after which the host
//!   reads it. The pinned buffers grow when too small and are never allocated per step.
//!   Both are reused only once the stream has passed every copy that uses them (the
//!   synchronisation at the end of a call, also on its error paths).
//! - **Deterministic.** No float atomics: histograms and masses are integers, the f64
//!   log-sum-exp is a fixed tree. Same logits and rows, same output, on every run.
//! - **Exact processing.** `sampling.cu` is compiled without fast math and without FMA
//!   contraction (build.rs), so each f32 step rounds as on the CPU; the weights' exp is
//!   evaluated in f64 and rounded once.
//! - **Masses in fixed point.** Filters and the CDF sum `round(w · 2^F)` as u64 (`F =`
//!   [`pack::mass_bits`]), exactly and in any order; this differs from the definition's
//!   f64 sums by at most `V · 2^-(F+1)`, so only a uniform (or a top-p prefix) that close
//!   to a boundary can give another token than an f64 implementation (see sampling.cu).
//! - Not capturable (it copies to and from the host and synchronises).
//!
//! Tests: [`pack`]'s layout; `emu.rs` runs the kernel's own source on the host (CUDA
//! threads as host threads, under ASan/UBSan) against `reference.rs`, a literal
//! implementation of the definition: tokens exactly with the same fixed-point masses, as
//! the f64 definition wherever no decision is within 1e-9 of its boundary, logprobs bit
//! for bit. `tests/cuda_vs_cpu.rs` compares the device with the CPU backend (GPU only).

#[cfg(test)]
mod emu;
pub(crate) mod pack;
#[cfg(test)]
mod reference;

use std::ptr::NonNull;
use std::sync::{Arc, MutexGuard};

use cudarc::driver::{result, sys, CudaContext, LaunchConfig, PushKernelArg};

use super::device::{device_buf, device_buf_mut, CudaBackend};
use super::launch::{as_i32, cuda_err, per_row};
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::sampling::{validate_rows, SampleOutput, SamplingRow};
use crate::tensor::Tensor;

const OP: &str = "sample";

/// Page-locked host memory owned by the backend (`cuMemHostAlloc`), as u32 words.
struct Pinned {
    ptr: NonNull<u32>,
    words: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the allocation is owned by this value alone (no aliasing pointer escapes
// beyond borrows of `&mut self`), and page-locked memory may be used from any thread.
unsafe impl Send for Pinned {}

impl Pinned {
    fn alloc(ctx: &Arc<CudaContext>, words: usize, flags: u32) -> Result<Self> {
        let bytes = words.max(1) * 4;
        ctx.bind_to_thread().map_err(cuda_err(OP))?;
        // SAFETY: allocates `bytes` of page-locked memory; the pointer is checked for null
        // and freed once, in Drop.
        let raw = unsafe { result::malloc_host(bytes, flags) }.map_err(|e| KernelError::Cuda {
            op: OP,
            msg: format!("allocating {bytes} bytes of pinned host memory failed: {e}"),
        })?;
        let ptr = NonNull::new(raw as *mut u32).ok_or_else(|| KernelError::Cuda {
            op: OP,
            msg: "cuMemHostAlloc returned null".to_string(),
        })?;
        Ok(Self {
            ptr,
            words: words.max(1),
            ctx: ctx.clone(),
        })
    }

    /// The first `words` words (at most the capacity).
    fn slice_mut(&mut self, words: usize) -> &mut [u32] {
        assert!(words <= self.words, "pinned buffer of {} words", self.words);
        // SAFETY: `ptr` holds `self.words` u32s (4-byte aligned: cuMemHostAlloc aligns to
        // pages), any bit pattern is a valid u32, and `&mut self` makes this the only
        // borrow. Contents are whatever was last written (by the host or a copy).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), words) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Nothing can be done about a failure here; the memory is the driver's to reclaim.
        let _ = self.ctx.bind_to_thread();
        // SAFETY: `ptr` came from cuMemHostAlloc and is freed exactly once. No copy uses
        // it any more: every call that queues a copy synchronises before returning.
        let _ = unsafe { result::free_host(self.ptr.as_ptr() as *mut std::ffi::c_void) };
    }
}

/// A pinned buffer of at least `words` words in `slot`, grown (by at least half) when too
/// small; `flags` as for `cuMemHostAlloc`.
fn ensure<'a>(
    slot: &'a mut Option<Pinned>,
    ctx: &Arc<CudaContext>,
    words: usize,
    flags: u32,
) -> Result<&'a mut Pinned> {
    if slot.as_ref().is_some_and(|p| p.words < words) {
        *slot = None;
    }
    match slot {
        Some(p) => Ok(p),
        None => Ok(slot.insert(Pinned::alloc(ctx, grown_capacity(words), flags)?)),
    }
}

/// Capacity for a request of `words`: at least 4096 words, 1.5× what is asked, so that a
/// slowly growing batch does not reallocate at every step.
fn grown_capacity(words: usize) -> usize {
    words.saturating_add(words / 2).max(4096)
}

/// The backend's persistent staging for `sample`: the packed parameters (write-combined:
/// the host only writes them) and the results (cached: the host reads them).
#[derive(Default)]
pub(crate) struct SampleStaging {
    params: Option<Pinned>,
    results: Option<Pinned>,
}

impl CudaBackend {
    fn sample_staging(&self) -> Result<MutexGuard<'_, SampleStaging>> {
        self.sample_staging.lock().map_err(|_| KernelError::Cuda {
            op: OP,
            msg: "the sampling staging lock was poisoned by a panic on another thread".to_string(),
        })
    }

    /// `Backend::sample` (see the module docs).
    pub(crate) fn sample_rows(
        &self,
        logits: Tensor,
        rows: &[SamplingRow<'_>],
    ) -> Result<SampleOutput> {
        let (num_rows, vocab) = crate::validate::dims2(OP, "logits", &logits)?;
        validate_rows(OP, num_rows, vocab, rows)?;
        let name = match logits.dtype() {
            DType::BF16 => "sample_bf16",
            DType::F32 => "sample_f32",
            got => {
                return Err(KernelError::WrongDType {
                    op: OP,
                    arg: "logits",
                    expected: "bf16 or f32",
                    got,
                })
            }
        };
        device_buf(&logits, OP)?;
        self.not_capturing(OP)?;
        if num_rows == 0 {
            return Ok(SampleOutput::default());
        }
        let cfg = launch_config(num_rows)?;
        let (rows_i, vocab_i) = (as_i32(OP, "rows", num_rows)?, as_i32(OP, "vocab", vocab)?);
        let plan = pack::Plan::new(OP, rows, vocab)?;
        let func = self.function(name)?;

        let mut staging = self.sample_staging()?;
        let staging = &mut *staging;
        let ctx = self.stream().context().clone();
        let params_host = ensure(
            &mut staging.params,
            &ctx,
            plan.params_words,
            sys::CU_MEMHOSTALLOC_WRITECOMBINED,
        )?
        .slice_mut(plan.params_words);
        plan.write(rows, params_host);
        let results_host =
            ensure(&mut staging.results, &ctx, plan.result_words, 0)?.slice_mut(plan.result_words);

        let queued = self.queue_sample(
            &logits,
            params_host,
            results_host,
            func,
            cfg,
            [rows_i, vocab_i, pack::mass_bits(vocab)],
        );
        // The single synchronisation; on an error too, so that no queued copy still uses
        // the pinned buffers when they are next written (or freed).
        let synced = self.stream().synchronize().map_err(cuda_err(OP));
        queued?;
        synced?;
        Ok(pack::unpack(rows, results_host))
    }

    /// Queues the parameter upload, the kernel and the result download (no waiting).
    fn queue_sample(
        &self,
        logits: &Tensor,
        params_host: &[u32],
        results_host: &mut [u32],
        func: cudarc::driver::CudaFunction,
        cfg: LaunchConfig,
        [rows, vocab, mass_bits]: [i32; 3],
    ) -> Result<()> {
        let stream = self.stream();
        let mut params = self.alloc(&[params_host.len()], DType::U32)?;
        let mut results = self.alloc(&[results_host.len()], DType::U32)?;
        let params_bytes: &[u8] = bytemuck::cast_slice(params_host);
        stream
            .memcpy_htod(
                params_bytes,
                &mut device_buf_mut(&mut params, OP)?.slice_mut(..params_bytes.len()),
            )
            .map_err(cuda_err(OP))?;
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(device_buf(logits, OP)?)
            .arg(device_buf(&params, OP)?)
            .arg(device_buf_mut(&mut results, OP)?)
            .arg(&rows)
            .arg(&vocab)
            .arg(&mass_bits);
        // SAFETY: the arguments match `sample_{bf16,f32}` in sampling.cu; `logits` holds
        // rows × vocab elements of the kernel's dtype; `params` holds the packed buffer,
        // whose offsets `pack::Plan` computed for exactly these rows and vocabulary and
        // which the kernel reads only through them; `results` has `plan.result_words`
        // words, the R tokens and one logprob slot per asking row that the kernel writes.
        // Block size, grid and the static shared memory (< 48 KiB) fit every CUDA GPU
        // the crate targets.
        unsafe { launch.launch(cfg) }.map_err(cuda_err(OP))?;
        let results_bytes: &mut [u8] = bytemuck::cast_slice_mut(results_host);
        let len = results_bytes.len();
        stream
            .memcpy_dtoh(&device_buf(&results, OP)?.slice(..len), results_bytes)
            .map_err(cuda_err(OP))?;
        // `params` and `results` free stream-ordered, after the copies.
        Ok(())
    }
}

/// One block of [`pack::THREADS`] per row.
fn launch_config(rows: usize) -> Result<LaunchConfig> {
    per_row(OP, rows, pack::THREADS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_of_1024_threads_per_row() {
        let cfg = launch_config(256).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((cfg.grid_dim, cfg.block_dim), ((256, 1, 1), (1024, 1, 1)));
        assert_eq!(cfg.shared_mem_bytes, 0, "static shared memory only");
        assert!(launch_config(1 << 31).is_err());
    }

    #[test]
    fn pinned_capacity_grows_by_half_with_a_floor() {
        assert_eq!(grown_capacity(0), 4096);
        assert_eq!(grown_capacity(4000), 6000);
        assert_eq!(grown_capacity(100_000), 150_000);
        assert!(grown_capacity(usize::MAX) >= usize::MAX / 2);
    }
}
