// Just enough of CUDA to run kernels/quant.cu on the host, one block at a time, each CUDA
// thread a std::thread (as tests/sampling_emu does for sampling.cu): __syncthreads is a
// barrier over the block; warp collectives (shuffles, ldmatrix, mma) post each lane's
// operands to a per-warp slot array between two warp barriers and compute from all of
// them; shared memory is a function-static object; cp.async copies at once. The tensor-core
// helpers of attention_common.cuh (namespace nvattn) are re-implemented from the fragment
// layouts of the PTX ISA (mma.m16n8k16 .bf16, ldmatrix .m8n8.x4), so the kernel's own
// indexing, tiling, pipeline barriers and dequantization run here under AddressSanitizer.
// A test tool for machines without a GPU (src/cuda/quant/emu.rs builds and drives it).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <barrier>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__ __restrict
// One block runs at a time, so one static object per __shared__ declaration is the block's.
#define __shared__ static

struct uint4 {
  unsigned int x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }

struct EmuDim {
  unsigned x, y;
};
inline thread_local EmuDim threadIdx{0, 0};
inline EmuDim blockIdx{0, 0};

inline float __uint_as_float(unsigned int u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}
inline unsigned int __float_as_uint(float x) {
  unsigned int u;
  memcpy(&u, &x, 4);
  return u;
}

// ---- bf16 ----------------------------------------------------------------------------
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float bf16_bits_to_f32(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }
// Round to nearest even (finite inputs; NaN stays NaN).
inline uint16_t f32_to_bf16_bits(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline __nv_bfloat16 __float2bfloat16(float x) { return {f32_to_bf16_bits(x)}; }

// ---- f16 and e4m3 --------------------------------------------------------------------
struct __half_raw {
  unsigned short x;
};
struct __half {
  uint16_t bits;
  __half() = default;
  explicit __half(__half_raw r) : bits(r.x) {}
};
inline __half __ushort_as_half(unsigned short b) { return __half(__half_raw{b}); }
inline float __half2float(__half h) {
  const uint32_t sign = h.bits >> 15, exp = (h.bits >> 10) & 31u, mant = h.bits & 1023u;
  float v;
  if (exp == 0)
    v = ldexpf((float)mant, -24);
  else if (exp == 31)
    v = mant ? NAN : INFINITY;
  else
    v = ldexpf((float)(1024 + mant), (int)exp - 25);
  return sign ? -v : v;
}

typedef unsigned char __nv_fp8_storage_t;
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };
// e4m3 "fn" → f16 bits (every e4m3 value is exact in f16; 0x7f/0xff → NaN).
inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t x, __nv_fp8_interpretation_t) {
  const unsigned sign = (x >> 7) & 1u, exp = (x >> 3) & 15u, mant = x & 7u;
  unsigned short bits;
  if (exp == 15 && mant == 7) {
    bits = 0x7e00;
  } else if (exp == 0) {
    if (mant == 0) {
      bits = 0;
    } else {  // mant · 2⁻⁹: normal in f16
      const int p = mant >= 4 ? 2 : (mant >= 2 ? 1 : 0);
      bits = (unsigned short)(((p + 6) << 10) | ((mant << (10 - p)) & 1023u));
    }
  } else {  // (1 + mant/8) · 2^(exp − 7)
    bits = (unsigned short)(((exp + 8) << 10) | (mant << 7));
  }
  return __half_raw{(unsigned short)(bits | (sign << 15))};
}

// ---- blocks and warps ----------------------------------------------------------------
struct EmuBlock {
  explicit EmuBlock(int threads) : block(threads), slots(threads * 8) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> slots;  // 8 words per thread
};
inline EmuBlock *emu_block = nullptr;

inline void __syncthreads() { emu_block->block.arrive_and_wait(); }

inline unsigned emu_lane() { return threadIdx.x & 31u; }
inline uint64_t *emu_slots(unsigned thread) { return &emu_block->slots[thread * 8]; }
inline void emu_warp_sync() { emu_block->warps[threadIdx.x >> 5]->arrive_and_wait(); }
// Slots of lane `l` of the calling thread's warp.
inline uint64_t *emu_lane_slots(unsigned l) { return emu_slots((threadIdx.x & ~31u) + l); }

inline float __shfl_xor_sync(unsigned, float v, int mask) {
  emu_slots(threadIdx.x)[0] = __float_as_uint(v);
  emu_warp_sync();
  const float r = __uint_as_float((uint32_t)emu_lane_slots(emu_lane() ^ (unsigned)mask)[0]);
  emu_warp_sync();
  return r;
}

