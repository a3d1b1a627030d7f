// The OpenAI-shaped surface of a SmolChat instance: bot.chat.completions.create(body[, {signal}])
// takes an OpenAI Chat Completions request and returns OpenAI's shapes, so code written for
// the OpenAI client or WebLLM (`engine.chat.completions.create`) moves over by changing the
// line that makes the client:
//
//   const completion = await bot.chat.completions.create({ messages, max_tokens: 64 });
//   completion.choices[0].message.content, completion.usage.total_tokens
//
//   const stream = await bot.chat.completions.create({ messages, stream: true });
//   for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
//
// `messages` drives the instance's conversation (it is stateful; the request is not): a
// leading system (or developer) message becomes the system prompt (none: the model's default),
// the turns before the last become the history (setConversationHistory), the last, a user
// message, is sent with chat(). Afterwards the instance holds messages + the reply, so the
// next request that extends them reuses the KV cache. Requests on one instance run one at
// a time, in call order.
//
// Body fields: messages, model (any string, ignored: an instance runs one model; responses
// name the bundle id), stream, stream_options {include_usage}, n (only 1), max_tokens /
// max_completion_tokens, temperature, top_p, stop, seed, frequency_penalty, presence_penalty
// (OpenAI's definitions, over the tokens generated so far), logprobs, top_logprobs (0-20),
// user (ignored), response_format (only {type: 'text'}), plus top_k and repetition_penalty
// (WebLLM has them too). null means "not set". Any other field is an InvalidSetting error;
// value ranges are checked by the engine (InvalidSetting names the field and its range).
// logprobs: choices[0].logprobs = {content: [{token, logprob, bytes, token_id, top_logprobs}]}
// (log-softmax over the whole vocabulary of the logits after the penalties, before
// temperature/top-k/top-p); when streaming, all of them come on the finishing chunk.
// usage.extra: WebLLM's names (time_to_first_token_s, decode_tokens_per_s,
// prefill_tokens_per_s, time_per_output_token_s, e2e_latency_s) and SmolChat's (ttft_ms, ...).
//
// finish_reason: engine 'stop' (end-of-turn token or a stop string) -> 'stop'; 'length'
// (max_tokens) -> 'length'; 'context' (the context window filled mid-reply) -> 'length', as
// OpenAI reports a reply cut by the model's window; 'repetition' (the reply started looping and
// was ended early, engine.py) -> 'stop', OpenAI having no such value (usage.extra.finish_reason
// keeps the engine's); 'abort' -> 'abort' (WebLLM's value), seen
// only when the reply was cancelled by something other than this request's signal (e.g.
// setSystemPrompt while it ran). Aborting through the request's signal (or, when streaming,
// stream.controller.abort()) rejects / throws an error named 'AbortError' whose .reply is the
// partial SmolChat reply and .completion the partial ChatCompletion (finish_reason 'abort');
// the streamed chunks already delivered stay delivered.
//
// Streaming: create() resolves, once the reply has started (first text, or the end), to an
// async iterable of 'chat.completion.chunk' objects: first delta {role: 'assistant', content:
// ''}, then one {content} per streamed piece, then {} with finish_reason and `usage`; with
// stream_options.include_usage an extra last chunk with `choices: []` and `usage`, as OpenAI
// sends it. Leaving the for-await loop early cancels the reply. `stream.controller` is an
// AbortController, as on the OpenAI client's Stream.
//
// What this module ignores: how a reply is produced (smolchat.js, the engine).

import { makeError, abortError } from './errors.js';
import { checkField } from './options.js';

// OpenAI body field -> SmolChat option name (smolchat.js OPTIONS).
const SETTINGS = {
  max_tokens: 'maxTokens', max_completion_tokens: 'maxTokens', temperature: 'temperature',
  top_p: 'topP', stop: 'stop', seed: 'seed', top_k: 'topK', repetition_penalty: 'repetitionPenalty',
  frequency_penalty: 'frequencyPenalty', presence_penalty: 'presencePenalty', logprobs: 'logprobs',
  top_logprobs: 'topLogprobs',
};
const FIELDS = ['messages', 'model', 'stream', 'stream_options', 'n', 'user', 'response_format',
  ...Object.keys(SETTINGS)];

