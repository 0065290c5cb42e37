// Device helpers shared by attention.cu and moe.cu: bf16 and e4m3 vector conversion, warp
// reductions, cp.async copies and the m16n8k16 bf16 tensor-core MMA with its ldmatrix
// fragment loads (sm_80+).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16, lane = 4·group + tig):
//   A 16×16 row-major, 4 regs: a0 (row group,   k 2tig..+1), a1 (row group+8, k 2tig..+1),
//                              a2 (row group,   k 2tig+8..), a3 (row group+8, k 2tig+8..)
//   B 16×8 "col" (stored n-major as [n][k]), 2 regs: b0 (k 2tig..+1, n group), b1 (k 2tig+8.., n group)
//   C 16×8 f32, 4 regs: c0,c1 (row group, n 2tig..+1), c2,c3 (row group+8, n 2tig..+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

namespace nvattn {

// 8 bf16 (one 16-byte vector) widened to f32.
__device__ __forceinline__ void bf16x8_to_f32(const uint4 &v, float (&out)[8]) {
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// 8 e4m3 bytes (one 8-byte vector) widened to f32, exactly (through f16, which holds every
// e4m3 value; the NaN codes stay NaN).
__device__ __forceinline__ void fp8x8_to_f32(const uint2 &v, float (&out)[8]) {
  const __nv_fp8x2_storage_t *pairs = reinterpret_cast<const __nv_fp8x2_storage_t *>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pairs[i], __NV_E4M3)));
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// Two f32 packed as bf16x2 (round to nearest even), low half = `lo`.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&h);
}

// 8 e4m3 bytes as 8 bf16 (one 16-byte vector): exact, since every e4m3 value is a bf16.
__device__ __forceinline__ uint4 fp8x8_to_bf16x8(const uint2 &v) {
  float f[8];
  fp8x8_to_f32(v, f);
  return make_uint4(pack_bf16x2(f[0], f[1]), pack_bf16x2(f[2], f[3]), pack_bf16x2(f[4], f[5]),
                    pack_bf16x2(f[6], f[7]));
}

// The e4m3 byte of x / scale: a correctly rounded division whatever the math flags (every
// backend stores exactly e4m3(x / scale)), then round to nearest even, saturating at ±448
// (NaN stays NaN, 0x7f).
__device__ __forceinline__ uint8_t f32_to_e4m3_scaled(float x, float scale) {
  return (uint8_t)__nv_cvt_float_to_fp8(__fdiv_rn(x, scale), __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global→shared copy; `valid == false` writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(void *smem, const void *gmem, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8×8 b16 matrices; lane i supplies the address of row i%8 of matrix i/8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// As ldmatrix_x4, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// c += a · b for one m16n8k16 tile, f32 accumulation.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A fragment (16 rows × 16 k) of a row-major bf16 tile in shared memory whose row `r`,
// column `k` sits at `base + r * stride + k` (elements; rows 16-byte aligned).
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const __nv_bfloat16 *base,
                                            int stride, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = (lane >> 4) * 8;
  ldmatrix_x4(a, base + row * stride + col);
}

// B fragments for two n8 tiles (16 n × 16 k) of an n-major tile [n][k] in shared memory:
// b[0], b[1] for n 0..8 and b[2], b[3] for n 8..16.
__device__ __forceinline__ void load_b_frag_nk(uint32_t (&b)[4], const __nv_bfloat16 *base,
                                               int stride, int lane) {
  const int row = (lane & 7) + (lane >> 4) * 8;
  const int col = ((lane >> 3) & 1) * 8;
  ldmatrix_x4(b, base + row * stride + col);
}

// B fragments for two n8 tiles (16 k × 16 n) of a k-major tile [k][n] in shared memory
// (the V tile of attention): b[0], b[1] for n 0..8 and b[2], b[3] for n 8..16.
__device__ __forceinline__ void load_b_frag_kn(uint32_t (&b)[4], const __nv_bfloat16 *base,
                                               int stride, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int col = (lane >> 4) * 8;
  ldmatrix_x4_trans(b, base + row * stride + col);
}

}  // namespace nvattn
