// Adapter: wllama 3.13.0 (llama.cpp in WebAssembly) on the Q4_1 GGUF, from bench/node_modules.
// Chat through its OpenAI-style createChatCompletion with the GGUF's own ChatML template;
// cache_prompt keeps the KV cache of the shared prefix across turns (its follow-up path).
// The model is cached by wllama itself (OPFS) on first download: useCache.
import { Wllama } from '/npm/@wllama/wllama/esm/index.js';

const quiet = { debug() {}, log() {}, warn: console.warn, error: console.error };
let wllama = null;
let messages = [];

export async function load({ threads }) {
  wllama = new Wllama({ default: '/npm/@wllama/wllama/esm/wasm/wllama.wasm' },
                      { suppressNativeLog: true, logger: quiet });
  await wllama.loadModelFromUrl(new URL('/gguf/SmolLM2-135M-Instruct.Q4_1.gguf', location.href).href, {
    n_threads: threads, n_ctx: 2048, n_batch: 512, n_gpu_layers: 0, useCache: true,
  });
  return { system: 'wllama', version: '3.13.0', multithread: wllama.isMultithread(),
           threads: wllama.getNumThreads(), model: 'SmolLM2-135M-Instruct.Q4_1.gguf' };
}

export function reset(systemPrompt) {
  messages = systemPrompt ? [{ role: 'system', content: systemPrompt }] : [];
}

export async function send(text, { maxTokens, onToken }) {
  messages.push({ role: 'user', content: text });
  let reply = '';
  let usage = null;
  let timings = null;
  await wllama.createChatCompletion({
    messages, max_tokens: maxTokens, temperature: 0, stream: true, cache_prompt: true,
    onData: (chunk) => {
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) { reply += piece; onToken(); }
      if (chunk.usage) usage = chunk.usage;
      if (chunk.timings) timings = chunk.timings;
    },
  });
  messages.push({ role: 'assistant', content: reply });
  // The stream's last chunk carries llama.cpp's timings (usage is null in 3.8.1).
  const promptTokens = usage?.prompt_tokens ?? (timings ? timings.prompt_n + timings.cache_n : null);
  return { tokens: usage?.completion_tokens ?? timings?.predicted_n ?? null, promptTokens,
           text: reply, extra: timings };
}
