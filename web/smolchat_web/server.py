"""Static server for dist/site: the standard library's ThreadingHTTPServer with the headers
the page needs.

- Cross-Origin-Opener-Policy: same-origin + Cross-Origin-Embedder-Policy: require-corp make
  the page crossOriginIsolated (SharedArrayBuffer, so ORT Web can use 2 WASM threads).
- Cross-Origin-Resource-Policy: cross-origin lets other origins embed our files (issue 5), and
  Access-Control-Allow-Origin: * lets them load them in CORS mode (module scripts, the
  widget's worker and its fetches run on the host page's origin).
- MIME types for .mjs/.js (module scripts and workers refuse others), .wasm (streaming
  compile), .whl, .json, .onnx/.bin.
- Cache-Control: no-cache: the browser revalidates (Last-Modified -> 304), so a rebuilt
  bundle or wheel is never served stale.
- Content-Security-Policy (every response: a worker's policy is its script's header): only
  what the page, the widget and the API need: scripts, styles, fetches and workers from this
  origin; 'wasm-unsafe-eval' (Pyodide and ONNX Runtime compile WebAssembly); blob: workers
  (smolchat.js starts its worker through a blob: URL when imported from another origin);
  inline <style> (the widget's shadow root and the examples); an HTML page's own inline
  scripts by their sha256 (examples/api.html), nothing else inline, no eval, no plugins, no
  framing by other sites.
- No directory listings: a folder without index.html is a 404 (/models/, /vendor/ ...).

What this module ignores: building the site (site.py).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".data": "application/octet-stream",
    ".map": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",   # smolchat.d.ts (not video/mp2t)
}

HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


CSP = {
    "default-src": "'self'",
    "script-src": "'self' 'wasm-unsafe-eval'",
    "worker-src": "'self' blob:",
    "connect-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'self'",
}

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.S | re.I)


def content_security_policy(html: bytes | None = None) -> str:
    """The CSP header; for an HTML page, its inline scripts are allowed by their sha256."""
    policy = dict(CSP)
    if html:
        hashes = [base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
                  for m in _INLINE_SCRIPT.finditer(html)]
        if hashes:
            policy["script-src"] += "".join(f" 'sha256-{h}'" for h in hashes)
    return "; ".join(f"{k} {v}" for k, v in policy.items())


class SiteHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME}
    quiet = False

    def end_headers(self):
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.send_header("Content-Security-Policy", content_security_policy(self._html))
        super().end_headers()

    _html = None   # the body of the HTML page being sent (for its inline scripts' hashes)

    def send_head(self):
        path = self.translate_path(self.path)
        if Path(path).is_dir():
            if not Path(path, "index.html").is_file() and self.path.split("?")[0].endswith("/"):
                self.send_error(404, "no directory listings")
                return None
            path = str(Path(path, "index.html"))
        if path.endswith(".html") and Path(path).is_file():
            self._html = Path(path).read_bytes()
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404, "no directory listings")
        return None

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)

    def copyfile(self, source, outputfile):
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page navigated away mid-download


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(root: Path, port: int = 8000, host: str = "127.0.0.1",
                quiet: bool = False) -> SiteServer:
    handler = functools.partial(type("H", (SiteHandler,), {"quiet": quiet}), directory=str(root))
    return SiteServer((host, port), handler)


def serve_in_thread(root: Path, port: int = 0, quiet: bool = True) -> tuple[SiteServer, str]:
    """Start a server on a free port in a daemon thread (tests, headless runs)."""
    server = make_server(root, port, quiet=quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
