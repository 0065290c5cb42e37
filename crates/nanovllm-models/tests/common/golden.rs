//! Shared golden checks: a fixture's model on the CPU backend against transformers' f32
//! outputs (`fixtures/<name>/reference.json`, see `fixtures/README.md`).
//!
//! Each `check_*` runs one scenario over every reference case of one fixture and asserts
//! each logits row within `tol` absolute of the reference (the whole row when the
//! reference has it, else its top-50 values at their ids) and the argmax exactly; greedy
//! continuations must match token for token. The golden test files pick the fixtures and
//! state why their tolerance holds.

use nanovllm_kernels::Backend;
use nanovllm_models::{Model, ModelConfig};
use serde_json::Value;

use super::*;

pub struct Case {
    pub name: String,
    pub prompt: Vec<u32>,
    /// The whole last-position logits row (absent for the full-vocab fixtures).
    pub last_logits: Option<Vec<f32>>,
    /// The 50 largest last-position logits, descending.
    pub top_ids: Vec<u32>,
    pub top_values: Vec<f32>,
    pub greedy: Vec<u32>,
}

pub struct Golden {
    pub name: &'static str,
    pub config: ModelConfig,
    pub model: Box<dyn Model>,
    pub block_size: usize,
    pub cases: Vec<Case>,
    /// The whole `reference.json`, for architecture-specific sections.
    pub reference: Value,
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A `[[…], […]]` matrix, flattened row-major.
pub fn matrix(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().flat_map(floats).collect()
}

pub fn backend() -> std::sync::Arc<dyn Backend> {
    cpu_context().backend
}

/// Loads fixture `name` and its reference.
pub fn golden(name: &'static str) -> Golden {
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
        block_size: reference["block_size_for_tests"].as_u64().unwrap() as usize,
        cases,
        reference,
    }
}

impl Golden {
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Blocks for every case's prompt plus its greedy continuation.
    pub fn pool_size(&self) -> usize {
        self.cases
            .iter()
            .map(|c| self.blocks_for(c.prompt.len() + c.greedy.len()))
            .sum()
    }

    /// One block table per case from `pool`, each with room for `tokens(case)` tokens.
    pub fn take_tables(
        &self,
        pool: &mut BlockPool,
        tokens: impl Fn(&Case) -> usize,
    ) -> Vec<Vec<u32>> {
        self.cases
            .iter()
            .map(|c| pool.take(self.blocks_for(tokens(c))))
            .collect()
    }

    pub fn case(&self, name: &str) -> &Case {
        self.cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{}: no case {name}", self.name))
    }

    pub fn new_cache(&self, backend: &dyn Backend, num_blocks: usize) -> KvCache {
        new_cache(backend, self.model.as_ref(), num_blocks, self.block_size)
    }

    /// Runs one step of this model (see [`run_step`]).
    pub fn step(
        &self,
        backend: &dyn Backend,
        cache: &mut KvCache,
        is_prefill: bool,
        seqs: &[SeqStep],
    ) -> Vec<Vec<f32>> {
        run_step(
            self.model.as_ref(),
            backend,
            cache,
            self.block_size,
            is_prefill,
            seqs,
        )
    }

    /// Compares a logits row with `case`'s reference within `tol` (module docs).
    pub fn check_logits(&self, case: &Case, logits: &[f32], tol: f32, what: &str) {
        let (g, name) = (self.name, &case.name);
        assert_eq!(logits.len(), self.config.vocab_size, "{g} {name}: vocab");
        let diff = match &case.last_logits {
            Some(reference) => max_abs_diff(logits, reference),
            None => {
                let ours: Vec<f32> = case.top_ids.iter().map(|&i| logits[i as usize]).collect();
                max_abs_diff(&ours, &case.top_values)
            }
        };
        assert!(
            diff <= tol,
            "{g} {name} ({what}): max |logit - reference| = {diff:e} > {tol:e}"
        );
        assert_eq!(
            argmax(logits),
            case.top_ids[0],
            "{g} {name} ({what}): argmax"
        );
        if let Some(reference) = &case.last_logits {
            assert_eq!(
                argmax(logits),
                argmax(reference),
                "{g} {name} ({what}): argmax of the reference row"
            );
        }
    }

