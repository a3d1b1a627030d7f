// Adapter: transformers.js 4.3.2, text-generation pipeline, int8 ONNX export (dtype q8) of the
// same model, on its bundled ONNX Runtime Web (WASM). Everything local: wasm from
// bench/node_modules/onnxruntime-web, model from /tjs/, remote models off. Its browser cache
// (Cache API) keeps the model for a returning visitor. The pipeline has no KV reuse between
// calls: each turn re-reads the whole conversation (that is how users run it).
import { pipeline, env, BaseStreamer } from '/npm/@huggingface/transformers/dist/transformers.js';

const MODEL = 'SmolLM2-135M-Instruct';
let generator = null;
let messages = [];

export async function load({ threads }) {
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  env.localModelPath = '/tjs/';
  const ortDist = new URL('/npm/onnxruntime-web/dist/', location.href).href;
  env.backends.onnx.wasm.wasmPaths = {
    mjs: ortDist + 'ort-wasm-simd-threaded.asyncify.mjs',
    wasm: ortDist + 'ort-wasm-simd-threaded.asyncify.wasm',
  };
  env.backends.onnx.wasm.numThreads = threads;
  generator = await pipeline('text-generation', MODEL, { dtype: 'q8', device: 'wasm' });
  return { system: 'transformers.js', version: env.version, threads: env.backends.onnx.wasm.numThreads,
           ort: env.backends.onnx.versions?.web ?? null, model: 'onnx/model_quantized.onnx (int8)' };
}

export function reset(systemPrompt) {
  messages = systemPrompt ? [{ role: 'system', content: systemPrompt }] : [];
}

class Timer extends BaseStreamer {
  constructor(onToken) { super(); this.onToken = onToken; this.prompt = null; this.count = 0; }
  put(ids) {
    if (this.prompt === null) { this.prompt = ids[0].length; return; }  // first put: the prompt
    this.count += 1;
    this.onToken();
  }
  end() {}
}

export async function send(text, { maxTokens, onToken }) {
  messages.push({ role: 'user', content: text });
  const streamer = new Timer(onToken);
  const out = await generator(messages, { max_new_tokens: maxTokens, do_sample: false, streamer });
  const reply = out[0].generated_text.at(-1).content;
  messages.push({ role: 'assistant', content: reply });
  return { tokens: streamer.count, promptTokens: streamer.prompt, text: reply };
}
