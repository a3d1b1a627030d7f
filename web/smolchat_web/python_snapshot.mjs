// Build step of the site (site.py build_python_snapshot): Pyodide's memory snapshot with our
// wheel unpacked and smolchat.bridge imported, made in Node with the site's own Pyodide, so
// that a first visit boots Python from it instead of starting CPython (~3-4 s in the page).
// The worker loads it only when site.json says it was made by the running Pyodide version from
// the site's wheel (worker.js bootPython); Pyodide itself refuses a heap of another build.
// Same steps as the worker's own snapshot (worker.js bootPython: boot, unpackArchive into
// site-packages, import smolchat.bridge, makeMemorySnapshot before any JS object is held).
//
//   node python_snapshot.mjs <site dir> <wheel path relative to it> <output .gz>
// Writes the snapshot gzip-compressed (~6 MB for ~31 MB: most of the heap is zeros and code)
// and prints {"bytes": <uncompressed length>} on stdout.
//
// What this script ignores: where the file is served and how the worker checks it.

import { readFileSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [site, wheelPath, out] = process.argv.slice(2);
const { loadPyodide } = await import(pathToFileURL(join(site, 'vendor/pyodide/pyodide.mjs')).href);
const pyodide = await loadPyodide({
  indexURL: join(site, 'vendor/pyodide') + '/', _makeSnapshot: true,
  stdout: () => {}, stderr: (s) => process.stderr.write(s + '\n'),
});
const wheel = new Uint8Array(readFileSync(join(site, wheelPath)));
const sitePackages = pyodide.runPython("__import__('site').getsitepackages()[0]");
pyodide.unpackArchive(wheel, 'wheel', { extractDir: sitePackages });
pyodide.pyimport('smolchat.bridge').destroy();
const snapshot = pyodide.makeMemorySnapshot();
writeFileSync(out, gzipSync(snapshot, { level: 6 }));
process.stdout.write(JSON.stringify({ bytes: snapshot.length }) + '\n');
