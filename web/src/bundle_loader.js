// Fetch a model bundle (README "Bundle format") from our origin with byte progress, check
// every file against manifest.json (bytes + sha256), expand weights.bin into the graph's
// external data (runtime_form.js, owned by the bundle build) and create the ORT Web session.
//
// Files come through bundle_cache.js (Cache Storage: a later load reads them back).
//
// What this module ignores: Python, the tokenizer's use, how the cache stores and versions files.

import { SmolChatError, makeError, toSmolChatError } from './errors.js';
import { openBundleCache } from './bundle_cache.js';

// The files the browser needs; model.data is never shipped (built in memory).
const TEXT_FILES = ['tokenizer.json', 'tokenizer_config.json', 'config.json', 'generation_config.json'];

// manifest.files: {name: {bytes, sha256}}.
export function fileEntries(manifest) {
  return manifest.files || {};
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function fetchOrMissing(url, init = undefined) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    if (e instanceof SmolChatError) throw e;   // NetworkError from fetch_watch.js (in the worker)
    throw makeError('bundle_missing', `could not fetch ${url} (${e.message}): is the server running?`, { url });
  }
  if (!response.ok) {
    throw makeError('bundle_missing',
      `the model bundle file ${url} is missing (HTTP ${response.status}): build the bundle with ` +
      `./build.sh bundle, then rebuild the site with ./build.sh site`, { url, status: response.status });
  }
  return response;
}

// Read a response body into one Uint8Array, calling onBytes(n) per chunk.
async function readAll(response, expected, onBytes) {
  const reader = response.body.getReader();
  let buffer = new Uint8Array(expected || Number(response.headers.get('Content-Length')) || 1 << 20);
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (length + value.length > buffer.length) {
      const bigger = new Uint8Array(Math.max(buffer.length * 2, length + value.length));
      bigger.set(buffer.subarray(0, length));
      buffer = bigger;
    }
    buffer.set(value, length);
    length += value.length;
    onBytes(value.length);
  }
  return length === buffer.length ? buffer : buffer.slice(0, length);
}

// -> {manifest, texts: {name: string}, graph: Uint8Array, form: Promise<Uint8Array>, total,
// keepForm(form) -> Promise, report() -> Promise<cache report>}. `form` is the download form
// (weights.bin inflated, runtime_form.js downloadForm), started here so that inflating overlaps
// what the caller does next (Python's boot); weights.bin's own bytes are dropped once inflated.
// A failed inflate rejects `form` (createSession reports it). A later visit reads the inflated
// form itself from Cache Storage when keepForm stored it (bundle_cache.js derived entries: no
// inflate, README "Load time"); keepForm's promise says when the store has read `form` (free it
// after, and let it settle before the worker ends, on failures too). report() once everything
// is read: bundle_cache.js's {from_cache, cache, ...}.
export async function downloadBundle(bundleUrl, onProgress, { cache = true } = {}) {
  const base = bundleUrl.endsWith('/') ? bundleUrl : bundleUrl + '/';
  const manifestText = await (await fetchOrMissing(base + 'manifest.json', { cache: 'no-store' })).text();
  // no-store: the manifest decides whether the cached bundle is current, so it is never stale
  let manifest;
  try { manifest = JSON.parse(manifestText); } catch (e) {
    throw makeError('bundle_corrupt', `${base}manifest.json is not valid JSON: rebuild the bundle`);
  }
  const { downloadForm, inflatedBytes, freeBuffer } = await import('./runtime_form.js');
  const entries = fileEntries(manifest);
  const runtime = manifest.runtime || {};
  const graphName = runtime.graph || 'model.onnx';
  const weightsName = runtime.weights_file || 'weights.bin';
  const names = [graphName, weightsName, ...TEXT_FILES];
  const total = names.reduce((sum, n) => sum + ((entries[n] && entries[n].bytes) || 0), 0);
  let loaded = 0;
  const onBytes = (n) => { loaded += n; onProgress({ loaded, total: Math.max(total, loaded) }); };
  const files = await openBundleCache(base, manifest, fetchOrMissing, { enabled: cache }); // Cache Storage (issue 5)
  // weights.bin inflated, as a verified cache entry of an earlier visit (null: weights.bin is
  // stored raw, or no such entry)
  const derivedName = `${weightsName}.inflated`;
  let rawBytes = null;
  try { rawBytes = inflatedBytes(manifest); } catch (e) { throw loadError(e); }
  let inflated = null;
  const bodies = await Promise.all(names.map(async (name) => {
    const entry = entries[name] || {};
    if (name === weightsName && rawBytes !== null) {
      inflated = await files.fetchDerived(weightsName, derivedName, rawBytes);
      if (inflated) { onBytes(entry.bytes || 0); return [name, null]; }
    }
    const got = await files.fetch(name);
    if (got.bytes) { // a cache hit, checked against the manifest by bundle_cache.js
      onBytes(got.bytes.length);
      return [name, got.bytes];
    }
    const bytes = await readAll(got.response, entry.bytes, onBytes);
    if (entry.bytes !== undefined && entry.bytes !== bytes.length) {
      throw makeError('bundle_corrupt', `${name} has ${bytes.length} bytes, the manifest says ` +
        `${entry.bytes}: the download was cut or the bundle is stale; rebuild it`, { file: name });
    }
    if (entry.sha256 && (await sha256Hex(bytes)) !== entry.sha256) {
      throw makeError('bundle_corrupt', `${name} does not match its sha256 in manifest.json: ` +
        `rebuild the bundle (./build.sh bundle)`, { file: name });
    }
    return [name, bytes];
  }));
  const byName = Object.fromEntries(bodies);
  const decoder = new TextDecoder();
  const texts = { manifest: manifestText };
  for (const n of TEXT_FILES) texts[n] = decoder.decode(byName[n]);
  const weights = byName[weightsName];
  delete byName[weightsName];
  // weights.bin's own bytes are freed once inflated (nothing else reads them)
  const form = inflated ? Promise.resolve(inflated)
    : downloadForm(manifest, weights).then((f) => { if (f !== weights) freeBuffer(weights.buffer); return f; });
  form.catch(() => {}); // observed by createSession
  // the files' own stores end before anything can fail on (a helper worker terminated in the
  // middle of a Cache Storage put left the next load's caches.delete waiting forever)
  await files.report();
  return {
    manifest, texts, graph: byName[graphName], form, total,
    // (an inflated form read from the cache, or a bundle stored raw: nothing to keep)
    keepForm: (f) => (inflated || rawBytes === null ? Promise.resolve() : files.keepDerived(weightsName, derivedName, f)),
    report: () => files.report(),
  };
}

