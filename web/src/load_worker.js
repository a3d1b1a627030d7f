// Helper worker of one model load: gets the bundle (Cache Storage or network, bundle_loader.js
// downloadBundle: bytes + sha256 checked), inflates weights.bin (or reads it inflated from the
// cache, stored by the first load) and expands it into model.data
// (runtime_form.js; the int4 -> int8 ops in web/kernels/expand.c, expand_kernel.js), on its own
// thread, while the Pyodide worker boots Python. It hands the
// expanded data over once that worker's thread is free (copied, ~8 MB a message: see below)
// and the worker that made it terminates it after 'done', which frees all it held.
//
// Why a second worker: the Pyodide worker's one thread is busy 2-3 s booting Python; before,
// the Cache Storage read, the inflate and the int4 -> int8 expansion (inside ORT's session
// create) queued behind it. Here they run on the other core. The ORT session itself is NOT made
// here: it, the KV tensors and ort_glue.js stay in the Pyodide worker (no per-token hop).
//
// Messages in:  {bundleUrl, cache, stallTimeoutMs, expandKernel, gate}  (starts the load;
//               expandKernel: false expands in JS instead of web/kernels/expand.c,
//               expand_kernel.js; gate: null or an Int32Array over a SharedArrayBuffer whose
//               [0] the Pyodide worker sets to 1 when it sends 'send')
//               {type: 'send'}  (the Pyodide worker can take model.data now)
// Messages out: {type: 'started'} (once, as soon as this module runs)
//               {type: 'progress', stage: 'download' | 'expand', loaded, total}
//               {type: 'mark', name, start, end, origin}  (ms: this worker's performance.now(), its timeOrigin)
//               {type: 'texts', texts: {name: string}}  (the bundle's text files, once verified)
//               {type: 'parts', parts: [{start, bytes}]}  (model.data's regions, one buffer a message)
//               {type: 'done', bundle: {manifest, texts, graph, total, cache, expand}}
//               {type: 'error', error: <SmolChatError wire form>}
// graph: model.onnx bytes; parts: model.data (manifest.runtime.expanded_bytes) region by region
// (runtime_form.js expandParts), all 'parts' messages before 'done'. Copied, not transferred.
// expand: {path: 'kernel' | 'js', note: why JS expanded (null: the kernel did), kernel_ms}.
//
// What this module ignores: Python, ORT, the tokenizer, the page's progress bar.

import { downloadBundle, loadError } from './bundle_loader.js';
import { expandParts, freeBuffer } from './runtime_form.js';
import { loadExpandKernel } from './expand_kernel.js';
import { toSmolChatError } from './errors.js';
import { installFetchWatch, beginLoad, loadFault } from './fetch_watch.js';

// Every fetch of this worker is bounded and its faults typed (fetch_watch.js), as in worker.js.
installFetchWatch(self, { site: new URL('./', import.meta.url).href });

const post = (msg, transfer = []) => self.postMessage(msg, transfer);

post({ type: 'started' });   // worker.js waits for this before it boots Python (its thread)

function mark(name, start) {
  const end = performance.now();
  post({ type: 'mark', name, start, end, origin: performance.timeOrigin });
  return end;
}

// worker.js says 'send' once its thread is free to take model.data (Python has booted)
let sendNow = () => {};
const sendAllowed = new Promise((resolve) => { sendNow = resolve; });

self.onmessage = ({ data }) => {
  if (data.type === 'send') sendNow();
  else load(data);
};

