// The SmolChat module Web Worker: boots Pyodide with our smolchat wheel, loads the bundle into
// ONNX Runtime Web (WASM, threads when cross-origin isolated), builds the JS tokenizer, and
// answers the requests of protocol.js by calling smolchat.bridge.WorkerHost.
//
// Requests that change the conversation run one at a time (a queue); cancel, info, health and
// encode answer at once, so Stop works while a reply streams. A cancel reaches a request
// wherever it is: still queued, it is dropped and rejected at once (AbortError, nothing
// changed); running, Python stops it within one token (WorkerHost.cancel remembers a request
// Python has not registered yet). clear, set_system_prompt and load_history first cancel the
// chat replies queued or running ahead of them (their exchanges belong to the conversation
// being replaced, as in ChatEngine._reset), so they never wait for a reply to run to its limit.
//
// What this module ignores: the UI and the public API (smolchat.js, app.js).

import * as ort from './vendor/ort/ort.wasm.min.mjs';
import { loadPyodide, version as pyodideVersion } from './vendor/pyodide/pyodide.mjs';
import { openSnapshots, sparseRestore } from './python_snapshot.js';
import { Tokenizer } from './vendor/tokenizers/tokenizers.min.mjs';
import * as glue from './ort_glue.js';
import { makeRunner } from './ort_heap.js';
import { ownRegions } from './runtime_form.js';
import { prepareLmHead } from './lm_head.js';
import { createSession } from './bundle_loader.js';
import { Request, Reply, STAGES, STREAMING, overallPercent } from './protocol.js';
import { makeError, abortError, siteIncomplete, toSmolChatError, errorFromWire } from './errors.js';
import { installFetchWatch, beginLoad, loadFault } from './fetch_watch.js';

// Relative to this module, not self.location: started from another origin, the worker is a
// blob: URL that imports this file (smolchat.js spawnWorker), and blob: URLs have no base.
const here = (path) => new URL(path, import.meta.url).href;

// Every fetch of this worker is bounded and its faults typed (fetch_watch.js).
installFetchWatch(self, { site: here('./') });

let host = null;       // PyProxy of smolchat.bridge.WorkerHost
let tokenizer = null;  // @huggingface/tokenizers Tokenizer of the bundle
let loadInfo = null;   // worker-side load facts merged into info()
let bootedPyodide = null; // the Pyodide instance once booted (its heap size is reported)
let snapshotSkippedMb = 0; // MB of the Python snapshot the restore did not write (zeros)
let snapshotStore = Promise.resolve(); // the Python snapshot's Cache Storage put (never rejects)
let queue = Promise.resolve();

const post = (kind, id, content) => self.postMessage({ kind, id, content });

// Python returns JSON strings {"ok": value} | {"error": {...}}.
function unwrap(text) {
  const r = JSON.parse(text);
  if (r.error) throw errorFromWire(r.error);
  return r.ok;
}

async function awaitPy(proxy) {
  try { return await proxy; } finally { if (proxy && proxy.destroy) proxy.destroy(); }
}

// The smallest ONNX model (one Identity node, float x -> y), to start ORT's runtime early.
const IDENTITY_ONNX = Uint8Array.from(atob('CAg6NwoQCgF4EgF5IghJZGVudGl0eRIBZ1oPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEBE='), (c) => c.charCodeAt(0));

let site = null;
async function siteInfo() {
  if (!site) site = await (await fetch(here('./site.json'))).json();
  return site;
}

