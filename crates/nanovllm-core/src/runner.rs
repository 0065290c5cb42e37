//! [`ModelRunner`]: executes one [`ScheduledBatch`] on the device.
//!
//! It owns the backend, the model and the paged [`KvCache`].
//! Each step it packs the batch into a [`ForwardInput`] (host staging buffers are
//! kept and refilled, never reallocated per step, on every backend), runs the model, and
//! hands the logits of the sampled rows to [`Backend::sample`] with one
//! [`SamplingRow`](nanovllm_kernels::SamplingRow) per sampling sequence
//! ([`crate::sampling`]: its seed, and its number of generated tokens as the step). The
//! logits stay on the device; only the tokens, and the logprobs a request asked for, come
//! back.
//!
//! On a backend that captures graphs (CUDA; unless `enforce_eager`), decode steps of up to
//! 512 sequences replay a captured graph instead ([`crate::decode_graph`]): the step stages
//! its inputs into the graph's static buffers (host-to-device copies queued through the
//! backend's pinned staging), launches the graph, and takes the logits the graph computed
//! in its static logits buffer (or, for batches too large for that buffer, runs
//! [`Model::compute_logits`] eagerly on the batch's rows). A graph step allocates no device
//! memory. Prefill and larger decode batches run eagerly. Sampling runs on the device
//! ([`Backend::sample`]); reading the sampled tokens back is the step's only host
//! synchronisation.
//!
//! Invariants of the built input (see `AttentionMetadata`): `cu_seqlens_q`
//! and `slot_mapping` are the batch's own; `context_lens[i]` is
//! `seqs[i].context_len`; `block_tables` is `[num_seqs, max_blocks]` with each
//! row's tail padded with block 0 (never read: attention stops at
//! `context_len`); `logits_indices` holds the last packed row of every
//! sequence that samples (`sample == true`), in batch order — or, when none
//! samples (a step of prompt chunks only), the last row of the first
//! sequence, whose logits are ignored.
//!
//! # Prompt logprobs
//! A step whose batch has prompt rows to score (`ScheduledSeq::prompt_logprob_rows`, set by
//! the scheduler for requests with `SamplingParams::prompt_logprobs`) runs
//! [`Model::forward_hidden`] eagerly (never a decode graph: such rows only occur in
//! prefill), takes the sampled rows' logits from the hidden states as usual, samples, and
//! then scores the prompt rows in passes of at most [`PROMPT_LOGITS_ROWS_PER_PASS`] rows:
//! [`Model::compute_logits`] on those rows, then [`Backend::token_logprobs`] with each
//! row's next prompt token as its target (known even for a chunk's last row: it is in the
//! prompt). So a step holds at most `PROMPT_LOGITS_ROWS_PER_PASS × vocab_size` prompt
//! logits at once (plus the hidden states of the chunk, `max_num_batched_tokens ×
//! hidden_size`), whatever the prompt's length. Tensor-parallel workers make the same
//! `compute_logits` calls (their collectives pair with rank 0's) and drop the logits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nanovllm_kernels::{
    AttentionMetadata, Backend, CpuStorage, DType, Device, KvCache, Penalties, SamplingRow,
    Storage, Tensor, NO_FINITE_LOGIT,
};
use nanovllm_models::{ForwardInput, Model};
use nanovllm_scheduler::{SamplingParams, ScheduledBatch, SeqId};

use crate::decode_graph::{DecodeGraphs, Replayed};
use crate::error::{EngineError, Result};
use crate::logprobs::TokenLogprobs;
use crate::sampling::sampling_row;
use crate::structured::StepMasks;

/// Host-side staging vectors, refilled every step.
#[derive(Debug, Default)]
struct HostBuffers {
    input_ids: Vec<u32>,
    positions: Vec<u32>,
    cu_seqlens_q: Vec<u32>,
    context_lens: Vec<u32>,
    block_tables: Vec<u32>,
    slot_mapping: Vec<i64>,
    logits_indices: Vec<u32>,
}

