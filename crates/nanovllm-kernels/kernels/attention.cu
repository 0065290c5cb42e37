// Paged attention over a bf16 or FP8 (e4m3) KV cache `[num_blocks, block_size, kv_heads,
// head_dim]`, and store_kv_fp8.
//
// FP8 caches: the kernels are the bf16 ones templated on the cache element (`fp8`), which
// widen e4m3 in registers (exactly: every e4m3 value is a bf16). The host folds the
// layer's k_scale into `scale`; the fp8 kernels take `v_scale` and apply it to the output
// (Σ p·(e·v_scale) = v_scale·Σ p·e); the bf16 ones pass 1.
//
// prefill_attention_d{D}: flash-attention-2. One CTA = 64 query rows of one sequence and
//   one query head (4 warps × 16 rows); keys/values are streamed in 64-key tiles read through
//   the block table (cached prefix included) with cp.async, S = Q·Kᵀ and O += P·V on tensor
//   cores (mma.m16n8k16 bf16, f32 accumulation), online softmax in f32 with expf. Query row i
//   of a sequence sits at position context_len − q_len + i and sees keys 0..=pos.
//
// decode_attention_d{D}_g{G}: flash-decoding. One CTA = one sequence, one KV head (all G
//   query heads of its group, so each K/V element is read once per group) and one context
//   split of `partition_size` keys; 16-byte vector loads. Pass 1 writes q·k scores to shared
//   memory, then max/exp/sum per head, pass 2 accumulates p·v. With one split the CTA writes
//   the normalised output; otherwise it writes (acc, max, sum) partials and
//   decode_attention_combine merges the ⌈context_len / partition_size⌉ valid splits.
//
// Graph safety: every per-sequence length is read on the device (cu_seqlens_q,
// context_lens); grids are sized by host upper bounds and CTAs past a sequence's end exit
// without writing (the combine step only reads valid splits). A context of 0 gives zeros.
// Bounded reads: context lengths are clamped to the block table's capacity and block ids
// to the cache, so malformed metadata gives wrong numbers, never an out-of-bounds access.

#include "attention_common.cuh"

using namespace nvattn;
typedef __nv_bfloat16 bf16;
typedef __nv_fp8_e4m3 fp8;

// Cache element offset of (key, kv_head) for one sequence's block table.
__device__ __forceinline__ size_t cache_row(const uint32_t *block_table, uint32_t key,
                                            int block_size, int num_blocks, int num_kv_heads,
                                            int kv_head, int head_dim) {
  uint32_t block = block_table[key / block_size];
  block = min(block, (uint32_t)(num_blocks - 1));
  const size_t slot = (size_t)block * block_size + key % block_size;
  return (slot * num_kv_heads + kv_head) * head_dim;
}

// How the decode kernel reads 8 consecutive cache elements of one lane: one vector load
// (16 bytes of bf16, 8 bytes of e4m3), widened to f32 in registers.
template <typename KV>
struct CacheVec;
template <>
struct CacheVec<bf16> {
  typedef uint4 Vec;
  static __device__ __forceinline__ Vec load(const bf16 *p) {
    return *reinterpret_cast<const uint4 *>(p);
  }
  static __device__ __forceinline__ void widen(const Vec &v, float (&out)[8]) {
    bf16x8_to_f32(v, out);
  }
};
template <>
struct CacheVec<fp8> {
  typedef uint2 Vec;
  static __device__ __forceinline__ Vec load(const fp8 *p) {
    return *reinterpret_cast<const uint2 *>(p);
  }
  static __device__ __forceinline__ void widen(const Vec &v, float (&out)[8]) {
    fp8x8_to_f32(v, out);
  }
};

