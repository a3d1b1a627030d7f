// Runtime form of a SmolChat model bundle, for the browser (and Node): expands the download
// form `weights.bin` into the exact bytes of the graph's external-data file `model.data`,
// following the table manifest.runtime.tensors (README, "Bundle format").
//
// Bit-identical with py_runtime/smolchat/runtime_form.py (tests/build checks both sha256):
// every float operation is an IEEE float64 operation in the same order, float32 results go
// through Math.fround / Float32Array, and rounding is Math.floor(x + 0.5).
//
// weights.bin is stored zlib-compressed: downloadForm(manifest, fileBytes) inflates it (async)
// into the download form that the ops below read. Two ways to get model.data from that:
// * expandRuntimeData(manifest, weights): the whole file in one Uint8Array (tests, Node tools);
// * runtimeDataSource(manifest, weights): what the browser hands ORT Web as external data. It
//   never holds model.data whole: ORT asks for one initializer's bytes at a time and copies
//   them into the wasm heap, and this object expands just those bytes, so the JS copy of
//   model.data (142 MB) that expandRuntimeData makes is not part of the load's peak memory.
//
// Each of the three takes {kernel}: an ExpandKernel (expand_kernel.js) runs the int4 -> int8 ops
// in web/kernels/expand.c (WebAssembly SIMD, the same bytes, ~3x faster); without it, or for
// ops it does not take, the JS ops below run.
//
// What it leaves to others: fetching/caching the files, verifying their sha256, creating the
// ORT Web session: `ort.InferenceSession.create(modelBytes, {externalData: [{path:
// manifest.runtime.external_data, data: runtimeDataSource(manifest, weightsBytes)}]})`.
// Plain ES module, no dependencies. downloadForm is async; the other two are synchronous.

export const EXTERNAL_DATA_NAME = "model.data";
export const FORMAT = "smolchat-bundle/1"; // the manifest format this runtime reads (as runtime_form.py)

// manifest (the whole manifest.json, whose `format` is checked) or its `runtime` section -> the
// runtime section. A bundle of another format is refused before any work.
function runtimeOf(manifest) {
  if (manifest.runtime === undefined) return manifest;
  if (manifest.format !== FORMAT) {
    throw new Error(`bundle_corrupt: manifest format ${JSON.stringify(manifest.format)}, this runtime reads ${FORMAT}: rebuild the bundle or update SmolChat`);
  }
  return manifest.runtime;
}

const POW2 = (e) => Math.pow(2, e);

// IEEE half (uint16 bits) -> Number, exact.
function halfToNumber(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return sign * f * POW2(-24);
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * POW2(e - 15);
}

function f16Array(dv, off, count) {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = halfToNumber(dv.getUint16(off + 2 * i, true));
  return out;
}

function f32Array(dv, off, count) {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = dv.getFloat32(off + 4 * i, true);
  return out;
}

// 4-bit value number `idx` of the nibble stream at `off` (element 2i = low nibble of byte i).
function nibble(w, off, idx) {
  const b = w[off + (idx >> 1)];
  return idx & 1 ? b >> 4 : b & 15;
}

// Every float16 bit pattern's value (512 KB, made at the first use): q4_1_i8 reads two per block.
let HALF = null;
function halfTable() {
  if (!HALF) {
    HALF = new Float64Array(65536);
    for (let h = 0; h < 65536; h++) HALF[h] = halfToNumber(h);
  }
  return HALF;
}

// Work arrays reused from one tensor to the next (keyed by use, grown when too short): a load
// expands ~200 tensors, and fresh typed arrays per tensor (the q4_1 block parameters alone are
// ~60 MB over the model) are garbage that the GC frees late, at the load's memory peak.
const POOL = new Map();
function pooled(Type, key, count) {
  let a = POOL.get(key);
  if (!a || a.length < count) { a = new Type(count); POOL.set(key, a); }
  return a.subarray(0, count);
}

// float16 values stored as two byte planes (low bytes at lo, high bytes at hi) -> Float64Array
// (a pooled array under `key`).
function f16Planes(w, lo, hi, count, key) {
  const half = halfTable();
  const out = pooled(Float64Array, key, count);
  for (let i = 0; i < count; i++) out[i] = half[w[lo + i] | (w[hi + i] << 8)];
  return out;
}

// The int8 rule: a column's scale from its max |value|, and one value's int8.
const i8Scale = (amax) => Math.fround(amax / 127) || 1;
function toI8(v, s) {
  const q = Math.floor(v / s + 0.5);
  return q > 127 ? 127 : q < -127 ? -127 : q;
}

