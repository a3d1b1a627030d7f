// The int4 -> int8 expansion of the compact bundle's tensors in web/kernels/expand.c
// (WebAssembly SIMD) instead of runtime_form.js's JavaScript ops, the same bytes.
//
// On a return visit the load helper (load_worker.js) spent ~2 s expanding weights.bin into
// model.data in JS, and the ORT session waits for it (issue #17). The kernel runs the same
// float64 operations in the same order (see the C file), so model.data is byte for byte what
// runtime_form.js (and py_runtime's runtime_form.py) make: tests/web/test_expand_kernel.py
// compares sha256 over the tiny and compact bundles.
//
// How it is used: runtime_form.js's expandParts / expandRuntimeData / runtimeDataSource take
// `{kernel}` (an ExpandKernel) and hand it each tensor whose op it handles; the rest (`copy`,
// the exact preset's float32 ops, shapes it does not take) stay in JS. A tensor goes through
// the kernel in strips of rows (~2 MB of int8 output each): the strip's inputs are copied into
// the kernel's memory, expanded, and its outputs copied to where the op's regions go, so the
// kernel's memory holds one strip (~4 MB), never the whole form.
// What it ignores: threads (one kernel, the calling thread), fetching the .wasm (the caller
// hands a compiled Module or bytes).

import { rotationBlock, q4cParams } from './runtime_form.js';
import { instantiateKernel, kernelExports, kernelAllocator } from './kernels.js';

const KERNEL_OPS = new Set(['q4_1_i8', 'q4_1_i8h', 'q4_1z_i8h', 'q4c_i8', 'q4c_i8h', 'q4cx_i8h']);

// expand.c's `job`, one uint32 word each, in its order (pointers are 32-bit in wasm32)
const JOB_FIELDS = ['kind', 'flags', 'N', 'K', 'QK', 'n0', 'n1', 'rot', 'F', 'fr', 'q', 'scale', 'fl',
  'codes', 'd_lo', 'd_hi', 'm_lo', 'm_hi', 'params', 'p0', 'col', 'A', 'L', 'C', 'FL',
  'coarse_from', 'exact', 'fine', 'xcodes', 'xd', 'fcodes', 'ncodes', 'nc', 'cols', 'cols_scale', 'cols_q'];
const F_CENTRED = 1, F_SKIP = 2, F_ZERO = 4;

// int8 output bytes of one kernel call (rows S = this / K): every layer matrix of the compact
// bundle (<= 1536 x 576) in one call, the embedding (49152 x 576) in 14
const STRIP_BYTES = 2 << 20;

export class ExpandKernel {
  // instance: the WebAssembly instance of kernels/expand.wasm; stripBytes: int8 output bytes
  // per kernel call (tests make it small to cut tensors into many strips)
  constructor(instance, { stripBytes = STRIP_BYTES } = {}) {
    this.e = kernelExports(instance, ['memory', 'ex_reset', 'ex_alloc', 'ex_rows'], 'expansion kernel');
    this.alloc = kernelAllocator(this.e.ex_alloc, 'expansion kernel');
    this.stripBytes = stripBytes;
    this.tensors = 0;   // tensors expanded here (running total)
    this.ms = 0;        // ms spent in expand() (copies in and out included)
  }

  // Whether expand() takes this manifest.runtime.tensors entry (else runtime_form.js's op runs).
  handles(t) {
    return KERNEL_OPS.has(t.op) && t.block > 0 && t.block % 2 === 0 && t.k % t.block === 0 && t.n > 0;
  }