// Writes k, v: bf16 [num_tokens, width] into an e4m3 cache as e4m3(x / scale) at the rows
// slot_mapping names; −1 (padding) and slots outside the cache write nothing.
extern "C" __global__ void store_kv_fp8(uint8_t *__restrict__ k_cache, uint8_t *__restrict__ v_cache,
                                        const bf16 *__restrict__ k, const bf16 *__restrict__ v,
                                        const int64_t *__restrict__ slot_mapping,
                                        long long num_tokens, int width, long long num_slots,
                                        float k_scale, float v_scale) {
  const long long n = num_tokens * width;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const long long t = i / width;
    const long long j = i - t * width;
    const int64_t slot = slot_mapping[t];
    if (slot < 0 || slot >= num_slots) continue;
    k_cache[slot * width + j] = f32_to_e4m3_scaled(__bfloat162float(k[i]), k_scale);
    v_cache[slot * width + j] = f32_to_e4m3_scaled(__bfloat162float(v[i]), v_scale);
  }
}

// ------------------------------------------------------------------------------------------
// Prefill
// ------------------------------------------------------------------------------------------

constexpr int PF_BM = 64;       // query rows per CTA (4 warps × 16)
constexpr int PF_BN = 64;       // keys per tile
constexpr int PF_THREADS = 128;

// One 8-element chunk of a K or V tile row into shared memory as bf16: an asynchronous
// 16-byte copy from a bf16 cache (zeros when !valid), or 8 e4m3 bytes loaded and widened
// (visible after the tile's __syncthreads).
__device__ __forceinline__ void load_tile_chunk(bf16 *smem, const bf16 *cache, size_t off,
                                                bool valid) {
  cp_async_16(smem, cache + off, valid);
}
__device__ __forceinline__ void load_tile_chunk(bf16 *smem, const fp8 *cache, size_t off,
                                                bool valid) {
  const uint2 raw = valid ? *reinterpret_cast<const uint2 *>(cache + off) : make_uint2(0, 0);
  *reinterpret_cast<uint4 *>(smem) = fp8x8_to_bf16x8(raw);
}

