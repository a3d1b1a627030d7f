// Named errors of SmolChat in JS. Mirrors py_runtime/smolchat/errors.py: every error has a
// closed-set `kind`, a `name` equal to the Python class name, and a message that says what to
// do. An aborted call rejects with an error named "AbortError", like fetch().
//
// What this module ignores: how errors travel (protocol.js) and how they are shown (app.js).

export class SmolChatError extends Error {
  constructor(message, { kind = 'internal', name = 'SmolChatError', details = {} } = {}) {
    super(message);
    this.kind = kind;       // closed set, see KINDS
    this.name = name;       // e.g. "ContextWindowExceeded", "AbortError"
    this.details = details; // plain JSON object (field, value, allowed, ...)
  }
  toJSON() {
    return { kind: this.kind, name: this.name, message: this.message, details: this.details };
  }
}

// Same list as errors.py KINDS, plus "internal" for a bug (an unexpected exception).
export const KINDS = Object.freeze([
  'model_not_loaded', 'invalid_setting', 'context_window_exceeded', 'bundle_missing',
  'bundle_corrupt', 'kv_cache_mismatch', 'aborted', 'out_of_memory', 'storage_full',
  'invalid_input', 'network', 'site_incomplete', 'unsupported_template', 'internal',
]);

const NAMES = {
  model_not_loaded: 'ModelNotLoaded', invalid_setting: 'InvalidSetting',
  context_window_exceeded: 'ContextWindowExceeded', bundle_missing: 'BundleMissing',
  bundle_corrupt: 'BundleCorrupt', kv_cache_mismatch: 'KVCacheMismatch', aborted: 'AbortError',
  out_of_memory: 'OutOfMemory', storage_full: 'StorageFull', invalid_input: 'InvalidInput',
  network: 'NetworkError', site_incomplete: 'SiteIncomplete',
  unsupported_template: 'UnsupportedTemplate', internal: 'InternalError',
};

export function makeError(kind, message, details = {}) {
  const k = KINDS.includes(kind) ? kind : 'internal';
  return new SmolChatError(message, { kind: k, name: NAMES[k], details });
}

// A download that failed, stalled or was cut: the site is fine, try again (details.retryable).
export function networkError(url, why, details = {}) {
  return makeError('network', `the download of ${url} ${why}: check the connection and load again`,
    { url, retryable: true, ...details });
}

// A file of the site itself (Pyodide, ONNX Runtime, the smolchat wheel) is missing: the
// deployment is incomplete; no bundle rebuild fixes it.
export function siteIncomplete(url, status) {
  return makeError('site_incomplete', `the site is incomplete: ${url} is missing` +
    `${status ? ` (HTTP ${status})` : ''}; rebuild it with ./build.sh site`, { url, status: status ?? null });
}

export function abortError(message = 'the request was aborted') {
  return makeError('aborted', message);
}

// Any thrown value -> SmolChatError. Runtime failures are classified by their text because
// ORT Web and Emscripten throw plain Errors/strings ("Aborted(OOM)", "Array buffer
// allocation failed", "Cannot enlarge memory").
export function toSmolChatError(e) {
  if (e instanceof SmolChatError) return e;
  if (e && e.name === 'AbortError') return abortError(e.message);
  const text = String((e && (e.message || e)) || 'unknown error');
  if (/out of memory|\bOOM\b|allocation failed|cannot enlarge memory|memory access out of bounds/i.test(text)) {
    return makeError('out_of_memory',
      'the browser ran out of memory while running the model: close other tabs and reload the page',
      { cause: text });
  }
  if (/QuotaExceeded/i.test(text)) {
    return makeError('storage_full', 'browser storage is full: free some space or run without caching',
      { cause: text });
  }
  return makeError('internal', text);
}

// Wire form <-> error. The wire form is what Python's SmolChatError.to_dict() returns.
export function errorFromWire(w) {
  const e = makeError(w.kind, w.message, w.details || {});
  if (w.name && e.kind !== 'aborted' && e.kind !== 'internal') e.name = w.name;
  return e;
}
