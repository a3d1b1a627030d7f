// SmolChat JS API (served at /smolchat.js): SmolLM2-135M-Instruct chatting in the browser.
//
//   import { SmolChat } from '/smolchat.js';
//   const bot = await SmolChat.load({ bundleUrl: '/models/smollm2-135m-instruct-compact/',
//                                     onProgress: (p) => console.log(p.stage, p.percent) });
//   const reply = await bot.chat('What is the capital of France?', { onToken: (t) => ..., signal });
//   reply.text, reply.finish_reason, reply.timings.decode_tok_s
//
// Each instance owns one module Web Worker (worker.js) running Pyodide + ONNX Runtime Web and
// talks to it with protocol.js. Every call rejects with a SmolChatError (errors.js); an aborted
// call rejects with an error named "AbortError" whose .reply holds the partial reply.
//
// What this module ignores: the UI (app.js). The OpenAI-shaped surface, widget and caching
// (issue 5) build on this class.

import { Request, Reply, thrown } from './protocol.js';
import { SmolChatError, makeError, abortError, networkError } from './errors.js';
import { DEFAULT_STALL_MS } from './fetch_watch.js';
import { completions, webllmStats } from './openai.js';
import { toSettings, shown } from './options.js';

export { SmolChatError };

export { toSettings, shown };

export function defaultBundleUrl() {
  return new URL('./models/smollm2-135m-instruct-compact/', import.meta.url).href;
}

// A bundle id: the folder name under the site's models/ (py_runtime/smolchat/bundle_id.py has
// the same rule); compact and exact name the stock SmolLM2 bundles.
export const BUNDLE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const STOCK_BUNDLES = { compact: 'smollm2-135m-instruct-compact', exact: 'smollm2-135m-instruct-exact' };

// bundle id -> the URL of models/<id>/ next to `base` (default: next to smolchat.js), or
// InvalidSetting naming the rule (so an id can be neither a path nor a URL).
export function bundleIdUrl(id, base = import.meta.url) {
  if (typeof id !== 'string' || !BUNDLE_ID.test(id)) {
    throw makeError('invalid_setting', `invalid setting bundle=${shown(id)}: allowed a bundle id: 1-100 ` +
      `letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. my-lora), or compact / exact`,
    { field: 'bundle', value: shown(id) });
  }
  return new URL(`./models/${STOCK_BUNDLES[id] || id}/`, base).href;
}

// bundleUrl (relative to the page) -> its absolute URL, or InvalidSetting when it is on an
// origin other than the page's or SmolChat's own (where smolchat.js is served from) and not
// in `allowed` (a list of origins or URLs, or '*'). A link like index.html?bundle=https://x/
// would otherwise run someone else's model under this site's name.
export function checkBundleOrigin(bundleUrl, allowed) {
  const page = globalThis.location ? globalThis.location.href : import.meta.url;
  let url;
  try { url = new URL(bundleUrl, page); } catch {
    throw makeError('invalid_setting', `invalid setting bundleUrl=${shown(bundleUrl)}: allowed a URL`,
      { field: 'bundleUrl', value: shown(bundleUrl) });
  }
  const list = allowed == null ? [] : (Array.isArray(allowed) ? allowed : [allowed]);
  const origins = new Set([new URL(page).origin, new URL(import.meta.url).origin]);
  for (const a of list) {
    if (a === '*') return url.href;
    try { origins.add(new URL(String(a)).origin); } catch {
      throw makeError('invalid_setting', `invalid setting allowedOrigins=${shown(allowed)}: allowed a list of ` +
        "origins such as ['https://models.example.com'], or '*'", { field: 'allowedOrigins', value: shown(allowed) });
    }
  }
  if (!origins.has(url.origin)) {
    throw makeError('invalid_setting', `invalid setting bundleUrl=${JSON.stringify(url.href)}: allowed a bundle on ` +
      `${[...origins].join(' or ')}; to load bundles from ${url.origin}, the embedding page must list it ` +
      `(SmolChat.load({allowedOrigins: ['${url.origin}']}), widget: allowed-origins="${url.origin}")`,
    { field: 'bundleUrl', value: url.href, origin: url.origin });
  }
  return url.href;
}

// A module worker must have the page's origin. Imported from another origin (the widget on a
// third-party page), start a same-origin blob: worker whose only code imports ours; worker.js
// resolves its files from import.meta.url, so it runs the same either way.
function spawnWorker(url) {
  if (!globalThis.location || url.origin === globalThis.location.origin) return new Worker(url, { type: 'module' });
  const blobUrl = URL.createObjectURL(new Blob([`import ${JSON.stringify(url.href)};\n`], { type: 'text/javascript' }));
  try { return new Worker(blobUrl, { type: 'module' }); } finally { URL.revokeObjectURL(blobUrl); }
}