template <int D, typename KV>
__device__ __forceinline__ void prefill_attention_impl(
    const bf16 *__restrict__ q, const KV *__restrict__ k_cache,
    const KV *__restrict__ v_cache, bf16 *__restrict__ out,
    const uint32_t *__restrict__ cu_seqlens_q, const uint32_t *__restrict__ context_lens,
    const uint32_t *__restrict__ block_tables, int num_tokens, int max_blocks, int block_size,
    int num_blocks, int num_heads, int num_kv_heads, float scale, float v_scale) {
  constexpr int STRIDE = D + 8;  // padded rows: conflict-free ldmatrix
  constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
  // The Q tile is staged in kq_smem, moved to registers, then K tiles reuse the space.
  __shared__ alignas(16) bf16 kq_smem[PF_BN * STRIDE];
  __shared__ alignas(16) bf16 v_smem[PF_BN * STRIDE];

  const int tile = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, tig = lane % 4;

  const uint32_t q_start = min(cu_seqlens_q[seq], (uint32_t)num_tokens);
  const uint32_t q_end = min(max(cu_seqlens_q[seq + 1], q_start), (uint32_t)num_tokens);
  const uint32_t context_len = min(context_lens[seq], (uint32_t)max_blocks * (uint32_t)block_size);
  const int q_len = (int)min(q_end - q_start, context_len);
  const int row0 = tile * PF_BM;
  if (row0 >= q_len) return;
  const int kv_head = head / (num_heads / num_kv_heads);
  const uint32_t *block_table = block_tables + (size_t)seq * max_blocks;
  const int past = (int)context_len - q_len;  // keys before the first new token
  const size_t q_row_stride = (size_t)num_heads * D;

  // Q tile → shared → A fragments.
  for (int c = tid; c < PF_BM * CHUNKS; c += PF_THREADS) {
    const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
    const bool valid = row0 + r < q_len;
    const bf16 *src = valid ? q + (q_start + row0 + r) * q_row_stride + head * D + col : q;
    cp_async_16(&kq_smem[r * STRIDE + col], src, valid);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t q_frag[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    load_a_frag(q_frag[kk], &kq_smem[warp * 16 * STRIDE + kk * 16], STRIDE, lane);
  __syncthreads();

  // This thread's two rows (group, group + 8 of the warp); rows past q_len compute the
  // last row's attention (finite) and are not stored.
  int pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) pos[i] = past + min(row0 + warp * 16 + group + 8 * i, q_len - 1);
  const int kv_end = past + min(row0 + PF_BM, q_len);  // keys this CTA needs
  const int num_tiles = (kv_end + PF_BN - 1) / PF_BN;

  float o_acc[D / 8][4];
#pragma unroll
  for (int t = 0; t < D / 8; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[t][e] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // this thread's part; the quad is summed at the end

  for (int j = 0; j < num_tiles; ++j) {
    const int kv0 = j * PF_BN;
    for (int c = tid; c < PF_BN * CHUNKS; c += PF_THREADS) {
      const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
      const bool valid = kv0 + r < kv_end;
      const size_t off = valid ? cache_row(block_table, kv0 + r, block_size, num_blocks,
                                           num_kv_heads, kv_head, D) + col
                               : 0;
      load_tile_chunk(&kq_smem[r * STRIDE + col], k_cache, off, valid);
    }
    cp_async_commit();
    for (int c = tid; c < PF_BN * CHUNKS; c += PF_THREADS) {
      const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
      const bool valid = kv0 + r < kv_end;
      const size_t off = valid ? cache_row(block_table, kv0 + r, block_size, num_blocks,
                                           num_kv_heads, kv_head, D) + col
                               : 0;
      // Keys past the end are zero-filled: p = 0 there, and 0 · garbage could be NaN.
      load_tile_chunk(&v_smem[r * STRIDE + col], v_cache, off, valid);
    }
    cp_async_commit();
    cp_async_wait<1>();  // K landed; V may still be in flight
    __syncthreads();

    // S = Q · Kᵀ for this warp's 16 rows × 64 keys.
    float s_acc[PF_BN / 8][4];
#pragma unroll
    for (int t = 0; t < PF_BN / 8; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) s_acc[t][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < PF_BN / 16; ++nb) {
        uint32_t b[4];
        load_b_frag_nk(b, &kq_smem[nb * 16 * STRIDE + kk * 16], STRIDE, lane);
        mma_bf16_16816(s_acc[2 * nb], q_frag[kk], b[0], b[1]);
        mma_bf16_16816(s_acc[2 * nb + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // Scale, causal mask, online softmax (rows are shared by the 4 threads of a quad).
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int t = 0; t < PF_BN / 8; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = e / 2;
        const int key = kv0 + t * 8 + tig * 2 + (e & 1);
        const float v = key <= pos[i] ? s_acc[t][e] * scale : -INFINITY;
        s_acc[t][e] = v;
        tile_max[i] = fmaxf(tile_max[i], v);
      }
    float alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
      const float new_max = fmaxf(row_max[i], tile_max[i]);
      // Every row sees key 0 in tile 0, so new_max is finite and exp(−∞) = 0 is safe.
      alpha[i] = expf(row_max[i] - new_max);
      row_max[i] = new_max;
      row_sum[i] *= alpha[i];
    }
    uint32_t p_frag[PF_BN / 16][4];
#pragma unroll
    for (int t = 0; t < PF_BN / 8; ++t) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = expf(s_acc[t][e] - row_max[e / 2]);
        row_sum[e / 2] += p[e];
      }
      // Two adjacent n8 tiles of S form one k16 A fragment of P.
      p_frag[t / 2][(t % 2) * 2 + 0] = pack_bf16x2(p[0], p[1]);
      p_frag[t / 2][(t % 2) * 2 + 1] = pack_bf16x2(p[2], p[3]);
    }
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
      o_acc[t][0] *= alpha[0];
      o_acc[t][1] *= alpha[0];
      o_acc[t][2] *= alpha[1];
      o_acc[t][3] *= alpha[1];
    }

    cp_async_wait<0>();
    __syncthreads();
    // O += P · V.
#pragma unroll
    for (int kk = 0; kk < PF_BN / 16; ++kk) {
#pragma unroll
      for (int db = 0; db < D / 16; ++db) {
        uint32_t b[4];
        load_b_frag_kn(b, &v_smem[kk * 16 * STRIDE + db * 16], STRIDE, lane);
        mma_bf16_16816(o_acc[2 * db], p_frag[kk], b[0], b[1]);
        mma_bf16_16816(o_acc[2 * db + 1], p_frag[kk], b[2], b[3]);
      }
    }
    __syncthreads();  // the next tile overwrites K and V
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 1);
    row_sum[i] += __shfl_xor_sync(0xffffffffu, row_sum[i], 2);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = row0 + warp * 16 + group + 8 * i;
    if (r >= q_len) continue;
    const float inv = (1.f / row_sum[i]) * v_scale;
    bf16 *dst = out + (q_start + r) * q_row_stride + head * D + tig * 2;
#pragma unroll
    for (int t = 0; t < D / 8; ++t)
      *reinterpret_cast<uint32_t *>(dst + t * 8) =
          pack_bf16x2(o_acc[t][2 * i] * inv, o_acc[t][2 * i + 1] * inv);
  }
}

