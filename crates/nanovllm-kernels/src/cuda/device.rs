//! [`CudaBackend`]'s device state: context, its one stream, the kernel modules, cuBLAS,
//! the memory tracker and graph capture. The ops live in `ops.rs` and the files it
//! delegates to.

use std::collections::HashMap;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
};
use cudarc::nvrtc::Ptx;

use super::graph::CudaGraph;
use super::kernels::FATBINS;
use super::launch::cuda_err;
use super::memory::MemoryTracker;
use super::pinned::PinnedStaging;
use super::sampling::SampleStaging;
use super::storage::CudaStorage;
use crate::capability::MemoryStats;
use crate::dtype::DType;
use crate::error::{KernelError, Result};
use crate::tensor::{Storage, Tensor};

/// cuBLAS workspace: what NVIDIA recommends for Hopper (32 MiB); a fixed, user-owned
/// workspace keeps cuBLAS from allocating, so GEMMs are capturable.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Why CUDA cannot be used here, or `None` when libcuda loads and has ≥ 1 device.
/// Never panics: probes for the driver library before calling into it.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Some("libcuda was not found (no NVIDIA driver on this machine)".to_string());
    }
    // cudarc panics when a driver symbol is missing; treat that as "unavailable".
    match catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) if n > 0 => None,
        Ok(Ok(_)) => Some("the NVIDIA driver reports no CUDA device".to_string()),
        Ok(Err(e)) => Some(format!("the CUDA driver failed to initialise: {e}")),
        Err(_) => Some("the CUDA driver library is incomplete or too old".to_string()),
    }
}

/// The device's default memory pool, which `cuMemAllocAsync` draws from.
fn default_mem_pool(ctx: &CudaContext) -> Result<sys::CUmemoryPool> {
    let mut pool = std::mem::MaybeUninit::uninit();
    // SAFETY: writes one pool handle for a valid device.
    unsafe { sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device()) }
        .result()
        .map_err(cuda_err("default memory pool"))?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { pool.assume_init() })
}

/// By default the pool hands freed memory back to the driver at every synchronisation,
/// so each step would map its activations afresh. An unbounded release threshold keeps it
/// cached for reuse (as PyTorch's caching allocator does);
/// [`CudaBackend::release_cached_memory`] trims it on demand.
fn keep_freed_memory_in_pool(ctx: &CudaContext) -> Result<()> {
    let pool = default_mem_pool(ctx)?;
    let mut threshold = u64::MAX;
    // SAFETY: the release threshold attribute is a u64 read through the pointer.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold) as *mut u64 as *mut std::ffi::c_void,
        )
    }
    .result()
    .map_err(cuda_err("CudaBackend::new (memory pool)"))
}

/// Whether libcuda is present and reports at least one device. Never panics.
pub fn is_available() -> bool {
    unavailable_reason().is_none()
}

/// Number of CUDA devices; 0 when CUDA is unavailable. Never panics.
pub fn device_count() -> usize {
    if unavailable_reason().is_some() {
        return 0;
    }
    match catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => usize::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// One GPU. See the module docs of [`crate::cuda`] for the invariants.
pub struct CudaBackend {
    // Field order is drop order: cuBLAS before its workspace, everything before the
    // stream and context.
    blas: Mutex<CudaBlas>,
    _blas_workspace: CudaSlice<u8>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
    tracker: Arc<MemoryTracker>,
    capturing: AtomicBool,
    /// Pinned staging of small host-to-device copies (`pinned.rs`), made on first use. It
    /// drains its copies when dropped, before the stream and context are.
    staging: Mutex<Option<PinnedStaging>>,
    /// `sample`'s persistent pinned host buffers (see `sampling.rs`).
    pub(super) sample_staging: Mutex<SampleStaging>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    ordinal: usize,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ordinal)
            .field(
                "modules",
                &self.modules.iter().map(|m| m.0).collect::<Vec<_>>(),
            )
            .field("memory", &self.tracker.stats())
            .finish()
    }
}