/// Prompt rows scored per [`Model::compute_logits`] call: bounds the prompt logits a step
/// holds at once to this many rows of `vocab_size` (e.g. 512 × 151 936 f32 = 311 MB on the
/// CPU, half that in bf16 on a GPU).
pub const PROMPT_LOGITS_ROWS_PER_PASS: usize = 512;

/// What the engine adds to a scheduled sequence's [`SamplingParams`] for one step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SeqExtras<'a> {
    /// The `n` top logprobs of the sampled token (see [`crate::logprobs`]).
    pub num_top_logprobs: Option<usize>,
    /// The request's penalties (from its [`crate::sampling::PenaltyState`]); `None` when
    /// every penalty is off.
    pub penalties: Option<Penalties<'a>>,
    /// Prompt logprobs: the prompt's token ids and the number of top alternatives per
    /// position. Needed for every sequence with `prompt_logprob_rows > 0` on rank 0.
    pub prompt_logprobs: Option<(&'a [u32], usize)>,
}

/// What one step sampled, per scheduled sequence in batch order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepSamples {
    /// Each sequence's token; 0 for a sequence that does not sample (an unfinished prompt
    /// chunk, whose token the scheduler ignores) or that is in [`Self::non_finite`].
    pub tokens: Vec<u32>,
    /// Logprobs of the sequences that asked and got a token.
    pub logprobs: Vec<Option<TokenLogprobs>>,
    /// Sequences whose logits had no finite maximum (NaN, all −∞, or a +∞): they got no
    /// token ([`EngineError::NonFiniteLogits`]); the others of the batch are unaffected.
    /// A sequence is listed once, whether its sampled row or a prompt row was the bad one.
    pub non_finite: Vec<SeqId>,
    /// Prompt logprobs scored in this step, per sequence: the entries of prompt positions
    /// `num_computed_tokens + 1 ..= num_computed_tokens + prompt_logprob_rows` (each the
    /// prompt token there, its logprob given the tokens before it, and the top
    /// alternatives); empty for the others.
    pub prompt_logprobs: Vec<Vec<TokenLogprobs>>,
}

/// Runs batches through the model and samples from the result.
pub struct ModelRunner {
    backend: Arc<dyn Backend>,
    model: Box<dyn Model>,
    kv_cache: KvCache,
    /// `EngineConfig::seed`: the seed of requests without their own ([`crate::sampling`]).
    seed: u64,
    /// Capacity for the step's sampling rows, kept between steps (the rows themselves
    /// borrow the step's params; see [`recycle_rows`]).
    sample_rows: Vec<SamplingRow<'static>>,
    buffers: HostBuffers,
    /// Captured decode graphs (a backend that captures, not `enforce_eager`, capture succeeded).
    decode_graphs: Option<DecodeGraphs>,
    /// Whether the forward pass runs on a rayon worker (see [`Self::run_forward_on_pool`]).
    forward_on_pool: bool,
    /// Time the steps since the last [`Self::take_input_time`] spent building and staging
    /// their inputs.
    input_time: Duration,
}

impl std::fmt::Debug for ModelRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRunner")
            .field("backend", &self.backend)
            .field("architecture", &self.model.config().architecture)
            .field("num_kv_blocks", &self.kv_cache.num_blocks)
            .field("block_size", &self.kv_cache.block_size)
            .field("cuda_graphs", &self.cuda_graph_batch_sizes())
            .finish()
    }
}