#define PREFILL_KERNEL(D)                                                                     \
  extern "C" __global__ void __launch_bounds__(PF_THREADS) prefill_attention_d##D(          \
      const bf16 *q, const bf16 *k_cache, const bf16 *v_cache, bf16 *out,                    \
      const uint32_t *cu_seqlens_q, const uint32_t *context_lens,                            \
      const uint32_t *block_tables, int num_tokens, int max_blocks, int block_size,          \
      int num_blocks, int num_heads, int num_kv_heads, float scale) {                        \
    prefill_attention_impl<D, bf16>(q, k_cache, v_cache, out, cu_seqlens_q, context_lens,   \
                                    block_tables, num_tokens, max_blocks, block_size,        \
                                    num_blocks, num_heads, num_kv_heads, scale, 1.f);        \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(PF_THREADS) prefill_attention_fp8_d##D(      \
      const bf16 *q, const fp8 *k_cache, const fp8 *v_cache, bf16 *out,                      \
      const uint32_t *cu_seqlens_q, const uint32_t *context_lens,                            \
      const uint32_t *block_tables, int num_tokens, int max_blocks, int block_size,          \
      int num_blocks, int num_heads, int num_kv_heads, float scale, float v_scale) {         \
    prefill_attention_impl<D, fp8>(q, k_cache, v_cache, out, cu_seqlens_q, context_lens,    \
                                   block_tables, num_tokens, max_blocks, block_size,         \
                                   num_blocks, num_heads, num_kv_heads, scale, v_scale);     \
  }

PREFILL_KERNEL(64)
PREFILL_KERNEL(128)

// ------------------------------------------------------------------------------------------
// Decode
// ------------------------------------------------------------------------------------------

constexpr int DC_THREADS = 128;
constexpr int DC_WARPS = DC_THREADS / 32;
constexpr int DC_UNROLL = 4;  // keys in flight per thread

