// Runs one kernel of kernels/quant.cu under quant_emu.h.
//
//   quant_emu <input> <output>
//
// input (little-endian): u32 words fmt (0 int8_g32, 1 int4_g32, 2 fp8_g128), kernel (0 gemv,
// 1 gemm), m, n, k, w_bytes; then x (m·k bf16 bits) and w (w_bytes bytes). output: m·n bf16
// bits. The grid is the one src/cuda/quant.rs launches (GEMV: ⌈n / 4⌉ blocks of 128; GEMM:
// ⌈n / 64⌉ × ⌈m / 64⌉ blocks of 128).
#include "quant.cu"

#include <stdio.h>

#include <vector>

static bool read_file(const char *path, std::vector<unsigned char> &out) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  unsigned char buf[1 << 16];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + got);
  fclose(f);
  return true;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: quant_emu <input> <output>\n");
    return 2;
  }
  std::vector<unsigned char> in;
  if (!read_file(argv[1], in) || in.size() < 24) {
    fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  uint32_t head[6];
  memcpy(head, in.data(), 24);
  const uint32_t fmt = head[0], kernel = head[1];
  const int m = (int)head[2], n = (int)head[3], k = (int)head[4];
  const size_t w_bytes = head[5];
  const size_t x_bytes = (size_t)m * k * 2;
  if (in.size() != 24 + x_bytes + w_bytes || fmt > 2 || kernel > 1) {
    fprintf(stderr, "malformed input\n");
    return 2;
  }
  // Exact-size heap copies, so AddressSanitizer sees any read past x or w.
  std::vector<__nv_bfloat16> x((size_t)m * k);
  memcpy(x.data(), in.data() + 24, x_bytes);
  std::vector<uint8_t> w(w_bytes);
  memcpy(w.data(), in.data() + 24 + x_bytes, w_bytes);
  std::vector<__nv_bfloat16> out((size_t)m * n, __nv_bfloat16{0xffff});  // NaN: unwritten

  typedef void (*Kernel)(const bf16 *, const uint8_t *, bf16 *, int, int, int);
  const Kernel kernels[3][2] = {
      {quant_gemv_int8_g32, quant_gemm_int8_g32},
      {quant_gemv_int4_g32, quant_gemm_int4_g32},
      {quant_gemv_fp8_g128, quant_gemm_fp8_g128},
  };
  const Kernel run = kernels[fmt][kernel];
  const unsigned gx = kernel == 0 ? (unsigned)((n + GEMV_WARPS - 1) / GEMV_WARPS)
                                  : (unsigned)((n + QG_BN - 1) / QG_BN);
  const unsigned gy = kernel == 0 ? 1u : (unsigned)((m + QG_BM - 1) / QG_BM);
  const int threads = kernel == 0 ? 32 * GEMV_WARPS : QG_THREADS;
  emu_launch(gx, gy, threads, [&] { run(x.data(), w.data(), out.data(), m, n, k); });

  FILE *f = fopen(argv[2], "wb");
  if (!f || fwrite(out.data(), 2, out.size(), f) != out.size()) {
    fprintf(stderr, "cannot write %s\n", argv[2]);
    return 2;
  }
  fclose(f);
  return 0;
}
