// Node helper for tests/web/test_lm_head.py: one bundle in ORT Web (the site's own files),
// loaded twice through bundle_loader.js createSession: as built (ORT computes the LM head) and
// as the worker loads it with the kernel (lm_head.js: the graph without its lm_head/ nodes,
// the head's weights tapped from ORT's reads, web/kernels/lm_head.c compiled by the site
// build). The same token script runs through three runners; prints one JSON line:
//   head, note             prepareLmHead's outcome for this bundle ('kernel' | 'ort', why)
//   steps                  script steps (forward calls)
//   identical_heap         steps whose logits from HeapRunner + kernel were ORT's bits
//   identical_tensors      the same for TensorRunner + kernel (the fallback KV path)
//   max_abs_diff           largest logit difference seen (0 when identical)
//   greedy_equal           ORT's and the kernel's argmax agree on every step
//   nodes                  the lm_head/ node ops dropped from the graph
//   kernel_ms              mean kernel time a step (ms; a figure, not asserted)
//   session_outputs        the headless session's outputs beside present.* (names)
//   fault_notes            prepareLmHead's notes for a kernel that is not wasm, a graph cut
//                          short, and lmHead turned off (each falls back to ORT's head)
// Usage: node lm_head_node.mjs SITE_DIR BUNDLE_DIR
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [site, dir] = process.argv.slice(2);
const url = (p) => pathToFileURL(resolve(site, p)).href;
const ort = await import(url('vendor/ort/ort.wasm.min.mjs'));
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = { mjs: url('ort_wasm_capture.js'), wasm: url('vendor/ort/ort-wasm-simd-threaded.wasm') };
ort.env.logLevel = 'error';
const { downloadForm } = await import(url('runtime_form.js'));
const { createSession } = await import(url('bundle_loader.js'));
const { makeRunner } = await import(url('ort_heap.js'));
const { prepareLmHead } = await import(url('lm_head.js'));

const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, 'utf8'));
const config = JSON.parse(readFileSync(`${dir}/config.json`, 'utf8'));
const weights = new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`));
const graphBytes = new Uint8Array(readFileSync(`${dir}/${manifest.runtime.graph}`));
const bundle = () => ({ manifest, graph: graphBytes, form: downloadForm(manifest, weights) });
const shape = { heads: config.num_key_value_heads, headDim: config.hidden_size / config.num_attention_heads, vocab: config.vocab_size };

const plainSession = await createSession(ort, bundle());
const { runner: reference } = await makeRunner(ort, plainSession, shape);
const lm = await prepareLmHead(graphBytes, manifest, readFileSync(resolve(site, 'kernels/lm_head.wasm')));
const out = { head: lm.head ? 'kernel' : 'ort', note: lm.note, steps: 0, identical_heap: 0, identical_tensors: 0,
  max_abs_diff: 0, greedy_equal: true };
if (!lm.head) { console.log(JSON.stringify(out)); process.exit(0); }
out.fault_notes = [];
for (const [g, k, opts] of [[graphBytes, new Uint8Array([0, 97, 115, 109, 9, 9]), {}],
  [graphBytes.subarray(0, graphBytes.length - 100), readFileSync(resolve(site, 'kernels/lm_head.wasm')), {}],
  [graphBytes, null, { off: true }]]) {
  const r = await prepareLmHead(g, manifest, k, opts);
  out.fault_notes.push(r.head === null && r.graph === g ? r.note : `unexpected: ${r.note}`);
}
const { headlessGraph } = await import(url('lm_head.js'));
out.nodes = headlessGraph(graphBytes).nodes.map((n) => n.op);
const kernelSession = await createSession(ort, bundle(), { graph: lm.graph, onSlice: (b, bytes) => lm.head.tap(b, bytes) });
lm.head.checkFilled();
out.session_outputs = kernelSession.outputNames.filter((n) => !n.startsWith('present.'));
const { runner: heap, reason } = await makeRunner(ort, kernelSession, shape, { head: lm.head });
if (!heap || heap.kind !== 'heap') throw new Error(`no heap runner: ${reason}`);
const { runner: tensors } = await makeRunner(ort, kernelSession, shape, { heap: false, head: lm.head });

const tok = (i) => 100 + ((i * 7919) % 5000);
const seq = (from, n) => Array.from({ length: n }, (_, i) => tok(from + i));
const script = [['f', seq(0, 40)], ['f', [5]], ['f', [9]], ['f', seq(40, 7)], ['f', [1000]], ['t', 20],
  ['f', [42]], ['f', [7777]], ['f', [3]]];
const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
const argmax = (a) => a.reduce((best, v, i) => (v > a[best] ? i : best), 0);
for (const [op, arg] of script) {
  if (op === 't') { for (const r of [reference, heap, tensors]) r.truncate(arg); continue; }
  await reference.forward(arg);
  const want = Array.from(reference.logitsRow());
  await heap.forward(arg);
  const x = Array.from(heap.logitsRow());
  await tensors.forward(arg);
  const y = Array.from(tensors.logitsRow());
  out.steps += 1;
  if (same(x, want)) out.identical_heap += 1;
  if (same(y, want)) out.identical_tensors += 1;
  for (let i = 0; i < x.length; i++) out.max_abs_diff = Math.max(out.max_abs_diff, Math.abs(x[i] - want[i]), Math.abs(y[i] - want[i]));
  out.greedy_equal &&= argmax(x) === argmax(want) && argmax(y) === argmax(want);
}
out.kernel_ms = +(lm.head.ms / (2 * out.steps)).toFixed(2);
for (const r of [reference, heap, tensors]) r.dispose();
console.log(JSON.stringify(out));
process.exit(0);
