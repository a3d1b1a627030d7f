// The int4 -> int8 expansion of a SmolChat bundle (runtime_form.js ops q4_1_i8, q4_1_i8h,
// q4_1z_i8h, q4c_i8, q4c_i8h, q4cx_i8h) for a range of rows, in WebAssembly SIMD (128-bit).
//
// One call expands output features (rows of the download form) n0 .. n1 of one tensor:
//
//   v[k]      = the row's values (float64 [K]): q4_1 / q4_1z: fround(d * code + m) from the
//               block's float16 d, m; q4c: col[n] * A[a] * level[code], Q8_0 rows (q4cx) and
//               5-bit rows as runtime_form.js q4cI8 says, then the int8_cols overrides
//   fl[f, r]  = (float)v[float_rows[f]]; then v[float_rows[f]] = 0 when `zero`
//   v         = v times the block-diagonal Hadamard matrix (unscaled) when `rot` b > 0
//   scale[r]  = (float)(max_k |v[k]| * inv / 127), 1 when that is 0; inv = 1 / sqrt(b) (or 1)
//   q[k, r]   = clamp(floor(v[k] * inv / scale[r] + 0.5), -127, 127)     (int8 [K, S])
//
// with r = n - n0 and S = n1 - n0. Every float operation is the float64 (or float32 rounding)
// operation runtime_form.js does, in the same order (f64x2 lanes are IEEE float64 operations,
// and wasm has no fused multiply-add; the build also passes -ffp-contract=off), so the bytes
// are the JS expansion's, which are py_runtime/smolchat/runtime_form.py's
// (tests/web/test_expand_kernel.py compares sha256 over whole bundles).
//
// Freestanding: no libc. Memory is this module's own: runtime_form.js's ExpandKernel resets
// the bump allocator per call, copies the rows' inputs in, calls ex_rows and copies the
// outputs out, so the memory holds one call's rows (~2 MB of output), never the whole form.
// What it ignores: the float32 ops of the exact preset (q4_1_f32, q8_0_f32) and `copy`, which
// stay in JS, and checking the job (runtime_form.js checks offsets and indices first).

#include <stdint.h>
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(name)))

// ---- memory -------------------------------------------------------------------------------

#include "bump.h"

// Forget every block handed out (the memory stays: wasm memory never shrinks).
EXPORT("ex_reset") void ex_reset(void) { bump_top = bump_start(); }

// -> a 16-byte-aligned block of `bytes`, or 0 when memory cannot grow.
EXPORT("ex_alloc") void *ex_alloc(uint32_t bytes) { return bump_alloc(bytes); }

// The per-row functions stay functions of their own: V8 first runs a module's code from its
// baseline compiler (Liftoff, ~4x slower here) and a call keeps running the code it started in,
// so one long ex_rows call with everything inlined ran Liftoff code for a whole strip (in the
// page, where the compile threads are busy with ORT and Pyodide, for the first ~30 tensors:
// measured 2026-12-03). Called per row, each picks up its optimized code as soon as it exists.
#define HOT __attribute__((noinline))

// ---- the job ------------------------------------------------------------------------------

