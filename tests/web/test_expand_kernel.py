"""The int4 -> int8 expansion in our WebAssembly SIMD kernel (web/kernels/expand.c,
web/src/expand_kernel.js) against runtime_form.js's JS ops, in Node on the site's own files:
model.data comes out byte for byte the same (sha256 = the manifest's, which the build checked
against py_runtime's runtime_form.py) through each way the page and the tools expand
(expandRuntimeData, the load helper's expandParts, the on-demand runtimeDataSource), the
kernel's memory holds a strip of rows, not the form, and a kernel that is not wasm, not
fetched or turned off leaves JS to expand, with a note. The browser side (Chromium):
tests/web/test_chat_page.py (info().expand of the page's load), tests/embed/test_api.py
(expandKernel: false, the same greedy ids), tests/embed/test_reliability.py (a missing
kernels/expand.wasm still loads).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("expand_kernel_node.mjs")
BUNDLES = {"tiny": ROOT / "models" / "tiny-random",
           "compact": ROOT / "models" / "smollm2-135m-instruct-compact"}


@pytest.mark.parametrize("name", ["tiny", "compact"])
def test_kernel_expansion_is_the_js_expansion_byte_for_byte(node_json, name):
    r = node_json(HELPER, BUNDLES[name])
    print(f"{name}: expandRuntimeData CPU ms: kernel {r['kernel_ms']}, JS {r['js_ms']}; "
          f"kernel memory {r['kernel_memory'] / 2**20:.1f} MB")
    assert r["js_sha256"] == r["manifest_sha256"]
    assert r["kernel_sha256"] == r["manifest_sha256"]
    assert r["parts_sha256"] == r["manifest_sha256"]     # the load helper's way
    assert r["source_sha256"] == r["manifest_sha256"]    # the on-demand source
    # every int4 tensor went through the kernel (only the `copy` entries stay in JS), and it
    # never fell back
    assert r["handled"] == r["kernel_tensors"] > 0 and r["handled"] < r["tensors"]
    assert r["failed"] is None
    # one strip of rows (~2 MB of int8 and its inputs) in the kernel's memory, not the form
    assert r["kernel_memory"] <= 16 * 2**20
    wasm_magic, fetch_error, off = r["notes"]
    assert "could not start" in wasm_magic
    assert "could not be fetched" in fetch_error and "./build.sh site" in fetch_error
    assert "turned off by the caller" in off
    assert r["corrupt"] and r["corrupt"].startswith("bundle_corrupt: ") and "rebuild the bundle" in r["corrupt"]


def test_kernel_matches_js_on_shapes_the_bundles_do_not_use(site):
    """Every op the kernel takes, with options today's bundles leave out (no rotation, Hadamard
    blocks 1, 4, 16, 256, K not a multiple of 16, an odd block count a row, Q8_0 / 5-bit /
    coarse rows, int8 columns), over random bytes (float16 NaN and infinity included), cut
    into strips of 3 rows: the same bytes as the JS ops."""
    p = subprocess.run(["node", str(HELPER), str(site), "--synthetic"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    cases = json.loads(p.stdout.strip().splitlines()[-1])["synthetic"]
    assert len(cases) == 8
    assert [c for c in cases if not (c["same"] and c["kernel"])] == []
