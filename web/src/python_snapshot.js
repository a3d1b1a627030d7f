// Pyodide booted from a memory snapshot on a return visit (issue 17): the first visit boots
// Python as usual, unpacks our wheel, imports smolchat.bridge, then copies Pyodide's wasm heap
// (pyodide.makeMemorySnapshot: a snapshot may hold no JS object, so before any WorkerHost or
// loadPackage) and keeps it in Cache Storage; later visits hand it to loadPyodide({_loadSnapshot})
// and skip CPython's start-up and our imports (their modules are in the heap, their files are
// not: the restored Python never reads them).
// Measured in Node (Pyodide 314.0.7, 2 busy cores, CPU time): boot 2.65-2.9 s -> 0.41-0.52 s;
// ~31.5 MB per snapshot. In Chromium, code that runs first after a restore runs slowly (the
// wasm functions CPython's start-up would have compiled and warmed are cold): importing our
// wheel after a restore took 0.5-0.7 s, against 0.1 s after a full boot; in the snapshot it
// costs nothing.
//
// Snapshots are experimental in Pyodide (`_makeSnapshot` / `_loadSnapshot` are underscore
// options), so they are pinned: an entry is used only when its x-pyodide-version header is the
// running Pyodide's `version` (pyodide.mjs) and its x-smolchat-wheel header the sha256 of the
// site's smolchat wheel (the heap holds that wheel's modules: an updated site must not run the
// old code); Pyodide itself refuses a heap of another build ("Snapshot build id mismatch").
// Any refusal, or any failure to restore, drops the entry and boots without it (then makes a
// fresh one): a snapshot can make a load faster, never fail it.
//
//   const snapshots = await openSnapshots(version, { wheel: sha256hex });   // never throws
//   const bytes = await snapshots.read();                // Uint8Array | null
//   ... loadPyodide({..., _loadSnapshot: bytes}) or loadPyodide({..., _makeSnapshot: true}) ...
//   snapshots.store(pyodide.makeMemorySnapshot());       // in the background
//   snapshots.report()                                   // 'hit' | 'stored' | ... for info()
//
// What this module ignores: booting Python and loading our wheel (worker.js), bundle caching
// (bundle_cache.js).

const CACHE_NAME = 'smolchat-python-snapshot';
const KEY = 'https://smolchat.invalid/pyodide/snapshot';
const VERSION_HEADER = 'x-pyodide-version';
const WHEEL_HEADER = 'x-smolchat-wheel';   // sha256 (hex) of the wheel whose modules it holds

// version: Pyodide's; wheel: sha256 hex of the smolchat wheel (null: no snapshot can be
// checked, so none is used).
export async function openSnapshots(version, { enabled = true, wheel = null } = {}) {
  let cache = null;
  let state = 'miss';  // hit | miss | stored | rejected: <why> | disabled: <why>
  if (!enabled) state = 'disabled: turned off by the caller (cache: false)';
  else if (!wheel) state = 'disabled: the smolchat wheel could not be hashed (crypto.subtle is unavailable)';
  else if (typeof caches === 'undefined' || !caches) state = 'disabled: Cache Storage is unavailable';
  else {
    try { cache = await caches.open(CACHE_NAME); } catch (e) { state = `disabled: ${e.name || 'Error'}: ${e.message || e}`; }
  }
  const drop = async () => { try { if (cache) await cache.delete(KEY); } catch { /* already gone */ } };

  return {
    // The snapshot for this Pyodide version, or null (an entry of another version is dropped).
    async read() {
      if (!cache) return null;
      try {
        const response = await cache.match(KEY);
        if (!response) return null;
        if (response.headers.get(VERSION_HEADER) !== version) {
          state = `rejected: made by Pyodide ${response.headers.get(VERSION_HEADER)}, this is ${version}`;
          await drop();
          return null;
        }
        if (response.headers.get(WHEEL_HEADER) !== wheel) {
          const made = response.headers.get(WHEEL_HEADER);
          state = `rejected: made with another smolchat wheel (sha256 ${made ? made.slice(0, 12) : 'unknown'}, ` +
            `this is ${wheel.slice(0, 12)})`;
          await drop();
          return null;
        }
        const bytes = new Uint8Array(await response.arrayBuffer());
        state = 'hit';
        return bytes;
      } catch (e) {
        state = `rejected: unreadable (${e.message || e})`;
        await drop();
        return null;
      }
    },
    // loadPyodide refused or failed on the bytes read(): forget them.
    async reject(error) {
      state = `rejected: ${String((error && error.message) || error).split('\n')[0]}`;
      await drop();
    },
    // Whether a snapshot should be made on this boot (none was used and one can be kept).
    get wanted() { return !!cache && state !== 'hit'; },
    // Keep `bytes` (makeMemorySnapshot's Uint8Array) for the next visit. Never throws; a full
    // disk just means no snapshot.
    async store(bytes) {
      if (!cache) return;
      try {
        await cache.put(KEY, new Response(bytes, { headers: {
          'Content-Type': 'application/octet-stream', [VERSION_HEADER]: version, [WHEEL_HEADER]: wheel } }));
        if (!state.startsWith('rejected')) state = 'stored';
      } catch (e) {
        state = `disabled: could not store the snapshot (${e.name || 'Error'}: ${e.message || e})`;
        await drop();
      }
    },
    report() { return state; },
  };
}

// Drop the snapshot (all versions) of this origin. -> true when there was one.
export async function clearSnapshots() {
  if (typeof caches === 'undefined') return false;
  return caches.delete(CACHE_NAME);
}
