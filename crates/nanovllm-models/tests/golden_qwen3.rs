//! Golden tests: Qwen3 on the CPU backend against transformers' f32 outputs
//! (`fixtures/<name>/reference.json`, see `fixtures/README.md`).
//!
//! Tolerance: **1e-4 absolute** on logits, for f32 and bf16 checkpoints alike
//! (bf16 weights widen exactly to f32 and the reference computes in f32).
//! Greedy continuations must match token for token: the reference's smallest
//! top-1/top-2 margin is > 1e-3, ten times the tolerance.

mod common;

use common::*;
use nanovllm_kernels::Backend;
use nanovllm_models::{Model, ModelConfig};
use serde_json::Value;

const TOL: f32 = 1e-4;
const FIXTURES: [&str; 3] = ["qwen3-tiny", "qwen3-tiny-bf16", "qwen3-tiny-fullvocab"];

struct Case {
    name: String,
    prompt: Vec<u32>,
    /// The whole last-position logits row (absent for the full-vocab fixture).
    last_logits: Option<Vec<f32>>,
    /// The 50 largest last-position logits, descending.
    top_ids: Vec<u32>,
    top_values: Vec<f32>,
    greedy: Vec<u32>,
}

struct Golden {
    name: &'static str,
    config: ModelConfig,
    model: Box<dyn Model>,
    block_size: usize,
    cases: Vec<Case>,
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

fn golden(name: &'static str) -> Golden {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (see fixtures/README.md)", path.display()));
    let r: Value = serde_json::from_str(&text).unwrap();
    let cases = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_owned(),
            prompt: ids(&c["prompt_token_ids"]),
            last_logits: c.get("last_logits").map(floats),
            top_ids: ids(&c["last_logits_top"]["ids"]),
            top_values: floats(&c["last_logits_top"]["values"]),
            greedy: ids(&c["greedy_token_ids"]),
        })
        .collect();
    let (config, model) = load_fixture(name);
    Golden {
        name,
        config,
        model,
        block_size: r["block_size_for_tests"].as_u64().unwrap() as usize,
        cases,
    }
}

/// Compares a logits row with the reference: the whole row when the reference has it,
/// else the top-50 values at their ids and the argmax.
fn check_logits(g: &Golden, case: &Case, logits: &[f32], what: &str) {
    assert_eq!(
        logits.len(),
        g.config.vocab_size,
        "{} {}: vocab",
        g.name,
        case.name
    );
    let diff = match &case.last_logits {
        Some(reference) => max_abs_diff(logits, reference),
        None => {
            let ours: Vec<f32> = case.top_ids.iter().map(|&i| logits[i as usize]).collect();
            max_abs_diff(&ours, &case.top_values)
        }
    };
    assert!(
        diff <= TOL,
        "{} {} ({what}): max |logit - reference| = {diff:e} > {TOL:e}",
        g.name,
        case.name
    );
    assert_eq!(
        argmax(logits),
        case.top_ids[0],
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

fn backend() -> std::sync::Arc<dyn Backend> {
    cpu_context().backend
}

#[test]
fn prefill_each_case_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        for case in &g.cases {
            let mut pool = BlockPool::identity(blocks_for(&g, case.prompt.len()));
            let mut cache = new_cache(
                backend.as_ref(),
                g.model.as_ref(),
                blocks_for(&g, case.prompt.len()),
                g.block_size,
            );
            let table = pool.take(blocks_for(&g, case.prompt.len()));
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

/// Prefill every prompt but its last token (packed), then one batched decode step with the
/// last tokens: the decode logits must match the same reference.
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
        // A one-token prompt has nothing to prefill: its decode step starts from an empty cache.
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

/// `shared_b` reuses the two full blocks `shared_a` computed (32 common tokens) and
/// prefills only its remaining tokens.
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
        let logits_a = run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            true,
            &[SeqStep {
                block_table: &table_a,
                num_cached: 0,
                new_tokens: &a.prompt,
            }],
        );
        check_logits(&g, a, &logits_a[0], "prefix owner");
        let mut table_b = table_a[..2].to_vec();
        table_b.extend(pool.take(blocks_for(&g, b.prompt.len()) - 2));
        let logits_b = run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            true,
            &[SeqStep {
                block_table: &table_b,
                num_cached: shared,
                new_tokens: &b.prompt[shared..],
            }],
        );
        check_logits(&g, b, &logits_b[0], "prefill over cached prefix");
    }
}

