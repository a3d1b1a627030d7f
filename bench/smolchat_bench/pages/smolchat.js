// Adapter: SmolChat itself, through its public JS API (/smolchat.js from dist/site: a module
// worker running Pyodide + ONNX Runtime Web on the compact int4 bundle).
// The reply's own timings and any per-step profile the engine reports are passed through in
// `extra` (see smolchat_bench/profile.py for the fields the benchmark reads).
import { SmolChat } from '/smolchat.js';

let bot = null;

export async function load({ threads, params }) {
  const bundle = `/models/${params.get('bundle') || 'smollm2-135m-instruct-compact'}/`;
  bot = await SmolChat.load({ bundleUrl: new URL(bundle, location.href).href, threads });
  return { system: 'smolchat', ...(bot.loadInfo ?? {}) };
}

export async function reset(systemPrompt) {
  await bot.setSystemPrompt(systemPrompt ?? null);
}

export async function send(text, { maxTokens, onToken }) {
  const r = await bot.chat(text, { maxTokens, temperature: 0, onToken: () => onToken() });
  const { text: reply, prompt_tokens, completion_tokens, finish_reason, timings, profile } = r;
  return { tokens: completion_tokens ?? null, promptTokens: prompt_tokens ?? null, text: reply,
           extra: { finish_reason, timings: timings ?? null, profile: profile ?? null } };
}