// What runtime_form.js writes before ex_rows (uint32 words, in this order: JOB_FIELDS there).
// Row-indexed inputs hold the call's rows only (the rows [from, to) of their kind that fall in
// [n0, n1)), so a pointer's row 0 is the first such row.
typedef struct {
  uint32_t kind;              // 0: q4_1 family, 1: q4c family
  uint32_t flags;             // F_CENTRED | F_SKIP | F_ZERO
  uint32_t N, K, QK;          // output features, input features, block length
  uint32_t n0, n1;            // rows of this call (absolute)
  uint32_t rot;               // Hadamard block b (a power of 4 dividing K), 0: none
  uint32_t F;                 // float rows
  const uint32_t *fr;         // [F] input features kept as float32 rows
  int8_t *q;                  // out: int8 [K, S]
  float *scale;               // out: float32 [S]
  float *fl;                  // out: float32 [F, S]
  // q4_1: codes nibbles [S, K/2]; d, m float16 as byte planes [S, nb] each
  const uint8_t *codes, *d_lo, *d_hi, *m_lo, *m_hi;
  // q4c: the scale-index nibbles of the rows (the first one at nibble p0), col float16 [S]
  const uint8_t *params;
  uint32_t p0;
  const uint16_t *col;
  const float *A, *L, *C, *FL;  // a_levels [16], code_levels [16], coarse_levels [8], fine_levels [32]
  uint32_t coarse_from, exact, fine;  // absolute rows: coarse levels from, Q8_0 rows until, 5-bit rows until
  const int8_t *xcodes;       // Q8_0 rows [n0, min(n1, exact)): int8 [., K]
  const uint16_t *xd;         //   their float16 d [., nb]
  const uint8_t *fcodes;      // 5-bit rows [max(n0, exact), min(n1, fine)): one code a byte [., K]
  const uint8_t *ncodes;      // 4-bit rows [max(n0, fine), n1): nibbles [., K/2]
  uint32_t nc;                // int8_cols
  const uint32_t *cols;       // [nc] input features
  const float *cols_scale;    // [nc]
  const int8_t *cols_q;       // [nc, S]
} job;

enum { F_CENTRED = 1, F_SKIP = 2, F_ZERO = 4 };

// ---- scalar pieces ------------------------------------------------------------------------

static inline double f64_of_bits(uint64_t b) { double d; __builtin_memcpy(&d, &b, 8); return d; }
static inline float f32_of_bits(uint32_t b) { float f; __builtin_memcpy(&f, &b, 4); return f; }
static inline uint32_t bits_of_f32(float f) { uint32_t b; __builtin_memcpy(&b, &f, 4); return b; }
#define NAN64 f64_of_bits(0x7ff8000000000000ull)

// IEEE half bits -> its value, exact (runtime_form.js halfToNumber).
static inline double half(uint16_t h) {
  uint32_t e = (h >> 10) & 31, f = h & 1023;
  double v;
  if (e == 0) v = (double)f * 0x1p-24;
  else if (e == 31) v = f ? NAN64 : f64_of_bits(0x7ff0000000000000ull);
  else v = (double)f32_of_bits(((e + 112) << 23) | (f << 13));
  return h & 0x8000 ? -v : v;
}

// A Q4_1 block's zero code (runtime_form.js zeroCode).
static inline uint32_t zero_code(double d, double m) {
  double t = -m / d;
  if (!(d > 0) || !__builtin_isfinite(t)) return 8;
  double c = __builtin_floor(t + 0.5);
  return c > 15 ? 15 : c < 0 ? 0 : (uint32_t)c;
}

// runtime_form.js toI8: clamp(floor(x / s + 0.5)); NaN -> 0 (what an Int8Array stores for it)
static inline int8_t to_i8(double x, double s) {
  double q = __builtin_floor(x / s + 0.5);
  return q > 127 ? 127 : q < -127 ? -127 : q == q ? (int8_t)(int32_t)q : 0;
}

// Row of nibble codes (element 2i = low nibble of byte i) through a per-block table of 16
// values: v[k] = table[(k / QK) * 16 + code].
HOT static void nibble_row(const uint8_t *codes, uint32_t K, uint32_t QK, const double *table, double *v) {
  for (uint32_t j = 0; j < K / QK; j++) {
    const double *t = table + j * 16;
    for (uint32_t i = (j * QK) >> 1; i < ((j + 1) * QK) >> 1; i++) {
      uint8_t b = codes[i];
      v[2 * i] = t[b & 15];
      v[2 * i + 1] = t[b >> 4];
    }
  }
}

// ---- row values ---------------------------------------------------------------------------

