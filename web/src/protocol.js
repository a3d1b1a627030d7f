// The one message protocol between the page (smolchat.js) and the worker (worker.js).
//
// Page -> worker: a request  {kind: <Request kind>, id: <int>, content: <object>}
// Worker -> page: a reply    {kind: 'progress' | 'chunk' | 'return' | 'throw', id, content}
//   progress: {stage, loaded, total, percent, message}   (load only, any number)
//   chunk:    {text}                                       (streamed pieces of a reply)
//   return:   <result>                                     (exactly one, ends the request)
//   throw:    {kind, name, message, details}               (exactly one, ends the request)
// The reply dict of chat/instruct/generate is the engine's Reply.to_dict() as is (text,
// finish_reason, token counts and ids, timings, profile: py_runtime/smolchat/engine.py).
// A 'cancel' request {target: <id>} stops the streaming request `target`; it gets its own
// 'return'. Ids are unique per page; the worker answers every request exactly once.
//
// What this module ignores: what the requests do (worker.js) and the public API (smolchat.js).

import { errorFromWire } from './errors.js';

export const Request = Object.freeze({
  LOAD: 'load',                           // {bundleUrl, threads} -> info
  CHAT: 'chat',                           // {message, settings} -> reply dict, streams chunks
  INSTRUCT: 'instruct',                   // {message, settings} -> reply dict, streams chunks
  GENERATE: 'generate',                   // {message, settings} -> reply dict, streams chunks
  CANCEL: 'cancel',                       // {target} -> {cancelled: bool}
  SET_SYSTEM_PROMPT: 'set_system_prompt', // {text|null} -> null (clears the chat)
  CLEAR: 'clear',                         // {} -> null
  HISTORY: 'history',                     // {} -> [{role, content}]
  LOAD_HISTORY: 'load_history',           // {messages} -> null
  INFO: 'info',                           // {} -> info dict
  HEALTH: 'health',                       // {} -> health dict
  ENCODE: 'encode',                       // {text} -> [ids] (the tokenizer the engine uses)
  DECODE: 'decode',                       // {ids} -> text (the engine's token bytes, UTF-8)
  APPLY_CHAT_TEMPLATE: 'apply_chat_template', // {messages, addGenerationPrompt} -> [ids]
  UNLOAD: 'unload',                       // {} -> null (releases sessions and tensors)
});

export const Reply = Object.freeze({
  PROGRESS: 'progress',
  CHUNK: 'chunk',
  RETURN: 'return',
  THROW: 'throw',
});

export const STREAMING = new Set([Request.CHAT, Request.INSTRUCT, Request.GENERATE]);

// Load stages, in order, with their share of the overall progress bar (sums to 100). Parts of a
// load run at the same time (worker.js: the bundle on a helper thread while Python boots), so
// each stage moves its own share and the bar is their sum. Shares follow a return visit's
// measured times (README "Load time"). A progress reply's `stage` is the first stage not
// finished and `message` says what the load is doing right then (e.g. "Expanding the int4
// weights to int8: 120 / 211 tensors").
export const STAGES = Object.freeze([
  { stage: 'download', share: 30, label: 'Downloading model' },
  { stage: 'python', share: 20, label: 'Starting Python' },
  { stage: 'compile', share: 40, label: 'Compiling model' },
  { stage: 'warmup', share: 10, label: 'Warming up' },
]);

// parts: {stage: {fraction}} (a missing stage counts 0) -> overall percent, 0..100.
export function overallPercent(parts) {
  let sum = 0;
  for (const s of STAGES) {
    const f = parts[s.stage] ? parts[s.stage].fraction : 0;
    sum += s.share * Math.max(0, Math.min(1, f));
  }
  return Math.min(100, sum);
}

export function request(kind, id, content = {}) {
  if (!Object.values(Request).includes(kind)) throw new TypeError(`unknown request kind ${kind}`);
  return { kind, id, content };
}

export function reply(kind, id, content) {
  return { kind, id, content };
}

// Page side: the error a 'throw' reply stands for.
export function thrown(content) {
  return errorFromWire(content);
}
