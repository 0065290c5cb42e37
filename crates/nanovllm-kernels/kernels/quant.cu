// Weight-only quantized matmul: out[M, N] = x[M, K] · W[N, K]ᵀ with x bf16, W in one of the
// block-quantized layouts of src/quant/blocks.rs, out bf16, f32 accumulation. W is read in
// its quantized form and dequantized in registers; no dequantized copy exists in memory.
//
// Layouts (little endian, blocks along K, a row of W is K / elems blocks back to back):
//   int8_g32  34 bytes: f16 d, 32 × i8 q                 w = d · q
//   int4_g32  20 bytes: f16 d, f16 m, 16 nibble bytes    w = d · q + m, byte i = q[i] | q[i+16] << 4
//   fp8_g128 132 bytes: f32 s, 128 × e4m3 q              w = s · e4m3(q)
// Alignment: a row's bytes start at n · (K / elems) · bytes, so int8 blocks are only 2-byte
// aligned (read as u16), int4 and fp8 blocks 4-byte aligned (read as u32). K is a multiple of
// the block size (the host checks), hence of 32.
//
// Both kernels see W in "chunks" of 32 consecutive weights of one row (k0 a multiple of 32);
// a chunk never straddles a block. A thread fetches one half-chunk (16 weights) as raw bytes
// (`fetch`) and widens it to f32 (`widen`), so the two steps can be split to overlap loads.
//
// quant_gemv_<fmt>  (M ≤ GEMV_MAX_M, decode): one warp per W row; lanes take chunks
//   lane, lane + 32, ... and dot each (in f32, weights unrounded) with the same 32 columns of
//   every x row; a warp sum per x row; lane 0 stores. grid ⌈N / GEMV_WARPS⌉, block 32·GEMV_WARPS.
// quant_gemm_<fmt>  (larger M, prefill): 64 × 64 output tiles, K tiles of 32, 4 warps as
//   2 × 2 each 32 × 32, bf16 tensor cores (mma.m16n8k16, f32 accumulation) as moe.cu's
//   grouped GEMM: x tiles arrive by cp.async (double-buffered), W tiles are fetched into
//   registers one K tile ahead, widened, rounded to bf16 and stored to shared memory after the
//   current tile's MMAs. grid (⌈N / 64⌉, ⌈M / 64⌉), block 128.
//
// Numerics: the GEMV multiplies the exact f32 dequantized weights; the GEMM rounds each
// dequantized weight to bf16 (relative 2⁻⁹) for the tensor cores. Output rounded once to bf16.
//
// Never run on a GPU when written (no GPU in the development environment): the source runs on
// the host under tests/quant_emu (src/cuda/quant/emu.rs) against the reference, and the shared
// backend suite (testing/quant.rs) covers the CUDA backend where `cargo xtask gpu-check` runs.

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "attention_common.cuh"
#else
#include "quant_emu.h"  // host emulation for tests (crates/nanovllm-kernels/tests/quant_emu)
#endif

using namespace nvattn;
typedef __nv_bfloat16 bf16;

enum QFormat { Q_INT8_G32 = 0, Q_INT4_G32 = 1, Q_FP8_G128 = 2 };

template <int Q> struct Fmt;
template <> struct Fmt<Q_INT8_G32> { static constexpr int ELEMS = 32, BYTES = 34; };
template <> struct Fmt<Q_INT4_G32> { static constexpr int ELEMS = 32, BYTES = 20; };
template <> struct Fmt<Q_FP8_G128> { static constexpr int ELEMS = 128, BYTES = 132; };

// 16 weights as stored: their 16 code bytes (int8: the codes; int4: the 16 nibble bytes of
// the block, whose low or high nibbles are the 16 weights; fp8: the codes), byte j of v[i]
// being code byte 4i + j, and the block's scale bits (int8: f16 d; int4: f16 d | f16 m << 16;
// fp8: f32 s).
struct Raw16 {
  uint32_t v[4];
  uint32_t scale;
};

__device__ __forceinline__ float f16_bits(uint32_t bits) {
  return __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu)));
}

