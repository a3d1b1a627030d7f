// The runtime form's memory in ONNX Runtime Web: the page's own ORT wasm and runtime_form.js,
// run in Node, where the process RSS is exact and the wasm heap can be read. One variant per
// process (the wasm heap never shrinks); prints one JSON line.
//
//   node runtime_memory.mjs BUNDLE_DIR SITE_DIR on-demand|whole PREFILL_TOKENS PREFILL_CHUNK
//
// on-demand: runtimeDataSource, what the page does (ORT reads model.data tensor by tensor);
// whole:     expandRuntimeData first, then ORT copies it (the first landing's way).
// Figures (MB = 1e6 bytes):
//   engine_rss_mb          RSS with ORT initialised on a 1-node model, before the bundle
//   load_peak_above_engine_mb  peak RSS from reading weights.bin until the session exists,
//                          minus engine_rss_mb: what loading the model costs at its worst
//   run_peak_above_engine_mb   the same peak until the end of the run (adds the prefill's
//                          activations and the KV tensors each step copies out to JS, which
//                          the GC frees late)
//   wasm_heap_mb           ORT's wasm memory after the session exists / after a prefill of
//   wasm_heap_prefill_mb   PREFILL_TOKENS and 16 decode steps (the heap never shrinks)
//   steady_rss_above_engine_mb  RSS after the run (with a GC), minus engine_rss_mb
// What it ignores: Chromium, Pyodide and the tokenizer (the renderer's other residents; the
// browser benchmark's RSS has them all), threads (1).
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [dir, site, variant, prefillArg, chunkArg] = process.argv.slice(2);
const prefill = Number(prefillArg);
const chunk = Number(chunkArg); // the engine's PREFILL_CHUNK (tokens per prefill forward)

// ORT's wasm memory is created with `new WebAssembly.Memory` when the first session opens:
// recorded here (the only way to read its size from outside ORT).
const memories = [];
const NativeMemory = WebAssembly.Memory;
WebAssembly.Memory = function Memory(desc) { const m = new NativeMemory(desc); memories.push(m); return m; };
WebAssembly.Memory.prototype = NativeMemory.prototype;
const heapMb = () => memories.reduce((s, m) => s + m.buffer.byteLength, 0) / 1e6;

const status = () => readFileSync('/proc/self/status', 'utf8');
const kb = (key) => Number(status().match(new RegExp(`${key}:\\s+(\\d+)`))[1]) * 1024 / 1e6;
const resetPeak = () => writeFileSync('/proc/self/clear_refs', '5'); // VmHWM := VmRSS

const ort = await import(pathToFileURL(resolve(site, 'vendor/ort/ort.wasm.min.mjs')).href);
const { downloadForm, runtimeDataSource, expandRuntimeData } = await import(pathToFileURL(resolve(site, 'runtime_form.js')).href);
// the page's tensor glue (same ORT module: it imports ./vendor/ort/ort.wasm.min.mjs of the site)
const glue = await import(pathToFileURL(resolve(site, 'ort_glue.js')).href);
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = pathToFileURL(resolve(site, 'vendor/ort')).href + '/';
ort.env.logLevel = 'error';

// Engine baseline: ORT compiled and initialised on a one-node graph (Identity, float [1]),
// written here by hand as ONNX protobuf bytes.
const tiny = Uint8Array.from(Buffer.from(
  'CAg6NwoQCgF4EgF5IghJZGVudGl0eRIBZ1oPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEBE=', 'base64'));
await (await ort.InferenceSession.create(tiny)).release();
global.gc?.();
const engine = kb('VmRSS');
resetPeak();

const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, 'utf8'));
let weights = new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`));
const downloadMb = weights.length / 1e6;
const graph = readFileSync(`${dir}/${manifest.runtime.graph}`);
const t0 = performance.now();
weights = await downloadForm(manifest, weights); // inflated (the file's bytes dropped, as the page does)
let data = variant === 'whole' ? expandRuntimeData(manifest, weights) : runtimeDataSource(manifest, weights);
const session = await ort.InferenceSession.create(graph, {
  graphOptimizationLevel: manifest.runtime.graph_optimization ?? 'basic',
  externalData: [{ path: manifest.runtime.external_data, data }],
});
const sessionMs = performance.now() - t0;
const loadPeak = kb('VmHWM');
data = null; weights = null;
const heapSession = heapMb();

// A prefill then decode steps, like a chat turn, through the page's glue (the ids do not matter).
const pastNames = session.inputNames.filter((n) => n.startsWith('past_key_values.'));
const presentNames = pastNames.map((n) => n.replace('past_key_values.', 'present.'));
const cfg = JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')); // KV shape as the bridge reads it
let kv = glue.emptyKV(pastNames.length, cfg.num_key_value_heads ?? cfg.num_attention_heads,
                      cfg.hidden_size / cfg.num_attention_heads);
async function step(ids, past) {
  const feeds = glue.stepFeeds(pastNames, kv, ids, past, true, true);
  const out = glue.collect(await glue.run(session, feeds), presentNames);
  glue.disposeInputs(feeds);
  glue.disposeAll(kv);
  glue.disposeTensor(out.logits);
  kv = out.kv;
}
for (let at = 0; at < prefill; at += chunk) {
  await step(Array.from({ length: Math.min(chunk, prefill - at) }, (_, i) => 100 + ((at + i) % 1000)), at);
}
for (let i = 0; i < 16; i++) await step([100], prefill + i);
const peak = kb('VmHWM');
global.gc?.();
await new Promise((r) => setTimeout(r, 200));
const r2 = (x) => Math.round(x * 10) / 10;
console.log(JSON.stringify({
  variant, prefill_tokens: prefill, session_ms: Math.round(sessionMs),
  engine_rss_mb: r2(engine), load_peak_above_engine_mb: r2(loadPeak - engine),
  run_peak_above_engine_mb: r2(peak - engine),
  wasm_heap_mb: r2(heapSession), wasm_heap_prefill_mb: r2(heapMb()),
  steady_rss_above_engine_mb: r2(kb('VmRSS') - engine),
  download_mb: r2(downloadMb),
  expanded_mb: r2(manifest.runtime.expanded_bytes / 1e6),
}));