// `rotate` b: the "h" ops (q4_1_i8h, q4c_i8h) need a power of 4 dividing k, the others none (0).
// The rotation is in the op's name so that a runtime that does not rotate refuses the entry as
// an unknown op instead of expanding it to wrong weights. Checked as the numpy runtime does.
export function rotationBlock(t) {
  const b = t.rotate ?? 0;
  const ok = t.op.endsWith("h")
    ? Number.isInteger(b) && b > 0 && !(b & (b - 1)) && Math.log2(b) % 2 === 0 && t.k % b === 0
    : !b;
  if (!ok) {
    throw new Error(`bundle_corrupt: ${t.op} rotate ${JSON.stringify(t.rotate)} for k ${t.k}: this runtime reads powers of 4 dividing k (ops ending in h only); rebuild the bundle or update SmolChat`);
  }
  return b;
}

// v (float64 [K]) times the block-diagonal Hadamard matrix, unscaled, in place: each group of b
// features -> its Walsh-Hadamard transform (butterflies h = 1, 2, 4, ...: (x_i, x_{i+h}) ->
// (x_i + x_{i+h}, x_i - x_{i+h})); the caller scales by 1/sqrt(b) (a power of two: exact). Each
// output is the same sum of the same two inputs whatever order the butterflies run in, so
// the numpy runtime's _rotate gives the same bits. b = 64 (what the build writes) runs as two
// passes of 8-point transforms held in locals (h = 1, 2, 4 on runs of 8; h = 8, 16, 32 on
// stride 8); other sizes, stage by stage.
function fwht8(v, i, st) {
  const x0 = v[i], x1 = v[i + st], x2 = v[i + 2 * st], x3 = v[i + 3 * st];
  const x4 = v[i + 4 * st], x5 = v[i + 5 * st], x6 = v[i + 6 * st], x7 = v[i + 7 * st];
  const a0 = x0 + x1, a1 = x0 - x1, a2 = x2 + x3, a3 = x2 - x3;
  const a4 = x4 + x5, a5 = x4 - x5, a6 = x6 + x7, a7 = x6 - x7;
  const b0 = a0 + a2, b2 = a0 - a2, b1 = a1 + a3, b3 = a1 - a3;
  const b4 = a4 + a6, b6 = a4 - a6, b5 = a5 + a7, b7 = a5 - a7;
  v[i] = b0 + b4; v[i + 4 * st] = b0 - b4; v[i + st] = b1 + b5; v[i + 5 * st] = b1 - b5;
  v[i + 2 * st] = b2 + b6; v[i + 6 * st] = b2 - b6; v[i + 3 * st] = b3 + b7; v[i + 7 * st] = b3 - b7;
}

function rotate(v, b) {
  for (let j0 = 0; j0 < v.length; j0 += b) {
    if (b === 64) {
      for (let i = j0; i < j0 + 64; i += 8) fwht8(v, i, 1);
      for (let i = j0; i < j0 + 8; i++) fwht8(v, i, 8);
      continue;
    }
    for (let h = 1; h < b; h <<= 1) {
      for (let i = j0; i < j0 + b; i += 2 * h) {
        for (let x = i; x < i + h; x++) { const p = v[x], q = v[x + h]; v[x] = p + q; v[x + h] = p - q; }
      }
    }
  }
}

// Shared by q4c_i8 and q4_1_i8: rowValues(n, v) fills v[k] (float64) = value[n, k] for every
// input feature k of output feature n. -> float32 [F, N] = fround(value[n, f]) at dst_float
// for the float_rows f (and, when float_rows_int8 is "zero", value 0 there from then on);
// with `rotate` b, v rotated (above); int8 [K, N] at dst with per-column float32 scale
// s[n] = fround(max |v| / 127) (1 if 0) at dst_scale, int8 = clamp(floor(v / s + 0.5)).
// Rows go in batches of ROW_BATCH so the [K, N] writes fill contiguous runs of a row instead
// of striding N bytes per element.
const ROW_BATCH = 64;

function rowsToI8(t, out, outDv, rowValues) {
  const { n: N, k: K } = t;
  const b = rotationBlock(t);
  const inv = b ? 1 / Math.sqrt(b) : 1;
  const skip = !!t.skip_int8;
  const dst = new Int8Array(out.buffer, out.byteOffset + t.dst, N * K);
  const fr = t.float_rows || [];
  const zero = t.float_rows_int8 === "zero";
  const v = pooled(Float64Array, "row", K);
  const q = pooled(Int8Array, "batch", ROW_BATCH * K); // [batch row, k]
  for (let n0 = 0; n0 < N; n0 += ROW_BATCH) {
    const nn = Math.min(ROW_BATCH, N - n0);
    for (let r = 0; r < nn; r++) {
      const n = n0 + r;
      rowValues(n, v);
      for (let i = 0; i < fr.length; i++) {
        outDv.setFloat32(t.dst_float + 4 * (i * N + n), v[fr[i]], true);
        if (zero) v[fr[i]] = 0;
      }
      if (b) rotate(v, b);
      let amax = 0;
      for (let k = 0; k < K; k++) { const a = Math.abs(v[k]); if (a > amax) amax = a; }
      const s = i8Scale(amax * inv); // (x * inv exact: the same as scaling every value first)
      outDv.setFloat32(t.dst_scale + 4 * n, s, true);
      if (skip) continue;
      for (let k = 0, o = r * K; k < K; k++) q[o + k] = toI8(v[k] * inv, s);
    }
    if (skip) continue;
    for (let k = 0; k < K; k++) {
      const row = k * N + n0;
      for (let r = 0; r < nn; r++) dst[row + r] = q[r * K + k];
    }
  }
}

