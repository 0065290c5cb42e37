//! End to end on a GPU: greedy tokens of every architecture's fixtures (Qwen3, Mixtral,
//! Llama, Qwen2, Mistral, Qwen3-MoE, Qwen3 with YaRN) on CUDA (bf16
//! activations and KV cache) equal the CPU f32 engine's, except after a near tie, and the
//! CPU engine's equal transformers' (`reference.json`), so the GPU is checked against
//! transformers in the same run; decode through captured CUDA graphs gives the same tokens
//! as `enforce_eager`; the KV cache is sized from `gpu_memory_utilization`; prompt logprobs
//! (chunked, with penalties and a logit bias on the same requests) agree with the CPU's.
//!
//! Kernel coverage: `qwen3-tiny-d128` has Qwen3's real attention shape (head_dim 128, GQA
//! groups of 2), so its prefill runs the tensor-core flash kernel and its decode the
//! flash-decoding kernel (its `len600` case with two context splits and the combine
//! kernel, both eagerly and in graphs captured for its `max_model_len` of 1024); the other
//! fixtures' head_dim 16/32 take the generic attention kernel.
//!
//! Without a GPU every test prints `skipped: <test>: <reason>` and passes, unless
//! `NANOVLLM_REQUIRE_GPU=1` (set by `cargo xtask gpu-check`'s run.sh), which turns the skip
//! into a failure. Fixtures are found under `NANOVLLM_REPO_ROOT` when set (a gpu-check
//! bundle on another machine), else relative to this crate.
//!
//! Near-tie tolerance: each sequence is compared step by step while the two runs agree (so
//! both saw the same context); where they first part, the CPU's top-1/top-2 logit margin at
//! that step must be below [`NEAR_TIE_MARGIN`] = 0.25 (a near tie that bf16 rounding may
//! flip), and the rest of the sequence is not compared (its contexts differ). The
//! fixtures' logits stay below 16 (the references' largest is 10.9; qwen3-tiny-d128's 9.2,
//! also on its 600-token case), where one bf16 ulp is ≤ 0.0625; 0.25 (4 ulps) covers the
//! rounding of the bf16 logits themselves plus the bf16 activations' error through the
//! fixtures' 2–3 layers.
#![cfg(feature = "cuda")]

mod common;

use nanovllm_core::{DeviceKind, EngineConfig, LLMEngine, SamplingParams};
use serde_json::Value;

use common::bundle_root;
use nanovllm_kernels::testing::gpu::gpu_or_skip;

const NEAR_TIE_MARGIN: f32 = 0.25;
const FIXTURES: [&str; 11] = [
    "qwen3-tiny",
    "qwen3-tiny-bf16",
    "qwen3-tiny-d128",
    "mixtral-tiny",
    "mixtral-tiny-bf16",
    "llama-tiny",
    "qwen2-tiny",
    "mistral-tiny",
    "qwen3-moe-tiny",
    "qwen3-moe-tiny-bf16",
    "qwen3-yarn-tiny",
];
const MAX_TOKENS: usize = 24;

/// One `reference.json` case: the prompt and transformers' greedy continuation
/// (`MAX_TOKENS` ids).
struct Case {
    prompt: Vec<u32>,
    greedy: Vec<u32>,
}

/// The fixture's cases and the block size its tests use.
fn reference(fixture: &str) -> (Vec<Case>, usize) {
    let path = bundle_root()
        .join("fixtures")
        .join(fixture)
        .join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set NANOVLLM_REPO_ROOT)", path.display()));
    let json: Value = serde_json::from_str(&text).expect("reference.json parses");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("an id") as u32)
            .collect()
    };
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            prompt: ids(&c["prompt_token_ids"]),
            greedy: ids(&c["greedy_token_ids"]),
        })
        .collect();
    let block_size = json["block_size_for_tests"].as_u64().expect("block size") as usize;
    (cases, block_size)
}

