"""`./build.sh bench --soak` (= `python -m smolchat_bench --soak`): many turns in the page,
with aborts, clears, system-prompt changes, bad requests and a context that fills, and the
page's memory before and after (issue 20: "< 20 MB growth over 200 turns").

    ./build.sh bench --soak                         # 200 turns, compact bundle, 16 tokens a turn
    ./build.sh bench --soak --turns 50 --bundle tiny-random --out /tmp/soak.json

The page is dist/site served by smolchat_web.server (the real headers: COOP/COEP, CSP), in a
headless Debian Chromium launched like the benchmark's (browser.py, tagged so its processes are
found among other Chromiums). The JS API (/smolchat.js) is driven turn by turn; every turn's
kind comes from its number (no randomness, so two runs do the same thing):

  every turn       chat(message, {maxTokens, temperature: 0})
  turn % 7 == 3    aborted after its first piece (AbortController, mid-reply)
  turn % 11 == 5   a second chat queued behind it and aborted before it starts
  turn % 13 == 8   chat.completions.create with bad messages (InvalidInput; nothing changes)
  turn % 17 == 9   instruct() (no history)
  turn % 25 == 24  clearConversation() while a reply streams
  turn % 40 == 39  setSystemPrompt(one of three) while a reply streams
The context window is small (--context-window, default 512) so the conversation fills it and
old exchanges are dropped every few turns.

Memory: the renderer RSS (the page and its worker: Chromium runs dedicated workers in the
page's renderer process; the lowest of 5 reads 0.2 s apart) and the worker's live ORT tensors
(health()), after warm-up turns and every --every turns; growth_mb = the mean of the last
three samples minus the mean of the first three, trend_mb = the least-squares slope over all
samples times the turns they span (RSS moves +-40 MB with garbage collection, so one sample
says little). Then unload(): RSS 2 s and 10 s after it. Prints one JSON object (and
writes it to --out).

What this ignores: speed (the benchmark proper), other systems.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .browser import Chromium
from .paths import BENCH_CACHE, BUNDLE_ID, MODELS, SITE

WARMUP_TURNS = 10

DRIVER_JS = """
window.soak = {
  async load(bundleUrl, contextWindow) {
    const { SmolChat } = await import('/smolchat.js');
    const t0 = performance.now();
    window.bot = await SmolChat.load({ bundleUrl, contextWindow, cache: false });
    return { load_ms: performance.now() - t0, info: await window.bot.info() };
  },
  async turn(i, maxTokens) {
    const bot = window.bot;
    const text = `Turn ${i}: tell me one short fact about the number ${i}.`;
    const out = { i, kinds: [] };
    const opts = { maxTokens, temperature: 0 };
    if (i % 13 === 8) {
      out.kinds.push('bad_request');
      const before = JSON.stringify(await bot.getConversationHistory());
      try {
        await bot.chat.completions.create({ messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }] });
        out.bad = 'accepted';
      } catch (e) { out.bad = e.name; }
      out.kept = JSON.stringify(await bot.getConversationHistory()) === before;
    }
    if (i % 17 === 9) {
      out.kinds.push('instruct');
      const r = await bot.instruct(text, opts);
      out.finish = r.finish_reason;
      return out;
    }
    const c = new AbortController();
    let first = null;
    const started = new Promise((resolve) => { first = resolve; });
    const reset = i % 25 === 24 ? 'clear' : (i % 40 === 39 ? 'system' : null);
    const abort = i % 7 === 3;
    const p = bot.chat(text, { ...opts, signal: c.signal, onToken: () => first() });
    let queued = null;
    if (i % 11 === 5) {
      out.kinds.push('queued_abort');
      const q = new AbortController();
      queued = bot.chat('QUEUED', { ...opts, signal: q.signal }).then(() => 'resolved', (e) => e.name);
      q.abort();
    }
    if (abort || reset) {
      await Promise.race([started, p.catch(() => {})]);
      if (abort) { out.kinds.push('abort'); c.abort(); }
      if (reset === 'clear') { out.kinds.push('clear'); await bot.clearConversation(); }
      if (reset === 'system') {
        out.kinds.push('system_prompt');
        const prompts = ['You are terse.', 'You are a pirate.', null];
        await bot.setSystemPrompt(prompts[Math.floor(i / 40) % 3]);
      }
    }
    try {
      const r = await p;
      out.finish = r.finish_reason;
      out.dropped = r.dropped_exchanges ?? null;
    } catch (e) { out.finish = e.name; }
    if (queued) out.queued = await queued;
    return out;
  },
  async health() { return await window.bot.health(); },
  async unload() { await window.bot.unload(); window.bot = null; },
};
"""


def renderer_rss(tag: str) -> int:
    """RSS (bytes) of the largest renderer process of the tagged Chromium (the page's): the
    browser process carries the tag, its renderers are its descendants (browser.RssSampler)."""
    best = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if any(tag in a for a in cmd) and not any(a.startswith("--type=") for a in cmd):
            for c in p.children(recursive=True):
                try:
                    if "--type=renderer" in c.cmdline():
                        best = max(best, c.memory_info().rss)
                except psutil.Error:
                    pass
    return best


def quiet_rss(tag: str, reads: int = 5, gap_s: float = 0.2) -> int:
    """The lowest of a few renderer RSS reads 0.2 s apart: garbage not yet collected moves
    a single read by tens of MB."""
    values = []
    for _ in range(reads):
        values.append(renderer_rss(tag))
        time.sleep(gap_s)
    return min(values)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def mb(n: float) -> float:
    return round(n / 1e6, 1)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m smolchat_bench --soak", description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16, help="new tokens per turn")
    ap.add_argument("--context-window", type=int, default=512)
    ap.add_argument("--bundle", default=BUNDLE_ID, help="bundle id under models/ (default %(default)s)")
    ap.add_argument("--every", type=int, default=10, help="memory sample every N turns")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.turns < WARMUP_TURNS + 3 * a.every:
        ap.error(f"--turns must be >= {WARMUP_TURNS + 3 * a.every} (warm-up + three samples)")
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not (SITE / "smolchat.js").is_file() or not (MODELS / args.bundle / "manifest.json").is_file():
        print(f"the soak needs dist/site and models/{args.bundle}: ./build.sh bench builds both",
              file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright
    from smolchat_web.server import serve_in_thread

    server, origin = serve_in_thread(SITE)
    (BENCH_CACHE / "profiles").mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="soak-", dir=BENCH_CACHE / "profiles"))
    log = lambda m: print(f"[soak] {m}", file=sys.stderr, flush=True)   # noqa: E731
    try:
        with sync_playwright() as pw, Chromium(pw, profile) as br:
            page = br.page
            page.goto(f"{origin}/examples/widget.html")
            rss_page = renderer_rss(br.tag)
            page.evaluate(DRIVER_JS)
            loaded = page.evaluate("([u, w]) => soak.load(u, w)",
                                   [f"{origin}/models/{args.bundle}/", args.context_window])
            log(f"loaded {loaded['info'].get('bundle_id')} in {loaded['load_ms'] / 1000:.1f} s")
            samples, turns, kinds = [], [], {}
            t0 = time.monotonic()
            for i in range(args.turns):
                r = page.evaluate("([i, n]) => soak.turn(i, n)", [i, args.max_tokens])
                turns.append(r)
                for k in r["kinds"] or ["chat"]:
                    kinds[k] = kinds.get(k, 0) + 1
                if i + 1 >= WARMUP_TURNS and (i + 1 - WARMUP_TURNS) % args.every == 0:
                    h = page.evaluate("soak.health()")
                    samples.append({"turn": i + 1, "rss_mb": mb(quiet_rss(br.tag)),
                                    "live_tensors": h.get("live_tensors"), "status": h.get("status")})
                    log(f"turn {i + 1}: renderer {samples[-1]['rss_mb']} MB, "
                        f"{samples[-1]['live_tensors']} live tensors")
            soak_s = time.monotonic() - t0
            before_unload = renderer_rss(br.tag)
            page.evaluate("soak.unload()")
            time.sleep(2)
            after_2s = renderer_rss(br.tag)
            time.sleep(8)
            after_10s = renderer_rss(br.tag)
            console = [c for c in br.console if c.startswith(("error", "pageerror"))]
    finally:
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)

    first = [s["rss_mb"] for s in samples[:3]]
    last = [s["rss_mb"] for s in samples[-3:]]
    growth = round(sum(last) / len(last) - sum(first) / len(first), 1)
    # the trend over every sample, as MB over the measured turns (less noisy than the ends)
    trend = round(slope([(s["turn"], s["rss_mb"]) for s in samples])
                  * (samples[-1]["turn"] - samples[0]["turn"]), 1)
    bad = [t for t in turns if "bad_request" in t["kinds"] and not (t.get("bad") == "InvalidInput" and t.get("kept"))]
    queued = [t for t in turns if "queued_abort" in t["kinds"] and t.get("queued") != "AbortError"]
    result = {
        "bundle": args.bundle, "turns": args.turns, "max_tokens": args.max_tokens,
        "context_window": args.context_window, "soak_s": round(soak_s, 1),
        "load_s": round(loaded["load_ms"] / 1000, 1), "kinds": kinds,
        "exchanges_dropped_max": max((t.get("dropped") or 0) for t in turns),
        "finish_reasons": {f: sum(1 for t in turns if t.get("finish") == f)
                           for f in sorted({str(t.get("finish")) for t in turns})},
        "renderer_rss_mb": {"page_before_load": mb(rss_page), "samples": samples,
                            "growth_mb": growth, "trend_mb": trend, "before_unload": mb(before_unload),
                            "after_unload_2s": mb(after_2s), "after_unload_10s": mb(after_10s)},
        "live_tensors": sorted({s["live_tensors"] for s in samples}),
        "problems": {"bad_request_not_refused_or_changed_history": len(bad),
                     "queued_abort_not_abort_error": len(queued), "console_errors": console},
        "growth_under_20_mb": growth < 20 and trend < 20,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