// e4m3 ("fn": 0x7f/0xff NaN, max 448) → f32 through CUDA's exact fp8 → f16 conversion.
__device__ __forceinline__ float e4m3_to_f32(uint32_t byte) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)byte, __NV_E4M3);
  return __half2float(__half(h));
}

// Weights k0 + 16h .. k0 + 16h + 16 of the W row starting at `row` (k0 % 32 == 0, h ∈ {0,1}).
template <int Q>
__device__ __forceinline__ Raw16 fetch(const uint8_t *__restrict__ row, int k0, int h);

template <>
__device__ __forceinline__ Raw16 fetch<Q_INT8_G32>(const uint8_t *__restrict__ row, int k0, int h) {
  // 2-byte aligned: d is u16 0, code c is byte 2 + c, so codes 16h.. start at u16 1 + 8h.
  const uint16_t *p = reinterpret_cast<const uint16_t *>(row + (size_t)(k0 / 32) * 34);
  Raw16 r;
  r.scale = p[0];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    r.v[i] = (uint32_t)p[1 + 8 * h + 2 * i] | ((uint32_t)p[2 + 8 * h + 2 * i] << 16);
  return r;
}

template <>
__device__ __forceinline__ Raw16 fetch<Q_INT4_G32>(const uint8_t *__restrict__ row, int k0, int h) {
  // 4-byte aligned: d | m << 16 is u32 0, the nibble bytes u32 1..5 (both halves read them).
  const uint32_t *p = reinterpret_cast<const uint32_t *>(row + (size_t)(k0 / 32) * 20);
  Raw16 r;
  r.scale = p[0];
#pragma unroll
  for (int i = 0; i < 4; ++i) r.v[i] = p[1 + i];
  return r;
}

template <>
__device__ __forceinline__ Raw16 fetch<Q_FP8_G128>(const uint8_t *__restrict__ row, int k0, int h) {
  // 4-byte aligned: s is u32 0, code c of the block is byte 4 + c.
  const uint8_t *block = row + (size_t)(k0 / 128) * 132;
  const uint32_t *p = reinterpret_cast<const uint32_t *>(block);
  const uint32_t *codes = reinterpret_cast<const uint32_t *>(block + 4 + (k0 % 128) + 16 * h);
  Raw16 r;
  r.scale = p[0];
#pragma unroll
  for (int i = 0; i < 4; ++i) r.v[i] = codes[i];
  return r;
}

// The 16 weights of `r` (half `h` of its chunk) as f32, as quant::dequantize_block computes
// them (int4: d·q + m may be fused into one rounding).
template <int Q>
__device__ __forceinline__ void widen(const Raw16 &r, int h, float (&w)[16]);

template <>
__device__ __forceinline__ void widen<Q_INT8_G32>(const Raw16 &r, int, float (&w)[16]) {
  const float d = f16_bits(r.scale);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) w[4 * i + j] = d * (float)(int8_t)(uint8_t)(r.v[i] >> (8 * j));
}

template <>
__device__ __forceinline__ void widen<Q_INT4_G32>(const Raw16 &r, int h, float (&w)[16]) {
  const float d = f16_bits(r.scale), m = f16_bits(r.scale >> 16);
  const int shift = 4 * h;  // weights 0..16: low nibbles; 16..32: high nibbles
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t q = (r.v[i] >> (8 * j + shift)) & 0xfu;
      w[4 * i + j] = d * (float)q + m;
    }
}

template <>
__device__ __forceinline__ void widen<Q_FP8_G128>(const Raw16 &r, int, float (&w)[16]) {
  const float s = __uint_as_float(r.scale);
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) w[4 * i + j] = s * e4m3_to_f32((r.v[i] >> (8 * j)) & 0xffu);
}

template <int Q>
__device__ __forceinline__ size_t row_bytes(int k) {
  return (size_t)(k / Fmt<Q>::ELEMS) * Fmt<Q>::BYTES;
}

// ------------------------------------------------------------------------------------------
// GEMV (small M)
// ------------------------------------------------------------------------------------------

constexpr int GEMV_MAX_M = 8;  // QUANT_GEMV_MAX_M in src/cuda/quant.rs
constexpr int GEMV_WARPS = 4;  // QUANT_GEMV_WARPS

