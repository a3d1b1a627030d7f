// Adapter: SmolChat itself, through its public JS API (/smolchat.js from dist/site: a module
// worker running Pyodide + ONNX Runtime Web on the compact int4 bundle).
// The reply's own timings and its decode profile ({ort_run_ms, interop_ms, sampling_ms,
// python_ms, steps}: ms summed over the decode steps) are passed through in `extra`
// (metrics.decode_profile reads extra.profile).
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