// Row n of a 4-bit code stream (nibbles from `off`, row-major [rows, K]) through a per-block
// value table: v[k] = table[(k / QK) * 16 + code]. table: the row's 16 values per block.
function nibbleRow(w, off, row, K, QK, table, v) {
  const base = off + ((row * K) >> 1); // K even: a row starts on a byte
  for (let j = 0; j < K / QK; j++) {
    const j16 = j * 16;
    for (let i = (j * QK) >> 1; i < ((j + 1) * QK) >> 1; i++) {
      const by = w[base + i];
      v[2 * i] = table[j16 + (by & 15)];
      v[2 * i + 1] = table[j16 + (by >> 4)];
    }
  }
}

// The q4c ops' block-scale coding (t.params): "a4", a 4-bit index into a_levels, is the only
// one; anything else is a bundle this runtime cannot read (expand_kernel.js checks it too).
export function q4cParams(t) {
  if (t.params !== "a4") {
    throw new Error(`bundle_corrupt: ${t.op} params ${JSON.stringify(t.params)}: this runtime reads "a4" only; rebuild the bundle or update SmolChat`);
  }
}

// q4c_i8: value = col[n] * A[a] * L[code] (float64), a = the block's 4-bit scale index; rows
// n >= coarse_from use the 8 coarse_levels instead of the 16 code_levels, rows n < fine_until
// the 32 fine_levels with one code per byte in fine_codes (the nibbles of src.codes start at
// the first row after them); with int8_cols (input features k): value[n, k] = cols_scale[i] *
// cols_q[i, n] (float32 * int8, [C, N]). q4cx: rows n < exact_until are Q8_0, value =
// exact_d[n, j] * exact_codes[n, k] (exact; their params/col/cols_q unused), and fine_codes
// starts at row exact_until.
function q4cI8(t, w, dv, out, outDv) {
  const { n: N, k: K, block: QK, src } = t;
  const nb = K / QK;
  q4cParams(t);
  const ks = t.int8_cols || [];
  const xs = ks.length ? f32Array(dv, src.cols_scale, ks.length) : null;
  const xq = ks.length ? new Int8Array(w.buffer, w.byteOffset + src.cols_q, ks.length * N) : null;
  const col = f16Array(dv, src.col, N);
  const A = f32Array(dv, src.a_levels, 16);
  const L = f32Array(dv, src.code_levels, 16);
  const coarseFrom = t.coarse_from ?? N;
  const C = coarseFrom < N ? f32Array(dv, src.coarse_levels, 8) : null;
  const exact = t.op === "q4cx_i8h" ? t.exact_until ?? 0 : 0;
  const q8 = exact ? new Int8Array(w.buffer, w.byteOffset + src.exact_codes, exact * K) : null;
  const d8 = exact ? f16Array(dv, src.exact_d, exact * nb) : null;
  const fine = Math.max(exact, t.fine_until ?? 0); // rows before it: one 5-bit code per byte; nibbles start there
  const F = fine > exact ? f32Array(dv, src.fine_levels, 32) : null;
  const table = pooled(Float64Array, "table", nb * 16);
  rowsToI8(t, out, outDv, (n, v) => {
    if (n < exact) {
      for (let k = 0; k < K; k++) v[k] = d8[n * nb + ((k / QK) | 0)] * q8[n * K + k];
      return;
    }
    const lv = n >= coarseFrom ? C : L;
    for (let j = 0; j < nb; j++) {
      const d = col[n] * A[nibble(w, src.params, n * nb + j)]; // the block's scale
      if (n < fine) {
        const row = src.fine_codes + (n - exact) * K;
        for (let k = j * QK; k < (j + 1) * QK; k++) v[k] = d * F[w[row + k]];
      } else {
        for (let c = 0; c < 16; c++) table[j * 16 + c] = c < lv.length ? d * lv[c] : 0;
      }
    }
    if (n >= fine) nibbleRow(w, src.codes, n - fine, K, QK, table, v);
    for (let i = 0; i < ks.length; i++) v[ks[i]] = xs[i] * xq[i * N + n];
  });
}