  // Run the kernel's code on two small made-up tensors (q4_1z_i8h and q4cx_i8h, 64 rows of
  // 576, random bytes; ~10 ms), results thrown away, so that V8 has its optimized code before
  // the real expansion starts: load_worker.js calls this while the bundle is still being read.
  // (The first tensor is the 28 MB embedding: measured in the page's cached loads, 2026-12-03,
  // it took 540-870 ms when its calls ran the baseline code, 140 ms optimized; with this
  // warm-up and expand.c's per-row functions, 180-260 ms, load average 3-6.)
  warmUp() {
    const N = 64, K = 576, QK = 32, nb = K / QK;
    const w = new Uint8Array(1 << 17);
    let x = 1;
    for (let i = 0; i < w.length; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; w[i] = x >>> 24; }
    let at = 0;
    const put = (bytes) => { const p = at; at += bytes; return p; };
    const base = { n: N, k: K, block: QK, rotate: 64, float_rows: [1], float_rows_int8: 'zero', dst: 0, dst_scale: N * K, dst_float: N * K + 4 * N };
    const tensors = [
      { ...base, name: 'warm-up q4_1z', op: 'q4_1z_i8h', src: { codes: put(N * K / 2), d: put(N * nb), d_hi: put(N * nb), m: put(N * nb), m_hi: put(N * nb) } },
      { ...base, name: 'warm-up q4cx', op: 'q4cx_i8h', params: 'a4', exact_until: 8, fine_until: 16, coarse_from: 48, int8_cols: [3, 100],
        src: { codes: put(48 * K / 2), params: put(N * nb / 2), col: put(2 * N), a_levels: put(64), code_levels: put(64), coarse_levels: put(32),
          fine_levels: put(128), exact_codes: put(8 * K), exact_d: put(16 * nb), fine_codes: put(8 * K), cols_q: put(2 * N), cols_scale: put(8) } },
    ];
    const out = new Uint8Array(N * K + 8 * N);
    const { tensors: count, ms } = this;
    for (let i = 0; i < 3; i++) for (const t of tensors) this.expand(t, w, out);
    this.tensors = count;
    this.ms = ms;
  }

  // bytes of the kernel's memory (one strip's inputs and outputs at most)
  bytes() { return this.e.memory.buffer.byteLength; }

