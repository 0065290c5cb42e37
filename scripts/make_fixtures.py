#!/usr/bin/env python3
"""Build the golden-test fixtures under `fixtures/`: tiny random Qwen3, Mixtral, Llama, Qwen2,
Mistral and Qwen3-MoE checkpoints saved by transformers, plus the reference outputs the Rust
golden tests compare against.

Run by hand, never in CI:  python3 scripts/make_fixtures.py [--only NAME ...]   (needs torch,
transformers, tokenizers, safetensors). Everything is seeded, so a rerun with the same library
versions rewrites byte-identical weights and references. `--only` rebuilds the named fixtures and
leaves the others as they are (a new fixture need not rewrite the old ones with newer versions).

Invariants (the Rust tests rely on them, see fixtures/README.md):
- references are computed from the SAVED directory loaded back in f32
  (`from_pretrained(dir, dtype=float32)`), never from the in-memory model, so a bf16 fixture's
  references are "bf16 weights, f32 math" with RoPE's inv_freq computed in f32;
- greedy continuations come from a plain loop of full forward passes (no KV cache), cross-checked
  against `model.generate`, and every greedy step's top1-top2 logit margin is above MIN_MARGIN so
  a correct engine cannot flip a choice through rounding;
- prompt token ids never contain a special-token id;
- scaled RoPE (llama3, YaRN) as loaded matches a float64 transcription of the formulas and
  differs from plain RoPE; a sliding window covers every case (prompt + greedy tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
QWEN3_TOKENIZER_DIR = Path(
    os.environ.get("QWEN3_TOKENIZER_DIR", REPO.parent / "shared" / "models" / "qwen3-tokenizer")
)

BLOCK_SIZE_FOR_TESTS = 16
NUM_GREEDY_TOKENS = 24
NUM_TEXT_GREEDY_TOKENS = 12
TOP_LOGITS = 50
# Greedy choices must be decisive: a correct engine differs from torch by ~1e-5 in f32.
MIN_MARGIN = 1e-3
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3's real ids: <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645.
QWEN3_NUM_BASE_TOKENS = 151643
QWEN3_EOS_IDS = [151645, 151643]
QWEN3_BOS_ID = 151643
TEXT_PROMPTS = ["Hello, world! 你好", "The quick brown fox jumps over the lazy dog."]
HELLO_WORLD_IDS = [9707, 11, 1879, 0, 220, 108386]

# Training text for the small byte-level BPE tokenizers (written for this script).
TOKENIZER_CORPUS = """\
The engine reads a batch of prompts, splits them into blocks of sixteen tokens, and keeps the
keys and values of every block in a cache on the device. When two requests share a prefix, the
second one finds the cached blocks by their hash and skips the work that was already done.
A scheduler decides, at every step, which sequences run: new prompts are prefilled while older
ones decode one token at a time. If the cache is full, the youngest running sequence is
preempted, its blocks are freed, and it waits until there is room to start again.

Small models are useful for testing. They are fast to build, cheap to run on a laptop, and their
outputs can be compared number by number with a reference written in another language. A model
with random weights still has all the moving parts: embeddings, attention with rotary position
embeddings, normalisation layers, a feed-forward network, and a head that turns hidden states
into logits over the vocabulary. Greedy decoding then picks the largest logit at each position.

On a quiet morning the river was grey and still. A heron stood in the shallow water near the
old stone bridge, waiting, while the baker across the road opened her shutters and set out
loaves of bread, jars of honey, and a basket of green apples. Children walked past on their way
to school, counting the boats, arguing about football, and laughing at a dog that chased its own
tail. By noon the sun had burned away the fog, and the market square was loud with voices.

