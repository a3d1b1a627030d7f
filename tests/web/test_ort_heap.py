"""The KV cache in ORT Web's wasm heap (web/src/ort_heap.js) against ORT's public session.run
path (ort_glue.js TensorRunner), in Node on the site's own files: the same logits to the bit
for every step of a script that prefills, decodes, grows the heap buffers, truncates mid-way
and to zero; and reproducible greedy's ground: the positions forwarded whole give the same
bits as forwarded step by step, and a 300-token prompt the same bits in five chunkings.
The browser side, on 2 threads: tests/web/test_chat_page.py
(info().kv_cache) and tests/embed/test_api.py (heapKV: false gives the same greedy ids).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("heap_node.mjs")
BUNDLES = {"tiny": ROOT / "models" / "tiny-random",
           "compact": ROOT / "models" / "smollm2-135m-instruct-compact",
           "exact": ROOT / "models" / "smollm2-135m-instruct-exact"}


def run_node(site: Path, bundle: Path, threads: int = 1) -> dict:
    if not (bundle / "manifest.json").is_file():
        pytest.fail(f"{bundle}/ is missing: ./build.sh bundle (see README)", pytrace=False)
    p = subprocess.run(["node", str(HELPER), str(site), str(bundle), str(threads)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["tiny", "compact", "exact"])
def test_heap_runner_matches_session_run_bit_for_bit(site, name):
    # 1 thread: ORT Web's threaded build cannot start in Node from file: URLs; the page runs
    # the heap path on 2 threads (tests/web/test_chat_page.py, cross-origin isolated)
    r = run_node(site, BUNDLES[name])
    assert (r["kind"], r["reason"]) == ("heap", None)
    assert r["lengths_equal"]
    assert r["identical"] == r["steps"] == 9, f"max |diff| {r['max_abs_diff']}"
    assert r["whole_equals_steps"], "a prompt forwarded whole differs from the same positions " \
                                    "forwarded in steps: prefill and decode take different paths"
    first, last = r["heap_blocks"]
    assert first == last, "heap blocks held changed after the buffers had grown"
    assert len(r["top"][0]) == 3 and r["top"][1] == sorted(r["top"][1], reverse=True)
    assert r["chunkings_equal"] == [True] * 5, "a prompt's logits depend on how it was chunked"
    assert "truncate(301) with 300 cached positions" in r["truncate_error"]
