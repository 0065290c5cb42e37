//! Command-line arguments. Engine flags overlay an optional TOML config file:
//! defaults < `--config FILE.toml` < flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nanovllm_core::bench::BenchFlags;
use nanovllm_core::tp::TpMode;
use nanovllm_core::{
    DeviceKind, EngineConfig, GenerationConfigSource, KvCacheDType, LoadFormat, ModelDType,
    Quantization,
};

use crate::serve::chat_output::{ParserChoice, ParserOptions};

#[derive(Debug, Parser)]
#[command(
    name = "nanovllm",
    version,
    about = "A fast offline LLM inference engine"
)]
pub struct Cli {
    /// More log lines on stderr: -v adds debug records, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors on stderr, and no progress bars (RUST_LOG overrides the
    /// level).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate completions for prompts given as flags or as a JSONL file.
    Generate(GenerateArgs),
    /// Serve an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, ...).
    Serve(ServeArgs),
    /// Chat in the terminal (or with a script piping lines into stdin).
    Chat(ChatArgs),
    /// Throughput on nano-vLLM's bench.py workload (random token prompts, `ignore_eos`),
    /// on a model directory or on random weights of a config.json's shape.
    Bench(Box<BenchArgs>),
    /// Perplexity of a JSONL file of token ids or texts, through the engine's prompt
    /// logprobs (every engine flag applies, e.g. --quantization, --kv-cache-dtype).
    Perplexity(Box<crate::perplexity::PerplexityArgs>),
    /// A tensor-parallel worker: one rank (`--rank`), or every rank of a worker node
    /// (`--nnodes N --node-rank K --tensor-parallel-size T`). Started by the engine for
    /// its own node's ranks; start it by hand on the other nodes of a multi-host group.
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// Download a model from the Hugging Face Hub (config, tokenizer, safetensors weights)
    /// into the HF cache, or a directory; prints where it is.
    Download(crate::download::DownloadArgs),
    /// Print a shell completion script, e.g. `nanovllm completions bash >
    /// ~/.local/share/bash-completion/completions/nanovllm` (see the README for each shell).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TpModeArg {
    /// Threads on the CPU, processes with NCCL on CUDA.
    Auto,
    /// One thread per rank in this process.
    Threads,
    /// One process per rank (this binary re-executed as a worker).
    Processes,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// This worker's rank (1..tensor-parallel-size); without it, run every rank of
    /// `--node-rank`.
    #[arg(long, conflicts_with = "node_rank")]
    pub rank: Option<usize>,
    /// Rank 0's rendezvous address, as given to the engine.
    #[arg(long, default_value = nanovllm_core::tp::DEFAULT_DIST_INIT_ADDR)]
    pub dist_init_addr: String,
    /// Seconds to wait for rank 0 and for peers in one collective.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Hosts in the group (node mode).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This host's index, 1..nnodes (node mode; node 0 runs the engine).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// Ranks in the whole group (node mode).
    #[arg(long)]
    pub tensor_parallel_size: Option<usize>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LoadFormatArg {
    Safetensors,
    Dummy,
}

/// Flags that shape the engine; each overrides the TOML config when given.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json), or a hub
    /// id such as Qwen/Qwen3-0.6B: found in the HF cache, else downloaded.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Branch, tag or commit of a hub `--model` [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Directory holding tokenizer.json (or a hub id), if not the model's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Engine config file (TOML, the fields of EngineConfig); flags override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// auto uses a GPU when this build (`--features cuda`) and machine have one, else the
    /// CPU (a CUDA build says so in one line); cuda without a GPU is an error.
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// `dummy` runs random weights of the config's shapes (benchmarks).
    #[arg(long, value_enum)]
    pub load_format: Option<LoadFormatArg>,
    /// The weights' dtype: auto keeps the checkpoint's; bfloat16 (bf16), float16 (f16,
    /// half) or float32 (f32, float) converts every weight while loading. Activations are
    /// the device's (f32 on the CPU, bf16 on CUDA, whose kernels read bf16 weights only).
    #[arg(long, value_enum)]
    pub dtype: Option<ModelDType>,
    /// Quantize the linear weights and the LM head while loading a bf16/f16/f32
    /// checkpoint: int8 (a scale per 32 weights), int4 (a scale and minimum per 32) or fp8
    /// (e4m3, a scale per 128). Embeddings and norms stay as stored. FP8 checkpoints
    /// (quantization_config in config.json) load quantized without this flag.
    #[arg(long, value_enum)]
    pub quantization: Option<Quantization>,
    /// Sampling defaults: auto (the model's generation_config.json), vllm (none of the
    /// model's; its end-of-sequence ids still apply) or a folder holding a
    /// generation_config.json.
    #[arg(long, value_name = "auto|vllm|FOLDER")]
    pub generation_config: Option<GenerationConfigSource>,
    /// The engine's seed: requests without a seed of their own sample from a seed derived
    /// from it and their id, so a rerun with the same seed draws the same tokens [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads of the CPU backend [default: the machine's physical cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Reuse the KV cache of earlier prompts with the same prefix (the default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Compute every prompt in full: no KV block is shared between requests.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// Most sequences in one step [default: 512].
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Most tokens in one step; longer prompts are prefilled in chunks [default: 16384].
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Longest sequence, prompt plus completion [default: the model's, capped by what the
    /// KV cache holds for one sequence]. More than the cache holds is an error.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV block, a power of two >= 16 [default: 256].
    #[arg(long = "block-size", visible_alias = "kvcache-block-size")]
    pub kvcache_block_size: Option<usize>,
    /// CPU KV-cache budget in GiB.
    #[arg(long)]
    pub kv_cache_memory_gib: Option<f64>,
    /// Exact number of KV blocks (overrides the memory budget).
    #[arg(long)]
    pub num_kvcache_blocks: Option<usize>,
    /// Element type of the KV cache [default: auto: bf16 on CUDA and on the CPU].
    #[arg(long, value_enum)]
    pub kv_cache_dtype: Option<KvCacheDType>,
    /// Fraction of GPU memory the engine may use (CUDA) [default: 0.9].
    #[arg(long)]
    pub gpu_memory_utilization: Option<f64>,
    /// Number of tensor-parallel ranks [default: 1].
    #[arg(long)]
    pub tensor_parallel_size: Option<usize>,
    /// Never capture CUDA graphs.
    #[arg(long)]
    pub enforce_eager: bool,
    /// How tensor-parallel ranks run [default: auto: threads on the CPU, processes on CUDA].
    #[arg(long, value_enum)]
    pub tp_mode: Option<TpModeArg>,
    /// host:port where rank 0 listens for the other ranks (processes mode) [default: 127.0.0.1:2333].
    #[arg(long, value_name = "HOST:PORT")]
    pub dist_init_addr: Option<String>,
    /// Hosts in the tensor-parallel group [default: 1].
    #[arg(long)]
    pub nnodes: Option<usize>,
    /// This host's index in the group; the engine runs on node 0 [default: 0].
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// Seconds a rank waits for its peers before the engine fails naming the silent one [default: 600].
    #[arg(long)]
    pub tp_timeout_secs: Option<u64>,
}

impl EngineArgs {
    /// defaults < TOML file < flags.
    pub fn to_engine_config(&self) -> anyhow::Result<EngineConfig> {
        let cfg = self.overlay_engine_config()?;
        if cfg.model.as_os_str().is_empty() {
            anyhow::bail!("no model given: pass --model DIR (or set `model` in --config)");
        }
        validated_and_resolved(cfg)
    }

