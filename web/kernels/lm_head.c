// The compact bundle's LM head for one token, outside ONNX Runtime: logits [vocab] float32
// from the graph's last-position int8 codes, computed with WebAssembly SIMD (128-bit).
//
// ORT Web runs the LM head as MatMulIntegerToFloat (uint8 codes x int8 weights [K, V]) + Mul
// (token scale) + MatMul (the float features' rows) + Add; in WebAssembly that step read the
// 28 MB int8 table at ~3 GB/s (4.4x native ORT; issue #16). Here the table is held transposed,
// [V, K] row-major, so each logit is one contiguous dot product of K int8 weights with the K
// activation codes, accumulated exactly in int32 (i32x4.dot_i16x8_s), then scaled in the same
// float32 operations, in the same order, as ORT's kernels:
//
//   acc[v]   = sum_k (codes[k] - 128) * W[v, k]          (int32: exact, any order)
//   y[v]     = ((float)acc[v] * col_scale[v]) * token_scale
//   f[v]     = ((0 + xf[0] * wf[0, v]) + xf[1] * wf[1, v]) + ...   (MLAS SGEMM's k order)
//   logit[v] = y[v] + f[v]
//
// so the logits are ORT's bit for bit (tests/web/test_lm_head.py checks it in Node and
// Chromium). Freestanding: no libc, no emscripten; memory is this module's own, grown by
// lm_alloc. What it ignores: batches and more than one position (the engine asks for the
// last position's logits only), and any weight format but int8 with per-row float scales.

#include <stdint.h>
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(name)))

#include "bump.h"

// -> a 16-byte-aligned block of `bytes` in this module's memory (never freed: the head's
// buffers live as long as the module), or 0 when memory cannot grow.
EXPORT("lm_alloc") void *lm_alloc(uint32_t bytes) { return bump_alloc(bytes); }

// Rows k0 .. k0+rows of the graph's table src [rows, V] (the slice of [K, V] starting at
// row k0) into dst [V, K]: dst[v*K + k0 + r] = src[r*V + v]. Called chunk by chunk while the
// table is read, so the [K, V] form never sits whole in this memory.
EXPORT("lm_transpose") void lm_transpose(int8_t *dst, const int8_t *src, uint32_t k0,
                                         uint32_t rows, uint32_t K, uint32_t V) {
  const uint32_t B = 64;  // v-block: 64 rows of dst (64 * K bytes) stay in cache
  for (uint32_t v0 = 0; v0 < V; v0 += B) {
    uint32_t v1 = v0 + B < V ? v0 + B : V;
    for (uint32_t r = 0; r < rows; r++) {
      const int8_t *s = src + (uintptr_t)r * V;
      int8_t *d = dst + k0 + r;
      for (uint32_t v = v0; v < v1; v++) d[(uintptr_t)v * K] = s[v];
    }
  }
}

static inline int32_t hsum(v128_t a) {
  return wasm_i32x4_extract_lane(a, 0) + wasm_i32x4_extract_lane(a, 1) +
         wasm_i32x4_extract_lane(a, 2) + wasm_i32x4_extract_lane(a, 3);
}

// sum_k x[k] * w[k] for one row: x int16 [K] (codes - 128), w int8 [K].
static inline int32_t dot_row(const int16_t *x, const int8_t *w, uint32_t K) {
  v128_t acc0 = wasm_i32x4_splat(0), acc1 = wasm_i32x4_splat(0);
  uint32_t k = 0;
  for (; k + 16 <= K; k += 16) {
    v128_t wv = wasm_v128_load(w + k);
    acc0 = wasm_i32x4_add(acc0, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(wv),
                                                     wasm_v128_load(x + k)));
    acc1 = wasm_i32x4_add(acc1, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(wv),
                                                     wasm_v128_load(x + k + 8)));
  }
  int32_t s = hsum(wasm_i32x4_add(acc0, acc1));
  for (; k < K; k++) s += (int32_t)x[k] * w[k];
  return s;
}

// sum_k x[k] * w_r[k] for four rows at once (the activations are loaded once for the four).
static inline void dot_rows4(const int16_t *x, const int8_t *w, uint32_t K, int32_t *s) {
  v128_t a0 = wasm_i32x4_splat(0), a1 = a0, a2 = a0, a3 = a0;
  const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
  uint32_t k = 0;
  for (; k + 16 <= K; k += 16) {
    v128_t xl = wasm_v128_load(x + k), xh = wasm_v128_load(x + k + 8);
#define ROW(a, wr)                                                                        \
    {                                                                                     \
      v128_t wv = wasm_v128_load(wr + k);                                                 \
      a = wasm_i32x4_add(a, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(wv), xl));  \
      a = wasm_i32x4_add(a, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(wv), xh)); \
    }
    ROW(a0, w0) ROW(a1, w1) ROW(a2, w2) ROW(a3, w3)
#undef ROW
  }
  s[0] = hsum(a0); s[1] = hsum(a1); s[2] = hsum(a2); s[3] = hsum(a3);
  for (; k < K; k++) {
    s[0] += (int32_t)x[k] * w0[k]; s[1] += (int32_t)x[k] * w1[k];
    s[2] += (int32_t)x[k] * w2[k]; s[3] += (int32_t)x[k] * w3[k];
  }
}

static inline float logit(int32_t acc, uint32_t v, uint32_t V, uint32_t F, const float *col_scale,
                          float token_scale, const float *xf, const float *wf) {
  float y = (float)acc * col_scale[v];
  y = y * token_scale;
  float f = 0.0f;
  for (uint32_t j = 0; j < F; j++) f = f + xf[j] * wf[(uintptr_t)j * V + v];
  return y + f;
}

// Logits v0 .. v1 (a caller may split the vocabulary between threads).
//   w [V, K] int8 (lm_transpose'd), col_scale [V], wf [F, V] float32 (the float features'
//   rows), x16 [K] int16 = codes - 128 (lm_codes), token_scale, xf [F] -> out [V] float32.
EXPORT("lm_logits") void lm_logits(const int8_t *w, const float *col_scale, const float *wf,
                                   uint32_t V, uint32_t K, uint32_t F, const int16_t *x16,
                                   float token_scale, const float *xf, float *out,
                                   uint32_t v0, uint32_t v1) {
  uint32_t v = v0;
  int32_t s[4];
  for (; v + 4 <= v1; v += 4) {
    dot_rows4(x16, w + (uintptr_t)v * K, K, s);
    for (uint32_t r = 0; r < 4; r++)
      out[v + r] = logit(s[r], v + r, V, F, col_scale, token_scale, xf, wf);
  }
  for (; v < v1; v++)
    out[v] = logit(dot_row(x16, w + (uintptr_t)v * K, K), v, V, F, col_scale, token_scale, xf, wf);
}

// codes uint8 [K] (zero point 128) -> x16 int16 [K].
EXPORT("lm_codes") void lm_codes(const uint8_t *codes, int16_t *x16, uint32_t K) {
  for (uint32_t k = 0; k < K; k++) x16[k] = (int16_t)codes[k] - 128;
}
