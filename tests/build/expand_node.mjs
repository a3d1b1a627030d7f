// Node helper for tests/build: expand a bundle's weights.bin with web/src/runtime_form.js and
// print {"sha256", "bytes", "ms"} as JSON. Usage: node expand_node.mjs BUNDLE_DIR MODULE_URL
import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";

const [dir, moduleUrl] = process.argv.slice(2);
const { expandRuntimeData } = await import(moduleUrl);
const manifest = JSON.parse(readFileSync(`${dir}/manifest.json`, "utf8"));
const weights = new Uint8Array(readFileSync(`${dir}/${manifest.runtime.weights_file}`));
const t0 = performance.now();
const data = expandRuntimeData(manifest, weights);
const ms = Math.round(performance.now() - t0);
const sha256 = createHash("sha256").update(data).digest("hex");
console.log(JSON.stringify({ sha256, bytes: data.length, ms }));
