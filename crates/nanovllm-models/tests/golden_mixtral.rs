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

use common::*;
use nanovllm_kernels::{Backend, Communicator, KernelError, Tensor};
use nanovllm_models::layers::SparseMoeBlock;
use nanovllm_models::{Model, ModelConfig, SafetensorsSource, ShardSpec, WeightLoader};
use serde_json::Value;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 2] = ["mixtral-tiny", "mixtral-tiny-bf16"];

struct Case {
    name: String,
    prompt: Vec<u32>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
}

struct Golden {
    name: &'static str,
    config: ModelConfig,
    model: Box<dyn Model>,
    block_size: usize,
    cases: Vec<Case>,
    reference: Value,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A `[[…], […]]` matrix, flattened row-major.
fn matrix(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().flat_map(floats).collect()
}

fn golden(name: &'static str) -> Golden {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (see fixtures/README.md)", path.display()));
    let reference: Value = serde_json::from_str(&text).unwrap();
    let cases = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_owned(),
            prompt: ids(&c["prompt_token_ids"]),
            last_logits: floats(&c["last_logits"]),
            greedy: ids(&c["greedy_token_ids"]),
        })
        .collect();
    let (config, model) = load_fixture(name);
    assert_eq!(config.architecture, "MixtralForCausalLM");
    Golden {
        name,
        config,
        model,
        block_size: reference["block_size_for_tests"].as_u64().unwrap() as usize,
        cases,
        reference,
    }
}

fn check_logits(g: &Golden, case: &Case, logits: &[f32], what: &str) {
    assert_eq!(
        logits.len(),
        g.config.vocab_size,
        "{} {}",
        g.name,
        case.name
    );
    let diff = max_abs_diff(logits, &case.last_logits);
    assert!(
        diff <= TOL,
        "{} {} ({what}): max |logit - reference| = {diff:e} > {TOL:e}",
        g.name,
        case.name
    );
    assert_eq!(
        argmax(logits),
        argmax(&case.last_logits),
        "{} {} ({what}): argmax",
        g.name,
        case.name
    );
}

fn blocks_for(g: &Golden, tokens: usize) -> usize {
    tokens.div_ceil(g.block_size)
}

/// Blocks for every case's prompt plus its greedy continuation.
fn pool_size(g: &Golden) -> usize {
    g.cases
        .iter()
        .map(|c| blocks_for(g, c.prompt.len() + c.greedy.len()))
        .sum()
}

fn backend() -> Arc<dyn Backend> {
    cpu_context().backend
}

#[test]
fn prefill_each_case_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        for case in &g.cases {
            let blocks = blocks_for(&g, case.prompt.len());
            let mut cache = new_cache(backend.as_ref(), g.model.as_ref(), blocks, g.block_size);
            let table = BlockPool::identity(blocks).take(blocks);
            let logits = run_step(
                g.model.as_ref(),
                backend.as_ref(),
                &mut cache,
                g.block_size,
                true,
                &[SeqStep {
                    block_table: &table,
                    num_cached: 0,
                    new_tokens: &case.prompt,
                }],
            );
            check_logits(&g, case, &logits[0], "single prefill");
        }
    }
}

/// All prompts in one packed prefill over shuffled blocks: the MoE groups tokens of
/// different sequences by expert, which must not mix their results.
#[test]
fn packed_prefill_with_shuffled_block_tables_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let num_blocks = pool_size(&g) + 3;
        let mut pool = BlockPool::shuffled(num_blocks, 0x5eed);
        let mut cache = new_cache(backend.as_ref(), g.model.as_ref(), num_blocks, g.block_size);
        let tables: Vec<Vec<u32>> = g
            .cases
            .iter()
            .map(|c| pool.take(blocks_for(&g, c.prompt.len())))
            .collect();
        let steps: Vec<SeqStep> = g
            .cases
            .iter()
            .zip(&tables)
            .map(|(c, t)| SeqStep {
                block_table: t,
                num_cached: 0,
                new_tokens: &c.prompt,
            })
            .collect();
        let logits = run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            true,
            &steps,
        );
        for (case, row) in g.cases.iter().zip(&logits) {
            check_logits(&g, case, row, "packed prefill, shuffled blocks");
        }
    }
}

/// Prefill every prompt but its last token (packed), then one batched decode step.
#[test]
fn decode_step_after_prefill_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let num_blocks = pool_size(&g);
        let mut pool = BlockPool::shuffled(num_blocks, 7);
        let mut cache = new_cache(backend.as_ref(), g.model.as_ref(), num_blocks, g.block_size);
        let tables: Vec<Vec<u32>> = g
            .cases
            .iter()
            .map(|c| pool.take(blocks_for(&g, c.prompt.len())))
            .collect();
        let prefill: Vec<SeqStep> = g
            .cases
            .iter()
            .zip(&tables)
            .filter(|(c, _)| c.prompt.len() > 1)
            .map(|(c, t)| SeqStep {
                block_table: t,
                num_cached: 0,
                new_tokens: &c.prompt[..c.prompt.len() - 1],
            })
            .collect();
        run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            true,
            &prefill,
        );
        let decode: Vec<SeqStep> = g
            .cases
            .iter()
            .zip(&tables)
            .map(|(c, t)| SeqStep {
                block_table: t,
                num_cached: c.prompt.len() - 1,
                new_tokens: &c.prompt[c.prompt.len() - 1..],
            })
            .collect();
        let logits = run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            false,
            &decode,
        );
        for (case, row) in g.cases.iter().zip(&logits) {
            check_logits(&g, case, row, "decode after prefill");
        }
    }
}

