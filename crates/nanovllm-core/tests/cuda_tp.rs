//! Tensor parallelism's process path on a GPU. NCCL cannot run two ranks on one GPU, so
//! a single-GPU machine checks that NCCL with world size 1 runs end to end through the
//! same code (rendezvous, NCCL unique id, `NcclCommunicator` in every all-reduce and
//! all-gather): its greedy tokens must equal the plain engine's on the same GPU exactly
//! (an NCCL sum over one rank is a copy, so nothing else changes). More than one GPU is not
//! covered here (see the README).
//!
//! Without a GPU the test prints `skipped: <test>: <reason>` and passes, unless
//! `NANOVLLM_REQUIRE_GPU=1` (set by `cargo xtask gpu-check`), which makes the skip a failure.
//! Fixtures are found under `NANOVLLM_REPO_ROOT` when set, else relative to this crate.
//! (Named `cuda_*` so that `cargo xtask gpu-check` bundles it.)
#![cfg(feature = "cuda")]

mod common;

use nanovllm_core::tp::TpMode;
use nanovllm_core::{DeviceKind, EngineConfig, SamplingParams, LLM};

use common::bundle_root;
use nanovllm_kernels::testing::gpu::gpu_or_skip;

#[test]
fn nccl_world_size_1_matches_the_plain_engine_on_one_gpu() {
    if !gpu_or_skip() {
        return;
    }
    let prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4, 5], vec![9; 20], vec![7]];
    for name in ["qwen3-tiny", "mixtral-tiny"] {
        let run = |mode: TpMode| {
            let mut c = EngineConfig::new(bundle_root().join("fixtures").join(name));
            c.device = DeviceKind::Cuda;
            c.kvcache_block_size = 16;
            c.num_kvcache_blocks = Some(64);
            c.enforce_eager = true;
            c.tp.mode = mode;
            c.tp.dist_init_addr = "127.0.0.1:0".into();
            let mut llm = LLM::new(c).unwrap();
            let params = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(16)
            };
            llm.generate(prompts.clone(), params)
                .unwrap()
                .into_iter()
                .map(|o| o.token_ids)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            run(TpMode::Processes),
            run(TpMode::Auto),
            "{name}: NCCL world size 1 vs no communicator"
        );
    }
}
