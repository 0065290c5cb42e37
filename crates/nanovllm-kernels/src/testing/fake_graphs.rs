//! [`FakeGraphs`]: a backend that offers [`GraphCapture`] without a device, so that the
//! engine's graph path (static inputs, launches, the logits it hands on) is tested on the
//! CPU.
//!
//! A "capture" runs its ops eagerly (so the static outputs hold the capture run's results)
//! and a launch replays nothing: it is only counted. What a test can check is therefore the
//! plumbing, not the numbers: which static tensors a step writes, how many launches it
//! queues, and that it calls no op that allocates a tensor (every op but the host copies is
//! counted). The real replay's numbers are checked on a GPU.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{
    AttentionMetadata, Backend, CapturedGraph, DType, Device, GraphCapture, KernelError,
    LayerKvCache, Result, SampleOutput, SamplingRow, Tensor, TensorParts, TopKWeights,
};

/// Forwards every op to the inner backend, counting the calls; see the module docs.
#[derive(Debug)]
pub struct FakeGraphs<B> {
    inner: B,
    /// Whether [`GraphCapture::alias_rows`] works (as a copy: host memory cannot alias).
    can_alias: bool,
    capturing: AtomicBool,
    launches: Arc<AtomicUsize>,
    ops: AtomicUsize,
    host_copies: AtomicUsize,
}

impl<B: Backend> FakeGraphs<B> {
    /// A fake over `inner`; with `can_alias == false` it keeps the trait's default
    /// `alias_rows` (unsupported).
    pub fn new(inner: B, can_alias: bool) -> Self {
        Self {
            inner,
            can_alias,
            capturing: AtomicBool::new(false),
            launches: Arc::new(AtomicUsize::new(0)),
            ops: AtomicUsize::new(0),
            host_copies: AtomicUsize::new(0),
        }
    }
    /// Graph launches so far.
    pub fn launches(&self) -> usize {
        self.launches.load(Ordering::Relaxed)
    }
    /// Calls so far of every op that makes a tensor (all but `copy_from_host`, `device`,
    /// `activation_dtype` and `synchronize`), and of `copy_device`.
    pub fn ops(&self) -> usize {
        self.ops.load(Ordering::Relaxed)
    }
    /// `copy_from_host` calls so far.
    pub fn host_copies(&self) -> usize {
        self.host_copies.load(Ordering::Relaxed)
    }
    fn count(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// `fn name(&self, arg: Type, ...) -> Ret;` becomes a counted call of the inner backend's.
macro_rules! forward_counted {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> $ret {
            self.count();
            self.inner.$name($($arg),*)
        })*
    };
}

impl<B: Backend> Backend for FakeGraphs<B> {
    fn device(&self) -> Device {
        self.inner.device()
    }
    fn activation_dtype(&self) -> DType {
        self.inner.activation_dtype()
    }
    fn copy_from_host(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        self.host_copies.fetch_add(1, Ordering::Relaxed);
        self.inner.copy_from_host(src, dst)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    forward_counted! {
        fn upload(&self, host: Tensor) -> Result<Tensor>;
        fn to_host(&self, t: &Tensor) -> Result<Tensor>;
        fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
        fn embedding(&self, ids: &Tensor, table: &Tensor) -> Result<Tensor>;
        fn embedding_shard(&self, ids: &Tensor, table: &Tensor, vocab_start: usize) -> Result<Tensor>;
        fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor>;
        fn rope(&self, x: &mut Tensor, positions: &Tensor, cos_sin: &Tensor, head_dim: usize) -> Result<()>;
        fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
        fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor>;
        fn add_inplace(&self, x: &mut Tensor, y: &Tensor) -> Result<()>;
        fn add_bias(&self, x: &mut Tensor, bias: &Tensor) -> Result<()>;
        fn split_last_dim(&self, x: &Tensor, sizes: &[usize]) -> Result<TensorParts>;
        fn index_rows(&self, x: &Tensor, rows: &Tensor) -> Result<Tensor>;
        fn store_kv(&self, k: &Tensor, v: &Tensor, cache: &mut LayerKvCache, slot_mapping: &Tensor) -> Result<()>;
        fn prefill_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, cache: &LayerKvCache, meta: &AttentionMetadata, scale: f32) -> Result<Tensor>;
        fn decode_attention(&self, q: &Tensor, cache: &LayerKvCache, meta: &AttentionMetadata, scale: f32) -> Result<Tensor>;
        fn moe_route(&self, router_logits: &Tensor, top_k: usize, weights: TopKWeights) -> Result<(Tensor, Tensor)>;
        fn moe_experts(&self, x: &Tensor, w13: &Tensor, w2: &Tensor, topk_ids: &Tensor, topk_weights: &Tensor) -> Result<Tensor>;
        fn sample(&self, logits: Tensor, rows: &[SamplingRow<'_>]) -> Result<SampleOutput>;
    }
    fn graph_capture(&self) -> Option<&dyn GraphCapture> {
        Some(self)
    }
}

/// A launch counter standing in for a graph.
#[derive(Debug)]
struct FakeGraph {
    launches: Arc<AtomicUsize>,
}

impl CapturedGraph for FakeGraph {
    fn launch(&self) -> Result<()> {
        self.launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn invalid(op: &'static str, msg: &str) -> KernelError {
    KernelError::Invalid {
        op,
        msg: msg.to_string(),
    }
}

impl<B: Backend> GraphCapture for FakeGraphs<B> {
    fn begin_capture(&self) -> Result<()> {
        if self.capturing.swap(true, Ordering::SeqCst) {
            return Err(invalid("begin_capture", "already capturing"));
        }
        Ok(())
    }
    fn end_capture(&self) -> Result<Box<dyn CapturedGraph>> {
        if !self.capturing.swap(false, Ordering::SeqCst) {
            return Err(invalid("end_capture", "not capturing"));
        }
        Ok(Box::new(FakeGraph {
            launches: self.launches.clone(),
        }))
    }
    fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::SeqCst)
    }
    fn copy_device(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        self.count();
        self.inner.copy_from_host(src, dst)
    }
    /// Host memory cannot alias: the first rows are copied (so a test sees which rows, not
    /// the sharing).
    unsafe fn alias_rows(&self, buffer: &Tensor, rows: usize) -> Result<Tensor> {
        if !self.can_alias {
            return Err(invalid("alias_rows", "this fake cannot alias"));
        }
        let (len, width) = buffer.dims2()?;
        if rows > len {
            return Err(invalid("alias_rows", "more rows than the buffer"));
        }
        let host = buffer.to_dtype_cpu(DType::F32)?;
        let values = host.as_f32_slice()?[..rows * width].to_vec();
        Tensor::from_f32(values, &[rows, width])?.to_dtype_cpu(buffer.dtype())
    }
}
