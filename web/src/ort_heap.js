// The decode loop's session runs with the KV cache kept inside ONNX Runtime Web's WASM heap.
//
// ORT Web's session.run copies every CPU input into the wasm heap and every output out of it
// on every run (js/web/lib/wasm/wasm-core-impl.ts), and mallocs/frees them each time: with
// 60 KV tensors [1, 3, past, 64] float32 that is ~0.55 MB a position, copied three times a
// step (measured 2026-12-03: 5.8 ms of a 50 ms step at 500 tokens of past, 21-47 ms at 1,500).
// Here the KV tensors live in heap buffers that are allocated once (grown by doubling) and
// handed to ORT's own C entry points (_OrtCreateTensor over our pointer, _OrtRun with
// pre-allocated outputs): the graph's `present.*` outputs are written straight into the
// buffers the next step reads as `past_key_values.*` (two buffers per tensor, swapped each
// step), and the logits [1, 1, vocab] into one buffer read in place. A step then moves only
// the bytes the graph itself moves (its Concat/GroupQueryAttention copy of past into present)
// and a few hundred bytes of ids.
//
// The entry points are ORT Web's internal wasm exports, reached through the emscripten Module
// that ort_wasm_capture.mjs keeps when ORT imports it (env.wasm.wasmPaths.mjs). They are not a
// public API: `attachHeapRunner` checks every export it uses and ORT Web's version (the one
// these were read from and tested with) and returns {runner: null, reason} otherwise; the
// caller then keeps ORT's public session.run path (ort_glue.js TensorRunner).
//
// Layout: each KV tensor is [1, heads, positions, head_dim] float32, contiguous, so a buffer
// holding `n` positions is exactly the tensor [1, heads, n, head_dim]; capacity only grows.
// Truncation compacts the heads in place (copyWithin). Positions are tracked here (`length`)
// and checked by the caller (bridge.py) against the engine's count after every step.
//
// With an LmHead (lm_head.js: the compact graph without its LM head), the step's outputs are
// the head's inputs (codes, token scale, float features: a few hundred bytes, pre-allocated
// too) instead of the logits, and the kernel computes the logits row from them.
//
// What this module ignores: which inputs the graph has beyond input_ids / attention_mask /
// position_ids / past_key_values.* (read from the session), sampling (ort_glue.js topK works on
// the logits row this returns), and tokenization.

import { topK } from './ort_glue.js';
import { LM_HEAD_INPUTS } from './lm_head.js';

export const TESTED_ORT_VERSIONS = ['1.30.0'];

const NEEDED = ['_OrtCreateTensor', '_OrtReleaseTensor', '_OrtRun', '_OrtGetTensorData', '_OrtFree',
  '_OrtGetLastError', '_malloc', '_free', 'HEAPU8', 'stackSave', 'stackAlloc', 'stackRestore',
  'stringToUTF8', 'lengthBytesUTF8', 'UTF8ToString'];
const FLOAT = 1;   // ONNX TensorProto.FLOAT
const INT64 = 7;   // ONNX TensorProto.INT64
const UINT8 = 2;   // ONNX TensorProto.UINT8
const CPU = 1;     // ORT Web's DataLocation enum: 'cpu'

// -> {runner, reason}: runner is null when this ORT build or session cannot run from the heap.
// head: an lm_head.js LmHead when the session's graph is the headless one, else null.
export function attachHeapRunner(ort, session, wasm, { heads, headDim, vocab }, head = null) {
  const version = ort.env?.versions?.web;
  if (!wasm) return { runner: null, reason: 'the ORT wasm module was not captured' };
  if (!TESTED_ORT_VERSIONS.includes(version)) {
    return { runner: null, reason: `onnxruntime-web ${version} is not a version the heap KV path was tested with (${TESTED_ORT_VERSIONS.join(', ')})` };
  }
  const missing = NEEDED.filter((k) => !(k in wasm));
  if (missing.length) return { runner: null, reason: `ORT's wasm module lacks ${missing.join(', ')}` };
  if (wasm.PTR_SIZE !== undefined && wasm.PTR_SIZE !== 4) return { runner: null, reason: 'wasm64 build' };
  const handle = session?.handler?.sessionId;
  if (typeof handle !== 'number' || !handle) return { runner: null, reason: 'no ORT session handle' };
  return { runner: new HeapRunner(wasm, handle, session.inputNames, session.outputNames, heads, headDim, vocab, head), reason: null };
}

