// Cache Storage for model bundles: the first load keeps every bundle file it downloads, later
// loads read them back with no model bytes over the network, a new bundle replaces the old
// files, and a full disk means "run without caching", never a failed load.
//
//   const files = await openBundleCache(base, manifest, fetchOrMissing);
//   const got = await files.fetch('weights.bin');
//   // a hit: {bytes} (already checked against the manifest's bytes and sha256)
//   // a miss: {response} from the network (the caller reads and verifies it; it is stored as read)
//   const raw = await files.fetchDerived('weights.bin', 'weights.bin.inflated', n);  // a verified hit | null
//   files.keepDerived('weights.bin', 'weights.bin.inflated', raw);   // replaces weights.bin's entry
//   const report = await files.report();  // {from_cache, cache, cache_name, network_bytes}
//
// Layout: one cache per bundle id, `smolchat-<bundle_id>` (caches.open). Keys do not depend
// on where the bundle is served from: https://smolchat.invalid/<bundle_id>/<file> (the
// .invalid TLD never resolves; Cache Storage only wants an http(s) URL as a key). Each entry
// carries `x-smolchat-bundle-hash` (manifest.bundle_hash) and `x-smolchat-sha256` headers.
//
// Versioning: manifest.json is always fetched from the network (the caller does, it is small);
// its bundle_hash is the version. An entry of another bundle_hash makes the whole cache go
// (caches.delete) before anything is read, so a rebuilt bundle is downloaded afresh.
// Integrity: a hit is read into memory and checked against the manifest's bytes and sha256
// (WebCrypto, ~0.2 s for 70 MB); a mismatch deletes the entry and downloads the file again.
// Those bytes are handed over as they are: one read, one sha256, no copy (a hit used to be
// re-wrapped in a Response that the caller read and hashed again: ~0.3 s and 72 MB more).
// Storage: a QuotaExceededError (or any failed put) deletes the partial cache and the load
// goes on from the network bytes; the report says `disabled: <reason>`.
// Derived entries (keepDerived / fetchDerived): what a file becomes once verified, e.g.
// weights.bin inflated (`weights.bin.inflated`, 84 MB for compact), so that a later load skips
// the inflate (0.5-0.6 s on the load's critical path, README "Load time"). Such an entry
// replaces its source file's entry (the source is not kept: it is not read again while the
// derived entry is good); it carries `x-smolchat-source-sha256` (the source's sha256 in the
// manifest) and `x-smolchat-sha256`, the sha256 of its own bytes taken when they were made from
// the verified source. A derived entry that fails its check is deleted and the caller falls
// back to the source file (downloaded again); one that cannot be stored (storage full) is
// simply not there, and the source's own entry stays.
//
// What this module ignores: which files a bundle needs and what they mean (bundle_loader.js).

const KEY_ORIGIN = 'https://smolchat.invalid/';
const HASH_HEADER = 'x-smolchat-bundle-hash';
const SHA_HEADER = 'x-smolchat-sha256';
const SOURCE_HEADER = 'x-smolchat-source-sha256';

export function cacheName(manifest) {
  return `smolchat-${manifest.bundle_id || 'bundle'}`;
}

