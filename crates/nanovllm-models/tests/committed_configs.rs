//! The real-shape configs under `configs/` (the Hub's `config.json` of each checkpoint, see
//! `configs/README.md`) parse, with the shapes those checkpoints have, and the element
//! count the engine sizes memory with agrees with the checkpoint's parameter count.

use std::path::PathBuf;

use nanovllm_kernels::DType;
use nanovllm_models::ModelConfig;

/// What each committed config must parse to.
struct Expected {
    file: &'static str,
    architecture: &'static str,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    rope_theta: f64,
    tie_word_embeddings: bool,
    /// Experts per MoE layer and per token (0, 0 for dense models).
    experts: (usize, usize),
    bos_token_id: u32,
    eos_token_id: u32,
    /// transformers 5.25's count for the config (built on the meta device), which is
    /// the count the checkpoint's model card states.
    parameters: u64,
}

const EXPECTED: [Expected; 6] = [
    Expected {
        file: "llama-3.2-1b.json",
        architecture: "LlamaForCausalLM",
        hidden_size: 2048,
        intermediate_size: 8192,
        num_hidden_layers: 16,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 64,
        vocab_size: 128256,
        max_position_embeddings: 131072,
        rope_theta: 500000.0,
        tie_word_embeddings: true,
        experts: (0, 0),
        bos_token_id: 128000,
        eos_token_id: 128001,
        parameters: 1_235_814_400,
    },
    Expected {
        file: "llama-3.1-8b.json",
        architecture: "LlamaForCausalLM",
        hidden_size: 4096,
        intermediate_size: 14336,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        vocab_size: 128256,
        max_position_embeddings: 131072,
        rope_theta: 500000.0,
        tie_word_embeddings: false,
        experts: (0, 0),
        bos_token_id: 128000,
        eos_token_id: 128001,
        parameters: 8_030_261_248,
    },
    Expected {
        file: "qwen2.5-0.5b.json",
        architecture: "Qwen2ForCausalLM",
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        head_dim: 64,
        vocab_size: 151936,
        max_position_embeddings: 32768,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        experts: (0, 0),
        bos_token_id: 151643,
        eos_token_id: 151643,
        parameters: 494_032_768,
    },
    Expected {
        file: "qwen2.5-7b.json",
        architecture: "Qwen2ForCausalLM",
        hidden_size: 3584,
        intermediate_size: 18944,
        num_hidden_layers: 28,
        num_attention_heads: 28,
        num_key_value_heads: 4,
        head_dim: 128,
        vocab_size: 152064,
        max_position_embeddings: 131072,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: false,
        experts: (0, 0),
        bos_token_id: 151643,
        eos_token_id: 151643,
        parameters: 7_615_616_512,
    },
    Expected {
        file: "mistral-7b-v0.1.json",
        architecture: "MistralForCausalLM",
        hidden_size: 4096,
        intermediate_size: 14336,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        vocab_size: 32000,
        max_position_embeddings: 32768,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        experts: (0, 0),
        bos_token_id: 1,
        eos_token_id: 2,
        parameters: 7_241_732_096,
    },
    Expected {
        file: "qwen3-30b-a3b.json",
        architecture: "Qwen3MoeForCausalLM",
        hidden_size: 2048,
        intermediate_size: 6144,
        num_hidden_layers: 48,
        num_attention_heads: 32,
        num_key_value_heads: 4,
        head_dim: 128,
        vocab_size: 151936,
        max_position_embeddings: 40960,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: false,
        experts: (128, 8),
        bos_token_id: 151643,
        eos_token_id: 151645,
        parameters: 30_532_122_624,
    },
];

fn parse(file: &str) -> ModelConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelConfig::from_json_str(&text, &path).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn committed_configs_parse_with_their_checkpoints_shapes() {
    for e in &EXPECTED {
        let c = parse(e.file);
        let f = e.file;
        assert_eq!(c.architecture, e.architecture, "{f}");
        assert_eq!(c.hidden_size, e.hidden_size, "{f}");
        assert_eq!(c.intermediate_size, e.intermediate_size, "{f}");
        assert_eq!(c.num_hidden_layers, e.num_hidden_layers, "{f}");
        assert_eq!(c.num_attention_heads, e.num_attention_heads, "{f}");
        assert_eq!(c.num_key_value_heads, e.num_key_value_heads, "{f}");
        assert_eq!(c.head_dim, e.head_dim, "{f}");
        assert_eq!(c.vocab_size, e.vocab_size, "{f}");
        assert_eq!(c.max_position_embeddings, e.max_position_embeddings, "{f}");
        assert_eq!(c.rope_theta, e.rope_theta, "{f}");
        assert_eq!(c.tie_word_embeddings, e.tie_word_embeddings, "{f}");
        assert_eq!(c.dtype, DType::BF16, "{f}");
        assert_eq!(
            (c.num_local_experts, c.num_experts_per_tok),
            e.experts,
            "{f}"
        );
        assert_eq!(c.bos_token_id, Some(e.bos_token_id), "{f}");
        assert_eq!(c.eos_token_ids, vec![e.eos_token_id], "{f}");
    }
}

/// `num_elements` is every weight plus the rotary cos/sin table (`max_position_embeddings
/// × head_dim`, at most 0.7 % of these models: Llama-3.2-1B's 131072 × 64), so it must be
/// within 1 % above the checkpoint's parameter count. A count that ignored
/// `moe_intermediate_size` (Qwen3-30B-A3B's experts are 768 wide, its dense
/// `intermediate_size` 6144) or biases and norms of another architecture would miss by
/// more, and the engine would size memory for the wrong model.
#[test]
fn element_counts_match_the_checkpoints_parameter_counts() {
    for e in &EXPECTED {
        let c = parse(e.file);
        let got = c.num_elements().expect("no overflow");
        let rope = (e.max_position_embeddings * e.head_dim) as u64;
        assert!(
            got >= e.parameters && got - e.parameters <= e.parameters / 100,
            "{}: num_elements {got} vs {} parameters (+ {rope} rotary table entries)",
            e.file,
            e.parameters
        );
    }
}
