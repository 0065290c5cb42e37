#!/usr/bin/env bash
# Side-by-side CPU throughput of nanovllm and llama.cpp on the same weights, interleaved
# workload by workload, for several rounds; prints one TSV row per (round, precision, workload)
# with both figures and their ratio (ours / llama.cpp). Measurement only: llama.cpp is built
# outside the repo (see README, "Performance").
#
#   NANOVLLM=target/release/nanovllm MODEL=/tmp/qwen06/model \
#   LLAMA_BIN=/path/to/llama.cpp/build/bin GGUF=/tmp/qwen06/qwen06 \
#   ROUNDS=2 PAIRS="bf16:bf16 int8:Q8_0 int4:Q4_K_M" scripts/bench_vs_llamacpp.sh
#
# GGUF is a prefix: "$GGUF-$type.gguf" must exist for each llama.cpp type in PAIRS.
# Workloads: decode of one stream (128 prompt + GEN output tokens, default 64; llama-bench
# tg$GEN), prefill of 512 tokens (pp512), batched decode of 16 and 32 sequences (128 + GEN;
# llama-batched-bench S_TG). Both sides run with THREADS threads (default 2).
set -euo pipefail
: "${NANOVLLM:?path of the nanovllm binary}" "${MODEL:?HF model directory}"
: "${LLAMA_BIN:?llama.cpp bin directory}" "${GGUF:?GGUF path prefix}"
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PAIRS=${PAIRS:-"bf16:bf16 int8:Q8_0 int4:Q4_K_M"}
KV_DTYPE=${KV_DTYPE:-bf16}
GEN=${GEN:-64}

# ours <quantization> <num_seqs> <input> <output> <field>: prints the report's field.
ours() {
  local quant=() json
  [ "$1" != bf16 ] && quant=(--quantization "$1")
  json=$(mktemp)
  "$NANOVLLM" bench -q --model "$MODEL" --device cpu --threads "$THREADS" --temperature 0 \
    --kv-cache-memory-gib 2 --kv-cache-dtype "$KV_DTYPE" "${quant[@]}" \
    --num-seqs "$2" --min-input "$3" --max-input "$3" --min-output "$4" --max-output "$4" \
    --json "$json" > /dev/null
  python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))[sys.argv[2]], 2))" "$json" "$5"
  rm -f "$json"
}

# llama_bench <type> <-p N -n M>: prints the t/s average of the one test.
llama_bench() {
  local type=$1; shift
  "$LLAMA_BIN/llama-bench" -m "$GGUF-$type.gguf" -t "$THREADS" -r 1 -o json "$@" 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)[0]['avg_ts'], 2))"
}

# llama_batched <type> <npl>: prints S_TG t/s of the row with B = npl.
llama_batched() {
  "$LLAMA_BIN/llama-batched-bench" -m "$GGUF-$1.gguf" -t "$THREADS" -c 8192 -b 2048 -ub 512 \
    -npp 128 -ntg "$GEN" -npl "$2" 2>/dev/null |
    awk -F'|' -v b="$2" -v g="$GEN" '$2+0 == 128 && $3+0 == g && $4+0 == b { gsub(/ /, "", $9); print $9 }'
}

row() { # round precision workload ours llama
  python3 -c "import sys; o, l = float(sys.argv[4]), float(sys.argv[5]); print('\t'.join(sys.argv[1:6] + [f'{o / l:.2f}']))" "$@"
}

printf 'round\tprecision\tworkload\tnanovllm\tllama.cpp\tratio\n'
for round in $(seq 1 "$ROUNDS"); do
  for pair in $PAIRS; do
    q=${pair%%:*} t=${pair##*:}
    row "$round" "$q/$t" "decode 1 stream" "$(ours "$q" 1 128 "$GEN" decode_tokens_per_s)" "$(llama_bench "$t" -p 0 -n "$GEN")"
    row "$round" "$q/$t" "pp512" "$(ours "$q" 1 512 1 prefill_tokens_per_s)" "$(llama_bench "$t" -p 512 -n 0)"
    for n in 16 32; do
      row "$round" "$q/$t" "decode $n seqs" "$(ours "$q" "$n" 128 "$GEN" decode_tokens_per_s)" "$(llama_batched "$t" "$n")"
    done
  done
done
