// Tensor and vocabulary helpers that py_runtime/smolchat/bridge.py calls, so Python never
// loops over a 49,152-wide logits row or builds tensors element by element, and the two ways
// a decode step runs: HeapRunner (ort_heap.js: the KV cache stays in ORT's wasm heap) and,
// where that is not available, TensorRunner here (ORT's public session.run; every KV tensor
// copied into the heap and out again each step). Both have the same interface:
//   await forward(ids) -> positions cached; topK(k, ...); logitsRow(); truncate(n);
//   length; runMs; liveTensors(); dispose(); kind ('heap' | 'tensors').
//
// Shapes: input_ids / position_ids [1, s] int64; attention_mask [1, past + s] int64;
// KV tensors [1, heads, positions, head_dim] float32, kept in ONE JS array ordered like the
// session's past_key_values.* input names; logits [1, s', vocab] float32 (s' is 1 when the
// graph keeps the last position only).
// Every ort.Tensor made or received here is counted until disposed (liveTensors()), so tests
// can check that replaced KV tensors are released.
//
// What this module ignores: which names exist (the bridge reads them from the session) and
// what to do with the candidates (the engine samples).

import * as ort from './vendor/ort/ort.wasm.min.mjs';
import { LM_HEAD_INPUTS } from './lm_head.js';

let live = 0;

function made(t) { live += 1; return t; }
function drop(t) { if (t) { t.dispose(); live -= 1; } }

export function liveTensors() { return live; }

export function emptyKV(count, heads, headDim) {
  const kv = new Array(count);
  for (let i = 0; i < count; i++) kv[i] = made(new ort.Tensor('float32', new Float32Array(0), [1, heads, 0, headDim]));
  return kv;
}

// ids: Array of token ids; past: cached positions. Returns the feeds object for session.run.
export function stepFeeds(pastNames, kv, ids, past, useMask, usePositions) {
  const s = ids.length;
  const feeds = {};
  feeds.input_ids = made(new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, s]));
  if (useMask) feeds.attention_mask = made(new ort.Tensor('int64', new BigInt64Array(past + s).fill(1n), [1, past + s]));
  if (usePositions) {
    const pos = new BigInt64Array(s);
    for (let i = 0; i < s; i++) pos[i] = BigInt(past + i);
    feeds.position_ids = made(new ort.Tensor('int64', pos, [1, s]));
  }
  for (let i = 0; i < pastNames.length; i++) feeds[pastNames[i]] = kv[i];
  return feeds;
}

// session.run, timed: runMs() is the running total (ms, performance.now()) of the awaited runs,
// which the bridge reports as ort_run_ms (the engine's decode profile).
let runTotal = 0;

export async function run(session, feeds) {
  const t0 = performance.now();
  try { return await session.run(feeds); } finally { runTotal += performance.now() - t0; }
}

export function runMs() { return runTotal; }

export function disposeInputs(feeds) {
  for (const name of ['input_ids', 'attention_mask', 'position_ids']) if (feeds[name]) drop(feeds[name]);
}

// session.run results -> {kv: [present tensors in presentNames order], logits, length}.
// Outputs nobody asked for are disposed at once.
export function collect(results, presentNames) {
  const wanted = new Set(presentNames);
  wanted.add('logits');
  for (const name of Object.keys(results)) { made(results[name]); if (!wanted.has(name)) drop(results[name]); }
  const kv = presentNames.map((n) => results[n]);
  return { kv, logits: results.logits, length: kv.length ? kv[0].dims[2] : -1 };
}

export function disposeStep(step) { disposeAll(step.kv); drop(step.logits); }

export function disposeAll(tensors) { for (const t of tensors) drop(t); }

export function disposeTensor(t) { drop(t); }

// Keep the first `length` positions of every KV tensor (copies; the old ones stay untouched).
export function sliceKV(kv, length) {
  return kv.map((t) => {
    const [b, heads, positions, headDim] = t.dims;
    const src = t.data;
    const out = new Float32Array(b * heads * length * headDim);
    for (let h = 0; h < b * heads; h++) {
      out.set(src.subarray(h * positions * headDim, h * positions * headDim + length * headDim), h * length * headDim);
    }
    return made(new ort.Tensor('float32', out, [b, heads, length, headDim]));
  });
}

