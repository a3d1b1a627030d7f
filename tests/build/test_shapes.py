"""The named shapes the build writes into the runtime graph (build/smolchat_build/shapes.py):
the fit itself, and on the real bundles that every intermediate value is named, that the names
hold at sizes the build never ran, and that ORT's buffer reuse planned from them computes what
a session without reuse computes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from smolchat.runtime_form import expand_runtime_data, read_manifest
from smolchat_build.shapes import SIZES, _dim

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = [ROOT / "models" / n for n in ("smollm2-135m-instruct-compact",
                                         "smollm2-135m-instruct-exact")]


def test_fit_names_linear_forms_and_leaves_the_rest():
    col = lambda f: [f(s, p) for s, p in SIZES]   # noqa: E731
    assert _dim(col(lambda s, p: s)) == "s"
    assert _dim(col(lambda s, p: p)) == "p"
    assert _dim(col(lambda s, p: s + p)) == "t"
    assert _dim(col(lambda s, p: 3 * s)) == "3s"
    assert _dim(col(lambda s, p: 2 * s + p + 1)) == "2s+p+1"
    assert _dim(col(lambda s, p: s - p - 2)) == "s-p-2"
    assert _dim(col(lambda s, p: 576)) == 576
    # Softmax's columns padded to a block of 64: linear on the first sizes, not on all
    assert _dim(col(lambda s, p: -(-(s + p) // 64) * 64)) is None


def _size(dim, s: int, p: int):
    """A value_info dimension at sequence s, past p -> int, or None when unnamed."""
    if dim.HasField("dim_value"):
        return dim.dim_value
    if not dim.HasField("dim_param"):
        return None
    total = 0
    for sign, k, v in re.findall(r"([+-]?)(\d*)([spt]?)", dim.dim_param):
        if not (k or v):
            continue
        n = int(k or 1) * {"s": s, "p": p, "t": s + p, "": 1}[v]
        total += -n if sign == "-" else n
    return total


def _feeds(sess, s: int, p: int) -> dict:
    feeds = {"input_ids": (np.arange(s, dtype=np.int64)[None] * 37 + 11) % 49152,
             "attention_mask": np.ones((1, s + p), np.int64),
             "position_ids": np.arange(p, p + s, dtype=np.int64)[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            # a cache of small varied values (zeros would hide a wrong buffer)
            n = i.shape[1] * p * i.shape[3]
            feeds[i.name] = (np.sin(np.arange(n, dtype=np.float32)) * 0.5).reshape(
                1, i.shape[1], p, i.shape[3])
    return feeds


@pytest.mark.real_model
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name.rsplit("-", 1)[-1])
def test_every_value_is_named_and_the_names_hold(bundle):
    import onnxruntime as ort
    if not bundle.exists():
        pytest.skip(f"{bundle} not built (./build.sh bundle)")
    man = read_manifest(bundle)
    model = onnx.load(str(bundle / man["runtime"]["graph"]), load_external_data=False)
    declared = {v.name for v in (*model.graph.input, *model.graph.output)}
    values = [o for n in model.graph.node for o in n.output if o and o not in declared]
    info = {v.name: v for v in model.graph.value_info}
    assert set(values) <= set(info), "values without value_info"
    # unnamed dimensions: only Softmax's padded columns (Pad -> Softmax, 1 each per layer)
    unnamed = [v for v in values if any(not d.HasField("dim_value") and not d.HasField("dim_param")
                                        for d in info[v].type.tensor_type.shape.dim)]
    assert len(unnamed) <= 2 * man["model"]["num_layers"]

    data = expand_runtime_data(bundle, man)
    probe = onnx.load(str(bundle / man["runtime"]["graph"]), load_external_data=False)
    probe.graph.output.extend(onnx.ValueInfoProto(name=x) for x in values)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.enable_mem_reuse = False
    so.add_external_initializers_from_files_in_memory(
        [man["runtime"]["external_data"]], [data], [data.size])
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for s, p in [(13, 150), (1, 300), (66, 0)]:   # none of them among shapes.SIZES
        got = sess.run(values, _feeds(sess, s, p))
        for name, a in zip(values, got):
            want = [_size(d, s, p) for d in info[name].type.tensor_type.shape.dim]
            assert len(want) == a.ndim and all(w in (None, g) for w, g in zip(want, a.shape)), \
                (name, want, a.shape, s, p)


@pytest.mark.real_model
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name.rsplit("-", 1)[-1])
def test_buffer_reuse_planned_from_the_names_computes_the_same(bundle):
    """ORT reuses a freed buffer for a value whose named shape equals the buffer's: a name
    that lied would hand a value a buffer of the wrong size. Same outputs with reuse on and
    off, prefill then decode, bit for bit."""
    import onnxruntime as ort
    if not bundle.exists():
        pytest.skip(f"{bundle} not built (./build.sh bundle)")
    man = read_manifest(bundle)
    data = expand_runtime_data(bundle, man)
    graph = (bundle / man["runtime"]["graph"]).read_bytes()
    outs = {}
    for reuse in (True, False):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_mem_reuse = reuse
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.add_external_initializers_from_files_in_memory(
            [man["runtime"]["external_data"]], [data], [data.size])
        sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs[reuse] = [sess.run(names, _feeds(sess, s, p)) for s, p in [(70, 0), (1, 70), (5, 200)]]
    for a, b in zip(outs[True], outs[False]):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
