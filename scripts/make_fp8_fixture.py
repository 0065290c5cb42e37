#!/usr/bin/env python3
"""Make fixtures/qwen3-trained-fp8: fixtures/qwen3-trained (bf16) as an FP8 checkpoint in the
layout of Qwen's official Qwen3-*-FP8 (quantization_config.quant_method = "fp8", e4m3,
weight_block_size [128, 128]).

Every linear weight `X.weight` [N, K] (q/k/v/o_proj, gate/up/down_proj) becomes
  X.weight           F8_E4M3 [N, K]   q = (w / s).to(torch.float8_e4m3fn)  (torch's own rounding)
  X.weight_scale_inv F32 [ceil(N/128), ceil(K/128)]  s = amax(|w| over the block) / 448
so that w ~ q.float() * s block by block. Embeddings and norms stay bf16 (the model is tied: no
lm_head.weight), as in Qwen's checkpoints.

reference_fp8.json records, from torch:
- `weights`: for a few linear weights, some whole rows of q.float() * s (the dequantized values
  the engine's fp8_g128 weights must reproduce exactly);
- `perplexity`: transformers' perplexity on ../qwen3-trained/eval.jsonl of the model whose
  linear weights are those dequantized values (f32 math, eager attention), computed as
  scripts/make_trained_fixture.py computes the bf16 reference.

Run with the fixtures venv (torch, transformers, safetensors):
  /root/.cache/nanovllm/fixtures-venv/bin/python scripts/make_fp8_fixture.py
Seeded by nothing: the conversion is deterministic. Writes only fixtures/qwen3-trained-fp8/.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_trained_fixture import line_nlls, perplexity  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "fixtures" / "qwen3-trained"
TARGET = ROOT / "fixtures" / "qwen3-trained-fp8"
BLOCK = 128
E4M3_MAX = 448.0
LINEAR_SUFFIXES = tuple(
    f"{p}.weight" for p in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
)
COPIED = ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]
# (weight, rows) recorded in reference_fp8.json.
REFERENCE_ROWS = [
    ("model.layers.0.self_attn.q_proj.weight", [0, 127, 128, 255]),
    ("model.layers.1.mlp.down_proj.weight", [0, 200]),
    ("model.layers.1.self_attn.k_proj.weight", [5]),
]


def quantize_blockwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q float8_e4m3fn [N, K], s f32 [ceil(N/128), ceil(K/128)])."""
    n, k = w.shape
    rn, rk = math.ceil(n / BLOCK), math.ceil(k / BLOCK)
    padded = torch.zeros(rn * BLOCK, rk * BLOCK, dtype=torch.float32)
    padded[:n, :k] = w.float()
    blocks = padded.view(rn, BLOCK, rk, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    s = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (blocks / s[:, None, :, None]).view(rn * BLOCK, rk * BLOCK)[:n, :k]
    return q.to(torch.float8_e4m3fn), s


def dequantize_blockwise(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    full = s.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]
    return q.float() * full


def main() -> None:
    tensors = load_file(SOURCE / "model.safetensors")
    out, dequantized = {}, {}
    for name, w in sorted(tensors.items()):
        if name.endswith(LINEAR_SUFFIXES):
            q, s = quantize_blockwise(w)
            out[name] = q
            out[f"{name}_scale_inv"] = s
            dequantized[name] = dequantize_blockwise(q, s)
        else:
            out[name] = w
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir()
    save_file(out, TARGET / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((SOURCE / "config.json").read_text())
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
    }
    (TARGET / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in COPIED:
        shutil.copy(SOURCE / f, TARGET / f)

    # The model with the dequantized FP8 weights, in f32 as the bf16 reference is computed.
    model = AutoModelForCausalLM.from_pretrained(
        SOURCE, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    state = model.state_dict()
    for name, w in dequantized.items():
        state[name].copy_(w)
    eval_ids = [
        json.loads(line)["prompt_token_ids"]
        for line in (SOURCE / "eval.jsonl").read_text().splitlines()
    ]
    sums = line_nlls(model, eval_ids)
    ppl = perplexity(sums, eval_ids)
    bf16_ppl = json.loads((SOURCE / "reference_perplexity.json").read_text())["perplexity"]
    reference = {
        "model": "qwen3-trained-fp8",
        "made_from": "fixtures/qwen3-trained/model.safetensors by scripts/make_fp8_fixture.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "weights": [
            {"name": name, "row": r, "values": dequantized[name][r].tolist()}
            for name, rows in REFERENCE_ROWS
            for r in rows
        ],
        "perplexity": ppl,
        "perplexity_bf16": bf16_ppl,
        "tokens_scored": sum(len(ids) - 1 for ids in eval_ids),
        "eval": "../qwen3-trained/eval.jsonl",
    }
    (TARGET / "reference_fp8.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"perplexity with FP8 weights {ppl:.4f} (bf16: {bf16_ppl:.4f}, ratio {ppl / bf16_ppl:.5f})")
    for p in sorted(TARGET.iterdir()):
        print(f"  {p.name} {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
