// Dense kernels of the CUDA backend: embedding, RMSNorm (plain and fused with the
// residual add), neox RoPE, SiLU·mul, add, column split, row gather, paged KV store and
// dtype casts. Activations are bf16; every kernel computes in f32 and rounds once on store.
//
// Launch shapes (see src/cuda/*.rs): "row" kernels run one block per row with a
// multiple-of-32 block and loop over the row with stride blockDim.x; elementwise kernels
// grid-stride over all elements. Every size is a kernel parameter, so a captured launch
// replays correctly with new data in the same buffers. Indices read from device memory
// (ids, positions, rows, slots) are range-checked here too: an out-of-range index is
// skipped (or gives zeros) instead of reading or writing out of bounds. The host checks
// them and reports errors when it is not capturing a graph.

#include "common.cuh"

using bf16 = __nv_bfloat16;
using nv::to_f32;
using nv::from_f32;

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// ---- embedding ---------------------------------------------------------------------
// out[t] = table[ids[t] - vocab_start] when that row is in 0..rows, else zeros (another
// tensor-parallel rank owns it). Plain embedding is vocab_start = 0, rows = V.
template <typename T>
__device__ void embedding(bf16* __restrict__ out, const T* __restrict__ table,
                          const uint32_t* __restrict__ ids, int hidden, long long vocab_start,
                          int rows) {
    const long long t = blockIdx.x;
    const long long row = (long long)ids[t] - vocab_start;
    bf16* dst = out + t * hidden;
    if (row >= 0 && row < rows) {
        const T* src = table + row * hidden;
        for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = from_f32<bf16>(to_f32(src[j]));
    } else {
        for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = from_f32<bf16>(0.0f);
    }
}

#define EMBEDDING(name, T)                                                                     \
    extern "C" __global__ void name(bf16* out, const T* table, const uint32_t* ids, int hidden, \
                                    long long vocab_start, int rows) {                         \
        embedding<T>(out, table, ids, hidden, vocab_start, rows);                              \
    }
EMBEDDING(embedding_f32, float)
EMBEDDING(embedding_bf16, bf16)
EMBEDDING(embedding_f16, __half)

// ---- RMSNorm -------------------------------------------------------------------------
// One block per row: out = x / sqrt(mean(x²) + eps) * w.
template <typename W>
__device__ void rms_norm(bf16* __restrict__ out, const bf16* __restrict__ x,
                         const W* __restrict__ w, int cols, float eps) {
    const long long base = blockIdx.x * (long long)cols;
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = to_f32(x[base + j]);
        sum_sq += v * v;
    }
    const float inv = rsqrtf(nv::block_sum(sum_sq) / (float)cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        out[base + j] = from_f32<bf16>(to_f32(x[base + j]) * inv * to_f32(w[j]));
}

// Fused: residual = bf16(residual + x); out = rms_norm(residual) of the stored (rounded)
// residual, so the norm sees exactly what the next layer adds to. Each thread re-reads
// only the elements it wrote itself, so no extra synchronisation is needed.
template <typename W>
__device__ void add_rms_norm(bf16* __restrict__ out, bf16* __restrict__ residual,
                             const bf16* __restrict__ x, const W* __restrict__ w, int cols,
                             float eps) {
    const long long base = blockIdx.x * (long long)cols;
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const bf16 r = from_f32<bf16>(to_f32(residual[base + j]) + to_f32(x[base + j]));
        residual[base + j] = r;
        const float v = to_f32(r);
        sum_sq += v * v;
    }
    const float inv = rsqrtf(nv::block_sum(sum_sq) / (float)cols + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        out[base + j] = from_f32<bf16>(to_f32(residual[base + j]) * inv * to_f32(w[j]));
}

#define NORMS(suffix, W)                                                                       \
    extern "C" __global__ void rms_norm_w##suffix(bf16* out, const bf16* x, const W* w,         \
                                                  int cols, float eps) {                       \
        rms_norm<W>(out, x, w, cols, eps);                                                     \
    }                                                                                          \
    extern "C" __global__ void add_rms_norm_w##suffix(bf16* out, bf16* residual, const bf16* x, \
                                                      const W* w, int cols, float eps) {       \
        add_rms_norm<W>(out, residual, x, w, cols, eps);                                       \
    }
