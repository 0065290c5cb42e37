#!/usr/bin/env bash
# nanovllm GPU check, made by `cargo xtask gpu-check` from xtask/src/gpu_check/run.sh:
# the CUDA test binaries, then the throughput bench twice (CUDA graphs, then
# --enforce-eager) on dummy Qwen3-0.6B weights. Run from anywhere: bash <bundle>/run.sh
#
# Output: the console, and in $OUT (else <bundle>/results): gpu-check.log (everything),
# summary.txt (read it first: the GPU and libraries, one line per test binary, one per bench
# run, then `result:`; written as it goes, so a run cut short still leaves its first lines)
# and bench-{graphs,eager}.json. Exit status 0 when everything passed.
#
# Time: the whole check is sized for one 10-minute device command with room to rerun it.
# Each test binary runs under `timeout` (NANOVLLM_TEST_TIMEOUT_S, default @TEST_TIMEOUT_S@ s),
# each bench too (NANOVLLM_BENCH_TIMEOUT_S, @BENCH_TIMEOUT_S@ s), and every step gets at most
# what is left of NANOVLLM_CHECK_BUDGET_S (@BUDGET_S@ s) for the whole run, so one hang
# cannot eat the device time: a step that would get under 5 s is skipped (and fails).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-$here/results}"
if ! mkdir -p "$out"; then
    echo "gpu-check: cannot create the output folder $out" >&2
    exit 2
fi
log="$out/gpu-check.log"
summary="$out/summary.txt"
: >"$log"
: >"$summary"

test_timeout="${NANOVLLM_TEST_TIMEOUT_S:-@TEST_TIMEOUT_S@}"
bench_timeout="${NANOVLLM_BENCH_TIMEOUT_S:-@BENCH_TIMEOUT_S@}"
budget="${NANOVLLM_CHECK_BUDGET_S:-@BUDGET_S@}"
bench_num_seqs=@BENCH_NUM_SEQS@
tests=(
@TESTS@
)

# A line for the summary (and the console).
note() {
    printf '%s\n' "$*" >>"$summary"
    printf '%s\n' "$*"
}

# Seconds a step may run: its own limit, capped by what is left of the budget; 0 (the
# step is skipped) when under 5 s are left.
step_limit() {
    local left=$((budget - SECONDS))
    if [ "$left" -lt 5 ]; then
        echo 0
    elif [ "$left" -lt "$1" ]; then
        echo "$left"
    else
        echo "$1"
    fi
}

# --- Libraries ------------------------------------------------------------------------
# cudarc (the Rust CUDA bindings) dlopen()s each library by name, trying these in order
# (cudarc 0.19 get_lib_name_candidates for a CUDA 13 build, less its Windows-style
# lib<name>64_* names); the first the dynamic loader finds is used.
lib_names() {
    local l=$1
    echo "lib$l.so lib$l.so.13 lib$l.so.12 lib$l.so.11 lib$l.so.10 lib$l.so.9 lib$l.so.1"
}

ldconfig_cmd="$(command -v ldconfig || echo /sbin/ldconfig)"

# Where the dynamic loader finds the file NAME: LD_LIBRARY_PATH, then its cache, then the
# default directories. Prints the path; fails when nowhere.
find_file() {
    local name=$1 dir hit dirs
    IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
    for dir in "${dirs[@]}"; do
        if [ -n "$dir" ] && [ -e "$dir/$name" ]; then
            echo "$dir/$name"
            return 0
        fi
    done
    # Cache lines read `<tab>NAME (libc6,x86-64) => PATH`; PATH may hold spaces.
    hit="$("$ldconfig_cmd" -p 2>/dev/null | awk -v n="$name" '$1 == n { sub(/^[^>]*=> /, ""); print; exit }')"
    if [ -n "$hit" ]; then
        echo "$hit"
        return 0
    fi
    while IFS= read -r -d '' dir; do
        if [ -e "$dir/$name" ]; then
            echo "$dir/$name"
            return 0
        fi
    done < <(system_dirs loader)
    return 1
}

