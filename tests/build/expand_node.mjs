// Node helper for tests/build: expand a bundle's weights.bin with web/src/runtime_form.js and
// print one JSON line:
//   form_bytes               the download form (downloadForm: weights.bin inflated)
//   sha256, bytes, ms        expandRuntimeData (the whole model.data at once)
//   source_sha256            runtimeDataSource read one tensor region at a time, as ORT does
//   parts_sha256, parts_odd_reads_equal   expandParts (~8 MB buffers of whole tensors, what the page's
//                            load helper makes) through runtimeDataFromParts, read one region at a
//                            time (each region is handed over once) / across borders first
//   chunks_sha256            the same through expandParts' onChunk, each chunk structured-cloned
//   odd_reads_equal          reads across tensor borders, padding and partial tensors equal the
//                            same bytes of the whole expansion
//   ort                      (when ORT_MODULE is given) the source handed to ORT Web as external
//                            data: {reads, expansions, regions, tensors, output_names}
// Usage: node expand_node.mjs BUNDLE_DIR MODULE_URL [ORT_MODULE_URL]
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";

const [dir, moduleUrl, ortUrl] = process.argv.slice(2);
const { downloadForm, expandRuntimeData, runtimeDataSource, regionsOf, expandParts, runtimeDataFromParts } = await import(moduleUrl);
const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, "utf8"));
const weights = await downloadForm(manifest, new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`)));
const sha = (bytes) => createHash("sha256").update(bytes).digest("hex");

const t0 = performance.now();
const data = expandRuntimeData(manifest, weights);
const ms = Math.round(performance.now() - t0);
const result = { form_bytes: weights.length, sha256: sha(data), bytes: data.length, ms };

// Every tensor's regions (int8, scales, float rows), read in reverse so kept parts are used.
const regions = manifest.runtime.tensors.flatMap((t) => regionsOf(t).map((r) => [r.start, r.bytes]));
const source = runtimeDataSource(manifest, weights);
const assembled = new Uint8Array(source.byteLength);
for (const [start, len] of regions.slice().reverse()) assembled.set(source.subarray(start, start + len), start);
result.source_sha256 = sha(assembled);
result.source_bytes = source.byteLength;

// Odd reads: straddling borders, inside one tensor, the padding, the whole file.
let odd = true;
const reads = [[0, data.length]];
for (const [start, len] of regions) reads.push([Math.max(0, start - 3), Math.min(data.length, start + 5)], [start + (len >> 1), start + len]);
for (const [a, b] of reads) {
  const got = source.subarray(a, b);
  if (got.length !== b - a || sha(got) !== sha(data.subarray(a, b))) { odd = false; break; }
}
result.odd_reads_equal = odd;

// The load helper's form: odd reads first (they keep every region), then each region once.
const fromParts = runtimeDataFromParts(manifest, expandParts(manifest, weights));
result.parts_odd_reads_equal = reads.slice(1).every(([a, b]) => sha(fromParts.subarray(a, b)) === sha(data.subarray(a, b)));
const partsAssembled = new Uint8Array(fromParts.byteLength);
for (const [start, len] of regions) partsAssembled.set(fromParts.subarray(start, start + len), start);
result.parts_sha256 = sha(partsAssembled);

// As the load helper posts them: expandParts' onChunk, each chunk copied (structured clone, as
// postMessage without a transfer list), the source buffer freed after each (runtime_form.js).
const posted = [];
expandParts(manifest, weights, { onChunk: (parts) => posted.push(...structuredClone(parts)) });
const fromPosted = runtimeDataFromParts(manifest, posted.sort((x, y) => x.start - y.start));
const postedAssembled = new Uint8Array(fromPosted.byteLength);
for (const [start, len] of regions) postedAssembled.set(fromPosted.subarray(start, start + len), start);
fromPosted.release();
result.chunks_sha256 = sha(postedAssembled);

if (ortUrl) {
  const ort = await import(ortUrl);
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = "error";
  const lazy = runtimeDataSource(manifest, weights);
  const graph = readFileSync(`${dir}/${manifest.runtime.graph}`);
  const session = await ort.InferenceSession.create(graph, {
    graphOptimizationLevel: manifest.runtime.graph_optimization ?? "basic",
    externalData: [{ path: manifest.runtime.external_data, data: lazy }],
  });
  result.ort = { ...lazy.stats, regions: regions.length, tensors: manifest.runtime.tensors.length,
                 output_names: session.outputNames.length };
  await session.release();
}
console.log(JSON.stringify(result));
