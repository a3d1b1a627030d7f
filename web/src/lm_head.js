// The compact bundle's LM head computed beside ONNX Runtime, in web/kernels/lm_head.c.
//
// In ORT Web the LM head (MatMulIntegerToFloat over the 28 MB int8 table [K, V], the token
// scale, the float features' rows) took a fifth of a decode step: it read the table at ~3 GB/s
// (issue #16). The kernel holds the table transposed, [V, K], and reads it at ~14 GB/s on one
// thread (Node, 2026-12-03: ~2 ms a token against ~8 ms). Its logits are ORT's bit for bit:
// integer dot products are exact and the float operations are ORT's, in ORT's order (see the C
// file; tests/web/test_lm_head.py compares every logit).
//
// How the pieces meet:
// - the build names the head's nodes `lm_head/...` and makes the three tensors they read graph
//   outputs (`lm_head.codes` uint8 [1, 1, K], `lm_head.scale` [1, 1, 1], `lm_head.features`
//   [1, 1, F]; build/smolchat_build/graph.py). ORT runs every node of a graph whatever outputs
//   a run asks for, so `headlessGraph` drops those nodes (and the `logits` output) from the
//   graph bytes before the session is made (and the value_info of what they make): a
//   hand-written walk over the protobuf wire format that copies every other byte as it is;
// - `LmHead.tap` sees the runtime form's bytes as ORT reads them (bundle_loader.js
//   createSession onSlice) and keeps the head's three weights: the table is transposed chunk
//   by chunk, so no second [K, V] copy ever exists; ORT no longer holds its prepacked copy of
//   the table (the head's MatMulIntegerToFloat is gone), only the table the input Gather reads;
// - the runners (ort_heap.js HeapRunner, ort_glue.js TensorRunner) ask for the three tensors
//   instead of `logits` and call `logits()`.
//
// What it ignores: the exact preset (its head is a float32 MatMul; its graph has no lm_head/
// nodes and keeps ORT's head), more than one position (the graph slices the last one), and
// threads (the kernel runs on the calling thread; ORT's pool is idle while it does).

import { instantiateKernel, kernelExports, kernelAllocator } from './kernels.js';

export const LM_HEAD_PREFIX = 'lm_head/';
export const LM_HEAD_INPUTS = ['lm_head.codes', 'lm_head.scale', 'lm_head.features'];

// ---- protobuf wire format: just what the graph edit needs (ONNX onnx.proto field numbers) ----
const MODEL_GRAPH = 7;                       // ModelProto.graph
const GRAPH_NODE = 1, GRAPH_OUTPUT = 12, GRAPH_VALUE_INFO = 13;  // GraphProto.node, .output, .value_info
const NODE_INPUT = 1, NODE_OUTPUT = 2, NODE_NAME = 3, NODE_OP = 4;  // NodeProto
const VALUE_NAME = 1;                        // ValueInfoProto.name

function varint(b, i) {
  let v = 0, mul = 1, byte;
  do {
    if (i >= b.length) throw new Error('bundle_corrupt: the model graph is truncated');
    byte = b[i++];
    v += (byte & 0x7f) * mul;
    mul *= 128;
  } while (byte & 0x80);
  return [v, i];
}

function encodeVarint(v) {
  const out = [];
  while (v >= 128) { out.push((v % 128) | 0x80); v = Math.floor(v / 128); }
  out.push(v);
  return out;
}

// The fields of the message in b[start, end): [{field, wire, at, data, end}] (data: where a
// length-delimited field's bytes start).
function fields(b, start = 0, end = b.length) {
  const out = [];
  let i = start;
  while (i < end) {
    const at = i;
    let tag;
    [tag, i] = varint(b, i);
    const field = Math.floor(tag / 8), wire = tag & 7;
    let data = i;
    if (wire === 0) [, i] = varint(b, i);
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) { let len; [len, data] = varint(b, i); i = data + len; }
    else throw new Error(`bundle_corrupt: the model graph has an unknown protobuf wire type ${wire}`);
    if (i > end) throw new Error('bundle_corrupt: the model graph is truncated');
    out.push({ field, wire, at, data, end: i });
  }
  return out;
}