export class HeapRunner {
  constructor(wasm, sessionHandle, inputNames, outputNames, heads, headDim, vocab, head = null) {
    this.kind = 'heap';
    this.w = wasm;
    this.session = sessionHandle;
    this.heads = heads;
    this.headDim = headDim;
    this.vocab = vocab;
    this.length = 0;                 // positions held by the KV cache
    this.ortMs = 0;                  // ms inside _OrtRun (running total)
    this.pastNames = inputNames.filter((n) => n.startsWith('past_key_values.'));
    this.inputNames = inputNames;
    this.head = head;
    // the LM head's inputs (codes, scale, features when the graph has them) or the logits
    this.headOutputs = head ? LM_HEAD_INPUTS.filter((n) => outputNames.includes(n)) : ['logits'];
    this.outputNames = [...this.headOutputs, ...this.pastNames.map((n) => 'present.' + n.slice('past_key_values.'.length))];
    const missing = this.outputNames.filter((n) => !outputNames.includes(n));
    if (missing.length) throw new Error(`bundle_corrupt: the runtime graph lacks outputs ${missing.join(', ')}`);
    this.uses = { mask: inputNames.includes('attention_mask'), positions: inputNames.includes('position_ids') };
    this.allocs = [];
    this.inNames = this.cStrings(inputNames);
    this.outNames = this.cStrings(this.outputNames);
    this.kvCount = this.pastNames.length;
    this.cap = 0;                    // positions each KV buffer holds
    this.kv = [new Array(this.kvCount).fill(0), new Array(this.kvCount).fill(0)];  // two sets of pointers
    this.cur = 0;                    // the set that holds the past
    if (head) {
      this.codesPtr = this.alloc(head.K);     // uint8 [1, 1, K]
      this.scalePtr = this.alloc(4);          // float32 [1, 1, 1]
      this.featsPtr = this.alloc(4 * Math.max(head.F, 1));   // float32 [1, 1, F]
      this.row = null;                        // the kernel's logits (its memory)
    } else {
      this.logitsPtr = this.alloc(vocab * 4);   // [1, 1, vocab] float32
    }
    this.idsCap = 0; this.idsPtr = 0; this.posPtr = 0;      // int64 [idsCap]
    this.maskCap = 0; this.maskPtr = 0;                      // int64 [maskCap], all ones
    this.hasLogits = false;
    this.disposed = false;
  }

  // ms inside _OrtRun and the LM head kernel (running totals): the model's compute, ORT's or ours
  get runMs() { return this.ortMs + (this.head ? this.head.ms : 0); }

  alloc(bytes) {
    const p = this.w._malloc(Math.max(bytes, 8));
    if (!p) throw new Error('out of memory: the wasm heap could not grow for the KV cache');
    this.allocs.push(p);
    return p;
  }

  release(p) {
    if (!p) return;
    const i = this.allocs.indexOf(p);
    if (i >= 0) this.allocs.splice(i, 1);
    this.w._free(p);
  }

  cStrings(names) {
    const ptrs = this.alloc(names.length * 4);
    names.forEach((n, i) => {
      const len = this.w.lengthBytesUTF8(n) + 1;
      const p = this.alloc(len);
      this.w.stringToUTF8(n, p, len);
      this.u32()[(ptrs >> 2) + i] = p;
    });
    return ptrs;
  }

  // Views are made fresh each time: the heap's ArrayBuffer changes when it grows.
  u32() { return new Uint32Array(this.w.HEAPU8.buffer); }
  f32() { return new Float32Array(this.w.HEAPU8.buffer); }
  i64() { return new BigInt64Array(this.w.HEAPU8.buffer); }

  kvBytes(positions) { return this.heads * positions * this.headDim * 4; }

  // Make every KV buffer hold at least `positions`, keeping the past's contents.
  reserve(positions) {
    if (positions <= this.cap) return;
    let cap = Math.max(256, this.cap);
    while (cap < positions) cap *= 2;
    const bytes = this.kvBytes(cap);
    for (let s = 0; s < 2; s++) {
      for (let i = 0; i < this.kvCount; i++) {
        const old = this.kv[s][i];
        const p = this.alloc(bytes);
        if (old && s === this.cur && this.length) {
          this.w.HEAPU8.copyWithin(p, old, old + this.kvBytes(this.length));
        }
        this.release(old);
        this.kv[s][i] = p;
      }
    }
    this.cap = cap;
  }

