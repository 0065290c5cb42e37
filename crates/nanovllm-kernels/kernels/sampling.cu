// Device-side sampling: `Backend::sample` on CUDA (host side: src/cuda/sampling.rs, packing
// layout: src/cuda/sampling/pack.rs; the definition implemented here: src/sampling.rs).
//
// sample_{bf16,f32}: ONE BLOCK OF 1024 THREADS PER ROW of logits [R, V]. Thread t owns the
// contiguous ids [t·C, (t+1)·C), C = ceil(V / 1024) rounded up to 8, and every pass over
// the row walks its chunk in ascending id order (16-byte loads where aligned), so each
// thread's partial result covers an id range and a block scan over threads is a scan in
// id order. A row's work, in passes over its V logits (each pass re-reads them, from L2
// when it stays there; nothing is written back):
//   1. processed logits l (see "Processing") → argmax (largest, then lowest id). No
//      finite maximum (all −∞, or a +∞) → NO_FINITE_LOGIT. Greedy → the argmax.
//   2. top-k (1 ≤ k < V): radix select of the k-th largest order-preserving key of l
//      (3 passes of 11/11/10-bit digits, integer histograms in shared memory), then one
//      pass counting ties at the threshold and a block scan: the first (k − #greater)
//      tied ids are admitted. When k ≤ LIST_CAP the k survivors (id, l) are gathered, in
//      id order, into shared memory and every later pass walks that list instead.
//   3. weights w = exp((l − max) / T) in f32 (exp evaluated in f64 and rounded, i.e.
//      correctly rounded but for ~1 case in 10⁸ — what a libm expf gives), and their
//      fixed-point masses fx(w) = round(w · 2^F) with F = 63 − ceil(log2 V), so that any
//      sum of masses fits a u64 (Σ ≤ V · 2^F ≤ 2^63). Every weight ≥ 2⁻²² is exact in it.
//   4. top-p: radix select by MASS on the key of w (the f32 bits of w ≥ 0): the largest
//      w* whose "mass of weights ≥ w*" reaches P = ceil(top_p · S) (S the survivors'
//      mass), 3 passes with 64-bit integer mass histograms; then the first
//      j = ceil(rest / fx(w*)) ids tied at w* (rest = P − mass above w*), found as for
//      top-k. This is exactly
//      "the shortest prefix in (w desc, id asc) order whose mass is ≥ top_p × total".
//   5. min-p: w ≥ min_p, tested inline by the last pass.
//   6. inverse CDF: one pass of per-thread survivor masses, a block exclusive scan (in id
//      order), target = floor(u · total) computed exactly in 128 bits, and the one thread
//      whose range holds the target walks its chunk to the first id whose running mass
//      exceeds it. u = Philox4x32-10(counter = step, key = seed), 53 bits, as on the host.
//   7. logprobs (rows that ask): one pass for log Σ exp(s) in f64 (s = (l − max) / T, or
//      l − max when greedy), a radix select (count) of the top n f32 logprobs (ties:
//      lower id) gathered and sorted in shared memory, and the chosen token's logprob (or
//      the row's logprob_token's, when it names one: scoring a known token).
//
// Processing (mask → bias → penalties) is applied on the fly while reading, in f32 on the
// bf16 (or f32) value read, so the kernel sees exactly what the CPU reference computes
// from the same values; nothing is written back into the logits. The host sends each row
// its touched ids (bias, prompt and output ids) as one list sorted by id, each entry with
// its biases (in list order) and output counts; a thread finds its chunk's first entry by
// binary search and then merges the list with its ascending ids. A token in both the
// prompt and the output gets the repetition penalty once.
//
// Determinism: no floating-point atomics. Histograms and mass sums are integers (integer
// atomics commute; a 64-bit bin is two 32-bit words with an exact carry, see hist_add),
// the f64 log-sum-exp is a fixed-order tree (per-thread sums in id order, a xor
// butterfly, then warp 0), the argmax and every tie rule compare (key, id) pairs, a total
// order. The same input gives the same tokens and logprobs on every run.
// Compiled WITHOUT --use_fast_math and with --fmad=false (build.rs): IEEE division, no
// flush-to-zero, no contraction, so the f32 steps round exactly as Rust's.
//
// Exactness against the definition: all filters and the CDF use the integer masses, which
// are order-free (the CPU's f64 sums depend on their order). Where they differ from an f64
// sum, by at most V · 2^-(F+1) (≈ 2·10⁻⁹ for V = 151 936 against a total ≥ 1), only a
// uniform or a top-p prefix within that distance of a boundary can pick another token. A
// weight below 2^-(F+1) (≈ 1.4·10⁻¹⁴ for that V) has mass 0 and is never sampled (an f64
// running sum of order 1 already ignores weights below 2⁻⁵⁴).
//
// Work: O(V) per pass, O(V / 1024 + log) span. Passes over the row, per sampled row:
// 1 (argmax) + 4 (top-k select and ties) + 1 (gather, when k ≤ LIST_CAP) + 4 (top-p) + 1
// (CDF), fewer when a filter is off; after a top-k gather the later passes read ≤ k
// entries from shared memory. Weights are computed only where a cheap bound on s = (l −
// max) / T does not already rule them out (mass 0 or below the current threshold), so in
// peaked rows only a few thousand exps are evaluated per pass.
//
// COST ESTIMATE (not measured: this machine has no GPU), 256 rows × 151 936 bf16 logits
// (78 MB) on an H100 (≈ 3.3 TB/s HBM, 50 MB L2), greedy: one pass, ≈ 78 MB read ≈ 25–30 µs.
// Top-k 50 + top-p 0.9: 6 full passes (argmax, 3 radix, ties, gather) ≈ 6 × 78 MB =
// 0.47 GB ≈ 0.15–0.2 ms; the rest works on 50 entries per row. Top-p alone (no top-k):
// 1 + 3 + 1 + 1 = 6 passes ≈ 0.47 GB ≈ 0.15 ms plus the f64 exps the bounds let through
// (worst case, a flat row at high temperature: V exps per pass ≈ 39 M · 4 passes of ≈ 20
// DFMA ≈ 3 GFLOP64 ≈ 0.1 ms at 34 TFLOP/s f64). Logprobs add 1 exp pass + 5 passes for
// the rows that ask. Versus today's 78 MB device-to-host copy (≈ 3 ms over PCIe 5) and a
// host sort per row.

