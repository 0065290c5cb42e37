// Mixture-of-experts kernels (Mixtral, Qwen3-MoE): routing, bucketing by expert, grouped GEMMs on
// tensor cores and the weighted gather of each token's expert outputs.
//
// moe_route_{bf16,f32}: one warp per token: softmax over E in f32, top-k by repeated warp
//   argmax (equal probabilities: the lower expert id), renormalised in j order when
//   `renormalize` is set, else the chosen probabilities themselves. Any E up to the
//   shared memory (ROUTE_WARPS · E floats) and any top_k ≤ E: lanes stride over E.
// moe_experts pipeline (no host synchronisation; grids sized by host upper bounds):
//   moe_count     counts[e] = pairs routed to e                      (atomics; zeroed first)
//   moe_offsets   offsets[E+1] (exclusive scan), cursor = offsets, tile_offsets[E+1]:
//                 expert e owns GEMM row tiles tile_offsets[e]..tile_offsets[e+1]
//   moe_scatter   pair (t, j) → position p in its expert's bucket: sorted_token[p] = t,
//                 pair_pos[t·k + j] = p. The order inside a bucket is arbitrary (atomics),
//                 which does not change any result: every GEMM row is computed the same
//                 way wherever it sits, and the final sum gathers by (t, j).
//   moe_gemm_gate_up  act[p] = silu(x[t]·w1[e]ᵀ) · (x[t]·w3[e]ᵀ), bf16 [P, I] (gather fused
//                 into the A loads, silu·mul into the epilogue)
//   moe_gemm_down ys[p] = act[p] · w2[e]ᵀ, f32 [P, H]
//   moe_combine   out[t] = Σ_j topk_weights[t, j] · ys[pair_pos[t·k + j]] in j order, bf16
// An id ≥ E (impossible from moe_route) is skipped: its pair contributes nothing.

#include "attention_common.cuh"

using namespace nvattn;
typedef __nv_bfloat16 bf16;

// ------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------

constexpr int ROUTE_WARPS = 4;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