export const FINISH_REASONS = Object.freeze({ stop: 'stop', length: 'length', context: 'length', abort: 'abort',
  repetition: 'stop' });

function invalidSetting(field, value, allowed) {
  let shown;
  try { shown = JSON.stringify(value); } catch { shown = String(value); }
  return makeError('invalid_setting', `invalid setting ${field}=${shown}: allowed ${allowed}`,
    { field, value: shown, allowed });
}

function invalidInput(message, details = {}) {
  return makeError('invalid_input', message, details);
}

// OpenAI content: a string, or an array of parts of which only {type: 'text', text} fit here.
function textOf(content, i) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content) && content.every((p) => p && p.type === 'text' && typeof p.text === 'string')) {
    return content.map((p) => p.text).join('');
  }
  throw invalidInput(`messages[${i}].content must be a string or an array of {type: 'text', text} ` +
    'parts: SmolLM2 reads text only', { index: i });
}

// body -> {system, history, message, options, stream, includeUsage}
export function parseRequest(body) {
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw invalidInput('create() takes one object: {messages: [{role, content}, ...], ...}');
  }
  for (const key of Object.keys(body)) {
    if (!FIELDS.includes(key)) throw invalidSetting(key, body[key], `one of ${FIELDS.join(', ')}`);
  }
  const { messages } = body;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw invalidInput('messages must be a non-empty array of {role, content}, the last from the user');
  }
  const clean = messages.map((m, i) => {
    if (!m || typeof m !== 'object') throw invalidInput(`messages[${i}] must be an object {role, content}`, { index: i });
    const role = m.role === 'developer' ? 'system' : m.role;
    if (!['system', 'user', 'assistant'].includes(role)) {
      throw invalidInput(`messages[${i}].role is ${JSON.stringify(m.role)}: use system, user or assistant`, { index: i });
    }
    return { role, content: textOf(m.content, i) };
  });
  const system = clean[0].role === 'system' ? clean.shift().content : null;
  const later = clean.findIndex((m) => m.role === 'system');
  if (later >= 0) {
    throw invalidInput('only the first message may be a system message: merge the system messages ' +
      'into messages[0]', { index: later + (system === null ? 0 : 1) });
  }
  const last = clean.pop();
  if (!last || last.role !== 'user') {
    throw invalidInput('the last message must be from the user: it is the one the model answers');
  }
  // The turns before the last are whole exchanges (ChatEngine.load_history's rule), checked
  // here so a bad body is refused before the instance's conversation is touched.
  const offset = system === null ? 0 : 1;
  clean.forEach((msg, i) => {
    const want = i % 2 === 0 ? 'user' : 'assistant';
    if (msg.role !== want) {
      throw invalidInput(`messages[${i + offset}].role is ${msg.role} where ${want} was expected: ` +
        'messages are an optional system message, then user/assistant pairs, then the user ' +
        'message to answer', { index: i + offset });
    }
  });
  if (clean.length % 2) {
    throw invalidInput(`messages[${clean.length - 1 + offset}] (user) has no assistant reply after it: ` +
      'merge it into the last user message or add the reply', { index: clean.length - 1 + offset });
  }
  if (body.model != null && typeof body.model !== 'string') throw invalidSetting('model', body.model, 'a string (ignored)');
  if (body.n != null && body.n !== 1) throw invalidSetting('n', body.n, '1 (one choice per request)');
  if (body.user != null && typeof body.user !== 'string') throw invalidSetting('user', body.user, 'a string (ignored)');
  if (body.response_format != null) {
    const rf = body.response_format;
    if (!rf || typeof rf !== 'object' || rf.type !== 'text' || Object.keys(rf).length !== 1) {
      throw invalidSetting('response_format', rf, "{type: 'text'} (JSON mode and JSON schemas are not supported)");
    }
  }
  if (body.stream != null && typeof body.stream !== 'boolean') throw invalidSetting('stream', body.stream, 'true or false');
  const stream = body.stream === true;
  let includeUsage = false;
  if (body.stream_options != null) {
    const so = body.stream_options;
    const keys = so && typeof so === 'object' ? Object.keys(so) : null;
    if (!stream || !keys || keys.some((k) => k !== 'include_usage')
        || (so.include_usage != null && typeof so.include_usage !== 'boolean')) {
      throw invalidSetting('stream_options', so, '{include_usage: true|false}, with stream: true');
    }
    includeUsage = so.include_usage === true;
  }
  const options = {};
  for (const [field, option] of Object.entries(SETTINGS)) {
    if (body[field] == null) continue;
    if (option in options) throw invalidSetting(field, body[field], 'max_tokens or max_completion_tokens, not both');
    options[option] = checkField(field, option, body[field]);   // NaN, 10n, '0.5' ... named as sent
  }
  return { system, history: clean, message: last.content, options, stream, includeUsage };
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return 'chatcmpl-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// WebLLM's usage.extra names (seconds, tokens/s) beside SmolChat's own (ttft_ms, prefill_ms,
// decode_tok_s, total_ms), which stay as aliases. Prefill counts only the prompt tokens that
// were forwarded (not those reused from the KV cache).
export function webllmStats(reply) {
  const t = reply.timings || {};
  const prefilled = Math.max(0, reply.prompt_tokens - (reply.cached_prompt_tokens || 0));
  const decodeS = Math.max(0, (t.total_ms - t.ttft_ms) / 1000);
  return {
    e2e_latency_s: t.total_ms / 1000,
    time_to_first_token_s: t.ttft_ms / 1000,
    time_per_output_token_s: reply.completion_tokens > 1 ? decodeS / (reply.completion_tokens - 1) : 0,
    prefill_tokens_per_s: t.prefill_ms > 0 ? prefilled / (t.prefill_ms / 1000) : 0,
    decode_tokens_per_s: t.decode_tok_s || 0,
  };
}

