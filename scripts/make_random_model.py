#!/usr/bin/env python3
"""Saves a random-weight Hugging Face model of a given config's shape, for benchmarks
against other engines that need real checkpoint files (e.g. llama.cpp through
convert_hf_to_gguf.py). Needs torch and transformers; run by hand, never in CI.

    python3 scripts/make_random_model.py configs/qwen3-0.6b.json /tmp/qwen06/model \
        --tokenizer ../shared/models/qwen3-tokenizer
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="a config.json of the model's shape")
    ap.add_argument("out", type=Path, help="output model directory")
    ap.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json to copy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    raw = json.loads(args.config.read_text())
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(args.out)
    if args.tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(args.tokenizer / name, args.out / name)
    print(f"saved {sum(p.numel() for p in model.parameters()):,} parameters to {args.out}")


if __name__ == "__main__":
    main()
