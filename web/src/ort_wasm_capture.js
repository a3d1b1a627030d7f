// Stands in for ONNX Runtime Web's emscripten module factory so that the worker can reach the
// module ORT creates: worker.js points ort.env.wasm.wasmPaths.mjs here, ORT imports this file
// and calls its default export with its config, and we call the real factory and keep what it
// returns. ort_heap.js then runs the session through that module's own entry points (the KV
// cache stays in its heap). ORT's pthread workers import the real factory by its own URL
// (emscripten uses its import.meta.url), so they are unaffected.
//
// What this module ignores: everything else; it changes nothing ORT does.

import realFactory from './vendor/ort/ort-wasm-simd-threaded.mjs';

let captured = null;

export default async function ortWasmFactory(config) {
  const module = await realFactory(config);
  captured = module;
  return module;
}

// The emscripten module of the ORT instance this worker initialised, or null before that.
export function capturedModule() { return captured; }