// Dynamic shared memory: scores [G][partition_size], out [G][D], max [G], sum [G] (f32).
template <int D, int MAXG, typename KV>
__device__ __forceinline__ void decode_attention_impl(
    const bf16 *__restrict__ q, const KV *__restrict__ k_cache,
    const KV *__restrict__ v_cache, bf16 *__restrict__ out, float *__restrict__ partial_acc,
    float *__restrict__ partial_max, float *__restrict__ partial_sum,
    const uint32_t *__restrict__ context_lens, const uint32_t *__restrict__ block_tables,
    int max_blocks, int block_size, int num_blocks, int num_heads, int num_kv_heads,
    int partition_size, int num_splits, float scale, float v_scale) {
  typedef CacheVec<KV> CV;
  constexpr int LANES = D / 8;               // threads per key row (8 elements each)
  constexpr int GROUPS = DC_THREADS / LANES;  // keys processed side by side
  extern __shared__ float dc_smem[];

  const int seq = blockIdx.x, kv_head = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int key_group = tid / LANES, lane_in_row = tid % LANES;
  const int G = num_heads / num_kv_heads;
  const bool direct = num_splits == 1;
  const size_t q_row_stride = (size_t)num_heads * D;

  const uint32_t context_len = min(context_lens[seq], (uint32_t)max_blocks * (uint32_t)block_size);
  const int start = split * partition_size;
  if (start >= (int)context_len) {
    // Nothing to read. Only a direct CTA owns output (a padding row of context 0);
    // the combine step never reads splits past the context.
    if (direct) {
      for (int idx = tid; idx < G * D; idx += DC_THREADS)
        out[seq * q_row_stride + (kv_head * G + idx / D) * D + idx % D] = __float2bfloat16(0.f);
    }
    return;
  }
  const int len = min(partition_size, (int)context_len - start);
  const uint32_t *block_table = block_tables + (size_t)seq * max_blocks;

  float *scores = dc_smem;                       // [G][partition_size]
  float *out_smem = scores + G * partition_size;  // [G][D]
  float *max_smem = out_smem + G * D;            // [G]
  float *sum_smem = max_smem + G;                // [G]

  // This thread's 8 elements of every query head of the group, pre-scaled.
  float q_reg[MAXG][8];
#pragma unroll
  for (int g = 0; g < MAXG; ++g) {
    if (g < G) {
      const uint4 v = *reinterpret_cast<const uint4 *>(q + seq * q_row_stride +
                                                       (kv_head * G + g) * D + lane_in_row * 8);
      bf16x8_to_f32(v, q_reg[g]);
#pragma unroll
      for (int j = 0; j < 8; ++j) q_reg[g][j] *= scale;
    }
  }

  // Pass 1: scores. Iteration counts are uniform across the CTA (shuffles need every lane).
  const int iters = (len + GROUPS - 1) / GROUPS;
  for (int it0 = 0; it0 < iters; it0 += DC_UNROLL) {
    typename CV::Vec kv[DC_UNROLL];
#pragma unroll
    for (int u = 0; u < DC_UNROLL; ++u) {
      const int i = (it0 + u) * GROUPS + key_group;
      kv[u] = typename CV::Vec{};
      if (it0 + u < iters && i < len) {
        const size_t off = cache_row(block_table, start + i, block_size, num_blocks,
                                     num_kv_heads, kv_head, D);
        kv[u] = CV::load(k_cache + off + lane_in_row * 8);
      }
    }
#pragma unroll
    for (int u = 0; u < DC_UNROLL; ++u) {
      if (it0 + u >= iters) break;  // uniform across the CTA
      const int i = (it0 + u) * GROUPS + key_group;
      float k[8];
      CV::widen(kv[u], k);
#pragma unroll
      for (int g = 0; g < MAXG; ++g) {
        if (g < G) {
          float dot = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j) dot = fmaf(q_reg[g][j], k[j], dot);
#pragma unroll
          for (int o = LANES / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
          if (lane_in_row == 0 && i < len) scores[g * partition_size + i] = dot;
        }
      }
    }
  }
  for (int idx = tid; idx < G * D; idx += DC_THREADS) out_smem[idx] = 0.f;
  __syncthreads();

  // Softmax statistics per head: one warp per head.
  for (int g = warp; g < G; g += DC_WARPS) {
    float *s = scores + g * partition_size;
    float m = -INFINITY;
    for (int i = lane; i < len; i += 32) m = fmaxf(m, s[i]);
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < len; i += 32) {
      const float e = expf(s[i] - m);
      s[i] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      max_smem[g] = m;
      sum_smem[g] = sum;
    }
  }
  __syncthreads();

  // Pass 2: acc[g] = Σ_i p[g][i] · v_i over this thread's keys and 8 elements.
  float acc[MAXG][8];
