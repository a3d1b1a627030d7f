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
import { loadPyodide } from './vendor/pyodide/pyodide.mjs';
import { Tokenizer } from './vendor/tokenizers/tokenizers.min.mjs';
import * as glue from './ort_glue.js';
import { downloadBundle, createSession } from './bundle_loader.js';
import { Request, Reply, STREAMING, overallPercent } from './protocol.js';
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

let site = null;
async function siteInfo() {
  if (!site) site = await (await fetch(here('./site.json'))).json();
  return site;
}

async function bootPython(progress) {
  progress('python', 0);
  const info = await siteInfo();
  const pyodide = await loadPyodide({ indexURL: here('./vendor/pyodide/'), stdout: () => {}, stderr: (s) => console.warn(s) });
  progress('python', 0.6);
  await pyodide.loadPackage(here(info.wheel), { messageCallback: () => {} });
  const bridge = pyodide.pyimport('smolchat.bridge');
  const h = bridge.WorkerHost();
  bridge.destroy();
  progress('python', 1);
  return { pyodide, host: h };
}

async function load(id, content) {
  if (host) throw makeError('invalid_input', 'a model is already loaded: call unload() first');
  try {
    return await loadModel(id, content);
  } catch (e) {
    if (host) { host.destroy(); host = null; }
    tokenizer = null;
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

async function loadModel(id, { bundleUrl, threads, systemPrompt, contextWindow, cache, stallTimeoutMs }) {
  const t0 = performance.now();
  const isolated = self.crossOriginIsolated === true;
  const want = threads || (isolated ? 2 : 1);
  const numThreads = isolated ? want : 1;
  ort.env.wasm.wasmPaths = here('./vendor/ort/');
  ort.env.wasm.numThreads = numThreads;   // must be set before the first session
  ort.env.wasm.proxy = false;             // we already are in a worker
  const progress = (stage, fraction, extra = {}) => post(Reply.PROGRESS, id, {
    stage, percent: overallPercent(stage, fraction), ...extra });

  progress('download', 0, { loaded: 0, total: 0 });   // the first message: this worker's scripts loaded (smolchat.js waits for it)
  const url = new URL(bundleUrl, import.meta.url).href;
  beginLoad({ stall: stallTimeoutMs, bundle: url.endsWith('/') ? url : url + '/' });
  // Python boots while the bundle downloads; its progress shows once the download is done,
  // so the bar never jumps between stages.
  let downloading = true;
  let pythonFraction = 0;
  const python = bootPython((stage, f) => { pythonFraction = f; if (!downloading) progress(stage, f); });
  python.catch(() => {});
  const bundle = await downloadBundle(url, ({ loaded, total }) =>
    progress('download', total ? loaded / total : 0, { loaded, total }), { cache: cache !== false });
  downloading = false;
  const downloadMs = performance.now() - t0;
  progress('python', pythonFraction);
  tokenizer = makeTokenizer(bundle.texts, url);
  const { pyodide } = await python.then((r) => { host = r.host; return r; });
  progress('compile', 0);
  const t1 = performance.now();
  const session = await createSession(ort, bundle);
  const compileMs = performance.now() - t1;
  progress('compile', 1);
  const res = {
    session, tokenizer, glue, bundleUrl: url, threads: ort.env.wasm.numThreads,
    crossOriginIsolated: isolated,
    versions: { ort: ort.env.versions.web, pyodide: pyodide.version },
    texts: {
      manifest: bundle.texts.manifest, tokenizer_json: bundle.texts['tokenizer.json'],
      tokenizer_config: bundle.texts['tokenizer_config.json'], config: bundle.texts['config.json'],
      generation_config: bundle.texts['generation_config.json'],
    },
  };
  const options = JSON.stringify({ system_prompt: systemPrompt ?? null, context_window: contextWindow ?? 2048 });
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
  progress('warmup', 0);
  const t2 = performance.now();
  unwrap(await awaitPy(host.warmup()));
  progress('warmup', 1);
  loadInfo = {
    load_ms: Math.round(performance.now() - t0), download_ms: Math.round(downloadMs),
    compile_ms: Math.round(compileMs), warmup_ms: Math.round(performance.now() - t2),
    download_bytes: bundle.total,
    ...bundle.cache, // from_cache, cache ('hit' | 'miss' | 'disabled: <reason>'), cache_name, network_bytes
  };
  return { ...info, ...loadInfo };
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
    case Request.UNLOAD: return unload();
    default: throw makeError('invalid_input', `unknown request kind ${kind}`);
  }
}

const IMMEDIATE = new Set([Request.CANCEL, Request.INFO, Request.HEALTH, Request.ENCODE]);
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
