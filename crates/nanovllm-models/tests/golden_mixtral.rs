//! Golden tests: Mixtral on the CPU backend against transformers' f32 outputs
//! (`fixtures/mixtral-tiny*/reference.json`, see `fixtures/README.md`).
//!
//! Tolerances (bf16 weights widen exactly to f32 and the reference computes in f32, so
//! both fixtures get the same ones):
//! - logits: **1e-4 absolute**; greedy continuations token for token (the references'
//!   smallest top-1/top-2 margin is 5.9e-3, far above it);
//! - layer 0's MoE block (`routing`): router logits 1e-5, expert ids exact (the smallest
//!   gap between the k-th and (k+1)-th router probability is 0.02), weights 1e-6 and
//!   summing to 1 within 1e-6, block output 1e-4 (values up to ~28, f32 rounding ~3e-6).

mod common;

use std::sync::Arc;

use common::golden::*;
use common::{cpu_context, fixture_dir, max_abs_diff, BlockPool};
use nanovllm_kernels::{Communicator, KernelError, Tensor, TopKWeights};
use nanovllm_models::layers::{ExpertNames, SparseMoeBlock};
use nanovllm_models::{SafetensorsSource, ShardSpec, WeightLoader};

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["mixtral-tiny", "mixtral-tiny-bf16"];

#[test]
fn fixtures_are_mixtral() {
    for name in FIXTURES {
        assert_eq!(golden(name).config.architecture, "MixtralForCausalLM");
    }
}

// Packed prefill matters most here: the MoE groups tokens of different sequences by
// expert, which must not mix their results.
golden_scenarios!(FIXTURES, TOL);

/// Every case decoded greedily on its own, step by step across block boundaries
/// (single-token decode: each step routes one token to its top-2 experts only).
#[test]
fn greedy_decode_of_each_case_matches_reference() {
    for name in FIXTURES {
        check_greedy_alone(name, None, |blocks| BlockPool::shuffled(blocks, 13));
    }
}

/// Layer 0's MoE block loaded alone (rank `rank` of `world_size`) from the fixture.
fn layer0_moe(g: &Golden, shard: ShardSpec, comm: Arc<dyn Communicator>) -> SparseMoeBlock {
    let source = SafetensorsSource::open(&fixture_dir(g.name)).unwrap();
    let backend = backend();
    let loader = WeightLoader::new(&source, backend.as_ref(), shard);
    SparseMoeBlock::load(
        &loader,
        "model.layers.0.block_sparse_moe",
        ExpertNames::MIXTRAL,
        &g.config,
        TopKWeights::Renormalized,
        comm,
    )
    .unwrap()
}

/// The routing reference's `hidden_states` as an activation tensor.
fn routing_input(g: &Golden) -> (Tensor, usize) {
    let r = &g.reference["routing"];
    let x = matrix(&r["hidden_states"]);
    let tokens = r["hidden_states"].as_array().unwrap().len();
    let t = Tensor::from_f32(x, &[tokens, g.config.hidden_size]).unwrap();
    (backend().upload(t).unwrap(), tokens)
}

#[test]
fn layer0_routing_and_moe_output_match_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let r = &g.reference["routing"];
        let moe = layer0_moe(&g, ShardSpec::default(), cpu_context().comm);
        let (x, tokens) = routing_input(&g);
        let k = g.config.num_experts_per_tok;

        let logits = moe.router_logits(backend.as_ref(), &x).unwrap();
        let logits_host = backend.to_host(&logits).unwrap().to_vec_f32().unwrap();
        let diff = max_abs_diff(&logits_host, &matrix(&r["router_logits"]));
        assert!(diff <= 1e-5, "{name}: router logits off by {diff:e}");

        let (topk_ids, topk_weights) = backend
            .moe_route(&logits, k, TopKWeights::Renormalized)
            .unwrap();
        let got_ids = backend.to_host(&topk_ids).unwrap();
        let want_ids: Vec<u32> = r["topk_ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(ids)
            .collect();
        assert_eq!(
            got_ids.as_u32_slice().unwrap(),
            want_ids,
            "{name}: expert ids"
        );
        let got_weights = backend
            .to_host(&topk_weights)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let want_weights = matrix(&r["topk_weights"]);
        let diff = max_abs_diff(&got_weights, &want_weights);
        assert!(diff <= 1e-6, "{name}: routing weights off by {diff:e}");
        for (row, want) in got_weights
            .chunks_exact(k)
            .zip(want_weights.chunks_exact(k))
        {
            let (sum, want_sum) = (row.iter().sum::<f32>(), want.iter().sum::<f32>());
            assert!(
                (sum - 1.0).abs() <= 1e-6,
                "{name}: weights {row:?} sum to {sum}"
            );
            assert!(
                (want_sum - 1.0).abs() <= 1e-6,
                "{name}: reference sums to {want_sum}"
            );
        }

        let out = moe.forward(backend.as_ref(), &x).unwrap();
        assert_eq!(out.shape(), &[tokens, g.config.hidden_size]);
        let out = backend.to_host(&out).unwrap().to_vec_f32().unwrap();
        let diff = max_abs_diff(&out, &matrix(&r["moe_output"]));
        assert!(diff <= 1e-4, "{name}: MoE output off by {diff:e}");
    }
}

/// A communicator that claims a place in a group of `world_size` but does not reduce, so
/// each rank's MoE block returns its partial sum.
#[derive(Debug)]
struct PartialSums {
    rank: usize,
    world_size: usize,
}

impl Communicator for PartialSums {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_reduce_sum(&self, _x: &mut Tensor) -> Result<(), KernelError> {
        Ok(())
    }
    fn all_gather_last_dim(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        Ok(x.clone())
    }
    fn broadcast(&self, _x: &mut Tensor, _root: usize) -> Result<(), KernelError> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), KernelError> {
        Ok(())
    }
}

/// Tensor parallelism splits every expert's intermediate features: each rank holds all
/// experts, routes identically, and the ranks' partial outputs sum to the full block's
/// (the reference, within the same 1e-4).
#[test]
fn tensor_parallel_expert_shards_sum_to_the_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let (x, _) = routing_input(&g);
        let want = matrix(&g.reference["routing"]["moe_output"]);
        for world_size in [2, 4] {
            let mut sum = vec![0f32; want.len()];
            for rank in 0..world_size {
                let shard = ShardSpec { rank, world_size };
                let moe = layer0_moe(&g, shard, Arc::new(PartialSums { rank, world_size }));
                let inter = g.config.intermediate_size / world_size;
                assert_eq!(
                    moe.w13().shape()[1],
                    2 * inter,
                    "{name}: w13 rows per expert"
                );
                assert_eq!(moe.w2().shape()[2], inter, "{name}: w2 columns per expert");
                let part = moe.forward(backend.as_ref(), &x).unwrap();
                let part = backend.to_host(&part).unwrap().to_vec_f32().unwrap();
                for (s, p) in sum.iter_mut().zip(part) {
                    *s += p;
                }
            }
            let diff = max_abs_diff(&sum, &want);
            assert!(
                diff <= 1e-4,
                "{name} world {world_size}: partial sums off by {diff:e}"
            );
        }
    }
}
