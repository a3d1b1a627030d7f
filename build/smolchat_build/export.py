"""ONNX: Optimum `text-generation-with-past` export of the fp32 reference, then the runtime
graph (README "Bundle format"):

* every layer MatMul reads its weight [K, N] from external data (`model.data`): fp32 MatMul
  (preset exact) or DynamicQuantizeLinear -> MatMulInteger(int8 weight, per-column float
  scale) -> Cast -> Mul (preset compact; the form quantize_dynamic(per_channel=True) makes);
* ONE embedding table, stored transposed [hidden, vocab], serves the input Gather (axis=1)
  and the LM head MatMul (int8 + per-token scale, or fp32);
* a Slice named `last_position` before the LM head: logits [1, 1, vocab] (the scoring variant
  removes it in memory: smolchat.runtime_form.full_logits_graph);
* short node/value names, no value_info (the graph file is part of the download).

What it leaves to others: the bytes of the weights (encode.py) and their layout (offsets are
filled in by `attach_external`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import BuildError
from smolchat.runtime_form import EXTERNAL_DATA_NAME, LAST_POSITION_NODE


def export_fp32(model, out_dir: Path) -> Path:
    """Optimum export (KV cache) of the reference model -> out_dir/model.onnx."""
    import warnings
    from optimum.exporters.onnx import onnx_export_from_model
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(model, str(out_dir), task="text-generation-with-past",
                               do_validation=False)
    path = out_dir / "model.onnx"
    if not path.exists():
        raise BuildError(f"optimum export wrote no {path}")
    return path


@dataclass
class ExtTensor:
    """One tensor of model.data: what the graph sees (name, dtype, shape) and where its
    bytes come from (`param` = HF parameter name of a QTensor, or `values` to copy)."""
    name: str
    dtype: int          # onnx TensorProto type
    shape: tuple
    role: str           # "matrix" | "scale" | "copy"
    param: str | None = None
    values: np.ndarray | None = None


def _h(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def runtime_graph(fp32_path: Path, tensors: dict, preset: str) -> tuple[onnx.ModelProto, list]:
    """-> (graph with external initializers not yet placed, [ExtTensor]) for preset
    'compact' (int8 compute) or 'exact' (fp32 compute)."""
    m = onnx.load(str(fp32_path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    by_hash = {_h(q.dequant()): name for name, q in tensors.items()}
    producer = {o: n for n in g.node for o in n.output}
    emb = "model.embed_tokens.weight"
    ext: list[ExtTensor] = []
    new_nodes: list = []
    counter = [0]

    def fresh(prefix="t"):
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def const_i64(vals):
        name = fresh("k")
        g.initializer.append(numpy_helper.from_array(np.array(vals, np.int64), name))
        return name

    w_names: dict = {}  # HF param -> (weight name, scale name)

    def weight_for(param: str, k: int, n: int):
        if param not in w_names:
            base = "emb" if param == emb else f"w{len(w_names)}"
            if preset == "compact":
                ext.append(ExtTensor(base, TensorProto.INT8, (k, n), "matrix", param))
                ext.append(ExtTensor(base + "_s", TensorProto.FLOAT, (n,), "scale", param))
                w_names[param] = (base, base + "_s")
            else:
                ext.append(ExtTensor(base, TensorProto.FLOAT, (k, n), "matrix", param))
                w_names[param] = (base, None)
        return w_names[param]

    dq_cache: dict = {}
    c_axes = const_i64([-1])
    c_tiny, c_127 = "act_min", "act_127"
    g.initializer.append(numpy_helper.from_array(np.array(127.0, np.float32), c_127))
    g.initializer.append(numpy_helper.from_array(np.array(1e-30, np.float32), c_tiny))
    c_128 = "act_128"
    g.initializer.append(numpy_helper.from_array(np.array(128.0, np.float32), c_128))
    c_zp = "act_zp"
    g.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), c_zp))

    def matmul(x: str, param: str, k: int, n: int, y: str):
        w, s = weight_for(param, k, n)
        if preset == "exact":
            new_nodes.append(helper.make_node("MatMul", [x, w], [y], name=fresh("n")))
            return
        if x not in dq_cache:
            # per-token symmetric int8 activations (uint8 with zero point 128): a row's result
            # depends on that row only, so prefill/decode chunking cannot change the numbers.
            ab, am, mx, sc, r, rr, sh, xq = (fresh() for _ in range(8))
            new_nodes.extend([
                helper.make_node("Abs", [x], [ab], name=fresh("n")),
                helper.make_node("ReduceMax", [ab, c_axes], [am], keepdims=1, name=fresh("n")),
                helper.make_node("Max", [am, c_tiny], [mx], name=fresh("n")),
                helper.make_node("Div", [mx, c_127], [sc], name=fresh("n")),  # [1, s, 1]
                helper.make_node("Div", [x, sc], [r], name=fresh("n")),
                helper.make_node("Round", [r], [rr], name=fresh("n")),
                helper.make_node("Add", [rr, c_128], [sh], name=fresh("n")),
                helper.make_node("Cast", [sh], [xq], to=TensorProto.UINT8, name=fresh("n")),
            ])
            dq_cache[x] = (xq, sc)
        xq, xs = dq_cache[x]
        yi, yf, y1 = fresh(), fresh(), fresh()
        new_nodes.append(helper.make_node("MatMulInteger", [xq, w, c_zp], [yi], name=fresh("n")))
        new_nodes.append(helper.make_node("Cast", [yi], [yf], to=TensorProto.FLOAT,
                                          name=fresh("n")))
        new_nodes.append(helper.make_node("Mul", [yf, s], [y1], name=fresh("n")))
        new_nodes.append(helper.make_node("Mul", [y1, xs], [y], name=fresh("n")))

    if emb not in inits:
        raise BuildError("export: no model.embed_tokens.weight initializer (unexpected graph)")
    vocab, hidden = inits[emb].dims
    lm_done = emb_done = False
    dropped = {emb}
    for node in g.node:
        if node.op_type == "Gather" and node.input[0] == emb:
            w, s = weight_for(emb, hidden, vocab)
            gt, tt = fresh(), fresh()
            new_nodes.append(helper.make_node("Gather", [w, node.input[1]], [gt], axis=1,
                                              name=fresh("n")))  # [H, 1, s]
            if preset == "exact":
                new_nodes.append(helper.make_node("Transpose", [gt], [node.output[0]],
                                                  perm=[1, 2, 0], name=fresh("n")))
            else:
                tf, gs, gs3 = fresh(), fresh(), fresh()
                new_nodes.append(helper.make_node("Transpose", [gt], [tt], perm=[1, 2, 0],
                                                  name=fresh("n")))
                new_nodes.append(helper.make_node("Cast", [tt], [tf], to=TensorProto.FLOAT,
                                                  name=fresh("n")))
                new_nodes.append(helper.make_node("Gather", [s, node.input[1]], [gs],
                                                  name=fresh("n")))
                new_nodes.append(helper.make_node("Unsqueeze", [gs, const_i64([-1])], [gs3],
                                                  name=fresh("n")))
                new_nodes.append(helper.make_node("Mul", [tf, gs3], [node.output[0]],
                                                  name=fresh("n")))
            emb_done = True
        elif node.op_type == "MatMul" and node.output[0] == "logits":
            b = node.input[1]
            p = producer.get(b)
            tied = (p is not None and p.op_type == "Transpose" and p.input[0] == emb) or (
                b in inits and _h(numpy_helper.to_array(inits[b]).T) == _h(
                    numpy_helper.to_array(inits[emb])))
            if not tied:
                raise BuildError("export: the LM head is not the tied embedding")
            dropped.add(b)
            last = fresh()
            new_nodes.append(helper.make_node(
                "Slice", [node.input[0], const_i64([-1]), const_i64([2**62]), const_i64([1])],
                [last], name=LAST_POSITION_NODE))
            matmul(last, emb, hidden, vocab, "logits")
            lm_done = True
        elif node.op_type == "MatMul" and node.input[1] in inits:
            b = numpy_helper.to_array(inits[node.input[1]])
            param = by_hash.get(_h(b.T))
            if param is None:
                raise BuildError(f"export: MatMul weight {node.input[1]} matches no source matrix")
            dropped.add(node.input[1])
            matmul(node.input[0], param, b.shape[0], b.shape[1], node.output[0])
        elif node.op_type == "Transpose" and node.input[0] == emb:
            dropped.add(node.output[0])
        else:
            new_nodes.append(node)
    if not (lm_done and emb_done):
        raise BuildError("export: did not find the embedding Gather and the LM head MatMul")
    del g.node[:]
    g.node.extend(new_nodes)

    # Remaining large float initializers (RMSNorm weights) go to model.data verbatim.
    keep = []
    for i in g.initializer:
        if i.name in dropped:
            continue
        a = numpy_helper.to_array(i)
        if a.dtype == np.float32 and a.size >= 64:
            nm = f"c{len(ext)}"
            ext.append(ExtTensor(nm, TensorProto.FLOAT, a.shape, "copy", values=a.copy()))
            for n in g.node:
                for j, x in enumerate(n.input):
                    if x == i.name:
                        n.input[j] = nm
        else:
            keep.append(i)
    del g.initializer[:]
    g.initializer.extend(keep)
    _dedup_constants(g)
    _shorten_names(g)
    for o in g.output:
        if o.name == "logits":
            o.type.tensor_type.shape.dim[1].ClearField("dim_param")
            o.type.tensor_type.shape.dim[1].dim_value = 1
    m.producer_name = "smolchat_build"
    m.doc_string = ""
    return m, ext


def _dedup_constants(g) -> None:
    """Constant nodes -> one shared initializer per distinct value (the export repeats the same
    few scalars ~2,700 times; this is most of the graph file's size)."""
    seen: dict = {}
    ren: dict = {}
    nodes = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            a = numpy_helper.to_array(n.attribute[0].t)
            key = (a.dtype.str, a.shape, a.tobytes())
            if key not in seen:
                name = f"q{len(seen)}"
                seen[key] = name
                g.initializer.append(numpy_helper.from_array(a, name))
            ren[n.output[0]] = seen[key]
            continue
        for j, x in enumerate(n.input):
            if x in ren:
                n.input[j] = ren[x]
        nodes.append(n)
    for o in g.output:
        if o.name in ren:
            raise BuildError(f"graph output {o.name} is a constant (unexpected graph)")
    del g.node[:]
    g.node.extend(nodes)


def _shorten_names(g) -> None:
    """Short node and value names; graph inputs/outputs/initializers keep theirs."""
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {
        i.name for i in g.initializer}
    ren: dict = {}
    for idx, n in enumerate(g.node):
        if n.name != LAST_POSITION_NODE:
            n.name = ""
        n.doc_string = ""
        for j, x in enumerate(n.input):
            if x in ren:
                n.input[j] = ren[x]
        for j, x in enumerate(n.output):
            if x and x not in keep:
                ren[x] = ren.get(x) or f"_{len(ren):x}"
                n.output[j] = ren[x]
        for a in n.attribute:  # Constant nodes carry names in their tensors
            if a.type == onnx.AttributeProto.TENSOR:
                a.t.name = ""
    del g.value_info[:]


def attach_external(model: onnx.ModelProto, ext: list, layout: dict) -> None:
    """Add the ExtTensors as external initializers at layout[name] = (offset, nbytes)."""
    for t in ext:
        off, nbytes = layout[t.name]
        tp = TensorProto()
        tp.name = t.name
        tp.data_type = t.dtype
        tp.dims.extend(t.shape)
        tp.data_location = TensorProto.EXTERNAL
        for k, v in (("location", EXTERNAL_DATA_NAME), ("offset", str(off)),
                     ("length", str(nbytes))):
            e = tp.external_data.add()
            e.key, e.value = k, v
        model.graph.initializer.append(tp)
    pass  # onnx.checker wants model.data on disk; onnxruntime validates the graph in verify_runtime