// Pyodide + our wheel + smolchat.bridge.WorkerHost. mark(name, start) records a stage.
// Return visits boot from a memory snapshot kept by the first (python_snapshot.js), made after
// smolchat.bridge is imported: a hit has our modules already and reads no wheel file. A
// snapshot that Pyodide refuses (another build), of another wheel, or that fails, is dropped
// and Python boots without it. jinja2 + MarkupSafe come later, only for a bundle whose chat
// template needs them (installTemplatePackages).
// A first visit boots from the site's own snapshot (made when the site was built: siteSnapshot)
// and keeps it as a return visit's.
// -> {pyodide, host, snapshot: Promise of 'hit' | 'site' | 'stored' | 'miss' | 'rejected: ...' | 'disabled: ...'}
async function bootPython(progress, mark, { cache = true } = {}) {
  progress('python', 0, 'Starting Python');
  const info = await siteInfo();
  let t = performance.now();
  // the wheel's bytes (a hit revalidates them: ~64 KB) and sha256, which names the snapshot
  const wheel = await fetchWheel(info.wheel);
  const sha = await sha256Hex(wheel);
  const snapshots = await openSnapshots(pyodideVersion, { enabled: cache, wheel: sha });
  const options = { indexURL: here('./vendor/pyodide/'), stdout: () => {}, stderr: (s) => console.warn(s) };
  let pyodide = null;
  let stored = Promise.resolve();
  let snapshot = await snapshots.read();
  // none kept yet (a first visit, or cache: false): the site's own, made when the site was built
  // (site.json python_snapshot); not after a refusal, which boots without any and keeps a new one
  let fromSite = false;
  if (!snapshot && !snapshots.report().startsWith('rejected')) {
    progress('python', 0.1, 'Starting Python: reading its snapshot');
    snapshot = await siteSnapshot(info.python_snapshot, sha);
    fromSite = snapshot !== null;
  }
  if (snapshot) {
    try {
      // (the restore writes only the snapshot's blocks that are not zero: python_snapshot.js)
      const real = (await import('./vendor/pyodide/pyodide.asm.mjs')).default;
      const sparse = sparseRestore(real);
      pyodide = bootedPyodide = await loadPyodide({ ...options, _loadSnapshot: snapshot, createPyodideModule: sparse.factory });
      snapshotSkippedMb = Math.round(sparse.skipped() / 1048576 * 10) / 10;
      // the site's snapshot is kept for the next visit like one made here (the put copies the
      // bytes at once: they are freed below)
      if (fromSite && snapshots.wanted) stored = snapshots.store(snapshot);
      // Pyodide keeps its options for the instance's life: without this the 31.5 MB stay
      pyodide._api.config._loadSnapshot = null;
      // and they go now, not at a later garbage collection (the heap holds its own copy)
      (await import('./runtime_form.js')).freeBuffer(snapshot.buffer);
      // our modules are in the heap (pyimport: runPython would compile, ~30 ms of cold code)
      const modules = pyodide.pyimport('sys').modules;
      const found = modules.has('smolchat.bridge');
      modules.destroy();
      if (!found) throw new Error('the snapshot holds no smolchat.bridge');
      t = mark('python_boot', t);
    } catch (e) {
      pyodide = null;
      fromSite = false;
      await snapshots.reject(e);
    }
  }
  if (!pyodide) {
    const make = snapshots.wanted;
    pyodide = bootedPyodide = await loadPyodide({ ...options, _makeSnapshot: make });
    t = mark('python_boot', t);
    progress('python', 0.7, 'Loading the SmolChat Python package');
    unpackWheel(pyodide, wheel);
    pyodide.pyimport('smolchat.bridge').destroy();
    // (before any WorkerHost or loadPackage: a snapshot may hold no JS object)
    if (make) {
      try { stored = snapshots.store(pyodide.makeMemorySnapshot()); } catch (e) { stored = snapshots.reject(e); }
    }
  }
  const bridge = pyodide.pyimport('smolchat.bridge');
  const h = bridge.WorkerHost();
  bridge.destroy();
  mark('python_wheel', t);
  progress('python', 1, 'Python ready');
  // (the snapshot's store finishes in the background; the load reports it at its end)
  snapshotStore = stored;
  return { pyodide, host: h, snapshot: stored.then(() => (fromSite ? 'site' : snapshots.report())) };
}

// The site's own Python snapshot (site.json python_snapshot: {path, pyodide, wheel_sha256,
// bytes}, gzip-compressed, made by smolchat_web/python_snapshot.mjs when the site was built),
// inflated, when it was made by this Pyodide from the wheel this site serves; else null. A
// missing, cut or broken file means Python boots without it, never a failed load (Pyodide
// still checks its build id).
async function siteSnapshot(meta, wheelSha) {
  if (!meta || meta.pyodide !== pyodideVersion || meta.wheel_sha256 !== wheelSha || !(meta.bytes > 0)) return null;
  try {
    const response = await fetch(here(meta.path), { optional: true });   // (fetch_watch.js)
    if (!response.ok) return null;
    const out = new Uint8Array(meta.bytes);
    let length = 0;
    const reader = response.body.pipeThrough(new DecompressionStream('gzip')).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (length + value.length > out.length) return null;
      out.set(value, length);
      length += value.length;
    }
    return length === out.length ? out : null;
  } catch {
    return null;
  }
}