  // One tensor's op into `out` (a Uint8Array; its regions at t.dst, t.dst_scale, t.dst_float
  // as runtime_form.js rowsToI8 writes them; t.skip_int8: scales and float rows only).
  // w: the download form. Throws bundle_corrupt for entries that read outside it.
  expand(t, w, out) {
    const t0 = performance.now();
    const { n: N, k: K, block: QK, src } = t;
    const nb = K / QK;
    const rot = rotationBlock(t);
    const q41 = t.op.startsWith('q4_1');
    if (!q41) q4cParams(t);
    const fr = t.float_rows || [];
    const ks = q41 ? [] : t.int8_cols || [];
    for (const k of [...fr, ...ks]) {
      if (!(Number.isInteger(k) && k >= 0 && k < K)) throw new Error(`bundle_corrupt: ${t.name}: feature ${k} is not below k ${K}: rebuild the bundle`);
    }
    const skip = !!t.skip_int8;
    const flags = (t.op.startsWith('q4_1z') ? F_CENTRED : 0) | (skip ? F_SKIP : 0)
      | (t.float_rows_int8 === 'zero' ? F_ZERO : 0);
    const exact = t.op === 'q4cx_i8h' ? t.exact_until ?? 0 : 0;
    const fine = Math.max(exact, t.fine_until ?? 0);
    const coarseFrom = t.coarse_from ?? N;
    const e = this.e;
    const rows = Math.max(1, Math.floor(this.stripBytes / K));
    for (let n0 = 0; n0 < N; n0 += rows) {
      const n1 = Math.min(N, n0 + rows), S = n1 - n0;
      const job = { kind: q41 ? 0 : 1, flags, N, K, QK, n0, n1, rot, F: fr.length, p0: 0, nc: ks.length,
        coarse_from: coarseFrom, exact, fine };
      // [name, [[byte offset in w, bytes], ...]] copied one after the other into one block of
      // the kernel's memory for this strip
      const inputs = [];
      const one = (name, off, bytes) => inputs.push([name, [[off, bytes]]]);
      const rowsOf = (name, off, from, to, rowBytes) => {
        const a = Math.max(n0, from), b = Math.min(n1, to);
        if (b > a) one(name, off + (a - from) * rowBytes, (b - a) * rowBytes);
      };
      if (q41) {
        rowsOf('codes', src.codes, 0, N, K / 2);
        for (const [name, key] of [['d_lo', 'd'], ['d_hi', 'd_hi'], ['m_lo', 'm'], ['m_hi', 'm_hi']]) rowsOf(name, src[key], 0, N, nb);
      } else {
        const first = Math.floor(n0 * nb / 2);
        one('params', src.params + first, Math.floor((n1 * nb - 1) / 2) - first + 1);
        job.p0 = (n0 * nb) & 1;
        rowsOf('col', src.col, 0, N, 2);
        one('A', src.a_levels, 64);
        one('L', src.code_levels, 64);
        if (coarseFrom < N) one('C', src.coarse_levels, 32);
        if (fine > exact) one('FL', src.fine_levels, 128);
        rowsOf('xcodes', src.exact_codes, 0, exact, K);
        rowsOf('xd', src.exact_d, 0, exact, 2 * nb);
        rowsOf('fcodes', src.fine_codes, exact, fine, K);
        rowsOf('ncodes', src.codes, fine, N, K / 2);
        if (ks.length) {
          one('cols_scale', src.cols_scale, 4 * ks.length);
          inputs.push(['cols_q', ks.map((_, i) => [src.cols_q + i * N + n0, S])]);  // [C, N] -> [C, S]
        }
      }
      // every block first (the memory may grow: views are made after)
      e.ex_reset();
      const alloc = (bytes) => this.alloc(Math.max(bytes, 1));
      const at = alloc(4 * JOB_FIELDS.length);
      job.q = skip ? 0 : alloc(K * S);
      job.scale = alloc(4 * S);
      job.fl = alloc(4 * fr.length * S);
      job.fr = alloc(4 * fr.length);
      job.cols = alloc(4 * ks.length);
      const ptrs = inputs.map(([, pieces]) => alloc(pieces.reduce((sum, [, bytes]) => sum + bytes, 0)));
      let u8 = new Uint8Array(e.memory.buffer);
      new Uint32Array(e.memory.buffer, job.fr, fr.length).set(fr);
      new Uint32Array(e.memory.buffer, job.cols, ks.length).set(ks);
      inputs.forEach(([name, pieces], i) => {
        let p = ptrs[i];
        for (const [off, bytes] of pieces) {
          if (!(off >= 0 && off + bytes <= w.length)) {
            throw new Error(`bundle_corrupt: ${t.name} reads bytes [${off}, ${off + bytes}) of a download form of ${w.length}: rebuild the bundle`);
          }
          u8.set(w.subarray(off, off + bytes), p);
          p += bytes;
        }
        job[name] = ptrs[i];
      });
      new Uint32Array(e.memory.buffer, at, JOB_FIELDS.length).set(JOB_FIELDS.map((f) => job[f] ?? 0));
      if (e.ex_rows(at) !== 0) throw new Error('out of memory: the expansion kernel could not grow its memory');
      u8 = new Uint8Array(e.memory.buffer);
      // the strip's outputs -> the op's regions: int8 [K, N] (S columns of each row), scales
      // [N], float rows [F, N]
      if (!skip) {
        if (S === N) out.set(u8.subarray(job.q, job.q + K * N), t.dst);
        else for (let k = 0; k < K; k++) out.set(u8.subarray(job.q + k * S, job.q + (k + 1) * S), t.dst + k * N + n0);
      }
      out.set(u8.subarray(job.scale, job.scale + 4 * S), t.dst_scale + 4 * n0);
      for (let f = 0; f < fr.length; f++) {
        out.set(u8.subarray(job.fl + 4 * f * S, job.fl + 4 * (f + 1) * S), t.dst_float + 4 * (f * N + n0));
      }
    }
    this.tensors += 1;
    this.ms += performance.now() - t0;
  }
}

// -> {kernel: ExpandKernel | null, note: why the JS ops expand instead (null when the kernel
// does)}. source: a WebAssembly.Module (load_worker.js compiles it while the bundle downloads),
// the .wasm bytes (Node), or the Error its fetch gave; off: the caller turned it off.
export async function loadExpandKernel(source, { off = false } = {}) {
  if (off) return { kernel: null, note: 'turned off by the caller (expandKernel: false)' };
  if (source instanceof Error) {
    return { kernel: null, note: `the expansion kernel could not be fetched (${source.message}): rebuild the site (./build.sh site)` };
  }
  if (typeof WebAssembly !== 'object') return { kernel: null, note: 'WebAssembly is not available here' };
  try {
    return { kernel: new ExpandKernel(await instantiateKernel(source)), note: null };
  } catch (e) {
    return { kernel: null, note: `the expansion kernel could not start: ${e.message}` };
  }
}