// A Q4_1 block's zero code: the code nearest the value 0, clamp(floor(-m / d + 0.5), 0, 15) in
// float64, 8 where d <= 0 or -m / d is not finite (runtime_form.py zero_codes).
function zeroCode(d, m) {
  const t = -m / d;
  return d > 0 && Number.isFinite(t) ? Math.min(15, Math.max(0, Math.floor(t + 0.5))) : 8;
}

// q4_1_i8: value = fround(d * code + m) (the Q4_1 value as float32), d/m float16 per block as
// byte planes; q4_1z: the stored codes are centred, code = (stored + z + 8) mod 16 (zeroCode).
function q41I8(t, w, dv, out, outDv) {
  const { n: N, k: K, block: QK, src } = t;
  const nb = K / QK;
  const d = f16Planes(w, src.d, src.d_hi, N * nb, "d");
  const m = f16Planes(w, src.m, src.m_hi, N * nb, "m");
  const centred = t.op.startsWith("q4_1z");
  const table = pooled(Float64Array, "table", nb * 16);
  rowsToI8(t, out, outDv, (n, v) => {
    for (let j = 0; j < nb; j++) {
      const b = n * nb + j;
      const shift = centred ? zeroCode(d[b], m[b]) + 8 : 0; // stored s holds code (s + shift) & 15
      for (let s = 0; s < 16; s++) table[j * 16 + s] = Math.fround(d[b] * ((s + shift) & 15) + m[b]);
    }
    nibbleRow(w, src.codes, n, K, QK, table, v);
  });
}

// q4_1_f32: value = fround(d * code + m), d/m float16 per block -> float32 [K, N].
function q41F32(t, w, dv, out, outDv) {
  const { n: N, k: K, block: QK, src } = t;
  const nb = K / QK;
  const d = f16Array(dv, src.d, N * nb);
  const m = f16Array(dv, src.m, N * nb);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const b = n * nb + ((k / QK) | 0);
      outDv.setFloat32(t.dst + 4 * (k * N + n), d[b] * nibble(w, src.codes, n * K + k) + m[b], true);
    }
  }
}

// q8_0_f32: value = fround(d * code), code int8, d float16 per block -> float32 [K, N].
function q80F32(t, w, dv, out, outDv) {
  const { n: N, k: K, block: QK, src } = t;
  const nb = K / QK;
  const d = f16Array(dv, src.d, N * nb);
  const codes = new Int8Array(w.buffer, w.byteOffset + src.codes, N * K);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      outDv.setFloat32(t.dst + 4 * (k * N + n), d[n * nb + ((k / QK) | 0)] * codes[n * K + k], true);
    }
  }
}

function copy(t, w, dv, out) {
  out.set(w.subarray(t.src, t.src + t.bytes), t.dst);
}

const OPS = { q4c_i8: q4cI8, q4_1_i8: q41I8, q4c_i8h: q4cI8, q4_1_i8h: q41I8, q4_1z_i8h: q41I8, q4cx_i8h: q4cI8, q4_1_f32: q41F32, q8_0_f32: q80F32, copy };

// The function that expands tensor t: (t, w, dv, out, outDv) => void, writing t's regions into
// out. kernel: an ExpandKernel (expand_kernel.js, web/kernels/expand.c: the same bytes) or
// null; the ops it does not handle run here. Should the kernel fail for another reason than
// the bundle (its memory cannot grow), its `failed` says why and the JS ops run from then on.
function opFor(t, kernel) {
  const op = OPS[t.op];
  if (!op) throw new Error(`bundle_corrupt: unknown runtime op ${t.op}: update SmolChat`);
  if (!kernel || !kernel.handles(t)) return op;
  return (local, w, dv, out, outDv) => {
    if (!kernel.failed) {
      try { return kernel.expand(local, w, out); } catch (e) {
        if (/^bundle_corrupt: /.test(e.message)) throw e;
        kernel.failed = e.message;
      }
    }
    return op(local, w, dv, out, outDv);
  };
}

/**
 * The download form's length when weights.bin is stored compressed (what downloadForm
 * inflates it to), or null when weights.bin is the download form itself.
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @returns {number | null}
 */
export function inflatedBytes(manifest) {
  const rt = runtimeOf(manifest);
  const encoding = rt.weights_encoding ?? "raw";
  if (encoding === "raw") return null;
  if (encoding !== "zlib") throw new Error(`bundle_corrupt: unknown weights_encoding ${encoding}: update SmolChat`);
  return rt.weights_raw_bytes;
}

/**
 * The download form the ops read, from weights.bin as stored: inflated when
 * manifest.runtime.weights_encoding is "zlib" (one RFC 1950 stream; DecompressionStream
 * "deflate", native in browsers and Node >= 18), else the bytes themselves.
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {Uint8Array} fileBytes  weights.bin as downloaded
 * @returns {Promise<Uint8Array>} manifest.runtime.weights_raw_bytes long
 */