// Top-k (ids, logits) of the last position, best first, ties to the lower id, after the
// HF repetition penalty on penaltyIds (positive logits / penalty, negative * penalty), then
// OpenAI's penalties on countIds (tokens generated so far, counts[i] times each):
// logit - count * frequency - (count > 0) * presence, in float64 rounded to float32 (as numpy
// does it in the CPython backend). With wantLse, a third item: log(sum(exp(logit))) over the
// whole vocabulary of the penalized logits (float64), for log-probabilities.
// `logits`: a Float32Array row [vocab], or a tensor-like {dims: [..., vocab], data} (its last
// row is used). Returns [ids[], values[]] or [ids[], values[], lse] (plain arrays: Python
// converts them in one call).
export function topK(logits, k, penalty, penaltyIds, countIds = null, counts = null,
                     frequency = 0, presence = 0, wantLse = false) {
  let row = logits;
  if (logits.dims) {
    const v = logits.dims[logits.dims.length - 1];
    row = logits.data.subarray(logits.data.length - v);
  }
  const vocab = row.length;
  const adjusted = penalized(row, penalty, penaltyIds, countIds, counts, frequency, presence);
  const value = (i) => (adjusted && adjusted.has(i) ? adjusted.get(i) : row[i]);
  const lse = wantLse ? logSumExp(row, adjusted) : null;
  const done = (ids, vals) => (wantLse ? [ids, vals, lse] : [ids, vals]);
  k = Math.max(1, Math.min(k, vocab));
  if (k <= 64) {
    const ids = [];
    const vals = [];
    for (let i = 0; i < vocab; i++) {
      const v = adjusted ? value(i) : row[i];
      if (ids.length === k && !(v > vals[k - 1])) continue;
      let j = ids.length === k ? k - 1 : ids.length;
      while (j > 0 && v > vals[j - 1]) { ids[j] = ids[j - 1]; vals[j] = vals[j - 1]; j--; }
      ids[j] = i; vals[j] = v;
    }
    return done(ids, vals);
  }
  const order = new Int32Array(vocab);
  for (let i = 0; i < vocab; i++) order[i] = i;
  const vals = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) vals[i] = value(i);
  order.sort((a, b) => (vals[b] - vals[a]) || (a - b));
  const top = Array.from(order.subarray(0, k));
  return done(top, top.map((i) => vals[i]));
}

// id -> penalized float32 logit for the ids any penalty touches (null: none does).
function penalized(row, penalty, penaltyIds, countIds, counts, frequency, presence) {
  let adjusted = null;
  if (penaltyIds && penalty !== 1) {
    adjusted = new Map();
    const p32 = Math.fround(penalty);
    for (const id of penaltyIds) {
      const v = row[id];
      // float32 arithmetic, as numpy does it in the CPython backend (same ids on ties)
      adjusted.set(id, v > 0 ? Math.fround(v / p32) : Math.fround(v * p32));
    }
  }
  if (countIds && countIds.length && (frequency || presence)) {
    adjusted = adjusted || new Map();
    for (let i = 0; i < countIds.length; i++) {
      const id = countIds[i];
      const c = counts[i];
      const v = adjusted.has(id) ? adjusted.get(id) : row[id];
      adjusted.set(id, Math.fround(v - c * frequency - (c > 0 ? 1 : 0) * presence));
    }
  }
  return adjusted;
}

// log(sum(exp(x))) over a float32 row (float64 sums), with `adjusted` values replacing the row's.
function logSumExp(row, adjusted) {
  const at = (i) => (adjusted && adjusted.has(i) ? adjusted.get(i) : row[i]);
  let peak = -Infinity;
  for (let i = 0; i < row.length; i++) { const v = at(i); if (v > peak) peak = v; }
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(at(i) - peak);
  return peak + Math.log(sum);
}

