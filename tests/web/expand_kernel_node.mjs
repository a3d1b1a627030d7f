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
// With --synthetic instead of BUNDLE_DIR: tensors of every op the kernel takes, in shapes and
// options the bundles do not use (no rotation, Hadamard blocks 1, 4, 16, 256, K not a multiple
// of 16, an odd number of blocks a row, Q8_0 / 5-bit / coarse rows, int8 columns), over random
// bytes (float16 NaN and infinity included), each cut into strips of a few rows; prints
//   synthetic: [{op, same, kernel}] per tensor: the kernel's bytes equal the JS ops' (same), and
//              the kernel expanded it
// Usage: node expand_kernel_node.mjs SITE_DIR (BUNDLE_DIR | --synthetic)
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [site, dir] = process.argv.slice(2);
const url = (p) => pathToFileURL(resolve(site, p)).href;
const rf = await import(url('runtime_form.js'));
const { loadExpandKernel, ExpandKernel } = await import(url('expand_kernel.js'));
if (dir === '--synthetic') {
  console.log(JSON.stringify({ synthetic: await synthetic() }));
  process.exit(0);
}
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

// One manifest entry per case over one random download form; each expanded alone with and
// without the kernel (strips of ~3 rows).
async function synthetic() {
  let seed = 17;
  const rand = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed >>> 8; };
  const cases = [
    { op: 'q4_1_i8', n: 37, k: 96, block: 32, float_rows: [5, 90] },                      // 3 blocks a row: odd
    { op: 'q4_1_i8h', n: 50, k: 96, block: 32, rotate: 16, float_rows: [0, 95], float_rows_int8: 'zero' },
    { op: 'q4_1z_i8h', n: 40, k: 128, block: 32, rotate: 64 },
    { op: 'q4_1_i8h', n: 9, k: 64, block: 32, rotate: 1 },
    { op: 'q4_1z_i8h', n: 20, k: 256, block: 32, rotate: 256, float_rows: [7], float_rows_int8: 'zero' },
    { op: 'q4c_i8', n: 45, k: 96, block: 32, coarse_from: 30, int8_cols: [3, 50] },
    { op: 'q4c_i8h', n: 33, k: 40, block: 8, rotate: 4, fine_until: 10, coarse_from: 20, float_rows: [39] },
    { op: 'q4cx_i8h', n: 60, k: 48, block: 16, rotate: 16, exact_until: 7, fine_until: 19, coarse_from: 40,
      int8_cols: [1, 47], float_rows: [1, 47], float_rows_int8: 'zero' },
  ];
  const form = new Uint8Array(1 << 20);
  for (let i = 0; i < form.length; i++) form[i] = rand() & 255;
  const { instance } = await WebAssembly.instantiate(readFileSync(resolve(site, 'kernels/expand.wasm')), {});
  const out = [];
  for (const c of cases) {
    const { n: N, k: K, block: QK } = c;
    const nb = K / QK, ks = c.int8_cols || [];
    let at = 64;
    const put = (bytes) => { const p = at; at += bytes + 64; return p; };
    const t = { name: c.op, params: 'a4', ...c, src: {} };
    if (c.op.startsWith('q4_1')) {
      t.src = { codes: put(N * K / 2), d: put(N * nb), d_hi: put(N * nb), m: put(N * nb), m_hi: put(N * nb) };
    } else {
      const exact = t.exact_until ?? 0, fine = Math.max(exact, t.fine_until ?? 0);
      t.src = { codes: put((N - fine) * K / 2), params: put(Math.ceil(N * nb / 2)), col: put(2 * N),
        a_levels: put(64), code_levels: put(64), coarse_levels: put(32), fine_levels: put(128),
        exact_codes: put(exact * K), exact_d: put(2 * exact * nb), fine_codes: put((fine - exact) * K),
        cols_q: put(ks.length * N), cols_scale: put(4 * ks.length) };
    }
    const F = (c.float_rows || []).length;
    Object.assign(t, { dst: 0, dst_scale: N * K + 3, dst_float: N * K + 3 + 4 * N + 5 });
    const manifest = { tensors: [t], expanded_bytes: t.dst_float + 4 * F * N + 7 };
    const kernel = new ExpandKernel(instance, { stripBytes: 3 * K });
    const a = rf.expandRuntimeData(manifest, form, { kernel });
    const b = rf.expandRuntimeData(manifest, form);
    out.push({ op: c.op, same: a.every((x, i) => x === b[i]), kernel: kernel.tensors === 1 && !kernel.failed });
  }
  return out;
}