  reserveInputs(s, total) {
    if (s > this.idsCap) {
      this.release(this.idsPtr); this.release(this.posPtr);
      this.idsCap = Math.max(s, 256);
      this.idsPtr = this.alloc(this.idsCap * 8);
      this.posPtr = this.alloc(this.idsCap * 8);
    }
    if (total > this.maskCap) {
      this.release(this.maskPtr);
      this.maskCap = Math.max(total, 2 * this.maskCap, 512);
      this.maskPtr = this.alloc(this.maskCap * 8);
      this.i64().fill(1n, this.maskPtr >> 3, (this.maskPtr >> 3) + this.maskCap);
    }
  }

  // An OrtValue over heap memory we own (ORT does not free it); dims: plain numbers.
  tensor(type, ptr, bytes, dims) {
    const w = this.w;
    const stack = w.stackSave();
    try {
      const d = w.stackAlloc(4 * dims.length);
      const u = this.u32();
      dims.forEach((v, i) => { u[(d >> 2) + i] = v; });
      const t = w._OrtCreateTensor(type, ptr, bytes, d, dims.length, CPU);
      if (!t) throw new Error(`ORT could not create a tensor [${dims}]`);
      return t;
    } finally {
      w.stackRestore(stack);
    }
  }

  // Forward `ids` (Array of token ids) after the cached positions. -> the new length.
  // The logits of the last position are then in logitsRow(). (async: the same interface as
  // ort_glue.js TensorRunner, whose session.run is.)
  async forward(ids) {
    if (this.disposed) throw new Error('model_not_loaded: the model was unloaded: load it again');
    const w = this.w;
    const s = ids.length;
    const past = this.length;
    const total = past + s;
    this.reserve(total);
    this.reserveInputs(s, total);
    const i64 = this.i64();
    for (let i = 0; i < s; i++) {
      i64[(this.idsPtr >> 3) + i] = BigInt(ids[i]);
      i64[(this.posPtr >> 3) + i] = BigInt(past + i);
    }
    const handles = [];
    const nIn = this.inputNames.length;
    const nOut = this.outputNames.length;
    const pastSet = this.kv[this.cur];
    const nextSet = this.kv[1 - this.cur];
    const kvIndex = new Map(this.pastNames.map((n, i) => [n, i]));
    const stack = w.stackSave();
    try {
      const inValues = w.stackAlloc(4 * nIn);
      const outValues = w.stackAlloc(4 * nOut);
      const inHandles = this.inputNames.map((name) => {
        if (name === 'input_ids') return this.tensor(INT64, this.idsPtr, s * 8, [1, s]);
        if (name === 'attention_mask') return this.tensor(INT64, this.maskPtr, total * 8, [1, total]);
        if (name === 'position_ids') return this.tensor(INT64, this.posPtr, s * 8, [1, s]);
        const i = kvIndex.get(name);
        if (i === undefined) throw new Error(`bundle_corrupt: the runtime graph has an input ${name} this runtime does not know`);
        return this.tensor(FLOAT, pastSet[i], this.kvBytes(past), [1, this.heads, past, this.headDim]);
      });
      handles.push(...inHandles);
      const outHandles = this.headOutputs.map((name) => {
        if (name === 'logits') return this.tensor(FLOAT, this.logitsPtr, this.vocab * 4, [1, 1, this.vocab]);
        if (name === LM_HEAD_INPUTS[0]) return this.tensor(UINT8, this.codesPtr, this.head.K, [1, 1, this.head.K]);
        if (name === LM_HEAD_INPUTS[1]) return this.tensor(FLOAT, this.scalePtr, 4, [1, 1, 1]);
        return this.tensor(FLOAT, this.featsPtr, 4 * this.head.F, [1, 1, this.head.F]);
      });
      for (let i = 0; i < this.kvCount; i++) {
        outHandles.push(this.tensor(FLOAT, nextSet[i], this.kvBytes(total), [1, this.heads, total, this.headDim]));
      }
      handles.push(...outHandles);
      let u = this.u32();
      inHandles.forEach((h, i) => { u[(inValues >> 2) + i] = h; });
      outHandles.forEach((h, i) => { u[(outValues >> 2) + i] = h; });
      const t0 = performance.now();
      const code = w._OrtRun(this.session, this.inNames, inValues, nIn, this.outNames, nOut, outValues, 0);
      this.ortMs += performance.now() - t0;
      if (code !== 0) throw new Error(`ORT run failed: ${lastError(w)}`);
      // ORT writes into pre-allocated outputs; a value it allocated itself (a shape we did not
      // expect) would mean the graph does not match this runtime.
      u = this.u32();
      for (let i = 0; i < nOut; i++) {
        const got = u[(outValues >> 2) + i];
        if (got !== outHandles[i]) {
          if (got) w._OrtReleaseTensor(got);
          throw new Error(`kv_mismatch: ORT did not write ${this.outputNames[i]} into the KV cache buffer: the bundle's graph does not match the runtime`);
        }
      }
    } catch (e) {
      this.hasLogits = false;
      throw e;
    } finally {
      for (const h of handles) w._OrtReleaseTensor(h);
      w.stackRestore(stack);
    }
    this.cur = 1 - this.cur;
    this.length = total;
    if (this.head) {
      const heap = w.HEAPU8;
      this.row = this.head.logits(heap.subarray(this.codesPtr, this.codesPtr + this.head.K),
        new Float32Array(heap.buffer, this.scalePtr, 1)[0],
        new Float32Array(heap.buffer, this.featsPtr, Math.max(this.head.F, 1)));
    }
    this.hasLogits = true;
    return total;
  }