// q4_1 / q4_1z (runtime_form.js q41I8): row r of the call.
HOT static void row_q41(const job *j, uint32_t r, double *table, double *v) {
  uint32_t nb = j->K / j->QK;
  for (uint32_t b = 0; b < nb; b++) {
    uint32_t i = r * nb + b;
    double d = half(j->d_lo[i] | (j->d_hi[i] << 8)), m = half(j->m_lo[i] | (j->m_hi[i] << 8));
    uint32_t shift = j->flags & F_CENTRED ? zero_code(d, m) + 8 : 0;
    for (uint32_t s = 0; s < 16; s++) table[b * 16 + s] = (double)(float)(d * (double)((s + shift) & 15) + m);
  }
  nibble_row(j->codes + (uintptr_t)r * (j->K >> 1), j->K, j->QK, table, v);
}

static inline uint32_t nibble(const uint8_t *w, uint32_t idx) {
  uint8_t b = w[idx >> 1];
  return idx & 1 ? b >> 4 : b & 15;
}

// q4c / q4cx (runtime_form.js q4cI8): absolute row n.
HOT static void row_q4c(const job *j, uint32_t n, double *table, double *v) {
  const uint32_t K = j->K, QK = j->QK, nb = K / QK, r = n - j->n0;
  if (n < j->exact) {
    const int8_t *q8 = j->xcodes + (uintptr_t)r * K;
    const uint16_t *d8 = j->xd + r * nb;
    for (uint32_t k = 0; k < K; k++) v[k] = half(d8[k / QK]) * (double)q8[k];
    return;  // (no int8_cols overrides on Q8_0 rows)
  }
  const float *lv = n >= j->coarse_from ? j->C : j->L;
  const uint32_t levels = n >= j->coarse_from ? 8 : 16;
  const double cn = half(j->col[r]);
  for (uint32_t b = 0; b < nb; b++) {
    double d = cn * (double)j->A[nibble(j->params, j->p0 + r * nb + b)];  // the block's scale
    if (n < j->fine) {
      const uint8_t *row = j->fcodes + (uintptr_t)(n - (j->n0 > j->exact ? j->n0 : j->exact)) * K;
      for (uint32_t k = b * QK; k < (b + 1) * QK; k++) {
        uint8_t c = row[k];
        v[k] = d * (c < 32 ? (double)j->FL[c] : NAN64);  // (JS: F[c] undefined -> NaN)
      }
    } else {
      for (uint32_t c = 0; c < 16; c++) table[b * 16 + c] = c < levels ? d * (double)lv[c] : 0;
    }
  }
  if (n >= j->fine) {
    uint32_t first = j->n0 > j->fine ? j->n0 : j->fine;
    nibble_row(j->ncodes + (uintptr_t)(n - first) * (K >> 1), K, QK, table, v);
  }
  const uint32_t S = j->n1 - j->n0;
  for (uint32_t i = 0; i < j->nc; i++) v[j->cols[i]] = (double)j->cols_scale[i] * (double)j->cols_q[i * S + r];
}

// ---- rotation -----------------------------------------------------------------------------

// v [K] times the block-diagonal Walsh-Hadamard matrix of block b, unscaled, in place:
// butterflies h = 1, 2, 4, ..., (x_i, x_{i+h}) -> (x_i + x_{i+h}, x_i - x_{i+h}). Each output is
// the same sum of the same two inputs as in runtime_form.js rotate, stage after stage in the
// same order, so the bits are the same whichever loop runs them.

#define BFLY(a, b) { v128_t p_ = a; a = wasm_f64x2_add(p_, b); b = wasm_f64x2_sub(p_, b); }

// h = 1 inside one vector: (a, c) -> (a + c, a - c)
static inline v128_t bfly1(v128_t p) {
  v128_t t = wasm_i64x2_shuffle(p, p, 1, 0);
  return wasm_i64x2_shuffle(wasm_f64x2_add(p, t), wasm_f64x2_sub(p, t), 0, 2);
}

