//! Captured decode graphs (CUDA graphs; nano-vLLM's `capture_cudagraph`), on any backend
//! that offers [`nanovllm_kernels::Backend::graph_capture`].
//!
//! A decode step of `n` sequences runs the graph captured for the smallest batch size
//! `b ≥ n` from [`graph_batch_sizes`]: 1, 2, 4, 8, then every 16 up to `max_num_seqs`
//! (capped at [`MAX_GRAPH_BATCH_SIZE`]), plus that maximum itself when it is not a multiple
//! of 16, so that every decode batch the scheduler can build has a graph.
//!
//! Invariants of a captured graph (its kernels replay the same pointers and launch
//! parameters with new data):
//! - Its inputs are static device tensors, refilled in place (`Backend::copy_from_host`)
//!   before each launch: `input_ids`, `positions`, `context_lens`, `slot_mapping` of `[b]`
//!   and `block_tables` of `[b, ⌈max_model_len / block_size⌉]`. `cu_seqlens_q` is
//!   `0, 1, …, b` forever.
//! - Rows `n..b` are padding ([`fill_padded_decode`]): token 0, position 0, slot −1 (writes
//!   no KV), context length 0, block table of zeros.
//! - The host-side scalars are upper bounds: `max_seqlen_q = 1`,
//!   `max_context_len = max_model_len`; kernels read the real lengths from the tensors.
//! - **Logits inside the graph**, where the batch size allows: a graph of batch size `b` with
//!   `b × vocab × dtype bytes ≤` [`MAX_GRAPH_LOGITS_BYTES`] ends with the LM head of all `b`
//!   rows copied into the first `b` rows of ONE static logits buffer shared by every graph
//!   (`[b_max, vocab]`, `b_max` the largest such batch size: for Qwen3-0.6B at
//!   `max_num_seqs = 512`, 512 × 151,936 × 2 bytes = 148 MiB; 74 MiB at 256). Sharing is
//!   safe because replays run one at a time on the backend's one stream, and each step's
//!   logits are consumed (sampled) before the next replay. The step's logits are then the
//!   first `n` rows of that buffer, handed on as an alias ([`GraphCapture::alias_rows`]):
//!   no allocation, no upload and no kernel launch on the host after the graph. The LM head's
//!   output is a graph-internal buffer copied into the static one (`b × vocab × 2` bytes
//!   read and written per step, ~50 µs at 256 rows on an H100; a GEMM writing into the static
//!   buffer directly would save it).
//! - A graph of a larger batch size (or on a backend that cannot alias) ends with the
//!   normalised hidden states copied into a static `[b, hidden]` buffer instead; logits are
//!   computed after the graph, eagerly, on the first `n` rows only.
//! - The KV cache the graph was captured with is never reallocated.
//!
//! Capturing largest first lets smaller graphs reuse the memory the allocator already holds.
//! Any capture failure turns graphs off with a warning: the runner then runs eagerly.

use nanovllm_scheduler::ScheduledBatch;

use crate::error::{EngineError, Result};

/// The largest decode batch that gets a graph (nano-vLLM's 512); larger ones run eagerly.
pub const MAX_GRAPH_BATCH_SIZE: usize = 512;

/// The most bytes of logits the decode graphs keep in their shared static buffer (see the
/// module docs): 256 MiB, which holds 512 rows of a 151,936-entry vocabulary in bf16 (and of
/// a 256,000-entry one). Graphs of larger batches compute their logits after the replay.
pub const MAX_GRAPH_LOGITS_BYTES: usize = 256 << 20;

/// The largest of `sizes` whose logits (`b × vocab_size × dtype_bytes`) fit
/// [`MAX_GRAPH_LOGITS_BYTES`]: the rows of the shared static logits buffer; 0 when none does.
pub fn in_graph_logits_rows(sizes: &[usize], vocab_size: usize, dtype_bytes: usize) -> usize {
    let row_bytes = vocab_size.saturating_mul(dtype_bytes).max(1);
    sizes
        .iter()
        .copied()
        .filter(|&b| b.saturating_mul(row_bytes) <= MAX_GRAPH_LOGITS_BYTES)
        .max()
        .unwrap_or(0)
}