#pragma unroll
  for (int g = 0; g < MAXG; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  for (int it0 = 0; it0 < iters; it0 += DC_UNROLL) {
    typename CV::Vec vv[DC_UNROLL];
#pragma unroll
    for (int u = 0; u < DC_UNROLL; ++u) {
      const int i = (it0 + u) * GROUPS + key_group;
      vv[u] = typename CV::Vec{};
      if (it0 + u < iters && i < len) {
        const size_t off = cache_row(block_table, start + i, block_size, num_blocks,
                                     num_kv_heads, kv_head, D);
        vv[u] = CV::load(v_cache + off + lane_in_row * 8);
      }
    }
#pragma unroll
    for (int u = 0; u < DC_UNROLL; ++u) {
      const int i = (it0 + u) * GROUPS + key_group;
      if (it0 + u >= iters || i >= len) continue;
      float v[8];
      CV::widen(vv[u], v);
#pragma unroll
      for (int g = 0; g < MAXG; ++g) {
        if (g < G) {
          const float p = scores[g * partition_size + i];
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(p, v[j], acc[g][j]);
        }
      }
    }
  }
  // Sum the key groups in a fixed order (deterministic): one group at a time.
  for (int r = 0; r < GROUPS; ++r) {
    if (key_group == r) {
#pragma unroll
      for (int g = 0; g < MAXG; ++g)
        if (g < G)
#pragma unroll
          for (int j = 0; j < 8; ++j) out_smem[g * D + lane_in_row * 8 + j] += acc[g][j];
    }
    __syncthreads();
  }

  for (int idx = tid; idx < G * D; idx += DC_THREADS) {
    const int g = idx / D, d = idx % D;
    const int h = kv_head * G + g;
    if (direct) {
      out[seq * q_row_stride + h * D + d] =
          __float2bfloat16(out_smem[idx] / sum_smem[g] * v_scale);
    } else {
      const size_t part = ((size_t)seq * num_heads + h) * num_splits + split;
      partial_acc[part * D + d] = out_smem[idx] * v_scale;
      if (d == 0) {
        partial_max[part] = max_smem[g];
        partial_sum[part] = sum_smem[g];
      }
    }
  }
}

#define DECODE_KERNEL(D, G)                                                                   \
  extern "C" __global__ void __launch_bounds__(DC_THREADS) decode_attention_d##D##_g##G(     \
      const bf16 *q, const bf16 *k_cache, const bf16 *v_cache, bf16 *out, float *partial_acc, \
      float *partial_max, float *partial_sum, const uint32_t *context_lens,                  \
      const uint32_t *block_tables, int max_blocks, int block_size, int num_blocks,          \
      int num_heads, int num_kv_heads, int partition_size, int num_splits, float scale) {    \
    decode_attention_impl<D, G, bf16>(q, k_cache, v_cache, out, partial_acc, partial_max,   \
                                      partial_sum, context_lens, block_tables, max_blocks,   \
                                      block_size, num_blocks, num_heads, num_kv_heads,       \
                                      partition_size, num_splits, scale, 1.f);               \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(DC_THREADS) decode_attention_fp8_d##D##_g##G( \
      const bf16 *q, const fp8 *k_cache, const fp8 *v_cache, bf16 *out, float *partial_acc,   \
      float *partial_max, float *partial_sum, const uint32_t *context_lens,                  \
      const uint32_t *block_tables, int max_blocks, int block_size, int num_blocks,          \
      int num_heads, int num_kv_heads, int partition_size, int num_splits, float scale,      \
      float v_scale) {                                                                        \
    decode_attention_impl<D, G, fp8>(q, k_cache, v_cache, out, partial_acc, partial_max,    \
                                     partial_sum, context_lens, block_tables, max_blocks,    \
                                     block_size, num_blocks, num_heads, num_kv_heads,        \
                                     partition_size, num_splits, scale, v_scale);            \
  }

