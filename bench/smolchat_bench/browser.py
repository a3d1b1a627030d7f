"""Runs one browser system (a page under pages/) in headless Debian Chromium and measures it.

One protocol for every system, per repetition:
  launch A (fresh profile) -> page loads the system          -> ready_cold_ms
                           -> chat: SYSTEM_PROMPT + FIRST     -> ttft_first_ms, decode
                           -> same chat: FOLLOW_UP            -> ttft_followup_ms, decode
                           -> new chat: LONG, 1 new token     -> prefill rate
                           -> memory: measureUserAgentSpecificMemory after each step,
                              RSS of the browser's processes sampled every 100 ms
  launch B (same profile)  -> page loads again               -> ready_cached_ms
A persistent profile on disk is what a returning visitor has (HTTP cache, Cache API, OPFS).
A fresh Chromium per launch keeps each system's memory and caches to itself.

What this ignores: statistics and reporting (report.py), serving (server.py).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from . import prompts
from .paths import BENCH_CACHE

CHROMIUM = "/usr/bin/chromium"
# FACTS.md: the flags that work for Debian Chromium under Playwright, plus eager memory
# measurement (measureUserAgentSpecificMemory otherwise answers after a GC, up to ~20 s).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-blink-features=ForceEagerMeasureMemory"]
LOAD_TIMEOUT_MS = 10 * 60 * 1000


class SystemUnavailable(RuntimeError):
    """The system could not run here; the message says why (reported, not raised further)."""


class RssSampler:
    """Peak RSS of a Chromium's process tree, found by a unique tag on the browser's command
    line (other engineers' Chromiums run on this machine too). Bytes."""

    def __init__(self, tag: str, period_s: float = 0.1):
        self.tag, self.period_s = tag, period_s
        self.peak_total = self.peak_renderer = 0
        self.renderer_now = 0   # the largest renderer at the latest sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _browser(self) -> psutil.Process | None:
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info.get("cmdline") or []
            if any(self.tag in a for a in cmd) and not any(a.startswith("--type=") for a in cmd):
                return p
        return None

    def _run(self) -> None:
        browser = None
        while not self._stop.is_set():
            try:
                browser = browser or self._browser()
                if browser is not None:
                    total, renderer = 0, 0
                    for p in [browser, *browser.children(recursive=True)]:
                        try:
                            rss = p.memory_info().rss
                            total += rss
                            if "--type=renderer" in p.cmdline():
                                renderer = max(renderer, rss)  # the page's renderer is the largest
                        except psutil.Error:
                            pass
                    self.peak_total = max(self.peak_total, total)
                    self.peak_renderer = max(self.peak_renderer, renderer)
                    self.renderer_now = renderer
            except psutil.Error:
                browser = None
            self._stop.wait(self.period_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Chromium:
    """A headless Chromium on a given profile directory, its first tab, and its RSS sampler."""

    def __init__(self, pw, profile: Path):
        self.pw, self.profile, self.tag = pw, profile, f"--smolchat-bench-tag={uuid.uuid4().hex}"

    def __enter__(self) -> "Chromium":
        self.context = self.pw.chromium.launch_persistent_context(
            str(self.profile), executable_path=CHROMIUM, headless=True, args=FLAGS + [self.tag])
        self.rss = RssSampler(self.tag).__enter__()
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.set_default_timeout(LOAD_TIMEOUT_MS)
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        return self

    def __exit__(self, *exc) -> None:
        self.rss.__exit__(*exc)
        self.context.close()

    def open(self, url: str) -> dict:
        self.page.goto(url)
        r = self.page.evaluate("bench.ready()")
        if "error" in r:
            tail = "\n".join(self.console[-5:])
            raise SystemUnavailable(f"load failed: {r['error'][:600]}\n{tail}".strip())
        return r

    def turn(self, text: str, max_tokens: int) -> dict:
        return self.page.evaluate("([t, n]) => bench.turn(t, n)", [text, max_tokens])

    def reset(self, system_prompt: str | None) -> None:
        self.page.evaluate("s => bench.reset(s)", system_prompt)

    def memory(self) -> dict | None:
        return self.page.evaluate("bench.memory()")


@dataclass
class BrowserRep:
    """Raw measurements of one repetition (ms, token counts, bytes)."""
    ready_cold_ms: float
    ready_cached_ms: float | None
    info: dict
    cross_origin_isolated: bool
    turns: dict = field(default_factory=dict)   # name -> bench.turn() result
    uasm: list = field(default_factory=list)      # bench.memory() after each step
    rss_page_peak_bytes: int = 0    # the largest renderer process (the page and its workers)
    rss_total_peak_bytes: int = 0   # every process of this Chromium
    # the system's own per-stage load marks when it reports them (SmolChat: info.stages,
    # {name: [start_ms, end_ms]} since its load began), cold and cached
    stages_cold: dict | None = None
    stages_cached: dict | None = None
    rss_page_peak_cached_bytes: int = 0  # the largest renderer during the cached load alone
    rss_page_cached_ready_bytes: int = 0  # the renderer 0.5 s after the cached load was ready


def run_rep(pw, page_url: str, max_tokens: int, long_text: str = prompts.LONG,
            contexts: dict | None = None, load_only: bool = False) -> dict:
    """One repetition; load_only: the two loads and their memory, no chat turn."""
    (BENCH_CACHE / "profiles").mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=BENCH_CACHE / "profiles"))
    try:
        with Chromium(pw, profile) as br:
            r = br.open(page_url)
            rep = BrowserRep(ready_cold_ms=r["ready_ms"], ready_cached_ms=None, info=r["info"],
                             cross_origin_isolated=r["crossOriginIsolated"],
                             stages_cold=(r["info"] or {}).get("stages"))
            rep.uasm.append(br.memory())
            if not load_only:
                br.reset(prompts.SYSTEM_PROMPT)
                rep.turns["first"] = br.turn(prompts.FIRST, max_tokens)
                rep.uasm.append(br.memory())
                rep.turns["followup"] = br.turn(prompts.FOLLOW_UP, max_tokens)
                rep.uasm.append(br.memory())
                br.reset(None)
                rep.turns["long"] = br.turn(long_text, 1)
                rep.uasm.append(br.memory())
                for name, text in (contexts or {}).items():   # the context sweep (prompts.py)
                    br.reset(None)
                    rep.turns[name] = br.turn(text, prompts.CONTEXT_TOKENS)
            time.sleep(0.3)  # one more RSS sample after the last step
            rep.rss_page_peak_bytes, rep.rss_total_peak_bytes = br.rss.peak_renderer, br.rss.peak_total
        with Chromium(pw, profile) as br:
            r = br.open(page_url)
            rep.ready_cached_ms = r["ready_ms"]
            rep.stages_cached = (r["info"] or {}).get("stages")
            time.sleep(0.5)  # more RSS samples after ready (before any memory measurement, which collects garbage)
            rep.rss_page_peak_cached_bytes = br.rss.peak_renderer
            rep.rss_page_cached_ready_bytes = br.rss.renderer_now
        return asdict(rep)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
