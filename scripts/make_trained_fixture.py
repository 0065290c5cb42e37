#!/usr/bin/env python3
"""Build `fixtures/qwen3-trained/`: a tiny Qwen3 trained on this repository's own prose and Rust
sources, a held-out evaluation set, and transformers' perplexity on it as the reference that
`nanovllm perplexity` must reproduce. Quantization tests measure their error against it: a
random-weight model's near-tied logits flip under any noise, a trained model's do not.

Run by hand, never in CI:  python3 scripts/make_trained_fixture.py [--steps N] [--out DIR]
(needs torch, transformers, tokenizers, safetensors, git, and the Qwen3 tokenizer that
make_fixtures.py needs for its split regex and chat template). The text is read from the pinned
commit TEXT_COMMIT, not from the work tree, so later edits to the docs do not change the fixture.
About 11 minutes on the project's shared 2-core machine (646 s; fixtures/README.md has the log).

Invariants (fixtures/README.md states them for the Rust tests):
- training and evaluation text share no file: EVAL_FILES are excluded from training and from the
  tokenizer's training text;
- everything is seeded and runs with torch's deterministic algorithms and NUM_THREADS threads, so
  a rerun with the same library versions and thread count rewrites the same bytes;
- the reference is computed from the SAVED bf16 weights loaded back in f32
  (`from_pretrained(dir, dtype=float32)`, eager attention), never from the f32 training weights;
- perplexity = exp(mean over every scored token of -log p(token | the previous tokens of its
  line)); the first token of each line is not scored (vLLM's prompt_logprobs convention);
- every eval line holds 2..=MAX_EVAL_LINE_TOKENS tokens and no special token;
- every linear layer's in-features (hidden 256, heads x head_dim 256, intermediate 768) is a
  multiple of 256, so Q8_0 (32) and Q4_K (256) blocks tile every row.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import subprocess
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from make_fixtures import (
    FIXTURES,
    REPO,
    SPECIAL_TOKENS,
    check,
    check_tokenizer_loads_in_transformers,
    dumps_readable,
    saved_tensors,
    train_tiny_tokenizer,
    write_json,
    write_tiny_tokenizer,
)

NAME = "qwen3-trained"
# The commit whose files are the text (this repository's own, Apache-2.0, see fixtures/README.md).
TEXT_COMMIT = "105f1fd5ca2eb6f99115920a87f4653fbf33f637"
TRAIN_PROSE = ["README.md", "docs/ARCHITECTURE.md"]
TRAIN_CODE_PREFIX = "crates/"  # every *.rs file under crates/ except the held-out ones
# Held out: one prose document and one crate's sources; no training text comes from them.
EVAL_FILES_PROSE = ["docs/PERFORMANCE.md"]
EVAL_CODE_PREFIX = "crates/nanovllm-scheduler/"

SEED = 18
NUM_THREADS = 2
VOCAB_SIZE = 2048
SEQ_LEN = 256
BATCH_SIZE = 8
STEPS = 240
WARMUP_STEPS = 12
PEAK_LR = 3e-3
MIN_LR = 3e-4
WEIGHT_DECAY = 0.1
EVAL_EVERY = 40
NUM_EVAL_LINES = 24
MAX_EVAL_LINE_TOKENS = 256

CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    tie_word_embeddings=True,
    attention_bias=False,
    attention_dropout=0.0,
    hidden_act="silu",
    initializer_range=0.02,
    use_cache=True,
)


def git_text(path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "show", f"{TEXT_COMMIT}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def git_files() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", TEXT_COMMIT],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(out.splitlines())


def corpus_files() -> tuple[list[str], list[str]]:
    """(training files, held-out files), disjoint, in a fixed order."""
    files = git_files()
    code = [f for f in files if f.startswith(TRAIN_CODE_PREFIX) and f.endswith(".rs")]
    eval_code = [f for f in code if f.startswith(EVAL_CODE_PREFIX)]
    train = TRAIN_PROSE + [f for f in code if f not in eval_code]
    held_out = EVAL_FILES_PROSE + eval_code
    check(not set(train) & set(held_out), "training and eval files overlap")
    for f in TRAIN_PROSE + EVAL_FILES_PROSE:
        check(f in files, f"{f} is not in commit {TEXT_COMMIT}")
    return train, held_out


def training_tokens(tokenizer, files: list[str], eot_id: int) -> torch.Tensor:
    """Every training file's tokens, each file followed by <|endoftext|>, in one stream."""
    ids: list[int] = []
    for f in files:
        ids += tokenizer.encode(git_text(f)).ids + [eot_id]
    return torch.tensor(ids, dtype=torch.long)