export async function downloadForm(manifest, fileBytes) {
  const rawBytes = inflatedBytes(manifest);
  if (rawBytes === null) return fileBytes;
  const out = new Uint8Array(rawBytes);
  let length = 0;
  // (a stream over the bytes themselves: a Blob would copy them first)
  const input = new ReadableStream({ start(c) { c.enqueue(fileBytes); c.close(); } });
  const reader = input.pipeThrough(new DecompressionStream("deflate")).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (length + value.length > out.length) throw new Error("more bytes than weights_raw_bytes");
      out.set(value, length);
      length += value.length;
      // (each chunk is a buffer of its own, garbage once copied: freed now, not at a later GC,
      // which came after the load's peak: 84 MB of 64 KB chunks; measured -33 MB at the peak)
      freeBuffer(value.buffer);
    }
  } catch (e) {
    throw new Error(`bundle_corrupt: weights.bin does not inflate (${e.message}): rebuild the bundle`);
  }
  if (length !== out.length) {
    throw new Error(`bundle_corrupt: weights.bin inflates to ${length} bytes, the manifest says ${out.length}: rebuild the bundle`);
  }
  return out;
}

/**
 * Expand the download form into model.data (synchronous).
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {Uint8Array} weightsBytes  the download form (downloadForm: weights.bin inflated)
 * @param {{onProgress?: (done: number, total: number) => void, kernel?: object}} [options]
 *   kernel: an ExpandKernel (expand_kernel.js) for the int4 -> int8 ops, or none: JS
 * @returns {Uint8Array} model.data, manifest.runtime.expanded_bytes long
 */
export function expandRuntimeData(manifest, weightsBytes, options = {}) {
  const kernel = options.kernel || null;
  const rt = runtimeOf(manifest);
  if (!(weightsBytes instanceof Uint8Array)) throw new TypeError("weightsBytes must be a Uint8Array");
  const out = new Uint8Array(rt.expanded_bytes);
  const dv = new DataView(weightsBytes.buffer, weightsBytes.byteOffset, weightsBytes.byteLength);
  const outDv = new DataView(out.buffer);
  const total = rt.tensors.length;
  rt.tensors.forEach((t, i) => {
    opFor(t, kernel)(t, weightsBytes, dv, out, outDv);
    if (options.onProgress) options.onProgress(i + 1, total);
  });
  return out;
}

/**
 * The byte regions of model.data one runtime tensor (an entry of manifest.runtime.tensors)
 * writes: [{start, bytes}], one per initializer ORT reads, in the order the op produces them
 * (q4c_i8, q4_1_i8: int8 weights [K, N], float32 scales [N], float32 rows [F, N] if any).
 */
export function regionsOf(t) {
  const op = OPS[t.op]; // by what the op runs, so that OPS is the one list of op names
  if (op === q4cI8 || op === q41I8) {
    const parts = [{ start: t.dst, bytes: t.n * t.k }, { start: t.dst_scale, bytes: 4 * t.n }];
    if (t.float_rows && t.float_rows.length) parts.push({ start: t.dst_float, bytes: 4 * t.float_rows.length * t.n });
    return parts;
  }
  if (op === q41F32 || op === q80F32) return [{ start: t.dst, bytes: 4 * t.n * t.k }];
  if (op === copy) return [{ start: t.dst, bytes: t.bytes }];
  throw new Error(`bundle_corrupt: unknown runtime op ${t.op}: update SmolChat`);
}

const KEEP_BYTES = 1 << 22; // parts up to this size are kept (copied) until ORT asks for them

// Run one tensor's op into `scratch` (a Uint8Array, big enough):
// -> [Uint8Array view per region, in regionsOf order]. Every op writes all of its bytes, except
// with `smallOnly` (q4c_i8, q4_1_i8): scales and float rows only, the int8 table left unwritten.
function expandTensor(t, w, dv, scratch, smallOnly = false, kernel = null) {
  const parts = regionsOf(t);
  const offsets = [];
  let size = 0;
  for (const r of parts) { offsets.push(size); size += r.bytes; }
  const local = { ...t, dst: 0, skip_int8: smallOnly };
  if (parts.length > 1) local.dst_scale = offsets[1];
  if (parts.length > 2) local.dst_float = offsets[2];
  opFor(t, kernel)(local, w, dv, scratch, new DataView(scratch.buffer, scratch.byteOffset, size));
  return parts.map((r, i) => scratch.subarray(offsets[i], offsets[i] + r.bytes));
}