Numbers matter too: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096 8192 65536.
Questions? Answers! Lists; colons: quotes "like this" and 'like that', (parentheses), [brackets],
{braces}, a-b-c, x_y_z, 3.14159, 2.71828, 100%, #tags, @names, and e-mail@example.com.
Mixture-of-experts models route every token to the two best experts out of eight, weight their
outputs by the router's softmax, and add the results. Tensor parallelism splits the attention
heads and the expert weights across devices, then sums the partial results with an all-reduce.
"""

ROUNDTRIP_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.\n\nNew paragraph, with  two spaces.",
    "Numbers 12345 and symbols ~!@#$%^&*()_+-=[]{}|;':\",./<>? and tabs\there.",
    "zzqx unseen wordz qwertyuiop",
]


@dataclass
class FixtureSpec:
    """One fixture directory: model dims, seed, checkpoint format and tokenizer kind."""

    name: str
    architecture: str  # a key of ARCHITECTURES
    config: dict
    seed: int
    dtype: torch.dtype
    tokenizer: str = "trained"  # "trained" (small BPE saved here) | "qwen3" (shared, not copied)
    config_form: str = "transformers5"  # "transformers5" (as saved) | "transformers4"
    max_shard_size: str | None = None  # None: one model.safetensors
    eos_as_list: bool = False
    sampling_defaults: dict = field(default_factory=dict)
    routing_reference: bool = False
    # More `len{n}` cases after the standard ones (long prompts for the attention kernels).
    extra_prompt_lengths: tuple[int, ...] = ()
    # Keys written into config.json after saving, as real checkpoints carry them (e.g. Qwen2.5's
    # `sliding_window` next to `use_sliding_window: false`, which transformers ignores).
    config_overrides: dict = field(default_factory=dict)
    # Draw every bias (Qwen2's q/k/v) from N(0, initializer_range): transformers zeroes them.
    random_biases: bool = False


COMMON = dict(
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    max_position_embeddings=512,
    attention_dropout=0.0,
    hidden_act="silu",
)

SPECS = [
    FixtureSpec(
        name="qwen3-tiny",
        architecture="Qwen3ForCausalLM",
        config=dict(
            COMMON,
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            intermediate_size=128,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1001,
        dtype=torch.float32,
        eos_as_list=True,
        sampling_defaults=dict(do_sample=True, temperature=0.6, top_p=0.95, top_k=20),
    ),
    FixtureSpec(
        name="qwen3-tiny-bf16",
        architecture="Qwen3ForCausalLM",
        config=dict(
            COMMON,
            vocab_size=512,
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=96,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1002,
        dtype=torch.bfloat16,
        config_form="transformers4",
        max_shard_size="100KB",
    ),
    FixtureSpec(
        name="qwen3-tiny-fullvocab",
        architecture="Qwen3ForCausalLM",
        config=dict(
            COMMON,
            vocab_size=151936,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=32,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            initializer_range=0.5,
        ),
        seed=1003,
        dtype=torch.bfloat16,
        tokenizer="qwen3",
        eos_as_list=True,
    ),
    # The real Qwen3 attention shape (Qwen3-0.6B: head_dim 128, 16 q / 8 kv heads, i.e. GQA
    # groups of 2) on a tiny model, so the CUDA engine tests run the tensor-core prefill and
    # flash-decoding kernels end to end (the fixtures above have head_dim 16 or 32, which only
    # the generic kernel serves). `len600` spans ten 64-row prefill tiles and two 512-key
    # decode splits (so the split-combine kernel runs too).
    FixtureSpec(
        name="qwen3-tiny-d128",
        architecture="Qwen3ForCausalLM",
        config=dict(
            COMMON,
            max_position_embeddings=1024,
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=128,
            intermediate_size=128,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1036,
        dtype=torch.bfloat16,
        extra_prompt_lengths=(600,),
    ),
    FixtureSpec(
        name="mixtral-tiny",
        architecture="MixtralForCausalLM",
        config=dict(
            COMMON,
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            num_local_experts=8,
            num_experts_per_tok=2,
            router_jitter_noise=0.0,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            initializer_range=0.3,
        ),
        seed=1014,
        dtype=torch.float32,
        routing_reference=True,
    ),
    FixtureSpec(
        name="mixtral-tiny-bf16",
        architecture="MixtralForCausalLM",
        config=dict(
            COMMON,
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            intermediate_size=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            router_jitter_noise=0.0,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            initializer_range=0.3,
        ),
        seed=1005,
        dtype=torch.bfloat16,
        routing_reference=True,
    ),
    # Llama 3 with `llama3` rope scaling at a tiny `original_max_position_embeddings` (64) and
    # theta 500000, so that with head_dim 16 the three frequency bands all occur: pair 0 keeps
    # its frequency (wavelength 6.3 < 64/4), pair 1 is smoothed (32.6, between 16 and 64) and
    # pairs 2..7 are divided by the factor 8 (> 64).
    FixtureSpec(
        name="llama-tiny",
        architecture="LlamaForCausalLM",
        config=dict(
            COMMON,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            initializer_range=0.3,
        ),
        seed=1121,
        dtype=torch.bfloat16,
    ),
    # Qwen2.5's shape of config (transformers-4 form, head_dim implied = hidden / heads = 16, a
    # `sliding_window` that `use_sliding_window: false` turns off) with random q/k/v biases;
    # one KV head (MQA), so tensor parallelism at 2 and 4 replicates it.
    FixtureSpec(
        name="qwen2-tiny",
        architecture="Qwen2ForCausalLM",
        config=dict(
            COMMON,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=96,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1102,
        dtype=torch.float32,
        config_form="transformers4",
        config_overrides={"use_sliding_window": False, "sliding_window": 32, "max_window_layers": 1},
        random_biases=True,
    ),
    # Mistral with a sliding window (80) longer than every reference sequence (prompt + greedy
    # tokens, at most 69), so windowed and full attention agree and an engine that clamps
    # `max_model_len` to the window still serves every case. An explicit head_dim (8 x 16 = 128
    # ≠ hidden 64), as Mistral-Nemo has.
    FixtureSpec(
        name="mistral-tiny",
        architecture="MistralForCausalLM",
        config=dict(
            COMMON,
            sliding_window=80,
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=16,
            intermediate_size=96,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            initializer_range=0.3,
        ),
        seed=1123,
        dtype=torch.float32,
    ),
    # Qwen3-MoE: layers 0 and 2 sparse, layer 1 dense through `mlp_only_layers`; routing
    # weights are the raw softmax probabilities (`norm_topk_prob: false`).
    FixtureSpec(
        name="qwen3-moe-tiny",
        architecture="Qwen3MoeForCausalLM",
        config=dict(
            COMMON,
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=96,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1104,
        dtype=torch.float32,
        routing_reference=True,
    ),
    # Qwen3-MoE in bf16: only layer 1 sparse through `decoder_sparse_step: 2`, 16 experts,
    # top-4, renormalised routing weights (`norm_topk_prob: true`), tied embeddings; config in
    # the transformers-4 form Qwen3-30B-A3B ships (`num_experts`, not `num_local_experts`).
    FixtureSpec(
        name="qwen3-moe-tiny-bf16",
        architecture="Qwen3MoeForCausalLM",
        config=dict(
            COMMON,
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_experts=16,
            num_experts_per_tok=4,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            mlp_only_layers=[],
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1105,
        dtype=torch.bfloat16,
        config_form="transformers4",
        routing_reference=True,
    ),
    # Qwen3 with YaRN (factor 4 over 32 original positions, as Qwen3's own long-context
    # recipe writes it) in the transformers-4 form: interpolated frequencies for all but the
    # fastest pairs, and cos/sin scaled by 0.1 ln 4 + 1.
    FixtureSpec(
        name="qwen3-yarn-tiny",
        architecture="Qwen3ForCausalLM",
        config=dict(
            COMMON,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            max_position_embeddings=128,
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            intermediate_size=128,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            initializer_range=0.3,
        ),
        seed=1106,
        dtype=torch.bfloat16,
        config_form="transformers4",
    ),
]

ARCHITECTURES = {
    "Qwen3ForCausalLM": (Qwen3Config, Qwen3ForCausalLM),
    "MixtralForCausalLM": (MixtralConfig, MixtralForCausalLM),
    "LlamaForCausalLM": (LlamaConfig, LlamaForCausalLM),
    "Qwen2ForCausalLM": (Qwen2Config, Qwen2ForCausalLM),
    "MistralForCausalLM": (MistralConfig, MistralForCausalLM),
    "Qwen3MoeForCausalLM": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
}


def fail(message: str) -> None:
    sys.exit(f"make_fixtures: {message}")


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def f32_list(t: torch.Tensor) -> list:
    """Exact f32 values as Python floats (json writes them losslessly)."""
    return t.detach().to(torch.float32).tolist()


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


def qwen3_chat_template() -> str:
    config = json.loads((QWEN3_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    return config["chat_template"]


def qwen3_split_pattern() -> str:
    """The pre-tokenizer regex of the real Qwen3 tokenizer, so the tiny one splits the same way."""
    config = json.loads((QWEN3_TOKENIZER_DIR / "tokenizer.json").read_text())
    split = config["pre_tokenizer"]["pretokenizers"][0]
    check(split["type"] == "Split", "unexpected Qwen3 pre_tokenizer layout")
    return split["pattern"]["Regex"]


def train_tiny_tokenizer(vocab_size: int, corpus_lines: list[str] | None = None) -> Tokenizer:
    """Byte-level BPE with Qwen2's pipeline; special tokens take the last three ids, as in Qwen.
    Trained on `corpus_lines` (default: TOKENIZER_CORPUS, the random-weight fixtures' text)."""
    if corpus_lines is None:
        corpus_lines = TOKENIZER_CORPUS.splitlines(keepends=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen3_split_pattern()), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    num_base_tokens = vocab_size - len(SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=num_base_tokens,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus_lines, trainer=trainer)
    check(
        tokenizer.get_vocab_size() == num_base_tokens,
        f"BPE training produced {tokenizer.get_vocab_size()} tokens, wanted {num_base_tokens}; "
        "add text to the corpus",
    )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    check(tokenizer.get_vocab_size() == vocab_size, "special tokens did not land at the end")
    for text in ROUNDTRIP_TEXTS:
        ids = tokenizer.encode(text).ids
        check(tokenizer.decode(ids) == text, f"tiny tokenizer does not round-trip {text!r}")
    return tokenizer


def write_tiny_tokenizer(directory: Path, tokenizer: Tokenizer) -> dict:
    """tokenizer.json + tokenizer_config.json (Qwen2 style); returns the special-token ids."""
    tokenizer.save(str(directory / "tokenizer.json"))
    special_ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    added_tokens_decoder = {
        str(special_ids[tok]): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": qwen3_chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 512,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json(directory / "tokenizer_config.json", tokenizer_config)
    return special_ids


def check_tokenizer_loads_in_transformers(directory: Path, tokenizer: Tokenizer) -> None:
    """AutoTokenizer must agree with the raw tokenizer.json and render the chat template."""
    hf = AutoTokenizer.from_pretrained(directory)
    for text in ROUNDTRIP_TEXTS + ["<|im_start|>user\nhi<|im_end|>\n"]:
        raw_ids = tokenizer.encode(text).ids
        hf_ids = hf(text, add_special_tokens=True)["input_ids"]
        check(raw_ids == hf_ids, f"AutoTokenizer and tokenizer.json disagree on {text!r}")
    check(hf.eos_token == "<|im_end|>" and hf.pad_token == "<|endoftext|>", "eos/pad tokens")
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    check(rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "chat template")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def dumps_readable(value, indent: int = 0) -> str:
    """JSON with objects spread over lines but lists of numbers on one line (compact)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            f"{inner}{json.dumps(k)}: {dumps_readable(v, indent + 2)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{inner}{dumps_readable(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def build_model(spec: FixtureSpec, special_ids: dict):
    config_kwargs = dict(spec.config)
    config_kwargs["bos_token_id"] = special_ids["<|endoftext|>"]
    config_kwargs["eos_token_id"] = special_ids["<|im_end|>"]
    config_kwargs["pad_token_id"] = None
    config_class, model_class = ARCHITECTURES[spec.architecture]
    config = config_class(**config_kwargs)
    torch.manual_seed(spec.seed)
    model = model_class(config)
    # transformers initialises every RMSNorm weight to exactly 1, which would hide a loader that
    # drops norm weights; draw them from [0.5, 1.5) instead. Biases start at 0 for the same
    # reason: draw them like the weights.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                check(spec.random_biases, f"{spec.name}: unexpected bias {name}")
                parameter.normal_(0.0, spec.config["initializer_range"])
    if spec.random_biases:
        biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
        check(len(biases) > 0, f"{spec.name}: random_biases but the model has none")
    model.eval()
    return model.to(spec.dtype)


def rewrite_config_as_transformers4(directory: Path) -> None:
    """The pre-5.0 config.json form most Hub checkpoints still ship: top-level `rope_theta`,
    and `rope_scaling` null for plain RoPE, else the other rope parameters (`rope_type` first,
    as Qwen's model cards write it)."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    rope = dict(config.pop("rope_parameters"))
    rope_type = rope.pop("rope_type", "default")
    theta = rope.pop("rope_theta")
    rope_scaling = None if rope_type == "default" else {"rope_type": rope_type, **rope}
    rewritten = {}
    for key, value in config.items():
        if key == "dtype":
            rewritten["torch_dtype"] = value
        elif key == "num_local_experts" and config["model_type"] == "qwen3_moe":
            rewritten["num_experts"] = value  # transformers 5 saves Qwen3-MoE's under Mixtral's name
        elif key == "layer_types":
            continue
        else:
            rewritten[key] = value
    rewritten["rope_theta"] = theta
    rewritten["rope_scaling"] = rope_scaling
    write_json(path, dict(sorted(rewritten.items())))


def apply_config_overrides(directory: Path, overrides: dict) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(overrides)
    write_json(path, dict(sorted(config.items())))


def write_generation_config(directory: Path, spec: FixtureSpec, special_ids: dict) -> None:
    if spec.tokenizer == "qwen3":
        eos = QWEN3_EOS_IDS
    else:
        eos_id = special_ids["<|im_end|>"]
        eos = [eos_id] if spec.eos_as_list else eos_id
    generation_config = {"bos_token_id": special_ids["<|endoftext|>"], "eos_token_id": eos}
    generation_config.update(spec.sampling_defaults)
    generation_config["transformers_version"] = transformers.__version__
    write_json(directory / "generation_config.json", generation_config)


def safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def saved_tensors(directory: Path) -> dict:
    """name -> (shape, dtype) of every tensor in the directory's safetensors files."""
    tensors = {}
    for path in safetensors_files(directory):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                tensors[key] = (list(tensor_slice.get_shape()), tensor_slice.get_dtype())
    return tensors


def load_saved_tensor(directory: Path, name: str) -> torch.Tensor:
    for path in safetensors_files(directory):
        with safe_open(str(path), "pt") as f:
            if name in f.keys():
                return f.get_tensor(name).to(torch.float32)
    fail(f"{name} is not in {directory}")


def load_back(directory: Path, spec: FixtureSpec, original) -> torch.nn.Module:
    """The saved checkpoint in f32; checks it holds exactly the weights we built."""
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    check(model.dtype == torch.float32, "reference model must run in f32")
    wanted_rope = spec.config["rope_parameters"]
    loaded_rope = model.config.rope_parameters
    for key, value in wanted_rope.items():
        got = loaded_rope.get(key)
        check(got == value, f"{spec.name}: loaded rope {key} {got}, wanted {value}: form misread")
    theta = loaded_rope["rope_theta"]
    # RoPE frequencies must be computed in f32 (not rounded through the checkpoint dtype).
    head_dim = getattr(model.config, "head_dim", None)
    head_dim = head_dim or model.config.hidden_size // model.config.num_attention_heads
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    rotary = model.model.rotary_emb
    check(rotary.inv_freq.dtype == torch.float32, f"{spec.name}: inv_freq dtype")
    if wanted_rope["rope_type"] == "default":
        check(torch.equal(rotary.inv_freq, inv_freq), f"{spec.name}: inv_freq")
        check(rotary.attention_scaling == 1.0, f"{spec.name}: attention scaling")
    else:
        # The scaled frequencies against a plain float64 transcription of the formulas, and
        # they must really differ from plain RoPE's (else the fixture tests nothing).
        want_inv_freq, want_scaling = scaled_rope_reference(wanted_rope, head_dim)
        got = rotary.inv_freq.to(torch.float64)
        check(torch.allclose(got, want_inv_freq, rtol=1e-6, atol=0), f"{spec.name}: inv_freq")
        check(not torch.equal(rotary.inv_freq, inv_freq), f"{spec.name}: scaling changes nothing")
        scaling = rotary.attention_scaling
        check(abs(scaling - want_scaling) <= 1e-6, f"{spec.name}: attention scaling {scaling}")
    expected = {k: v.to(torch.float32) for k, v in original.state_dict().items()}
    loaded = model.state_dict()
    check(expected.keys() == loaded.keys(), f"{spec.name}: parameter names changed on reload")
    for name, value in expected.items():
        check(torch.equal(loaded[name], value), f"{spec.name}: {name} changed on save/reload")
    return model


def scaled_rope_reference(rope: dict, head_dim: int) -> tuple[torch.Tensor, float]:
    """`llama3` / `yarn` inverse frequencies (float64) and cos/sin scaling, written out from
    the Llama 3.1 reference code and the YaRN paper (transformers' defaults: beta_fast 32,
    beta_slow 1, truncated correction range, attention factor 0.1 ln(factor) + 1)."""
    theta, factor = rope["rope_theta"], rope["factor"]
    original = rope["original_max_position_embeddings"]
    pairs = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    plain = 1.0 / theta**pairs
    if rope["rope_type"] == "llama3":
        low, high = rope["low_freq_factor"], rope["high_freq_factor"]
        out = []
        for f in plain.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < original / high:
                out.append(f)
            elif wavelen > original / low:
                out.append(f / factor)
            else:
                smooth = (original / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return torch.tensor(out, dtype=torch.float64), 1.0
    check(rope["rope_type"] == "yarn", f"no reference for rope type {rope['rope_type']}")

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(32)), 0)
    high = min(math.ceil(correction_dim(1)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv_freq = plain / factor * ramp + plain * (1 - ramp)
    return inv_freq, 0.1 * math.log(factor) + 1.0


def rope_reference(model) -> dict:
    """What the engine's rope must reproduce: transformers' f32 `inv_freq` and the factor it
    multiplies cos and sin by."""
    rotary = model.model.rotary_emb
    return {
        "rope_type": model.config.rope_parameters["rope_type"],
        "inv_freq": f32_list(rotary.inv_freq),
        "attention_scaling": float(rotary.attention_scaling),
    }


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def make_prompts(spec: FixtureSpec, special_ids: dict) -> list[tuple[str, list[int]]]:
    """Lengths around the test block size, plus two prompts sharing a 32-token prefix."""
    vocab_size = spec.config["vocab_size"]
    if spec.tokenizer == "qwen3":
        allowed = list(range(QWEN3_NUM_BASE_TOKENS))  # no added or unused ids
    else:
        special = set(special_ids.values())
        allowed = [i for i in range(vocab_size) if i not in special]
    rng = random.Random(spec.seed)

    def draw(n: int) -> list[int]:
        return [rng.choice(allowed) for _ in range(n)]

    prompts = [(f"len{n}", draw(n)) for n in (1, 15, 16, 17, 40)]
    shared_prefix = draw(2 * BLOCK_SIZE_FOR_TESTS)
    prompts.append(("shared_a", shared_prefix + draw(5)))
    prompts.append(("shared_b", shared_prefix + draw(13)))
    prompts += [(f"len{n}", draw(n)) for n in spec.extra_prompt_lengths]
    return prompts


@torch.no_grad()
def last_logits(model, token_ids: list[int]) -> torch.Tensor:
    input_ids = torch.tensor([token_ids], dtype=torch.long)
    output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return output.logits[0, -1].to(torch.float32)


def top2_margin(logits: torch.Tensor) -> float:
    top2 = torch.topk(logits, 2).values
    return float(top2[0] - top2[1])


@torch.no_grad()
def greedy(model, prompt: list[int], num_tokens: int) -> tuple[list[int], float]:
    """Plain greedy loop of full forward passes (no KV cache); returns tokens and min margin."""
    ids = list(prompt)
    new_tokens, min_margin = [], float("inf")
    for _ in range(num_tokens):
        logits = last_logits(model, ids)
        min_margin = min(min_margin, top2_margin(logits))
        token = int(torch.argmax(logits))
        new_tokens.append(token)
        ids.append(token)
    return new_tokens, min_margin


@torch.no_grad()
def check_against_generate(model, prompt: list[int], expected: list[int], what: str) -> None:
    input_ids = torch.tensor([prompt], dtype=torch.long)
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=len(expected),
        min_new_tokens=len(expected),
        eos_token_id=None,
    )
    generated = output[0, len(prompt) :].tolist()
    check(generated == expected, f"{what}: generate {generated} != greedy loop {expected}")


# Where each MoE architecture saves its router and experts: (block name in the layer, expert
# weight names for gate, up, down).
MOE_LAYOUTS = {
    "MixtralForCausalLM": ("block_sparse_moe", ("w1", "w3", "w2")),
    "Qwen3MoeForCausalLM": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}


def first_sparse_layer(spec: FixtureSpec) -> int:
    """transformers' rule: layer i is sparse unless listed in `mlp_only_layers`, and only when
    (i + 1) is a multiple of `decoder_sparse_step` (Mixtral: every layer)."""
    config = spec.config
    step, dense = config.get("decoder_sparse_step", 1), config.get("mlp_only_layers", [])
    for layer in range(config["num_hidden_layers"]):
        if layer not in dense and (layer + 1) % step == 0:
            return layer
    fail(f"{spec.name}: no sparse layer")


def check_layer_kinds(spec: FixtureSpec, directory: Path) -> None:
    """Qwen3-MoE: the saved checkpoint has experts exactly in the layers the rule names, and
    both kinds of layer occur."""
    tensors = saved_tensors(directory)
    config = spec.config
    step, dense = config["decoder_sparse_step"], config["mlp_only_layers"]
    kinds = []
    for layer in range(config["num_hidden_layers"]):
        sparse = layer not in dense and (layer + 1) % step == 0
        has_router = f"model.layers.{layer}.mlp.gate.weight" in tensors
        has_dense = f"model.layers.{layer}.mlp.gate_proj.weight" in tensors
        check(has_router == sparse and has_dense != sparse, f"{spec.name}: layer {layer} kind")
        kinds.append(sparse)
    check(any(kinds) and not all(kinds), f"{spec.name}: wants both dense and sparse layers")


@torch.no_grad()
def routing_reference(model, spec: FixtureSpec, directory: Path, prompt: list[int]) -> dict:
    """The first sparse layer's MoE block on the real inputs it sees for the first 4 tokens of
    `prompt` (Mixtral: layer 0)."""
    layer = first_sparse_layer(spec)
    block, (gate_name, up_name, down_name) = MOE_LAYOUTS[spec.architecture]
    moe = model.model.layers[layer].mlp
    captured = []
    hook = moe.register_forward_pre_hook(lambda _module, args: captured.append(args[0].clone()))
    last_logits(model, prompt)
    hook.remove()
    hidden_states = captured[0][0, :4].to(torch.float32)  # [4, hidden]
    router_logits, topk_weights, topk_ids = moe.gate(hidden_states)
    moe_output = moe(hidden_states[None])[0]

    # Naive reference from the tensors as SAVED (per-expert w1/w2/w3): checks that the saved
    # layout and transformers' fused in-memory layout describe the same computation.
    prefix = f"model.layers.{layer}.{block}"
    gate = load_saved_tensor(directory, f"{prefix}.gate.weight")
    check(torch.allclose(hidden_states @ gate.T, router_logits, atol=1e-5), "router logits")
    naive = torch.zeros_like(hidden_states)
    for token in range(hidden_states.shape[0]):
        x = hidden_states[token]
        for slot in range(topk_ids.shape[1]):
            expert = int(topk_ids[token, slot])
            w1, w2, w3 = (
                load_saved_tensor(directory, f"{prefix}.experts.{expert}.{w}.weight")
                for w in (gate_name, down_name, up_name)
            )
            expert_out = w2 @ (torch.nn.functional.silu(w1 @ x) * (w3 @ x))
            naive[token] += topk_weights[token, slot] * expert_out
    check(torch.allclose(naive, moe_output, atol=1e-4, rtol=1e-5), "naive MoE != transformers")

    probs = torch.softmax(router_logits, dim=-1)
    sorted_probs = torch.sort(probs, dim=-1, descending=True).values
    top_k = topk_ids.shape[1]
    min_topk_gap = float((sorted_probs[:, top_k - 1] - sorted_probs[:, top_k]).min())
    check(min_topk_gap > MIN_MARGIN, f"expert choice not decisive (gap {min_topk_gap})")
    if spec.config.get("norm_topk_prob", True):
        sums = topk_weights.sum(dim=-1)
        check(torch.allclose(sums, torch.ones_like(sums), atol=1e-6), "weights renormalised")
    else:
        top_probs = torch.gather(probs, 1, topk_ids)
        check(torch.allclose(topk_weights, top_probs, atol=1e-7), "weights are raw softmax")
    reference = {
        "source": f"input of model.layers.{layer} MoE block (post_attention_layernorm output) "
        "for the first 4 tokens of case len17",
    }
    if layer != 0 or spec.architecture != "MixtralForCausalLM":
        reference["layer"] = layer
        reference["prefix"] = prefix
    return reference | {
        "hidden_states": f32_list(hidden_states),
        "router_logits": f32_list(router_logits),
        "topk_ids": topk_ids.tolist(),
        "topk_weights": f32_list(topk_weights),
        "moe_output": f32_list(moe_output),
        "min_topk_gap": min_topk_gap,
    }


def compute_references(model, spec: FixtureSpec, directory: Path, special_ids: dict) -> dict:
    cases = []
    window = spec.config.get("sliding_window")
    for name, prompt in make_prompts(spec, special_ids):
        if window is not None:
            # Within the window, windowed attention is full attention: the engine may clamp
            # `max_model_len` to it and must still serve every case.
            total = len(prompt) + NUM_GREEDY_TOKENS
            check(total <= window, f"{spec.name}/{name}: {total} tokens exceed the window")
        logits = last_logits(model, prompt)
        top = torch.topk(logits, TOP_LOGITS)
        greedy_ids, margin = greedy(model, prompt, NUM_GREEDY_TOKENS)
        check(margin > MIN_MARGIN, f"{spec.name}/{name}: greedy margin {margin:.2e} too small")
        check_against_generate(model, prompt, greedy_ids, f"{spec.name}/{name}")
        case = {"name": name, "prompt_token_ids": prompt}
        if spec.tokenizer != "qwen3":
            case["last_logits"] = f32_list(logits)
        case["last_logits_top"] = {"ids": top.indices.tolist(), "values": f32_list(top.values)}
        case["greedy_token_ids"] = greedy_ids
        case["greedy_min_margin"] = margin
        cases.append(case)

    reference = {
        "model": spec.name,
        "architecture": spec.architecture,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "block_size_for_tests": BLOCK_SIZE_FOR_TESTS,
        "cases": cases,
    }
    if spec.tokenizer == "qwen3":
        reference["text_cases"] = text_cases(model, spec)
    if spec.routing_reference:
        len17 = next(case["prompt_token_ids"] for case in cases if case["name"] == "len17")
        reference["routing"] = routing_reference(model, spec, directory, len17)
    if spec.config["rope_parameters"]["rope_type"] != "default":
        reference["rope"] = rope_reference(model)
    return reference


def text_cases(model, spec: FixtureSpec) -> list[dict]:
    tokenizer = Tokenizer.from_file(str(QWEN3_TOKENIZER_DIR / "tokenizer.json"))
    hello = tokenizer.encode(TEXT_PROMPTS[0]).ids
    check(hello == HELLO_WORLD_IDS, f"Qwen3 tokenizer gives {hello} for {TEXT_PROMPTS[0]!r}")
    cases = []
    for prompt in TEXT_PROMPTS:
        prompt_ids = tokenizer.encode(prompt).ids
        greedy_ids, margin = greedy(model, prompt_ids, NUM_TEXT_GREEDY_TOKENS)
        check(margin > MIN_MARGIN, f"{spec.name}/{prompt!r}: greedy margin {margin:.2e}")
        check_against_generate(model, prompt_ids, greedy_ids, f"{spec.name}/{prompt!r}")
        cases.append(
            {
                "prompt": prompt,
                "prompt_token_ids": prompt_ids,
                "greedy_token_ids": greedy_ids,
                "greedy_text": tokenizer.decode(greedy_ids, skip_special_tokens=True),
                "greedy_min_margin": margin,
            }
        )
    return cases


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def make_fixture(spec: FixtureSpec, tiny_tokenizer: Tokenizer) -> dict:
    directory = FIXTURES / spec.name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)

    if spec.tokenizer == "trained":
        check(tiny_tokenizer.get_vocab_size() == spec.config["vocab_size"], "vocab mismatch")
        special_ids = write_tiny_tokenizer(directory, tiny_tokenizer)
        check_tokenizer_loads_in_transformers(directory, tiny_tokenizer)
    else:
        special_ids = dict(zip(SPECIAL_TOKENS, range(QWEN3_BOS_ID, QWEN3_BOS_ID + 3)))

    original = build_model(spec, special_ids)
    save_kwargs = {} if spec.max_shard_size is None else {"max_shard_size": spec.max_shard_size}
    original.save_pretrained(directory, **save_kwargs)
    if spec.config_form == "transformers4":
        rewrite_config_as_transformers4(directory)
    if spec.config_overrides:
        apply_config_overrides(directory, spec.config_overrides)
    if spec.architecture == "Qwen3MoeForCausalLM":
        check_layer_kinds(spec, directory)
    write_generation_config(directory, spec, special_ids)
    if spec.max_shard_size is not None:
        check(len(safetensors_files(directory)) >= 2, f"{spec.name}: expected several shards")
        check((directory / "model.safetensors.index.json").exists(), "missing shard index")

    model = load_back(directory, spec, original)
    reference = compute_references(model, spec, directory, special_ids)
    (directory / "reference.json").write_text(dumps_readable(reference) + "\n")

    tensors = saved_tensors(directory)
    margins = [case["greedy_min_margin"] for case in reference["cases"]]
    margins += [case["greedy_min_margin"] for case in reference.get("text_cases", [])]
    return {
        "name": spec.name,
        "params": sum(torch.Size(shape).numel() for shape, _ in tensors.values()),
        "files": {p.name: p.stat().st_size for p in sorted(directory.iterdir())},
        "min_margin": min(margins),
        "min_topk_gap": reference.get("routing", {}).get("min_topk_gap"),
        "tensors": tensors,
    }


def print_summary(results: list[dict]) -> None:
    print(f"\n{'fixture':<24}{'params':>10}{'bytes':>11}{'min margin':>12}{'topk gap':>10}")
    for r in results:
        gap = "" if r["min_topk_gap"] is None else f"{r['min_topk_gap']:.3g}"
        total = sum(r["files"].values())
        print(f"{r['name']:<24}{r['params']:>10}{total:>11}{r['min_margin']:>12.3g}{gap:>10}")
    print()
    for r in results:
        print(f"{r['name']}: " + ", ".join(f"{k} {v}" for k, v in r["files"].items()))
    total = sum(sum(r["files"].values()) for r in results)
    print(f"\nfixtures/ total: {total} bytes")
    for r in results:
        if r["name"] in ("qwen3-tiny", "qwen3-tiny-bf16", "mixtral-tiny"):
            print(f"\n{r['name']} tensors (layer 0 and globals):")
            for key, (shape, dtype) in sorted(r["tensors"].items()):
                if ".layers." not in key or ".layers.0." in key:
                    print(f"  {key} {shape} {dtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [spec.name for spec in SPECS]
    parser.add_argument(
        "--only", nargs="+", choices=names, metavar="NAME", help=f"one or more of {names}"
    )
    args = parser.parse_args()
    check(
        (QWEN3_TOKENIZER_DIR / "tokenizer.json").exists(),
        f"no Qwen3 tokenizer at {QWEN3_TOKENIZER_DIR}; set QWEN3_TOKENIZER_DIR",
    )
    torch.use_deterministic_algorithms(True)
    tiny_tokenizer = train_tiny_tokenizer(512)
    results = []
    for spec in SPECS:
        if args.only and spec.name not in args.only:
            continue
        print(f"building {spec.name} ...", flush=True)
        results.append(make_fixture(spec, tiny_tokenizer))
    print_summary(results)


if __name__ == "__main__":
    main()
