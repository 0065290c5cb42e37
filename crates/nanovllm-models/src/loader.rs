//! Weight loading: safetensors through mmap (single file or sharded with
//! `model.safetensors.index.json`), or dummy random weights of the config's
//! shapes. Tensor-parallel slicing happens here, at load time.

/// Where weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadFormat {
    /// The model directory's `*.safetensors`.
    #[default]
    Safetensors,
    /// Random weights of the config's shapes, no checkpoint read (benchmarks).
    Dummy,
}

/// This process's place in a tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub rank: usize,
    pub world_size: usize,
}

impl Default for ShardSpec {
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
        }
    }
}
