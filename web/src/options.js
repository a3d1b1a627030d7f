// Options of a reply (chat/instruct/generate and the OpenAI body) checked in JS before they
// cross to the worker: postMessage would turn NaN and Infinity into null ("unset"), refuse a
// BigInt or an object with valueOf (DataCloneError) or carry a string where a number is due.
// Errors are InvalidSetting with the value as the caller wrote it (NaN, 10n, "0.5"); ranges
// are the engine's to check (py_runtime/smolchat/settings.py, same wording).
//
// What this module ignores: what the settings do, their ranges (settings.py).

import { makeError } from './errors.js';

// JS option name -> engine setting name.
export const OPTIONS = {
  maxTokens: 'max_tokens', temperature: 'temperature', topK: 'top_k', topP: 'top_p',
  repetitionPenalty: 'repetition_penalty', seed: 'seed', stop: 'stop',
  repetitionStop: 'repetition_stop',
  frequencyPenalty: 'frequency_penalty', presencePenalty: 'presence_penalty', logprobs: 'logprobs',
  topLogprobs: 'top_logprobs',
};
// engine setting -> [JS type check, the allowed text of settings.py's InvalidSetting]
export const KINDS_OF = {
  max_tokens: ['integer', 'an integer in [1, 8192]'],
  temperature: ['number', 'a number in [0.0, 2.0]'],
  top_k: ['integer', 'an integer in [1, 200]'],
  top_p: ['number', 'a number in (0.0, 1.0]'],
  repetition_penalty: ['number', 'a number in [1.0, 2.0]'],
  seed: ['integer or null', 'an integer in [0, 4294967295], or null for a fresh seed'],
  stop: ['strings', 'a string or a list of at most 8 strings of 1 to 64 characters'],
  repetition_stop: ['boolean', 'true or false'],
  frequency_penalty: ['number', 'a number in [-2.0, 2.0]'],
  presence_penalty: ['number', 'a number in [-2.0, 2.0]'],
  logprobs: ['boolean', 'true or false'],
  top_logprobs: ['integer', 'an integer in [0, 20]'],
};

// A value as the caller wrote it: NaN, Infinity, 10n, "0.5", [object Object].
export function shown(value) {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'number') return Object.is(value, -0) ? '-0' : String(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`;
  if (value === null || value === undefined || typeof value !== 'object') return String(value);
  if (Array.isArray(value)) return `[${value.map(shown).join(', ')}]`;
  try {
    const text = JSON.stringify(value);
    if (text && Object.getPrototypeOf(value) === Object.prototype) return text;
  } catch { /* cycles, BigInt inside */ }
  return Object.prototype.toString.call(value);
}

export function invalid(option, value, allowed) {
  return makeError('invalid_setting', `invalid setting ${option}=${shown(value)}: allowed ${allowed}`,
    { field: option, value: shown(value), allowed });
}

export function fits(kind, value) {
  switch (kind) {
    case 'integer': return Number.isSafeInteger(value);
    case 'integer or null': return value === null || Number.isSafeInteger(value);
    case 'number': return typeof value === 'number' && Number.isFinite(value);
    case 'boolean': return typeof value === 'boolean';
    case 'strings': return value === null || typeof value === 'string'
      || (Array.isArray(value) && value.every((v) => typeof v === 'string'));
    default: return false;
  }
}

// opts -> the engine's settings dict. Throws InvalidSetting (unknown option, a value of the
// wrong JS type, a callback that is not a function, a signal that is not an AbortSignal).
export function toSettings(opts = {}) {
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) {
    throw invalid('options', opts, `an object {${Object.keys(OPTIONS).join(', ')}, onToken, signal}`);
  }
  const settings = {};
  for (const [key, value] of Object.entries(opts)) {
    if (value === undefined) continue;
    if (key === 'onToken') {
      if (value !== null && typeof value !== 'function') throw invalid(key, value, 'a function (text) => void');
      continue;
    }
    if (key === 'signal') {
      if (value !== null && !(typeof AbortSignal !== 'undefined' && value instanceof AbortSignal)) {
        throw invalid(key, value, 'an AbortSignal (new AbortController().signal)');
      }
      continue;
    }
    const name = OPTIONS[key];
    if (!name) {
      throw makeError('invalid_setting', `unknown option ${key}: allowed ${Object.keys(OPTIONS).join(', ')}, onToken, signal`,
        { field: key });
    }
    const [kind, allowed] = KINDS_OF[name];
    if (!fits(kind, value)) throw invalid(key, value, allowed);
    settings[name] = value;
  }
  return settings;
}

// One OpenAI body field (openai.js): its value checked as the option it maps to, named as the
// body names it (max_tokens=NaN).
export function checkField(field, option, value) {
  const [kind, allowed] = KINDS_OF[OPTIONS[option]];
  if (!fits(kind, value)) throw invalid(field, value, allowed);
  return value;
}
