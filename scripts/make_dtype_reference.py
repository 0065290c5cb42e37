#!/usr/bin/env python3
"""Write `fixtures/qwen3-tiny/reference_bf16_weights.json`: the reference of `--dtype bfloat16`
on an f32 checkpoint (see fixtures/README.md, *Weight dtype reference*).

The f32 fixture is loaded back in f32, every parameter is rounded to bf16 (round to nearest
even, torch's `.to(torch.bfloat16)`) and widened back, and the same cases as `reference.json`
run in f32 math: "bf16 weights, f32 math", what nanovllm's CPU backend computes with
`--dtype bfloat16`. Run by hand:  python3 scripts/make_dtype_reference.py  (torch, transformers).
"""

import json
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "qwen3-tiny"


def main() -> None:
    reference = json.loads((FIXTURE / "reference.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    cases = []
    worst = 0.0
    with torch.no_grad():
        for case in reference["cases"]:
            ids = torch.tensor([case["prompt_token_ids"]])
            logits = model(ids).logits[0, -1]
            f32 = torch.tensor(case["last_logits"])
            worst = max(worst, (logits - f32).abs().max().item())
            cases.append(
                {
                    "name": case["name"],
                    "prompt_token_ids": case["prompt_token_ids"],
                    "last_logits": [float(x) for x in logits.tolist()],
                }
            )
    out = {
        "model": "qwen3-tiny",
        "weights_dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "max_abs_diff_from_f32_reference": worst,
        "cases": cases,
    }
    (FIXTURE / "reference_bf16_weights.json").write_text(json.dumps(out) + "\n")
    print(f"wrote {FIXTURE / 'reference_bf16_weights.json'}; bf16 vs f32 logits differ by up to {worst:.4f}")


if __name__ == "__main__":
    main()