# System folders, NUL-separated: `loader` the dynamic loader's default ones, `cuda` those
# where CUDA toolkits put their libraries. NANOVLLM_SYSTEM_LIB_DIRS (colon-separated)
# replaces both lists (run.sh's unit test makes the machine's own folders invisible so).
system_dirs() {
    local d dirs
    if [ -n "${NANOVLLM_SYSTEM_LIB_DIRS+set}" ]; then
        IFS=: read -ra dirs <<<"$NANOVLLM_SYSTEM_LIB_DIRS"
    elif [ "$1" = loader ]; then
        dirs=(/lib64 /usr/lib64 /lib /usr/lib)
    else
        dirs=(/usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda/targets/*/lib
            /usr/local/cuda-*/targets/*/lib /usr/lib/x86_64-linux-gnu /usr/lib64)
    fi
    for d in "${dirs[@]}"; do
        if [ -n "$d" ] && [ -d "$d" ]; then
            printf '%s\0' "$d"
        fi
    done
}

# The file cudarc would load for library LIB (e.g. `cublas`), or fails.
find_lib() {
    local name
    for name in $(lib_names "$1"); do
        find_file "$name" && return 0
    done
    return 1
}

# Folders where CUDA libraries may live outside the loader's path: the bundle's own lib/,
# CUDA toolkits, then the `nvidia/*/lib` folders of every pip site directory (NUL-separated
# all the way: a site directory may hold spaces or even newlines).
search_dirs() {
    [ -d "$here/lib" ] && printf '%s\0' "$here/lib"
    system_dirs cuda
    local site
    python3 -c 'import site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()]
sys.stdout.write("".join(d + "\0" for d in dirs))' 2>/dev/null |
        while IFS= read -r -d '' site; do
            [ -d "$site/nvidia" ] && find "$site/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib -print0 2>/dev/null
        done
}

prepend_lib_path() {
    export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# cuBLAS for CUDA 13: when the loader would find none (or an older major), put the first
# folder holding libcublas.so.13 and libcublasLt.so.13 on the library path.
setup_cublas() {
    local found ok=1 lib dir
    for lib in cublas cublasLt; do
        found="$(find_lib "$lib")" || { ok=0; break; }
        case "$(basename "$found")" in
        "lib$lib.so" | "lib$lib.so.13") ;;
        *) ok=0 ;;
        esac
    done
    [ "$ok" = 1 ] && return 0
    while IFS= read -r -d '' dir; do
        if [ -e "$dir/libcublas.so.13" ] && [ -e "$dir/libcublasLt.so.13" ]; then
            prepend_lib_path "$dir"
            echo "cuBLAS 13 from $dir"
            return 0
        fi
    done < <(search_dirs)
    echo "warning: no libcublas.so.13 / libcublasLt.so.13 found; install the CUDA 13 runtime (pip install nvidia-cublas)"
}

# NCCL: cudarc never asks for libnccl.so.2, the only name the NCCL wheel and most system
# packages ship. When no name cudarc asks for resolves, find libnccl.so.2 (the loader's
# path, the bundle's lib/, CUDA toolkits, pip's nvidia/nccl/lib) and expose it as
# libnccl.so in a folder put first on the library path.
setup_nccl() {
    find_lib nccl >/dev/null && return 0
    local real="" dir
    real="$(find_file libnccl.so.2)" || real=""
    if [ -z "$real" ]; then
        while IFS= read -r -d '' dir; do
            if [ -e "$dir/libnccl.so.2" ]; then
                real="$dir/libnccl.so.2"
                break
            fi
        done < <(search_dirs)
    fi
    if [ -z "$real" ]; then
        echo "warning: libnccl.so.2 not found (pip install nvidia-nccl-cu13, or copy it into the bundle's lib/); the NCCL test will fail"
        return 0
    fi
    mkdir -p "$work/lib"
    ln -sf "$real" "$work/lib/libnccl.so"
    prepend_lib_path "$work/lib"
    echo "libnccl.so -> $real (cudarc does not look for libnccl.so.2)"
}

# One line per library: the file cudarc will load and, if a link, what it points to.
print_libraries() {
    local lib path real
    for lib in cuda cublas cublasLt nccl; do
        if path="$(find_lib "$lib")"; then
            real="$(readlink -f "$path" 2>/dev/null || echo "$path")"
            if [ "$real" = "$path" ]; then
                note "$(printf 'lib%-9s %s' "$lib:" "$path")"
            else
                note "$(printf 'lib%-9s %s -> %s' "$lib:" "$path" "$real")"
            fi
        else
            note "$(printf 'lib%-9s not found' "$lib:")"
        fi
    done
}

# --- Steps ----------------------------------------------------------------------------
failures=0

# Runs one test binary under its time limit and notes one summary line for it.
run_test() {
    local t=$1 limit started rc status detail counts failed hung
    limit="$(step_limit "$test_timeout")"
    if [ "$limit" = 0 ]; then
        note "SKIP     $t: no time left in the ${budget}s budget"
        failures=$((failures + 1))
        return
    fi
    echo
    echo "== test $t (at most ${limit}s)"
    started=$SECONDS
    # One test at a time: the engine tests size their KV cache from free GPU memory.
    timeout -k 10 "$limit" "$work/tests/$t" --test-threads=1 2>&1 | tee "$work/test.out"
    rc=${PIPESTATUS[0]}
    counts="$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 passed, \2 failed/p' "$work/test.out" | tail -n 1)"
    # The failed tests' names: the first ten, then how many more.
    failed="$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$work/test.out" |
        awk 'NR <= 10 { printf "%s%s", (NR > 1 ? ", " : ""), $0 } END { if (NR > 10) printf " and %d more", NR - 10 }')"
    case "$rc" in
    0) status=PASS detail="${counts:-ran}" ;;
    124 | 137)
        status=TIMEOUT
        # With one test thread libtest prints `test NAME ... ` before running it.
        hung="$(grep '^test .* \.\.\. ' "$work/test.out" | tail -n 1)"
        case "$hung" in
        *" ... ok" | *" ... FAILED" | *" ... ignored" | "") detail="killed after ${limit}s" ;;
        *)
            hung="${hung#test }"
            detail="killed after ${limit}s in ${hung% ... *}"
            ;;
        esac
        ;;
    *) status=FAIL detail="exit $rc${counts:+, $counts}${failed:+: $failed}" ;;
    esac
    [ "$status" = PASS ] || failures=$((failures + 1))
    note "$(printf '%-8s %s (%ss): %s' "$status" "$t" "$((SECONDS - started))" "$detail")"
}

# ------------------------------------------------------------------------------------
# THE BENCH COMMAND LINE: built here and nowhere else. MODE is `graphs` or `eager`.
# The bench lines copied into the summary: throughput, the graphs it captured, and the
# per-step breakdown of decode steps (host time vs the wait on the device), which the bench
# always prints. A new figure for the summary goes here.
bench_summary_lines='^(Total:|CUDA graphs|decode step)'
build_bench_cmd() {
    local mode=$1
    bench_cmd=("$work/bin/xtask" bench --profile seed --num-seqs "$bench_num_seqs"
        --model-config "$here/configs/qwen3-0.6b.json" --device cuda
        --json "$out/bench-$mode.json")
    if [ "$mode" = eager ]; then
        bench_cmd+=(--enforce-eager)
    fi
}
# ------------------------------------------------------------------------------------

# Runs the bench in MODE under its time limit and notes its figures.
run_bench() {
    local mode=$1 limit started rc figures
    limit="$(step_limit "$bench_timeout")"
    if [ "$limit" = 0 ]; then
        note "SKIP     bench $mode: no time left in the ${budget}s budget"
        failures=$((failures + 1))
        return
    fi
    build_bench_cmd "$mode"
    echo
    echo "== bench $mode (at most ${limit}s): ${bench_cmd[*]}"
    started=$SECONDS
    timeout -k 10 "$limit" "${bench_cmd[@]}" 2>&1 | tee "$work/bench.out"
    rc=${PIPESTATUS[0]}
    figures="$(grep -E "$bench_summary_lines" "$work/bench.out" | paste -sd'|' - | sed 's/|/ | /g')"
    case "$rc" in
    0) note "$(printf 'PASS     bench %s (%ss): %s' "$mode" "$((SECONDS - started))" "${figures:-no figures printed}")" ;;
    124 | 137)
        failures=$((failures + 1))
        note "TIMEOUT  bench $mode: killed after ${limit}s${figures:+: $figures}"
        ;;
    *)
        failures=$((failures + 1))
        note "FAIL     bench $mode: exit $rc${figures:+: $figures}: $(tail -n 1 "$work/bench.out")"
        ;;
    esac
}

main() {
    echo "nanovllm gpu-check: log $log, summary $summary"
    export NANOVLLM_REPO_ROOT="$here" # the bundle's fixtures/ and configs/
    export NANOVLLM_REQUIRE_GPU=1     # a test that would skip for want of a GPU fails
    export RUST_BACKTRACE=1
    work="$(mktemp -d "${TMPDIR:-/tmp}/nanovllm-gpu-check.XXXXXX")" || exit 2
    trap 'rm -rf "$work"' EXIT

    # The binaries are gzipped (the bundle must stay small): unpack them.
    mkdir -p "$work/bin" "$work/tests"
    local f dst
    for f in "$here"/bin/*.gz "$here"/tests/*.gz; do
        dst="$work/$(basename "$(dirname "$f")")/$(basename "$f" .gz)"
        if ! { gunzip -c "$f" >"$dst" && chmod +x "$dst"; }; then
            note "FAIL     unpacking $f"
            failures=$((failures + 1))
        fi
    done

    echo "== GPUs"
    local gpus
    gpus="$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)" ||
        gpus="nvidia-smi failed: $gpus"
    timeout 30 nvidia-smi -L 2>&1
    note "gpu: $(echo "$gpus" | paste -sd';' -)"

    echo "== libraries"
    setup_cublas
    setup_nccl
    print_libraries
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

    local t
    for t in "${tests[@]}"; do
        run_test "$t"
    done
    run_bench graphs
    run_bench eager

    if [ "$failures" = 0 ]; then
        note "result: PASS (${SECONDS}s)"
    else
        note "result: FAIL, $failures step(s) failed (${SECONDS}s)"
    fi
    echo
    echo "== summary ($summary)"
    cat "$summary"
    [ "$failures" = 0 ]
}

main 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