    /// defaults < TOML file < flags, not yet validated: the model may still be unset.
    pub fn overlay_engine_config(&self) -> anyhow::Result<EngineConfig> {
        let mut cfg = match &self.config {
            Some(path) => EngineConfig::from_toml_file(path)?,
            None => EngineConfig::default(),
        };
        if let Some(m) = &self.model {
            cfg.model = m.clone();
        }
        if let Some(t) = &self.tokenizer {
            cfg.tokenizer = Some(t.clone());
        }
        if let Some(r) = &self.revision {
            cfg.revision = Some(r.clone());
        }
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if let Some(f) = self.load_format {
            cfg.load_format = match f {
                LoadFormatArg::Safetensors => LoadFormat::Safetensors,
                LoadFormatArg::Dummy => LoadFormat::Dummy,
            };
        }
        if let Some(d) = self.kv_cache_dtype {
            cfg.kv_cache_dtype = d;
        }
        if let Some(d) = self.dtype {
            cfg.dtype = d;
        }
        if let Some(q) = self.quantization {
            cfg.quantization = Some(q);
        }
        if let Some(g) = &self.generation_config {
            cfg.generation_config = g.clone();
        }
        if self.enable_prefix_caching {
            cfg.enable_prefix_caching = true;
        }
        if self.no_enable_prefix_caching {
            cfg.enable_prefix_caching = false;
        }
        macro_rules! overlay {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { cfg.$field = v; } )* };
        }
        overlay!(
            max_num_seqs,
            max_num_batched_tokens,
            kvcache_block_size,
            seed,
            kv_cache_memory_gib,
            gpu_memory_utilization,
            tensor_parallel_size
        );
        if self.num_kvcache_blocks.is_some() {
            cfg.num_kvcache_blocks = self.num_kvcache_blocks;
        }
        if self.max_model_len.is_some() {
            cfg.max_model_len = self.max_model_len;
        }
        if self.threads.is_some() {
            cfg.threads = self.threads;
        }
        if self.enforce_eager {
            cfg.enforce_eager = true;
        }
        if let Some(m) = self.tp_mode {
            cfg.tp.mode = match m {
                TpModeArg::Auto => TpMode::Auto,
                TpModeArg::Threads => TpMode::Threads,
                TpModeArg::Processes => TpMode::Processes,
            };
        }
        if let Some(a) = &self.dist_init_addr {
            cfg.tp.dist_init_addr = a.clone();
        }
        if let Some(n) = self.nnodes {
            cfg.tp.nnodes = n;
        }
        if let Some(k) = self.node_rank {
            cfg.tp.node_rank = k;
        }
        if let Some(t) = self.tp_timeout_secs {
            cfg.tp.timeout_secs = t;
        }
        Ok(cfg)
    }
}