function usageOf(reply) {
  return {
    prompt_tokens: reply.prompt_tokens,
    completion_tokens: reply.completion_tokens,
    total_tokens: reply.prompt_tokens + reply.completion_tokens,
    prompt_tokens_details: { cached_tokens: reply.cached_prompt_tokens || 0 },
    // WebLLM's names, SmolChat's timings (ms, tokens/s) and its own finish_reason (e.g. 'repetition')
    extra: { ...webllmStats(reply), ...reply.timings, seed: reply.seed, finish_reason: reply.finish_reason },
  };
}

// The engine's Reply.logprobs -> OpenAI's choice.logprobs ({content: [...]}, or null).
function logprobsOf(reply) {
  if (!Array.isArray(reply.logprobs)) return null;
  const entry = (e) => ({ token: e.token, logprob: e.logprob, bytes: e.bytes, token_id: e.token_id });
  return { content: reply.logprobs.map((e) => ({ ...entry(e), top_logprobs: (e.top_logprobs || []).map(entry) })) };
}

function finishReason(reply) {
  return FINISH_REASONS[reply.finish_reason] || reply.finish_reason;
}

export function completionFromReply(reply, meta) {
  return {
    id: meta.id, object: 'chat.completion', created: meta.created, model: meta.model,
    system_fingerprint: meta.fingerprint,
    choices: [{ index: 0, message: { role: 'assistant', content: reply.text }, logprobs: logprobsOf(reply),
                finish_reason: finishReason(reply) }],
    usage: usageOf(reply),
  };
}

function chunk(meta, delta, finish = null, extra = {}) {
  return {
    id: meta.id, object: 'chat.completion.chunk', created: meta.created, model: meta.model,
    system_fingerprint: meta.fingerprint,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...extra,
  };
}

// An async iterable of chunks: `first` (the role chunk), then what push() adds until end() or
// fail(). `started` settles at the first push or at the end.
class ChunkStream {
  #items;
  #wake = null;
  #done = false;
  #error = null;
  #startedResolve;
  #startedReject;
  #finished = false;

