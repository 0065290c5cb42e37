//! Golden engine scenarios shared by the per-architecture test files: greedy
//! continuations of a fixture through `LLM` must equal transformers' references
//! (`scripts/make_fixtures.py`), however the engine batches, chunks, caches or preempts
//! the work. Each `check_*` runs one scenario for one fixture.
//!
//! Settings for every scenario: device cpu, `kvcache_block_size` = the fixture's
//! `block_size_for_tests` (16), greedy, `ignore_eos`, `max_tokens` = the reference
//! length. The test files state each fixture's smallest greedy top-1/top-2 margin, which
//! is why a correct f32 engine cannot flip a token through rounding.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use nanovllm_core::{
    DeviceKind, EngineConfig, FinishReason, KvCacheDType, Output, SamplingParams, LLM,
};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The repository root as the GPU test files (`cuda_*`) find it: `NANOVLLM_REPO_ROOT`
/// when set (a `cargo xtask gpu-check` bundle on another machine), else [`repo_root`].
pub fn bundle_root() -> PathBuf {
    match std::env::var_os("NANOVLLM_REPO_ROOT") {
        Some(root) => PathBuf::from(root),
        None => repo_root(),
    }
}

/// The Qwen3 tokenizer shipped next to the repo, or `None` (printing why) outside CI.
pub fn qwen3_tokenizer_dir() -> Option<PathBuf> {
    let dir = repo_root().join("../shared/models/qwen3-tokenizer");
    if dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    let msg = format!("Qwen3 tokenizer not found at {}", dir.display());
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true requires it)");
    }
    eprintln!("skipping: {msg}");
    None
}

pub fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub prompt_token_ids: Vec<u32>,
    pub greedy_token_ids: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct TextCase {
    pub prompt: String,
    pub prompt_token_ids: Vec<u32>,
    pub greedy_token_ids: Vec<u32>,
    pub greedy_text: String,
}

pub struct Reference {
    pub architecture: String,
    pub block_size: usize,
    pub cases: Vec<Case>,
    /// Prompts through the real tokenizer (full-vocab fixtures only; else empty).
    pub text_cases: Vec<TextCase>,
}

impl Reference {
    pub fn case(&self, name: &str) -> &Case {
        self.cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("the reference has no case {name}"))
    }
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

pub fn reference(fixture: &str) -> Reference {
    let path = fixture_dir(fixture).join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (fixtures are part of the repo)", path.display()));
    let json: Value = serde_json::from_str(&text).expect("reference.json parses");
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            prompt_token_ids: ids(&c["prompt_token_ids"]),
            greedy_token_ids: ids(&c["greedy_token_ids"]),
        })
        .collect();
    let text_cases = json
        .get("text_cases")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|c| TextCase {
                    prompt: c["prompt"].as_str().expect("prompt").to_string(),
                    prompt_token_ids: ids(&c["prompt_token_ids"]),
                    greedy_token_ids: ids(&c["greedy_token_ids"]),
                    greedy_text: c["greedy_text"].as_str().expect("text").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Reference {
        architecture: json["architecture"]
            .as_str()
            .expect("architecture")
            .to_string(),
        block_size: json["block_size_for_tests"].as_u64().expect("block size") as usize,
        cases,
        text_cases,
    }
}

pub fn test_config(fixture: &str, block_size: usize) -> EngineConfig {
    EngineConfig {
        kvcache_block_size: block_size,
        device: DeviceKind::Cpu,
        num_kvcache_blocks: Some(256),
        // Pinned: the references are f32 math, and the CPU's default KV cache is bf16.
        kv_cache_dtype: KvCacheDType::F32,
        ..EngineConfig::new(fixture_dir(fixture))
    }
}

pub fn llm(config: EngineConfig) -> LLM {
    let model = config.model.display().to_string();
    LLM::new(config).unwrap_or_else(|e| panic!("building the engine for {model}: {e}"))
}

pub fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

/// All of `fixture`'s cases in one batch through the engine at each tensor-parallel size
/// in `tp_sizes` (one thread per rank): the tokens must be transformers'. Sharding changes
/// only the order of the partial-sum additions (logits within 1e-4), far below the
/// references' margins.
pub fn check_tensor_parallel(fixture: &str, tp_sizes: &[usize]) {
    let r = reference(fixture);
    for &tp in tp_sizes {
        let mut config = EngineConfig {
            tensor_parallel_size: tp,
            ..test_config(fixture, r.block_size)
        };
        config.tp.mode = nanovllm_core::tp::TpMode::Threads;
        config.tp.timeout_secs = 60;
        generate_and_check(&mut llm(config), &r.cases, &format!("{fixture} tp {tp}"));
    }
}

/// Generates `cases` together in one call and checks each against its reference.
pub fn generate_and_check(llm: &mut LLM, cases: &[Case], what: &str) -> Vec<Output> {
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_token_ids.clone()).collect();
    let params: Vec<SamplingParams> = cases
        .iter()
        .map(|c| greedy(c.greedy_token_ids.len()))
        .collect();
    let outputs = llm
        .generate(prompts, params)
        .unwrap_or_else(|e| panic!("{what}: generate failed: {e}"));
    assert_eq!(outputs.len(), cases.len(), "{what}");
    for (case, out) in cases.iter().zip(&outputs) {
        assert_eq!(out.error, None, "{what}/{}", case.name);
        assert_eq!(
            out.finish_reason,
            FinishReason::Length,
            "{what}/{}",
            case.name
        );
        if out.token_ids != case.greedy_token_ids {
            let first = out
                .token_ids
                .iter()
                .zip(&case.greedy_token_ids)
                .position(|(a, b)| a != b);
            panic!(
                "{what}/{}: continuation differs from the reference at token {first:?}\n  got  {:?}\n  want {:?}",
                case.name, out.token_ids, case.greedy_token_ids
            );
        }
    }
    outputs
}

