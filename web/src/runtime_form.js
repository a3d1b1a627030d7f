// Runtime form of a SmolChat model bundle, for the browser (and Node): expands the download
// form `weights.bin` into the exact bytes of the graph's external-data file `model.data`,
// following the table manifest.runtime.tensors (README, "Bundle format").
//
// Bit-identical with py_runtime/smolchat/runtime_form.py (tests/build checks both sha256):
// every float operation is an IEEE float64 operation in the same order, float32 results go
// through Math.fround / Float32Array, and rounding is Math.floor(x + 0.5).
//
// Two ways to get model.data:
// * expandRuntimeData(manifest, weights): the whole file in one Uint8Array (tests, Node tools);
// * runtimeDataSource(manifest, weights): what the browser hands ORT Web as external data. It
//   never holds model.data whole: ORT asks for one initializer's bytes at a time and copies
//   them into the wasm heap, and this object expands just those bytes. The 135 MB JS copy of
//   model.data that expandRuntimeData made is gone from the load's peak memory.
//
// What it leaves to others: fetching/caching the files, verifying their sha256, creating the
// ORT Web session: `ort.InferenceSession.create(modelBytes, {externalData: [{path:
// manifest.runtime.external_data, data: runtimeDataSource(manifest, weightsBytes)}]})`.
// Plain ES module, no dependencies. Both functions are synchronous.

export const EXTERNAL_DATA_NAME = "model.data";

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

// q4c_i8: value = col[n] * A[a] * (code + T[t]), or col[n] * A[a] * L[code] when the entry has
// src.code_levels (float64) -> int8 [K, N] with per-column
// float32 scale s[n] = fround(max_k |value| / 127) (1 if 0), int8 = clamp(floor(v/s + 0.5)).
// A block has 16 possible values, so each is computed once per block (the same float64
// operations as per element, so the same bits): value table -> the column's max over the codes
// that occur -> s -> int8 table. Columns go in batches of Q4C_BATCH so the [K, N] writes fill
// contiguous runs of a row instead of striding N bytes per element.
const Q4C_BATCH = 64;

