// The SmolChat module Web Worker: boots Pyodide with our smolchat wheel, loads the bundle into
// ONNX Runtime Web (WASM, threads when cross-origin isolated), builds the JS tokenizer, and
// answers the requests of protocol.js by calling smolchat.bridge.WorkerHost.
//
// Requests that change the conversation run one at a time (a queue); cancel, info, health and
// encode answer at once, so Stop works while a reply streams.
//
// What this module ignores: the UI and the public API (smolchat.js, app.js).

import * as ort from './vendor/ort/ort.wasm.min.mjs';
import { loadPyodide } from './vendor/pyodide/pyodide.mjs';
import { Tokenizer } from './vendor/tokenizers/tokenizers.min.mjs';
import * as glue from './ort_glue.js';
import { downloadBundle, createSession } from './bundle_loader.js';
import { Request, Reply, overallPercent } from './protocol.js';
import { makeError, toSmolChatError, errorFromWire } from './errors.js';

// Relative to this module, not self.location: started from another origin, the worker is a
// blob: URL that imports this file (smolchat.js spawnWorker), and blob: URLs have no base.
const here = (path) => new URL(path, import.meta.url).href;

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
    throw e;
  }
}

async function loadModel(id, { bundleUrl, threads, systemPrompt, contextWindow, cache }) {
  const t0 = performance.now();
  const isolated = self.crossOriginIsolated === true;
  const want = threads || (isolated ? 2 : 1);
  const numThreads = isolated ? want : 1;
  ort.env.wasm.wasmPaths = here('./vendor/ort/');
  ort.env.wasm.numThreads = numThreads;   // must be set before the first session
  ort.env.wasm.proxy = false;             // we already are in a worker
  const progress = (stage, fraction, extra = {}) => post(Reply.PROGRESS, id, {
    stage, percent: overallPercent(stage, fraction), ...extra });

  const url = new URL(bundleUrl, import.meta.url).href;
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
  tokenizer = new Tokenizer(JSON.parse(bundle.texts['tokenizer.json']), JSON.parse(bundle.texts['tokenizer_config.json']));
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
  const info = unwrap(await awaitPy(host.load(res, options)));
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
    case Request.CANCEL: return { cancelled: host ? host.cancel(content.target) : false };
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

self.onmessage = (event) => {
  const msg = event.data;
  const run = async () => {
    try {
      post(Reply.RETURN, msg.id, await handle(msg));
    } catch (e) {
      post(Reply.THROW, msg.id, toSmolChatError(e).toJSON());
    }
  };
  if (IMMEDIATE.has(msg.kind)) run();
  else queue = queue.then(run);
};