/// All cases in one `generate` call.
pub fn check_all_together(fixture: &str) {
    let r = reference(fixture);
    generate_and_check(
        &mut llm(test_config(fixture, r.block_size)),
        &r.cases,
        fixture,
    );
}

/// Each case alone on a fresh engine, then all cases in a fixed permutation that moves
/// every case.
pub fn check_each_alone_and_shuffled(fixture: &str) {
    let r = reference(fixture);
    for case in &r.cases {
        // A fresh engine per case: no prefix cache, nothing else in the batch.
        let mut llm = llm(test_config(fixture, r.block_size));
        generate_and_check(&mut llm, std::slice::from_ref(case), fixture);
    }
    let n = r.cases.len();
    let shuffled: Vec<Case> = (0..n).map(|i| r.cases[(i * 3 + 2) % n].clone()).collect();
    assert_ne!(shuffled[0].name, r.cases[0].name);
    let mut llm = llm(test_config(fixture, r.block_size));
    generate_and_check(&mut llm, &shuffled, &format!("{fixture} shuffled"));
}

/// `shared_b` after `shared_a` hits their 32 common tokens in the prefix cache; repeats
/// (sequential and in one batch) give the same output.
pub fn check_prefix_cache(fixture: &str) {
    let r = reference(fixture);
    let (a, b) = (r.case("shared_a").clone(), r.case("shared_b").clone());
    assert_eq!(a.prompt_token_ids[..32], b.prompt_token_ids[..32]);
    let mut llm = llm(test_config(fixture, r.block_size));
    let first = generate_and_check(&mut llm, std::slice::from_ref(&a), fixture);
    assert_eq!(first[0].num_cached_tokens, 0, "{fixture}: cold cache");
    let second = generate_and_check(&mut llm, std::slice::from_ref(&b), fixture);
    assert!(
        second[0].num_cached_tokens >= 32,
        "{fixture}: shared_b after shared_a should hit 32 cached tokens, got {}",
        second[0].num_cached_tokens
    );
    // The same prompt again: served (mostly) from the cache, same output.
    let again = generate_and_check(&mut llm, std::slice::from_ref(&a), fixture);
    assert!(again[0].num_cached_tokens >= 32, "{fixture}");
    assert_eq!(again[0].token_ids, first[0].token_ids);
    // The same case twice in one batch.
    let twice = generate_and_check(&mut llm, &[b.clone(), b], fixture);
    assert_eq!(twice[0].token_ids, twice[1].token_ids);
}

/// All cases with prefills chunked to 8 and to 24 tokens per step.
pub fn check_chunked_prefill(fixture: &str) {
    let r = reference(fixture);
    for max_num_batched_tokens in [8, 24] {
        let mut llm = llm(EngineConfig {
            max_num_batched_tokens,
            ..test_config(fixture, r.block_size)
        });
        generate_and_check(
            &mut llm,
            &r.cases,
            &format!("{fixture} max_num_batched_tokens={max_num_batched_tokens}"),
        );
    }
}

/// All cases with just enough KV blocks for the longest case alone: the scheduler must
/// preempt, and the outputs stay exact.
pub fn check_preemption(fixture: &str) {
    let r = reference(fixture);
    let longest = r
        .cases
        .iter()
        .map(|c| c.prompt_token_ids.len() + c.greedy_token_ids.len())
        .max()
        .expect("cases");
    let num_blocks = longest.div_ceil(r.block_size);
    let mut llm = llm(EngineConfig {
        num_kvcache_blocks: Some(num_blocks),
        ..test_config(fixture, r.block_size)
    });
    generate_and_check(
        &mut llm,
        &r.cases,
        &format!("{fixture} with {num_blocks} KV blocks"),
    );
    let preemptions = llm.engine().stats().num_preemptions;
    assert!(
        preemptions > 0,
        "{fixture}: {num_blocks} blocks for all cases must preempt"
    );
}

/// Defines the engine scenarios every architecture shares as `#[test]`s:
/// `all_cases_batched_together` on every fixture of `$all`, and each case alone and
/// shuffled, the prefix cache, chunked prefill and preemption on every fixture of `$each`.
#[macro_export]
macro_rules! engine_scenarios {
    ($all:expr, $each:expr) => {
        $crate::engine_scenarios!(@tests
            all_cases_batched_together on $all => check_all_together,
            each_case_alone_and_in_shuffled_order on $each => check_each_alone_and_shuffled,
            prefix_cache_reuses_the_shared_prefix on $each => check_prefix_cache,
            chunked_prefill on $each => check_chunked_prefill,
            preemption_under_a_tiny_kv_cache on $each => check_preemption
        );
    };
    (@tests $($test:ident on $fixtures:expr => $check:ident),*) => {
        $(
            #[test]
            fn $test() {
                for fixture in $fixtures {
                    $crate::common::$check(fixture);
                }
            }
        )*
    };
}