#ifdef __CUDACC__
#include <cuda_bf16.h>
#else
#include "sampling_emu.h"  // host emulation for tests (crates/nanovllm-kernels/tests/sampling_emu)
#endif
#include <stdint.h>

#ifndef SAMPLE_THREADS
#define SAMPLE_THREADS 1024
#endif

namespace sampling {

typedef unsigned long long u64;
typedef uint32_t u32;
typedef __nv_bfloat16 bf16;

constexpr int THREADS = SAMPLE_THREADS;
constexpr int WARPS = THREADS / 32;
static_assert(THREADS % 32 == 0 && WARPS >= 1 && WARPS <= 32, "1 to 32 whole warps");
constexpr u32 FULL_MASK = 0xffffffffu;
constexpr u32 RADIX_BINS = 2048;  // 11-bit digits: bits 21..31, 10..20, then 0..9
constexpr u32 LIST_CAP = 2048;    // top-k survivors gathered into shared memory
constexpr u32 MAX_LOGPROBS = 20;  // sampling::MAX_NUM_LOGPROBS
constexpr u32 NO_FINITE_LOGIT = 0xffffffffu;
constexpr u32 NONE = 0xffffffffu;  // no edit id (ids are < V < 2^31)

// ---- Packed parameters (must match src/cuda/sampling/pack.rs) --------------------------
// u32 words: R row headers of ROW_WORDS, then per row its mask words, edit entries and
// values (bias f32 bits, output counts). Offsets are absolute word indices.
constexpr u32 ROW_WORDS = 20;
constexpr u32 H_FLAGS = 0, H_TEMPERATURE = 1, H_TOP_K = 2, H_TOP_P = 3, H_MIN_P = 4,
              H_SEED_LO = 5, H_SEED_HI = 6, H_STEP_LO = 7, H_STEP_HI = 8,
              H_NUM_LOGPROBS = 9, H_LOGPROB_SLOT = 10, H_MASK = 11, H_EDITS = 12,
              H_NUM_EDITS = 13, H_REPETITION = 14, H_FREQUENCY = 15, H_PRESENCE = 16,
              H_LOGPROB_TOKEN = 17;
// FLAG_LOGPROB_TOKEN: the logprob reported is H_LOGPROB_TOKEN's, not the chosen token's.
constexpr u32 FLAG_GREEDY = 1, FLAG_MASK = 2, FLAG_LOGPROBS = 4, FLAG_LOGPROB_TOKEN = 8;
// One edit entry: id, first bias word, bias count, first output-count word, output
// entries, whether the id is in the prompt.
constexpr u32 EDIT_WORDS = 6;
constexpr u32 E_ID = 0, E_BIAS = 1, E_NUM_BIAS = 2, E_OUT = 3, E_NUM_OUT = 4, E_IN_PROMPT = 5;
// Results: R tokens, then per logprob row: chosen logprob (f32 bits), count n, n × (id,
// logprob bits).
constexpr u32 LOGPROB_WORDS = 2 + 2 * MAX_LOGPROBS;

// ---- Scalars ---------------------------------------------------------------------------

__device__ __forceinline__ float sanitize(float x) { return isnan(x) ? -INFINITY : x; }

// Order-preserving u32 key of a non-NaN float; -0 and +0 share a key (they are equal).
__device__ __forceinline__ u32 order_key(float x) {
  const u32 b = x == 0.0f ? 0u : __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(u32 k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Philox4x32-10, identical to sampling::philox4x32_10 in Rust.
__device__ __forceinline__ void philox4x32_10(u32 c[4], u32 k0, u32 k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const u64 p0 = (u64)0xD2511F53u * c[0];
    const u64 p1 = (u64)0xCD9E8D57u * c[2];
    const u32 hi0 = (u32)(p0 >> 32), lo0 = (u32)p0;
    const u32 hi1 = (u32)(p1 >> 32), lo1 = (u32)p1;
    const u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
  }
}

// The 53 random bits of uniform(seed, step): u = bits / 2^53.
__device__ __forceinline__ u64 uniform_bits(u64 seed, u64 step) {
  u32 c[4] = {(u32)step, (u32)(step >> 32), 0u, 0u};
  philox4x32_10(c, (u32)seed, (u32)(seed >> 32));
  return ((u64)c[0] << 21) | (u64)(c[1] >> 11);
}

// floor(bits · total / 2^53), exactly (bits < 2^53, total ≤ 2^63: the product < 2^116).
__device__ __forceinline__ u64 scale_uniform(u64 bits, u64 total) {
  const u64 hi = __umul64hi(bits, total), lo = bits * total;
  return (hi << 11) | (lo >> 53);
}

// ---- Block primitives (every thread calls them; they end with the block in step) -------

struct Shared {
  // A bin's weight is hist_hi · 2^32 + hist_lo: 32-bit shared atomics are native on every
  // target, 64-bit adds may be compare-and-swap loops (slow under contention).
  u32 hist_lo[RADIX_BINS];
  u32 hist_hi[RADIX_BINS];
  u32 list_id[LIST_CAP];
  float list_l[LIST_CAP];
  u64 warp_u64[32];
  double warp_f64[32];
  u32 warp_key[32];
  u32 warp_id[32];
  u32 top_id[MAX_LOGPROBS];
  u32 top_key[MAX_LOGPROBS];
  double f64_result;
  u64 found_before;
  u32 found_digit;
  u32 found_id;
  u32 best_key;
  u32 best_id;
};

// Exclusive prefix sum of `v` over threads in thread order; `*total` gets the sum.
__device__ u64 block_exclusive_scan(u64 v, u64 *total, Shared &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  u64 x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 y = __shfl_up_sync(FULL_MASK, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) sh.warp_u64[warp] = x;
  __syncthreads();
  if (warp == 0) {
    u64 t = lane < WARPS ? sh.warp_u64[lane] : 0ull;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const u64 y = __shfl_up_sync(FULL_MASK, t, o);
      if (lane >= o) t += y;
    }
    if (lane < WARPS) sh.warp_u64[lane] = t;  // inclusive warp prefixes
  }
  __syncthreads();
  const u64 before = warp > 0 ? sh.warp_u64[warp - 1] : 0ull;
  *total = sh.warp_u64[WARPS - 1];
  __syncthreads();
  return before + (x - v);
}

// Sum over threads in a fixed tree (deterministic); every thread gets it.
__device__ double block_sum(double v, Shared &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  if (lane == 0) sh.warp_f64[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < WARPS ? sh.warp_f64[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_MASK, t, o);
    if (lane == 0) sh.f64_result = t;
  }
  __syncthreads();
  const double s = sh.f64_result;
  __syncthreads();
  return s;
}

// The largest key, lowest id among equal keys; every thread gets both.
__device__ void block_argmax(u32 &key, u32 &id, Shared &sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const u32 k = __shfl_xor_sync(FULL_MASK, key, o), i = __shfl_xor_sync(FULL_MASK, id, o);
    if (k > key || (k == key && i < id)) {
      key = k;
      id = i;
    }
  }
  if (lane == 0) {
    sh.warp_key[warp] = key;
    sh.warp_id[warp] = id;
  }
  __syncthreads();
  if (warp == 0) {
    u32 bk = lane < WARPS ? sh.warp_key[lane] : 0u, bi = lane < WARPS ? sh.warp_id[lane] : NONE;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const u32 k = __shfl_xor_sync(FULL_MASK, bk, o), i = __shfl_xor_sync(FULL_MASK, bi, o);
      if (k > bk || (k == bk && i < bi)) {
        bk = k;
        bi = i;
      }
    }
    if (lane == 0) {
      sh.best_key = bk;
      sh.best_id = bi;
    }
  }
  __syncthreads();
  key = sh.best_key;
  id = sh.best_id;
  __syncthreads();
}