export class SmolChat {
  #worker;
  #nextId = 1;
  #pending = new Map(); // id -> {resolve, reject, onChunk, onProgress}
  #info = null;
  #heard = false;   // a message came from the worker: its scripts loaded
  #active = new Set();   // ids of the streaming requests running now (interruptGenerate)
  #message = '';         // the text of the newest reply, growing while it streams (getMessage)
  #lastReply = null;     // the newest finished reply (runtimeStatsText)

  constructor() {
    this.#worker = spawnWorker(new URL('./worker.js', import.meta.url));
    // bot.chat(message, opts) is the chat() method below; bot.chat.completions.create(body) is
    // the OpenAI-shaped surface (openai.js).
    const chat = (message, opts) => this.#stream(Request.CHAT, message, opts);
    chat.completions = completions(this);
    this.chat = chat;
    this.#worker.onmessage = (event) => this.#receive(event.data);
    this.#worker.onerror = (event) => {
      // Before the worker's first message, an error event means its module graph did not load
      // (worker.js or a vendor script it imports is missing): the deployment, not the model.
      const url = new URL('./worker.js', import.meta.url).href;
      const err = this.#heard
        ? makeError('internal', `the SmolChat worker failed: ${event.message || 'script error'}`)
        : makeError('site_incomplete', `the site is incomplete: the SmolChat worker (${url}) or a script it ` +
            `imports could not be loaded${event.message ? ` (${event.message})` : ''}; rebuild it with ./build.sh site`,
          { url });
      this.#failAll(err);
    };
  }

  // Create an instance and load the bundle. onProgress({stage, percent, loaded?, total?}),
  // stages: download, python, compile, warmup. threads: default 2 if crossOriginIsolated, else 1.
  // cache: false skips Cache Storage (bundle_cache.js); info() reports from_cache and cache.
  // heapKV: false keeps the KV cache in JS tensors instead of ORT's wasm heap (ort_heap.js;
  // info().kv_cache says which runs, kv_cache_note why not the heap). lmHead: false has ORT
  // compute the compact bundle's LM head instead of web/kernels/lm_head.c (lm_head.js;
  // info().lm_head, lm_head_note). expandKernel: false expands the int4 weights in JS instead of
  // web/kernels/expand.c (expand_kernel.js; info().expand, expand_note).
  // allowedOrigins: origins (or '*') a bundleUrl may come from besides the page's and
  // SmolChat's own (checkBundleOrigin). stallTimeoutMs: a download that gets no data for this
  // long ends in NetworkError (default 30000; fetch_watch.js).
  // bundle: a bundle id served next to smolchat.js (models/<id>/, bundleIdUrl); bundleUrl: a
  // bundle folder URL instead (give one of the two; neither: the compact bundle).
  static async load({ bundle, bundleUrl, onProgress, threads, systemPrompt, contextWindow, cache,
                      allowedOrigins, stallTimeoutMs, heapKV, lmHead, expandKernel } = {}) {
    if (bundle != null && bundleUrl != null) {
      throw makeError('invalid_setting', `invalid setting bundle=${shown(bundle)}: give bundle (an id) or ` +
        'bundleUrl (a URL), not both', { field: 'bundle', value: shown(bundle) });
    }
    bundleUrl = bundle != null ? bundleIdUrl(bundle) : (bundleUrl ?? defaultBundleUrl());
    if (onProgress != null && typeof onProgress !== 'function') {
      throw makeError('invalid_setting', `invalid setting onProgress=${shown(onProgress)}: allowed a function (progress) => void`,
        { field: 'onProgress', value: shown(onProgress) });
    }
    if (stallTimeoutMs != null && !(Number.isFinite(stallTimeoutMs) && stallTimeoutMs > 0)) {
      throw makeError('invalid_setting', `invalid setting stallTimeoutMs=${shown(stallTimeoutMs)}: allowed a number of ms > 0`,
        { field: 'stallTimeoutMs', value: shown(stallTimeoutMs) });
    }
    bundleUrl = checkBundleOrigin(bundleUrl, allowedOrigins);
    const bot = new SmolChat();
    // The worker's own scripts come by import, not fetch (fetch_watch.js cannot see them):
    // until its first message, the same stall limit applies to its start.
    const stall = stallTimeoutMs ?? DEFAULT_STALL_MS;
    const started = setTimeout(() => {
      if (!bot.#heard) {
        bot.#failAll(networkError(new URL('./worker.js', import.meta.url).href,
          `(the SmolChat worker and the scripts it imports) got no answer for ${stall / 1000} s`));
      }
    }, stall);
    try {
      bot.#info = await bot.#send(Request.LOAD, { bundleUrl, threads, systemPrompt, contextWindow, cache, stallTimeoutMs, heapKV, lmHead, expandKernel },
        { onProgress });
    } catch (e) {
      bot.#worker.terminate();
      throw e;
    } finally {
      clearTimeout(started);
    }
    return bot;
  }

  #failAll(err) {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  #receive({ kind, id, content }) {
    this.#heard = true;
    const p = this.#pending.get(id);
    if (!p) return;
    if (kind === Reply.PROGRESS) { if (p.onProgress) p.onProgress(content); return; }
    if (kind === Reply.CHUNK) { if (p.onChunk) p.onChunk(content.text); return; }
    this.#pending.delete(id);
    if (kind === Reply.RETURN) p.resolve(content);
    else p.reject(thrown(content));
  }

  #send(kind, content = {}, { onChunk, onProgress, id = this.#nextId++ } = {}) {
    if (!this.#worker) return Promise.reject(makeError('model_not_loaded', 'this SmolChat was unloaded: call SmolChat.load() again'));
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onChunk, onProgress });
      this.#worker.postMessage({ kind, id, content });
    });
  }

  async #stream(kind, message, opts = {}) {
    if (typeof message !== 'string') throw makeError('invalid_input', 'the message must be a string');
    const settings = toSettings(opts ?? {});
    const { signal, onToken } = opts ?? {};
    if (signal && signal.aborted) throw abortError();
    const id = this.#nextId++;
    const onAbort = () => { this.#send(Request.CANCEL, { target: id }).catch(() => {}); };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    this.#active.add(id);
    this.#message = '';
    const onChunk = (text) => { this.#message += text; if (onToken) onToken(text); };
    try {
      const reply = await this.#send(kind, { message, settings }, { onChunk, id });
      this.#lastReply = reply;
      this.#message = reply.text;
      if (signal && signal.aborted) {
        const err = abortError(`aborted after ${reply.completion_tokens} tokens`);
        err.reply = reply; // the partial reply (finish_reason "abort")
        throw err;
      }
      return reply;
    } finally {
      this.#active.delete(id);
      if (signal) signal.removeEventListener('abort', onAbort);
    }
  }

  // Chat turn with history. opts: maxTokens, temperature, topK, topP, repetitionPenalty, seed,
  // stop, onToken(text), signal. -> {text, finish_reason, prompt_tokens, completion_tokens,
  // prompt_token_ids, output_token_ids, timings: {ttft_ms, prefill_ms, decode_tok_s, total_ms},
  // profile: {ort_run_ms, interop_ms, sampling_ms, python_ms, steps} (decode steps, ms sums)}
  chat(message, opts) { return this.#stream(Request.CHAT, message, opts); }
  // One instruction, no history (the conversation is left as it was).
  instruct(instruction, opts) { return this.#stream(Request.INSTRUCT, instruction, opts); }
  // Raw continuation of a prompt, no chat template.
  generate(prompt, opts) { return this.#stream(Request.GENERATE, prompt, opts); }

  setSystemPrompt(text) { return this.#send(Request.SET_SYSTEM_PROMPT, { text }); }
  clearConversation() { return this.#send(Request.CLEAR); }
  getConversationHistory() { return this.#send(Request.HISTORY); }
  setConversationHistory(messages) { return this.#send(Request.LOAD_HISTORY, { messages }); }
  // Tokenizer, the engine's own (same ids as it feeds the model).
  encode(text) { return this.#send(Request.ENCODE, { text }); }
  decode(ids) { return this.#send(Request.DECODE, { ids }); }
  // messages -> prompt ids as chat() feeds them (the system prompt first when none is given).
  applyChatTemplate(messages, { addGenerationPrompt = true } = {}) {
    return this.#send(Request.APPLY_CHAT_TEMPLATE, { messages, addGenerationPrompt });
  }

  // WebLLM's engine method names.
  resetChat(keepStats = false) {
    if (!keepStats) this.#lastReply = null;
    this.#message = '';
    return this.clearConversation();
  }
  // Stop every reply running on this instance: it ends normally with finish_reason 'abort'
  // (the streams close; nothing throws), as WebLLM's interruptGenerate does.
  async interruptGenerate() {
    await Promise.all([...this.#active].map((target) => this.#send(Request.CANCEL, { target }).catch(() => {})));
  }
  // The newest reply's text so far (while it streams) or in full.
  async getMessage() { return this.#message; }
  // "prefill: 123.4 tokens/s, decoding: 21.5 tokens/s" of the newest reply.
  async runtimeStatsText() {
    if (!this.#lastReply) return 'no reply yet';
    const s = webllmStats(this.#lastReply);
    return `prefill: ${s.prefill_tokens_per_s.toFixed(1)} tokens/s, decoding: ${s.decode_tokens_per_s.toFixed(1)} tokens/s`;
  }
  info() { return this.#send(Request.INFO); }
  health() { return this.#send(Request.HEALTH); }
  // The info returned by load (load_ms, threads, ...), without a round trip.
  get loadInfo() { return this.#info; }

  async unload() {
    if (!this.#worker) return;
    try { await this.#send(Request.UNLOAD); } finally {
      this.#worker.terminate();
      this.#worker = null;
      const err = makeError('model_not_loaded', 'this SmolChat was unloaded');
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    }
  }
}

export default SmolChat;