impl ModelRunner {
    /// Allocates a KV cache of `num_blocks` blocks of `block_size` tokens laid out as the
    /// model asks ([`Model::kv_cache_spec`]), an FP8 one with the checkpoint's scales
    /// ([`Model::kv_cache_scales`]); requests without a seed of their own sample
    /// with one derived from `seed` ([`crate::sampling::request_seed`]).
    pub fn new(
        backend: Arc<dyn Backend>,
        model: Box<dyn Model>,
        num_blocks: usize,
        block_size: usize,
        kv_dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let spec = model.kv_cache_spec();
        let mut kv_cache = KvCache::new(
            backend.as_ref(),
            spec.num_layers,
            num_blocks,
            block_size,
            spec.num_kv_heads,
            spec.head_dim,
            kv_dtype,
        )?;
        // The checkpoint's scales describe an FP8 cache's encoding; other caches ignore them.
        if kv_dtype == DType::F8E4M3 {
            if let Some(scales) = model.kv_cache_scales() {
                kv_cache.set_scales(&scales)?;
                tracing::info!(
                    "FP8 KV cache: per-layer k_scale/v_scale from the checkpoint ({} layers)",
                    scales.len()
                );
            }
        }
        Ok(Self {
            backend,
            model,
            kv_cache,
            seed,
            sample_rows: Vec::new(),
            buffers: HostBuffers::default(),
            forward_on_pool: false,
            decode_graphs: None,
            input_time: Duration::ZERO,
        })
    }

    /// Runs each forward pass on a rayon worker (CPU backend, no tensor parallelism):
    /// each op's parallel split then starts on a pool thread, with the other workers
    /// still spinning from the last op, instead of waking them from this thread and
    /// sleeping until they are done (measured: single-stream decode +3-6 %). Not under
    /// tensor parallelism: a worker blocked in a collective would hold its pool thread,
    /// and the ranks sharing the pool (threads mode) could starve each other.
    pub fn run_forward_on_pool(&mut self, on: bool) {
        self.forward_on_pool = on && matches!(self.backend.device(), Device::Cpu);
    }

    /// Captures decode graphs for [`crate::decode_graph::graph_batch_sizes`]`(max_num_seqs)`
    /// when the backend can ([`Backend::graph_capture`]). A failed capture is a warning,
    /// never an error: the runner then stays eager. Returns whether graphs are on.
    pub fn enable_decode_graphs(&mut self, max_num_seqs: usize, max_model_len: usize) -> bool {
        self.decode_graphs = None;
        if self.backend.graph_capture().is_none() {
            return false;
        }
        let captured = DecodeGraphs::capture(
            self.backend.clone(),
            self.model.as_ref(),
            &mut self.kv_cache,
            max_num_seqs,
            max_model_len,
        );
        match captured {
            Ok(graphs) => {
                tracing::info!(
                    batch_sizes = ?graphs.batch_sizes(),
                    in_graph_logits_rows = graphs.in_graph_logits_rows(),
                    "captured decode graphs"
                );
                self.decode_graphs = Some(graphs);
                true
            }
            Err(e) => {
                tracing::warn!("decode graph capture failed; running eagerly: {e}");
                false
            }
        }
    }

