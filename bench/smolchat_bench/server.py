"""A local static server for one benchmark run: every system is served from our own origin
(no CDN), with the headers multi-threaded WebAssembly needs.

Cross-origin isolation (`crossOriginIsolated === true`) needs COOP same-origin + COEP
require-corp; without it SharedArrayBuffer is missing, ONNX Runtime Web silently stays at
1 thread and measureUserAgentSpecificMemory is unavailable. `Cache-Control: no-cache` with
Last-Modified behaves like a static host with revalidation: a returning visitor gets 304s,
and a system's own cache (OPFS, Cache API) is what makes a cached load fast.

Mounts map URL prefixes to directories, longest prefix first; nothing outside them is served.
"""

from __future__ import annotations

import http.server
import mimetypes
import os
import threading
import urllib.parse
from pathlib import Path

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/json", ".json")


class StaticServer:
    """`with StaticServer({"/npm/": dir, ...}) as srv: srv.url("/npm/x.js")`; port 0 = any."""

    def __init__(self, mounts: dict[str, Path], port: int = 0):
        self.mounts = sorted(((p, Path(d)) for p, d in mounts.items()),
                             key=lambda m: -len(m[0]))
        mounts_ = self.mounts

        class Handler(http.server.SimpleHTTPRequestHandler):
            def translate_path(self, path: str) -> str:
                path = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
                for prefix, root in mounts_:
                    if path.startswith(prefix):
                        rel = Path(path[len(prefix):])
                        if ".." in rel.parts:
                            break
                        return str(root / rel)
                return "/nonexistent"

            def end_headers(self):
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.send_header("Cross-Origin-Resource-Policy", "same-origin")
                self.send_header("Cache-Control", "no-cache")
                super().end_headers()

            def log_message(self, *args):
                pass

            def copyfile(self, source, outputfile):
                try:
                    super().copyfile(source, outputfile)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page navigated away mid-download

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        # 127.0.0.1 is a secure context (Cache API, OPFS) like localhost.
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "StaticServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