  // The last position's logits, a Float32Array view into the heap (valid until the next call).
  logitsRow() {
    if (!this.hasLogits) return null;
    if (this.head) return this.row;
    return new Float32Array(this.w.HEAPU8.buffer, this.logitsPtr, this.vocab);
  }

  // ort_glue.js topK of the last position's logits, read in place: (k, penalty, penaltyIds, ...)
  topK(k, ...rest) {
    const row = this.logitsRow();
    if (!row) throw new Error('kv_mismatch: no logits: forward() has not run since the last truncate');
    return topK(row, k, ...rest);
  }

  // No ort.Tensor lives across steps here (the step's OrtValues are released at its end).
  liveTensors() { return 0; }

  // Heap blocks held (KV buffers, logits, ids, names): constant between steps once grown.
  heapBlocks() { return this.allocs.length; }

  // Keep the first `length` positions (each head's first rows move to their new place).
  truncate(length) {
    if (!(length >= 0 && length <= this.length)) throw new Error(`kv_mismatch: truncate(${length}) with ${this.length} cached positions`);
    if (length === this.length) return;
    const rowBytes = this.headDim * 4;
    const from = this.length * rowBytes;   // bytes between heads now
    const to = length * rowBytes;          // bytes between heads after
    for (const p of this.kv[this.cur]) {
      for (let h = 1; h < this.heads; h++) this.w.HEAPU8.copyWithin(p + h * to, p + h * from, p + h * from + to);
    }
    this.length = length;
    this.hasLogits = false;
  }

  // Heap buffers this runner holds (bytes): the KV cache's two sets, logits, ids.
  heapBytes() {
    return 2 * this.kvCount * this.kvBytes(this.cap) + (this.head ? 0 : this.vocab * 4) + (2 * this.idsCap + this.maskCap) * 8;
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    for (const p of this.allocs) this.w._free(p);
    this.allocs = [];
    this.kv = [[], []];
    this.length = 0;
    this.hasLogits = false;
  }
}

function lastError(w) {
  const stack = w.stackSave();
  try {
    const p = w.stackAlloc(8);
    w._OrtGetLastError(p, p + 4);
    const u = new Uint32Array(w.HEAPU8.buffer);
    const code = u[p >> 2];
    const msg = u[(p >> 2) + 1];
    return `code ${code}: ${msg ? w.UTF8ToString(msg) : 'no message'}`;
  } catch {
    return 'unknown error';
  } finally {
    w.stackRestore(stack);
  }
}

// The runner for a new session: HeapRunner when this worker's ORT module was captured (see
// ort_wasm_capture.js) and passes attachHeapRunner's checks, else ort_glue.js TensorRunner.
// `shape`: {heads, headDim, vocab} from the bundle's config; head: lm_head.js LmHead or null.
// -> {runner, reason} (reason: why the heap path is not used, null when it is; worker.js
// reports it in info()).
export async function makeRunner(ort, session, shape, { heap = true, head = null } = {}) {
  const { TensorRunner } = await import('./ort_glue.js');
  let reason = 'turned off by the caller';
  if (heap) {
    let wasm = null;
    try {
      wasm = (await import('./ort_wasm_capture.js')).capturedModule();
    } catch (e) {
      reason = `the ORT wasm module could not be captured: ${e.message}`;
    }
    if (wasm || reason.startsWith('turned')) {
      const got = attachHeapRunner(ort, session, wasm, shape, head);
      if (got.runner) return got;
      reason = got.reason;
    }
  }
  return { runner: new TensorRunner(session, shape.heads, shape.headDim, head), reason };
}