    /// Batch sizes with a captured decode graph (empty when eager).
    pub fn cuda_graph_batch_sizes(&self) -> Vec<usize> {
        self.decode_graphs
            .as_ref()
            .map(|graphs| graphs.batch_sizes().to_vec())
            .unwrap_or_default()
    }

    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv_cache
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Time spent building and staging step inputs (host work, up to the forward pass or the
    /// graph launch) since the last call; resets it. The engine reads it around
    /// [`Self::execute`] to tell host time from the forward pass's.
    pub fn take_input_time(&mut self) -> Duration {
        std::mem::take(&mut self.input_time)
    }

    /// Runs one step; samples one token per scheduled sequence, in batch order.
    /// `params[i]` belongs to `batch.seqs[i]`.
    pub fn execute(
        &mut self,
        batch: &ScheduledBatch,
        params: &[&SamplingParams],
    ) -> Result<StepSamples> {
        self.execute_with_logprobs(batch, params, &[], None)
    }

    /// [`Self::execute`], plus the logprobs of each sampled token for the
    /// sequences that ask: `num_top_logprobs[i] = Some(n)` gives `batch.seqs[i]`
    /// its token's logprob and the `n` most likely alternatives (see
    /// [`crate::logprobs`]; `n ≤` [`nanovllm_kernels::sampling::MAX_NUM_LOGPROBS`]). An
    /// empty `num_top_logprobs` asks for none.
    ///
    /// With `masks` (structured output, [`crate::structured`]), the constrained rows' token
    /// masks are computed on the host while the forward pass runs (see
    /// [`Self::run_model_with_masks`]) and applied in sampling.
    pub fn execute_with_logprobs(
        &mut self,
        batch: &ScheduledBatch,
        params: &[&SamplingParams],
        num_top_logprobs: &[Option<usize>],
        masks: Option<&mut StepMasks<'_>>,
    ) -> Result<StepSamples> {
        let extras: Vec<SeqExtras<'_>> = num_top_logprobs
            .iter()
            .map(|&num_top_logprobs| SeqExtras {
                num_top_logprobs,
                ..SeqExtras::default()
            })
            .collect();
        self.execute_with(batch, params, &extras, masks)
    }

    /// [`Self::execute`] with what the engine adds per sequence: `extras[i]` belongs to
    /// `batch.seqs[i]` (logprobs, penalties, prompt logprobs); an empty `extras` adds
    /// nothing (a tensor-parallel worker: prompt rows are then computed, as their
    /// collectives require, but not scored).
    pub fn execute_with(
        &mut self,
        batch: &ScheduledBatch,
        params: &[&SamplingParams],
        extras: &[SeqExtras<'_>],
        mut masks: Option<&mut StepMasks<'_>>,
    ) -> Result<StepSamples> {
        let num_seqs = batch.num_seqs();
        if !extras.is_empty() && extras.len() != num_seqs {
            return Err(EngineError::Internal(format!(
                "execute got {} per-sequence extras for {num_seqs} sequences",
                extras.len(),
            )));
        }
        if params.len() != num_seqs {
            return Err(EngineError::Internal(format!(
                "execute got {} sampling params for {num_seqs} sequences",
                params.len(),
            )));
        }
        let mut samples = StepSamples {
            tokens: vec![0; num_seqs],
            logprobs: vec![None; num_seqs],
            non_finite: Vec::new(),
            prompt_logprobs: vec![Vec::new(); num_seqs],
        };
        if num_seqs == 0 {
            return Ok(samples);
        }
        let (logits, hidden) = match masks.as_deref_mut() {
            Some(masks) => self.run_model_with_masks(batch, masks)?,
            None => self.run_model(batch)?,
        };
        let mut rows = recycle_rows(std::mem::take(&mut self.sample_rows));
        let sampled = self.sample(
            batch,
            params,
            extras,
            masks.as_deref(),
            logits,
            &mut rows,
            &mut samples,
        );
        self.sample_rows = recycle_rows(rows);
        sampled?;
        if let Some(hidden) = hidden {
            self.score_prompts(batch, extras, &hidden, &mut samples)?;
        }
        Ok(samples)
    }

    /// Samples the batch's sampling rows from `logits` into `samples` (`rows`: an empty
    /// vector to fill, for its capacity), with the constrained rows' token masks when
    /// `masks` is given.
    #[allow(clippy::too_many_arguments)] // one step's parts, each borrowed differently
    fn sample<'a>(
        &self,
        batch: &ScheduledBatch,
        params: &[&'a SamplingParams],
        extras: &[SeqExtras<'a>],
        masks: Option<&StepMasks<'_>>,
        logits: Tensor,
        rows: &mut Vec<SamplingRow<'a>>,
        samples: &mut StepSamples,
    ) -> Result<()> {
        for (i, (seq, p)) in batch.seqs.iter().zip(params).enumerate() {
            if seq.sample {
                let extra = extras.get(i).copied().unwrap_or_default();
                let step = seq.num_generated_tokens as u64;
                rows.push(SamplingRow {
                    penalties: extra.penalties,
                    ..sampling_row(p, self.seed, seq.seq_id, step, extra.num_top_logprobs)
                });
            }
        }
        if rows.is_empty() {
            return Ok(()); // prompt chunks only: their logits are ignored
        }
        let (num_rows, _) = logits.dims2()?;
        if num_rows != rows.len() {
            return Err(EngineError::Internal(format!(
                "model returned {num_rows} logit rows for {} sampled sequences",
                rows.len()
            )));
        }
        let masked;
        let rows: &[SamplingRow<'_>] = match masks {
            Some(masks) => {
                masked = masks.apply(rows);
                &masked
            }
            None => rows,
        };
        let out = self.backend.sample(logits, rows)?;
        if out.tokens.len() != num_rows || out.logprobs.len() != num_rows {
            return Err(EngineError::Internal(format!(
                "sampling returned {} tokens and {} logprobs for {num_rows} rows",
                out.tokens.len(),
                out.logprobs.len()
            )));
        }
        // The sampled sequences' rows are in batch order.
        let sampled = batch.seqs.iter().enumerate().filter(|(_, s)| s.sample);
        for ((i, seq), (token, logprobs)) in sampled.zip(out.tokens.into_iter().zip(out.logprobs)) {
            if token == NO_FINITE_LOGIT {
                samples.non_finite.push(seq.seq_id);
                continue;
            }
            samples.tokens[i] = token;
            samples.logprobs[i] = logprobs.map(|row| TokenLogprobs::from_row(token, row));
        }
        Ok(())
    }

    /// Scores the batch's prompt rows (see the module docs) into `samples.prompt_logprobs`,
    /// in passes of at most [`PROMPT_LOGITS_ROWS_PER_PASS`] rows. Without `extras` (a
    /// worker) the logits are computed and dropped.
    fn score_prompts(
        &mut self,
        batch: &ScheduledBatch,
        extras: &[SeqExtras<'_>],
        hidden: &Tensor,
        samples: &mut StepSamples,
    ) -> Result<()> {
        // (sequence index, packed row, target token) of every prompt row, in batch order.
        let mut scored: Vec<(usize, u32, u32)> = Vec::new();
        let mut num_top = 0;
        for (i, seq) in batch.seqs.iter().enumerate() {
            let n = seq.prompt_logprob_rows;
            if n == 0 {
                continue;
            }
            let first_row = batch.cu_seqlens_q[i];
            let prompt = extras.get(i).and_then(|e| e.prompt_logprobs);
            let targets = match prompt {
                Some((prompt, top)) => {
                    num_top = num_top.max(top);
                    // Row k holds position num_computed_tokens + k and predicts the token after it.
                    let at = seq.num_computed_tokens + 1;
                    let targets = prompt.get(at..at + n).ok_or_else(|| {
                        EngineError::Internal(format!(
                            "sequence {}: {n} prompt rows from position {} but a prompt of {} tokens",
                            seq.seq_id,
                            seq.num_computed_tokens,
                            prompt.len()
                        ))
                    })?;
                    Some(targets)
                }
                None if extras.is_empty() => None,
                None => {
                    return Err(EngineError::Internal(format!(
                        "sequence {} has prompt rows to score but no prompt logprobs request",
                        seq.seq_id
                    )))
                }
            };
            for k in 0..n {
                let target = targets.map_or(0, |t| t[k]);
                scored.push((i, first_row + k as u32, target));
            }
        }
        for pass in scored.chunks(PROMPT_LOGITS_ROWS_PER_PASS) {
            let mut indices: Vec<u32> = pass.iter().map(|&(_, row, _)| row).collect();
            let indices = upload_u32(self.backend.as_ref(), &mut indices, &[pass.len()])?;
            let logits = self.model.compute_logits(hidden, &indices)?;
            if extras.is_empty() {
                continue; // a worker: the logits only had to be gathered
            }
            let targets: Vec<u32> = pass.iter().map(|&(_, _, target)| target).collect();
            let out = self.backend.token_logprobs(logits, &targets, num_top)?;
            if out.len() != pass.len() {
                return Err(EngineError::Internal(format!(
                    "token_logprobs returned {} rows for {}",
                    out.len(),
                    pass.len()
                )));
            }
            for (&(i, _, target), row) in pass.iter().zip(out) {
                let Some(mut row) = row else {
                    let seq_id = batch.seqs[i].seq_id;
                    if !samples.non_finite.contains(&seq_id) {
                        samples.non_finite.push(seq_id);
                    }
                    continue;
                };
                let top = extras[i].prompt_logprobs.map_or(0, |(_, top)| top);
                row.top.truncate(top);
                samples.prompt_logprobs[i].push(TokenLogprobs::from_row(target, row));
            }
        }
        Ok(())
    }

    /// [`Self::run_model`] with the step's grammar masks computed on the host meanwhile. On a
    /// device `run_model` returns once the forward pass is queued, so the masks are computed
    /// here (rows spread over the idle rayon pool) while the device works, before sampling
    /// waits for it. On the CPU the forward pass is synchronous: the masks are computed on a
    /// scoped thread of their own beside it (one thread spawned per constrained step; it
    /// competes with the forward's pool for a core).
    fn run_model_with_masks(
        &mut self,
        batch: &ScheduledBatch,
        masks: &mut StepMasks<'_>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if self.backend.device() != Device::Cpu {
            let logits = self.run_model(batch)?;
            masks.compute_parallel();
            return Ok(logits);
        }
        std::thread::scope(|scope| {
            let beside = scope.spawn(|| masks.compute());
            let logits = self.run_model(batch);
            beside
                .join()
                .map_err(|_| EngineError::Internal("the grammar mask thread panicked".into()))?;
            logits
        })
    }

    /// Logits of the batch's sampled rows (or of its first sequence's last row when none
    /// samples): a decode graph when one covers the batch, else the model eagerly.
    ///
    /// The returned tensor may alias a decode graph's static logits buffer
    /// ([`Replayed::Logits`]): the caller consumes it within the step (sampling), so it is
    /// dropped before the next replay rewrites that buffer and before the graphs are.
    /// With prompt rows to score (see the module docs) it runs eagerly through
    /// [`Model::forward_hidden`] and also returns the hidden states, for
    /// [`Self::score_prompts`].
    fn run_model(&mut self, batch: &ScheduledBatch) -> Result<(Tensor, Option<Tensor>)> {
        let start = Instant::now();
        let scores_prompts = batch.seqs.iter().any(|s| s.prompt_logprob_rows > 0);
        if scores_prompts {
            let input = self.build_input(batch)?;
            self.input_time += start.elapsed();
            let (model, kv_cache) = (&self.model, &mut self.kv_cache);
            let hidden = if self.forward_on_pool {
                rayon::scope(|_| model.forward_hidden(&input, kv_cache))?
            } else {
                model.forward_hidden(&input, kv_cache)?
            };
            let logits = self.model.compute_logits(&hidden, &input.logits_indices)?;
            self.recycle(input);
            return Ok((logits, Some(hidden)));
        }
        if let Some(graphs) = self.decode_graphs.as_mut() {
            if graphs.covers(batch) {
                let staged = graphs.stage(batch)?;
                self.input_time += start.elapsed();
                let logits = match graphs.launch(staged)? {
                    Replayed::Logits(logits) => logits,
                    Replayed::Hidden(hidden) => {
                        // Decode: every sequence samples, one row each, so row i is sequence i.
                        let b = &mut self.buffers;
                        b.logits_indices.clear();
                        b.logits_indices.extend(0..batch.num_seqs() as u32);
                        let n = b.logits_indices.len();
                        let be = self.backend.as_ref();
                        let indices = upload_u32(be, &mut b.logits_indices, &[n])?;
                        self.model.compute_logits(hidden, &indices)?
                    }
                };
                return Ok((logits, None));
            }
        }
        let input = self.build_input(batch)?;
        self.input_time += start.elapsed();
        let (model, kv_cache) = (&self.model, &mut self.kv_cache);
        let logits = if self.forward_on_pool {
            rayon::scope(|_| model.forward(&input, kv_cache))?
        } else {
            model.forward(&input, kv_cache)?
        };
        self.recycle(input);
        Ok((logits, None))
    }

    /// Packs `batch` into device tensors, reusing the host staging buffers.
    fn build_input(&mut self, batch: &ScheduledBatch) -> Result<ForwardInput> {
        let b = &mut self.buffers;
        let num_seqs = batch.num_seqs();
        let num_tokens = batch.num_tokens();
        if batch.cu_seqlens_q.len() != num_seqs + 1
            || batch.block_table_offsets.len() != num_seqs + 1
            || batch.positions.len() != num_tokens
            || batch.slot_mapping.len() != num_tokens
        {
            return Err(EngineError::Internal(format!(
                "malformed batch: {num_seqs} seqs, {num_tokens} tokens, {} cu_seqlens_q, {} positions, {} slots, {} block table offsets",
                batch.cu_seqlens_q.len(),
                batch.positions.len(),
                batch.slot_mapping.len(),
                batch.block_table_offsets.len()
            )));
        }
        refill(&mut b.input_ids, &batch.input_ids);
        refill(&mut b.positions, &batch.positions);
        refill(&mut b.cu_seqlens_q, &batch.cu_seqlens_q);
        refill(&mut b.slot_mapping, &batch.slot_mapping);

        b.context_lens.clear();
        b.context_lens
            .extend(batch.seqs.iter().map(|s| s.context_len as u32));
        let max_blocks = (0..num_seqs)
            .map(|i| batch.block_table(i).len())
            .max()
            .unwrap_or(0)
            .max(1);
        b.block_tables.clear();
        b.block_tables.resize(num_seqs * max_blocks, 0);
        for i in 0..num_seqs {
            let table = batch.block_table(i);
            b.block_tables[i * max_blocks..i * max_blocks + table.len()].copy_from_slice(table);
        }

        b.logits_indices.clear();
        let last_row = |i: usize| batch.cu_seqlens_q[i + 1].saturating_sub(1);
        b.logits_indices.extend(
            (0..num_seqs)
                .filter(|&i| batch.seqs[i].sample)
                .map(last_row),
        );
        if b.logits_indices.is_empty() {
            b.logits_indices.push(last_row(0));
        }
        let num_logits = b.logits_indices.len();

        let max_seqlen_q = batch
            .seqs
            .iter()
            .map(|s| s.num_new_tokens)
            .max()
            .unwrap_or(0);
        let max_context_len = batch.seqs.iter().map(|s| s.context_len).max().unwrap_or(0);
        let be = self.backend.as_ref();
        Ok(ForwardInput {
            input_ids: upload_u32(be, &mut b.input_ids, &[num_tokens])?,
            positions: upload_u32(be, &mut b.positions, &[num_tokens])?,
            attn: AttentionMetadata {
                is_prefill: batch.is_prefill(),
                num_seqs,
                block_size: batch.block_size,
                cu_seqlens_q: upload_u32(be, &mut b.cu_seqlens_q, &[num_seqs + 1])?,
                context_lens: upload_u32(be, &mut b.context_lens, &[num_seqs])?,
                block_tables: upload_u32(be, &mut b.block_tables, &[num_seqs, max_blocks])?,
                slot_mapping: upload_staged(
                    be,
                    &mut b.slot_mapping,
                    &[num_tokens],
                    Tensor::from_i64,
                    i64_vec,
                )?,
                max_seqlen_q,
                max_context_len,
            },
            logits_indices: upload_u32(be, &mut b.logits_indices, &[num_logits])?,
        })
    }

    /// Takes the staging vectors back out of a used input on the CPU, where they were
    /// moved into it (on a device [`upload_staged`] kept them).
    fn recycle(&mut self, input: ForwardInput) {
        let b = &mut self.buffers;
        let take = |dst: &mut Vec<u32>, t: Tensor| {
            if let Some(v) = u32_vec(t.into_storage()) {
                *dst = v;
            }
        };
        take(&mut b.input_ids, input.input_ids);
        take(&mut b.positions, input.positions);
        take(&mut b.cu_seqlens_q, input.attn.cu_seqlens_q);
        take(&mut b.context_lens, input.attn.context_lens);
        take(&mut b.block_tables, input.attn.block_tables);
        take(&mut b.logits_indices, input.logits_indices);
        if let Some(v) = i64_vec(input.attn.slot_mapping.into_storage()) {
            b.slot_mapping = v;
        }
    }
}

fn upload_u32(backend: &dyn Backend, host: &mut Vec<u32>, shape: &[usize]) -> Result<Tensor> {
    upload_staged(backend, host, shape, Tensor::from_u32, u32_vec)
}

/// A staging vector as a tensor on `backend`, with no per-step host allocation: on the CPU
/// the vector is moved in (and [`ModelRunner::recycle`] takes it back); on a device it is
/// copied into a new device buffer and stays here, capacity and all.
fn upload_staged<T>(
    backend: &dyn Backend,
    host: &mut Vec<T>,
    shape: &[usize],
    wrap: fn(Vec<T>, &[usize]) -> nanovllm_kernels::Result<Tensor>,
    take_back: fn(Storage) -> Option<Vec<T>>,
) -> Result<Tensor> {
    let staged = wrap(std::mem::take(host), shape)?;
    if backend.device() == Device::Cpu {
        return Ok(backend.upload(staged)?);
    }
    let mut device = backend.zeros(shape, staged.dtype())?;
    backend.copy_from_host(&staged, &mut device)?;
    if let Some(v) = take_back(staged.into_storage()) {
        *host = v;
    }
    Ok(device)
}

/// Copies a staging vector into an existing device tensor (a static input of a captured
/// graph), keeping `dst`'s buffer. The vector is lent to a host tensor for the copy and taken
/// back: no second host copy, and its capacity stays.
pub(crate) fn copy_staged<T>(
    backend: &dyn Backend,
    host: &mut Vec<T>,
    dst: &mut Tensor,
    wrap: fn(Vec<T>, &[usize]) -> nanovllm_kernels::Result<Tensor>,
    take_back: fn(Storage) -> Option<Vec<T>>,
) -> Result<()> {
    let staged = wrap(std::mem::take(host), dst.shape())?;
    let copied = backend.copy_from_host(&staged, dst);
    if let Some(v) = take_back(staged.into_storage()) {
        *host = v;
    }
    Ok(copied?)
}

pub(crate) fn copy_u32(backend: &dyn Backend, host: &mut Vec<u32>, dst: &mut Tensor) -> Result<()> {
    copy_staged(backend, host, dst, Tensor::from_u32, u32_vec)
}

fn u32_vec(storage: Storage) -> Option<Vec<u32>> {
    match storage.into_cpu()? {
        CpuStorage::U32(v) => Some(v),
        _ => None,
    }
}

pub(crate) fn i64_vec(storage: Storage) -> Option<Vec<i64>> {
    match storage.into_cpu()? {
        CpuStorage::I64(v) => Some(v),
        _ => None,
    }
}

/// An emptied vector of sampling rows with another lifetime, keeping its allocation: the
/// rows of a step borrow that step's params, so the runner keeps only the capacity between
/// steps. (`collect` from a vector's own `into_iter` into an element type of the same size
/// and alignment reuses its buffer; the vector is empty, so no row is converted.)
fn recycle_rows<'a, 'b>(mut rows: Vec<SamplingRow<'a>>) -> Vec<SamplingRow<'b>> {
    rows.clear();
    rows.into_iter()
        .map(|_| -> SamplingRow<'b> { unreachable!("the vector was cleared") })
        .collect()
}

fn refill<T: Copy>(dst: &mut Vec<T>, src: &[T]) {
    dst.clear();
    dst.extend_from_slice(src);
}