// b = 64 (what the build writes) in two passes held in registers: h = 1, 2, 4, 8 on runs of 16
// values (8 vectors), then h = 16, 32 on the 4 vectors 16 values apart.
HOT static void rotate64(double *v, uint32_t K) {
  for (uint32_t i = 0; i < K; i += 16) {
    double *x = v + i;
    v128_t a0 = bfly1(wasm_v128_load(x)), a1 = bfly1(wasm_v128_load(x + 2));
    v128_t a2 = bfly1(wasm_v128_load(x + 4)), a3 = bfly1(wasm_v128_load(x + 6));
    v128_t a4 = bfly1(wasm_v128_load(x + 8)), a5 = bfly1(wasm_v128_load(x + 10));
    v128_t a6 = bfly1(wasm_v128_load(x + 12)), a7 = bfly1(wasm_v128_load(x + 14));
    BFLY(a0, a1) BFLY(a2, a3) BFLY(a4, a5) BFLY(a6, a7)   // h = 2
    BFLY(a0, a2) BFLY(a1, a3) BFLY(a4, a6) BFLY(a5, a7)   // h = 4
    BFLY(a0, a4) BFLY(a1, a5) BFLY(a2, a6) BFLY(a3, a7)   // h = 8
    wasm_v128_store(x, a0); wasm_v128_store(x + 2, a1); wasm_v128_store(x + 4, a2); wasm_v128_store(x + 6, a3);
    wasm_v128_store(x + 8, a4); wasm_v128_store(x + 10, a5); wasm_v128_store(x + 12, a6); wasm_v128_store(x + 14, a7);
  }
  for (uint32_t j0 = 0; j0 < K; j0 += 64) {
    for (uint32_t i = j0; i < j0 + 16; i += 2) {
      v128_t a0 = wasm_v128_load(v + i), a1 = wasm_v128_load(v + i + 16);
      v128_t a2 = wasm_v128_load(v + i + 32), a3 = wasm_v128_load(v + i + 48);
      BFLY(a0, a1) BFLY(a2, a3)   // h = 16
      BFLY(a0, a2) BFLY(a1, a3)   // h = 32
      wasm_v128_store(v + i, a0); wasm_v128_store(v + i + 16, a1);
      wasm_v128_store(v + i + 32, a2); wasm_v128_store(v + i + 48, a3);
    }
  }
}

// any other power of 4, stage by stage
HOT static void rotate(double *v, uint32_t K, uint32_t b) {
  if (b < 4) return;  // (b = 1, a power of 4 too: the identity)
  if (b == 64) { rotate64(v, K); return; }
  for (uint32_t j0 = 0; j0 < K; j0 += b) {
    double *x = v + j0;
    for (uint32_t i = 0; i < b; i += 2) wasm_v128_store(x + i, bfly1(wasm_v128_load(x + i)));
    for (uint32_t h = 2; h < b; h <<= 1) {
      for (uint32_t i = 0; i < b; i += 2 * h) {
        for (uint32_t y = i; y < i + h; y += 2) {
          v128_t p = wasm_v128_load(x + y), q = wasm_v128_load(x + y + h);
          BFLY(p, q)
          wasm_v128_store(x + y, p);
          wasm_v128_store(x + y + h, q);
        }
      }
    }
  }
}

// ---- int8 ---------------------------------------------------------------------------------

// max_k |v[k]| (NaN never wins, as in runtime_form.js's `a > amax`)
HOT static double amax(const double *v, uint32_t K) {
  v128_t m0 = wasm_f64x2_splat(0), m1 = m0;
  uint32_t k = 0;
  for (; k + 4 <= K; k += 4) {
    m0 = wasm_f64x2_pmax(m0, wasm_f64x2_abs(wasm_v128_load(v + k)));  // m < a ? a : m
    m1 = wasm_f64x2_pmax(m1, wasm_f64x2_abs(wasm_v128_load(v + k + 2)));
  }
  v128_t m = wasm_f64x2_pmax(m0, m1);
  double a = wasm_f64x2_extract_lane(m, 0), b = wasm_f64x2_extract_lane(m, 1);
  double best = a < b ? b : a;
  for (; k < K; k++) {
    double x = __builtin_fabs(v[k]);
    if (x > best) best = x;
  }
  return best;
}