const text = (b, f) => new TextDecoder().decode(b.subarray(f.data, f.end));
const strings = (b, fs, n) => fs.filter((f) => f.field === n && f.wire === 2).map((f) => text(b, f));

// Concatenate Uint8Arrays / byte arrays.
function concat(pieces) {
  const out = new Uint8Array(pieces.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of pieces) { out.set(p, o); o += p.length; }
  return out;
}

// model.onnx bytes -> null when the graph has no lm_head/ nodes (exact preset, an older
// bundle), else {graph: the bytes without those nodes and without the `logits` output,
// nodes: [{name, op, inputs, outputs}] of the dropped nodes, weights: {table, scale, rows}
// (initializer names the head read: int8 [K, V], float [V], float [F, V] or null)}.
export function headlessGraph(model) {
  const b = model instanceof Uint8Array ? model : new Uint8Array(model);
  const top = fields(b);
  const g = top.find((f) => f.field === MODEL_GRAPH && f.wire === 2);
  if (!g) throw new Error('bundle_corrupt: model.onnx has no graph');
  const kept = [], nodes = [];
  const graphFields = fields(b, g.data, g.end);
  for (const f of graphFields) {
    if (f.field === GRAPH_NODE && f.wire === 2) {
      const nf = fields(b, f.data, f.end);
      const name = strings(b, nf, NODE_NAME)[0] || '';
      if (name.startsWith(LM_HEAD_PREFIX)) {
        nodes.push({ name, op: strings(b, nf, NODE_OP)[0], inputs: strings(b, nf, NODE_INPUT), outputs: strings(b, nf, NODE_OUTPUT) });
      }
    }
  }
  // the values only the dropped nodes make: their value_info (build shapes.py) goes too
  const dropped = new Set(['logits', ...nodes.flatMap((n) => n.outputs)]);
  for (const f of graphFields) {
    if (f.field === GRAPH_NODE && f.wire === 2) {
      if ((strings(b, fields(b, f.data, f.end), NODE_NAME)[0] || '').startsWith(LM_HEAD_PREFIX)) continue;
    } else if ((f.field === GRAPH_OUTPUT || f.field === GRAPH_VALUE_INFO) && f.wire === 2) {
      if (dropped.has(strings(b, fields(b, f.data, f.end), VALUE_NAME)[0])) continue;
    }
    kept.push(b.subarray(f.at, f.end));
  }
  if (!nodes.length) return null;
  const mm = nodes.find((n) => n.op === 'MatMulIntegerToFloat');
  const fm = nodes.find((n) => n.op === 'MatMul');
  if (!mm || mm.inputs[0] !== LM_HEAD_INPUTS[0]) {
    throw new Error('bundle_corrupt: the graph\'s lm_head/ nodes are not the LM head this runtime knows: rebuild the bundle (./build.sh bundle)');
  }
  const graph = concat(kept);
  const tag = encodeVarint(MODEL_GRAPH * 8 + 2);
  const out = concat([b.subarray(0, g.at), tag, encodeVarint(graph.length), graph, b.subarray(g.end)]);
  return { graph: out, nodes, weights: { table: mm.inputs[1], scale: mm.inputs[3], rows: fm ? fm.inputs[1] : null } };
}

// ---- the kernel ----

const CHUNK_ROWS = 16;  // rows of the [K, V] table copied into the kernel's memory at a time

export class LmHead {
  // instance: kernels.js instantiateKernel's; t: the manifest.runtime.tensors entry of the head's table (n = V,
  // k = K, dst / dst_scale / dst_float: byte offsets in model.data, float_rows: F features).
  constructor(instance, t) {
    const e = kernelExports(instance, ['memory', 'lm_alloc', 'lm_transpose', 'lm_logits', 'lm_codes'], 'LM head kernel');
    this.e = e;
    this.V = t.n; this.K = t.k; this.F = (t.float_rows || []).length;
    this.regions = [
      { name: 'table', start: t.dst, bytes: this.K * this.V },
      { name: 'scale', start: t.dst_scale, bytes: 4 * this.V },
    ];
    if (this.F) this.regions.push({ name: 'rows', start: t.dst_float, bytes: 4 * this.F * this.V });
    const a = kernelAllocator(e.lm_alloc, 'LM head kernel');
    this.ptr = {
      table: a(this.K * this.V), scale: a(4 * this.V), rows: a(4 * Math.max(this.F, 1) * this.V),
      x16: a(2 * this.K), codes: a(this.K), xf: a(4 * Math.max(this.F, 1)), out: a(4 * this.V),
      scratch: a(CHUNK_ROWS * this.V),
    };
    this.filled = new Set();
    this.ms = 0;          // ms inside the kernel (running total)
  }