    /// Greedy decoding of `prompt` alone over `block_table`, step by step (prefill, then
    /// one-token decodes), feeding back the argmax; returns `n` generated tokens.
    pub fn greedy_alone(
        &self,
        backend: &dyn Backend,
        block_table: &[u32],
        prompt: &[u32],
        n: usize,
    ) -> Vec<u32> {
        let blocks = self.blocks_for(prompt.len() + n);
        assert!(block_table.len() >= blocks, "block table too short");
        let mut cache = self.new_cache(backend, blocks.max(block_table.len()));
        let mut tokens = prompt.to_vec();
        let mut num_cached = 0;
        let mut generated = Vec::new();
        while generated.len() < n {
            let logits = self.step(
                backend,
                &mut cache,
                num_cached == 0,
                &[SeqStep {
                    block_table,
                    num_cached,
                    new_tokens: &tokens[num_cached..],
                }],
            );
            num_cached = tokens.len();
            let next = argmax(&logits[0]);
            generated.push(next);
            tokens.push(next);
        }
        generated
    }
}

/// Each case prefilled alone.
pub fn check_prefill_each_case(name: &'static str, tol: f32) {
    let (backend, g) = (backend(), golden(name));
    for case in &g.cases {
        let blocks = g.blocks_for(case.prompt.len());
        let mut cache = g.new_cache(backend.as_ref(), blocks);
        let table = BlockPool::identity(blocks).take(blocks);
        let logits = g.step(
            backend.as_ref(),
            &mut cache,
            true,
            &[SeqStep::prefill(&table, &case.prompt)],
        );
        g.check_logits(case, &logits[0], tol, "single prefill");
    }
}

/// All prompts in one packed prefill over shuffled blocks.
pub fn check_packed_prefill_shuffled(name: &'static str, tol: f32) {
    let (backend, g) = (backend(), golden(name));
    let num_blocks = g.pool_size() + 3;
    let mut pool = BlockPool::shuffled(num_blocks, 0x5eed);
    let mut cache = g.new_cache(backend.as_ref(), num_blocks);
    let tables = g.take_tables(&mut pool, |c| c.prompt.len());
    let steps: Vec<SeqStep> = g
        .cases
        .iter()
        .zip(&tables)
        .map(|(c, t)| SeqStep::prefill(t, &c.prompt))
        .collect();
    let logits = g.step(backend.as_ref(), &mut cache, true, &steps);
    for (case, row) in g.cases.iter().zip(&logits) {
        g.check_logits(case, row, tol, "packed prefill, shuffled blocks");
    }
}

/// Prefill every prompt but its last token (packed), then one batched decode step with
/// the last tokens: the decode logits must match the same reference.
pub fn check_decode_after_prefill(name: &'static str, tol: f32) {
    let (backend, g) = (backend(), golden(name));
    let num_blocks = g.pool_size();
    let mut pool = BlockPool::shuffled(num_blocks, 7);
    let mut cache = g.new_cache(backend.as_ref(), num_blocks);
    let tables = g.take_tables(&mut pool, |c| c.prompt.len());
    // A one-token prompt has nothing to prefill: its decode step starts from an empty cache.
    let prefill: Vec<SeqStep> = g
        .cases
        .iter()
        .zip(&tables)
        .filter(|(c, _)| c.prompt.len() > 1)
        .map(|(c, t)| SeqStep::prefill(t, &c.prompt[..c.prompt.len() - 1]))
        .collect();
    g.step(backend.as_ref(), &mut cache, true, &prefill);
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
    let logits = g.step(backend.as_ref(), &mut cache, false, &decode);
    for (case, row) in g.cases.iter().zip(&logits) {
        g.check_logits(case, row, tol, "decode after prefill");
    }
}

