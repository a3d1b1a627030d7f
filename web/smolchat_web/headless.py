"""Drive the real chat page in headless Debian Chromium (Playwright): `ask` and the\nbrowser runtime of `eval`.

One PageSession = the site (built if missing) + a local server on a free port + one browser +
the page (index.html) with its model loaded once. Calls go through the page's own code path
(window.smolchatApp.send: the UI renders the exchange), so what is measured is what a user
runs. peak_memory_mb is the kernel's peak resident set (VmHWM) of the page's renderer
process, which holds the page, its worker, Pyodide, ORT Web and ORT's thread workers.
(performance.measureUserAgentSpecificMemory() is no use here: ORT's pthread workers sit in
Atomics.wait and never answer, so every call times out after 60 s and leaves them out.)

What this module ignores: the Python runtime (`python -m smolchat ask` prints the same JSON
keys for the CPython backend) and what an eval checks (smolchat.evals scores the turns).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .site import DIST, MODELS, build_site

CHROMIUM = os.environ.get("SMOLCHAT_CHROMIUM", "/usr/bin/chromium")
# FACTS.md: the Debian Chromium flags.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

LOAD_TIMEOUT_MS = 240_000
REPLY_TIMEOUT_MS = 300_000

CAMEL = {"max_tokens": "maxTokens", "temperature": "temperature", "top_k": "topK",
         "top_p": "topP", "repetition_penalty": "repetitionPenalty", "seed": "seed",
         "stop": "stop", "repetition_stop": "repetitionStop"}


def launch_browser(playwright):
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (./build.sh setup)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)


def resolve_bundle(bundle: str) -> str:
    """compact / exact / bundle id / folder -> the bundle id served under /models/ (a folder
    outside models/ is linked into the site), or InvalidSetting / BundleMissing."""
    from smolchat.bundle_id import check, resolve
    path = resolve(str(bundle), MODELS)
    if path.resolve().parent != MODELS.resolve():
        check(path.name)
        link = DIST / "models" / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path.resolve(), target_is_directory=True)
    return path.name


def renderer_peak_mb() -> float | None:
    """Largest VmHWM (peak RSS) among the Chromium renderer processes this Python process
    started (Playwright's driver -> chromium -> renderers). Linux only."""
    import re
    import psutil
    best = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "--type=renderer" not in p.cmdline():
                continue
            with open(f"/proc/{p.pid}/status") as f:
                m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
            if m:
                best = max(best, int(m.group(1)))
        except (psutil.Error, OSError):
            continue
    return round(best / 1024, 1) if best else None


class PageError(RuntimeError):
    """The page reported a SmolChatError (wire form in .error: kind, name, message)."""

    def __init__(self, error: dict):
        super().__init__(f"{error.get('name', 'Error')}: {error.get('message')}")
        self.error = error


class PageSession:
    """Server + browser + loaded page. Use as a context manager."""

    def __init__(self, bundle: str = "compact", threads: int | None = None, log=print,
                 build: bool = True):
        self.bundle, self.threads, self.log, self.build = bundle, threads, log, build
        self.console_errors: list[str] = []
        self.peak_mb: float | None = None

    def __enter__(self):
        from playwright.sync_api import sync_playwright
        from .server import serve_in_thread
        if self.build or not (DIST / "site.json").is_file():
            build_site(log=self.log)
        bid = resolve_bundle(self.bundle)
        self.server, self.origin = serve_in_thread(DIST)
        self._pw = sync_playwright().start()
        try:
            self.browser = launch_browser(self._pw)
            self.page = self.browser.new_page()
            self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
            self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))
            query = f"?bundle={bid}" + (f"&threads={self.threads}" if self.threads else "")
            t0 = time.perf_counter()
            self.page.goto(f"{self.origin}/index.html{query}")
            loaded = self.page.evaluate(
                "async () => { try { await window.smolchatApp.ready; return {info: await window.smolchatApp.bot.info()}; }"
                " catch (e) { return {error: e.toJSON ? e.toJSON() : {kind: 'internal', message: String(e)}}; } }")
            if "error" in loaded:
                raise PageError(loaded["error"])
            self.info = loaded["info"]
            self.wall_load_ms = round((time.perf_counter() - t0) * 1000)
            self.sample_memory()
            self.log(f"headless: loaded {bid} in {self.info.get('load_ms')} ms, "
                     f"threads {self.info.get('threads')}, isolated {self.info.get('cross_origin_isolated')}")
        except BaseException:
            self.close()
            raise
        return self

    def sample_memory(self):
        mb = renderer_peak_mb()
        if mb is not None:
            self.peak_mb = max(self.peak_mb or 0.0, mb)

    def reset(self, system: str | None):
        self.page.evaluate("(s) => window.smolchatApp.bot.setSystemPrompt(s)", system)

    def send(self, message: str, mode: str = "chat", settings: dict | None = None) -> dict:
        opts = {CAMEL[k]: v for k, v in (settings or {}).items()}
        if mode == "generate":    # the page's UI has chat and instruct; generate is the API's
            reply = self.page.evaluate(
                "async ([m, opts]) => { try { return await window.smolchatApp.bot.generate(m, opts); }"
                " catch (e) { return {error: e.toJSON ? e.toJSON() : {kind: 'internal', message: String(e)}}; } }",
                [message, opts])
        else:
            reply = self.page.evaluate(
                "([m, mode, opts]) => window.smolchatApp.send(m, {mode, settings: opts})",
                [message, mode, opts])
        self.sample_memory()
        return reply

    def result(self, reply: dict, mode: str = "chat") -> dict:
        """The `ask --json` shape (same keys as `python -m smolchat ask --json`) + browser facts."""
        if reply is None:
            return {"error": {"kind": "internal", "message": "the page did not send the message"}}
        if "error" in reply:
            return {"error": reply["error"]}
        t = reply.get("timings", {})
        return {
            "reply": reply["text"], "finish_reason": reply["finish_reason"], "mode": mode,
            "prompt_token_ids": reply["prompt_token_ids"],
            "output_token_ids": reply["output_token_ids"],
            "ttft_ms": t.get("ttft_ms"), "prefill_ms": t.get("prefill_ms"),
            "decode_tok_s": t.get("decode_tok_s"), "total_ms": t.get("total_ms"),
            "seed": reply.get("seed"), "bundle_id": self.info.get("bundle_id"),
            "runtime": "browser", "load_ms": self.info.get("load_ms"),
            "peak_memory_mb": self.peak_mb, "threads": self.info.get("threads"),
            "cross_origin_isolated": self.info.get("cross_origin_isolated"),
        }

    def close(self):
        for step in (lambda: self.browser.close(), lambda: self._pw.stop(),
                     lambda: self.server.shutdown()):
            try:
                step()
            except Exception:
                pass

    def __exit__(self, *exc):
        self.close()