// Runs `body` as a grid of `gx × gy` blocks of `threads` threads, one block at a time.
template <typename F> void emu_launch(unsigned gx, unsigned gy, int threads, F body) {
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
      EmuBlock block(threads);
      emu_block = &block;
      blockIdx = {bx, by};
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([t, &body] {
          threadIdx = {(unsigned)t, 0};
          body();
        });
      for (auto &th : pool) th.join();
      emu_block = nullptr;
    }
}

// ---- attention_common.cuh's helpers --------------------------------------------------
namespace nvattn {

inline void bf16x8_to_f32(const uint4 &v, float (&out)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = bf16_bits_to_f32((uint16_t)(w[i] & 0xffffu));
    out[2 * i + 1] = bf16_bits_to_f32((uint16_t)(w[i] >> 16));
  }
}

inline uint32_t pack_bf16x2(float lo, float hi) {
  return (uint32_t)f32_to_bf16_bits(lo) | ((uint32_t)f32_to_bf16_bits(hi) << 16);
}

inline float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Copies at once (stronger than the hardware's asynchronous copy); zeros when !valid.
inline void cp_async_16(void *smem, const void *gmem, bool valid) {
  if (valid)
    memcpy(smem, gmem, 16);
  else
    memset(smem, 0, 16);
}
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}

// ldmatrix .m8n8.x4 .b16: lane i gives the address of row i % 8 of matrix i / 8 (8 b16);
// lane l receives in r[j] elements 2(l % 4), 2(l % 4) + 1 of row l / 4 of matrix j.
inline void ldmatrix_x4(uint32_t (&r)[4], const void *smem) {
  emu_slots(threadIdx.x)[0] = (uint64_t)(uintptr_t)smem;
  emu_warp_sync();
  const unsigned l = emu_lane();
  for (int j = 0; j < 4; ++j) {
    const uint16_t *row = (const uint16_t *)(uintptr_t)emu_lane_slots(j * 8 + l / 4)[0];
    r[j] = (uint32_t)row[2 * (l % 4)] | ((uint32_t)row[2 * (l % 4) + 1] << 16);
  }
  emu_warp_sync();
}

// mma.m16n8k16.row.col.f32.bf16.bf16.f32, lane = 4·group + tig:
//   A: a0 (row g, k 2t..2t+1), a1 (row g+8, k 2t..), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B: b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C: c0, c1 (row g, n 2t, 2t+1), c2, c3 (row g+8, n 2t, 2t+1); low half = lower k.
inline void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  uint64_t *mine = emu_slots(threadIdx.x);
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  emu_warp_sync();
  float A[16][16], B[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const uint64_t *s = emu_lane_slots(l);
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {
      const int shift = 16 * h;
      A[g][2 * t + h] = bf16_bits_to_f32((uint16_t)(s[0] >> shift));
      A[g + 8][2 * t + h] = bf16_bits_to_f32((uint16_t)(s[1] >> shift));
      A[g][2 * t + 8 + h] = bf16_bits_to_f32((uint16_t)(s[2] >> shift));
      A[g + 8][2 * t + 8 + h] = bf16_bits_to_f32((uint16_t)(s[3] >> shift));
      B[2 * t + h][g] = bf16_bits_to_f32((uint16_t)(s[4] >> shift));
      B[2 * t + 8 + h][g] = bf16_bits_to_f32((uint16_t)(s[5] >> shift));
    }
  }
  emu_warp_sync();
  const unsigned l = emu_lane();
  const int g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float s = c[e];
    for (int k = 0; k < 16; ++k) s = fmaf(A[row][k], B[k][col], s);
    c[e] = s;
  }
}

// As attention_common.cuh (the same addressing, on the emulated ldmatrix).
inline void load_a_frag(uint32_t (&a)[4], const __nv_bfloat16 *base, int stride, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = (lane >> 4) * 8;
  ldmatrix_x4(a, base + row * stride + col);
}
inline void load_b_frag_nk(uint32_t (&b)[4], const __nv_bfloat16 *base, int stride, int lane) {
  const int row = (lane & 7) + (lane >> 4) * 8;
  const int col = ((lane >> 3) & 1) * 8;
  ldmatrix_x4(b, base + row * stride + col);
}

}  // namespace nvattn