/// `shared_b` reuses the two full blocks `shared_a` computed (their common prefix) and
/// prefills only its remaining tokens.
pub fn check_prefill_over_cached_prefix(name: &'static str, tol: f32) {
    let (backend, g) = (backend(), golden(name));
    let (a, b) = (g.case("shared_a"), g.case("shared_b"));
    let shared = 2 * g.block_size;
    assert_eq!(
        a.prompt[..shared],
        b.prompt[..shared],
        "fixture: shared prefix"
    );
    let num_blocks = g.blocks_for(a.prompt.len()) + g.blocks_for(b.prompt.len());
    let mut pool = BlockPool::shuffled(num_blocks, 11);
    let mut cache = g.new_cache(backend.as_ref(), num_blocks);
    let prefill = |cache: &mut _, table: &[u32], cached: usize, tokens: &[u32]| {
        g.step(
            backend.as_ref(),
            cache,
            true,
            &[SeqStep {
                block_table: table,
                num_cached: cached,
                new_tokens: tokens,
            }],
        )
    };
    let table_a = pool.take(g.blocks_for(a.prompt.len()));
    let logits_a = prefill(&mut cache, &table_a, 0, &a.prompt);
    g.check_logits(a, &logits_a[0], tol, "prefix owner");
    let mut table_b = table_a[..2].to_vec();
    table_b.extend(pool.take(g.blocks_for(b.prompt.len()) - 2));
    let logits_b = prefill(&mut cache, &table_b, shared, &b.prompt[shared..]);
    g.check_logits(b, &logits_b[0], tol, "prefill over cached prefix");
}

/// Greedy decoding of the cases named in `cases` (all when `None`), each alone, over a
/// block table from `pool_for(blocks)`; the tokens must match the reference.
pub fn check_greedy_alone(
    name: &'static str,
    cases: Option<&[&str]>,
    pool_for: impl Fn(usize) -> BlockPool,
) {
    let (backend, g) = (backend(), golden(name));
    let wanted = |c: &&Case| cases.is_none_or(|names| names.contains(&c.name.as_str()));
    let selected: Vec<&Case> = g.cases.iter().filter(wanted).collect();
    assert!(!selected.is_empty(), "{name}: no case selected");
    for case in selected {
        let blocks = g.blocks_for(case.prompt.len() + case.greedy.len());
        let table = pool_for(blocks).take(blocks);
        let generated = g.greedy_alone(backend.as_ref(), &table, &case.prompt, case.greedy.len());
        assert_eq!(
            generated, case.greedy,
            "{} {}: greedy tokens",
            g.name, case.name
        );
    }
}

/// All cases decoded greedily together: a packed prefill, then batched decode steps.
pub fn check_batched_greedy(name: &'static str) {
    let (backend, g) = (backend(), golden(name));
    let num_blocks = g.pool_size();
    let mut pool = BlockPool::shuffled(num_blocks, 3);
    let mut cache = g.new_cache(backend.as_ref(), num_blocks);
    let tables = g.take_tables(&mut pool, |c| c.prompt.len() + c.greedy.len());
    let mut tokens: Vec<Vec<u32>> = g.cases.iter().map(|c| c.prompt.clone()).collect();
    let mut num_cached = vec![0usize; tokens.len()];
    let steps_wanted = g.cases.iter().map(|c| c.greedy.len()).min().unwrap();
    for step in 0..steps_wanted {
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
        let logits = g.step(backend.as_ref(), &mut cache, step == 0, &seqs);
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

/// Defines the five scenarios every architecture shares as `#[test]`s, each run on every
/// fixture of `$fixtures` with logits tolerance `$tol`: single prefill, packed prefill
/// over shuffled blocks (tokens of different sequences must not mix), decode after
/// prefill, prefill over a cached prefix, and batched greedy decoding. (Greedy decoding
/// of a case alone differs per architecture, so each file writes its own.)
#[macro_export]
macro_rules! golden_scenarios {
    ($fixtures:expr, $tol:expr) => {
        $crate::golden_scenarios!(@with_tol $fixtures, $tol;
            prefill_each_case_matches_reference => check_prefill_each_case,
            packed_prefill_with_shuffled_block_tables_matches_reference
                => check_packed_prefill_shuffled,
            decode_step_after_prefill_matches_reference => check_decode_after_prefill,
            prefill_over_a_cached_prefix_matches_reference => check_prefill_over_cached_prefix
        );

        #[test]
        fn batched_greedy_decode_of_all_cases_matches_reference() {
            for name in $fixtures {
                $crate::common::golden::check_batched_greedy(name);
            }
        }
    };
    (@with_tol $fixtures:expr, $tol:expr; $($test:ident => $check:ident),*) => {
        $(
            #[test]
            fn $test() {
                for name in $fixtures {
                    $crate::common::golden::$check(name, $tol);
                }
            }
        )*
    };
}