/// The fixture's prompts and the block size its tests use.
fn prompts(fixture: &str) -> (Vec<Vec<u32>>, usize) {
    let (cases, block_size) = reference(fixture);
    (cases.into_iter().map(|c| c.prompt).collect(), block_size)
}

fn config(fixture: &str, device: DeviceKind, block_size: usize) -> EngineConfig {
    EngineConfig {
        device,
        kvcache_block_size: block_size,
        num_kvcache_blocks: Some(256),
        ..EngineConfig::new(bundle_root().join("fixtures").join(fixture))
    }
}

/// One generated sequence: its tokens and, per step, the top-1/top-2 logit margin.
struct Generated {
    tokens: Vec<u32>,
    margins: Vec<f32>,
}

/// Greedy `MAX_TOKENS` tokens for every prompt, all batched in one engine.
fn generate(config: EngineConfig, prompts: &[Vec<u32>]) -> Vec<Generated> {
    let what = format!("{} on {:?}", config.model.display(), config.device);
    let mut engine =
        LLMEngine::new(config).unwrap_or_else(|e| panic!("building the engine for {what}: {e}"));
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(MAX_TOKENS)
    };
    let ids: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .add_request_with_logprobs(p.clone(), params.clone(), Some(2))
                .expect("add_request")
        })
        .collect();
    let mut out: Vec<Generated> = prompts
        .iter()
        .map(|_| Generated {
            tokens: Vec::new(),
            margins: Vec::new(),
        })
        .collect();
    while engine.has_unfinished() {
        let step = engine.step().expect("step");
        for (id, lp) in step.logprobs {
            let i = ids.iter().position(|&x| x == id).expect("a known request");
            let margin = match lp.top.as_slice() {
                [a, b, ..] => a.logprob - b.logprob,
                _ => f32::INFINITY,
            };
            out[i].tokens.push(lp.token_id);
            out[i].margins.push(margin);
        }
    }
    for g in &out {
        assert_eq!(
            g.tokens.len(),
            MAX_TOKENS,
            "{what}: every request runs to max_tokens"
        );
    }
    out
}

#[test]
fn greedy_tokens_on_cuda_equal_the_cpu_except_after_near_ties() {
    if !gpu_or_skip() {
        return;
    }
    for fixture in FIXTURES {
        let (cases, block_size) = reference(fixture);
        let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt.clone()).collect();
        // Pinned: exact to transformers' f32 math needs the f32 cache (the CPU's default is bf16).
        let cpu_config = EngineConfig {
            kv_cache_dtype: nanovllm_core::KvCacheDType::F32,
            ..config(fixture, DeviceKind::Cpu, block_size)
        };
        let cpu = generate(cpu_config, &prompts);
        // The CPU engine is exact to transformers (golden_engine.rs), which ties the GPU
        // comparison below to transformers in this very run.
        for (i, (c, case)) in cpu.iter().zip(&cases).enumerate() {
            assert_eq!(
                c.tokens, case.greedy,
                "{fixture} prompt {i}: the CPU engine differs from transformers"
            );
        }
        let gpu = generate(config(fixture, DeviceKind::Cuda, block_size), &prompts);
        let mut compared = 0;
        for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            for step in 0..MAX_TOKENS {
                if c.tokens[step] != g.tokens[step] {
                    assert!(
                        c.margins[step] < NEAR_TIE_MARGIN,
                        "{fixture} prompt {i} step {step}: CPU {:?} vs CUDA {:?} part where the \
                         CPU's margin is {} (CPU margins {:?})",
                        c.tokens,
                        g.tokens,
                        c.margins[step],
                        c.margins
                    );
                    break; // a near tie flipped: the contexts differ from here on
                }
                compared += 1;
            }
        }
        eprintln!(
            "{fixture}: {compared} of {} tokens equal before the runs part at a near tie",
            prompts.len() * MAX_TOKENS
        );
        assert!(compared > 0, "{fixture}: no token agrees");
    }
}