function entryKey(manifest, name) {
  return `${KEY_ORIGIN}${encodeURIComponent(manifest.bundle_id || 'bundle')}/${name}`;
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

function isQuotaError(e) {
  return !!e && (e.name === 'QuotaExceededError' || /quota/i.test(String(e.message || e)));
}

// Why caching cannot be used here, or null when it can.
function unavailable(enabled) {
  if (enabled === false) return 'turned off by the caller (cache: false)';
  if (typeof caches === 'undefined' || !caches) {
    return 'Cache Storage is unavailable (not a secure context: serve the page over https or from localhost)';
  }
  return null;
}

// -> the file set: {fetch(name) -> Response, report() -> {from_cache, cache, ...}}.
// fetchFile(url) -> Response is the network fetch (it throws the loader's own errors).
export async function openBundleCache(base, manifest, fetchFile, { enabled = true } = {}) {
  const name = cacheName(manifest);
  const version = String(manifest.bundle_hash || '');
  const files = manifest.files || {};
  let disabled = unavailable(enabled) || (version ? null : 'the manifest has no bundle_hash to version the cache by');
  let cache = null;
  if (!disabled) {
    try {
      cache = await caches.open(name);
      if (await holdsAnotherVersion(cache, version)) {
        await caches.delete(name);   // a new bundle replaces the old one, whole
        cache = await caches.open(name);
      }
    } catch (e) {
      disabled = `Cache Storage failed to open (${e.name || 'Error'}: ${e.message || e})`;
      cache = null;
    }
  }

  let hits = 0;
  let misses = 0;
  let networkBytes = 0;
  const puts = [];

  const disable = async (reason) => {
    if (disabled) return;
    disabled = reason;
    cache = null;
    try { await caches.delete(name); } catch { /* already gone */ }
  };

  async function readHit(file) {
    const entry = files[file];
    if (!cache || !entry || !entry.sha256) return null;
    const key = entryKey(manifest, file);
    let response;
    try { response = await cache.match(key); } catch { return null; }
    if (!response || response.headers.get(SHA_HEADER) !== entry.sha256
        || response.headers.get(HASH_HEADER) !== version) return null;
    const bytes = new Uint8Array(await response.arrayBuffer());
    if ((entry.bytes !== undefined && bytes.length !== entry.bytes) || (await sha256Hex(bytes)) !== entry.sha256) {
      try { await cache.delete(key); } catch { /* a later put overwrites it */ }
      return null;
    }
    return bytes;
  }

  // The verified bytes of the derived entry `derived` made from `source`, or null.
  async function readDerived(source, derived, bytes) {
    const entry = files[source];
    if (!cache || !entry || !entry.sha256) return null;
    const key = entryKey(manifest, derived);
    let response;
    try { response = await cache.match(key); } catch { return null; }
    if (!response) return null;
    const sha = response.headers.get(SHA_HEADER);
    if (response.headers.get(SOURCE_HEADER) !== entry.sha256 || response.headers.get(HASH_HEADER) !== version || !sha) {
      try { await cache.delete(key); } catch { /* a later put overwrites it */ }
      return null;
    }
    let got = null;
    try { got = new Uint8Array(await response.arrayBuffer()); } catch { got = null; }
    if (!got || got.length !== bytes || (await sha256Hex(got)) !== sha) {
      try { await cache.delete(key); } catch { /* a later put overwrites it */ }
      return null;
    }
    return got;
  }

  function keep(file, response) {
    const entry = files[file];
    if (!cache || !entry || !entry.sha256 || !response.body) return response;
    const [forCaller, forCache] = response.body.tee();
    const headers = {
      'Content-Type': 'application/octet-stream', [SHA_HEADER]: entry.sha256, [HASH_HEADER]: version,
    };
    if (entry.bytes !== undefined) headers['Content-Length'] = String(entry.bytes);
    const target = cache;
    puts.push(target.put(entryKey(manifest, file), new Response(forCache, { headers })).catch((e) =>
      disable(isQuotaError(e)
        ? `storage full (${e.name || 'QuotaExceededError'}): running without caching; free browser storage to cache the model`
        : `could not store ${file} (${e.name || 'Error'}: ${e.message || e}): running without caching`)));
    const length = response.headers.get('Content-Length');
    return new Response(forCaller, { status: response.status, headers: length ? { 'Content-Length': length } : {} });
  }

  return {
    name,
    // -> {bytes: Uint8Array} (a verified hit) | {response: Response} (the network's)
    async fetch(file) {
      const hit = await readHit(file);
      if (hit) { hits += 1; return { bytes: hit }; }
      misses += 1;
      const response = await fetchFile(base + file);
      networkBytes += (files[file] && files[file].bytes) || Number(response.headers.get('Content-Length')) || 0;
      return { response: keep(file, response) };
    },
    // -> Uint8Array: the derived entry `derived` (e.g. 'weights.bin.inflated') of file `source`,
    // `bytes` long and checked against its own sha256; null when there is none that checks
    // (the caller reads `source` with fetch() and makes it). A hit counts as a hit of `source`.
    async fetchDerived(source, derived, bytes) {
      const hit = await readDerived(source, derived, bytes);
      if (hit) hits += 1;
      return hit;
    },
    // Store `bytes`, made from the verified file `source`, as the entry `derived`, and drop
    // `source`'s own entry once it is stored. `bytes` are read by the store after this returns:
    // do not change or free them before report() (or the returned promise) settles.
    keepDerived(source, derived, bytes) {
      const entry = files[source];
      if (!cache || !entry || !entry.sha256) return Promise.resolve();
      const target = cache;
      const earlier = puts.slice();   // (source's own put, if it was downloaded now)
      const stored = (async () => {
        const sha = await sha256Hex(bytes);
        await Promise.all(earlier);
        if (disabled) return;
        // a stream over the bytes themselves: a Response of a Uint8Array would copy them first
        const body = new ReadableStream({ start(c) { c.enqueue(bytes); c.close(); } });
        await target.put(entryKey(manifest, derived), new Response(body, { headers: {
          'Content-Type': 'application/octet-stream', 'Content-Length': String(bytes.length),
          [SHA_HEADER]: sha, [SOURCE_HEADER]: entry.sha256, [HASH_HEADER]: version } }));
        await target.delete(entryKey(manifest, source));
      })().catch(async () => {
        // (no room for it, e.g.: the source's own entry stays and serves the next load)
        try { await target.delete(entryKey(manifest, derived)); } catch { /* never stored */ }
      });
      puts.push(stored);
      return stored;
    },
    // Waits for the stores to finish; call once every file was read and verified.
    async report() {
      await Promise.all(puts);
      const fromCache = !disabled && hits > 0 && misses === 0;
      return {
        from_cache: fromCache,
        cache: disabled ? `disabled: ${disabled}` : (fromCache ? 'hit' : 'miss'),
        cache_name: name,
        network_bytes: networkBytes,
      };
    },
  };
}

// True when the cache holds an entry of another bundle_hash (or an unreadable one).
async function holdsAnotherVersion(cache, version) {
  for (const request of await cache.keys()) {
    const response = await cache.match(request);
    if (!response || response.headers.get(HASH_HEADER) !== version) return true;
  }
  return false;
}

// Drop every SmolChat bundle cache of this origin (all bundle ids). Returns the names removed.
export async function clearBundleCaches() {
  if (typeof caches === 'undefined') return [];
  const names = (await caches.keys()).filter((n) => n.startsWith('smolchat-'));
  await Promise.all(names.map((n) => caches.delete(n)));
  return names;
}
