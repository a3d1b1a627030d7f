// Node helper for tests/web/test_model_parts.py: the buffers a page load frees as it goes, on the
// site's own runtime_form.js and ORT Web. Prints one JSON line:
//   manifest_sha256        manifest.runtime.expanded_sha256
//   inflate_chunks         chunks DecompressionStream gave downloadForm (the real stream, watched)
//   inflate_chunks_live    of those, the ones whose buffer still holds memory after downloadForm
//   chunks, chunks_live    the ~8 MB buffers expandParts made, posted as the load helper posts them
//                          (structured clones), and how many still hold memory after ownRegions
//   regions                regions ownRegions returned; own_buffers: how many are the whole of an
//                          ArrayBuffer of their own
//   parts_sha256           model.data read back through runtimeDataFromParts over ownRegions' parts
//   ort_reads              regions ORT Web read (session create, external data = that source)
//   ort_live_before_read   [buffers still holding memory as each read begins], in read order
//   ort_live_chunked_mid   the same at the middle read with the ~8 MB buffers as they came (no
//                          ownRegions): how many a random read order keeps
//   ort_increasing_steps   reads whose offset is above the previous one (ORT's own order)
// Usage: node --harmony-rab-gsab-transfer model_parts_node.mjs SITE_DIR BUNDLE_DIR
// (Node 20's V8 has ArrayBuffer.prototype.transfer, which freeBuffer uses, behind that flag;
// Chromium 156 ships it)
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [site, dir] = process.argv.slice(2);
const url = (p) => pathToFileURL(resolve(site, p)).href;
if (typeof ArrayBuffer.prototype.transfer !== 'function') throw new Error('run with --harmony-rab-gsab-transfer (Node 20)');
const rf = await import(url('runtime_form.js'));
const ort = await import(url('vendor/ort/ort.wasm.min.mjs'));
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = url('vendor/ort') + '/';
ort.env.logLevel = 'error';
const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, 'utf8'));
const sha = (b) => createHash('sha256').update(b).digest('hex');
const live = (buffers) => buffers.filter((b) => !b.detached).length;
const out = { manifest_sha256: manifest.runtime.expanded_sha256 };

// downloadForm through the real DecompressionStream, each chunk it hands out seen on the way
const seen = [];
const RealStream = globalThis.DecompressionStream;
globalThis.DecompressionStream = class {
  constructor(format) {
    const real = new RealStream(format);
    this.writable = real.writable;
    this.readable = real.readable.pipeThrough(new TransformStream({
      transform(chunk, c) { seen.push(chunk.buffer); c.enqueue(chunk); } }));
  }
};
const form = await rf.downloadForm(manifest, new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`)));
globalThis.DecompressionStream = RealStream;
out.inflate_chunks = seen.length;
out.inflate_chunks_live = live(seen);

// As the load helper posts model.data (one structured clone a buffer) and worker.js takes it
function posted() {
  const messages = [];
  rf.expandParts(manifest, form, { onChunk: (parts) => messages.push(structuredClone(parts)) });
  return messages;
}
function received(messages, own) {
  const parts = [];
  for (const m of messages) parts.push(...(own ? rf.ownRegions(m) : m));
  return parts.sort((a, b) => a.start - b.start);
}
let messages = posted();
const chunks = [...new Set(messages.flatMap((m) => m.map((p) => p.bytes.buffer)))];
let parts = received(messages, true);
out.chunks = chunks.length;
out.chunks_live = live(chunks);
out.regions = parts.length;
out.own_buffers = new Set(parts.filter((p) => p.bytes.byteOffset === 0 && p.bytes.byteLength === p.bytes.buffer.byteLength)
  .map((p) => p.bytes.buffer)).size;
const regions = parts.map((p) => [p.start, p.bytes.byteLength]);
const data = rf.runtimeDataFromParts(manifest, parts);
const assembled = new Uint8Array(data.byteLength);
for (const [start, len] of regions) assembled.set(data.subarray(start, start + len), start);
data.release();
out.parts_sha256 = sha(assembled);

// ORT Web creates the session from such parts: how many buffers still hold memory at each read
async function session(own) {
  const ps = received(posted(), own);
  const buffers = [...new Set(ps.map((p) => p.bytes.buffer))];
  const source = rf.runtimeDataFromParts(manifest, ps);
  const total = source.byteLength;
  const before = [], starts = [];
  class Watched extends Uint8Array {
    get byteLength() { return total; }
    subarray(begin = 0, end = total) { before.push(live(buffers)); starts.push(begin); return source.subarray(begin, end); }
  }
  const s = await ort.InferenceSession.create(readFileSync(`${dir}/${manifest.runtime.graph}`), {
    graphOptimizationLevel: manifest.runtime.graph_optimization ?? 'basic',
    externalData: [{ path: rf.externalDataName(manifest), data: new Watched(0) }],
  });
  await s.release();
  source.release();
  return { before, starts };
}
const own = await session(true);
out.ort_reads = own.before.length;
out.ort_live_before_read = own.before;
out.ort_increasing_steps = own.starts.filter((b, i) => i && b > own.starts[i - 1]).length;
const chunked = await session(false);
out.ort_live_chunked_mid = chunked.before[chunked.before.length >> 1];
console.log(JSON.stringify(out));
