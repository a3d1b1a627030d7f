"""Named shapes for every intermediate value of the runtime graph (its value_info).

Why: ONNX Runtime's allocation planner (part of creating a session) gives each new value a
freed buffer of the same shape if it finds one, comparing it with every freed buffer in turn.
A dimension it cannot name (what Reshape -1, Expand, Gather or ScatterElements produce in
its own shape inference) equals nothing, so such buffers are never taken again: they pile up
and planning grows with the square of the graph. On the compact graph (3,449 nodes) that was
3-4 s of native ORT's 3-4.3 s session creation, and most of ORT Web's (measured 2026-12-03,
1 thread: 0.44-0.69 s once every value is named).

How: the graph runs in native ORT at a dozen (sequence, past) sizes with every intermediate
value made an output; each dimension is fitted as a*sequence_length + b*past_sequence_length
+ c on three of them and checked on all. Constants become numbers, every linear form a name
that spells it ("s", "p", "t" = s + p, "3s"; short: the bundle's bytes are budgeted), so two
values share a name only if they share the form; a dimension no linear form fits (Softmax's
rows padded to a block) stays unnamed. The names are facts of this graph, so the planner's reuse
(equal names = equal sizes) stays correct.

What it ignores: graph outputs and inputs (their shapes are declared by graph.py); values no
run produced (optional outputs left empty).
"""

import copy
from collections import Counter

import numpy as np
import onnx
from onnx import helper

from . import BuildError

# (sequence_length, past_sequence_length): the first three fix the fit (independent rows),
# the rest check it, across Softmax's 64-column blocks and past = 0 (empty caches).
SIZES = [(3, 5), (7, 2), (2, 11), (1, 0), (5, 0), (1, 17), (4, 29), (1, 63), (2, 63),
         (70, 1), (1, 130), (9, 200)]


def _dim(values: list) -> int | str | None:
    """Observed sizes of one dimension over SIZES -> its value, its name, or None."""
    x = np.array([[s, p, 1] for s, p in SIZES], np.float64)
    v = np.array(values, np.float64)
    coef = np.rint(np.linalg.solve(x[:3], v[:3])).astype(np.int64)
    if not np.array_equal(x.astype(np.int64) @ coef, v.astype(np.int64)):
        return None
    a, b, c = (int(t) for t in coef)
    if a == 0 and b == 0:
        return c
    # one-letter names (the bundle's bytes are budgeted): s = sequence_length, p =
    # past_sequence_length, t = s + p; other forms spelled out ("3s", "2s+p+1")
    if (a, b, c) == (1, 1, 0):
        return "t"
    terms = [f"{'' if k == 1 else '-' if k == -1 else k}{v}" for k, v in ((a, "s"), (b, "p")) if k] + ([str(c)] if c else [])
    return "+".join(terms).replace("+-", "-")


def annotate(model: onnx.ModelProto, data: np.ndarray, data_name: str) -> dict:
    """Write value_info for every intermediate value of `model` (external data `data_name`,
    whose bytes are `data`), in place. -> {"values", "named", "unnamed_dims"} for the log."""
    import onnxruntime as ort

    declared = {v.name for v in (*model.graph.input, *model.graph.output)}
    values, seen = [], set()
    for n in model.graph.node:
        for o in n.output:
            if o and o not in declared and o not in seen:
                seen.add(o)
                values.append(o)
    probe = copy.deepcopy(model)
    del probe.graph.value_info[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=x) for x in values)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.enable_mem_reuse = False   # (the slow planning this module removes)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # the external data from memory, as smolchat.runtime_form.load_session gives it
    so.add_external_initializers_from_files_in_memory([data_name], [data], [data.size])
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    past = [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]
    shapes: dict[str, list] = {x: [] for x in values}
    dtypes: dict[str, np.dtype] = {}
    for s, p in SIZES:
        feeds = {"input_ids": np.full((1, s), 1, np.int64),
                 "attention_mask": np.ones((1, s + p), np.int64),
                 "position_ids": np.arange(p, p + s, dtype=np.int64)[None]}
        for i in past:
            feeds[i.name] = np.zeros((1, i.shape[1], p, i.shape[3]), np.float32)
        for x, a in zip(values, sess.run(values, feeds)):
            shapes[x].append(a.shape)
            dtypes[x] = a.dtype
    del sess
    infos, named, unnamed = [], Counter(), 0
    for x in values:
        ranks = {len(t) for t in shapes[x]}
        if len(ranks) != 1:
            raise BuildError(f"value {x} changes rank with the input sizes: check graph.py")
        dims = [_dim([t[d] for t in shapes[x]]) for d in range(ranks.pop())]
        unnamed += sum(d is None for d in dims)
        named.update(d for d in dims if isinstance(d, str))
        infos.append(helper.make_tensor_value_info(
            x, helper.np_dtype_to_tensor_dtype(dtypes[x]), dims))
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    return {"values": len(values), "named": dict(named), "unnamed_dims": unnamed}
