"""Fixtures for the browser tests: one site build, one server, one Debian Chromium, and one
page with the real compact bundle loaded, shared by the whole session (a load costs
Pyodide boot + model compile: seconds on 2 cores).

The loaded page's browser context routes every request: anything not on our origin is
counted and aborted (`chat.external`), everything is recorded (`chat.seen`).
Real-model tests fail (not skip) with a clear message when the bundle is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The bundle under test: compact by default; SMOLCHAT_WEB_TEST_BUNDLE=<folder> for another one
# (e.g. models/tiny-random while developing: the mechanics run, the "Paris" checks fail).
COMPACT = Path(os.environ.get("SMOLCHAT_WEB_TEST_BUNDLE", ROOT / "models" / "smollm2-135m-instruct-compact"))
LOAD_TIMEOUT_MS = 300_000


def require_bundle(path: Path = COMPACT) -> Path:
    if not (path / "manifest.json").is_file():
        pytest.fail(f"the real bundle {path}/ is missing: build it first with "
                    f"`./build.sh bundle --preset compact` (CI's ./build.sh test builds it before "
                    f"running pytest)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def node_json(site):
    """run(script, bundle): one of this folder's Node scripts (our kernels against ORT Web, on
    the site's own files) over `bundle` -> the JSON of its last stdout line; a missing bundle
    fails saying what to do."""
    def run(script: Path, bundle: Path) -> dict:
        if not (bundle / "manifest.json").is_file():
            pytest.fail(f"{bundle}/ is missing: ./build.sh bundle (see README)", pytrace=False)
        p = subprocess.run(["node", str(script), str(site), str(bundle)],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])
    return run


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    return require_bundle()


@pytest.fixture(scope="session")
def origin(site):
    from smolchat_web.server import serve_in_thread
    server, url = serve_in_thread(site)
    yield url
    server.shutdown()


class LoadedChat:
    """The chat page with the model loaded, plus what the browser saw."""

    def __init__(self, context, page, origin):
        self.context, self.page, self.origin = context, page, origin
        self.external: list[str] = []
        self.seen: list[str] = []
        self.console_errors: list[str] = []
        self.info: dict = {}

    def reset(self, system: str | None = None):
        self.page.evaluate("(s) => window.smolchatApp.bot.setSystemPrompt(s)", system)
        self.page.evaluate("() => document.querySelectorAll('.msg').forEach((m) => m.remove())")

    def send(self, text: str, mode: str = "chat", **settings) -> dict:
        settings.setdefault("temperature", 0)
        settings.setdefault("maxTokens", 48)
        reply = self.page.evaluate(
            "([t, mode, s]) => window.smolchatApp.send(t, {mode, settings: s})", [text, mode, settings])
        assert reply is not None, "the page refused to send (busy or not loaded)"
        assert "error" not in reply, f"the page showed an error: {reply['error']}"
        return reply

    def call(self, expr: str, arg=None):
        return self.page.evaluate(f"(arg) => window.smolchatApp.bot.{expr}", arg)


@pytest.fixture(scope="session")
def chat(browser, origin, artifacts):
    require_bundle()
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    c = LoadedChat(context, None, origin)

    def route(r):
        url = r.request.url
        c.seen.append(url)
        if url.startswith(origin + "/") or url.startswith("data:") or url.startswith("blob:"):
            r.continue_()
        else:
            c.external.append(url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    c.page = page
    page.on("console", lambda m: m.type == "error" and c.console_errors.append(m.text))
    page.on("pageerror", lambda e: c.console_errors.append(f"pageerror: {e}"))
    # The worker's own console (Pyodide, ORT Web) too, in case Chromium does not forward it.
    page.on("worker", lambda w: w.on("console", lambda m: m.type == "error" and c.console_errors.append(
        f"worker: {m.text}")))
    from smolchat_web.headless import resolve_bundle
    page.goto(f"{origin}/index.html?bundle={resolve_bundle(str(COMPACT))}")
    # The loading screenshot: once the bar has moved.
    page.wait_for_function("() => parseFloat(document.getElementById('progress-fill').style.width) > 0",
                           timeout=60_000)
    page.screenshot(path=str(artifacts / "loading.png"))
    c.info = page.evaluate("async () => { await window.smolchatApp.ready; return await window.smolchatApp.bot.info(); }")
    (artifacts / "browser-info.json").write_text(json.dumps(c.info, indent=2))
    yield c
    context.close()
