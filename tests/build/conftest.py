"""Fixtures for the bundle-builder tests: tiny bundles built once per session (seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
NODE_EXPAND = ROOT / "tests" / "build" / "expand_node.mjs"
JS_MODULE = ROOT / "web" / "src" / "runtime_form.js"
# ORT Web's Node entry (web/node_modules, from ./build.sh's npm ci): the same wasm the page runs
ORT_NODE = ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist" / "ort.node.min.mjs"


def _node_expand_sha(bundle: Path, with_ort: bool = False) -> dict:
    """Run web/src/runtime_form.js in Node on a bundle -> the JSON of expand_node.mjs
    ({sha256, bytes, ms, source_sha256, odd_reads_equal[, ort]}); with_ort: also hand the
    on-demand source to an ORT Web session (needs web/node_modules)."""
    import json
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    args = ["node", str(NODE_EXPAND), str(bundle), JS_MODULE.as_uri()]
    if with_ort:
        assert ORT_NODE.is_file(), f"{ORT_NODE} is missing: run ./build.sh test (it runs npm ci in web/)"
        args.append(ORT_NODE.as_uri())
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    """{'compact': dir, 'exact': dir} built from the tiny random Llama."""
    from smolchat_build.bundle import build
    base = tmp_path_factory.mktemp("tiny")
    return {p: build(p, "tiny-random", None, str(base / p), False, 0)
            for p in ("compact", "exact")}


@pytest.fixture(scope="session")
def tiny_reference():
    """The tiny model exactly as the bundle's reference (weights rounded to Q4_1/Q8_0)."""
    from smolchat_build.source import _round_model_to_grid, tiny_random_model
    m = tiny_random_model()
    _round_model_to_grid(m)
    return m


@pytest.fixture(scope="session")
def node_expand_sha():
    """Function: (bundle dir, with_ort=False) -> the JS expansion's JSON (runs Node)."""
    return _node_expand_sha