/// Batch sizes to capture, ascending: 1, 2, 4, 8, 16, 32, … ≤ `min(max_num_seqs, 512)`,
/// and that bound itself.
pub fn graph_batch_sizes(max_num_seqs: usize) -> Vec<usize> {
    let max_bs = max_num_seqs.min(MAX_GRAPH_BATCH_SIZE);
    let mut sizes: Vec<usize> = [1, 2, 4, 8]
        .into_iter()
        .chain((16..=max_bs).step_by(16))
        .filter(|&b| b <= max_bs)
        .collect();
    if max_bs > 0 && sizes.last() != Some(&max_bs) {
        sizes.push(max_bs);
    }
    sizes
}

/// The smallest captured size that holds `num_seqs` rows (`sizes` ascending).
pub fn pick_batch_size(sizes: &[usize], num_seqs: usize) -> Option<usize> {
    if num_seqs == 0 {
        return None;
    }
    sizes.iter().copied().find(|&b| b >= num_seqs)
}

/// Width of a graph's block-table input: enough blocks for `max_model_len` tokens.
pub fn graph_block_table_width(max_model_len: usize, block_size: usize) -> usize {
    max_model_len.div_ceil(block_size.max(1)).max(1)
}

/// Host staging for one graph launch, sized for batch size `b` (capacity kept across steps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaddedDecodeInput {
    pub input_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub context_lens: Vec<u32>,
    /// `[b, width]`, row-major.
    pub block_tables: Vec<u32>,
    pub slot_mapping: Vec<i64>,
}

/// Fills `out` with decode `batch` padded to `batch_size` rows of block tables `width` wide.
/// Errors (the caller then runs eagerly) when the batch is not a decode batch, or does not
/// fit: more sequences than `batch_size` or a block table wider than `width`.
pub fn fill_padded_decode(
    batch: &ScheduledBatch,
    batch_size: usize,
    width: usize,
    out: &mut PaddedDecodeInput,
) -> Result<()> {
    let n = batch.num_seqs();
    if batch.is_prefill() || batch.num_tokens() != n {
        return Err(EngineError::Internal(format!(
            "a CUDA graph replays decode steps only (got {} tokens for {n} sequences)",
            batch.num_tokens()
        )));
    }
    if n > batch_size || batch.block_table_offsets.len() != n + 1 {
        return Err(EngineError::Internal(format!(
            "{n} sequences do not fit a graph of batch size {batch_size}"
        )));
    }
    let pad = batch_size - n;
    let fill = |dst: &mut Vec<u32>, src: &mut dyn Iterator<Item = u32>| {
        dst.clear();
        dst.extend(src);
        dst.extend(std::iter::repeat_n(0, pad));
    };
    fill(&mut out.input_ids, &mut batch.input_ids.iter().copied());
    fill(&mut out.positions, &mut batch.positions.iter().copied());
    fill(
        &mut out.context_lens,
        &mut batch.seqs.iter().map(|s| s.context_len as u32),
    );
    out.slot_mapping.clear();
    out.slot_mapping.extend_from_slice(&batch.slot_mapping);
    out.slot_mapping.extend(std::iter::repeat_n(-1, pad));

    out.block_tables.clear();
    out.block_tables.resize(batch_size * width, 0);
    for i in 0..n {
        let table = batch.block_table(i);
        if table.len() > width {
            return Err(EngineError::Internal(format!(
                "sequence {i}'s block table has {} blocks, the graph holds {width}",
                table.len()
            )));
        }
        out.block_tables[i * width..i * width + table.len()].copy_from_slice(table);
    }
    Ok(())
}

pub use captured::{DecodeGraphs, Replayed, Staged};

mod captured {
    use std::sync::Arc;

    use nanovllm_kernels::{
        AttentionMetadata, Backend, CapturedGraph, GraphCapture, KvCache, Tensor,
    };
    use nanovllm_models::{ForwardInput, Model};
    use nanovllm_scheduler::ScheduledBatch;

    use super::{
        fill_padded_decode, graph_batch_sizes, graph_block_table_width, in_graph_logits_rows,
        pick_batch_size, PaddedDecodeInput,
    };
    use crate::error::{EngineError, Result};
    use crate::runner::{copy_staged, copy_u32, i64_vec};