impl CudaBackend {
    /// Opens device `ordinal`: context, one stream, kernel modules and cuBLAS.
    /// Returns [`KernelError::CudaUnavailable`] (never panics) when there is no usable GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        if let Some(reason) = unavailable_reason() {
            return Err(KernelError::CudaUnavailable { reason });
        }
        let count = device_count();
        if ordinal >= count {
            return Err(KernelError::CudaUnavailable {
                reason: format!("device cuda:{ordinal} requested but only {count} device(s) exist"),
            });
        }
        // SAFETY: only tries to dlopen libcublas.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(KernelError::CudaUnavailable {
                reason: "libcublas was not found: install the CUDA 13 runtime libraries \
                         (e.g. pip install nvidia-cublas) and put them on LD_LIBRARY_PATH"
                    .to_string(),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("CudaBackend::new (context)"))?;
        // SAFETY: everything runs on one stream, so cross-stream tracking is not needed;
        // it is disabled before any buffer exists, so no buffer carries events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(cuda_err("CudaBackend::new (stream)"))?;
        keep_freed_memory_in_pool(&ctx)?;
        let modules = FATBINS
            .iter()
            .map(|&(name, bytes)| {
                ctx.load_module(Ptx::from_binary(bytes.to_vec()))
                    .map(|m| (name, m))
                    .map_err(|e| KernelError::Cuda {
                        op: "CudaBackend::new (load kernels)",
                        msg: format!(
                            "loading kernels/{name}.cu failed: {e}; was this binary built \
                             for this GPU's compute capability (CUDA_COMPUTE_CAP)?"
                        ),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let tracker = Arc::new(MemoryTracker::new());
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err("CudaBackend::new (cuBLAS)"))?;
        // SAFETY: cuBLAS owns the workspace's contents; it is never read by us.
        let workspace = unsafe { stream.alloc::<u8>(CUBLAS_WORKSPACE_BYTES) }
            .map_err(cuda_err("CudaBackend::new (cuBLAS workspace)"))?;
        tracker.allocated(CUBLAS_WORKSPACE_BYTES);
        {
            let (ptr, _sync) = workspace.device_ptr(&stream);
            // SAFETY: the workspace outlives the handle (field order) and is used only by it.
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE_BYTES,
                )
            }
            .result()
            .map_err(cuda_err("CudaBackend::new (cuBLAS workspace)"))?;
        }
        Ok(Self {
            blas: Mutex::new(blas),
            _blas_workspace: workspace,
            functions: Mutex::new(HashMap::new()),
            modules,
            tracker,
            capturing: AtomicBool::new(false),
            staging: Mutex::new(None),
            sample_staging: Mutex::new(SampleStaging::default()),
            stream,
            ctx,
            ordinal,
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// `(free, total)` device memory in bytes, as the driver sees it (all processes).
    /// Memory this backend freed but still caches in its pool is returned to the device
    /// first, so `free` counts it.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.release_cached_memory()?;
        self.ctx.mem_get_info().map_err(cuda_err("mem_info"))
    }

    /// Returns freed memory cached in the device's default pool to the driver (memory
    /// still in use is untouched). See [`keep_freed_memory_in_pool`].
    pub fn release_cached_memory(&self) -> Result<()> {
        let pool = default_mem_pool(&self.ctx)?;
        // SAFETY: trimming only releases unused pool memory.
        unsafe { sys::cuMemPoolTrimTo(pool, 0) }
            .result()
            .map_err(cuda_err("release_cached_memory"))
    }

    /// Bytes allocated through this backend: now, and the peak since the last reset.
    pub fn memory_stats(&self) -> MemoryStats {
        self.tracker.stats()
    }

    /// Restarts the peak from the bytes in use now.
    pub fn reset_peak_memory(&self) {
        self.tracker.reset_peak()
    }

    /// Starts capturing the stream into a graph (thread-local mode: a capture-unsafe
    /// call from this thread, such as a synchronous copy, fails instead of silently
    /// breaking the capture).
    pub fn begin_capture(&self) -> Result<()> {
        if self.capturing.swap(true, Ordering::SeqCst) {
            return Err(KernelError::Invalid {
                op: "begin_capture",
                msg: "a capture is already in progress; call end_capture first".to_string(),
            });
        }
        let result = self
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("begin_capture"));
        if result.is_err() {
            self.capturing.store(false, Ordering::SeqCst);
        }
        result
    }

    /// Ends the capture and instantiates the graph. Every buffer allocated during the
    /// capture must already be dropped (its free is part of the graph), so the graph can
    /// be relaunched any number of times.
    pub fn end_capture(&self) -> Result<CudaGraph> {
        if !self.capturing.swap(false, Ordering::SeqCst) {
            return Err(KernelError::Invalid {
                op: "end_capture",
                msg: "no capture in progress; call begin_capture first".to_string(),
            });
        }
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err("end_capture"))?;
        match graph {
            Some(graph) => Ok(CudaGraph::new(graph)),
            None => Err(KernelError::Invalid {
                op: "end_capture",
                msg: "the capture recorded no work".to_string(),
            }),
        }
    }

    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::SeqCst)
    }

    /// A tensor of the first `rows` rows of `buffer` sharing its memory (see
    /// [`crate::GraphCapture::alias_rows`]). Allowed while capturing: it queues nothing.
    ///
    /// # Safety
    /// As for [`crate::GraphCapture::alias_rows`]: drop the alias before `buffer`.
    pub unsafe fn alias_rows(&self, buffer: &Tensor, rows: usize) -> Result<Tensor> {
        let storage = match buffer.storage() {
            Storage::Cuda(s) => s,
            other => {
                return Err(KernelError::WrongDevice {
                    op: "alias_rows",
                    expected: "cuda".to_string(),
                    found: other.device().to_string(),
                })
            }
        };
        let Some((&first, rest)) = buffer.shape().split_first() else {
            return Err(KernelError::Invalid {
                op: "alias_rows",
                msg: "a scalar has no rows".to_string(),
            });
        };
        if rows > first {
            return Err(KernelError::Invalid {
                op: "alias_rows",
                msg: format!("{rows} rows of a buffer of {first}"),
            });
        }
        let row_len: usize = rest.iter().product();
        // SAFETY: the caller drops the alias before `buffer` (this function's contract).
        let alias = unsafe { storage.alias_prefix(rows * row_len)? };
        let mut shape: smallvec::SmallVec<[usize; crate::tensor::INLINE_DIMS]> =
            buffer.shape().into();
        shape[0] = rows;
        Tensor::new(Storage::Cuda(alias), &shape)
    }

    /// Device-to-device copy of `src` into `dst` (same shape and dtype), keeping `dst`'s
    /// buffer. Capturable.
    pub fn copy_device(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        crate::validate::same_layout("copy_device", src, dst)?;
        let bytes = src.size_in_bytes();
        if bytes == 0 {
            return Ok(());
        }
        let src_buf = device_buf(src, "copy_device")?;
        let dst_buf = device_buf_mut(dst, "copy_device")?;
        self.stream
            .memcpy_dtod(&src_buf.slice(..bytes), &mut dst_buf.slice_mut(..bytes))
            .map_err(cuda_err("copy_device"))?;
        // A captured copy replays with other data: its range and values are unknown.
        let capturing = self.is_capturing();
        let range = if capturing { None } else { known_range(src) };
        set_known_range(dst, range);
        set_host_copy(dst, if capturing { None } else { host_copy(src) });
        Ok(())
    }

    /// Queues a copy of `bytes` into the start of `dst` through the pinned staging ring
    /// (`pinned.rs`). Returns `false`, having done nothing, when `bytes` is too long to
    /// stage: the caller then copies directly from its pageable memory.
    pub(crate) fn copy_staged(&self, bytes: &[u8], dst: &mut CudaSlice<u8>) -> Result<bool> {
        let mut staging = self.staging.lock().map_err(|_| KernelError::Cuda {
            op: "copy_from_host",
            msg: "the staging lock was poisoned by a panic on another thread".to_string(),
        })?;
        if staging.is_none() {
            *staging = Some(PinnedStaging::new(&self.stream)?);
        }
        match staging.as_mut() {
            Some(ring) => ring.copy(bytes, dst),
            None => Ok(false),
        }
    }

    /// Makes the context current on the calling thread (cudarc's launches do this
    /// themselves; raw cuBLAS calls do not).
    pub(crate) fn bind_to_thread(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("bind_to_thread"))
    }

    /// The backend's only stream.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// An `extern "C"` kernel by name, from whichever `kernels/*.cu` defines it (cached).
    pub(crate) fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().map_err(|_| KernelError::Cuda {
            op: "function",
            msg: "the kernel cache lock was poisoned by a panic on another thread".to_string(),
        })?;
        if let Some(f) = functions.get(name) {
            return Ok(f.clone());
        }
        for (_, module) in &self.modules {
            if let Ok(f) = module.load_function(name) {
                functions.insert(name.to_string(), f.clone());
                return Ok(f);
            }
        }
        Err(KernelError::Cuda {
            op: "function",
            msg: format!(
                "no kernel named `{name}` in kernels/{{{}}}.cu",
                self.modules
                    .iter()
                    .map(|m| m.0)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        })
    }

    /// The cuBLAS handle, bound to the stream with a fixed workspace.
    pub(crate) fn blas(&self) -> Result<std::sync::MutexGuard<'_, CudaBlas>> {
        self.blas.lock().map_err(|_| KernelError::Cuda {
            op: "cublas",
            msg: "the cuBLAS lock was poisoned by a panic on another thread".to_string(),
        })
    }

    /// An uninitialised device tensor (every element must be written before it is read).
    pub(crate) fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let len = shape.iter().product();
        let storage = CudaStorage::alloc(&self.stream, &self.tracker, len, dtype)?;
        Tensor::new(Storage::Cuda(storage), shape)
    }

    /// A zero-filled device tensor (stream-ordered memset; capturable).
    pub(crate) fn alloc_zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let mut t = self.alloc(shape, dtype)?;
        let buf = device_buf_mut(&mut t, "zeros")?;
        self.stream.memset_zeros(buf).map_err(cuda_err("zeros"))?;
        if matches!(dtype, DType::U32 | DType::I64) && t.numel() > 0 {
            set_known_range(&mut t, Some((0, 0)));
        }
        Ok(t)
    }
}

