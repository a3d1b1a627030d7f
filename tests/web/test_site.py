"""The assembled site and its server, without the model: contents, headers, MIME types,
the error page, and the JS vocabulary helpers (top-k, repetition penalty)."""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.browser


def head(url: str):
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}


def test_site_has_everything_from_our_origin(site):
    info = json.loads((site / "site.json").read_text())
    assert info["versions"] == {"pyodide": "314.0.7", "ort": "1.30.0", "tokenizers": "0.2.0",
                                "marked": "18.2.1", "dompurify": "3.5.0"}
    for path in ["index.html", "smolchat.js", "protocol.js", "worker.js", "app.js", "app.css",
                 "vendor/pyodide/pyodide.mjs", "vendor/pyodide/pyodide.asm.wasm",
                 "vendor/pyodide/python_stdlib.zip", "vendor/pyodide/pyodide-lock.json",
                 "vendor/ort/ort.wasm.min.mjs", "vendor/ort/ort-wasm-simd-threaded.wasm",
                 "vendor/tokenizers/tokenizers.min.mjs", "markdown.js", "vendor/marked/marked.esm.js",
                 "vendor/dompurify/purify.es.mjs", info["wheel"]]:
        assert (site / path).is_file(), path
    # Only the WASM variant we run is shipped (no jsep/jspi/asyncify/webgpu builds).
    assert sorted(p.name for p in (site / "vendor/ort").iterdir()) == [
        "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", "ort.wasm.min.mjs"]
    assert info["wheel"].startswith("wheels/smolchat-") and info["wheel"].endswith("-py3-none-any.whl")
    assert info["default_bundle"] == "smollm2-135m-instruct-compact"
    # the progress bar counts what every load fetches: our wheel, not the template packages
    # (a ChatML bundle never fetches them: worker.js installTemplatePackages)
    assert info["wheel"] in info["runtime_files"] and info["python_packages"]
    assert not set(info["python_packages"]) & set(info["runtime_files"])


