// Bounded downloads for the worker: every fetch it makes (the bundle's files, Pyodide's wasm,
// stdlib and lock file, the smolchat wheel, ONNX Runtime's wasm) goes through watchedFetch,
// installed over self.fetch by worker.js, so that a load always ends:
//
// - no response headers, or no body bytes, for `stallMs` (default 30 s)  -> NetworkError
//   "the download of <url> stalled: no data for 30 s after N bytes ..."
// - the connection closed or failed mid-body                               -> NetworkError
//   "the download of <url> was cut after N bytes ..."
// - an HTTP error for a file of the site itself (anything under the site's base URL that is
//   not the bundle being loaded: vendor/, wheels/, site.json)              -> SiteIncomplete
//   "the site is incomplete: <url> is missing (HTTP 404); rebuild it with ./build.sh site"
//   (the response is still returned: the caller sees the 404 as well).
//
// NetworkError has details {url, retryable: true}: the site is fine, loading again may work.
// Pyodide and ONNX Runtime wrap a failed fetch in errors of their own (a Python traceback,
// "no available backend", an Emscripten abort), so the first fault of a load is kept here
// (`loadFault()`) and the load reports it instead of what came out of the library.
//
// The stall clock runs only while a read waits on the network: a consumer that reads slowly
// (backpressure) never trips it.
//
// What this module ignores: what the files are (bundle_loader.js), retrying (the caller
// loads again), fetches of other contexts (the page's own fetches are not watched).

import { SmolChatError, networkError, siteIncomplete } from './errors.js';

export const DEFAULT_STALL_MS = 30_000;

let nativeFetch = null;
let stallMs = DEFAULT_STALL_MS;
let siteBase = null;     // URL prefix of the site's own files
let bundleBase = null;   // URL prefix of the bundle being loaded (its 404s are BundleMissing)
let fault = null;        // the first NetworkError / SiteIncomplete since beginLoad()

function record(error) {
  if (!fault) fault = error;
  return error;
}

function urlOf(input) {
  if (typeof input === 'string') return input;
  if (input instanceof URL) return input.href;
  return (input && input.url) || String(input);
}

function seconds(ms) {
  return `${Math.round(ms / 100) / 10} s`;
}

function isSiteFile(url) {
  return !!siteBase && url.startsWith(siteBase) && !(bundleBase && url.startsWith(bundleBase));
}

// The body of `response` as a stream that errors with NetworkError on a stall or a cut
// (recorded as the load's fault unless the fetch was `optional`).
function watchedBody(url, response, abort, optional) {
  const reader = response.body.getReader();
  let received = 0;
  return new ReadableStream({
    async pull(controller) {
      let timer;
      const stalled = new Promise((_, reject) => {
        timer = setTimeout(() => reject(networkError(url,
          `stalled: no data for ${seconds(stallMs)} after ${received} bytes`, { received })), stallMs);
      });
      try {
        const { done, value } = await Promise.race([reader.read(), stalled]);
        if (done) controller.close();
        else { received += value.byteLength; controller.enqueue(value); }
      } catch (e) {
        const err = e instanceof SmolChatError ? e : networkError(url,
          `was cut after ${received} bytes (${(e && e.message) || e})`, { received });
        if (!optional) record(err);
        abort();
        reader.cancel().catch(() => {});
        controller.error(err);
      } finally {
        clearTimeout(timer);
      }
    },
    cancel(reason) { return reader.cancel(reason); },
  });
}

// init.optional: a file the load can do without (worker.js siteSnapshot): its failures are
// the caller's to handle and are not recorded as the load's fault.
export async function watchedFetch(input, init = undefined) {
  const url = urlOf(input);
  const optional = !!(init && init.optional);
  const controller = new AbortController();
  const outer = init && init.signal;
  if (outer) {
    if (outer.aborted) controller.abort(outer.reason);
    else outer.addEventListener('abort', () => controller.abort(outer.reason), { once: true });
  }
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; controller.abort(); }, stallMs);
  let response;
  try {
    response = await nativeFetch(input, { ...(init || {}), signal: controller.signal });
  } catch (e) {
    if (outer && outer.aborted) throw e;
    const err = timedOut
      ? networkError(url, `got no answer for ${seconds(stallMs)}`)
      : networkError(url, `failed (${(e && e.message) || e})`);
    throw optional ? err : record(err);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok && isSiteFile(url) && !optional) record(siteIncomplete(url, response.status));
  if (!response.body) return response;
  return new Response(watchedBody(url, response, () => controller.abort(), optional), {
    status: response.status, statusText: response.statusText, headers: response.headers,
  });
}

// Put watchedFetch in place of scope.fetch (once).
export function installFetchWatch(scope, { site } = {}) {
  if (!nativeFetch) {
    nativeFetch = scope.fetch.bind(scope);
    scope.fetch = watchedFetch;
  }
  if (site) siteBase = site;
}

// A load starts: forget earlier faults; stall limit in ms; the bundle's base URL.
export function beginLoad({ stall = DEFAULT_STALL_MS, bundle = null } = {}) {
  stallMs = stall;
  bundleBase = bundle;
  fault = null;
}

// The first NetworkError / SiteIncomplete since beginLoad(), or null.
export function loadFault() {
  return fault;
}