#define DECODE_KERNELS_D(D) \
  DECODE_KERNEL(D, 1)       \
  DECODE_KERNEL(D, 2)       \
  DECODE_KERNEL(D, 4)       \
  DECODE_KERNEL(D, 8)       \
  DECODE_KERNEL(D, 16)

DECODE_KERNELS_D(64)
DECODE_KERNELS_D(128)
DECODE_KERNELS_D(256)

// Merges the splits of decode_attention: grid (num_seqs, num_heads), block head_dim threads.
extern "C" __global__ void decode_attention_combine(
    const float *__restrict__ partial_acc, const float *__restrict__ partial_max,
    const float *__restrict__ partial_sum, const uint32_t *__restrict__ context_lens,
    bf16 *__restrict__ out, int max_blocks, int block_size, int num_heads, int head_dim,
    int partition_size, int num_splits) {
  const int seq = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
  const uint32_t context_len = min(context_lens[seq], (uint32_t)max_blocks * (uint32_t)block_size);
  const int valid = min((int)((context_len + partition_size - 1) / partition_size), num_splits);
  const size_t part0 = ((size_t)seq * num_heads + head) * num_splits;
  float m = -INFINITY;
  for (int c = 0; c < valid; ++c) m = fmaxf(m, partial_max[part0 + c]);
  float sum = 0.f, acc = 0.f;
  for (int c = 0; c < valid; ++c) {
    const float w = expf(partial_max[part0 + c] - m);
    sum = fmaf(w, partial_sum[part0 + c], sum);
    acc = fmaf(w, partial_acc[(part0 + c) * head_dim + d], acc);
  }
  const float o = valid > 0 ? acc / sum : 0.f;
  out[((size_t)seq * num_heads + head) * head_dim + d] = __float2bfloat16(o);
}

// ------------------------------------------------------------------------------------------
// Generic fallback: any head_dim, bf16, f32 or e4m3 cache, prefill or decode.
// ------------------------------------------------------------------------------------------
//
// For shapes the fast kernels do not cover (head dims other than 64/128(/256), f32
// caches, GQA groups > 16). One CTA per (query row, head): scores of all its keys in
// shared memory (`max_keys` of them, a host upper bound), softmax, then one thread per
// output element sums p·v. Correct and bounded, not fast.

constexpr int GN_THREADS = 128;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(fp8 x) { return static_cast<float>(x); }

// Block-wide max (is_max) or sum of one value per thread; every thread gets the result.
__device__ __forceinline__ float block_reduce(float x, bool is_max, float *scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  x = is_max ? warp_max(x) : warp_sum(x);
  __syncthreads();  // scratch may still be read from a previous reduction
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < GN_THREADS / 32; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}