def eval_lines(tokenizer, files: list[str]) -> list[dict]:
    """Held-out text cut at line boundaries into chunks of at most MAX_EVAL_LINE_TOKENS tokens
    (each chunk tokenized on its own), alternating prose and code files so both kinds count."""
    chunks_per_file = []
    for f in files:
        chunks, current = [], ""
        for line in git_text(f).splitlines(keepends=True):
            candidate = current + line
            if current and len(tokenizer.encode(candidate).ids) > MAX_EVAL_LINE_TOKENS:
                chunks.append(current)
                current = line
            else:
                current = candidate
        if current:
            chunks.append(current)
        chunks_per_file.append((f, chunks))
    prose = [(f, c) for f, cs in chunks_per_file if f.endswith(".md") for c in cs]
    code = [(f, c) for f, cs in chunks_per_file if f.endswith(".rs") for c in cs]
    lines = []
    while len(lines) < NUM_EVAL_LINES and (prose or code):
        for source in (prose, code):
            if source and len(lines) < NUM_EVAL_LINES:
                f, text = source.pop(0)
                ids = tokenizer.encode(text).ids
                check(2 <= len(ids) <= MAX_EVAL_LINE_TOKENS, f"eval chunk of {len(ids)} tokens")
                lines.append({"file": f, "text": text, "prompt_token_ids": ids})
    check(len(lines) == NUM_EVAL_LINES, "not enough held-out text")
    special = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    for line in lines:
        check(not special & set(line["prompt_token_ids"]), "special token in an eval line")
    return lines


def line_nlls(model, lines: list[list[int]]) -> list[float]:
    """Per line: the sum of -log p(token_i | tokens_<i) over i >= 1, in f64."""
    sums = []
    with torch.no_grad():
        for ids in lines:
            x = torch.tensor([ids])
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            token_lp = logprobs.gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
            sums.append(-token_lp.double().sum().item())
    return sums


def perplexity(sums: list[float], lines: list[list[int]]) -> float:
    return math.exp(sum(sums) / sum(len(ids) - 1 for ids in lines))