NORMS(f32, float)
NORMS(bf16, bf16)
NORMS(f16, __half)

// ---- RoPE (neox) -----------------------------------------------------------------------
// One block per token, in place. cos_sin row p = cos(p·inv_freq) ‖ sin(p·inv_freq), each
// half head_dim/2 long. Element i < half of each head pairs with i + half.
template <typename CS>
__device__ void rope(bf16* __restrict__ x, const uint32_t* __restrict__ positions,
                     const CS* __restrict__ cos_sin, int heads, int head_dim,
                     int max_positions) {
    const long long t = blockIdx.x;
    const uint32_t pos = positions[t];
    if (pos >= (uint32_t)max_positions) return;  // host-validated; never read out of bounds
    const int half = head_dim / 2;
    const CS* cs = cos_sin + (long long)pos * head_dim;
    bf16* row = x + t * (long long)heads * head_dim;
    for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
        const int h = p / half;
        const int i = p - h * half;
        bf16* head = row + (long long)h * head_dim;
        const float c = to_f32(cs[i]);
        const float s = to_f32(cs[half + i]);
        const float a = to_f32(head[i]);
        const float b = to_f32(head[half + i]);
        head[i] = from_f32<bf16>(a * c - b * s);
        head[half + i] = from_f32<bf16>(b * c + a * s);
    }
}

extern "C" __global__ void rope_csf32(bf16* x, const uint32_t* positions, const float* cos_sin,
                                      int heads, int head_dim, int max_positions) {
    rope<float>(x, positions, cos_sin, heads, head_dim, max_positions);
}
extern "C" __global__ void rope_csbf16(bf16* x, const uint32_t* positions, const bf16* cos_sin,
                                       int heads, int head_dim, int max_positions) {
    rope<bf16>(x, positions, cos_sin, heads, head_dim, max_positions);
}

// ---- elementwise ---------------------------------------------------------------------
// out[r, j] = silu(gate_up[r, j]) * gate_up[r, n + j].
extern "C" __global__ void silu_mul_bf16(bf16* __restrict__ out, const bf16* __restrict__ gate_up,
                                         long long rows, int n) {
    GRID_STRIDE(i, rows * n) {
        const long long r = i / n;
        const long long j = i - r * n;
        const float g = to_f32(gate_up[r * 2 * n + j]);
        const float u = to_f32(gate_up[r * 2 * n + n + j]);
        out[i] = from_f32<bf16>(g / (1.0f + __expf(-g)) * u);
    }
}

extern "C" __global__ void add_inplace_bf16(bf16* __restrict__ x, const bf16* __restrict__ y,
                                            long long n) {
    GRID_STRIDE(i, n) { x[i] = from_f32<bf16>(to_f32(x[i]) + to_f32(y[i])); }
}

// ---- bias add --------------------------------------------------------------------------
// x[t, n] += bias[n] in place over x: [rows, cols] (total = rows·cols elements); the sum
// is taken in f32 and rounded once to x's dtype. Any float dtype for x and for the bias.
template <typename X, typename B>
__device__ void add_bias(X* __restrict__ x, const B* __restrict__ bias, long long total,
                         int cols) {
    GRID_STRIDE(i, total) { x[i] = from_f32<X>(to_f32(x[i]) + to_f32(bias[i % cols])); }
}
#define ADD_BIAS(x_suffix, X, b_suffix, B)                                                  \
    extern "C" __global__ void add_bias_##x_suffix##_##b_suffix(X* x, const B* bias,        \
                                                                long long total, int cols) { \
        add_bias<X, B>(x, bias, total, cols);                                               \
    }
#define ADD_BIAS_ALL_BIASES(x_suffix, X) \
    ADD_BIAS(x_suffix, X, f32, float)    \
    ADD_BIAS(x_suffix, X, bf16, bf16)    \
    ADD_BIAS(x_suffix, X, f16, __half)
ADD_BIAS_ALL_BIASES(f32, float)
ADD_BIAS_ALL_BIASES(bf16, bf16)
ADD_BIAS_ALL_BIASES(f16, __half)

