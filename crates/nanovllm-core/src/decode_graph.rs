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
//! - The graph ends with the normalised hidden states copied into a static `[b, hidden]`
//!   buffer; logits are computed after the graph, eagerly, on the first `n` rows only.
//! - The KV cache the graph was captured with is never reallocated.
//!
//! Capturing largest first lets smaller graphs reuse the memory the allocator already holds.
//! Any capture failure turns graphs off with a warning: the runner then runs eagerly.

use nanovllm_scheduler::ScheduledBatch;

use crate::error::{EngineError, Result};

/// The largest decode batch that gets a graph (nano-vLLM's 512); larger ones run eagerly.
pub const MAX_GRAPH_BATCH_SIZE: usize = 512;

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

pub use captured::DecodeGraphs;

mod captured {
    use std::sync::Arc;

    use nanovllm_kernels::{
        AttentionMetadata, Backend, CapturedGraph, GraphCapture, KvCache, Tensor,
    };
    use nanovllm_models::{ForwardInput, Model};
    use nanovllm_scheduler::ScheduledBatch;

    use super::{
        fill_padded_decode, graph_batch_sizes, graph_block_table_width, pick_batch_size,
        PaddedDecodeInput,
    };
    use crate::error::{EngineError, Result};
    use crate::runner::{copy_staged, copy_u32, i64_vec};

    /// One captured decode graph and its static buffers.
    struct CapturedDecode {
        batch_size: usize,
        /// Static device inputs the graph reads (refilled before each launch).
        input: ForwardInput,
        /// Static `[batch_size, hidden]` buffer the graph's last node writes.
        hidden: Tensor,
        graph: Box<dyn CapturedGraph>,
    }

    /// The decode graphs of one runner, ascending by batch size.
    pub struct DecodeGraphs {
        backend: Arc<dyn Backend>,
        graphs: Vec<CapturedDecode>,
        batch_sizes: Vec<usize>,
        width: usize,
        staging: PaddedDecodeInput,
    }

    impl std::fmt::Debug for DecodeGraphs {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DecodeGraphs")
                .field("batch_sizes", &self.batch_sizes)
                .field("block_table_width", &self.width)
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
            let mut graphs = Vec::with_capacity(batch_sizes.len());
            for &b in batch_sizes.iter().rev() {
                let shape = GraphShape {
                    batch_size: b,
                    width,
                    max_model_len,
                    block_size,
                };
                let captured = capture_one(backend.as_ref(), capture, model, kv_cache, shape)
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
            })
        }

        pub fn batch_sizes(&self) -> &[usize] {
            &self.batch_sizes
        }

        /// Whether a decode step of `num_seqs` sequences has a graph.
        pub fn covers(&self, batch: &ScheduledBatch) -> bool {
            !batch.is_prefill() && pick_batch_size(&self.batch_sizes, batch.num_seqs()).is_some()
        }

        /// Replays the graph for `batch` and returns its static hidden-state buffer
        /// `[b, hidden]` (rows `0..n` are the batch's; the rest are padding). No host
        /// synchronisation: the copies and the launch are queued on the backend's stream.
        pub fn replay(&mut self, batch: &ScheduledBatch) -> Result<&Tensor> {
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
            g.graph.launch()?;
            Ok(&g.hidden)
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

    fn capture_one(
        be: &dyn Backend,
        capture: &dyn GraphCapture,
        model: &dyn Model,
        kv_cache: &mut KvCache,
        shape: GraphShape,
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
            logits_indices: be.upload(Tensor::from_u32((0..b as u32).collect(), &[b])?)?,
        };
        let hidden_size = model.config().hidden_size;
        let mut hidden = be.zeros(&[b, hidden_size], be.activation_dtype())?;
        // One eager run first: lazy initialisation (cuBLAS heuristics, module loads)
        // must not happen inside the capture.
        drop(model.forward_hidden(&input, kv_cache)?);
        be.synchronize()?;
        capture.begin_capture()?;
        let out = model.forward_hidden(&input, kv_cache)?;
        capture.copy_device(&out, &mut hidden)?;
        drop(out);
        let graph = capture.end_capture()?;
        // A first replay proves the graph runs; its output is padding.
        graph.launch()?;
        be.synchronize()?;
        Ok(CapturedDecode {
            batch_size: b,
            input,
            hidden,
            graph,
        })
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

    /// Decode of three sequences with block size 16: contexts 5, 17 and 33.
    fn decode_batch() -> ScheduledBatch {
        let seq = |seq_id, context_len| ScheduledSeq {
            seq_id,
            num_computed_tokens: context_len - 1,
            num_new_tokens: 1,
            context_len,
            sample: true,
            num_generated_tokens: 1,
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
