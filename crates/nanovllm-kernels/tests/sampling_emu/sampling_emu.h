// Just enough of CUDA to run kernels/sampling.cu on the host, one block at a time, each
// CUDA thread a std::thread: __syncthreads is a barrier over the block, warp shuffles
// exchange through a per-warp slot array between two warp barriers, shared memory is a
// function-static object, atomics are std::atomic_ref. A test tool for machines without a
// GPU (src/cuda/sampling/emu.rs builds and drives it); it runs the kernel's own code, so a
// logic error, a missing barrier that the OS scheduling exposes, or an out-of-bounds
// index (under -fsanitize=address) shows up here.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <barrier>
#include <cmath>
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

struct __nv_bfloat16 {
  unsigned short bits;
};
struct uint4 {
  unsigned int x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
struct EmuDim {
  unsigned int x;
};

inline thread_local EmuDim threadIdx{0};
inline EmuDim blockIdx{0};

struct EmuBlock {
  explicit EmuBlock(int threads) : block(threads), slots(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<unsigned long long> slots;
  std::atomic<int> any{0};
};
inline EmuBlock *emu_block = nullptr;

inline void __syncthreads() { emu_block->block.arrive_and_wait(); }

inline int __syncthreads_or(int p) {
  if (p) emu_block->any.fetch_or(1);
  __syncthreads();
  const int r = emu_block->any.load();
  __syncthreads();
  if (threadIdx.x == 0) emu_block->any.store(0);
  __syncthreads();
  return r;
}

template <typename T> T emu_shfl(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of up to 8 bytes");
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long bits = 0;
  memcpy(&bits, &v, sizeof(T));
  emu_block->slots[threadIdx.x] = bits;
  emu_block->warps[warp]->arrive_and_wait();
  const unsigned long long got = emu_block->slots[warp * 32 + (unsigned)src_lane];
  emu_block->warps[warp]->arrive_and_wait();
  (void)lane;
  T r;
  memcpy(&r, &got, sizeof(T));
  return r;
}

template <typename T> T __shfl_up_sync(unsigned, T v, int delta) {
  const int lane = (int)(threadIdx.x & 31);
  return emu_shfl(v, lane >= delta ? lane - delta : lane);
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int mask) {
  return emu_shfl(v, (int)(threadIdx.x & 31) ^ mask);
}

inline unsigned int atomicAdd(unsigned int *p, unsigned int v) {
  return std::atomic_ref<unsigned int>(*p).fetch_add(v);
}

inline unsigned int __float_as_uint(float x) {
  unsigned int u;
  memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
// Round to nearest even (the default rounding mode), as cvt.rni.u64.f64.
inline unsigned long long __double2ull_rn(double x) {
  return (unsigned long long)std::nearbyint(x);
}

inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }

// Runs `body` (a kernel call) as one block of `threads` threads for each of `blocks` blocks.
template <typename F> void emu_launch(unsigned blocks, int threads, F body) {
  for (unsigned b = 0; b < blocks; ++b) {
    EmuBlock block(threads);
    emu_block = &block;
    blockIdx.x = b;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([t, &body] {
        threadIdx.x = (unsigned)t;
        body();
      });
    }
    for (auto &th : pool) th.join();
    emu_block = nullptr;
  }
}