/// `shared_b` reuses the two full blocks `shared_a` computed and prefills only the rest.
#[test]
fn prefill_over_a_cached_prefix_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let find = |n: &str| g.cases.iter().find(|c| c.name == n).unwrap();
        let (a, b) = (find("shared_a"), find("shared_b"));
        let shared = 2 * g.block_size;
        assert_eq!(
            a.prompt[..shared],
            b.prompt[..shared],
            "fixture: shared prefix"
        );
        let num_blocks = blocks_for(&g, a.prompt.len()) + blocks_for(&g, b.prompt.len());
        let mut pool = BlockPool::shuffled(num_blocks, 11);
        let mut cache = new_cache(backend.as_ref(), g.model.as_ref(), num_blocks, g.block_size);
        let table_a = pool.take(blocks_for(&g, a.prompt.len()));
        let step = |cache: &mut _, table: &[u32], cached: usize, tokens: &[u32]| {
            run_step(
                g.model.as_ref(),
                backend.as_ref(),
                cache,
                g.block_size,
                true,
                &[SeqStep {
                    block_table: table,
                    num_cached: cached,
                    new_tokens: tokens,
                }],
            )
        };
        let logits_a = step(&mut cache, &table_a, 0, &a.prompt);
        check_logits(&g, a, &logits_a[0], "prefix owner");
        let mut table_b = table_a[..2].to_vec();
        table_b.extend(pool.take(blocks_for(&g, b.prompt.len()) - 2));
        let logits_b = step(&mut cache, &table_b, shared, &b.prompt[shared..]);
        check_logits(&g, b, &logits_b[0], "prefill over cached prefix");
    }
}

/// Every case decoded greedily on its own, step by step across block boundaries
/// (single-token decode: each step routes one token to its top-2 experts only).
#[test]
fn greedy_decode_of_each_case_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        for case in &g.cases {
            let total = case.prompt.len() + case.greedy.len();
            let blocks = blocks_for(&g, total);
            let mut cache = new_cache(backend.as_ref(), g.model.as_ref(), blocks, g.block_size);
            let table = BlockPool::shuffled(blocks, 13).take(blocks);
            let mut tokens = case.prompt.clone();
            let mut num_cached = 0;
            let mut generated = Vec::new();
            while generated.len() < case.greedy.len() {
                let logits = run_step(
                    g.model.as_ref(),
                    backend.as_ref(),
                    &mut cache,
                    g.block_size,
                    num_cached == 0,
                    &[SeqStep {
                        block_table: &table,
                        num_cached,
                        new_tokens: &tokens[num_cached..],
                    }],
                );
                num_cached = tokens.len();
                let next = argmax(&logits[0]);
                generated.push(next);
                tokens.push(next);
            }
            assert_eq!(
                generated, case.greedy,
                "{} {}: greedy tokens",
                g.name, case.name
            );
        }
    }
}

/// All cases decoded greedily together: a packed prefill, then batched decode steps.
#[test]
fn batched_greedy_decode_of_all_cases_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let num_blocks = pool_size(&g);
        let mut pool = BlockPool::shuffled(num_blocks, 3);
        let mut cache = new_cache(backend.as_ref(), g.model.as_ref(), num_blocks, g.block_size);
        let tables: Vec<Vec<u32>> = g
            .cases
            .iter()
            .map(|c| pool.take(blocks_for(&g, c.prompt.len() + c.greedy.len())))
            .collect();
        let mut tokens: Vec<Vec<u32>> = g.cases.iter().map(|c| c.prompt.clone()).collect();
        let mut num_cached = vec![0usize; tokens.len()];
        let steps_wanted = g.cases.iter().map(|c| c.greedy.len()).min().unwrap();
        for step in 0..=steps_wanted {
            let seqs: Vec<SeqStep> = tokens
                .iter()
                .zip(&tables)
                .zip(&num_cached)
                .map(|((t, b), &cached)| SeqStep {
                    block_table: b,
                    num_cached: cached,
                    new_tokens: &t[cached..],
                })
                .collect();
            let logits = run_step(
                g.model.as_ref(),
                backend.as_ref(),
                &mut cache,
                g.block_size,
                step == 0,
                &seqs,
            );
            if step == steps_wanted {
                break;
            }
            for ((t, cached), row) in tokens.iter_mut().zip(&mut num_cached).zip(&logits) {
                *cached = t.len();
                t.push(argmax(row));
            }
        }
        for (case, t) in g.cases.iter().zip(&tokens) {
            assert_eq!(
                &t[case.prompt.len()..],
                &case.greedy[..steps_wanted],
                "{} {}: batched greedy tokens",
                g.name,
                case.name
            );
        }
    }
}

/// Layer 0's MoE block loaded alone (rank `rank` of `world_size`) from the fixture.
fn layer0_moe(g: &Golden, shard: ShardSpec, comm: Arc<dyn Communicator>) -> SparseMoeBlock {
    let source = SafetensorsSource::open(&fixture_dir(g.name)).unwrap();
    let backend = backend();
    let loader = WeightLoader::new(&source, backend.as_ref(), shard);
    SparseMoeBlock::load(&loader, "model.layers.0.block_sparse_moe", &g.config, comm).unwrap()
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

        let (topk_ids, topk_weights) = backend.moe_route(&logits, k).unwrap();
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