  constructor(controller, first) {
    this.controller = controller;
    this.#items = [first];
    this.started = new Promise((resolve, reject) => { this.#startedResolve = resolve; this.#startedReject = reject; });
    this.started.catch(() => {});
  }

  push(item) { this.#items.push(item); this.#startedResolve(); this.#poke(); }
  end() { this.#done = true; this.#startedResolve(); this.#poke(); }
  fail(error) { this.#error = error; this.#done = true; this.#startedReject(error); this.#poke(); }
  #poke() { if (this.#wake) { const w = this.#wake; this.#wake = null; w(); } }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        if (this.#items.length) { yield this.#items.shift(); continue; }
        if (this.#done) {
          if (this.#error) throw this.#error;
          this.#finished = true;
          return;
        }
        await new Promise((resolve) => { this.#wake = resolve; });
      }
    } finally {
      if (!this.#finished && !this.#error) this.controller.abort(); // the consumer left early
    }
  }
}

// -> {create(body, {signal}?)}, attached by smolchat.js as bot.chat.completions.
export function completions(bot) {
  let queue = Promise.resolve();   // requests on one instance run in call order

  function meta() {
    const info = bot.loadInfo || {};
    return {
      id: newId(), created: Math.floor(Date.now() / 1000),
      model: info.bundle_id || 'SmolLM2-135M-Instruct',
      fingerprint: info.bundle_hash ? `fp_${String(info.bundle_hash).slice(0, 12)}` : null,
    };
  }

  function abortWithPartial(err, m) {
    if (err && err.name === 'AbortError' && err.reply) {
      err.completion = completionFromReply(err.reply, m);
      err.completion.choices[0].finish_reason = 'abort';
    }
    return err;
  }

  // A request the engine rejects before generating (bad setting, bad history, context too
  // small) leaves the conversation (history and system prompt) as it was before the request:
  // bad input loses nothing. `before` is getConversationHistory(): it starts with the system
  // message when a custom system prompt is set.
  async function restoring(before, e) {
    if (!e || e.name === 'AbortError') return e;
    try {
      await bot.setSystemPrompt(null);
      await bot.setConversationHistory(before);
    } catch { /* the original error is the one to report */ }
    return e;
  }

  async function run(req, signal, m) {
    if (signal && signal.aborted) throw abortError();
    const before = await bot.getConversationHistory();
    try {
      await bot.setSystemPrompt(req.system);
      await bot.setConversationHistory(req.history);
    } catch (e) { throw await restoring(before, e); }
    if (!req.stream) {
      try {
        return completionFromReply(await bot.chat(req.message, { ...req.options, signal }), m);
      } catch (e) { throw abortWithPartial(await restoring(before, e), m); }
    }
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    if (signal && signal.aborted) controller.abort();   // aborted while the conversation was set
    const stream = new ChunkStream(controller, chunk(m, { role: 'assistant', content: '' }));
    const finished = bot.chat(req.message, {
      ...req.options, signal: controller.signal,
      onToken: (text) => { if (text) stream.push(chunk(m, { content: text })); },
    }).then((reply) => {
      const usage = usageOf(reply);
      const last = chunk(m, {}, finishReason(reply), { usage });
      last.choices[0].logprobs = logprobsOf(reply);   // every token's, on the finishing chunk
      stream.push(last);
      if (req.includeUsage) stream.push({ ...chunk(m, {}), choices: [], usage });
      stream.end();
    }, (e) => stream.fail(abortWithPartial(e, m)))
      .finally(() => { if (signal) signal.removeEventListener('abort', onAbort); });
    try {
      await stream.started; // an error before the first text (bad setting, abort) rejects create()
    } catch (e) { throw await restoring(before, e); }
    return { stream, finished };
  }

  async function create(body, { signal } = {}) {
    const req = parseRequest(body);
    const m = meta();
    const previous = queue;
    let release;
    queue = new Promise((resolve) => { release = resolve; });
    await previous;
    let result;
    try {
      result = await run(req, signal, m);
    } catch (e) {
      release();
      throw e;
    }
    if (!req.stream) { release(); return result; }
    result.finished.finally(release);
    return result.stream;
  }

  return { create };
}