#[test]
fn cuda_graph_replay_gives_the_eager_tokens() {
    if !gpu_or_skip() {
        return;
    }
    for fixture in FIXTURES {
        let (mut prompts, block_size) = prompts(fixture);
        // Eight sequences of equal length decode together to the end, so the graph
        // (batch size 8) and the eager run see the same matmul shapes.
        prompts.truncate(8);
        while prompts.len() < 8 {
            let again = prompts[prompts.len() % 4].clone();
            prompts.push(again);
        }
        let graphs = config(fixture, DeviceKind::Cuda, block_size);
        let eager = EngineConfig {
            enforce_eager: true,
            ..graphs.clone()
        };
        let engine = LLMEngine::new(graphs.clone()).expect("engine");
        assert!(
            !engine.cuda_graph_batch_sizes().is_empty(),
            "{fixture}: CUDA graph capture failed (see the warning above)"
        );
        drop(engine);
        let with_graphs = generate(graphs, &prompts);
        let without = generate(eager, &prompts);
        for (i, (a, b)) in with_graphs.iter().zip(&without).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{fixture} prompt {i}: graph vs eager");
        }
    }
}

#[test]
fn the_kv_cache_is_sized_from_gpu_memory_utilization() {
    if !gpu_or_skip() {
        return;
    }
    let (prompts, block_size) = prompts("qwen3-tiny");
    let sized = |util: f64| EngineConfig {
        num_kvcache_blocks: None,
        gpu_memory_utilization: util,
        max_num_batched_tokens: 2048,
        ..config("qwen3-tiny", DeviceKind::Cuda, block_size)
    };
    let engine = LLMEngine::new(sized(0.2)).expect("engine at 0.2");
    let blocks = engine.kv_cache_usage().num_blocks;
    assert!(
        blocks > 1000,
        "0.2 of a GPU holds many tiny blocks, got {blocks}"
    );
    drop(engine);
    // A tiny share leaves no room: a clear error naming the setting.
    match LLMEngine::new(sized(1e-4)) {
        Err(e) => assert!(e.to_string().contains("gpu_memory_utilization"), "{e}"),
        Ok(_) => panic!("gpu_memory_utilization = 1e-4 should not fit a KV cache"),
    }
    // The sized engine generates.
    let out = generate(sized(0.2), &prompts[..2]);
    assert_eq!(out.len(), 2);
}

#[test]
fn auto_picks_the_gpu() {
    if !gpu_or_skip() {
        return;
    }
    let (_, block_size) = prompts("qwen3-tiny");
    let engine =
        LLMEngine::new(config("qwen3-tiny", DeviceKind::Auto, block_size)).expect("engine");
    assert_eq!(engine.device(), nanovllm_kernels::Device::Cuda(0));
}