async function load({ bundleUrl, cache, stallTimeoutMs, expandKernel, gate = null }) {
  beginLoad({ stall: stallTimeoutMs, bundle: bundleUrl.endsWith('/') ? bundleUrl : bundleUrl + '/' });
  // the expansion kernel (~20 KB) compiles, starts and warms up while the bundle is read
  const kernelReady = (expandKernel === false ? Promise.resolve(null)
    : WebAssembly.compileStreaming(fetch(new URL('./kernels/expand.wasm', import.meta.url))).catch((e) => e))
    .then((source) => loadExpandKernel(source, { off: expandKernel === false }))
    .then((r) => {
      try { r.kernel?.warmUp(); } catch (e) { return { kernel: null, note: `the expansion kernel could not start: ${e.message}` }; }
      return r;
    });
  let kept = Promise.resolve();   // the store of the inflated form (never rejects)
  try {
    let t = performance.now();
    const bundle = await downloadBundle(bundleUrl, ({ loaded, total }) =>
      post({ type: 'progress', stage: 'download', loaded, total }), { cache });
    t = mark('read_verify', t);
    post({ type: 'texts', texts: bundle.texts });   // (worker.js builds the tokenizer meanwhile)
    let form;
    try { form = await bundle.form; } catch (e) { throw loadError(e); }
    t = mark('inflate', t);   // (~0 ms when the inflated form came from the cache)
    // the first load stores the inflated form (bundle_cache.js derived entry) for the next
    // ones: the store reads `form` while this thread expands, then waits for Python's boot
    kept = bundle.keepForm(form);
    const total = bundle.manifest.runtime.tensors.length;
    const { kernel, note } = await kernelReady;
    // model.data goes over one ~8 MB buffer a message, copied (no transfer list): Chromium
    // gives a copy's memory back when the Pyodide worker frees it after ORT has read it, a
    // transferred buffer's only when that worker ends (runtime_form.js freeBuffer). Only once
    // worker.js can take them: messages queued while its thread boots Python would hold a
    // second copy until they are read (measured: +140 MB at a cold load's peak). worker.js
    // says so by a message, and also through `gate` (a shared Int32Array, 1 = send; only when
    // cross-origin isolated) which this thread can read while it expands: a buffer expanded
    // after Python's boot goes over at once instead of after the last tensor (a cached load's
    // model.data arrived ~0.2 s after the expansion; README "Load time").
    const held = [];   // expanded buffers not sent yet: [ArrayBuffer, regions]
    const mayPost = () => gate !== null && Atomics.load(gate, 0) === 1;
    try {
      expandParts(bundle.manifest, form, {
        kernel,
        // one message per ~10 tensors: the bar moves, the channel stays quiet
        onProgress: (done) => { if (done % 10 === 0 || done === total) post({ type: 'progress', stage: 'expand', loaded: done, total }); },
        onChunk: (regions) => {
          if (mayPost()) { post({ type: 'parts', parts: regions }); return false; }   // (freed on return)
          held.push([regions[0].bytes.buffer, regions]);
          return true;
        },
      });
    } catch (e) { throw loadError(e); }
    await kept;
    freeBuffer(form.buffer);   // (the inflated weights.bin: expanded and stored, not read again)
    form = null;
    mark('expand', t);
    const expand = expandReport(kernel, note);
    if (expand.note && expandKernel !== false) console.info(`SmolChat: the int4 weights were expanded in JS: ${expand.note}`);
    await sendAllowed;
    for (const [buffer, regions] of held.splice(0)) {
      post({ type: 'parts', parts: regions });
      freeBuffer(buffer);
    }
    const { manifest, texts, graph } = bundle;
    post({ type: 'done', bundle: { manifest, texts, graph, total: bundle.total, cache: await bundle.report(), expand } });
  } catch (e) {
    // (a Cache Storage put cut short by this worker's end hangs the next load's cache: let it end)
    await kept;
    const err = toSmolChatError(e);
    // a download fault (stall, cut, missing site file) is the cause of whatever it broke
    const fault = ['bundle_missing', 'network', 'site_incomplete'].includes(err.kind) ? null : loadFault();
    post({ type: 'error', error: (fault || err).toJSON() });
  }
}

// Which path expanded the tensors: {path: 'kernel' | 'js', note: why JS (null: the kernel),
// kernel_ms: ms in the kernel's calls}.
function expandReport(kernel, note) {
  if (!kernel) return { path: 'js', note, kernel_ms: 0 };
  const kernel_ms = Math.round(kernel.ms);
  if (kernel.failed) return { path: 'js', note: `the expansion kernel failed part-way (${kernel.failed}): the rest was expanded in JS`, kernel_ms };
  if (!kernel.tensors) return { path: 'js', note: 'this bundle has no int4 -> int8 tensors (the exact preset expands to float32)', kernel_ms };
  return { path: 'kernel', note: null, kernel_ms };
}
