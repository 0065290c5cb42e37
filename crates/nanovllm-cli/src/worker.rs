//! `nanovllm worker`: a tensor-parallel rank other than 0 (see `nanovllm_core::tp`).
//!
//! `--rank R` runs one rank; the engine starts these for its own node. On the
//! other nodes of a multi-host group, `--nnodes N --node-rank K
//! --tensor-parallel-size T` starts that node's `T / N` ranks, each in its
//! own process, and waits for them.

use nanovllm_core::tp::{run_node, run_worker, NodeOptions, WorkerOptions};

use crate::args::WorkerArgs;

/// `Ok(true)` when the rank(s) ran until rank 0 shut them down.
pub fn run(args: WorkerArgs) -> anyhow::Result<bool> {
    if let Some(rank) = args.rank {
        run_worker(&WorkerOptions {
            rank,
            dist_init_addr: args.dist_init_addr,
            timeout_secs: args.timeout_secs,
        })?;
        return Ok(true);
    }
    let (Some(node_rank), Some(tensor_parallel_size)) = (args.node_rank, args.tensor_parallel_size)
    else {
        anyhow::bail!(
            "nanovllm worker needs --rank R (one rank), or --node-rank K with \
             --tensor-parallel-size T and --nnodes N (every rank of node K)"
        );
    };
    let exe = std::env::current_exe()?;
    run_node(
        &exe,
        &NodeOptions {
            tensor_parallel_size,
            nnodes: args.nnodes,
            node_rank,
            dist_init_addr: args.dist_init_addr,
            timeout_secs: args.timeout_secs,
        },
    )?;
    Ok(true)
}
