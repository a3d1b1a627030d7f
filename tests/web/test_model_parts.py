"""The buffers a page load frees as it goes (issue 17, memory), in Node on the site's own
runtime_form.js and ORT Web (tests/web/model_parts_node.mjs):

- downloadForm frees each chunk DecompressionStream hands it once copied (84 MB of 64 KB
  chunks otherwise waited for a garbage collection that came after the load's peak);
- model.data as the load helper posts it (~8 MB buffers of consecutive tensors), taken by
  worker.js through ownRegions: each region in a buffer of its own, the shared buffers freed;
- ORT Web, creating the session from those parts, reads the regions in an order of its own
  (not by offset), and each region's buffer is freed as soon as ORT has copied it: one buffer
  fewer at each read. With the ~8 MB buffers as they came, all of them were still held half-way
  through ORT's reads (the whole of model.data next to ORT's own copy of it).

The bytes stay model.data's (sha256 = the manifest's). The browser side (the same code in the
page's load, the same greedy answers): tests/embed/test_load.py, tests/web/test_chat_page.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("model_parts_node.mjs")
BUNDLES = {"tiny": ROOT / "models" / "tiny-random",
           "compact": ROOT / "models" / "smollm2-135m-instruct-compact"}


def run(site: Path, bundle: Path) -> dict:
    if not (bundle / "manifest.json").is_file():
        pytest.fail(f"{bundle}/ is missing: ./build.sh bundle (see README)", pytrace=False)
    # (Node 20 has ArrayBuffer.prototype.transfer, which freeBuffer uses, behind this flag)
    p = subprocess.run(["node", "--harmony-rab-gsab-transfer", str(HELPER), str(site), str(bundle)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["tiny", "compact"])
def test_load_frees_each_buffer_once_read(site, name):
    r = run(site, BUNDLES[name])
    # the inflate's chunks: all given back by the time downloadForm returns
    assert r["inflate_chunks"] > 0 and r["inflate_chunks_live"] == 0
    # the helper's buffers: freed as their regions are copied out, each region alone in its own
    assert r["chunks"] > 0 and r["chunks_live"] == 0
    assert r["own_buffers"] == r["regions"] > r["chunks"]
    assert r["parts_sha256"] == r["manifest_sha256"]
    # ORT reads each region once, not in offset order (why shared buffers stayed) ...
    assert r["ort_reads"] == r["regions"]
    assert 0 < r["ort_increasing_steps"] < r["ort_reads"] - 1
    # ... and as each read begins, the buffers of all reads before the previous one are gone
    # (the previous one's goes at this read: ORT copies a region after subarray returns it)
    n = r["regions"]
    assert r["ort_live_before_read"] == [n - max(0, i - 1) for i in range(n)]
    if r["chunks"] > 1:   # with the shared buffers, all were still held half-way
        assert r["ort_live_chunked_mid"] == r["chunks"]