function q4cI8(t, w, dv, out, outDv) {
  const { n: N, k: K, block: QK, src } = t;
  const nb = K / QK;
  const col = f16Array(dv, src.col, N);
  const A = f32Array(dv, src.a_levels, 16);
  const L = src.code_levels !== undefined ? f32Array(dv, src.code_levels, 16) : null;
  const T = L ? null : f32Array(dv, src.t_levels, t.n_t);
  const a4t4 = t.params === "a4t4";
  const dst = new Int8Array(out.buffer, out.byteOffset + t.dst, N * K);
  const codes = src.codes;
  const per = nb * 16; // table entries per column
  const value = new Float64Array(per);
  const qtab = new Int8Array(Q4C_BATCH * per);
  for (let n0 = 0; n0 < N; n0 += Q4C_BATCH) {
    const nn = Math.min(Q4C_BATCH, N - n0);
    for (let b = 0; b < nn; b++) {
      const n = n0 + b;
      let amax = 0;
      for (let j = 0; j < nb; j++) {
        const bi = n * nb + j;
        let a, ti;
        if (a4t4) {
          const p = w[src.params + bi];
          a = p >> 4;
          ti = p & 15;
        } else {
          a = nibble(w, src.params, bi);
          ti = 0;
        }
        const d = col[n] * A[a];
        const tv = L ? 0 : T[ti];
        // which of the 16 codes occur in this block (QK even, block starts on a byte)
        const first = codes + ((n * K + j * QK) >> 1);
        let seen = 0;
        for (let i = 0; i < QK >> 1; i++) { const by = w[first + i]; seen |= (1 << (by & 15)) | (1 << (by >> 4)); }
        for (let c = 0; c < 16; c++) {
          const v = L ? d * L[c] : d * (c + tv);
          value[j * 16 + c] = v;
          if (seen & (1 << c)) { const av = Math.abs(v); if (av > amax) amax = av; }
        }
      }
      let s = Math.fround(amax / 127);
      if (s === 0) s = 1;
      for (let e = 0; e < per; e++) {
        let q = Math.floor(value[e] / s + 0.5);
        if (q > 127) q = 127;
        else if (q < -127) q = -127;
        qtab[b * per + e] = q;
      }
      outDv.setFloat32(t.dst_scale + 4 * n, s, true);
    }
    for (let k = 0; k < K; k++) {
      const j16 = ((k / QK) | 0) * 16;
      const row = k * N + n0;
      for (let b = 0; b < nn; b++) {
        const idx = (n0 + b) * K + k;
        const by = w[codes + (idx >> 1)];
        dst[row + b] = qtab[b * per + j16 + (idx & 1 ? by >> 4 : by & 15)];
      }
    }
  }
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

const OPS = { q4c_i8: q4cI8, q4_1_f32: q41F32, q8_0_f32: q80F32, copy };

/**
 * Expand weights.bin into model.data (synchronous).
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {Uint8Array} weightsBytes  the bytes of weights.bin
 * @param {{onProgress?: (done: number, total: number) => void}} [options]
 * @returns {Uint8Array} model.data, manifest.runtime.expanded_bytes long
 */
export function expandRuntimeData(manifest, weightsBytes, options = {}) {
  const rt = manifest.runtime ?? manifest;
  if (!(weightsBytes instanceof Uint8Array)) throw new TypeError("weightsBytes must be a Uint8Array");
  const out = new Uint8Array(rt.expanded_bytes);
  const dv = new DataView(weightsBytes.buffer, weightsBytes.byteOffset, weightsBytes.byteLength);
  const outDv = new DataView(out.buffer);
  const total = rt.tensors.length;
  rt.tensors.forEach((t, i) => {
    const op = OPS[t.op];
    if (!op) throw new Error(`bundle_corrupt: unknown runtime op ${t.op}: update SmolChat`);
    op(t, weightsBytes, dv, out, outDv);
    if (options.onProgress) options.onProgress(i + 1, total);
  });
  return out;
}

/**
 * The byte regions of model.data one runtime tensor (an entry of manifest.runtime.tensors)
 * writes: [{start, bytes}], one per initializer ORT reads, in the order the op produces them
 * (q4c_i8: int8 weights [K, N], then float32 scales [N]).
 */
export function regionsOf(t) {
  switch (t.op) {
    case "q4c_i8": return [{ start: t.dst, bytes: t.n * t.k }, { start: t.dst_scale, bytes: 4 * t.n }];
    case "q4_1_f32": case "q8_0_f32": return [{ start: t.dst, bytes: 4 * t.n * t.k }];
    case "copy": return [{ start: t.dst, bytes: t.bytes }];
    default: throw new Error(`bundle_corrupt: unknown runtime op ${t.op}: update SmolChat`);
  }
}

// Run one tensor's op into `scratch` (a Uint8Array at offset 0 of its buffer, big enough):
// -> [Uint8Array view per region, in regionsOf order]. Every op writes all of its bytes.
function expandTensor(t, w, dv, scratch) {
  const parts = regionsOf(t);
  const offsets = [];
  let size = 0;
  for (const r of parts) { offsets.push(size); size += r.bytes; }
  const local = { ...t, dst: 0 };
  if (t.op === "q4c_i8") local.dst_scale = offsets[1];
  OPS[t.op](local, w, dv, scratch, new DataView(scratch.buffer, 0, size));
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
 * embedding, N*K int8 = 28 MB). A q4c_i8 tensor's scale part is computed with its int8 part
 * and kept (copied, 4*N bytes) until ORT asks for it; a repeated read is expanded again (ORT
 * reads a tensor twice when a constant it folds at session start uses it).
 * `stats` counts reads and expansions (tests, diagnostics).
 * @param {object} manifest  the bundle's manifest.json (or its `runtime` section)
 * @param {Uint8Array} weightsBytes  the bytes of weights.bin (kept until the session exists)
 * @returns {Uint8Array & {stats: {reads: number, partial: number, expansions: number, bytes: number}}}
 */
export function runtimeDataSource(manifest, weightsBytes) {
  const rt = manifest.runtime ?? manifest;
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
  const stats = { reads: 0, partial: 0, expansions: 0, bytes: 0 }; // partial: reads not one whole region
  const total = rt.expanded_bytes;

  function bytesOf(region) {
    const kept = pending.get(region.start);
    if (kept) { pending.delete(region.start); return kept; }
    stats.expansions += 1;
    scratch = scratch ?? new Uint8Array(largest);
    const parts = expandTensor(region.tensor, weightsBytes, dv, scratch);
    regionsOf(region.tensor).forEach((r, i) => {
      // the other parts of this tensor are kept only when small (scales), copied out of scratch
      if (i !== region.part && r.bytes <= 1 << 20) pending.set(r.start, parts[i].slice());
    });
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

/** Name of the external-data file the graph references (manifest.runtime.external_data). */
export function externalDataName(manifest) {
  return (manifest.runtime ?? manifest).external_data ?? EXTERNAL_DATA_NAME;
}