/**
 * model.data on demand, as ONNX Runtime Web reads external data: ORT keeps the object it is
 * given (a Uint8Array is passed through as is) and, for each initializer, takes
 * `data.subarray(offset, offset + length)` and copies it into the wasm heap (onnxruntime-web
 * 1.30.0, ort-wasm-simd-threaded.mjs: the EM_ASM reader behind tensorprotoutils.cc; it checks
 * `offset + length <= data.byteLength` first). So this is a Uint8Array whose byteLength is
 * model.data's and whose subarray(begin, end) returns a fresh Uint8Array with exactly the bytes
 * expandRuntimeData would have there (zero padding between tensors included). Element access
 * and every other method see an empty array: give it to ORT, nothing else.
 *
 * A read of exactly one tensor (what ORT does) returns a view into one scratch buffer that the
 * next read overwrites: ORT copies it at once (HEAPU8.set). Other reads get a fresh array.
 * Memory: the weights (download form) plus the scratch, the largest tensor's expansion (the
 * embedding, N*K int8 = 28 MB). A q4c_i8 / q4_1_i8 tensor's parts (int8 table, scales, float
 * rows) are computed together and the small ones ORT has not asked for yet are kept (copied)
 * until it does. ORT reads in hash order: when it asks for a small part before a big (> 4 MB)
 * int8 table, only the small parts are computed (`stats.small_passes`), and the table gets
 * its full expansion when asked for. So each tensor is expanded once, and no 28 MB table is
 * held beside the scratch; a repeated read is expanded again.
 * `stats` counts reads and expansions (tests, diagnostics).
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {Uint8Array} weightsBytes  the download form (downloadForm: weights.bin inflated),
 *   kept until the session exists
 * @param {{kernel?: object}} [options]  kernel: an ExpandKernel (expand_kernel.js), or none: JS
 * @returns {Uint8Array & {stats: {reads: number, partial: number, expansions: number, small_passes: number, bytes: number}}}
 */
export function runtimeDataSource(manifest, weightsBytes, options = {}) {
  const kernel = options.kernel || null;
  const rt = runtimeOf(manifest);
  if (!(weightsBytes instanceof Uint8Array)) throw new TypeError("weightsBytes must be a Uint8Array");
  const dv = new DataView(weightsBytes.buffer, weightsBytes.byteOffset, weightsBytes.byteLength);
  const regions = []; // {start, end, tensor, part}, sorted by start
  let largest = 0;
  for (const t of rt.tensors) {
    const parts = regionsOf(t);
    largest = Math.max(largest, parts.reduce((sum, r) => sum + r.bytes, 0));
    parts.forEach((r, part) => regions.push({ start: r.start, end: r.start + r.bytes, tensor: t, part }));
  }
  regions.sort((a, b) => a.start - b.start);
  let scratch = null; // allocated at the first read, dropped with this object
  const pending = new Map(); // region start -> its bytes, expanded with another part of its tensor
  // partial: reads not one whole region; small_passes: scales/float rows computed without the int8 table
  const stats = { reads: 0, partial: 0, expansions: 0, small_passes: 0, bytes: 0 };
  const total = rt.expanded_bytes;

  const delivered = new Set(); // region starts already returned whole

  function bytesOf(region) {
    const kept = pending.get(region.start);
    if (kept) { pending.delete(region.start); delivered.add(region.start); return kept; }
    const all = regionsOf(region.tensor);
    // ORT reads in its own order: the embedding's scales and float rows come ~300 reads before
    // its 28 MB int8 table. Asked for a small part while the big table is still to come, only
    // the small parts are computed (no int8 writes); the table gets its own pass later, so it
    // is never held twice.
    const smallOnly = region.part !== 0 && all[0].bytes > KEEP_BYTES && !delivered.has(all[0].start);
    if (smallOnly) stats.small_passes += 1;
    else stats.expansions += 1;
    scratch = scratch ?? new Uint8Array(largest);
    const parts = expandTensor(region.tensor, weightsBytes, dv, scratch, smallOnly, kernel);
    all.forEach((r, i) => {
      // the other small parts (scales, float rows) not yet returned are kept until asked for,
      // copied out of scratch (which the next tensor overwrites)
      if (i !== region.part && r.bytes <= KEEP_BYTES && !delivered.has(r.start)) pending.set(r.start, parts[i].slice());
    });
    delivered.add(region.start);
    return parts[region.part];
  }

  // index of the first region that ends after `offset`
  function firstAfter(offset) {
    let lo = 0, hi = regions.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (regions[mid].end <= offset) lo = mid + 1; else hi = mid; }
    return lo;
  }

  class RuntimeData extends Uint8Array {
    get byteLength() { return total; }
    get stats() { return stats; }
    subarray(begin = 0, end = total) {
      if (!(begin >= 0 && end <= total && begin <= end)) throw new RangeError(`model.data has no bytes [${begin}, ${end})`);
      stats.reads += 1;
      stats.bytes += end - begin;
      const i = firstAfter(begin);
      const r = regions[i];
      if (r && r.start === begin && r.end === end) return bytesOf(r); // one tensor: a view
      stats.partial += 1;
      const out = new Uint8Array(end - begin);
      for (let j = i; j < regions.length && regions[j].start < end; j++) {
        const q = regions[j];
        const from = Math.max(begin, q.start), to = Math.min(end, q.end);
        out.set(bytesOf(q).subarray(from - q.start, to - q.start), from - begin);
      }
      return out;
    }
  }
  return new RuntimeData(0);
}

