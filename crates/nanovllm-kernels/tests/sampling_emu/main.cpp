// Runs kernels/sampling.cu's `sample_bf16` / `sample_f32` under sampling_emu.h.
//
//   sampling_emu <input> <output>
//   sampling_emu --hist-selftest      (exit status 0 when every histogram bin is exact)
//
// input (little-endian u32 words): dtype (0 f32, 1 bf16), rows, vocab, mass bits, params
// words, result words, then the logits (rows × vocab f32 or bf16, bf16 padded to a whole
// word) and the params. output: the result words. Built with -DSAMPLE_THREADS=<n>.
#include "sampling.cu"

#include <stdio.h>
#include <string.h>

#include <atomic>
#include <vector>

// Every thread adds 200 pseudo-random masses below 2^44 to 8 bins through hist_add
// (carries out of the low words all the time); each bin must hold the exact sum.
static int hist_selftest() {
  std::vector<std::atomic<unsigned long long>> want(8);
  int bad = 0;
  emu_launch(1, SAMPLE_THREADS, [&] {
    __shared__ sampling::Shared sh;
    if (threadIdx.x < 8) {
      sh.hist_lo[threadIdx.x] = 0u;
      sh.hist_hi[threadIdx.x] = 0u;
    }
    __syncthreads();
    unsigned long long x = 0x9E3779B97F4A7C15ull * (threadIdx.x + 1);
    for (int k = 0; k < 200; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const unsigned bin = (unsigned)(x % 8);
      const unsigned long long w = x >> 20;
      sampling::hist_add(sh, bin, w);
      want[bin] += w;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (unsigned b = 0; b < 8; ++b) {
        if (sampling::hist_get(sh, b) != want[b].load()) {
          fprintf(stderr, "bin %u: %llu, expected %llu\n", b, sampling::hist_get(sh, b),
                  want[b].load());
          bad = 1;
        }
      }
    }
  });
  return bad;
}

static bool read_words(FILE *f, void *dst, size_t words) {
  return fread(dst, 4, words, f) == words;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--hist-selftest") == 0) return hist_selftest();
  if (argc != 3) {
    fprintf(stderr, "usage: %s <input> <output>\n", argv[0]);
    return 2;
  }
  FILE *in = fopen(argv[1], "rb");
  if (!in) {
    perror(argv[1]);
    return 2;
  }
  uint32_t head[6];
  if (!read_words(in, head, 6)) {
    fprintf(stderr, "short header\n");
    return 2;
  }
  const uint32_t dtype = head[0], rows = head[1], vocab = head[2], params_words = head[4],
                 result_words = head[5];
  const int fx_bits = (int)head[3];
  const size_t elems = (size_t)rows * vocab;
  const size_t logit_words = dtype == 0 ? elems : (elems + 1) / 2;
  std::vector<uint32_t> logits(logit_words + 4), params(params_words);
  std::vector<uint32_t> results(result_words, 0xdeadbeefu);
  if (!read_words(in, logits.data(), logit_words) || !read_words(in, params.data(), params_words)) {
    fprintf(stderr, "short input\n");
    return 2;
  }
  fclose(in);
  emu_launch(rows, SAMPLE_THREADS, [&] {
    if (dtype == 0) {
      sample_f32(reinterpret_cast<const float *>(logits.data()), params.data(), results.data(),
                 (int)rows, (int)vocab, fx_bits);
    } else {
      sample_bf16(reinterpret_cast<const __nv_bfloat16 *>(logits.data()), params.data(),
                  results.data(), (int)rows, (int)vocab, fx_bits);
    }
  });
  FILE *out = fopen(argv[2], "wb");
  if (!out || fwrite(results.data(), 4, result_words, out) != result_words) {
    perror(argv[2]);
    return 2;
  }
  fclose(out);
  return 0;
}