/// Sampling flags; unset ones fall back to the model's generation_config.json, then to defaults.
#[derive(Debug, Args, Clone, Default)]
pub struct SamplingArgs {
    /// Tokens to generate at most [default: the model's generation config, else 64].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens; 0 disables.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Drop tokens below min_p times the top probability.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Debug, Args)]
// Negative numbers reach validation, which explains the accepted range.
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A prompt (repeatable).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// JSONL requests (`-`: stdin), in one of two formats told by the first line: one
    /// `{"prompt": ...}` or `{"prompt_token_ids": [...]}` per line, optionally with
    /// max_tokens, temperature, top_p, top_k, min_p, seed, ignore_eos; or OpenAI's batch
    /// format (as vLLM's run-batch): `{"custom_id", "method": "POST", "url":
    /// "/v1/completions" or "/v1/chat/completions", "body": {...}}`.
    #[arg(long, value_name = "FILE.jsonl|-", conflicts_with = "prompts")]
    pub input: Option<PathBuf>,
    /// Write JSONL results to FILE, or to stdout with `-`. Without it, print readable text
    /// (batch-format input: its JSONL output lines, on stdout).
    #[arg(long, value_name = "FILE|-")]
    pub output: Option<String>,
    /// Jinja chat template file for the chat lines of a batch-format input, instead of the
    /// tokenizer's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct ServeArgs {
    /// The model, as `vllm serve MODEL` takes it (the same as --model).
    #[arg(id = "model_positional", value_name = "MODEL")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Defaults for requests that leave a field unset (over the model's generation config).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 exposes it.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long, value_name = "KEY", value_parser = non_empty_api_key)]
    pub api_key: Option<String>,
    /// The model name clients must send [default: the model directory's name].
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// Jinja chat template file, instead of the tokenizer's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Largest max_tokens a request may ask for (400 beyond) [default: the context length].
    #[arg(long)]
    pub max_tokens_cap: Option<usize>,
    /// Most sequences waiting for a slot in the batch; more are refused with 503.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting_requests: usize,
    /// Seconds a connection has to send a complete request head, counted from connecting
    /// or from its previous response; idle keep-alive connections close after it too.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_s: u64,
    /// Rebuilds of a broken tensor-parallel group (a worker died or failed) over the
    /// server's life; then it exits non-zero for its supervisor. 0: exit at the first break.
    #[arg(long, default_value_t = 3)]
    pub tp_max_restarts: usize,
    /// How tool calls are read from chat replies (`tool_choice: "auto"`) [default: the model
    /// family's: hermes for Qwen2/Qwen3, mistral for Mistral/Mixtral, none otherwise].
    #[arg(long, value_name = "NAME")]
    pub tool_call_parser: Option<ToolParserArg>,
    /// vLLM's flag, accepted so its command lines work: auto tool choice is on whenever a
    /// tool-call parser is chosen; with this flag, a model without one refuses to start.
    #[arg(long)]
    pub enable_auto_tool_choice: bool,
    /// How thinking is split off chat replies into `reasoning_content` [default: qwen3 when
    /// the chat template writes `<think>`, none otherwise].
    #[arg(long, value_name = "NAME")]
    pub reasoning_parser: Option<ReasoningParserArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ToolParserArg {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen).
    Hermes,
    /// `[TOOL_CALLS]` then the calls (Mistral, Mixtral).
    Mistral,
    /// Tool calls stay in the reply's text.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReasoningParserArg {
    /// `<think>…</think>` at the start of the reply (Qwen3, QwQ, DeepSeek-R1 distills).
    Qwen3,
    /// Thinking stays in `content`.
    None,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct ChatArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message to start the conversation with.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Jinja chat template file, instead of the tokenizer's.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Extra chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
}