// The bytes of a wheel of the site (site.json path); a missing one is SiteIncomplete.
async function fetchWheel(path) {
  const url = here(path);
  const response = await fetch(url);
  if (!response.ok) throw siteIncomplete(url, response.status);
  return new Uint8Array(await response.arrayBuffer());
}

// sha256 (hex) of `bytes`; null where crypto.subtle is unavailable (an insecure context,
// which has no Cache Storage for a snapshot either).
async function sha256Hex(bytes) {
  if (!(self.crypto && crypto.subtle)) return null;
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

// A wheel's files into site-packages. pyodide.unpackArchive, not loadPackage: our wheels are
// pure Python with no dependencies to resolve, and Pyodide's package manager cost 0.5-0.8 s
// more on its first call after a snapshot boot (Chromium 156, 2026-12-03).
function unpackWheel(pyodide, bytes) {
  const sitePackages = pyodide.runPython("__import__('site').getsitepackages()[0]");
  pyodide.unpackArchive(bytes, 'wheel', { extractDir: sitePackages });
}

// jinja2 + MarkupSafe (site.json python_packages) when the bundle's chat template needs them
// (smolchat.chat_template.needs_jinja2: every template but the known ChatML ones, which render
// without). -> true when they were installed. A wheel that cannot be fetched is SiteIncomplete
// (or NetworkError) naming it: the bundle cannot be rendered without it.
async function installTemplatePackages(pyodide, texts) {
  const template = JSON.parse(texts['tokenizer_config.json']).chat_template ?? '';
  const module = pyodide.pyimport('smolchat.chat_template');
  let needed;
  try { needed = module.needs_jinja2(template); } finally { module.destroy(); }
  const paths = (await siteInfo()).python_packages || [];
  if (!needed || !paths.length) return false;   // (no packages: Python says UnsupportedTemplate)
  const wheels = await Promise.all(paths.map(fetchWheel));
  for (const bytes of wheels) unpackWheel(pyodide, bytes);
  pyodide.runPython('import importlib; importlib.invalidate_caches()');
  return true;
}

// Bytes of the runtime files (site.json runtime_files: {path relative to the site: bytes}) as
// this worker's fetches of them complete (Resource Timing: whole files, no byte stream).
// -> {total, loaded(), finish()}; onChange() after each file.
function watchRuntimeFiles(files, onChange) {
  const size = new Map(Object.entries(files).map(([rel, n]) => [here('./' + rel), n]));
  const total = [...size.values()].reduce((a, b) => a + b, 0);
  const seen = new Set();
  let loaded = 0;
  let observer = null;
  const take = (entries) => {
    let changed = false;
    for (const e of entries) {
      const url = e.name.split('?')[0];
      if (size.has(url) && !seen.has(url)) { seen.add(url); loaded += size.get(url); changed = true; }
    }
    if (changed) onChange();
  };
  try {
    observer = new PerformanceObserver((list) => take(list.getEntries()));
    observer.observe({ type: 'resource', buffered: true });
  } catch { /* no Resource Timing: the share completes at finish() */ }
  return {
    total,
    loaded: () => loaded,
    finish() { if (observer) observer.disconnect(); loaded = total; },
  };
}

// A module worker from our own files. Started from another origin, this worker is a blob: URL
// and may only start same-origin workers: a blob that imports the file (as smolchat.js does).
function spawnHelper(url) {
  if (url.origin === self.location.origin) return new Worker(url, { type: 'module' });
  const blobUrl = URL.createObjectURL(new Blob([`import ${JSON.stringify(url.href)};\n`], { type: 'text/javascript' }));
  try { return new Worker(blobUrl, { type: 'module' }); } finally { URL.revokeObjectURL(blobUrl); }
}

// The bundle from load_worker.js (a second thread: read/download, verify, inflate, expand) ->
// the same object downloadBundle returns, with `parts` (model.data, runtime_form.js
// expandParts) in place of `form`.
// Progress and stage marks come through as they happen; a failure there, or the helper's
// script failing to start, rejects with a typed error.
// -> {bundle: Promise, started: Promise (the helper's scripts ran), texts: Promise (the
// bundle's text files, verified, ahead of model.data), terminate(), send()}.
function bundleFromHelper(url, cache, stallTimeoutMs, expandKernel, onProgress, onMark) {
  let helper = null;
  let onStarted = () => {};
  const started = new Promise((resolve) => { onStarted = resolve; });
  let onTexts = () => {};   // (set below, before any message can arrive)
  // send() also sets gate[0] = 1, which the helper reads while it expands (load_worker.js)
  const gate = self.crossOriginIsolated === true && typeof SharedArrayBuffer === 'function'
    ? new Int32Array(new SharedArrayBuffer(4)) : null;
  const bundle = new Promise((resolve, reject) => {
    try {
      helper = spawnHelper(new URL(here('./load_worker.js')));
    } catch (e) {
      reject(makeError('internal', `could not start the load helper worker (${e.message}): rebuild the site (./build.sh site)`));
      return;
    }
    const end = (fn, value) => { helper.terminate(); fn(value); };
    let parts = [];   // model.data's regions as they come (runtimeDataFromParts wants them by start)
    helper.onmessage = ({ data: m }) => {
      if (m.type === 'started') onStarted();
      else if (m.type === 'progress') onProgress(m);
      else if (m.type === 'mark') onMark(m.name, m.start, m.end, m.origin);
      // (each region into a buffer of its own, freed once ORT has read it: runtime_form.js ownRegions)
      else if (m.type === 'parts') parts.push(...ownRegions(m.parts));
      else if (m.type === 'texts') onTexts(m.texts);
      else if (m.type === 'done') { m.bundle.parts = parts.sort((a, b) => a.start - b.start); parts = null; end(resolve, m.bundle); }
      else if (m.type === 'error') end(reject, errorFromWire(m.error));
    };
    helper.onerror = (event) => {
      event.preventDefault();
      end(reject, makeError('internal', `the load helper worker ${here('./load_worker.js')} failed ` +
        `(${event.message || 'script error: a runtime file is missing?'}): rebuild the site (./build.sh site)`));
    };
    helper.onmessageerror = () => end(reject, makeError('internal', 'the load helper worker sent an unreadable message'));
    helper.postMessage({ bundleUrl: url, cache, stallTimeoutMs, expandKernel, gate });
  });
  const texts = new Promise((resolve, reject) => { onTexts = resolve; bundle.catch(reject); });
  texts.catch(() => {});
  return {
    bundle, started, texts, terminate: () => helper && helper.terminate(),
    // this thread is free: the helper may send model.data (load_worker.js)
    send: () => { if (gate) Atomics.store(gate, 0, 1); if (helper) helper.postMessage({ type: 'send' }); },
  };
}

async function load(id, content) {
  if (host) throw makeError('invalid_input', 'a model is already loaded: call unload() first');
  try {
    return await loadModel(id, content);
  } catch (e) {
    if (host) { host.destroy(); host = null; }
    tokenizer = null;
    // a failed load's worker is terminated by the page: let a Cache Storage put of the Python
    // snapshot end first (one cut short left the next load's read of that cache waiting
    // forever), within a bound so that the error still comes
    await Promise.race([snapshotStore, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    throw loadError(e);
  }
}

// The error a failed load reports: a download fault (stall, cut, a missing site file) is the
// cause even when Pyodide or ORT wrapped it in an error of their own (fetch_watch.js).
function loadError(e) {
  const err = toSmolChatError(e);
  if (['bundle_missing', 'network', 'site_incomplete'].includes(err.kind)) return err;
  const fault = loadFault();
  if (fault) return fault;
  // A module the libraries import (not fetch) and did not get: e.g. vendor/ort/*.mjs.
  const missing = /dynamically imported module:?\s*(\S+)/i.exec(err.message);
  if (missing && missing[1].startsWith(here('./'))) return siteIncomplete(missing[1]);
  return err;
}

// ORT imports its wasm factory through ort_wasm_capture.js so that ort_heap.js can keep the KV
// cache in ORT's heap. Only from our own origin: a worker started by the widget on another
// origin may have ORT preload the factory as a blob: URL, whose relative import would break.
const SAME_ORIGIN = new URL(import.meta.url).origin === self.location.origin;

// One load, two threads (README "Load time"): this worker boots Python while load_worker.js
// reads, verifies, inflates and expands the bundle; then the ORT session is created here (it,
// the KV tensors and the bridge stay on this thread), and the engine warms up.
// Progress: one bar; each part moves its own share (protocol.js STAGES), so parts running at
// the same time both move it; `stage` is the first part not finished (a download update: always
// 'download'), `message` what every part under way is doing.
async function loadModel(id, { bundleUrl, threads, systemPrompt, contextWindow, cache, heapKV, lmHead, expandKernel, stallTimeoutMs }) {
  const t0 = performance.now();
  const isolated = self.crossOriginIsolated === true;
  const want = threads || (isolated ? 2 : 1);
  const numThreads = isolated ? want : 1;
  const heap = heapKV !== false && SAME_ORIGIN;
  ort.env.wasm.wasmPaths = heap
    ? { mjs: here('./ort_wasm_capture.js'), wasm: here('./vendor/ort/ort-wasm-simd-threaded.wasm') }
    : here('./vendor/ort/');
  ort.env.wasm.numThreads = numThreads;   // must be set before the first session
  ort.env.wasm.proxy = false;             // we already are in a worker
  const parts = {};     // stage -> {fraction, message}
  let loadedBytes = 0, totalBytes = 0;
  const progress = (stage, fraction, message) => {
    parts[stage] = { fraction: Math.max(fraction, parts[stage] ? parts[stage].fraction : 0), message };
    // a download update always shows as 'download' (its last one has loaded === total)
    const first = stage === 'download' ? STAGES[0]
      : STAGES.find((s) => !(parts[s.stage] && parts[s.stage].fraction >= 1)) || STAGES[STAGES.length - 1];
    // every part under way says what it does ("Starting Python · Expanding ...: 120 / 211 tensors")
    const active = STAGES.filter((s) => parts[s.stage] && parts[s.stage].fraction < 1).map((s) => parts[s.stage].message);
    post(Reply.PROGRESS, id, {
      stage: first.stage, percent: overallPercent(parts), message: active.length ? active.join(' · ') : message,
      ...(first.stage === 'download' ? { loaded: loadedBytes, total: totalBytes } : {}) });
  };
  // stage marks: name -> [start, end], ms since this load began (the helper's on our clock)
  const marks = {};
  // the two wasm heaps (MB) at the end of each of this worker's stages: they only grow
  const heaps = {};
  const mark = (name, start, end = performance.now(), here = true) => {
    marks[name] = [Math.round(start - t0), Math.round(end - t0)];
    if (here) heaps[name] = heapsMb(bootedPyodide);
    return end;
  };

  progress('download', 0, 'Starting');   // the first message: this worker's scripts loaded (smolchat.js waits for it)
  const url = new URL(bundleUrl, import.meta.url).href;
  beginLoad({ stall: stallTimeoutMs, bundle: url.endsWith('/') ? url : url + '/' });
  const runtime = watchRuntimeFiles((await siteInfo()).runtime_files || {}, () => downloadProgress());
  const mb = (n) => (n / 1048576).toFixed(1);
  // the download share covers the bundle's bytes and the runtime files' (site.json)
  const downloadProgress = () => {
    // (nothing counts until the bundle's size is known: the fraction never goes back)
    const done = totalBytes ? loadedBytes + runtime.loaded() : 0, all = totalBytes + runtime.total;
    const files = runtime.loaded() < runtime.total ? ` · runtime files ${mb(runtime.loaded())} / ${mb(runtime.total)} MB` : '';
    progress('download', all ? done / all : 0, `Reading the model: ${mb(loadedBytes)} / ${mb(totalBytes)} MB${files}`);
  };
  const helper = bundleFromHelper(url, cache !== false, stallTimeoutMs, expandKernel, (m) => {
    if (m.stage === 'download') {
      loadedBytes = m.loaded; totalBytes = m.total;
      downloadProgress();
    } else {
      progress('compile', 0.5 * (m.loaded / m.total), `Expanding the int4 weights to int8: ${m.loaded} / ${m.total} tensors`);
    }
  }, (name, start, end, origin) => {
    // the helper's performance.now() counts from its own timeOrigin
    const shift = origin - performance.timeOrigin;
    mark(name, start + shift, end + shift, false);
  });
  helper.bundle.catch(() => {});
  // Chromium loads a nested worker's scripts through this worker's thread: let the helper start
  // before Python's boot holds the thread for a second or more (else the read waits for it)
  await Promise.race([helper.started, helper.bundle.catch(() => {}),
                      new Promise((resolve) => setTimeout(resolve, 2000))]);
  // ORT's wasm (14 MB) is fetched and compiled now (V8 compiles off this thread) instead of
  // at the session, after Python: a one-node session initializes the runtime. After the
  // helper has started: instantiating ORT holds this thread for ~0.3 s, which delayed the
  // helper's start (and the whole read, inflate, expand chain) in about half the loads.
  const tOrt = performance.now();
  const ortReady = ort.InferenceSession.create(IDENTITY_ONNX).then(async (s) => {
    // (ORT imported its factory through ort_wasm_capture.js when heap; a dynamic import, as
    // ort_heap.js does: the page's static imports stay what they were)
    mark('ort_init', tOrt);
    if (heap) ({ capturedModule: ortModule } = await import('./ort_wasm_capture.js'));
    return s.release();
  });
  ortReady.catch(() => {});
  // the LM head kernel (lm_head.js; 8 KB) compiles meanwhile too
  const lmKernel = lmHead === false ? null : WebAssembly.compileStreaming(fetch(here('./kernels/lm_head.wasm')));
  if (lmKernel) lmKernel.catch(() => {});
  let pyodide, pythonSnapshot;
  try {
    ({ pyodide, host, snapshot: pythonSnapshot } = await bootPython(
      (stage, f, message) => progress(stage, f, message), mark, { cache: cache !== false }));
  } catch (e) {
    helper.terminate();
    throw e;
  }
  helper.send();
  // the tokenizer while the helper still inflates and expands (its texts come with the read)
  let t = performance.now();
  const texts = await helper.texts;
  tokenizer = makeTokenizer(texts, url);
  t = mark('tokenizer', t);
  if (await installTemplatePackages(pyodide, texts)) mark('python_jinja2', t);
  // Python parses the same texts now, while this thread would wait for model.data (bridge.py
  // BundleTexts: ~0.1-0.2 s that came after the session)
  const tp = performance.now();
  host.prepare(engineTexts(texts));
  mark('engine_texts', tp);
  const tb = performance.now();
  const bundle = await helper.bundle;
  await ortReady.catch((e) => { throw makeError('internal', `ONNX Runtime did not start (${e.message || e}): rebuild the site (./build.sh site)`); });
  // Python and ORT are up: every runtime file they fetch has arrived (a file a snapshot boot
  // skips counts as done). The download share is complete; the next update shows it (a
  // download update now would show the 'download' stage again).
  runtime.finish();
  parts.download = { fraction: 1, message: 'Model read' };
  t = mark('wait_bundle', tb);
  progress('compile', 0.5, 'Creating the ONNX Runtime session');
  let shown = 0; // (one update per 2% of the weights, not one per each of ~700 reads)
  // the compact graph's LM head runs in our kernel: ORT gets the graph without it
  const lm = await prepareLmHead(bundle.graph, bundle.manifest, await lmKernel?.catch((e) => e), { off: lmHead === false });
  if (lm.note && lmHead !== false) console.info(`SmolChat: ONNX Runtime computes the LM head: ${lm.note}`);
  const session = await createSession(ort, bundle, {
    graph: lm.graph,
    onSlice: lm.head ? (begin, bytes) => lm.head.tap(begin, bytes) : undefined,
    onRead: (read, total) => {
      if (read < total && read / total < shown + 0.02) return;
      shown = read / total;
      progress('compile', 0.5 + 0.4 * shown, read < total ? 'Creating the ONNX Runtime session: copying weights'
        : 'Creating the ONNX Runtime session: optimizing the graph');
    },
  });
  t = mark('session', t);
  if (lm.head) {
    try { lm.head.checkFilled(); } catch (e) { session.release(); throw makeError('bundle_corrupt', e.message.replace(/^bundle_corrupt: /, '')); }
  }
  progress('compile', 1, 'Session ready');
  const config = JSON.parse(bundle.texts['config.json']);
  const heads = config.num_key_value_heads ?? config.num_attention_heads;
  const { runner, reason } = await makeRunner(ort, session, {
    heads, headDim: config.head_dim ?? config.hidden_size / config.num_attention_heads,
    vocab: config.vocab_size }, { heap, head: lm.head });
  // why the KV cache is not in ORT's heap (null when it is): reported by info()
  const kvCacheNote = heap ? reason
    : heapKV === false ? 'turned off by the caller (heapKV: false)' : 'the worker was started from another origin';
  if (kvCacheNote) console.info(`SmolChat: the KV cache is kept in JS tensors: ${kvCacheNote}`);
  const res = {
    session, runner, kvCacheNote: kvCacheNote || "",
    lmHead: lm.head ? 'kernel' : 'ort', lmHeadNote: lm.note || '',
    tokenizer, glue, bundleUrl: url, threads: ort.env.wasm.numThreads,
    crossOriginIsolated: isolated,
    versions: { ort: ort.env.versions.web, pyodide: pyodide.version },
    texts: engineTexts(bundle.texts),
  };
  const options = JSON.stringify({ system_prompt: systemPrompt ?? null, context_window: contextWindow ?? 2048 });
  progress('warmup', 0, 'Loading the chat engine');
  let info;
  try {
    info = unwrap(await awaitPy(host.load(res, options)));
  } catch (e) {
    const err = toSmolChatError(e);
    if (err.kind !== 'internal') throw err;
    // the bundle's JSON files passed their sha256 but Python cannot read them
    throw makeError('bundle_corrupt', `the bundle at ${url} has files the engine cannot read ` +
      `(${err.message}): rebuild the bundle (./build.sh bundle), then the site (./build.sh site)`);
  }
  t = mark('engine_load', t);
  progress('warmup', 0.3, 'Warming up');
  unwrap(await awaitPy(host.warmup()));
  mark('warmup', t);
  // A Python booted from a snapshot does not wait for its stdlib (python_stdlib.zip): Pyodide
  // fetches it on the side, and a failure there only shows when a module is first imported.
  // A site file of Pyodide that failed is the load's error (SiteIncomplete naming it).
  const pyodideFault = loadFault();
  if (pyodideFault && String(pyodideFault.details?.url || '').startsWith(here('./vendor/pyodide/'))) throw pyodideFault;
  progress('warmup', 1, 'Ready');
  const total = performance.now() - t0;
  loadInfo = {
    load_ms: Math.round(total),
    download_ms: marks.read_verify ? marks.read_verify[1] : null,
    compile_ms: marks.session ? marks.session[1] - marks.session[0] : null,
    warmup_ms: marks.warmup ? marks.warmup[1] - marks.warmup[0] : null,
    download_bytes: bundle.total,
    stages: marks, // {name: [start_ms, end_ms]} since the load began; helper stages overlap python
    heaps_mb: heaps, // {stage: {ort, python}}: the wasm heaps' sizes (MB) as this worker's stages end
    t0_epoch_ms: performance.timeOrigin + t0,
    python_snapshot: await pythonSnapshot, // 'hit' | 'site' | 'stored' | 'miss' | 'rejected: ...' | 'disabled: ...'
    python_snapshot_zero_mb: snapshotSkippedMb, // MB of it left unwritten: zeros (python_snapshot.js sparseRestore)
    // which path expanded int4 -> int8 (load_worker.js): 'kernel' (web/kernels/expand.c) | 'js', and why JS
    expand: bundle.expand.path, expand_note: bundle.expand.note, expand_kernel_ms: bundle.expand.kernel_ms,
    ...bundle.cache, // from_cache, cache ('hit' | 'miss' | 'disabled: <reason>'), cache_name, network_bytes
  };
  return { ...info, ...loadInfo };
}

// The bundle's texts as the engine reads them (bridge.py BundleTexts, res.texts).
function engineTexts(texts) {
  return {
    manifest: texts.manifest, tokenizer_json: texts['tokenizer.json'],
    tokenizer_config: texts['tokenizer_config.json'], config: texts['config.json'],
    generation_config: texts['generation_config.json'],
  };
}

// {ort, python}: MB of ORT's and Pyodide's wasm heaps (null when not reachable).
let ortModule = () => null;   // ort_wasm_capture.js capturedModule, once ORT has started
function heapsMb(pyodide) {
  const mb = (m) => (m && m.HEAPU8 ? Math.round(m.HEAPU8.length / 1048576) : null);
  return { ort: mb(ortModule()), python: mb(pyodide && pyodide._module) };
}

// The JS tokenizer of the bundle; a file that passed its sha256 but is no tokenizer is
// BundleCorrupt naming the fix (a sha256 only proves the file is the one the build wrote).
function makeTokenizer(texts, url) {
  let name = 'tokenizer.json';
  try {
    const json = JSON.parse(texts[name]);
    name = 'tokenizer_config.json';
    const config = JSON.parse(texts[name]);
    name = 'tokenizer.json';
    const t = new Tokenizer(json, config);
    t.encode('ok');   // a tokenizer without a model or vocabulary fails here, not at the first chat
    return t;
  } catch (e) {
    throw makeError('bundle_corrupt', `${url}${url.endsWith('/') ? '' : '/'}${name} is not a valid ` +
      `tokenizer (${(e && e.message) || e}): rebuild the bundle (./build.sh bundle), then the site ` +
      '(./build.sh site)', { file: name });
  }
}

function call(name, args = []) {
  if (!host) throw makeError('model_not_loaded', 'the model is not loaded yet: call load() and wait for it');
  return unwrap(host.call(name, JSON.stringify(args)));
}

// -> the engine's reply dict, passed through untouched (timings and the decode profile included).
async function generate(id, mode, { message, settings }) {
  if (!host) throw makeError('model_not_loaded', 'the model is not loaded yet: call load() and wait for it');
  const onPiece = (text) => post(Reply.CHUNK, id, { text });
  return unwrap(await awaitPy(host.run(id, mode, message, JSON.stringify(settings || {}), onPiece)));
}

async function unload() {
  if (!host) return null;
  const h = host;
  host = null;
  tokenizer = null;
  try { unwrap(await awaitPy(h.unload())); } finally { h.destroy(); }
  return null;
}

async function handle({ kind, id, content }) {
  switch (kind) {
    case Request.LOAD: return load(id, content);
    case Request.CHAT: case Request.INSTRUCT: case Request.GENERATE: return generate(id, kind, content);
    case Request.SET_SYSTEM_PROMPT: return call('set_system_prompt', [content.text ?? null]);
    case Request.CLEAR: return call('clear');
    case Request.HISTORY: return call('history');
    case Request.LOAD_HISTORY: return call('load_history', [content.messages]);
    case Request.INFO: return { ...call('info'), ...loadInfo };
    case Request.HEALTH: return call('health');
    case Request.ENCODE:
      if (!tokenizer) throw makeError('model_not_loaded', 'the model is not loaded yet: call load() and wait for it');
      return glue.encode(tokenizer, content.text);
    case Request.DECODE: return call('decode', [content.ids]);
    case Request.APPLY_CHAT_TEMPLATE: return call('apply_chat_template', [content.messages, content.addGenerationPrompt !== false]);
    case Request.UNLOAD: return unload();
    default: throw makeError('invalid_input', `unknown request kind ${kind}`);
  }
}

const IMMEDIATE = new Set([Request.CANCEL, Request.INFO, Request.HEALTH, Request.ENCODE, Request.DECODE]);
// Requests that replace the conversation: they cancel the chat replies ahead of them.
const RESETS = new Set([Request.CLEAR, Request.SET_SYSTEM_PROMPT, Request.LOAD_HISTORY]);

// Queued requests, in order: id -> {kind, started, cancelled}. An entry leaves when its
// request has answered.
const queued = new Map();

// -> true when the request was found and told to stop (false: unknown or already answered).
function cancel(target) {
  const entry = queued.get(target);
  if (!entry) return false;
  if (!entry.cancelled) {
    entry.cancelled = true;
    if (!entry.started) {
      post(Reply.THROW, target, abortError('aborted before it started: nothing changed').toJSON());
    } else if (host && STREAMING.has(entry.kind)) {
      host.cancel(target);
    }
  }
  return true;
}

self.onmessage = (event) => {
  const msg = event.data;
  const run = async () => {
    try {
      post(Reply.RETURN, msg.id, await handle(msg));
    } catch (e) {
      post(Reply.THROW, msg.id, toSmolChatError(e).toJSON());
    }
  };
  if (msg.kind === Request.CANCEL) {
    post(Reply.RETURN, msg.id, { cancelled: cancel(msg.content.target) });
    return;
  }
  if (IMMEDIATE.has(msg.kind)) { run(); return; }
  if (RESETS.has(msg.kind)) {
    for (const [id, entry] of queued) if (entry.kind === Request.CHAT) cancel(id);
  }
  if (msg.kind === Request.UNLOAD) {   // nothing ahead of an unload runs on
    for (const [id, entry] of queued) if (STREAMING.has(entry.kind)) cancel(id);
  }
  const entry = { kind: msg.kind, started: false, cancelled: false };
  queued.set(msg.id, entry);
  queue = queue.then(async () => {
    if (!entry.cancelled) {
      entry.started = true;
      await run();
    }
    queued.delete(msg.id);
  });
};
