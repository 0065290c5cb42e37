//! [`TpConfig`]: how the ranks of a tensor-parallel engine are run and find each other.
//!
//! Lives in [`crate::EngineConfig::tp`] (TOML table `[tp]`); the CLI sets it from
//! `--tp-mode`, `--dist-init-addr`, `--nnodes` and `--node-rank`. Only read when
//! `tensor_parallel_size > 1`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::DeviceKind;
use crate::error::{EngineError, Result};

/// The seed's rendezvous address.
pub const DEFAULT_DIST_INIT_ADDR: &str = "127.0.0.1:2333";

/// How the ranks run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TpMode {
    /// Threads on the CPU; processes (one per GPU, NCCL) on CUDA.
    #[default]
    Auto,
    /// One thread per rank in this process, shared-memory collectives (CPU).
    Threads,
    /// One process per rank (this binary re-executed as `nanovllm worker`), a TCP
    /// rendezvous at `dist_init_addr`; collectives over TCP on the CPU, NCCL on CUDA.
    Processes,
}

impl TpMode {
    /// `Auto` resolved for `device`.
    pub fn resolve(self, device: DeviceKind) -> TpMode {
        match (self, device) {
            (TpMode::Auto, DeviceKind::Cuda) => TpMode::Processes,
            (TpMode::Auto, _) => TpMode::Threads,
            (mode, _) => mode,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TpConfig {
    pub mode: TpMode,
    /// `host:port` where rank 0 listens and the other ranks connect (processes mode).
    /// Port 0 lets the OS pick one (single host only: remote ranks cannot know it).
    pub dist_init_addr: String,
    /// Hosts taking part; each runs `tensor_parallel_size / nnodes` ranks.
    pub nnodes: usize,
    /// This host's index; node 0 runs rank 0 (the engine) and its local workers.
    pub node_rank: usize,
    /// The binary started for local worker ranks; default: this executable.
    pub worker_exe: Option<PathBuf>,
    /// Seconds a rank waits for its peers (rendezvous, one collective, one step) before
    /// the engine fails with an error naming the silent rank.
    pub timeout_secs: u64,
}

impl Default for TpConfig {
    fn default() -> Self {
        Self {
            mode: TpMode::Auto,
            dist_init_addr: DEFAULT_DIST_INIT_ADDR.into(),
            nnodes: 1,
            node_rank: 0,
            worker_exe: None,
            timeout_secs: 600,
        }
    }
}

impl TpConfig {
    /// Checks the fields against `tensor_parallel_size`.
    pub fn validate(&self, tensor_parallel_size: usize) -> Result<()> {
        let bad = |field: &'static str, value: String, expected: &'static str| {
            Err(EngineError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if tensor_parallel_size.checked_rem(self.nnodes) != Some(0) {
            return bad(
                "tp.nnodes",
                self.nnodes.to_string(),
                "an integer >= 1 that divides tensor_parallel_size",
            );
        }
        if self.node_rank >= self.nnodes {
            return bad(
                "tp.node_rank",
                self.node_rank.to_string(),
                "an integer in 0..nnodes",
            );
        }
        if self.timeout_secs == 0 {
            return bad("tp.timeout_secs", "0".into(), "an integer >= 1");
        }
        if self.nnodes > 1 && self.mode == TpMode::Threads {
            return bad(
                "tp.mode",
                "threads".into(),
                "processes (or auto) when nnodes > 1: threads cannot span hosts",
            );
        }
        Ok(())
    }

    /// Ranks each host runs.
    pub fn ranks_per_node(&self, tensor_parallel_size: usize) -> usize {
        tensor_parallel_size / self.nnodes.max(1)
    }

    /// The collective / rendezvous timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_threads_on_cpu_and_processes_on_cuda() {
        assert_eq!(TpMode::Auto.resolve(DeviceKind::Cpu), TpMode::Threads);
        assert_eq!(TpMode::Auto.resolve(DeviceKind::Auto), TpMode::Threads);
        assert_eq!(TpMode::Auto.resolve(DeviceKind::Cuda), TpMode::Processes);
        assert_eq!(
            TpMode::Processes.resolve(DeviceKind::Cpu),
            TpMode::Processes
        );
    }

    #[test]
    fn validate_checks_nodes_against_the_world() {
        let tp = TpConfig::default();
        tp.validate(4).unwrap();
        let two = TpConfig {
            nnodes: 2,
            node_rank: 1,
            ..TpConfig::default()
        };
        two.validate(4).unwrap();
        assert_eq!(two.ranks_per_node(4), 2);
        let field = |c: TpConfig, tp: usize| match c.validate(tp) {
            Err(EngineError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(
            field(
                TpConfig {
                    nnodes: 3,
                    ..two.clone()
                },
                4
            ),
            "tp.nnodes"
        );
        assert_eq!(
            field(
                TpConfig {
                    node_rank: 2,
                    ..two.clone()
                },
                4
            ),
            "tp.node_rank"
        );
        assert_eq!(
            field(
                TpConfig {
                    mode: TpMode::Threads,
                    ..two.clone()
                },
                4
            ),
            "tp.mode"
        );
        assert_eq!(
            field(
                TpConfig {
                    timeout_secs: 0,
                    ..two
                },
                4
            ),
            "tp.timeout_secs"
        );
    }
}
