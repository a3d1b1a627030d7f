"""What embedding needs from the site and its server, without a browser: the widget, the
TypeScript declarations and the examples are in dist/site, and every file carries the CORS and
CORP headers that let another origin load it."""

from __future__ import annotations

import urllib.request

import pytest


def head(url: str):
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}


@pytest.mark.parametrize("path, mime", [
    ("widget.js", "text/javascript"), ("smolchat.js", "text/javascript"), ("openai.js", "text/javascript"),
    ("bundle_cache.js", "text/javascript"), ("worker.js", "text/javascript"),
    ("smolchat.d.ts", "text/plain"), ("examples/widget.html", "text/html"), ("examples/api.html", "text/html"),
    ("vendor/pyodide/pyodide.asm.wasm", "application/wasm"),
])
def test_embedding_files_are_served_to_other_origins(origin, path, mime):
    status, h = head(f"{origin}/{path}")
    assert status == 200 and h["content-type"].startswith(mime), (path, h.get("content-type"))
    assert h["access-control-allow-origin"] == "*"
    assert h["cross-origin-resource-policy"] == "cross-origin"


def test_examples_load_from_the_site_root(site):
    for name in ("widget.html", "api.html"):
        text = (site / "examples" / name).read_text()
        assert ("../widget.js" in text) if name == "widget.html" else ("'../smolchat.js'" in text)
    assert "innerHTML" not in (site / "examples" / "api.html").read_text()
