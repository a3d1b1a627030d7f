"""The compact LM head in our WebAssembly SIMD kernel (web/kernels/lm_head.c, web/src/lm_head.js)
against ONNX Runtime Web's own head, in Node on the site's own files: the graph without its
lm_head/ nodes plus the kernel gives ORT's logits to the bit, through both KV paths
(HeapRunner and TensorRunner), over a script that prefills, decodes and truncates; the exact
bundle (float32 head) keeps ORT's; a kernel that is not wasm, a graph cut short and
lmHead: false each fall back to ORT's head with a note. The browser side (Chromium, 2
threads): tests/embed/test_api.py (info().lm_head, the same greedy ids with lmHead: false).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("lm_head_node.mjs")
BUNDLES = {"tiny": ROOT / "models" / "tiny-random",
           "compact": ROOT / "models" / "smollm2-135m-instruct-compact",
           "exact": ROOT / "models" / "smollm2-135m-instruct-exact"}


@pytest.mark.parametrize("name", ["tiny", "compact"])
def test_kernel_logits_are_orts_bit_for_bit(node_json, name):
    r = node_json(HELPER, BUNDLES[name])
    assert (r["head"], r["note"]) == ("kernel", None)
    assert r["nodes"] == ["MatMulIntegerToFloat", "Mul", "MatMul", "Add"]
    assert "logits" not in r["session_outputs"]
    assert set(r["session_outputs"]) == {"lm_head.codes", "lm_head.scale", "lm_head.features"}
    assert r["identical_heap"] == r["identical_tensors"] == r["steps"] == 8, \
        f"max |diff| {r['max_abs_diff']}"
    assert r["greedy_equal"]
    wasm_magic, cut, off = r["fault_notes"]
    assert "kernel could not start" in wasm_magic
    assert "could not be read" in cut and "truncated" in cut
    assert "turned off by the caller" in off


def test_exact_bundle_keeps_orts_head(node_json):
    r = node_json(HELPER, BUNDLES["exact"])
    assert r["head"] == "ort"
    assert "no int8 LM head" in r["note"]