    /// What a graph's last node writes.
    enum GraphOutput {
        /// `[b, vocab]`: an alias of the first `b` rows of the shared static logits buffer.
        Logits(Tensor),
        /// `[b, hidden]`: the normalised hidden states (logits computed after the replay).
        Hidden(Tensor),
    }

    /// One captured decode graph and its static buffers.
    struct CapturedDecode {
        batch_size: usize,
        /// Static device inputs the graph reads (refilled before each launch).
        input: ForwardInput,
        output: GraphOutput,
        graph: Box<dyn CapturedGraph>,
    }

    /// What [`DecodeGraphs::launch`] left for the step's logits.
    pub enum Replayed<'a> {
        /// Logits `[n, vocab]` of the batch, computed inside the graph: an alias of the
        /// shared static logits buffer (see [`nanovllm_kernels::GraphCapture::alias_rows`]),
        /// valid until the next launch. Drop it before that, and before the graphs.
        Logits(Tensor),
        /// The static hidden states `[b, hidden]`; rows `0..n` are the batch's. Logits are
        /// the caller's to compute.
        Hidden(&'a Tensor),
    }

    /// A batch staged into a graph's static inputs, ready to [`DecodeGraphs::launch`].
    #[derive(Debug)]
    #[must_use]
    pub struct Staged {
        index: usize,
        num_seqs: usize,
    }

    /// The decode graphs of one runner, ascending by batch size.
    pub struct DecodeGraphs {
        backend: Arc<dyn Backend>,
        /// Declared before `logits_buffer`, so dropped before it: the `Logits` outputs alias it.
        graphs: Vec<CapturedDecode>,
        batch_sizes: Vec<usize>,
        width: usize,
        staging: PaddedDecodeInput,
        /// `[rows, vocab]`, shared by every graph that computes its logits (see the module
        /// docs); `None` when none does.
        logits_buffer: Option<Tensor>,
    }

