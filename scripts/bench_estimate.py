#!/usr/bin/env python3
"""Expected bench.py throughput on a GPU from the bytes each step moves (docs/PERFORMANCE.md).

Draws bench.py's workload exactly (random.seed(0): 256 prompts of 100-1024 tokens, then
max_tokens of 100-1024 each), walks its steps as the engine runs them (every prompt
prefilled first, its first token sampled there; then one decode step per remaining output
token, the batch shrinking as outputs end), and adds up per decode step the bytes read from
device memory: every weight once (the LM head is the tied embedding), each sequence's KV
cache up to its context length once (the decode kernel serves a whole GQA group per CTA),
and the logits (written by the LM head, copied into the decode graph's static buffer, read
by sampling). Activations are left out (at 256 rows a layer's fit in the 50 MB L2).

    python3 scripts/bench_estimate.py [--host-ms 0.05]
"""

import argparse
from random import randint, seed

# Qwen3-0.6B (configs/qwen3-0.6b.json), bf16 weights and KV cache.
VOCAB, HIDDEN, LAYERS, INTER = 151_936, 1024, 28, 3072
Q_HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128
BF16 = 2

LAYER_PARAMS = (
    HIDDEN * Q_HEADS * HEAD_DIM  # q_proj
    + 2 * HIDDEN * KV_HEADS * HEAD_DIM  # k_proj, v_proj
    + Q_HEADS * HEAD_DIM * HIDDEN  # o_proj
    + 3 * HIDDEN * INTER  # gate, up, down
    + 2 * HIDDEN
    + 2 * HEAD_DIM  # input/post norms, q/k norms
)
EMBED_PARAMS = VOCAB * HIDDEN
WEIGHT_BYTES = (LAYERS * LAYER_PARAMS + EMBED_PARAMS + HIDDEN) * BF16
KV_BYTES_PER_TOKEN = LAYERS * 2 * KV_HEADS * HEAD_DIM * BF16
LOGIT_PASSES = 4  # LM head write, graph copy read + write, sampling read


def workload():
    seed(0)
    prompts = [[randint(0, 10000) for _ in range(randint(100, 1024))] for _ in range(256)]
    outputs = [randint(100, 1024) for _ in range(256)]
    return [len(p) for p in prompts], outputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host-ms", type=float, default=0.05,
                        help="host time per decode step (the bench's 'decode step host' line)")
    parser.add_argument("--launch-us", type=float, default=20.0,
                        help="graph launch and token read-back per decode step")
    parser.add_argument("--prefill-tflops", type=float, default=600.0,
                        help="achieved bf16 TFLOP/s of the prefill GEMMs")
    args = parser.parse_args()

    prompt_lens, output_lens = workload()
    steps = []  # (batch, KV bytes) per decode step
    for s in range(1, max(output_lens)):
        active = [i for i in range(256) if output_lens[i] - 1 >= s]
        context = sum(prompt_lens[i] + s for i in active)
        steps.append((len(active), context * KV_BYTES_PER_TOKEN))
    weights = WEIGHT_BYTES * len(steps)
    kv = sum(k for _, k in steps)
    logits = sum(LOGIT_PASSES * b * VOCAB * BF16 for b, _ in steps)
    total = weights + kv + logits
    prefill_flops = (
        2 * LAYERS * LAYER_PARAMS * sum(prompt_lens)
        + sum(2 * p * p * Q_HEADS * HEAD_DIM * LAYERS for p in prompt_lens)
        + 2 * EMBED_PARAMS * 256
    )
    out_tokens = sum(output_lens)

    print(f"workload: {sum(prompt_lens)} prompt, {out_tokens} output tokens; "
          f"{len(steps)} decode steps, mean batch {sum(b for b, _ in steps) / len(steps):.1f}")
    print(f"per step: weights {WEIGHT_BYTES / 1e9:.3f} GB "
          f"({(LAYERS * LAYER_PARAMS + EMBED_PARAMS) / 1e6:.1f} M params), "
          f"KV {KV_BYTES_PER_TOKEN} B per context token; first step (256 seqs): "
          f"KV {steps[0][1] / 1e9:.2f} GB, logits {LOGIT_PASSES * 256 * VOCAB * BF16 / 1e9:.2f} GB")
    print(f"decode in all: weights {weights / 1e12:.2f} TB + KV {kv / 1e12:.2f} TB + "
          f"logits {logits / 1e12:.2f} TB = {total / 1e12:.2f} TB")
    prefill_s = prefill_flops / (args.prefill_tflops * 1e12)
    print(f"prefill: {prefill_flops / 1e12:.0f} TFLOP, {prefill_s:.2f} s at {args.prefill_tflops:.0f} TFLOP/s")
    overhead_s = len(steps) * (args.host_ms * 1e-3 + args.launch_us * 1e-6)
    print(f"per-step overhead: {len(steps)} x ({args.host_ms} ms host + {args.launch_us} us) = {overhead_s:.2f} s")
    print("| GPU | achieved bandwidth | decode | total | throughput |")
    print("|---|---:|---:|---:|---:|")
    for name, bandwidth in (("H100 SXM (3.35 TB/s)", 3.35e12), ("H100 PCIe (2.0 TB/s)", 2.0e12)):
        for efficiency in (1.0, 0.8, 0.7):
            decode_s = total / (bandwidth * efficiency) + overhead_s
            seconds = decode_s + prefill_s
            print(f"| {name} | {efficiency:.0%} | {decode_s:.2f} s | {seconds:.2f} s | "
                  f"{out_tokens / seconds:,.0f} tok/s |")


if __name__ == "__main__":
    main()
