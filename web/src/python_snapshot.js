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

// Pyodide's restore writes the whole snapshot into the fresh heap (API.restoreSnapshot:
// Module.HEAP8.set), zero pages included, and a written page stays resident: about half of a
// 30 MB snapshot is zeros (the stack's unused depth, free heap), measured 2026-12-03. This
// wraps Pyodide's module factory (loadPyodide's `createPyodideModule` option) so that the
// restore writes only the blocks that are not already what the heap holds: a block that is zero
// in the snapshot and in the fresh heap is left untouched (a fresh page reads as zero without
// becoming resident). The heap's contents are the same either way. The parsing and the build-id
// check stay Pyodide's. Only for the pinned Pyodide (worker.js checks the version): the wrapper
// relies on restoreSnapshot copying through Module.HEAP8, and falls back to Pyodide's own copy
// if its shape is not what it expects.
// -> {factory (for createPyodideModule), skipped(): bytes of the snapshot not written}
export function sparseRestore(realFactory, block = 1 << 16) {
  let skipped = 0;
  const factory = async (settings) => {
    const module = await realFactory(settings);
    const api = module.API;
    const restore = api && api.restoreSnapshot;
    if (typeof restore !== 'function' || !(module.HEAP8 instanceof Int8Array)) return module;
    api.restoreSnapshot = function (bytes) {
      const heap = module.HEAP8;
      module.HEAP8 = { set: (src, at = 0) => { skipped = copyChanged(heap, src, at, block); } };
      try { return restore.call(this, bytes); } finally { module.HEAP8 = heap; }
    };
    return module;
  };
  return { factory, skipped: () => skipped };
}

// heap.set(src, at), except the blocks that are zero in both (they read as zero already).
// -> bytes not written.
function copyChanged(heap, src, at, block) {
  const dst = new Uint8Array(heap.buffer, heap.byteOffset + at, src.length);
  const aligned = src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0;
  if (!aligned) { dst.set(src); return 0; }
  const zero = (u8, from, to) => {
    const w = new Int32Array(u8.buffer, u8.byteOffset + from, (to - from) >> 2);
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
    for (let i = from + (w.length << 2); i < to; i++) if (u8[i] !== 0) return false;
    return true;
  };
  let skipped = 0;
  for (let from = 0; from < src.length; from += block) {
    const to = Math.min(from + block, src.length);
    if (zero(src, from, to) && zero(dst, from, to)) { skipped += to - from; continue; }
    dst.set(src.subarray(from, to), from);
  }
  return skipped;
}

// Drop the snapshot (all versions) of this origin. -> true when there was one.
export async function clearSnapshots() {
  if (typeof caches === 'undefined') return false;
  return caches.delete(CACHE_NAME);
}
