//! Token embedding and the LM head, vocab-parallel.
//!
//! [`ParallelLmHead`] holds `ceil(vocab / world)` rows per rank (zero-padded,
//! see [`crate::loader`]), computes its slice of the logits, all-gathers them
//! in rank order and drops the padding columns, so every rank returns
//! `[R, vocab]`.
//!
//! [`VocabParallelEmbedding`] keeps the whole table on every rank for now:
//! a sharded lookup needs a masked-embedding op (ids outside this rank's rows
//! give zeros) followed by an all-reduce, and the backend op set has no masked
//! lookup yet. That is the hook for a sharded table; the math is the same.
//!
//! Tied embeddings share one buffer: with one rank the LM head's weight is the
//! embedding table itself (an `Arc`), never a copy.

use std::sync::Arc;

use nanovllm_kernels::{Backend, Communicator, Tensor};

use crate::error::ModelError;
use crate::loader::WeightLoader;

#[derive(Debug)]
pub struct VocabParallelEmbedding {
    /// `[vocab, hidden]`, the whole table (see the module docs).
    table: Arc<Tensor>,
    /// Name of the table in the checkpoint (a tied LM head loads its shard from it).
    name: String,
}

impl VocabParallelEmbedding {
    pub fn load(
        loader: &WeightLoader,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            table: Arc::new(loader.full(name, &[vocab, hidden])?),
            name: name.to_owned(),
        })
    }
    /// `ids: U32 [T]` → `[T, hidden]`; an id ≥ vocab is an error.
    pub fn forward(&self, backend: &dyn Backend, ids: &Tensor) -> Result<Tensor, ModelError> {
        Ok(backend.embedding(ids, &self.table)?)
    }
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
    /// An untied head: this rank's vocab rows of `name: [vocab, hidden]`.
    pub fn load(
        loader: &WeightLoader,
        name: &str,
        vocab: usize,
        hidden: usize,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: Arc::new(loader.vocab_shard(name, vocab, hidden)?),
            vocab_size: vocab,
            comm,
        })
    }

    /// A head tied to `embedding`: shares its buffer with one rank, else loads this
    /// rank's vocab rows of the embedding table.
    pub fn tied(
        embedding: &VocabParallelEmbedding,
        loader: &WeightLoader,
        vocab: usize,
        hidden: usize,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self, ModelError> {
        if loader.shard().world_size == 1 {
            return Ok(Self {
                weight: Arc::clone(&embedding.table),
                vocab_size: vocab,
                comm,
            });
        }
        Self::load(loader, &embedding.name, vocab, hidden, comm)
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