// ---- dtype casts (matmul's f32 path) ----------------------------------------------------
extern "C" __global__ void cast_bf16_f32(float* __restrict__ out, const bf16* __restrict__ in,
                                         long long n) {
    GRID_STRIDE(i, n) { out[i] = to_f32(in[i]); }
}
extern "C" __global__ void cast_f16_f32(float* __restrict__ out, const __half* __restrict__ in,
                                        long long n) {
    GRID_STRIDE(i, n) { out[i] = to_f32(in[i]); }
}
extern "C" __global__ void cast_f32_bf16(bf16* __restrict__ out, const float* __restrict__ in,
                                         long long n) {
    GRID_STRIDE(i, n) { out[i] = from_f32<bf16>(in[i]); }
}

// ---- row/column plumbing (dtype-agnostic: by element size) ------------------------------
// dst[r, j] = src[r, col_offset + j] for j < dst_cols.
template <typename T>
__device__ void copy_cols(T* __restrict__ dst, const T* __restrict__ src, long long rows,
                          int src_cols, int col_offset, int dst_cols) {
    GRID_STRIDE(i, rows * dst_cols) {
        const long long r = i / dst_cols;
        const long long j = i - r * dst_cols;
        dst[i] = src[r * src_cols + col_offset + j];
    }
}

// out[i, j] = x[rows[i], j]; a row index ≥ src_rows gives zeros (host-validated).
template <typename T>
__device__ void gather_rows(T* __restrict__ out, const T* __restrict__ x,
                            const uint32_t* __restrict__ rows, long long num_out, int cols,
                            int src_rows) {
    GRID_STRIDE(i, num_out * cols) {
        const long long r = i / cols;
        const long long j = i - r * cols;
        const uint32_t src = rows[r];
        out[i] = src < (uint32_t)src_rows ? x[(long long)src * cols + j] : T(0);
    }
}

#define PLUMBING(bytes, T)                                                                     \
    extern "C" __global__ void copy_cols_##bytes(T* dst, const T* src, long long rows,         \
                                                 int src_cols, int col_offset, int dst_cols) { \
        copy_cols<T>(dst, src, rows, src_cols, col_offset, dst_cols);                          \
    }                                                                                          \
    extern "C" __global__ void gather_rows_##bytes(T* out, const T* x, const uint32_t* rows,   \
                                                   long long num_out, int cols, int src_rows) {\
        gather_rows<T>(out, x, rows, num_out, cols, src_rows);                                 \
    }
PLUMBING(2, uint16_t)
PLUMBING(4, uint32_t)
PLUMBING(8, uint64_t)

// ---- paged KV store ----------------------------------------------------------------------
// k_cache/v_cache: [num_slots, width] (= [num_blocks, block_size, kv_heads, head_dim]).
// Token t goes to slot slot_mapping[t]; a negative slot (−1: padding) writes nothing, and so
// does one ≥ num_slots (host-validated).
template <typename C>
__device__ void store_kv(C* __restrict__ k_cache, C* __restrict__ v_cache,
                         const bf16* __restrict__ k, const bf16* __restrict__ v,
                         const int64_t* __restrict__ slot_mapping, long long num_tokens, int width,
                         long long num_slots) {
    GRID_STRIDE(i, num_tokens * width) {
        const long long t = i / width;
        const long long j = i - t * width;
        const int64_t slot = slot_mapping[t];
        if (slot < 0 || slot >= num_slots) continue;
        k_cache[slot * width + j] = from_f32<C>(to_f32(k[i]));
        v_cache[slot * width + j] = from_f32<C>(to_f32(v[i]));
    }
}

extern "C" __global__ void store_kv_bf16(bf16* k_cache, bf16* v_cache, const bf16* k,
                                         const bf16* v, const int64_t* slot_mapping,
                                         long long num_tokens, int width, long long num_slots) {
    store_kv<bf16>(k_cache, v_cache, k, v, slot_mapping, num_tokens, width, num_slots);
}
extern "C" __global__ void store_kv_f32(float* k_cache, float* v_cache, const bf16* k,
                                        const bf16* v, const int64_t* slot_mapping,
                                        long long num_tokens, int width, long long num_slots) {
    store_kv<float>(k_cache, v_cache, k, v, slot_mapping, num_tokens, width, num_slots);
}