// Plain text -> ids with no special tokens added (the engine splits special tokens out first).
export function encode(tokenizer, text) {
  return tokenizer.encode(text, { add_special_tokens: false }).ids;
}

export function isOutOfMemory(text) {
  return /out of memory|\bOOM\b|allocation failed|cannot enlarge memory/i.test(text);
}

// The decode loop's runs through ORT's public API: the KV cache is one JS array of ort.Tensor
// (order: the session's past_key_values.* input names), replaced after each step.
// head: an lm_head.js LmHead when the session's graph is the headless one (the logits row is
// then the kernel's, computed from the step's lm_head.* outputs).
export class TensorRunner {
  constructor(session, heads, headDim, head = null) {
    this.kind = 'tensors';
    this.session = session;
    this.heads = heads;
    this.headDim = headDim;
    this.pastNames = session.inputNames.filter((n) => n.startsWith('past_key_values.'));
    this.presentNames = this.pastNames.map((n) => 'present.' + n.slice('past_key_values.'.length));
    this.head = head;
    this.row = null;   // head: the kernel's logits row
    const wanted = head ? [LM_HEAD_INPUTS[0], LM_HEAD_INPUTS[1]] : ['logits'];
    const missing = [...this.presentNames, ...wanted].filter((n) => !session.outputNames.includes(n));
    if (missing.length) throw new Error(`bundle_corrupt: the runtime graph lacks outputs ${missing.join(', ')}`);
    this.useMask = session.inputNames.includes('attention_mask');
    this.usePositions = session.inputNames.includes('position_ids');
    this.kv = emptyKV(this.pastNames.length, heads, headDim);
    this.logits = null;
    this.length = 0;
  }

  // ms inside session.run and the LM head kernel (running totals)
  get runMs() { return runTotal + (this.head ? this.head.ms : 0); }

  async forward(ids) {
    const past = this.length;
    const feeds = stepFeeds(this.pastNames, this.kv, ids, past, this.useMask, this.usePositions);
    let results;
    try {
      results = await run(this.session, feeds);
    } finally {
      disposeInputs(feeds);
    }
    if (this.head) {
      const feats = results[LM_HEAD_INPUTS[2]];
      this.row = this.head.logits(results[LM_HEAD_INPUTS[0]].data, results[LM_HEAD_INPUTS[1]].data[0],
        feats ? feats.data : new Float32Array(1));
    }
    const step = collect(results, this.presentNames);
    if (step.length !== past + ids.length) {
      disposeStep(step);
      throw new Error(`kv_mismatch: graph returned ${step.length} cached positions, expected ${past + ids.length}: the bundle's graph does not match the runtime`);
    }
    disposeAll(this.kv);
    drop(this.logits);
    this.kv = step.kv;
    this.logits = step.logits;
    this.length = step.length;
    return this.length;
  }

  logitsRow() {
    if (this.head) return this.row;
    return this.logits ? topRow(this.logits) : null;
  }

  // topK (below) of the last step's logits: (k, penalty, penaltyIds, ...the rest of topK's)
  topK(k, ...rest) {
    const row = this.head ? this.row : this.logits;
    if (!row) throw new Error('kv_mismatch: no logits: forward() has not run since the last truncate');
    return topK(row, k, ...rest);
  }

  truncate(length) {
    if (!(length >= 0 && length <= this.length)) throw new Error(`kv_mismatch: truncate(${length}) with ${this.length} cached positions`);
    if (length === this.length) return;
    const kv = length === 0 ? emptyKV(this.pastNames.length, this.heads, this.headDim) : sliceKV(this.kv, length);
    disposeAll(this.kv);
    drop(this.logits);
    this.kv = kv;
    this.logits = null;
    this.row = null;
    this.length = length;
  }

  liveTensors() { return live; }

  dispose() {
    disposeAll(this.kv);
    this.kv = [];
    drop(this.logits);
    this.logits = null;
    this.row = null;
    this.length = 0;
  }
}

function topRow(logits) {
  const vocab = logits.dims[logits.dims.length - 1];
  return logits.data.subarray(logits.data.length - vocab);
}