// Dynamic shared memory: scores [max_keys] f32 + 32 floats of reduction scratch.
template <typename KV>
__device__ __forceinline__ void attention_generic_impl(
    const bf16 *__restrict__ q, const KV *__restrict__ k_cache, const KV *__restrict__ v_cache,
    bf16 *__restrict__ out, const uint32_t *__restrict__ cu_seqlens_q,
    const uint32_t *__restrict__ context_lens, const uint32_t *__restrict__ block_tables,
    int is_prefill, int num_seqs, int max_blocks, int block_size, int num_blocks,
    int num_heads, int num_kv_heads, int head_dim, int max_keys, float scale, float v_scale) {
  extern __shared__ float gn_smem[];
  float *scores = gn_smem;
  float *scratch = gn_smem + max_keys;
  const int row = blockIdx.x, head = blockIdx.y, tid = threadIdx.x;
  const size_t q_row_stride = (size_t)num_heads * head_dim;
  bf16 *dst = out + row * q_row_stride + (size_t)head * head_dim;

  // The row's sequence and how many keys it sees (pos + 1).
  int seq = row, num_keys;
  if (is_prefill) {
    int lo = 0, hi = num_seqs;  // last s with cu[s] ≤ row
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (cu_seqlens_q[mid] <= (uint32_t)row)
        lo = mid;
      else
        hi = mid;
    }
    seq = lo;
  }
  const int context_len = (int)min(context_lens[seq], (uint32_t)max_blocks * (uint32_t)block_size);
  if (is_prefill) {
    const int q_len = (int)(cu_seqlens_q[seq + 1] - cu_seqlens_q[seq]);
    const int i = row - (int)cu_seqlens_q[seq];
    num_keys = context_len - q_len + i + 1;
  } else {
    num_keys = context_len;
  }
  num_keys = max(0, min(num_keys, min(context_len, max_keys)));
  if (num_keys == 0) {
    for (int d = tid; d < head_dim; d += GN_THREADS) dst[d] = __float2bfloat16(0.f);
    return;
  }
  const int kv_head = head / (num_heads / num_kv_heads);
  const uint32_t *block_table = block_tables + (size_t)seq * max_blocks;
  const bf16 *q_head = q + row * q_row_stride + (size_t)head * head_dim;

  float m = -INFINITY;
  for (int key = tid; key < num_keys; key += GN_THREADS) {
    const KV *k = k_cache + cache_row(block_table, key, block_size, num_blocks, num_kv_heads,
                                      kv_head, head_dim);
    float dot = 0.f;
    for (int d = 0; d < head_dim; ++d) dot = fmaf(__bfloat162float(q_head[d]), to_float(k[d]), dot);
    dot *= scale;
    scores[key] = dot;
    m = fmaxf(m, dot);
  }
  m = block_reduce(m, true, scratch);
  float sum = 0.f;
  for (int key = tid; key < num_keys; key += GN_THREADS) {
    const float e = expf(scores[key] - m);
    scores[key] = e;
    sum += e;
  }
  sum = block_reduce(sum, false, scratch);  // its barriers also publish every score
  for (int d = tid; d < head_dim; d += GN_THREADS) {
    float acc = 0.f;
    for (int key = 0; key < num_keys; ++key) {
      const KV *v = v_cache + cache_row(block_table, key, block_size, num_blocks, num_kv_heads,
                                        kv_head, head_dim);
      acc = fmaf(scores[key], to_float(v[d]), acc);
    }
    dst[d] = __float2bfloat16(acc / sum * v_scale);
  }
}

#define GENERIC_KERNEL(NAME, KV)                                                              \
  extern "C" __global__ void __launch_bounds__(GN_THREADS) NAME(                            \
      const bf16 *q, const KV *k_cache, const KV *v_cache, bf16 *out,                        \
      const uint32_t *cu_seqlens_q, const uint32_t *context_lens,                            \
      const uint32_t *block_tables, int is_prefill, int num_seqs, int max_blocks,            \
      int block_size, int num_blocks, int num_heads, int num_kv_heads, int head_dim,         \
      int max_keys, float scale) {                                                           \
    attention_generic_impl<KV>(q, k_cache, v_cache, out, cu_seqlens_q, context_lens,        \
                               block_tables, is_prefill, num_seqs, max_blocks, block_size,   \
                               num_blocks, num_heads, num_kv_heads, head_dim, max_keys,      \
                               scale, 1.f);                                                  \
  }

GENERIC_KERNEL(attention_generic_bf16, bf16)
GENERIC_KERNEL(attention_generic_f32, float)

extern "C" __global__ void __launch_bounds__(GN_THREADS) attention_generic_fp8(
    const bf16 *q, const fp8 *k_cache, const fp8 *v_cache, bf16 *out,
    const uint32_t *cu_seqlens_q, const uint32_t *context_lens, const uint32_t *block_tables,
    int is_prefill, int num_seqs, int max_blocks, int block_size, int num_blocks,
    int num_heads, int num_kv_heads, int head_dim, int max_keys, float scale, float v_scale) {
  attention_generic_impl<fp8>(q, k_cache, v_cache, out, cu_seqlens_q, context_lens,
                              block_tables, is_prefill, num_seqs, max_blocks, block_size,
                              num_blocks, num_heads, num_kv_heads, head_dim, max_keys, scale,
                              v_scale);
}