def ask(message: str, system: str | None = None, mode: str = "chat", settings: dict | None = None,
        bundle: str = "compact", threads: int | None = None, log=print) -> dict:
    try:
        with PageSession(bundle, threads, log) as s:
            if system is not None:
                s.reset(system)
            return s.result(s.send(message, mode, settings), mode)
    except PageError as e:  # a page that cannot load reports why, in the same JSON
        return {"error": e.error}


def run_cases(cases, bundle: str = "compact", settings: dict | None = None,
              threads: int | None = None, log=print, progress=None) -> dict:
    """Score smolchat.evals cases through the real page: one page for all of them, each case
    from a fresh conversation (setSystemPrompt resets the chat). -> an evals run dict, the
    same shape as the CPython runtime's, plus the page's load facts."""
    from smolchat import evals
    results = []
    with PageSession(bundle, threads, log) as s:
        for i, case in enumerate(cases):
            opts = evals.case_settings(case, settings)
            s.reset(case.system)
            turns = []
            for turn in case.turns:
                t0 = time.perf_counter()
                r = s.result(s.send(turn.user, case.mode, opts), case.mode)
                ms = round((time.perf_counter() - t0) * 1000, 1)
                if "error" in r:
                    turns.append({"user": turn.user, "error": r["error"], "time_ms": ms})
                    break
                turns.append({"user": turn.user, "reply": r["reply"],
                              "finish_reason": r["finish_reason"],
                              "completion_tokens": len(r["output_token_ids"]), "seed": r["seed"],
                              "prompt_token_ids": r["prompt_token_ids"],
                              "output_token_ids": r["output_token_ids"], "time_ms": ms})
            result = evals.score_case(case, turns)
            results.append(result)
            if progress:
                progress(i + 1, len(cases), result)
        if s.console_errors:
            log(f"eval: console errors: {s.console_errors}")
        run = evals.make_run(s.info.get("bundle_id"), "browser", settings or {}, results)
        run["page"] = {k: s.info.get(k) for k in ("load_ms", "threads", "cross_origin_isolated")}
        run["page"]["peak_memory_mb"] = s.peak_mb
    return run
