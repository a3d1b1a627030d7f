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
import { SmolChatError, makeError, abortError } from './errors.js';
import { completions, webllmStats } from './openai.js';

export { SmolChatError };

// JS option name -> engine setting name. Values are validated by the engine (bounds, types).
const OPTIONS = {
  maxTokens: 'max_tokens', temperature: 'temperature', topK: 'top_k', topP: 'top_p',
  repetitionPenalty: 'repetition_penalty', seed: 'seed', stop: 'stop',
  frequencyPenalty: 'frequency_penalty', presencePenalty: 'presence_penalty', logprobs: 'logprobs',
  topLogprobs: 'top_logprobs',
};

export function toSettings(opts = {}) {
  const settings = {};
  for (const [key, value] of Object.entries(opts)) {
    if (key === 'onToken' || key === 'signal' || value === undefined) continue;
    const name = OPTIONS[key];
    if (!name) {
      throw makeError('invalid_setting', `unknown option ${key}: allowed ${Object.keys(OPTIONS).join(', ')}, onToken, signal`,
        { field: key });
    }
    settings[name] = value;
  }
  return settings;
}

export function defaultBundleUrl() {
  return new URL('./models/smollm2-135m-instruct-compact/', import.meta.url).href;
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
      const err = makeError('internal', `the SmolChat worker failed: ${event.message || 'script error'}`);
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    };
  }

  // Create an instance and load the bundle. onProgress({stage, percent, loaded?, total?}),
  // stages: download, python, compile, warmup. threads: default 2 if crossOriginIsolated, else 1.
  // cache: false skips Cache Storage (bundle_cache.js); info() reports from_cache and cache.
  static async load({ bundleUrl = defaultBundleUrl(), onProgress, threads, systemPrompt, contextWindow, cache } = {}) {
    const bot = new SmolChat();
    try {
      bundleUrl = new URL(bundleUrl, globalThis.location.href).href; // relative to the page
      bot.#info = await bot.#send(Request.LOAD, { bundleUrl, threads, systemPrompt, contextWindow, cache }, { onProgress });
    } catch (e) {
      bot.#worker.terminate();
      throw e;
    }
    return bot;
  }

  #receive({ kind, id, content }) {
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
    const { signal, onToken } = opts;
    const settings = toSettings(opts);
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
