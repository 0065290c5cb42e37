//! Token embedding and the LM head, vocab-parallel.
//!
//! Both hold `ceil(vocab / world)` rows per rank: rank `r` owns vocabulary
//! rows `r * per .. min((r + 1) * per, vocab)`, zero-padded (see
//! [`crate::loader`]). With one rank that is the whole table.
//!
//! [`VocabParallelEmbedding`] looks up the ids this rank owns and gives zero
//! rows for the others ([`Backend::embedding_shard`]); the all-reduce that
//! follows sums the shards, so every rank ends with every token's row. With
//! one rank it is the plain lookup, whose bounds check turns an id ≥ vocab into
//! an error; with several ranks ids are checked on the host when they live
//! there (the engine validates every prompt id against the vocab before it
//! schedules it, so device ids are in range).
//!
//! [`ParallelLmHead`] computes its slice of the logits, all-gathers them in
//! rank order and drops the padding columns, so every rank returns
//! `[R, vocab]`.
//!
//! A tied LM head shares the embedding's buffer at every world size (both
//! are the same vocab shard), never a copy, unless the LM head is quantized
//! ([`crate::WeightQuantization::lm_head`]): it then holds its own quantized copy of the
//! table, and the embedding stays as stored.

use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator, KernelError, Tensor};

use crate::error::ModelError;
use crate::loader::WeightLoader;

#[derive(Debug)]
pub struct VocabParallelEmbedding {
    /// `[vocab_per_rank, hidden]`: this rank's rows, zero-padded (one rank: the whole table).
    table: Arc<Tensor>,
    /// The first vocabulary row this rank holds.
    vocab_start: usize,
    vocab_size: usize,
    comm: Arc<dyn Communicator>,
}

impl VocabParallelEmbedding {
    pub fn load(
        loader: &WeightLoader,
        name: &str,
        vocab: usize,
        hidden: usize,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        let shard = loader.shard();
        let table = if shard.world_size == 1 {
            loader.full(name, &[vocab, hidden])?
        } else {
            loader.vocab_shard(name, vocab, hidden)?
        };
        Ok(Self {
            table: Arc::new(table),
            vocab_start: shard.vocab_range(vocab).start,
            vocab_size: vocab,
            comm,
        })
    }

    /// `ids: U32 [T]` → `[T, hidden]` on every rank; an id ≥ vocab is an error (see the
    /// module docs for device ids under tensor parallelism).
    pub fn forward(&self, backend: &dyn Backend, ids: &Tensor) -> Result<Tensor, ModelError> {
        if self.comm.world_size() == 1 {
            return Ok(backend.embedding(ids, &self.table)?);
        }
        if ids.is_cpu() {
            if let Some(&id) = ids
                .as_u32_slice()?
                .iter()
                .find(|&&id| id as usize >= self.vocab_size)
            {
                return Err(KernelError::IndexOutOfRange {
                    op: "embedding",
                    index: id as usize,
                    size: self.vocab_size,
                }
                .into());
            }
        }
        let mut rows = backend.embedding_shard(ids, &self.table, self.vocab_start)?;
        self.comm.all_reduce_sum(&mut rows)?;
        Ok(rows)
    }

    /// This rank's rows of the table (the whole table with one rank).
    pub fn table(&self) -> &Arc<Tensor> {
        &self.table
    }
}

#[derive(Debug)]
pub struct ParallelLmHead {
    /// `[vocab_per_rank, hidden]`: this rank's rows, zero-padded.
    weight: Arc<Tensor>,
    vocab_size: usize,
    comm: Arc<dyn Communicator>,
}

impl ParallelLmHead {
    /// An untied head, or a tied head's quantized copy of the embedding table: this rank's
    /// vocab rows of `name: [vocab, hidden]`, quantized when the loader quantizes the LM
    /// head ([`WeightLoader::lm_head`]).
    pub fn load(
        loader: &WeightLoader,
        name: &str,
        vocab: usize,
        hidden: usize,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: Arc::new(loader.lm_head().vocab_shard(name, vocab, hidden)?),
            vocab_size: vocab,
            comm,
        })
    }

    /// A head tied to `embedding`: shares its buffer (the same vocab shard).
    pub fn tied(
        embedding: &VocabParallelEmbedding,
        vocab: usize,
        comm: Arc<dyn Communicator>,
    ) -> Self {
        Self {
            weight: Arc::clone(&embedding.table),
            vocab_size: vocab,
            comm,
        }
    }

    /// `x: [R, hidden]` → logits `[R, vocab]` (gathered across ranks).
    pub fn forward(&self, backend: &dyn Backend, x: &Tensor) -> Result<Tensor, ModelError> {
        let local = backend.matmul(x, &self.weight)?;
        if self.comm.world_size() == 1 {
            return Ok(local);
        }
        let gathered = self.comm.all_gather_last_dim(&local)?;
        let (_, padded) = gathered.dims2()?;
        if padded == self.vocab_size {
            return Ok(gathered);
        }
        let pad = padded.checked_sub(self.vocab_size).ok_or_else(|| {
            ModelError::Shard(format!(
                "gathered logits have {padded} columns, fewer than the vocab size {}",
                self.vocab_size
            ))
        })?;
        let mut parts = backend.split_last_dim(&gathered, &[self.vocab_size, pad])?;
        parts.truncate(1);
        parts
            .pop()
            .ok_or_else(|| ModelError::Shard("split_last_dim returned nothing".into()))
    }

    pub fn weight(&self) -> &Arc<Tensor> {
        &self.weight
    }
}