/**
 * Expand the download form tensor by tensor, each into its own buffer (what a helper worker
 * does before handing model.data over: the buffers can be transferred, and released one by one
 * as ORT copies them; see runtimeDataFromParts). Same bytes as expandRuntimeData.
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {Uint8Array} weightsBytes  the download form (downloadForm: weights.bin inflated)
 * @param {{onProgress?: (done: number, total: number) => void,
 *          onChunk?: (parts: {start: number, bytes: Uint8Array}[]) => void, kernel?: object}} [options]
 *   kernel: an ExpandKernel (expand_kernel.js) for the int4 -> int8 ops, or none: JS
 *   onChunk: each buffer's regions as soon as it is expanded; the buffer is freed when
 *   onChunk returns (freeBuffer), so it copies what it keeps (postMessage without transfer),
 *   unless it returns true: then the buffer is the caller's (to free once it is done with it)
 * @returns {{start: number, bytes: Uint8Array}[]} one entry per region (regionsOf), sorted by
 *   start (empty with onChunk); views of ArrayBuffers of ~8 MB (CHUNK_BYTES) that each hold
 *   consecutive tensors
 */
export function expandParts(manifest, weightsBytes, options = {}) {
  const rt = runtimeOf(manifest);
  if (!(weightsBytes instanceof Uint8Array)) throw new TypeError("weightsBytes must be a Uint8Array");
  const dv = new DataView(weightsBytes.buffer, weightsBytes.byteOffset, weightsBytes.byteLength);
  const out = [];
  rt.tensors.forEach((t) => {
    if (!OPS[t.op]) throw new Error(`bundle_corrupt: unknown runtime op ${t.op}: update SmolChat`);
  });
  const sizes = rt.tensors.map((t) => regionsOf(t).reduce((n, r) => n + r.bytes, 0));
  let done = 0;
  for (const [first, end] of chunks(sizes, CHUNK_BYTES)) {
    const chunk = new Uint8Array(sizes.slice(first, end).reduce((a, b) => a + b, 0));
    const mine = options.onChunk ? [] : out;
    let offset = 0;
    for (let i = first; i < end; i++) {
      const t = rt.tensors[i];
      const views = expandTensor(t, weightsBytes, dv, chunk.subarray(offset, offset + sizes[i]), false, options.kernel || null);
      regionsOf(t).forEach((r, j) => mine.push({ start: r.start, bytes: views[j] }));
      offset += sizes[i];
      done += 1;
      if (options.onProgress) options.onProgress(done, rt.tensors.length);
    }
    if (options.onChunk && options.onChunk(mine) !== true) {
      freeBuffer(chunk.buffer); // (onChunk copied what it keeps)
    }
  }
  return out.sort((a, b) => a.start - b.start);
}

// expandParts' buffers hold consecutive tensors up to this many bytes (one tensor may exceed
// it). A buffer of ~1 MB or less (271 of the compact bundle's 272 tensors) sits in one of the
// allocator's size buckets, which Chromium keeps mapped for a while after it is freed; a
// larger one has a mapping of its own, given back when the buffer is freed (measured
// 2026-12-03: the renderer stayed ~140 MB higher after the load with one buffer per tensor).
// (The receiving worker's own copy of each region, ownRegions, showed no such retention:
// ArrayBuffers + JS heaps 2.5 s after ready 47-55 MB either way, 2026-12-03.)
const CHUNK_BYTES = 8 << 20;

// [first, end) index ranges of consecutive sizes, each summing to >= limit (except the last
// range, which may be smaller), a size alone when it is >= limit itself.
function chunks(sizes, limit) {
  const out = [];
  let first = 0, sum = 0;
  sizes.forEach((n, i) => {
    sum += n;
    if (sum >= limit) { out.push([first, i + 1]); first = i + 1; sum = 0; }
  });
  if (first < sizes.length) out.push([first, sizes.length]);
  return out;
}

/**
 * One buffer per region: each of `parts`' regions copied into an ArrayBuffer of its own, the
 * buffers they shared freed (freeBuffer) as soon as theirs are copied. ORT Web reads
 * model.data's regions in an order of its own (its initializer table, not their offsets:
 * 335 of 693 steps go up on the compact bundle), so an ~8 MB buffer of consecutive tensors
 * (expandParts) stayed until nearly all of ORT's reads were done, and all of model.data
 * (142 MB) was held while ORT's heap filled with its copy; a region alone in its buffer is
 * freed right after ORT has copied it (runtimeDataFromParts).
 * Measured 2026-12-03 (Chromium 156, cached loads): the renderer's peak during the session
 * create ~640 -> ~560 MB; the copy costs ~30 ms, made while the Pyodide worker waits.
 * @param {{start: number, bytes: Uint8Array}[]} parts  regions (views of shared buffers, which
 *   nothing else may read afterwards: they are freed)
 * @returns {{start: number, bytes: Uint8Array}[]} the same regions, same order, each `bytes` the
 *   whole of its own ArrayBuffer
 */