    impl std::fmt::Debug for DecodeGraphs {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DecodeGraphs")
                .field("batch_sizes", &self.batch_sizes)
                .field("block_table_width", &self.width)
                .field("in_graph_logits_rows", &self.in_graph_logits_rows())
                .finish()
        }
    }

    impl DecodeGraphs {
        /// Captures one graph per [`graph_batch_sizes`] entry, largest first, against
        /// `kv_cache` (which must outlive them unmoved in memory: its buffers are baked in).
        /// An error when `backend` cannot capture graphs ([`Backend::graph_capture`]).
        pub fn capture(
            backend: Arc<dyn Backend>,
            model: &dyn Model,
            kv_cache: &mut KvCache,
            max_num_seqs: usize,
            max_model_len: usize,
        ) -> Result<Self> {
            let capture = backend
                .graph_capture()
                .ok_or_else(|| EngineError::Unsupported {
                    what: format!("{} cannot capture graphs", backend.device()),
                })?;
            let block_size = kv_cache.block_size;
            let width = graph_block_table_width(max_model_len, block_size);
            let batch_sizes = graph_batch_sizes(max_num_seqs);
            // Declared before `graphs`, so dropped after it on an early return too.
            let logits_buffer =
                shared_logits_buffer(backend.as_ref(), capture, model, &batch_sizes)?;
            let logits_rows = logits_buffer.as_ref().map_or(0, |t| t.shape()[0]);
            let mut graphs = Vec::with_capacity(batch_sizes.len());
            for &b in batch_sizes.iter().rev() {
                let shape = GraphShape {
                    batch_size: b,
                    width,
                    max_model_len,
                    block_size,
                };
                let logits = match &logits_buffer {
                    Some(buffer) if b <= logits_rows => {
                        // SAFETY: the alias goes into `graphs`, which is dropped before
                        // `logits_buffer` (here and in `DecodeGraphs`, by declaration order).
                        let alias = unsafe { capture.alias_rows(buffer, b)? };
                        Some(alias)
                    }
                    _ => None,
                };
                let captured =
                    capture_one(backend.as_ref(), capture, model, kv_cache, shape, logits)
                        .map_err(|e| {
                            // Never leave the stream in capture mode on the way out.
                            if capture.is_capturing() {
                                let _ = capture.end_capture();
                            }
                            EngineError::Internal(format!(
                                "capturing the decode graph of batch size {b}: {e}"
                            ))
                        })?;
                graphs.push(captured);
            }
            graphs.reverse();
            Ok(Self {
                backend,
                graphs,
                batch_sizes,
                width,
                staging: PaddedDecodeInput::default(),
                logits_buffer,
            })
        }

        pub fn batch_sizes(&self) -> &[usize] {
            &self.batch_sizes
        }

        /// Rows of the shared static logits buffer: graphs up to this batch size compute
        /// their logits inside the graph (0: none does).
        pub fn in_graph_logits_rows(&self) -> usize {
            self.logits_buffer.as_ref().map_or(0, |t| t.shape()[0])
        }

        /// Whether a decode step of `num_seqs` sequences has a graph.
        pub fn covers(&self, batch: &ScheduledBatch) -> bool {
            !batch.is_prefill() && pick_batch_size(&self.batch_sizes, batch.num_seqs()).is_some()
        }

        /// Fills the static inputs of the graph for `batch` (the smallest that holds it):
        /// the host staging, then one host-to-device copy per input, queued on the backend's
        /// stream. No device allocation, no host synchronisation.
        pub fn stage(&mut self, batch: &ScheduledBatch) -> Result<Staged> {
            let b = pick_batch_size(&self.batch_sizes, batch.num_seqs()).ok_or_else(|| {
                EngineError::Internal(format!(
                    "no decode graph holds {} sequences",
                    batch.num_seqs()
                ))
            })?;
            fill_padded_decode(batch, b, self.width, &mut self.staging)?;
            let index = self
                .graphs
                .iter()
                .position(|g| g.batch_size == b)
                .ok_or_else(|| EngineError::Internal(format!("graph {b} missing")))?;
            let be = self.backend.as_ref();
            let g = &mut self.graphs[index];
            let s = &mut self.staging;
            copy_u32(be, &mut s.input_ids, &mut g.input.input_ids)?;
            copy_u32(be, &mut s.positions, &mut g.input.positions)?;
            copy_u32(be, &mut s.context_lens, &mut g.input.attn.context_lens)?;
            copy_u32(be, &mut s.block_tables, &mut g.input.attn.block_tables)?;
            copy_staged(
                be,
                &mut s.slot_mapping,
                &mut g.input.attn.slot_mapping,
                Tensor::from_i64,
                i64_vec,
            )?;
            Ok(Staged {
                index,
                num_seqs: batch.num_seqs(),
            })
        }

        /// Queues the replay of a staged graph and returns where the step's logits are (see
        /// [`Replayed`]). No device allocation, no host synchronisation.
        pub fn launch(&self, staged: Staged) -> Result<Replayed<'_>> {
            let g = self.graphs.get(staged.index).ok_or_else(|| {
                EngineError::Internal(format!("no staged graph {}", staged.index))
            })?;
            g.graph.launch()?;
            match &g.output {
                GraphOutput::Logits(static_logits) => {
                    let capture = self.backend.graph_capture().ok_or_else(|| {
                        EngineError::Internal("the graphs' backend stopped capturing".into())
                    })?;
                    // SAFETY: the alias views `logits_buffer`, which `self` owns; the caller
                    // drops it before the next launch and before `self` (`Replayed::Logits`).
                    let logits = unsafe { capture.alias_rows(static_logits, staged.num_seqs)? };
                    Ok(Replayed::Logits(logits))
                }
                GraphOutput::Hidden(hidden) => Ok(Replayed::Hidden(hidden)),
            }
        }
    }

    /// The static logits buffer the graphs share: `[rows, vocab]` in the activation dtype for
    /// the largest batch size whose logits fit [`super::MAX_GRAPH_LOGITS_BYTES`]; `None` when
    /// none does or when the backend cannot alias (every graph then ends with hidden states).
    fn shared_logits_buffer(
        be: &dyn Backend,
        capture: &dyn GraphCapture,
        model: &dyn Model,
        sizes: &[usize],
    ) -> Result<Option<Tensor>> {
        let dtype = be.activation_dtype();
        let vocab = model.config().vocab_size;
        let rows = in_graph_logits_rows(sizes, vocab, dtype.size_in_bytes());
        if rows == 0 {
            return Ok(None);
        }
        let buffer = be.zeros(&[rows, vocab], dtype)?;
        // SAFETY: the probe alias is dropped at once, before `buffer`.
        match unsafe { capture.alias_rows(&buffer, rows) } {
            Ok(_) => Ok(Some(buffer)),
            Err(e) => {
                tracing::debug!("logits are computed after each decode graph: {e}");
                Ok(None)
            }
        }
    }

    /// The sizes one graph is captured for.
    #[derive(Clone, Copy)]
    struct GraphShape {
        batch_size: usize,
        /// Block-table width (blocks per sequence).
        width: usize,
        max_model_len: usize,
        block_size: usize,
    }

    /// Captures the graph of one batch size; with `logits` (`[b, vocab]`, an alias of the
    /// shared static buffer) it ends with the LM head, else with the hidden states.
    fn capture_one(
        be: &dyn Backend,
        capture: &dyn GraphCapture,
        model: &dyn Model,
        kv_cache: &mut KvCache,
        shape: GraphShape,
        logits: Option<Tensor>,
    ) -> Result<CapturedDecode> {
        let GraphShape {
            batch_size: b,
            width,
            max_model_len,
            block_size,
        } = shape;
        // Padding everywhere: the capture itself writes no KV and reads nothing.
        let zeros =
            |shape: &[usize]| be.upload(Tensor::zeros_cpu(shape, nanovllm_kernels::DType::U32));
        let input = ForwardInput {
            input_ids: zeros(&[b])?,
            positions: zeros(&[b])?,
            attn: AttentionMetadata {
                is_prefill: false,
                num_seqs: b,
                block_size,
                cu_seqlens_q: be.upload(Tensor::from_u32((0..=b as u32).collect(), &[b + 1])?)?,
                context_lens: zeros(&[b])?,
                block_tables: zeros(&[b, width])?,
                slot_mapping: be.upload(Tensor::from_i64(vec![-1; b], &[b])?)?,
                max_seqlen_q: 1,
                max_context_len: max_model_len,
            },
            // Every row: in a decode step row i is sequence i.
            logits_indices: be.upload(Tensor::from_u32((0..b as u32).collect(), &[b])?)?,
        };
        let mut output = match logits {
            Some(logits) => GraphOutput::Logits(logits),
            None => {
                let hidden_size = model.config().hidden_size;
                GraphOutput::Hidden(be.zeros(&[b, hidden_size], be.activation_dtype())?)
            }
        };
        // One eager run first, of everything the graph will hold: lazy initialisation
        // (cuBLAS heuristics, module loads) must not happen inside the capture.
        let warm = model.forward_hidden(&input, kv_cache)?;
        if let GraphOutput::Logits(_) = output {
            drop(model.compute_logits(&warm, &input.logits_indices)?);
        }
        drop(warm);
        be.synchronize()?;
        capture.begin_capture()?;
        let out = model.forward_hidden(&input, kv_cache)?;
        match &mut output {
            GraphOutput::Logits(dst) => {
                let logits = model.compute_logits(&out, &input.logits_indices)?;
                capture.copy_device(&logits, dst)?;
            }
            GraphOutput::Hidden(dst) => capture.copy_device(&out, dst)?,
        }
        drop(out);
        let graph = capture.end_capture()?;
        // A first replay proves the graph runs; its output is padding.
        graph.launch()?;
        be.synchronize()?;
        Ok(CapturedDecode {
            batch_size: b,
            input,
            output,
            graph,
        })
    }

    /// The graph path on [`FakeGraphs`] (ops run at capture, launches only counted): what a
    /// step writes, launches and hands on, and that it makes no tensor.
    #[cfg(test)]
    mod tests {
        use std::sync::Arc;

        use nanovllm_kernels::testing::FakeGraphs;
        use nanovllm_kernels::{CpuBackend, DType, KvCache, Tensor};
        use nanovllm_models::{ForwardInput, KvCacheSpec, Model, ModelConfig, ModelError};
        use nanovllm_scheduler::BatchKind;

        use super::*;
        use crate::decode_graph::tests::decode_batch;

        const VOCAB: usize = 8;

        /// Hidden state of a row: its token id. Logits of a row: one-hot at `hidden + 1`.
        struct EchoModel {
            config: ModelConfig,
        }

        impl EchoModel {
            fn new() -> Self {
                let mut config = crate::testing::toy_model_config(512);
                config.hidden_size = 1;
                config.vocab_size = VOCAB;
                Self { config }
            }
        }

        impl Model for EchoModel {
            fn config(&self) -> &ModelConfig {
                &self.config
            }
            fn kv_cache_spec(&self) -> KvCacheSpec {
                KvCacheSpec {
                    num_layers: 1,
                    num_kv_heads: 1,
                    head_dim: 2,
                }
            }
            fn forward_hidden(
                &self,
                input: &ForwardInput,
                _kv: &mut KvCache,
            ) -> std::result::Result<Tensor, ModelError> {
                let ids = input.input_ids.as_u32_slice()?;
                let hidden = ids.iter().map(|&id| id as f32).collect();
                Ok(Tensor::from_f32(hidden, &[ids.len(), 1])?)
            }
            fn compute_logits(
                &self,
                hidden: &Tensor,
                logits_indices: &Tensor,
            ) -> std::result::Result<Tensor, ModelError> {
                let hidden = hidden.as_f32_slice()?;
                let rows = logits_indices.as_u32_slice()?;
                let mut logits = vec![0.0; rows.len() * VOCAB];
                for (r, &row) in rows.iter().enumerate() {
                    logits[r * VOCAB + (hidden[row as usize] as usize + 1) % VOCAB] = 1.0;
                }
                Ok(Tensor::from_f32(logits, &[rows.len(), VOCAB])?)
            }
        }

        fn captured(can_alias: bool) -> (Arc<FakeGraphs<CpuBackend>>, DecodeGraphs, KvCache) {
            let backend = Arc::new(FakeGraphs::new(CpuBackend::new(), can_alias));
            let model = EchoModel::new();
            let mut kv = KvCache::new(backend.as_ref(), 1, 16, 16, 1, 2, DType::F32).unwrap();
            // Sizes 1, 2, 4; block tables 64 / 16 = 4 wide.
            let graphs = DecodeGraphs::capture(backend.clone(), &model, &mut kv, 4, 64).unwrap();
            (backend, graphs, kv)
        }

        #[test]
        fn a_graph_step_copies_its_inputs_launches_once_and_makes_no_tensor() {
            let (backend, mut graphs, _kv) = captured(true);
            assert_eq!(graphs.batch_sizes(), [1, 2, 4]);
            assert_eq!(graphs.in_graph_logits_rows(), 4);
            // One proving launch per captured graph.
            assert_eq!(backend.launches(), 3);
            let (ops, copies) = (backend.ops(), backend.host_copies());
            let batch = decode_batch();
            for step in 1..=3 {
                let staged = graphs.stage(&batch).unwrap();
                let Replayed::Logits(logits) = graphs.launch(staged).unwrap() else {
                    panic!("a batch of 3 fits the in-graph logits");
                };
                // The batch's rows of the shared buffer. The fake replays nothing, so they
                // hold the capture run's logits: padding token 0, so one-hot at 1.
                assert_eq!(logits.shape(), [3, VOCAB]);
                let values = logits.as_f32_slice().unwrap();
                for row in values.chunks(VOCAB) {
                    assert_eq!(row[1], 1.0);
                }
                assert_eq!(backend.launches(), 3 + step);
            }
            assert_eq!(backend.ops(), ops, "a graph step makes no tensor");
            // Five static inputs per step: ids, positions, context lengths, block tables, slots.
            assert_eq!(backend.host_copies(), copies + 3 * 5);
            let g = graphs.graphs.iter().find(|g| g.batch_size == 4).unwrap();
            let attn = &g.input.attn;
            assert_eq!(g.input.input_ids.as_u32_slice().unwrap(), [11, 12, 13, 0]);
            assert_eq!(g.input.positions.as_u32_slice().unwrap(), [4, 16, 32, 0]);
            assert_eq!(attn.context_lens.as_u32_slice().unwrap(), [5, 17, 33, 0]);
            assert_eq!(attn.slot_mapping.as_i64_slice().unwrap(), [52, 80, 144, -1]);
            assert_eq!(attn.block_tables.shape(), [4, 4]);
            assert_eq!(
                &attn.block_tables.as_u32_slice().unwrap()[8..12],
                [7, 8, 9, 0]
            );
            // The smaller graphs' inputs were not touched.
            let g2 = graphs.graphs.iter().find(|g| g.batch_size == 2).unwrap();
            assert_eq!(g2.input.input_ids.as_u32_slice().unwrap(), [0, 0]);
        }

        #[test]
        fn without_aliasing_every_graph_ends_with_its_hidden_states() {
            let (backend, mut graphs, _kv) = captured(false);
            assert_eq!(graphs.in_graph_logits_rows(), 0);
            let ops = backend.ops();
            let staged = graphs.stage(&decode_batch()).unwrap();
            let Replayed::Hidden(hidden) = graphs.launch(staged).unwrap() else {
                panic!("no shared logits buffer without aliasing");
            };
            // The padded batch's static hidden states; the runner computes the logits.
            assert_eq!(hidden.shape(), [4, 1]);
            assert_eq!(backend.ops(), ops);
        }

        #[test]
        fn the_runner_samples_from_what_the_graph_left() {
            use nanovllm_scheduler::SamplingParams;
            for can_alias in [true, false] {
                let backend = Arc::new(FakeGraphs::new(CpuBackend::new(), can_alias));
                let mut runner = crate::runner::ModelRunner::new(
                    backend.clone(),
                    Box::new(EchoModel::new()),
                    16,
                    16,
                    DType::F32,
                    0,
                )
                .unwrap();
                assert!(runner.enable_decode_graphs(4, 64));
                let launches = backend.launches();
                let params = SamplingParams::greedy(1);
                let tokens = runner
                    .execute(&decode_batch(), &[&params; 3])
                    .unwrap()
                    .tokens;
                // The capture's logits (padding token 0 → one-hot at 1), through either
                // the in-graph logits or the static hidden states.
                assert_eq!(tokens, [1, 1, 1], "can_alias = {can_alias}");
                assert_eq!(backend.launches(), launches + 1);
            }
        }

        #[test]
        fn prefill_and_oversized_batches_are_not_staged() {
            let (_backend, mut graphs, _kv) = captured(true);
            let mut prefill = decode_batch();
            prefill.kind = BatchKind::Prefill;
            assert!(!graphs.covers(&prefill));
            assert!(graphs.stage(&prefill).is_err());
            let mut big = decode_batch();
            for _ in 0..2 {
                big.seqs.push(big.seqs[0]);
                big.input_ids.push(1);
                big.positions.push(4);
                big.slot_mapping.push(1);
                big.cu_seqlens_q.push(big.seqs.len() as u32);
                big.block_tables.push(3);
                big.block_table_offsets.push(big.block_tables.len() as u32);
            }
            assert_eq!(big.num_seqs(), 5);
            assert!(!graphs.covers(&big));
            assert!(graphs.stage(&big).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use nanovllm_scheduler::{BatchKind, ScheduledSeq};

    use super::*;

    #[test]
    fn batch_sizes_are_powers_to_8_then_every_16_then_the_maximum() {
        assert_eq!(graph_batch_sizes(1), vec![1]);
        assert_eq!(graph_batch_sizes(3), vec![1, 2, 3]);
        assert_eq!(graph_batch_sizes(8), vec![1, 2, 4, 8]);
        assert_eq!(graph_batch_sizes(20), vec![1, 2, 4, 8, 16, 20]);
        assert_eq!(graph_batch_sizes(48), vec![1, 2, 4, 8, 16, 32, 48]);
        let full = graph_batch_sizes(512);
        assert_eq!(full.len(), 4 + 32);
        assert_eq!(&full[..6], &[1, 2, 4, 8, 16, 32]);
        assert_eq!(*full.last().unwrap(), 512);
        // Capped at 512: larger decode batches run eagerly.
        assert_eq!(graph_batch_sizes(1000), full);
        assert!(graph_batch_sizes(0).is_empty());
    }

    #[test]
    fn the_smallest_graph_that_holds_the_batch_is_picked() {
        let sizes = graph_batch_sizes(40);
        assert_eq!(sizes, vec![1, 2, 4, 8, 16, 32, 40]);
        let pick = |n| pick_batch_size(&sizes, n);
        assert_eq!(pick(1), Some(1));
        assert_eq!(pick(3), Some(4));
        assert_eq!(pick(9), Some(16));
        assert_eq!(pick(32), Some(32));
        assert_eq!(pick(33), Some(40));
        assert_eq!(pick(41), None);
        assert_eq!(pick(0), None);
        assert_eq!(graph_block_table_width(4096, 256), 16);
        assert_eq!(graph_block_table_width(100, 16), 7);
    }

    #[test]
    fn in_graph_logits_are_bounded_by_the_shared_buffer() {
        let sizes = graph_batch_sizes(512);
        // Qwen3's vocabulary in bf16: every graph (512 rows, 148 MiB).
        assert_eq!(in_graph_logits_rows(&sizes, 151_936, 2), 512);
        // In f32 the buffer would outgrow the bound at 512: the largest size that fits.
        let rows = in_graph_logits_rows(&sizes, 151_936, 4);
        assert_eq!(rows, 432);
        assert!(rows * 151_936 * 4 <= MAX_GRAPH_LOGITS_BYTES);
        assert!((rows + 16) * 151_936 * 4 > MAX_GRAPH_LOGITS_BYTES);
        // A vocabulary too large for even one row: no graph computes logits.
        assert_eq!(in_graph_logits_rows(&sizes, MAX_GRAPH_LOGITS_BYTES, 2), 0);
        assert_eq!(in_graph_logits_rows(&[], 100, 2), 0);
    }

    /// Decode of three sequences with block size 16: contexts 5, 17 and 33.
    pub(super) fn decode_batch() -> ScheduledBatch {
        let seq = |seq_id, context_len| ScheduledSeq {
            seq_id,
            num_computed_tokens: context_len - 1,
            num_new_tokens: 1,
            context_len,
            sample: true,
            num_generated_tokens: 1,
            prompt_logprob_rows: 0,
        };
        ScheduledBatch {
            kind: BatchKind::Decode,
            block_size: 16,
            seqs: vec![seq(0, 5), seq(1, 17), seq(2, 33)],
            input_ids: vec![11, 12, 13],
            positions: vec![4, 16, 32],
            cu_seqlens_q: vec![0, 1, 2, 3],
            slot_mapping: vec![3 * 16 + 4, 5 * 16, 9 * 16],
            block_tables: vec![3, 4, 5, 7, 8, 9],
            block_table_offsets: vec![0, 1, 3, 6],
        }
    }

    #[test]
    fn padding_rows_write_no_kv_and_attend_to_nothing() {
        let batch = decode_batch();
        batch.check_invariants().unwrap();
        let mut out = PaddedDecodeInput::default();
        fill_padded_decode(&batch, 4, 4, &mut out).unwrap();
        assert_eq!(out.input_ids, vec![11, 12, 13, 0]);
        assert_eq!(out.positions, vec![4, 16, 32, 0]);
        assert_eq!(out.context_lens, vec![5, 17, 33, 0]);
        assert_eq!(out.slot_mapping, vec![52, 80, 144, -1]);
        #[rustfmt::skip]
        assert_eq!(out.block_tables, vec![
            3, 0, 0, 0,
            4, 5, 0, 0,
            7, 8, 9, 0,
            0, 0, 0, 0,
        ]);
        // Refilling with a larger bucket reuses the buffers and pads further.
        fill_padded_decode(&batch, 8, 3, &mut out).unwrap();
        assert_eq!(out.slot_mapping[3..], [-1; 5]);
        assert_eq!(out.context_lens[3..], [0; 5]);
        assert_eq!(out.block_tables.len(), 8 * 3);
        assert_eq!(&out.block_tables[6..9], &[7, 8, 9]);
    }

    #[test]
    fn batches_that_do_not_fit_a_graph_are_refused() {
        let mut out = PaddedDecodeInput::default();
        let batch = decode_batch();
        // Too many sequences, or a block table wider than the graph's.
        assert!(fill_padded_decode(&batch, 2, 4, &mut out).is_err());
        assert!(fill_padded_decode(&batch, 4, 2, &mut out).is_err());
        // Prefill never replays a graph.
        let mut prefill = batch.clone();
        prefill.kind = BatchKind::Prefill;
        assert!(fill_padded_decode(&prefill, 4, 4, &mut out).is_err());
    }
}