def learning_rate(step: int, steps: int) -> float:
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def train(model, tokens: torch.Tensor, eval_ids: list[list[int]], steps: int) -> list[dict]:
    """AdamW on random SEQ_LEN windows of the token stream; returns the loss curve."""
    generator = torch.Generator().manual_seed(SEED)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=PEAK_LR,
        betas=(0.9, 0.95),
    )
    curve, recent, start = [], [], time.time()

    def record(step: int) -> None:
        model.eval()
        eval_loss = math.log(perplexity(line_nlls(model, eval_ids), eval_ids))
        model.train()
        train_loss = sum(recent) / len(recent) if recent else None  # JSON null, not NaN
        recent.clear()
        curve.append({"step": step, "train_loss": train_loss, "eval_loss": eval_loss})
        shown = "-" if train_loss is None else f"{train_loss:.3f}"
        print(
            f"step {step:4d}  train {shown:>5}  eval {eval_loss:.3f}  "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )

    model.train()
    record(0)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        starts = torch.randint(0, len(tokens) - SEQ_LEN - 1, (BATCH_SIZE,), generator=generator)
        batch = torch.stack([tokens[s : s + SEQ_LEN + 1] for s in starts.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent.append(loss.item())
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            record(step + 1)
    model.eval()
    return curve


def build_model(special_ids: dict) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        **CONFIG,
        bos_token_id=special_ids["<|endoftext|>"],
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=None,
    )
    torch.manual_seed(SEED)
    return Qwen3ForCausalLM(config).to(torch.float32)


def greedy_sample(model, tokenizer, prompt: str, num_tokens: int) -> str:
    ids = tokenizer.encode(prompt).ids
    with torch.no_grad():
        for _ in range(num_tokens):
            x = torch.tensor([ids])
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
            ids.append(int(logits[0, -1].argmax()))
    return tokenizer.decode(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (a quick check)")
    parser.add_argument("--out", type=Path, default=FIXTURES / NAME, help="output directory")
    args = parser.parse_args()
    began = time.time()
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    random.seed(SEED)

    train_files, held_out = corpus_files()
    train_lines = [line for f in train_files for line in git_text(f).splitlines(keepends=True)]
    tokenizer = train_tiny_tokenizer(VOCAB_SIZE, train_lines)
    directory = args.out
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    special_ids = write_tiny_tokenizer(directory, tokenizer)
    check_tokenizer_loads_in_transformers(directory, tokenizer)

    tokens = training_tokens(tokenizer, train_files, special_ids["<|endoftext|>"])
    lines = eval_lines(tokenizer, held_out)
    eval_ids = [line["prompt_token_ids"] for line in lines]
    print(
        f"{len(train_files)} training files, {len(tokens)} tokens; "
        f"{len(lines)} eval lines, {sum(len(i) - 1 for i in eval_ids)} scored tokens",
        flush=True,
    )

    model = build_model(special_ids)
    curve = train(model, tokens, eval_ids, args.steps)
    model.to(torch.bfloat16).save_pretrained(directory)
    generation_config = {
        "bos_token_id": special_ids["<|endoftext|>"],
        "eos_token_id": special_ids["<|im_end|>"],
        "transformers_version": transformers.__version__,
    }
    write_json(directory / "generation_config.json", generation_config)
    with open(directory / "eval.jsonl", "w") as out:
        for ids in eval_ids:
            out.write('{"prompt_token_ids": [' + ", ".join(map(str, ids)) + "]}\n")

    reference_model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    )
    reference_model.eval()
    tensors = saved_tensors(directory)
    check("lm_head.weight" not in tensors, "tied model saved an lm_head")
    check(all(dtype == "BF16" for _, dtype in tensors.values()), "weights must be bf16")
    sums = line_nlls(reference_model, eval_ids)
    ppl = perplexity(sums, eval_ids)
    reference = {
        "model": NAME,
        "definition": "exp(sum of line_nll / tokens_scored); line_nll = -sum over i >= 1 of "
        "log p(token_i | tokens_<i) of one eval.jsonl line (its first token is not scored)",
        "computed_from": "model.safetensors (bf16) loaded back in float32, eager attention",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "perplexity": ppl,
        "tokens_scored": sum(len(ids) - 1 for ids in eval_ids),
        "num_lines": len(eval_ids),
        "lines": [
            {"file": line["file"], "tokens": len(ids), "nll_sum": s}
            for line, ids, s in zip(lines, eval_ids, sums)
        ],
        "training": {
            "text_commit": TEXT_COMMIT,
            "steps": args.steps,
            "batch_size": BATCH_SIZE,
            "seq_len": SEQ_LEN,
            "training_tokens": len(tokens),
            "loss_curve": curve,
        },
    }
    (directory / "reference_perplexity.json").write_text(dumps_readable(reference) + "\n")

    scored = reference["tokens_scored"]
    print(f"\nperplexity (bf16 weights, f32 math): {ppl:.4f} over {scored} tokens")
    print(f"vocab {VOCAB_SIZE}; params {sum(torch.Size(s).numel() for s, _ in tensors.values())}")
    for p in sorted(directory.iterdir()):
        print(f"  {p.name} {p.stat().st_size} bytes")
    for prompt in ["The scheduler", "pub fn "]:
        print(repr(greedy_sample(reference_model, tokenizer, prompt, 30)))
    print(f"took {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
