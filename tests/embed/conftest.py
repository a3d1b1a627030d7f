"""Fixtures for the embedding tests (issue 5): the built site on one port, a third-party host
server on another, one Debian Chromium, and helpers that count bundle bytes by route
interception.

Every test gets its own browser context (a fresh profile: empty Cache Storage), so a cache
hit is always one the test itself produced. Real-model tests fail (not skip) with a clear
message when the bundle is missing; models/tiny-random/ (random weights, same format) serves
the plumbing tests that need no real answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPACT = ROOT / "models" / "smollm2-135m-instruct-compact"
TINY = ROOT / "models" / "tiny-random"
SITE = ROOT / "dist" / "site"   # what the app server serves (./build.sh site)
LOAD_TIMEOUT_MS = 240_000
SENT: Counter = Counter()   # path -> body bytes the app server sent
BUNDLE_FILES = ("model.onnx", "weights.bin", "tokenizer.json", "tokenizer_config.json",
                "config.json", "generation_config.json")


def require_bundle(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        pytest.fail(f"the bundle {path}/ is missing: build it first with "
                    f"`./build.sh bundle --preset compact` (tiny: `./build.sh bundle --source "
                    f"tiny-random --out models/tiny-random`)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def origin(site):
    """The app: dist/site served by smolchat_web.server (COOP/COEP/CORP/CORS headers), with a
    count of the body bytes it sends per path (`SENT`), i.e. what went over the network."""
    from smolchat_web.server import SiteHandler, SiteServer

    class Counting(SiteHandler):
        quiet = True

        def copyfile(self, source, outputfile):
            start = source.tell()
            try:
                if LINE["rate"] and "/models/" in self.path:
                    while chunk := source.read(64 * 1024):
                        _pace(len(chunk))
                        outputfile.write(chunk)
                else:
                    super().copyfile(source, outputfile)
            finally:
                SENT[self.path.split("?")[0]] += source.tell() - start

    server = SiteServer(("127.0.0.1", 0), partial(Counting, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class HostPages(SimpleHTTPRequestHandler):
    """A third-party site: plain headers (no COOP/COEP, so not cross-origin isolated), except
    under /isolated/, served with COOP + COEP like a site that opted into isolation."""
    pages: dict[str, str] = {}

    def do_GET(self):
        body = self.pages.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.path.startswith("/isolated/"):
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def host():
    """Another origin (and site: `localhost` vs the app's 127.0.0.1): put HTML into
    host.pages[path] and open host.url + path."""
    handler = type("H", (HostPages,), {"pages": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.url = f"http://localhost:{server.server_address[1]}"
    yield handler
    server.shutdown()


class BundleTraffic:
    """Route interception on a context: every request under /models/ is recorded (`requests`);
    `patch_manifest` rewrites manifest.json on the way. Body bytes are counted where they are
    sent, by the app server (`model_bytes()`): passing 70 MB through Playwright's protocol
    would take minutes on 2 busy cores."""

    def __init__(self, context, origin: str):
        self.requests: list[str] = []
        self.other_origins: list[str] = []
        self.patch = None
        self.origin = origin
        SENT.clear()
        context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if "/models/" not in urlsplit(url).path:
            if not url.startswith(("data:", "blob:", self.origin, "http://localhost:")):
                self.other_origins.append(url)
            route.continue_()
            return
        self.requests.append(url)
        if url.endswith("/manifest.json") and self.patch is not None:
            response = route.fetch()
            route.fulfill(response=response, body=json.dumps(self.patch(response.json())))
            return
        route.continue_()

    def model_files(self) -> list[str]:
        """Requests for bundle files other than manifest.json."""
        return [u for u in self.requests if not u.endswith("/manifest.json")]

    @staticmethod
    def model_bytes() -> int:
        return sum(n for path, n in SENT.items() if "/models/" in path and not path.endswith("/manifest.json"))

    def reset(self):
        self.requests.clear()
        SENT.clear()


# The app server's line for bundle files (bytes/s, None: unthrottled), shared by all requests.
LINE = {"rate": None, "next": 0.0}
LINE_LOCK = threading.Lock()


def _pace(n: int) -> None:
    """Wait until `n` more bytes fit on the shared line."""
    with LINE_LOCK:
        start = max(time.monotonic(), LINE["next"])
        LINE["next"] = start + n / LINE["rate"]
        until = LINE["next"]
    time.sleep(max(0.0, until - time.monotonic()))


class Line:
    """What throttle() returns: its CDP session; `send` of downloadThroughput -1 also lifts the
    app server's throttle."""

    def __init__(self, cdp):
        self.cdp = cdp

    def send(self, method, params=None):
        if method == "Network.emulateNetworkConditions" and (params or {}).get("downloadThroughput", -1) < 0:
            LINE["rate"] = None
        return self.cdp.send(method, params)


def throttle(context, page, bytes_per_s: int):
    """A visitor's line: DevTools network emulation for the page and its workers, and the app
    server sending bundle files (/models/) at `bytes_per_s` at most: the bundle is fetched by
    the load's helper worker (web/src/load_worker.js), a nested worker that the page's DevTools
    emulation does not reach."""
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 20,
                                                  "downloadThroughput": bytes_per_s,
                                                  "uploadThroughput": -1})
    LINE.update(rate=bytes_per_s, next=0.0)
    return Line(cdp)


def load_api(page, bundle_url: str | None = None, **options) -> dict:
    """SmolChat.load(...) in the page (module /smolchat.js of the page's origin), keeping the
    instance as window.bot and the progress events as window.progress. Returns info()."""
    return page.evaluate(
        """async ([bundleUrl, options]) => {
             const { SmolChat } = await import('/smolchat.js');
             window.progress = [];
             const t0 = performance.now();
             window.bot = await SmolChat.load({ ...options, ...(bundleUrl ? { bundleUrl } : {}),
               onProgress: (p) => window.progress.push({ ...p, t: performance.now() - t0 }) });
             return await window.bot.info();
           }""", [bundle_url, options])


def new_page(context, errors: list | None = None):
    page = context.new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    if errors is not None:
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return page


@contextmanager
def host_page(browser, host, path: str, html: str):
    """`html` served by the third-party host at `path`, opened in a fresh context: yields
    (page, errors, logs), logs being the page's console.log lines in order."""
    host.pages[path] = html
    context = browser.new_context()
    errors: list[str] = []
    logs: list[str] = []
    try:
        page = new_page(context, errors)
        page.on("console", lambda m: logs.append(m.text) if m.type == "log" else None)
        page.goto(host.url + path)
        yield page, errors, logs
    finally:
        context.close()


def elapsed(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for the test modules (no imports of conftest needed)."""
    return SimpleNamespace(COMPACT=COMPACT, TINY=TINY, SITE=SITE, BUNDLE_FILES=BUNDLE_FILES,
                           require_bundle=require_bundle, BundleTraffic=BundleTraffic,
                           throttle=throttle, load_api=load_api, new_page=new_page, host_page=host_page,
                           elapsed=elapsed)