// The external data file name the graph refers to (manifest.runtime names it).
export function externalDataName(manifest) {
  return (manifest.runtime || {}).external_data || 'model.data';
}

// ORT graph optimization level the bundle was verified with ('basic' when unstated).
export function graphOptimization(manifest) {
  return (manifest.runtime || {}).graph_optimization || 'basic';
}

// A runtime_form.js failure ("bundle_corrupt: ..." plain Error) or any other -> SmolChatError.
export function loadError(e) {
  const err = toSmolChatError(e);
  if (err.kind === 'internal' && /^bundle_corrupt: /.test(err.message)) {
    return makeError('bundle_corrupt', err.message.slice('bundle_corrupt: '.length));
  }
  return err;
}

// bundle: downloadBundle's result, or load_worker.js's, which carries `parts` (model.data,
// expanded already, runtime_form.js expandParts) instead of `form`. onRead(bytes, total) is
// called as ORT copies external data into the wasm heap (synchronously, inside session
// creation: progress can be posted); onSlice(begin, bytes) sees each slice ORT reads
// (lm_head.js LmHead.tap keeps the LM head's weights from it). graph: the model bytes to use
// instead of bundle.graph (lm_head.js headlessGraph's).
export async function createSession(ort, bundle, { onRead, onSlice, graph } = {}) {
  const { runtimeDataSource, runtimeDataFromParts } = await import('./runtime_form.js');
  let data;
  try {
    // the download form (weights.bin inflated since downloadBundle). model.data is expanded
    // from it tensor by tensor as ORT copies it into the wasm heap: the whole 142 MB file
    // never exists in JS (runtime_form.js, runtimeDataSource)
    data = bundle.parts ? runtimeDataFromParts(bundle.manifest, bundle.parts) // (empties parts)
      : runtimeDataSource(bundle.manifest, await bundle.form);
  } catch (e) {
    throw loadError(e);
  }
  const source = data;
  if (onRead || onSlice) data = watchedReads(data, onRead || (() => {}), onSlice || (() => {}));
  try {
    // (an error of the expansion inside ORT's read surfaces as ORT's "failed to load external
    // data": bundle_corrupt below)
    return await ort.InferenceSession.create(graph || bundle.graph, {
      // (no other session option measured faster in Node, ORT Web 1.30, 1 thread: prepacking
      // off, the CPU arena off, or a graph saved pre-optimized by native ORT and loaded with
      // optimization disabled; README "Load time")
      executionProviders: ['wasm'],
      // manifest.runtime says which level the build verified ('basic': the graph is written
      // fused; 'all' miscomputed an earlier int8 graph's single-token steps). Same level as
      // smolchat.runtime_form.load_session.
      graphOptimizationLevel: graphOptimization(bundle.manifest),
      externalData: [{ path: externalDataName(bundle.manifest), data }],
    });
  } catch (e) {
    const err = toSmolChatError(e);
    if (err.kind === 'internal') {
      throw makeError('bundle_corrupt', `ONNX Runtime could not load the model graph: ${err.message}`);
    }
    throw err;
  } finally {
    if (source.release) source.release(); // the last tensor's buffer (runtimeDataFromParts)
    bundle.form = null; // the download form is in the wasm heap now, expanded
    bundle.parts = null; // each tensor's buffer went with ORT's read of it
    bundle.graph = null;
  }
}

// model.data as ORT reads it (data.subarray(offset, end), then a copy into the wasm heap: see
// runtime_form.js runtimeDataSource), reporting the bytes read so far and each slice. The
// wrapper is a Uint8Array of the same byteLength whose subarray defers to `data`.
function watchedReads(data, onRead, onSlice) {
  const total = data.byteLength;
  let read = 0;
  class Counted extends Uint8Array {
    get byteLength() { return total; }
    subarray(begin = 0, end = total) {
      const out = data.subarray(begin, end);
      onSlice(begin, out);
      read += end - begin;
      onRead(read, total);
      return out;
    }
  }
  return new Counted(0);
}