// Dynamic shared memory: probs [ROUTE_WARPS][experts] f32.
template <typename T>
__device__ __forceinline__ void moe_route_impl(const T *__restrict__ logits,
                                               uint32_t *__restrict__ topk_ids,
                                               float *__restrict__ topk_weights, int tokens,
                                               int experts, int top_k, int renormalize) {
  extern __shared__ float route_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * ROUTE_WARPS + warp;
  if (row >= tokens) return;  // whole warps only; no block-wide barrier follows
  float *probs = route_smem + warp * experts;
  const T *l = logits + (size_t)row * experts;

  float m = -INFINITY;
  for (int e = lane; e < experts; e += 32) {
    const float v = to_f32(l[e]);
    probs[e] = v;
    m = fmaxf(m, v);
  }
  m = warp_max(m);
  float sum = 0.f;
  for (int e = lane; e < experts; e += 32) {
    const float x = expf(probs[e] - m);
    probs[e] = x;
    sum += x;
  }
  sum = warp_sum(sum);
  for (int e = lane; e < experts; e += 32) probs[e] = probs[e] / sum;
  __syncwarp();

  float chosen_sum = 0.f;
  for (int j = 0; j < top_k; ++j) {
    // The lane's best (first maximum in ascending e), then the warp's: larger value wins,
    // equal values go to the lower id.
    float best = -INFINITY;
    int best_id = experts;
    for (int e = lane; e < experts; e += 32) {
      if (best_id == experts || probs[e] > best) {
        best = probs[e];
        best_id = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, best, o);
      const int other_id = __shfl_xor_sync(0xffffffffu, best_id, o);
      if (other > best || (other == best && other_id < best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    if (lane == 0) {
      topk_ids[(size_t)row * top_k + j] = (uint32_t)best_id;
      topk_weights[(size_t)row * top_k + j] = best;
      chosen_sum += best;
      probs[best_id] = -INFINITY;  // taken
    }
    __syncwarp();
  }
  if (lane == 0 && renormalize) {
    for (int j = 0; j < top_k; ++j) topk_weights[(size_t)row * top_k + j] /= chosen_sum;
  }
}

extern "C" __global__ void moe_route_bf16(const bf16 *logits, uint32_t *topk_ids,
                                          float *topk_weights, int tokens, int experts,
                                          int top_k, int renormalize) {
  moe_route_impl<bf16>(logits, topk_ids, topk_weights, tokens, experts, top_k, renormalize);
}

extern "C" __global__ void moe_route_f32(const float *logits, uint32_t *topk_ids,
                                         float *topk_weights, int tokens, int experts,
                                         int top_k, int renormalize) {
  moe_route_impl<float>(logits, topk_ids, topk_weights, tokens, experts, top_k, renormalize);
}

// ------------------------------------------------------------------------------------------
// Bucketing
// ------------------------------------------------------------------------------------------

extern "C" __global__ void moe_count(const uint32_t *__restrict__ topk_ids, int pairs,
                                     int experts, uint32_t *__restrict__ counts) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const uint32_t e = topk_ids[p];
  if (e < (uint32_t)experts) atomicAdd(&counts[e], 1u);
}

// One thread: E is small (tens to hundreds), and this runs once per MoE layer.
extern "C" __global__ void moe_offsets(const uint32_t *__restrict__ counts, int experts,
                                       int block_m, uint32_t *__restrict__ offsets,
                                       uint32_t *__restrict__ cursor,
                                       uint32_t *__restrict__ tile_offsets) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  uint32_t rows = 0, tiles = 0;
  for (int e = 0; e < experts; ++e) {
    offsets[e] = rows;
    cursor[e] = rows;
    tile_offsets[e] = tiles;
    rows += counts[e];
    tiles += (counts[e] + block_m - 1) / block_m;
  }
  offsets[experts] = rows;
  tile_offsets[experts] = tiles;
}

extern "C" __global__ void moe_scatter(const uint32_t *__restrict__ topk_ids, int pairs,
                                       int top_k, int experts, uint32_t *__restrict__ cursor,
                                       uint32_t *__restrict__ sorted_token,
                                       uint32_t *__restrict__ pair_pos) {
  const int pair = blockIdx.x * blockDim.x + threadIdx.x;
  if (pair >= pairs) return;
  const uint32_t e = topk_ids[pair];
  if (e >= (uint32_t)experts) {
    pair_pos[pair] = 0xffffffffu;
    return;
  }
  const uint32_t p = atomicAdd(&cursor[e], 1u);
  sorted_token[p] = (uint32_t)(pair / top_k);
  pair_pos[pair] = p;
}

// ------------------------------------------------------------------------------------------
// Grouped GEMM: out[p, n] = Σ_k A[row(p), k] · W[e(p)][n, k]
// ------------------------------------------------------------------------------------------

constexpr int GM_BM = 64, GM_BN = 64, GM_BK = 32;
constexpr int GM_THREADS = 128;     // 4 warps as 2 × 2, each 32 rows × 32 columns
constexpr int GM_STRIDE = GM_BK + 8;  // padded smem rows (80 B): conflict-free ldmatrix
constexpr int GM_C_STRIDE = GM_BN + 4;
constexpr int GM_STAGE_ELEMS = GM_BM * GM_STRIDE;  // one A or B stage (BM == BN)
constexpr int GM_SMEM_BYTES =
    (4 * GM_STAGE_ELEMS * 2 > GM_BM * GM_C_STRIDE * 4) ? 4 * GM_STAGE_ELEMS * 2
                                                       : GM_BM * GM_C_STRIDE * 4;

// The expert owning row tile `tile`: the last e with tile_offsets[e] ≤ tile.
__device__ __forceinline__ int expert_of_tile(const uint32_t *tile_offsets, int experts,
                                              uint32_t tile) {
  int lo = 0, hi = experts;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (tile_offsets[mid] <= tile)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// GATED: W rows are [gate ‖ up] (w13 of shape [E, 2·n_out, K]); the CTA computes 32 gate
// and the matching 32 up columns and writes silu(gate)·up as bf16 [P, n_out].
// Otherwise W is [E, n_out, K] and the CTA writes 64 f32 columns of [P, n_out].
// GATHER: A row of pair row p is a_rows[sorted_token[p]] (x), else row p (act).
template <bool GATED, bool GATHER>
__device__ __forceinline__ void moe_gemm_impl(
    const bf16 *__restrict__ a, const bf16 *__restrict__ w, void *__restrict__ out,
    const uint32_t *__restrict__ sorted_token, const uint32_t *__restrict__ offsets,
    const uint32_t *__restrict__ tile_offsets, int experts, int n_out, int k_dim) {
  __shared__ alignas(16) unsigned char gm_smem[GM_SMEM_BYTES];
  bf16 *a_smem = reinterpret_cast<bf16 *>(gm_smem);  // [2][BM][STRIDE]
  bf16 *b_smem = a_smem + 2 * GM_STAGE_ELEMS;         // [2][BN][STRIDE]
  float *c_smem = reinterpret_cast<float *>(gm_smem);  // [BM][C_STRIDE], after the K loop

  const uint32_t tile = blockIdx.x;
  if (tile >= tile_offsets[experts]) return;
  const int e = expert_of_tile(tile_offsets, experts, tile);
  const uint32_t row0 = offsets[e] + (tile - tile_offsets[e]) * GM_BM;
  const int rows = (int)min((uint32_t)GM_BM, offsets[e + 1] - row0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int group = lane / 4, tig = lane % 4;

  // W rows of this CTA's 64 tile rows, and whether each exists.
  const int half = GM_BN / 2;
  const int n0 = GATED ? blockIdx.y * half : blockIdx.y * GM_BN;
  const size_t w_rows_total = GATED ? 2 * (size_t)n_out : (size_t)n_out;
  const bf16 *w_expert = w + (size_t)e * w_rows_total * k_dim;

  // Each thread copies 2 A chunks and 2 B chunks (16 bytes) per K tile.
  const bf16 *a_src[2];
  const bf16 *b_src[2];
  bool a_ok[2], b_ok[2];
  int chunk_row[2], chunk_col[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = tid + i * GM_THREADS;  // 0..255: 64 rows × 4 chunks
    const int r = c / (GM_BK / 8);
    chunk_row[i] = r;
    chunk_col[i] = (c % (GM_BK / 8)) * 8;
    a_ok[i] = r < rows;
    const size_t a_row = a_ok[i] ? (GATHER ? sorted_token[row0 + r] : row0 + r) : 0;
    a_src[i] = a + a_row * k_dim;
    int w_row;
    if (GATED) {
      const int col = n0 + (r < half ? r : r - half);
      b_ok[i] = col < n_out;
      w_row = r < half ? col : n_out + col;
    } else {
      w_row = n0 + r;
      b_ok[i] = w_row < n_out;
    }
    b_src[i] = w_expert + (size_t)(b_ok[i] ? w_row : 0) * k_dim;
  }

  auto load_stage = [&](int stage, int k0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int k = k0 + chunk_col[i];
      const bool in_k = k < k_dim;  // k_dim % 8 == 0, so a chunk is all in or all out
      bf16 *a_dst = a_smem + stage * GM_STAGE_ELEMS + chunk_row[i] * GM_STRIDE + chunk_col[i];
      bf16 *b_dst = b_smem + stage * GM_STAGE_ELEMS + chunk_row[i] * GM_STRIDE + chunk_col[i];
      cp_async_16(a_dst, a_src[i] + (in_k ? k : 0), a_ok[i] && in_k);
      cp_async_16(b_dst, b_src[i] + (in_k ? k : 0), b_ok[i] && in_k);
    }
    cp_async_commit();
  };

  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int x = 0; x < 4; ++x) acc[mi][ni][x] = 0.f;

  const int k_tiles = (k_dim + GM_BK - 1) / GM_BK;
  load_stage(0, 0);
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int stage = kt % 2;
    if (kt + 1 < k_tiles) {
      load_stage(1 - stage, (kt + 1) * GM_BK);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16 *as = a_smem + stage * GM_STAGE_ELEMS;
    const bf16 *bs = b_smem + stage * GM_STAGE_ELEMS;
#pragma unroll
    for (int ks = 0; ks < GM_BK / 16; ++ks) {
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        load_a_frag(af[mi], as + (warp_m * 32 + mi * 16) * GM_STRIDE + ks * 16, GM_STRIDE, lane);
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
        uint32_t b[4];
        load_b_frag_nk(b, bs + (warp_n * 32 + nb * 16) * GM_STRIDE + ks * 16, GM_STRIDE, lane);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_bf16_16816(acc[mi][2 * nb], af[mi], b[0], b[1]);
          mma_bf16_16816(acc[mi][2 * nb + 1], af[mi], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the stage is overwritten two iterations later
  }

  // Epilogue through shared memory (the staging buffers are free now).
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int r = warp_m * 32 + mi * 16 + group + (x / 2) * 8;
        const int c = warp_n * 32 + ni * 8 + tig * 2 + (x % 2);
        c_smem[r * GM_C_STRIDE + c] = acc[mi][ni][x];
      }
  __syncthreads();
  if (GATED) {
    bf16 *act = reinterpret_cast<bf16 *>(out);
    for (int idx = tid; idx < GM_BM * half; idx += GM_THREADS) {
      const int r = idx / half, c = idx % half;
      if (r >= rows || n0 + c >= n_out) continue;
      const float gate = c_smem[r * GM_C_STRIDE + c];
      const float up = c_smem[r * GM_C_STRIDE + half + c];
      const float silu = gate / (1.f + expf(-gate));
      act[(size_t)(row0 + r) * n_out + n0 + c] = __float2bfloat16(silu * up);
    }
  } else {
    float *ys = reinterpret_cast<float *>(out);
    for (int idx = tid; idx < GM_BM * GM_BN; idx += GM_THREADS) {
      const int r = idx / GM_BN, c = idx % GM_BN;
      if (r >= rows || n0 + c >= n_out) continue;
      ys[(size_t)(row0 + r) * n_out + n0 + c] = c_smem[r * GM_C_STRIDE + c];
    }
  }
}

// grid (row-tile upper bound, ⌈intermediate / 32⌉): act [P, I] bf16.
extern "C" __global__ void __launch_bounds__(GM_THREADS)
    moe_gemm_gate_up(const bf16 *x, const bf16 *w13, bf16 *act, const uint32_t *sorted_token,
                     const uint32_t *offsets, const uint32_t *tile_offsets, int experts,
                     int intermediate, int hidden) {
  moe_gemm_impl<true, true>(x, w13, act, sorted_token, offsets, tile_offsets, experts,
                            intermediate, hidden);
}

// grid (row-tile upper bound, ⌈hidden / 64⌉): ys [P, H] f32.
extern "C" __global__ void __launch_bounds__(GM_THREADS)
    moe_gemm_down(const bf16 *act, const bf16 *w2, float *ys, const uint32_t *offsets,
                  const uint32_t *tile_offsets, int experts, int hidden, int intermediate) {
  moe_gemm_impl<false, false>(act, w2, ys, nullptr, offsets, tile_offsets, experts, hidden,
                              intermediate);
}

// ------------------------------------------------------------------------------------------
// Weighted gather: grid tokens, block 256.
// ------------------------------------------------------------------------------------------

extern "C" __global__ void moe_combine(const float *__restrict__ ys,
                                       const uint32_t *__restrict__ pair_pos,
                                       const float *__restrict__ topk_weights,
                                       bf16 *__restrict__ out, int top_k, int hidden) {
  const int t = blockIdx.x;
  for (int col = threadIdx.x; col < hidden; col += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const uint32_t p = pair_pos[(size_t)t * top_k + j];
      if (p == 0xffffffffu) continue;
      acc = fmaf(topk_weights[(size_t)t * top_k + j], ys[(size_t)p * hidden + col], acc);
    }
    out[(size_t)t * hidden + col] = __float2bfloat16(acc);
  }
}