/// `nanovllm bench [throughput] FLAGS` or `nanovllm bench serve FLAGS`, like vLLM's
/// `vllm bench throughput|serve`; with no mode named it is the throughput benchmark.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, allow_negative_numbers = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    #[command(flatten)]
    pub throughput: ThroughputArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchMode {
    /// Offline throughput of the engine (the default mode: `nanovllm bench FLAGS`).
    Throughput(Box<ThroughputArgs>),
    /// Load on a running OpenAI-compatible server (ours or any other), like
    /// `vllm bench serve`: TTFT, TPOT, ITL and throughput.
    Serve(Box<BenchServeArgs>),
}

/// The throughput benchmark: the shared engine flags, `--model-config`, and the
/// benchmark's own flags (shared with `cargo xtask bench`). One of `--model` and
/// `--model-config` is required: unlike `cargo xtask bench`, an installed binary has no
/// repository beside it to take a default config.json from.
#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// A config.json of the model's shape, run with random weights (implies --load-format
    /// dummy), e.g. configs/qwen3-0.6b.json of the repository.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model", "load_format"])]
    pub model_config: Option<PathBuf>,
    #[command(flatten)]
    pub bench: BenchFlags,
}

/// `nanovllm bench serve`: vLLM's flag names where vLLM has the flag.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// The server's base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// The API path: /v1/completions or /v1/chat/completions.
    #[arg(long, default_value = "/v1/completions")]
    pub endpoint: String,
    /// The model name to send [default: the first model of the server's /v1/models].
    #[arg(long)]
    pub model: Option<String>,
    /// A directory with the model's tokenizer.json: prompts are sent as text (needed for
    /// chat); without it, completions get the token ids themselves.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// Requests in the run.
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Tokens of each prompt (after the shared prefix).
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    /// Tokens asked of each completion (max_tokens).
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Lengths drawn from [len·(1−r), len·(1+r)]; 0 sends fixed-length prompts.
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Random tokens shared by every prompt, before its own (prefix caching).
    #[arg(long, default_value_t = 0)]
    pub random_prefix_len: usize,
    /// Prompt token ids are drawn below this when no --tokenizer gives the vocabulary.
    #[arg(long, default_value_t = 10_000)]
    pub vocab_size: usize,
    /// Requests per second (a Poisson process); inf sends them all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,
    /// Most requests in flight at once [default: no limit].
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Sampling temperature of every request.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Ask for exactly max_tokens (vLLM's `ignore_eos`; servers without it refuse it).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Seed of the prompts and arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bearer key for the server [default: $OPENAI_API_KEY].
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Write the figures as JSON too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl ServeArgs {
    /// The parser flags, for the server.
    pub fn parser_options(&self) -> ParserOptions {
        use crate::serve::reasoning::ReasoningParserKind;
        use crate::serve::tool_parsers::ToolParserKind;
        ParserOptions {
            tool_call_parser: match self.tool_call_parser {
                None => ParserChoice::Auto,
                Some(ToolParserArg::None) => ParserChoice::Off,
                Some(ToolParserArg::Hermes) => ParserChoice::Use(ToolParserKind::Hermes),
                Some(ToolParserArg::Mistral) => ParserChoice::Use(ToolParserKind::Mistral),
            },
            reasoning_parser: match self.reasoning_parser {
                None => ParserChoice::Auto,
                Some(ReasoningParserArg::None) => ParserChoice::Off,
                Some(ReasoningParserArg::Qwen3) => ParserChoice::Use(ReasoningParserKind::Qwen3),
            },
            enable_auto_tool_choice: self.enable_auto_tool_choice,
        }
    }

    /// The engine config, with the positional MODEL as `--model`; both is an error unless
    /// they name the same model.
    pub fn to_engine_config(&self) -> anyhow::Result<EngineConfig> {
        let mut cfg = self.engine.overlay_engine_config()?;
        match (&self.model, &self.engine.model) {
            (Some(positional), Some(flag)) if positional != flag => anyhow::bail!(
                "two models given: {} (positional) and --model {}: give one",
                positional.display(),
                flag.display()
            ),
            (Some(positional), _) => cfg.model = positional.clone(),
            _ => {}
        }
        if cfg.model.as_os_str().is_empty() {
            anyhow::bail!(
                "no model given: pass it as `nanovllm serve MODEL` (or --model, or `model` in --config)"
            );
        }
        validated_and_resolved(cfg)
    }
}

/// Validates `cfg` and turns hub ids into local directories, before a command reads the
/// tokenizer directory (the engine would do it again, as a no-op).
fn validated_and_resolved(mut cfg: EngineConfig) -> anyhow::Result<EngineConfig> {
    cfg.validate()?;
    nanovllm_core::hub::resolve_engine_config(
        &mut cfg,
        &nanovllm_core::hub::HubOptions::from_env(),
    )?;
    Ok(cfg)
}

/// `--api-key ''` would lock every client out (no bearer token is empty): refuse it.
fn non_empty_api_key(key: &str) -> Result<String, String> {
    if key.trim().is_empty() {
        return Err(
            "the key is empty, which no client can send: give a non-empty key, \
                    or leave --api-key out to serve without one"
                .into(),
        );
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn an_empty_api_key_is_refused() {
        for key in ["", "  "] {
            let err = Cli::try_parse_from(["nanovllm", "serve", "--model", "m", "--api-key", key])
                .unwrap_err()
                .to_string();
            assert!(err.contains("the key is empty"), "{err}");
        }
        assert!(
            Cli::try_parse_from(["nanovllm", "serve", "--model", "m", "--api-key", "k"]).is_ok()
        );
    }

    fn engine_config_of(args: &[&str]) -> anyhow::Result<EngineConfig> {
        let argv = [&["nanovllm", "generate", "--model", "m"][..], args].concat();
        match Cli::try_parse_from(argv)?.command {
            Command::Generate(g) => g.engine.overlay_engine_config(),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn block_size_has_vllms_name_and_the_old_one() {
        for flag in ["--block-size", "--kvcache-block-size"] {
            assert_eq!(
                engine_config_of(&[flag, "32"]).unwrap().kvcache_block_size,
                32
            );
        }
    }

    #[test]
    fn dtype_takes_vllms_spellings() {
        for (text, want) in ModelDType::SPELLINGS {
            assert_eq!(engine_config_of(&["--dtype", text]).unwrap().dtype, want);
        }
        assert_eq!(engine_config_of(&[]).unwrap().dtype, ModelDType::Auto);
        assert!(engine_config_of(&["--dtype", "float64"]).is_err());
    }

    #[test]
    fn quantization_flag_and_toml_key() {
        for (text, want) in [
            ("int8", Quantization::Int8),
            ("int4", Quantization::Int4),
            ("fp8", Quantization::Fp8),
        ] {
            let cfg = engine_config_of(&["--quantization", text]).unwrap();
            assert_eq!(cfg.quantization, Some(want));
            let toml = EngineConfig::from_toml_str(
                &format!("model = \"m\"\nquantization = \"{text}\""),
                std::path::Path::new("engine.toml"),
            )
            .unwrap();
            assert_eq!(toml.quantization, Some(want));
        }
        assert_eq!(engine_config_of(&[]).unwrap().quantization, None);
        let err = engine_config_of(&["--quantization", "awq"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("int8") && err.contains("int4"), "{err}");
    }

    #[test]
    fn generation_config_auto_vllm_or_a_folder() {
        let source = |v: &str| {
            engine_config_of(&["--generation-config", v])
                .unwrap()
                .generation_config
        };
        assert_eq!(source("auto"), GenerationConfigSource::Auto);
        assert_eq!(source("vllm"), GenerationConfigSource::Vllm);
        assert_eq!(
            source("gen/dir"),
            GenerationConfigSource::Folder("gen/dir".into())
        );
    }

    #[test]
    fn prefix_caching_is_on_unless_turned_off_and_the_last_flag_wins() {
        let on = |args: &[&str]| engine_config_of(args).unwrap().enable_prefix_caching;
        assert!(on(&[]));
        assert!(on(&["--enable-prefix-caching"]));
        assert!(!on(&["--no-enable-prefix-caching"]));
        assert!(on(&[
            "--no-enable-prefix-caching",
            "--enable-prefix-caching"
        ]));
        assert!(!on(&[
            "--enable-prefix-caching",
            "--no-enable-prefix-caching"
        ]));
    }

    #[test]
    fn seed_threads_and_max_model_len_are_the_engines() {
        let cfg = engine_config_of(&["--seed", "9", "--threads", "3"]).unwrap();
        assert_eq!(
            (cfg.seed, cfg.threads, cfg.max_model_len),
            (9, Some(3), None)
        );
        let cfg = engine_config_of(&["--max-model-len", "100"]).unwrap();
        assert_eq!(cfg.max_model_len, Some(100));
        // The same engine flags on every subcommand that runs a model.
        for sub in ["chat", "serve", "bench"] {
            let argv = [
                "nanovllm",
                sub,
                "--model",
                "m",
                "--seed",
                "1",
                "--threads",
                "2",
            ];
            let argv = [&argv[..], &["--block-size", "16", "--dtype", "bf16"]].concat();
            assert!(Cli::try_parse_from(argv).is_ok(), "{sub}");
        }
    }

    #[test]
    fn serve_takes_the_model_positionally_or_as_a_flag_but_not_two() {
        let serve =
            |args: &[&str]| match Cli::try_parse_from([&["nanovllm", "serve"][..], args].concat())
                .unwrap()
                .command
            {
                Command::Serve(s) => s.to_engine_config(),
                other => panic!("parsed as {other:?}"),
            };
        assert_eq!(
            serve(&["some-model"]).unwrap().model,
            PathBuf::from("some-model")
        );
        assert_eq!(
            serve(&["--model", "some-model"]).unwrap().model,
            PathBuf::from("some-model")
        );
        assert_eq!(
            serve(&["m", "--model", "m"]).unwrap().model,
            PathBuf::from("m")
        );
        let err = serve(&["a", "--model", "b"]).unwrap_err().to_string();
        assert!(err.contains("two models given"), "{err}");
        let err = serve(&[]).unwrap_err().to_string();
        assert!(err.contains("nanovllm serve MODEL"), "{err}");
    }
}
