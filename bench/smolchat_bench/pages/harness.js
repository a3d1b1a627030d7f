// The in-page half of the benchmark: starts loading the system named in the URL as soon as
// the page runs, and gives the driver (smolchat_bench/browser.py) a small uniform API.
// Every time is performance.now() in ms since navigation start, taken in the page, so the
// driver's own latency never enters a figure.
//
// An adapter module (<system>.js) exports:
//   load({threads, params}) -> info    (model ready to answer; params: the URL's query)
//   reset(systemPrompt|null)            (a new chat)
//   send(text, {maxTokens, onToken}) -> {tokens, promptTokens, text, extra}
//     onToken() is called when a generated token (or a streamed piece) arrives; tokens is the
//     system's own count of generated tokens when it reports one (else null).
// What this ignores: the numbers' meaning (the driver computes TTFT, rates, statistics).

const params = new URLSearchParams(location.search);
const system = params.get('system');
const threads = Number(params.get('threads') || '1');
const log = (s) => { document.getElementById('log').textContent += s + '\n'; };
const MEMORY_WAIT_MS = 10000;  // see memory()

async function start() {
  const adapter = await import(`./${system}.js`);
  const info = await adapter.load({ threads, params });
  const ready_ms = performance.now();
  log(`ready in ${ready_ms.toFixed(0)} ms`);
  return { ready_ms, info, crossOriginIsolated: self.crossOriginIsolated, adapter };
}

const started = start();

window.bench = {
  async ready() {
    try {
      const { adapter, ...r } = await started;
      return r;
    } catch (e) {
      return { error: String(e && (e.stack || e.message) || e) };
    }
  },
  async reset(systemPrompt) {
    const { adapter } = await started;
    await adapter.reset(systemPrompt);
  },
  async turn(text, maxTokens) {
    const { adapter } = await started;
    const times = [];
    const t0 = performance.now();
    const r = await adapter.send(text, { maxTokens, onToken: () => times.push(performance.now()) });
    const t1 = performance.now();
    return { t0, t1, times, tokens: r.tokens ?? null, promptTokens: r.promptTokens ?? null,
             text: r.text, extra: r.extra ?? null };
  },
  // JS + wasm memory of this page and its workers (null when not isolated, or when Chromium
  // has not answered within MEMORY_WAIT_MS: with thread workers (ORT's, wllama's) it answers
  // only after ~60 s, which made a full run ~75 min of mostly waiting):
  // {bytes, by_scope: {Window|DedicatedWorkerGlobalScope|...: bytes}}.
  async memory() {
    if (!self.crossOriginIsolated || !performance.measureUserAgentSpecificMemory) return null;
    const m = await Promise.race([performance.measureUserAgentSpecificMemory(),
                                  new Promise((resolve) => setTimeout(() => resolve(null), MEMORY_WAIT_MS))]);
    if (!m) return null;
    const by_scope = {};
    for (const b of m.breakdown) {
      const scope = b.attribution.length ? b.attribution.map((a) => a.scope).join('+') : 'shared';
      by_scope[scope] = (by_scope[scope] || 0) + b.bytes;
    }
    return { bytes: m.bytes, by_scope };
  },
};
