// Runs kernels/sampling.cu's `sample_bf16` / `sample_f32` under sampling_emu.h.
//
//   sampling_emu <input> <output>
//
// input (little-endian u32 words): dtype (0 f32, 1 bf16), rows, vocab, mass bits, params
// words, result words, then the logits (rows × vocab f32 or bf16, bf16 padded to a whole
// word) and the params. output: the result words. Built with -DSAMPLE_THREADS=<n>.
#include "sampling.cu"

#include <stdio.h>

#include <vector>

static bool read_words(FILE *f, void *dst, size_t words) {
  return fread(dst, 4, words, f) == words;
}

int main(int argc, char **argv) {
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