/// A decode step through a captured graph allocates no device memory: its inputs are
/// copied into the graph's static buffers and its logits, computed inside the graph into the
/// shared static logits buffer, are handed on as an alias. Three sequences replay the graph
/// of batch size 4, so the alias has fewer rows than the graph, and its logits equal an
/// eager forward pass of the same three rows (same inputs, same KV cache).
#[test]
fn a_graph_decode_step_allocates_nothing_and_gives_the_eager_logits() {
    use std::sync::Arc;

    use nanovllm_core::decode_graph::{DecodeGraphs, Replayed};
    use nanovllm_kernels::{
        AttentionMetadata, Backend, CudaBackend, DType, KvCache, NoopCommunicator, Tensor,
    };
    use nanovllm_models::{load_model, ForwardInput, ModelConfig, ModelContext, ShardSpec};
    use nanovllm_scheduler::{BatchKind, ScheduledBatch, ScheduledSeq};

    if !gpu_or_skip() {
        return;
    }
    let cuda = Arc::new(CudaBackend::new(0).expect("cuda:0"));
    let backend: Arc<dyn Backend> = cuda.clone();
    let dir = bundle_root().join("fixtures").join("qwen3-tiny");
    let model_config = ModelConfig::from_dir(&dir).expect("config.json");
    let ctx = ModelContext {
        backend: backend.clone(),
        comm: Arc::new(NoopCommunicator),
        shard: ShardSpec {
            rank: 0,
            world_size: 1,
        },
        quantization: None,
    };
    let model = load_model(
        &model_config,
        &dir,
        nanovllm_core::LoadFormat::Safetensors,
        &ctx,
    )
    .expect("model");
    let spec = model.kv_cache_spec();
    let (block_size, max_model_len) = (16, 64);
    let mut kv = KvCache::new(
        backend.as_ref(),
        spec.num_layers,
        16,
        block_size,
        spec.num_kv_heads,
        spec.head_dim,
        DType::BF16,
    )
    .expect("kv cache");
    let mut graphs =
        DecodeGraphs::capture(backend.clone(), model.as_ref(), &mut kv, 4, max_model_len)
            .expect("capture");
    assert_eq!(graphs.batch_sizes(), [1, 2, 4]);
    assert_eq!(graphs.in_graph_logits_rows(), 4);

    // Contexts 5, 17 and 33 over blocks 3 | 4, 5 | 7, 8, 9 (a zeroed cache: the numbers are
    // the same for both paths, which is all this compares).
    let seq = |seq_id, context_len| ScheduledSeq {
        seq_id,
        num_computed_tokens: context_len - 1,
        num_new_tokens: 1,
        context_len,
        sample: true,
        num_generated_tokens: 0,
        prompt_logprob_rows: 0,
    };
    let batch = ScheduledBatch {
        kind: BatchKind::Decode,
        block_size,
        seqs: vec![seq(0, 5), seq(1, 17), seq(2, 33)],
        input_ids: vec![11, 12, 13],
        positions: vec![4, 16, 32],
        cu_seqlens_q: vec![0, 1, 2, 3],
        slot_mapping: vec![3 * 16 + 4, 5 * 16, 9 * 16],
        block_tables: vec![3, 4, 5, 7, 8, 9],
        block_table_offsets: vec![0, 1, 3, 6],
    };
    batch.check_invariants().expect("a valid batch");

    // A first step creates what is made once (the pinned staging ring: host memory).
    let staged = graphs.stage(&batch).expect("stage");
    drop(graphs.launch(staged).expect("launch"));
    backend.synchronize().expect("sync");

    cuda.reset_peak_memory();
    let before = cuda.memory_stats();
    let graph_logits = {
        let staged = graphs.stage(&batch).expect("stage");
        let Replayed::Logits(logits) = graphs.launch(staged).expect("launch") else {
            panic!("a batch of 3 fits the in-graph logits");
        };
        assert_eq!(logits.shape(), [3, model_config.vocab_size]);
        backend
            .to_host(&logits)
            .expect("read back")
            .to_vec_f32()
            .expect("f32")
    };
    backend.synchronize().expect("sync");
    let after = cuda.memory_stats();
    assert_eq!(
        after.peak_bytes, before.in_use_bytes,
        "a graph step allocated device memory"
    );
    assert_eq!(after.in_use_bytes, before.in_use_bytes);

    let upload_u32 = |v: Vec<u32>, shape: &[usize]| {
        backend
            .upload(Tensor::from_u32(v, shape).expect("host tensor"))
            .expect("upload")
    };
    let input = ForwardInput {
        input_ids: upload_u32(batch.input_ids.clone(), &[3]),
        positions: upload_u32(batch.positions.clone(), &[3]),
        attn: AttentionMetadata {
            is_prefill: false,
            num_seqs: 3,
            block_size,
            cu_seqlens_q: upload_u32(batch.cu_seqlens_q.clone(), &[4]),
            context_lens: upload_u32(vec![5, 17, 33], &[3]),
            block_tables: upload_u32(vec![3, 0, 0, 4, 5, 0, 7, 8, 9], &[3, 3]),
            slot_mapping: backend
                .upload(Tensor::from_i64(batch.slot_mapping.clone(), &[3]).expect("slots"))
                .expect("upload"),
            max_seqlen_q: 1,
            max_context_len: 33,
        },
        logits_indices: upload_u32(vec![0, 1, 2], &[3]),
    };
    let eager = model.forward(&input, &mut kv).expect("eager forward");
    let eager = backend
        .to_host(&eager)
        .expect("read back")
        .to_vec_f32()
        .expect("f32");
    assert_eq!(eager.len(), graph_logits.len());
    // The fixture's logits stay below 16, where a bf16 step is at most 0.0625: the two paths
    // may differ by the rounding of GEMMs of 3 and 4 rows, nothing more.
    let worst = eager
        .iter()
        .zip(&graph_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(graph_logits.iter().all(|x| x.is_finite()));
    assert!(worst <= 0.125, "graph and eager logits differ by {worst}");
}

/// Prompt logprobs on CUDA (bf16 logits, `Backend::token_logprobs` on the device, chunks of
/// 16 tokens) against the CPU f32 engine's, for every case of two fixtures, on requests that
/// also carry penalties and a logit bias (which must not touch prompt logprobs). Tolerance
/// 0.25, the near-tie margin above: bf16 moves each logit by up to about one ulp (≤ 0.0625
/// below 16) plus the activations' error, and a log-softmax at most doubles that; a wrong
/// row or target would be off by units.
#[test]
fn prompt_logprobs_on_cuda_match_the_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let params = SamplingParams {
        prompt_logprobs: Some(3),
        repetition_penalty: 1.3,
        frequency_penalty: 0.5,
        logit_bias: vec![(7, 2.0)],
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    for fixture in ["qwen3-tiny", "qwen3-tiny-d128"] {
        let (prompts, block_size) = prompts(fixture);
        let run = |device: DeviceKind| {
            // The CPU exact (f32 cache, as above); the GPU with its own bf16 cache.
            let kv_cache_dtype = match device {
                DeviceKind::Cpu => nanovllm_core::KvCacheDType::F32,
                _ => nanovllm_core::KvCacheDType::Auto,
            };
            let mut engine = LLMEngine::new(EngineConfig {
                max_num_batched_tokens: 16,
                kv_cache_dtype,
                ..config(fixture, device, block_size)
            })
            .unwrap_or_else(|e| panic!("{fixture} on {device:?}: {e}"));
            let ids: Vec<_> = prompts
                .iter()
                .map(|p| engine.add_request(p.clone(), params.clone()).unwrap())
                .collect();
            let mut outputs = std::collections::HashMap::new();
            while engine.has_unfinished() {
                for f in engine.step().unwrap().finished {
                    outputs.insert(f.request_id, f.prompt_logprobs.expect("asked"));
                }
            }
            ids.iter()
                .map(|id| outputs.remove(id).unwrap())
                .collect::<Vec<_>>()
        };
        let cpu = run(DeviceKind::Cpu);
        let gpu = run(DeviceKind::Cuda);
        for (i, ((c, g), prompt)) in cpu.iter().zip(&gpu).zip(&prompts).enumerate() {
            assert_eq!(g.len(), prompt.len(), "{fixture} prompt {i}");
            assert!(g[0].is_none(), "{fixture} prompt {i}");
            for (pos, (ce, ge)) in c.iter().zip(g).enumerate().skip(1) {
                let (ce, ge) = (ce.as_ref().unwrap(), ge.as_ref().unwrap());
                assert_eq!(
                    ge.token_id, prompt[pos],
                    "{fixture} prompt {i} position {pos}"
                );
                assert!(
                    (ce.logprob - ge.logprob).abs() <= NEAR_TIE_MARGIN,
                    "{fixture} prompt {i} position {pos}: CPU {} vs CUDA {}",
                    ce.logprob,
                    ge.logprob
                );
                assert_eq!(ge.top.len(), 3, "{fixture} prompt {i} position {pos}");
            }
        }
    }
}
