// Node helper for tests/web/test_expand_kernel.py: one bundle's int4 -> int8 expansion through
// web/kernels/expand.c (the site's kernels/expand.wasm, expand_kernel.js) and through
// runtime_form.js's JS ops, on the site's own files. Prints one JSON line:
//   manifest_sha256        manifest.runtime.expanded_sha256
//   js_sha256              expandRuntimeData without the kernel (the reference path)
//   kernel_sha256          expandRuntimeData with the kernel
//   parts_sha256           expandParts with the kernel as the load helper runs it (onChunk, each
//                          chunk structured-cloned), through runtimeDataFromParts
//   source_sha256          runtimeDataSource with the kernel, its regions read last to first
//                          (scales before tables: the kept parts and the scales-only passes)
//   kernel_tensors         tensors the kernel expanded in the first run; handled: entries it takes
//   tensors                entries of manifest.runtime.tensors
//   kernel_memory          bytes of the kernel's wasm memory after all runs
//   failed                 kernel.failed (null: it never fell back)
//   kernel_ms, js_ms       CPU ms of one whole expansion each way (figures, not asserted)
//   notes                  loadExpandKernel's notes for bytes that are not wasm, an Error from a
//                          fetch, and the kernel turned off (each: JS expands)
//   corrupt                the error of an entry that reads past the download form (kernel path)
// Usage: node expand_kernel_node.mjs SITE_DIR BUNDLE_DIR
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [site, dir] = process.argv.slice(2);
const url = (p) => pathToFileURL(resolve(site, p)).href;
const rf = await import(url('runtime_form.js'));
const { loadExpandKernel } = await import(url('expand_kernel.js'));
const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, 'utf8'));
const form = await rf.downloadForm(manifest, new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`)));
const wasm = readFileSync(resolve(site, 'kernels/expand.wasm'));
const sha = (b) => createHash('sha256').update(b).digest('hex');
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e3; };
const regions = manifest.runtime.tensors.flatMap((t) => rf.regionsOf(t).map((r) => [r.start, r.bytes]));

const { kernel, note } = await loadExpandKernel(wasm);
if (!kernel) throw new Error(`the kernel did not load: ${note}`);
const out = { manifest_sha256: manifest.runtime.expanded_sha256, tensors: manifest.runtime.tensors.length,
  handled: manifest.runtime.tensors.filter((t) => kernel.handles(t)).length };

let c = cpu();
out.kernel_sha256 = sha(rf.expandRuntimeData(manifest, form, { kernel }));
out.kernel_ms = Math.round(cpu() - c);
out.kernel_tensors = kernel.tensors;
c = cpu();
out.js_sha256 = sha(rf.expandRuntimeData(manifest, form));
out.js_ms = Math.round(cpu() - c);

const posted = [];
rf.expandParts(manifest, form, { kernel, onChunk: (parts) => posted.push(...structuredClone(parts)) });
const fromParts = rf.runtimeDataFromParts(manifest, posted.sort((x, y) => x.start - y.start));
const assembled = new Uint8Array(fromParts.byteLength);
for (const [start, len] of regions) assembled.set(fromParts.subarray(start, start + len), start);
out.parts_sha256 = sha(assembled);

const source = rf.runtimeDataSource(manifest, form, { kernel });
assembled.fill(0);
for (const [start, len] of regions.slice().reverse()) assembled.set(source.subarray(start, start + len), start);
out.source_sha256 = sha(assembled);
out.kernel_memory = kernel.bytes();
out.failed = kernel.failed ?? null;

out.notes = [];
for (const [source, opts] of [[new Uint8Array([0, 97, 115, 109, 9, 9]), {}], [new TypeError('Failed to fetch'), {}], [wasm, { off: true }]]) {
  const r = await loadExpandKernel(source, opts);
  out.notes.push(r.kernel === null ? r.note : 'unexpected: a kernel');
}

// an int4 tensor whose codes start past the end of the download form
const bad = structuredClone(manifest);
const t = bad.runtime.tensors.find((x) => kernel.handles(x));
t.src.codes = form.length - 8;
try {
  rf.expandRuntimeData(bad, form, { kernel });
  out.corrupt = null;
} catch (e) {
  out.corrupt = e.message;
}
console.log(JSON.stringify(out));