// Adds w to a bin: the low word atomically, then the high word plus the carry the low
// add produced (seen in the value it replaced), so hi · 2^32 + lo is the exact sum in any
// order. Weights of 1 (counting) never carry: one atomic.
__device__ __forceinline__ void hist_add(Shared &sh, u32 bin, u64 w) {
  const u32 lo = (u32)w;
  const u32 old = atomicAdd(&sh.hist_lo[bin], lo);
  const u32 hi = (u32)(w >> 32) + (old + lo < old ? 1u : 0u);
  if (hi != 0u) atomicAdd(&sh.hist_hi[bin], hi);
}

__device__ __forceinline__ u64 hist_get(const Shared &sh, u32 bin) {
  return ((u64)sh.hist_hi[bin] << 32) + sh.hist_lo[bin];
}

// ---- A row and its processed logits ----------------------------------------------------

template <typename T> struct Vec;
template <> struct Vec<bf16> {
  static constexpr u32 N = 8;
  __device__ static __forceinline__ float one(const bf16 *p) {
    return __uint_as_float((u32)(*reinterpret_cast<const unsigned short *>(p)) << 16);
  }
  __device__ static __forceinline__ void load(const bf16 *p, float *out) {
    const uint4 v = *reinterpret_cast<const uint4 *>(p);
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      out[2 * j] = __uint_as_float(w[j] << 16);  // little endian: low half first
      out[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
  }
};
template <> struct Vec<float> {
  static constexpr u32 N = 4;
  __device__ static __forceinline__ float one(const float *p) { return *p; }
  __device__ static __forceinline__ void load(const float *p, float *out) {
    const float4 v = *reinterpret_cast<const float4 *>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  }
};

// Elements per thread: ceil(V / THREADS) rounded up to 8, so chunk starts keep the row's
// 16-byte alignment.
__device__ __forceinline__ u32 row_chunk(u32 vocab) {
  const u32 c = (vocab + THREADS - 1) / THREADS;
  return (c + 7u) & ~7u;
}

struct RowParams {
  const u32 *params;  // the whole packed buffer (edit entries hold absolute offsets)
  u32 flags;
  float temperature;
  u32 top_k;  // 0: off (the host also turns k ≥ V off)
  float top_p;
  float min_p;
  u64 seed, step;
  u32 num_logprobs, logprob_slot;
  u32 logprob_token;  // NONE: the chosen token's logprob is reported
  const u32 *mask;  // nullptr: every token allowed
  const u32 *edits;
  u32 num_edits;
  float repetition, frequency, presence;

  __device__ void load(const u32 *p, u32 row) {
    params = p;
    const u32 *h = p + (size_t)row * ROW_WORDS;
    flags = h[H_FLAGS];
    temperature = __uint_as_float(h[H_TEMPERATURE]);
    top_k = h[H_TOP_K];
    top_p = __uint_as_float(h[H_TOP_P]);
    min_p = __uint_as_float(h[H_MIN_P]);
    seed = (u64)h[H_SEED_LO] | ((u64)h[H_SEED_HI] << 32);
    step = (u64)h[H_STEP_LO] | ((u64)h[H_STEP_HI] << 32);
    num_logprobs = h[H_NUM_LOGPROBS];
    logprob_slot = h[H_LOGPROB_SLOT];
    logprob_token = (flags & FLAG_LOGPROB_TOKEN) ? h[H_LOGPROB_TOKEN] : NONE;
    mask = (flags & FLAG_MASK) ? p + h[H_MASK] : nullptr;
    edits = p + h[H_EDITS];
    num_edits = h[H_NUM_EDITS];
    repetition = __uint_as_float(h[H_REPETITION]);
    frequency = __uint_as_float(h[H_FREQUENCY]);
    presence = __uint_as_float(h[H_PRESENCE]);
  }

  // The first edit entry with id ≥ i.
  __device__ u32 lower_bound(u32 i) const {
    u32 lo = 0, hi = num_edits;
    while (lo < hi) {
      const u32 mid = lo + (hi - lo) / 2;
      if (edits[(size_t)mid * EDIT_WORDS + E_ID] < i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }

  __device__ __forceinline__ u32 edit_id(u32 e) const {
    return e < num_edits ? edits[(size_t)e * EDIT_WORDS + E_ID] : NONE;
  }

  // Mask, then NaN → −∞ (NaN counts as −∞ throughout).
  __device__ __forceinline__ float base(u32 i, float x) const {
    if (mask != nullptr && !((mask[i >> 5] >> (i & 31)) & 1u)) return -INFINITY;
    return sanitize(x);
  }

  // Logit bias (each pair, in list order), repetition once if in the prompt or the output,
  // then frequency and presence per output entry; in f32, as the definition says.
  __device__ float edit(u32 e, float l) const {
    const u32 *entry = edits + (size_t)e * EDIT_WORDS;
    const u32 bias = entry[E_BIAS], num_bias = entry[E_NUM_BIAS];
    const u32 out = entry[E_OUT], num_out = entry[E_NUM_OUT];
    for (u32 j = 0; j < num_bias; ++j) l = l + __uint_as_float(params[bias + j]);
    if (entry[E_IN_PROMPT] != 0u || num_out > 0u) {
      l = l > 0.0f ? l / repetition : l * repetition;
    }
    for (u32 j = 0; j < num_out; ++j) {
      const float penalty = frequency * (float)params[out + j] + presence;
      l = l - penalty;
    }
    return sanitize(l);
  }
};

// The row's processed logits: thread t visits its chunk in ascending id order.
template <typename T> struct RowDomain {
  const T *logits;  // this row
  u32 vocab;
  RowParams rp;

  template <typename F> __device__ void for_each(F &&f) const {
    const u32 chunk = row_chunk(vocab);
    const u32 begin = threadIdx.x * chunk;
    if (begin >= vocab) return;
    const u32 end = min(vocab, begin + chunk);
    u32 e = rp.lower_bound(begin);
    u32 next = rp.edit_id(e);
    auto visit = [&](u32 i, float x) {
      float l = rp.base(i, x);
      if (i == next) {
        l = rp.edit(e, l);
        ++e;
        next = rp.edit_id(e);
      }
      f(i, l);
    };
    u32 i = begin;
    while (i < end) {
      if (i + Vec<T>::N <= end && (reinterpret_cast<uintptr_t>(logits + i) & 15u) == 0) {
        float v[Vec<T>::N];
        Vec<T>::load(logits + i, v);
#pragma unroll
        for (u32 j = 0; j < Vec<T>::N; ++j) visit(i + j, v[j]);
        i += Vec<T>::N;
      } else {
        visit(i, Vec<T>::one(logits + i));
        ++i;
      }
    }
  }

  // The processed logit of one id (one thread).
  __device__ float value_at(u32 i) const {
    float l = rp.base(i, Vec<T>::one(logits + i));
    const u32 e = rp.lower_bound(i);
    if (rp.edit_id(e) == i) l = rp.edit(e, l);
    return l;
  }
};

// Gathered survivors (ascending ids) in shared memory: thread t visits its chunk of them.
struct ListDomain {
  const u32 *ids;
  const float *values;
  u32 n;

  template <typename F> __device__ void for_each(F &&f) const {
    const u32 chunk = (n + THREADS - 1) / THREADS;
    const u32 begin = threadIdx.x * chunk;
    const u32 end = min(n, begin + chunk);
    for (u32 j = begin; j < end; ++j) f(ids[j], values[j]);
  }
};

// ---- Radix select by count or by mass --------------------------------------------------
//
// `keys.get(i, l, key, w)` says whether id i (processed logit l) is a candidate, with its
// u32 key and its weight w > 0 (1 when counting). `keys.begin_pass(lo)` tells it that only
// keys ≥ lo matter for the coming pass (it may skip work below). Finds the threshold key
// thr such that the candidates with key > thr weigh less than `need` and those with key ≥
// thr at least `need`; returns thr and rest = need − (weight above thr), 0 < rest ≤
// weight at thr. `need_of_total` turns the candidates' total weight into `need`.

struct Selected {
  u32 thr;
  u64 rest;
};

template <class Dom, class Keys, class Need>
__device__ Selected radix_select(const Dom &dom, Keys &keys, Need need_of_total, Shared &sh) {
  u32 prefix = 0, prefix_mask = 0;
  u64 need = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const u32 bins = pass == 2 ? 1024u : 2048u;
    for (u32 b = threadIdx.x; b < bins; b += THREADS) {
      sh.hist_lo[b] = 0u;
      sh.hist_hi[b] = 0u;
    }
    keys.begin_pass(prefix);
    __syncthreads();
    dom.for_each([&](u32 i, float l) {
      u32 key;
      u64 w;
      if (!keys.get(i, l, key, w) || (key & prefix_mask) != prefix) return;
      hist_add(sh, (key >> shift) & (bins - 1), w);
    });
    __syncthreads();
    // Thread t owns `per` consecutive bins in DESCENDING digit order, so the exclusive
    // scan over threads is the weight of all larger digits.
    const u32 per = (bins + THREADS - 1) / THREADS;
    const u32 r0 = min(bins, threadIdx.x * per), r1 = min(bins, r0 + per);
    u64 own = 0;
    for (u32 r = r0; r < r1; ++r) own += hist_get(sh, bins - 1 - r);
    if (threadIdx.x == 0) {
      sh.found_digit = 0;
      sh.found_before = 0;
    }
    u64 total;
    const u64 above = block_exclusive_scan(own, &total, sh);
    if (pass == 0) need = need_of_total(total);
    u64 cum = above;
    for (u32 r = r0; r < r1; ++r) {
      const u32 b = bins - 1 - r;
      const u64 h = hist_get(sh, b);
      if (cum < need && need <= cum + h) {  // exactly one bin in the block
        sh.found_digit = b;
        sh.found_before = cum;
      }
      cum += h;
    }
    __syncthreads();
    need -= sh.found_before;
    prefix |= sh.found_digit << shift;
    prefix_mask |= (bins - 1) << shift;
    __syncthreads();  // the histogram and found_* are reused
  }
  return {prefix, need};
}

// Admits the first `ties` candidates with key == thr, in id order. Returns tie_end: the
// admitted ties are those with id < tie_end (0: none). `*members` gets the number of this
// thread's admitted candidates (key > thr, or an admitted tie), for `gather`.
template <class Dom, class Keys>
__device__ u32 admit_ties(const Dom &dom, Keys &keys, u32 thr, u64 ties, u64 *members,
                          Shared &sh) {
  keys.begin_pass(thr);
  u64 above = 0, tied = 0;
  dom.for_each([&](u32 i, float l) {
    u32 key;
    u64 w;
    if (!keys.get(i, l, key, w)) return;
    if (key > thr) {
      ++above;
    } else if (key == thr) {
      ++tied;
    }
  });
  if (threadIdx.x == 0) sh.found_id = 0;
  u64 all_tied;
  const u64 before = block_exclusive_scan(tied, &all_tied, sh);
  if (before < ties && ties <= before + tied) {
    u64 seen = before;
    dom.for_each([&](u32 i, float l) {
      u32 key;
      u64 w;
      if (!keys.get(i, l, key, w) || key != thr) return;
      if (++seen == ties) sh.found_id = i + 1;
    });
  }
  __syncthreads();
  const u32 tie_end = sh.found_id;
  __syncthreads();
  const u64 admitted = ties > before ? min(ties - before, tied) : 0ull;
  *members = above + admitted;
  return tie_end;
}

// Writes the admitted candidates in id order: ids (and processed logits / keys when asked)
// at positions 0.. of the given arrays, at most `cap`. Returns how many there are.
template <class Dom, class Keys>
__device__ u32 gather(const Dom &dom, Keys &keys, u32 thr, u32 tie_end, u64 members, u32 cap,
                      u32 *ids, float *values, u32 *out_keys, Shared &sh) {
  u64 total;
  u64 pos = block_exclusive_scan(members, &total, sh);
  dom.for_each([&](u32 i, float l) {
    u32 key;
    u64 w;
    if (!keys.get(i, l, key, w)) return;
    if (key > thr || (key == thr && i < tie_end)) {
      if (pos < cap) {
        ids[pos] = i;
        if (values != nullptr) values[pos] = l;
        if (out_keys != nullptr) out_keys[pos] = key;
      }
      ++pos;
    }
  });
  __syncthreads();
  return (u32)min(total, (u64)cap);
}

// ---- Weights ---------------------------------------------------------------------------

struct Weights {
  float max;
  float temperature;
  int fx_bits;  // F

  // s = (l − max) / T; 0 for the maximum itself (also when it is +∞).
  __device__ __forceinline__ float shift(float l) const {
    return l == max ? 0.0f : (l - max) / temperature;
  }
  // w = exp(s) in f32: exp in f64, rounded once.
  __device__ __forceinline__ float weight(float s) const { return (float)exp((double)s); }
  __device__ __forceinline__ u64 mass(float w) const {
    return __double2ull_rn(scalbn((double)w, fx_bits));
  }
  // A bound on s below which w < w_lo for sure (and mass 0): exp(s) < w_lo / e, which
  // rounding cannot lift to w_lo; and exp(s) < 2^-(F+1) / e rounds to mass 0.
  __device__ double floor_for(float w_lo) const {
    const double zero = -(double)(fx_bits + 1) * 0.6931471805599453 - 1.0;
    return w_lo > 0.0f ? fmax(zero, log((double)w_lo) - 1.0) : zero;
  }
};

// Top-k membership (on the processed logit's key, ties by id).
struct TopK {
  bool active;
  u32 thr;
  u32 tie_end;
  __device__ __forceinline__ bool admits(u32 i, float l) const {
    if (!active) return true;
    const u32 k = order_key(l);
    return k > thr || (k == thr && i < tie_end);
  }
};

// Top-k: every id is a candidate, keyed by its logit, weight 1.
struct LogitKeys {
  __device__ void begin_pass(u32) {}
  __device__ __forceinline__ bool get(u32, float l, u32 &key, u64 &w) const {
    key = order_key(l);
    w = 1;
    return true;
  }
};

// Top-p: the top-k survivors with mass > 0, keyed by the bits of w, weighed by their mass.
struct MassKeys {
  Weights W;
  TopK topk;
  double s_floor;
  __device__ void begin_pass(u32 key_lo) { s_floor = W.floor_for(__uint_as_float(key_lo)); }
  __device__ __forceinline__ bool get(u32 i, float l, u32 &key, u64 &m) const {
    if (!topk.admits(i, l)) return false;
    const float s = W.shift(l);
    if (!((double)s >= s_floor)) return false;
    const float w = W.weight(s);
    m = W.mass(w);
    key = __float_as_uint(w);
    return m != 0ull;
  }
};

// The final survivors (top-k, top-p, min-p) with mass > 0, weighed by their mass.
struct Survivors {
  Weights W;
  TopK topk;
  bool top_p;
  u32 p_thr, p_tie_end;
  bool min_p_on;
  float min_p;
  double s_floor;
  __device__ __forceinline__ bool get(u32 i, float l, u64 &m) const {
    if (!topk.admits(i, l)) return false;
    const float s = W.shift(l);
    if (!((double)s >= s_floor)) return false;
    const float w = W.weight(s);
    const u32 key = __float_as_uint(w);
    if (top_p && !(key > p_thr || (key == p_thr && i < p_tie_end))) return false;
    if (min_p_on && !(w >= min_p)) return false;
    m = W.mass(w);
    return m != 0ull;
  }
};

// top-p, min-p and the inverse CDF over `dom`, whose candidates are `topk`'s survivors.
template <class Dom>
__device__ u32 sample_filtered(const Dom &dom, const RowParams &rp, const Weights &W,
                               const TopK &topk, u32 fallback, Shared &sh) {
  Survivors sv{W, topk, false, 0u, 0u, rp.min_p > 0.0f, rp.min_p, 0.0};
  float w_lo = sv.min_p_on ? rp.min_p : 0.0f;
  if (rp.top_p < 1.0f) {
    MassKeys mk{W, topk, 0.0};
    const float top_p = rp.top_p;
    const Selected sel = radix_select(dom, mk, [top_p](u64 total) {
      // P = ceil(top_p · S), 1 ≤ P ≤ S.
      const double p = ceil((double)top_p * (double)total);
      u64 need = p >= 1.0 ? (u64)p : 1ull;
      return need < total ? need : total;
    }, sh);
    const u64 unit = W.mass(__uint_as_float(sel.thr));
    const u64 ties = unit > 0 ? (sel.rest + unit - 1) / unit : 0ull;
    u64 members;
    sv.p_tie_end = admit_ties(dom, mk, sel.thr, ties, &members, sh);
    sv.top_p = true;
    sv.p_thr = sel.thr;
    w_lo = fmaxf(w_lo, __uint_as_float(sel.thr));
  }
  sv.s_floor = W.floor_for(w_lo);

  u64 own = 0;
  dom.for_each([&](u32 i, float l) {
    u64 m;
    if (sv.get(i, l, m)) own += m;
  });
  if (threadIdx.x == 0) sh.found_id = fallback;
  u64 total;
  const u64 before = block_exclusive_scan(own, &total, sh);
  if (total > 0) {
    const u64 target = scale_uniform(uniform_bits(rp.seed, rp.step), total);  // < total
    if (before <= target && target < before + own) {
      u64 run = before;
      bool done = false;
      dom.for_each([&](u32 i, float l) {
        u64 m;
        if (done || !sv.get(i, l, m)) return;
        run += m;
        if (run > target) {
          sh.found_id = i;
          done = true;
        }
      });
    }
  }
  __syncthreads();
  const u32 token = sh.found_id;
  __syncthreads();
  return token;
}

// Logprobs of a row: log-softmax of s (f64 log-sum-exp), the chosen token's, the top n.
struct LogprobKeys {
  Weights W;
  double lse;
  __device__ __forceinline__ float logprob(float l) const {
    return (float)((double)W.shift(l) - lse);
  }
  __device__ void begin_pass(u32) {}
  __device__ __forceinline__ bool get(u32, float l, u32 &key, u64 &w) const {
    key = order_key(logprob(l));
    w = 1;
    return true;
  }
};

template <typename T>
__device__ void sample_row(const T *__restrict__ logits, const u32 *__restrict__ params,
                           u32 *__restrict__ results, u32 rows, u32 vocab, int fx_bits) {
  __shared__ Shared sh;
  const u32 row = blockIdx.x;
  if (row >= rows) return;
  RowDomain<T> dom;
  dom.logits = logits + (size_t)row * vocab;
  dom.vocab = vocab;
  dom.rp.load(params, row);
  const RowParams &rp = dom.rp;

  // 1. Argmax of the processed logits.
  u32 best_key = 0, best_id = NONE;  // every real key is ≥ order_key(−∞) > 0
  dom.for_each([&](u32 i, float l) {
    const u32 k = order_key(l);
    if (k > best_key) {  // ids ascend within a chunk: the first maximum is the lowest id
      best_key = k;
      best_id = i;
    }
  });
  block_argmax(best_key, best_id, sh);
  const float max = key_value(best_key);
  // No finite maximum (every l is −∞, or one is +∞, which would make the weights NaN):
  // NO_FINITE_LOGIT, as the definition says. Every thread holds the same max (block_argmax
  // broadcasts it and ends with a barrier), so the whole block returns together.
  if (!isfinite(max)) {
    if (threadIdx.x == 0) results[row] = NO_FINITE_LOGIT;
    return;
  }
  const bool greedy = (rp.flags & FLAG_GREEDY) != 0u;
  const Weights W{max, greedy ? 1.0f : rp.temperature, fx_bits};

  u32 token = best_id;
  if (!greedy) {
    TopK topk{false, 0u, 0u};
    bool listed = false;
    if (rp.top_k > 0u) {
      LogitKeys lk;
      const u32 k = rp.top_k;
      const Selected sel =
          radix_select(dom, lk, [k](u64 total) { return total < k ? total : (u64)k; }, sh);
      u64 members;
      const u32 tie_end = admit_ties(dom, lk, sel.thr, sel.rest, &members, sh);
      topk = TopK{true, sel.thr, tie_end};
      if (k <= LIST_CAP) {
        const u32 n = gather(dom, lk, sel.thr, tie_end, members, LIST_CAP, sh.list_id,
                             sh.list_l, nullptr, sh);
        const ListDomain list{sh.list_id, sh.list_l, n};
        token = sample_filtered(list, rp, W, TopK{false, 0u, 0u}, best_id, sh);
        listed = true;
      }
    }
    if (!listed) token = sample_filtered(dom, rp, W, topk, best_id, sh);
  }

  if (rp.flags & FLAG_LOGPROBS) {
    double acc = 0.0;
    dom.for_each([&](u32, float l) {
      const float s = W.shift(l);
      if (s > -1000.0f) acc += exp((double)s);  // below, exp underflows to 0 anyway
    });
    LogprobKeys lpk{W, log(block_sum(acc, sh))};
    const u32 n = min(rp.num_logprobs, min(vocab, MAX_LOGPROBS));
    u32 count = 0;
    if (n > 0) {
      const Selected sel =
          radix_select(dom, lpk, [n](u64 total) { return total < n ? total : (u64)n; }, sh);
      u64 members;
      const u32 tie_end = admit_ties(dom, lpk, sel.thr, sel.rest, &members, sh);
      count = gather(dom, lpk, sel.thr, tie_end, members, MAX_LOGPROBS, sh.top_id, nullptr,
                     sh.top_key, sh);
    }
    if (threadIdx.x == 0) {
      // Most likely first, equal logprobs by lower id (insertion sort of ≤ 20).
      for (u32 a = 1; a < count; ++a) {
        const u32 key = sh.top_key[a], id = sh.top_id[a];
        u32 b = a;
        while (b > 0 && (sh.top_key[b - 1] < key ||
                         (sh.top_key[b - 1] == key && sh.top_id[b - 1] > id))) {
          sh.top_key[b] = sh.top_key[b - 1];
          sh.top_id[b] = sh.top_id[b - 1];
          --b;
        }
        sh.top_key[b] = key;
        sh.top_id[b] = id;
      }
      u32 *out = results + rows + (size_t)rp.logprob_slot * LOGPROB_WORDS;
      const u32 scored = rp.logprob_token != NONE ? rp.logprob_token : token;
      out[0] = __float_as_uint(lpk.logprob(dom.value_at(scored)));
      out[1] = count;
      for (u32 a = 0; a < count; ++a) {
        out[2 + 2 * a] = sh.top_id[a];
        out[3 + 2 * a] = __float_as_uint(key_value(sh.top_key[a]));
      }
    }
  }
  if (threadIdx.x == 0) results[row] = token;
}

}  // namespace sampling

// One block of SAMPLE_THREADS per row; params and results as laid out above.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_bf16(const __nv_bfloat16 *__restrict__ logits, const uint32_t *__restrict__ params,
                uint32_t *__restrict__ results, int rows, int vocab, int fx_bits) {
  sampling::sample_row(logits, params, results, (uint32_t)rows, (uint32_t)vocab, fx_bits);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_f32(const float *__restrict__ logits, const uint32_t *__restrict__ params,
               uint32_t *__restrict__ results, int rows, int vocab, int fx_bits) {
  sampling::sample_row(logits, params, results, (uint32_t)rows, (uint32_t)vocab, fx_bits);
}