  u8() { return new Uint8Array(this.e.memory.buffer); }

  // bundle_loader.js createSession's onSlice: `out` holds model.data bytes [begin, begin +
  // out.length) as ORT reads them; the head's regions are copied (the table transposed).
  tap(begin, out) {
    for (const r of this.regions) {
      if (this.filled.has(r.name) || begin > r.start || begin + out.length < r.start + r.bytes) continue;
      const src = out.subarray(r.start - begin, r.start - begin + r.bytes);
      if (r.name === 'table') {
        for (let k0 = 0; k0 < this.K; k0 += CHUNK_ROWS) {
          const rows = Math.min(CHUNK_ROWS, this.K - k0);
          this.u8().set(src.subarray(k0 * this.V, (k0 + rows) * this.V), this.ptr.scratch);
          this.e.lm_transpose(this.ptr.table, this.ptr.scratch, k0, rows, this.K, this.V);
        }
      } else {
        this.u8().set(src, this.ptr[r.name]);
      }
      this.filled.add(r.name);
    }
  }

  // Throws unless every weight arrived through tap().
  checkFilled() {
    const missing = this.regions.filter((r) => !this.filled.has(r.name)).map((r) => r.name);
    if (missing.length) throw new Error(`bundle_corrupt: the LM head's ${missing.join(', ')} never came through model.data's reads: rebuild the bundle`);
  }

  // codes: uint8 [K]; scale: the token scale; feats: float32 [F] -> logits, a Float32Array
  // [V] view into the kernel's memory (valid until the next call).
  logits(codes, scale, feats) {
    const t0 = performance.now();
    const { e, ptr, K, V, F } = this;
    const u8 = this.u8();
    u8.set(codes.subarray(0, K), ptr.codes);
    if (F) new Float32Array(e.memory.buffer, ptr.xf, F).set(feats.subarray(0, F));
    e.lm_codes(ptr.codes, ptr.x16, K);
    e.lm_logits(ptr.table, ptr.scale, ptr.rows, V, K, F, ptr.x16, scale, ptr.xf, ptr.out, 0, V);
    this.ms += performance.now() - t0;
    return new Float32Array(e.memory.buffer, ptr.out, V);
  }

  // bytes of the kernel's memory (the transposed table is most of it)
  bytes() { return this.e.memory.buffer.byteLength; }
}

// What a load needs to use the kernel: {graph (headless bytes), head (LmHead, waiting for its
// weights through tap)}, or {graph: original, head: null, note} saying why ORT keeps the head.
// kernel: a WebAssembly.Module or bytes (kernels.js instantiateKernel), or the Error its fetch gave;
// off: the caller turned it off.
export async function prepareLmHead(graph, manifest, kernel, { off = false } = {}) {
  let edit;
  try {
    edit = headlessGraph(graph);
  } catch (e) {
    return { graph, head: null, note: `the graph could not be read for the LM head kernel: ${e.message}` };
  }
  if (!edit) return { graph, head: null, note: 'this bundle has no int8 LM head (ORT computes it)' };
  if (off) return { graph, head: null, note: 'turned off by the caller (lmHead: false)' };
  if (kernel instanceof Error) return { graph, head: null, note: `the LM head kernel could not be fetched (${kernel.message}): rebuild the site (./build.sh site)` };
  const t = ((manifest.runtime || {}).tensors || []).find((x) => x.name === edit.weights.table);
  if (!t || !(t.n > 0 && t.k > 0) || t.dst_scale === undefined) {
    return { graph, head: null, note: `the manifest does not describe the LM head's table ${edit.weights.table}` };
  }
  try {
    const head = new LmHead(await instantiateKernel(kernel), t);
    return { graph: edit.graph, head, note: null };
  } catch (e) {
    return { graph, head: null, note: `the LM head kernel could not start: ${e.message}` };
  }
}