/// Greedy decoding of one case, step by step, feeding back the argmax.
#[test]
fn greedy_decode_of_one_case_matches_reference() {
    let backend = backend();
    for name in FIXTURES {
        let g = golden(name);
        let case = g.cases.iter().find(|c| c.name == "len17").unwrap();
        let total = case.prompt.len() + case.greedy.len();
        let mut cache = new_cache(
            backend.as_ref(),
            g.model.as_ref(),
            blocks_for(&g, total),
            g.block_size,
        );
        let table = BlockPool::identity(blocks_for(&g, total)).take(blocks_for(&g, total));
        let mut tokens = case.prompt.clone();
        let mut logits = run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            true,
            &[SeqStep {
                block_table: &table,
                num_cached: 0,
                new_tokens: &tokens,
            }],
        );
        let mut generated = Vec::new();
        for _ in 0..case.greedy.len() {
            let next = argmax(&logits[0]);
            generated.push(next);
            tokens.push(next);
            logits = run_step(
                g.model.as_ref(),
                backend.as_ref(),
                &mut cache,
                g.block_size,
                false,
                &[SeqStep {
                    block_table: &table,
                    num_cached: tokens.len() - 1,
                    new_tokens: &tokens[tokens.len() - 1..],
                }],
            );
        }
        assert_eq!(
            generated, case.greedy,
            "{} {}: greedy tokens",
            g.name, case.name
        );
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
        let steps: Vec<SeqStep> = tokens
            .iter()
            .zip(&tables)
            .map(|(t, b)| SeqStep {
                block_table: b,
                num_cached: 0,
                new_tokens: t,
            })
            .collect();
        let mut logits = run_step(
            g.model.as_ref(),
            backend.as_ref(),
            &mut cache,
            g.block_size,
            true,
            &steps,
        );
        let steps_wanted = g.cases.iter().map(|c| c.greedy.len()).min().unwrap();
        for _ in 0..steps_wanted {
            for (t, row) in tokens.iter_mut().zip(&logits) {
                t.push(argmax(row));
            }
            let steps: Vec<SeqStep> = tokens
                .iter()
                .zip(&tables)
                .map(|(t, b)| SeqStep {
                    block_table: b,
                    num_cached: t.len() - 1,
                    new_tokens: &t[t.len() - 1..],
                })
                .collect();
            logits = run_step(
                g.model.as_ref(),
                backend.as_ref(),
                &mut cache,
                g.block_size,
                false,
                &steps,
            );
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

/// The full-vocab fixture's `text_cases` (real Qwen3 tokenizer ids): greedy tokens match.
#[test]
fn fullvocab_text_cases_greedy_match_reference() {
    let backend = backend();
    let g = golden("qwen3-tiny-fullvocab");
    let path = fixture_dir(g.name).join("reference.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = r["text_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = ids(&case["prompt_token_ids"]);
        let expected = ids(&case["greedy_token_ids"]);
        let total = prompt.len() + expected.len();
        let mut cache = new_cache(
            backend.as_ref(),
            g.model.as_ref(),
            blocks_for(&g, total),
            g.block_size,
        );
        let table = BlockPool::shuffled(blocks_for(&g, total), 1).take(blocks_for(&g, total));
        let mut tokens = prompt.clone();
        let mut num_cached = 0;
        let mut generated = Vec::new();
        while generated.len() < expected.len() {
            let is_prefill = num_cached == 0;
            let logits = run_step(
                g.model.as_ref(),
                backend.as_ref(),
                &mut cache,
                g.block_size,
                is_prefill,
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
        assert_eq!(generated, expected, "prompt {:?}", case["prompt"]);
    }
}