// Σ_e x[e] · w[e] over 16 bf16 of x (two 16-byte vectors at `xp`, 16-byte aligned).
__device__ __forceinline__ float dot16(const bf16 *__restrict__ xp, const float (&w)[16]) {
  const uint4 *v = reinterpret_cast<const uint4 *>(xp);
  float s = 0.f;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float xf[8];
    bf16x8_to_f32(v[half], xf);
#pragma unroll
    for (int e = 0; e < 8; ++e) s = fmaf(xf[e], w[8 * half + e], s);
  }
  return s;
}

template <int Q>
__device__ __forceinline__ void quant_gemv(const bf16 *__restrict__ x, const uint8_t *__restrict__ w,
                                           bf16 *__restrict__ out, int m, int n, int k) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
  if (row >= n) return;  // a whole warp: no barrier follows, shuffles stay within the warp
  const uint8_t *w_row = w + (size_t)row * row_bytes<Q>(k);
  float acc[GEMV_MAX_M];
#pragma unroll
  for (int i = 0; i < GEMV_MAX_M; ++i) acc[i] = 0.f;
  for (int k0 = lane * 32; k0 < k; k0 += 32 * 32) {
    float lo[16], hi[16];
    widen<Q>(fetch<Q>(w_row, k0, 0), 0, lo);
    widen<Q>(fetch<Q>(w_row, k0, 1), 1, hi);
#pragma unroll
    for (int i = 0; i < GEMV_MAX_M; ++i) {
      if (i < m) {
        // x row i, columns k0..k0+32: 64-byte aligned (k and k0 are multiples of 32).
        const bf16 *xp = x + (size_t)i * k + k0;
        acc[i] += dot16(xp, lo) + dot16(xp + 16, hi);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < GEMV_MAX_M; ++i) {
    if (i < m) {  // uniform across the warp
      const float s = warp_sum(acc[i]);
      if (lane == 0) out[(size_t)i * n + row] = __float2bfloat16(s);
    }
  }
}

// ------------------------------------------------------------------------------------------
// GEMM (larger M), bf16 tensor cores
// ------------------------------------------------------------------------------------------

constexpr int QG_BM = 64, QG_BN = 64, QG_BK = 32;  // QUANT_GEMM_BLOCK_{M,N} in quant.rs
constexpr int QG_THREADS = 128;                    // 4 warps as 2 × 2, each 32 × 32
constexpr int QG_STRIDE = QG_BK + 8;  // padded smem rows (80 B): conflict-free ldmatrix
constexpr int QG_STAGE = QG_BM * QG_STRIDE;  // elements of one A or B stage (BM == BN)

// Stores the 16 widened weights of `r` (or zeros) as bf16 at `dst` (16-byte aligned).
template <int Q>
__device__ __forceinline__ void store_b16(bf16 *dst, const Raw16 &r, int h, bool valid) {
  uint4 packed[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
  if (valid) {
    float wf[16];
    widen<Q>(r, h, wf);
    uint32_t *p = reinterpret_cast<uint32_t *>(packed);
#pragma unroll
    for (int i = 0; i < 8; ++i) p[i] = pack_bf16x2(wf[2 * i], wf[2 * i + 1]);
  }
  uint4 *d = reinterpret_cast<uint4 *>(dst);
  d[0] = packed[0];
  d[1] = packed[1];
}

template <int Q>
__device__ __forceinline__ void quant_gemm(const bf16 *__restrict__ x, const uint8_t *__restrict__ w,
                                           bf16 *__restrict__ out, int m, int n, int k) {
  alignas(16) __shared__ bf16 a_smem[2 * QG_STAGE];  // [2][BM][STRIDE] x tiles
  alignas(16) __shared__ bf16 b_smem[2 * QG_STAGE];  // [2][BN][STRIDE] widened W tiles

  const int n0 = blockIdx.x * QG_BN, m0 = blockIdx.y * QG_BM;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int warp_m = warp / 2, warp_n = warp % 2;
  const int group = lane / 4, tig = lane % 4;

  // x: each thread copies 2 chunks of 8 bf16 (16 bytes) per K tile: 64 rows × 4 chunks.
  const bf16 *a_src[2];
  bool a_ok[2];
  int a_off[2];  // element offset of the chunk inside a stage
  int a_col[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int c = tid + i * QG_THREADS;
    const int r = c / (QG_BK / 8);
    a_col[i] = (c % (QG_BK / 8)) * 8;
    a_off[i] = r * QG_STRIDE + a_col[i];
    a_ok[i] = m0 + r < m;
    a_src[i] = x + (size_t)(a_ok[i] ? m0 + r : 0) * k;
  }
  // W: thread tid widens half tid % 2 (16 weights) of tile row tid / 2 per K tile.
  const int b_row = tid / 2, b_half = tid % 2;
  const bool b_ok = n0 + b_row < n;
  const uint8_t *b_src = w + (size_t)(b_ok ? n0 + b_row : 0) * row_bytes<Q>(k);
  const int b_off = b_row * QG_STRIDE + 16 * b_half;

  auto load_a = [&](int stage, int k0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
      cp_async_16(a_smem + stage * QG_STAGE + a_off[i], a_src[i] + k0 + a_col[i], a_ok[i]);
    cp_async_commit();
  };

  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  const int k_tiles = k / QG_BK;  // k % 32 == 0
  load_a(0, 0);
  Raw16 raw = fetch<Q>(b_src, 0, b_half);
  store_b16<Q>(b_smem + b_off, raw, b_half, b_ok);
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int stage = kt % 2;
    const bool more = kt + 1 < k_tiles;
    // The other stage was last read by the previous tile's MMAs, which the barrier at the
    // end of that iteration completed.
    if (more) {
      load_a(1 - stage, (kt + 1) * QG_BK);
      raw = fetch<Q>(b_src, (kt + 1) * QG_BK, b_half);  // used after this tile's MMAs
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // this stage's x (cp.async) and W (plain stores) are visible
    const bf16 *as = a_smem + stage * QG_STAGE;
    const bf16 *bs = b_smem + stage * QG_STAGE;
#pragma unroll
    for (int ks = 0; ks < QG_BK / 16; ++ks) {
      uint32_t af[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
        load_a_frag(af[mi], as + (warp_m * 32 + mi * 16) * QG_STRIDE + ks * 16, QG_STRIDE, lane);
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
        uint32_t b[4];
        load_b_frag_nk(b, bs + (warp_n * 32 + nb * 16) * QG_STRIDE + ks * 16, QG_STRIDE, lane);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_bf16_16816(acc[mi][2 * nb], af[mi], b[0], b[1]);
          mma_bf16_16816(acc[mi][2 * nb + 1], af[mi], b[2], b[3]);
        }
      }
    }
    if (more) store_b16<Q>(b_smem + (1 - stage) * QG_STAGE + b_off, raw, b_half, b_ok);
    __syncthreads();  // the next iteration overwrites this stage and reads the other
  }

  // Accumulator element e of n8 tile ni: row group + 8·(e / 2), column 2·tig + e % 2.
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = m0 + warp_m * 32 + mi * 16 + group + (e / 2) * 8;
        const int c = n0 + warp_n * 32 + ni * 8 + tig * 2 + (e % 2);
        if (r < m && c < n) out[(size_t)r * n + c] = __float2bfloat16(acc[mi][ni][e]);
      }
}

#define QUANT_KERNELS(fmt, Q)                                                                  \
  extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                                \
      quant_gemv_##fmt(const bf16 *x, const uint8_t *w, bf16 *out, int m, int n, int k) {      \
    quant_gemv<Q>(x, w, out, m, n, k);                                                         \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(QG_THREADS)                                     \
      quant_gemm_##fmt(const bf16 *x, const uint8_t *w, bf16 *out, int m, int n, int k) {      \
    quant_gemm<Q>(x, w, out, m, n, k);                                                         \
  }

QUANT_KERNELS(int8_g32, Q_INT8_G32)
QUANT_KERNELS(int4_g32, Q_INT4_G32)
QUANT_KERNELS(fp8_g128, Q_FP8_G128)