export function ownRegions(parts) {
  const shared = new Set();
  const out = parts.map(({ start, bytes }) => {
    const own = new Uint8Array(bytes.byteLength);
    own.set(bytes);
    shared.add(bytes.buffer);
    return { start, bytes: own };
  });
  for (const buffer of shared) freeBuffer(buffer);
  return out;
}

/**
 * model.data for ORT Web (as runtimeDataSource: a Uint8Array whose byteLength is model.data's
 * and whose subarray(begin, end) gives those bytes) from expandParts' regions. A read of one
 * whole region returns that region's view and forgets it, and a buffer all of whose regions
 * ORT has copied into the wasm heap is freed at the next read (onnxruntime-web 1.30 reads every
 * region exactly once, measured on the compact bundle: 694 reads, 694 regions). A read over
 * several regions is assembled from what is still held (zeros between regions); a region
 * already handed over and asked for again throws (ORT reports "failed to load external data").
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {{start: number, bytes: Uint8Array}[]} parts  expandParts' result (sorted by start);
 *   consumed (emptied), so that nothing else keeps a buffer alive
 */
export function runtimeDataFromParts(manifest, parts) {
  const total = runtimeOf(manifest).expanded_bytes;
  const starts = parts.map((p) => p.start);
  const ends = parts.map((p) => p.start + p.bytes.byteLength);
  const held = parts.map((p) => p.bytes);
  const count = parts.length;
  parts.length = 0; // consumed: this object holds the only references now
  // regions not handed over yet, per buffer; a buffer all of whose regions ORT has copied is
  // freed at the next read (ORT copies a region into its heap as soon as subarray returns)
  const left = new Map();
  for (const b of held) left.set(b.buffer, (left.get(b.buffer) || 0) + 1);
  let done = [];
  const release = () => { for (const buffer of done) freeBuffer(buffer); done = []; };
  const firstAfter = (offset) => { // index of the first part that ends after offset
    let lo = 0, hi = count;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (ends[mid] <= offset) lo = mid + 1; else hi = mid; }
    return lo;
  };
  const bytesOf = (i) => {
    if (!held[i]) throw new Error(`model.data bytes at ${starts[i]} were already handed to ONNX Runtime`);
    return held[i];
  };
  class PartsData extends Uint8Array {
    get byteLength() { return total; }
    subarray(begin = 0, end = total) {
      if (!(begin >= 0 && end <= total && begin <= end)) throw new RangeError(`model.data has no bytes [${begin}, ${end})`);
      release();
      const i = firstAfter(begin);
      if (i < count && starts[i] === begin && ends[i] === end && held[i]) {
        const view = held[i];
        held[i] = null; // ORT copies it at once
        const n = left.get(view.buffer) - 1;
        if (n) left.set(view.buffer, n); else { left.delete(view.buffer); done.push(view.buffer); }
        return view;
      }
      const out = new Uint8Array(end - begin);
      for (let j = i; j < count && starts[j] < end; j++) {
        const b = bytesOf(j);
        const from = Math.max(begin, starts[j]), to = Math.min(end, ends[j]);
        out.set(b.subarray(from - starts[j], to - starts[j]), from - begin);
      }
      return out;
    }
  }
  const data = new PartsData(0);
  // frees what ORT has copied (call once the session exists; reads after it still work)
  data.release = release;
  return data;
}

// Free an ArrayBuffer's memory now instead of at a later garbage collection (which may come
// seconds later, at the load's memory peak): ArrayBuffer.prototype.transfer(0) detaches it
// (Chromium 114+, Node 22+; without it the buffer waits for the collector as before).
// Measured in Chromium 156 (2026-12-03, 17 buffers of 8 MB): this gives back the memory of a
// buffer the worker allocated, or received as a copy (postMessage without a transfer list), at
// once; a buffer received by *transfer* from another worker keeps its memory until the
// receiving worker ends, detached or collected or not (load_worker.js posts copies for this).
// Only for buffers nothing reads again.
export function freeBuffer(buffer) {
  if (typeof buffer.transfer === "function" && !buffer.detached) buffer.transfer(0);
}

/** Name of the external-data file the graph references (manifest.runtime.external_data). */
export function externalDataName(manifest) {
  return (manifest.runtime ?? manifest).external_data ?? EXTERNAL_DATA_NAME;
}