@pytest.mark.parametrize("path,mime", [
    ("index.html", "text/html"), ("smolchat.js", "text/javascript"),
    ("vendor/pyodide/pyodide.mjs", "text/javascript"), ("vendor/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
    ("vendor/pyodide/pyodide.asm.wasm", "application/wasm"), ("site.json", "application/json"),
])
def test_headers_and_mime(origin, path, mime):
    status, h = head(f"{origin}/{path}")
    assert status == 200
    assert h["content-type"].startswith(mime)
    assert h["cross-origin-opener-policy"] == "same-origin"
    assert h["cross-origin-embedder-policy"] == "require-corp"
    assert h["cross-origin-resource-policy"] == "cross-origin"


def test_wheel_mime(origin, site):
    wheel = json.loads((site / "site.json").read_text())["wheel"]
    assert head(f"{origin}/{wheel}")[1]["content-type"] == "application/zip"


@pytest.fixture(scope="module")
def error_page(browser, origin, artifacts):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{origin}/index.html?bundle=no-such-bundle")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    page.screenshot(path=str(artifacts / "error.png"))
    yield page, errors
    page.close()


def test_missing_bundle_is_shown_in_plain_words(error_page):
    page, errors = error_page
    text = page.inner_text("#error-text")
    assert "model files could not be found" in text and "./build.sh bundle" in text
    assert page.get_attribute("#error", "data-kind") == "bundle_missing"
    assert page.is_disabled("#send") and page.is_disabled("#input")
    assert errors == []


def test_topk_and_repetition_penalty_in_js(error_page):
    page, _ = error_page
    r = page.evaluate("""async () => {
        const g = await import('/ort_glue.js');
        const t = (arr) => ({ dims: [1, 1, arr.length], data: Float32Array.from(arr) });
        const logits = t([1, 5, 3, 5, -2, 4]);
        return {
            top3: g.topK(logits, 3, 1, null),
            argmax: g.topK(logits, 1, 1, null),
            penal: g.topK(logits, 3, 2, [1, 4]),
            big: g.topK(t(Array.from({length: 300}, (_, i) => (i * 7919) % 301)), 100, 1, null)[0].slice(0, 3),
            lastRow: g.topK({ dims: [1, 2, 3], data: Float32Array.from([9, 9, 9, 0, 2, 1]) }, 1, 1, null),
        };
    }""")
    assert r["top3"] == [[1, 3, 5], [5, 5, 4]]           # ties: the lower id first
    assert r["argmax"] == [[1], [5]]
    assert r["penal"] == [[3, 5, 2], [5, 4, 3]]          # id 1: 5/2 = 2.5 drops below 3; id 4: -2*2
    assert r["big"] == sorted(range(300), key=lambda i: (-((i * 7919) % 301), i))[:3]
    assert r["lastRow"] == [[1], [2]]                    # logits [1, s, vocab]: last position


def test_penalties_and_logsumexp_in_js_equal_numpy(error_page):
    """ort_glue.js topK with OpenAI's penalties and the vocabulary-wide log-sum-exp against the
    CPython backend's numpy code (OnnxBackend.candidates) on the same float32 logits."""
    import numpy as np
    from smolchat.backend_onnx import OnnxBackend
    page, _ = error_page
    rng = np.random.default_rng(7)
    row = (rng.standard_normal(49152) * 4).astype(np.float32)
    row[[10, 11, 12]] = row.max() + np.float32(0.5)             # penalized ids near the top
    count_ids, counts = [10, 11, 400, 12], [3, 1, 2, 1]
    backend = OnnxBackend.__new__(OnnxBackend)                  # candidates() needs only logits
    backend._logits = row
    for k, rep, f, p in ((1, 1.0, 0.5, 0.25), (40, 1.3, 0.5, 0.25), (120, 1.0, -0.7, 1.5), (5, 1.0, 0.0, 0.0)):
        want = backend.candidates(k, rep, [10, 400, 7], count_ids=count_ids, counts=counts,
                                  frequency_penalty=f, presence_penalty=p, logsumexp=True)
        got = page.evaluate("""async ([row, k, rep, f, p, cids, cs]) => {
            const g = await import('/ort_glue.js');
            return g.topK({ dims: [1, 1, row.length], data: Float32Array.from(row) }, k, rep, [10, 400, 7], cids, cs, f, p, true);
        }""", [row.tolist(), k, rep, f, p, count_ids, counts])
        assert got[0] == want[0], (k, rep, f, p)                # the same ids, in the same order
        assert got[1] == want[1], (k, rep, f, p)                # the same float32 values
        assert got[2] == pytest.approx(want[2], abs=1e-9)       # sums in another order
    plain = backend.candidates(3)
    assert len(plain) == 2 and plain[0][0] in (10, 11, 12)


def test_build_sh_help_prints_usage():
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([str(root / "build.sh"), "help"], capture_output=True, text=True, check=True).stdout
    assert "./build.sh serve" in out and "./build.sh test" in out
    assert "set -e" not in out and "ROOT=" not in out and "#" not in out


def test_rebuild_removes_what_no_source_gives(tmp_path):
    """A file left in the site by an earlier build (a renamed module, an experiment) is not
    served by the next: the site is exactly what was assembled; bundles' links stay."""
    from smolchat_web.site import build_site
    out = tmp_path / "site"
    info = build_site(out, log=lambda m: None)
    (out / "old_module.js").write_text("export const stale = true;\n")
    (out / "vendor/ort/ort-wasm-simd-threaded.jsep.wasm").write_bytes(b"\0asm")
    (out / "scratch" / "deep").mkdir(parents=True)
    (out / "scratch" / "deep" / "x.html").write_text("<p>x</p>")
    build_site(out, log=lambda m: None)
    assert not (out / "old_module.js").exists()
    assert not (out / "vendor/ort/ort-wasm-simd-threaded.jsep.wasm").exists()
    assert not (out / "scratch").exists()
    for path in ["index.html", "smolchat.js", "examples/widget.html", info["wheel"],
                 "vendor/ort/ort-wasm-simd-threaded.wasm", "site.json"]:
        assert (out / path).is_file(), path
    for name in info["bundles"]:
        assert (out / "models" / name / "manifest.json").is_file(), name
