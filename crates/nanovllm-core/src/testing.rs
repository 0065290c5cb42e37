//! A toy [`Model`] for engine tests that do not depend on the real kernels.
//!
//! Its "KV" for a token is `(token id, position)`, written through the slot
//! mapping. Its next-token logits for a sequence are a one-hot at
//! `context_hash(all context tokens read back through the block table) % vocab`
//! (NaN everywhere for a sequence that starts with the model's `poison` token, if any).
//! So a step is only right when the runner passed consistent positions,
//! slot mapping, context lengths, block tables and logits indices, and the
//! scheduler kept the cache contents right across prefix hits, chunks and
//! preemptions. Any inconsistency is returned as an error naming it.

use std::sync::atomic::{AtomicUsize, Ordering};

use nanovllm_kernels::{DType, KernelError, KvCache, Tensor};
use nanovllm_models::{ForwardInput, KvCacheSpec, Model, ModelConfig, ModelError, RopeScaling};

pub const TOY_VOCAB: usize = 97;

/// The toy's next token after `context`.
pub fn toy_next_token(context: &[u32]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in context {
        h ^= t as u64 + 1;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % TOY_VOCAB as u64) as u32
}

/// Greedy continuation of `prompt` by the toy, computed naively.
pub fn toy_reference(prompt: &[u32], num_tokens: usize) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for _ in 0..num_tokens {
        tokens.push(toy_next_token(&tokens));
    }
    tokens[prompt.len()..].to_vec()
}

#[derive(Debug)]
pub struct ToyModel {
    config: ModelConfig,
    /// Rows of logits returned so far (to check which rows the runner asks for).
    pub logit_rows: AtomicUsize,
    /// A sequence whose first token is this one gets NaN logits (a broken model, for one
    /// request only).
    pub poison: Option<u32>,
}

pub fn toy_model_config(max_position_embeddings: usize) -> ModelConfig {
    ModelConfig {
        architecture: "ToyForCausalLM".into(),
        hidden_size: 2,
        intermediate_size: 2,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 2,
        vocab_size: TOY_VOCAB,
        max_position_embeddings,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::Default,
        rms_norm_eps: 1e-6,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: None,
        tie_word_embeddings: false,
        dtype: DType::F32,
        num_local_experts: 0,
        num_experts_per_tok: 0,
        moe_intermediate_size: 0,
        norm_topk_prob: false,
        decoder_sparse_step: 1,
        mlp_only_layers: vec![],
        bos_token_id: None,
        eos_token_ids: vec![],
        quantization: None,
    }
}

impl ToyModel {
    pub fn new(max_position_embeddings: usize) -> Self {
        Self::with_config(toy_model_config(max_position_embeddings))
    }

    /// The toy model reporting `config` (its vocab must stay [`TOY_VOCAB`]): e.g. another
    /// architecture's name or a sliding window, for what the engine reads from the config.
    pub fn with_config(config: ModelConfig) -> Self {
        Self {
            config,
            logit_rows: AtomicUsize::new(0),
            poison: None,
        }
    }
}

fn bad(msg: String) -> ModelError {
    ModelError::Kernel(KernelError::Invalid {
        op: "toy_forward",
        msg,
    })
}

impl Model for ToyModel {
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

    /// Hidden state `[T, 1]`: a sequence's last row holds its next token, other rows −1.
    fn forward_hidden(&self, input: &ForwardInput, kv: &mut KvCache) -> Result<Tensor, ModelError> {
        let ids = input.input_ids.as_u32_slice()?;
        let positions = input.positions.as_u32_slice()?;
        let meta = &input.attn;
        let cu = meta.cu_seqlens_q.as_u32_slice()?;
        let context_lens = meta.context_lens.as_u32_slice()?;
        let slots = meta.slot_mapping.as_i64_slice()?;
        let (num_seqs, max_blocks) = meta.block_tables.dims2()?;
        let tables = meta.block_tables.as_u32_slice()?;
        let bs = kv.block_size;
        if num_seqs != meta.num_seqs || cu.len() != num_seqs + 1 || cu[0] != 0 {
            return Err(bad(format!("bad cu_seqlens_q {cu:?} for {num_seqs} seqs")));
        }
        if cu[num_seqs] as usize != ids.len() || positions.len() != ids.len() {
            return Err(bad("packed lengths disagree".into()));
        }
        let cache = kv.layers[0].k.as_f32_slice_mut()?;
        for (r, (&id, &slot)) in ids.iter().zip(slots).enumerate() {
            if slot < 0 || slot as usize >= kv.num_blocks * bs {
                return Err(bad(format!("row {r}: slot {slot} out of range")));
            }
            cache[slot as usize * 2] = id as f32;
            cache[slot as usize * 2 + 1] = positions[r] as f32;
        }
        let mut max_q = 0;
        let mut max_ctx = 0;
        let mut next = Vec::with_capacity(num_seqs);
        for i in 0..num_seqs {
            let (a, b) = (cu[i] as usize, cu[i + 1] as usize);
            let ctx = context_lens[i] as usize;
            max_q = max_q.max(b - a);
            max_ctx = max_ctx.max(ctx);
            if !meta.is_prefill && b - a != 1 {
                return Err(bad(format!("decode seq {i} has {} tokens", b - a)));
            }
            for (k, r) in (a..b).enumerate() {
                if positions[r] as usize != ctx - (b - a) + k {
                    return Err(bad(format!("seq {i} row {r}: position {}", positions[r])));
                }
            }
            let mut context = Vec::with_capacity(ctx);
            for p in 0..ctx {
                let block = p / bs;
                if block >= max_blocks {
                    return Err(bad(format!("seq {i}: block table too short for {ctx}")));
                }
                let slot = tables[i * max_blocks + block] as usize * bs + p % bs;
                if cache[slot * 2 + 1] as usize != p {
                    return Err(bad(format!(
                        "seq {i}: cache slot {slot} holds position {} where {p} belongs",
                        cache[slot * 2 + 1]
                    )));
                }
                context.push(cache[slot * 2] as u32);
            }
            let poisoned = self.poison.is_some() && context.first() == self.poison.as_ref();
            let next_token = if poisoned {
                f32::NAN
            } else {
                toy_next_token(&context) as f32
            };
            next.push((b - 1, next_token));
        }
        if meta.max_seqlen_q != max_q || meta.max_context_len != max_ctx {
            return Err(bad("max_seqlen_q / max_context_len wrong".into()));
        }
        let mut hidden = vec![-1.0f32; ids.len()];
        for (last, tok) in next {
            hidden[last] = tok;
        }
        Ok(Tensor::from_f32(hidden, &[ids.len(), 1])?)
    }

    fn compute_logits(
        &self,
        hidden: &Tensor,
        logits_indices: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let hidden = hidden.as_f32_slice()?;
        let rows = logits_indices.as_u32_slice()?;
        let mut logits = vec![0.0f32; rows.len() * TOY_VOCAB];
        for (j, &row) in rows.iter().enumerate() {
            let tok = hidden.get(row as usize).copied().unwrap_or(-1.0);
            let out = &mut logits[j * TOY_VOCAB..(j + 1) * TOY_VOCAB];
            if tok.is_nan() {
                out.fill(f32::NAN); // a poisoned sequence
                continue;
            }
            if tok < 0.0 {
                return Err(bad(format!("logits row {row} is no sequence's last row")));
            }
            out[tok as usize] = 1.0;
        }
        self.logit_rows.fetch_add(rows.len(), Ordering::Relaxed);
        Ok(Tensor::from_f32(logits, &[rows.len(), TOY_VOCAB])?)
    }
}