// two values -> int32 lanes 0, 1: clamp(floor(v * inv / s + 0.5)) (NaN -> 0: trunc_sat)
static inline v128_t q2(const double *v, v128_t inv, v128_t s) {
  v128_t y = wasm_f64x2_floor(wasm_f64x2_add(wasm_f64x2_div(wasm_f64x2_mul(wasm_v128_load(v), inv), s),
                                             wasm_f64x2_splat(0.5)));
  y = wasm_f64x2_pmin(wasm_f64x2_pmax(y, wasm_f64x2_splat(-127)), wasm_f64x2_splat(127));
  return wasm_i32x4_trunc_sat_f64x2_zero(y);
}

static inline v128_t q4(const double *v, v128_t inv, v128_t s) {
  return wasm_i32x4_shuffle(q2(v, inv, s), q2(v + 2, inv, s), 0, 1, 4, 5);
}

// out[k] = int8 of v[k] * inv in scale s
HOT static void quantize(const double *v, uint32_t K, double inv, double s, int8_t *out) {
  v128_t vi = wasm_f64x2_splat(inv), vs = wasm_f64x2_splat(s);
  uint32_t k = 0;
  for (; k + 16 <= K; k += 16) {
    v128_t a = wasm_i16x8_narrow_i32x4(q4(v + k, vi, vs), q4(v + k + 4, vi, vs));
    v128_t b = wasm_i16x8_narrow_i32x4(q4(v + k + 8, vi, vs), q4(v + k + 12, vi, vs));
    wasm_v128_store(out + k, wasm_i8x16_narrow_i16x8(a, b));
  }
  for (; k < K; k++) out[k] = to_i8(v[k] * inv, s);
}

// qb [R, K] (R rows of int8) -> q[k * S + r0 + r]: the [K, S] layout ORT reads
HOT static void transpose(const int8_t *qb, uint32_t R, uint32_t K, int8_t *q, uint32_t S, uint32_t r0) {
  for (uint32_t k = 0; k < K; k++) {
    int8_t *d = q + (uintptr_t)k * S + r0;
    for (uint32_t r = 0; r < R; r++) d[r] = qb[(uintptr_t)r * K + k];
  }
}

// ---- the call -----------------------------------------------------------------------------

#define BATCH 64  // rows quantized before one transpose: the [K, S] writes fill runs of 64 bytes

// Rows n0 .. n1 of the job at `j` (see the top of the file). -> 0, or 1 when memory for the
// row buffers cannot grow.
EXPORT("ex_rows") uint32_t ex_rows(const job *j) {
  const uint32_t K = j->K, S = j->n1 - j->n0, nb = K / j->QK;
  double *v = ex_alloc(8 * K), *table = ex_alloc(8 * 16 * nb);
  int8_t *qb = ex_alloc(BATCH * K);
  if (!v || !table || !qb) return 1;
  const double inv = j->rot ? 1 / __builtin_sqrt((double)j->rot) : 1;
  const int skip = j->flags & F_SKIP, zero = j->flags & F_ZERO;
  for (uint32_t r0 = 0; r0 < S; r0 += BATCH) {
    uint32_t R = S - r0 < BATCH ? S - r0 : BATCH;
    for (uint32_t i = 0; i < R; i++) {
      uint32_t r = r0 + i;
      if (j->kind == 0) row_q41(j, r, table, v);
      else row_q4c(j, j->n0 + r, table, v);
      for (uint32_t f = 0; f < j->F; f++) {
        double x = v[j->fr[f]];
        // (as DataView.setFloat32: any NaN is stored as the quiet NaN 0x7fc00000)
        j->fl[f * S + r] = x == x ? (float)x : f32_of_bits(0x7fc00000u);
        if (zero) v[j->fr[f]] = 0;
      }
      if (j->rot) rotate(v, K, j->rot);
      double s = (double)(float)(amax(v, K) * inv / 127);
      if (s == 0) s = 1;  // (Math.fround(x) || 1: NaN cannot occur, amax skips it)
      j->scale[r] = (float)s;
      if (!skip) quantize(v, K, inv, s, qb + (uintptr_t)i * K);
    }
    if (!skip) transpose(qb, R, K, j->q, S, r0);
  }
  return 0;
}
