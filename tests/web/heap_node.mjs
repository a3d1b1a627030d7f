// Node helper for tests/web/test_ort_heap.py: one bundle in ORT Web (the site's own files),
// run through ort_heap.js HeapRunner and ort_glue.js TensorRunner side by side on the same
// token script, and once more forwarded whole. Prints one JSON line:
//   kind, reason           what makeRunner gave (expected: 'heap', null)
//   steps, identical       script steps, and those whose logits were the same bits in both
//   lengths_equal          every step left both runners with the same cached length
//   max_abs_diff           largest logit difference seen (0 when identical)
//   whole_equals_steps     the script's final positions forwarded as one prompt give the same
//                          logits bits as the step-by-step run (one attention path)
//   chunkings_equal        a 300-token prompt forwarded in each of a few chunkings gives the
//                          same logits bits as forwarded whole (a position's numbers do not
//                          depend on which later tokens shared its chunk)
//   heap_blocks            HeapRunner's heap blocks after the first and the last step
//   truncate_error         the message of an out-of-range truncate
// Usage: node heap_node.mjs SITE_DIR BUNDLE_DIR [THREADS]
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [site, dir, threads] = process.argv.slice(2);
const url = (p) => pathToFileURL(resolve(site, p)).href;
const ort = await import(url('vendor/ort/ort.wasm.min.mjs'));
ort.env.wasm.numThreads = Number(threads || 1);
ort.env.wasm.wasmPaths = { mjs: url('ort_wasm_capture.js'), wasm: url('vendor/ort/ort-wasm-simd-threaded.wasm') };
ort.env.logLevel = 'error';
const { downloadForm, expandRuntimeData } = await import(url('runtime_form.js'));
const { makeRunner } = await import(url('ort_heap.js'));
const { TensorRunner } = await import(url('ort_glue.js'));

const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, 'utf8'));
const config = JSON.parse(readFileSync(`${dir}/config.json`, 'utf8'));
const form = await downloadForm(manifest, new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`)));
const data = expandRuntimeData(manifest, form);
const session = await ort.InferenceSession.create(readFileSync(`${dir}/${manifest.runtime.graph}`), {
  graphOptimizationLevel: manifest.runtime.graph_optimization ?? 'basic',
  externalData: [{ path: manifest.runtime.external_data, data }] });
const shape = { heads: config.num_key_value_heads, headDim: config.hidden_size / config.num_attention_heads, vocab: config.vocab_size };
const { runner: heap, reason } = await makeRunner(ort, session, shape);
const plain = new TensorRunner(session, shape.heads, shape.headDim);

const tok = (i) => 100 + ((i * 7919) % 5000);
const seq = (from, n) => Array.from({ length: n }, (_, i) => tok(from + i));
// [op, arg]: forward ids | truncate length. 200 + 100 positions grow the heap buffers past
// their first 256; truncations land mid-buffer and at 0.
const script = [['f', seq(0, 200)], ['f', seq(200, 100)], ['f', [5]], ['f', [9]], ['f', [7]],
  ['t', 150], ['f', seq(150, 3)], ['f', [11]], ['t', 0], ['f', seq(0, 10)], ['f', [3]]];
const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
const out = { kind: heap.kind, reason, steps: 0, identical: 0, lengths_equal: true, max_abs_diff: 0, heap_blocks: [] };
const history = [];   // the ids the cache holds
for (const [op, arg] of script) {
  if (op === 't') { heap.truncate(arg); plain.truncate(arg); history.length = arg; continue; }
  const a = await heap.forward(arg);
  const b = await plain.forward(arg);
  history.push(...arg);
  out.lengths_equal &&= a === b && a === history.length;
  const x = Array.from(heap.logitsRow());
  const y = Array.from(plain.logitsRow());
  out.steps += 1;
  if (same(x, y)) out.identical += 1;
  for (let i = 0; i < x.length; i++) out.max_abs_diff = Math.max(out.max_abs_diff, Math.abs(x[i] - y[i]));
  if (out.heap_blocks.length === 0 && heap.heapBlocks) out.heap_blocks.push(heap.heapBlocks());
  out.last = x;
}
if (heap.heapBlocks) out.heap_blocks.push(heap.heapBlocks());
out.top = heap.topK(3, 1, null);
// the same positions forwarded as one prompt
heap.truncate(0);
await heap.forward(history);
out.whole_equals_steps = same(Array.from(heap.logitsRow()), out.last);
delete out.last;
const long = seq(1000, 300);
heap.truncate(0);
await heap.forward(long);
const whole = Array.from(heap.logitsRow());
out.chunkings_equal = [];
for (const sizes of [[17, 23, 260], [1, 2, 3, 64, 100, 130], [299, 1], [150, 150], [63, 65, 172]]) {
  heap.truncate(0);
  let at = 0;
  for (const n of sizes) { await heap.forward(long.slice(at, at + n)); at += n; }
  out.chunkings_equal.push(same(Array.from(heap.logitsRow()), whole));
}
try { heap.truncate(heap.length + 1); } catch (e) { out.truncate_error = e.message; }
heap.dispose(); plain.dispose();
console.log(JSON.stringify(out));
process.exit(0);