/// The device buffer of a CUDA tensor, or [`KernelError::WrongDevice`] naming `op`.
pub(crate) fn device_buf<'a>(t: &'a Tensor, op: &'static str) -> Result<&'a CudaSlice<u8>> {
    match t.storage() {
        Storage::Cuda(s) => Ok(&*s.buf),
        other => Err(KernelError::WrongDevice {
            op,
            expected: "cuda".to_string(),
            found: other.device().to_string(),
        }),
    }
}

/// The device buffer of a CUDA tensor, mutably, or [`KernelError::WrongDevice`].
/// Forgets the tensor's known index range and host copy: the caller may write anything.
pub(crate) fn device_buf_mut<'a>(
    t: &'a mut Tensor,
    op: &'static str,
) -> Result<&'a mut CudaSlice<u8>> {
    match t.storage_mut() {
        Storage::Cuda(s) => {
            s.known_range = None;
            s.host_copy.forget();
            Ok(&mut *s.buf)
        }
        other => Err(KernelError::WrongDevice {
            op,
            expected: "cuda".to_string(),
            found: other.device().to_string(),
        }),
    }
}

/// `(min, max)` of an integer CUDA tensor's values when known without a device read.
pub(crate) fn known_range(t: &Tensor) -> Option<(i64, i64)> {
    match t.storage() {
        Storage::Cuda(s) => s.known_range,
        _ => None,
    }
}

/// Records `(min, max)` of a CUDA tensor's values (after a write whose values are known).
pub(crate) fn set_known_range(t: &mut Tensor, range: Option<(i64, i64)>) {
    if let Storage::Cuda(s) = t.storage_mut() {
        s.known_range = range;
    }
}

/// The values of a u32 CUDA tensor as last written from the host, when kept (see
/// [`super::host_copy`]).
pub(crate) fn host_copy(t: &Tensor) -> Option<&[u32]> {
    match t.storage() {
        Storage::Cuda(s) => s.host_copy.get(),
        _ => None,
    }
}

/// Records the values just written to a CUDA tensor (`None`: unknown).
pub(crate) fn set_host_copy(t: &mut Tensor, values: Option<&[u32]>) {
    if let Storage::Cuda(s) = t.storage_mut() {
        s.host_copy.set(values);
    }
}
