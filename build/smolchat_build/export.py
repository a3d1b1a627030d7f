"""ONNX export pieces: Optimum's `text-generation-with-past` export of the fp32 reference (the
build's parity check: it must reproduce PyTorch before anything is quantized), the
description of one external-data tensor (`ExtTensor`) and `attach_external`, which places
those tensors in `model.data`.

What it leaves to others: the runtime graph itself (graph.py writes it with fused operators
instead of rewriting the export's ~2,700 unfused nodes), the bytes of the weights (encode.py)
and their layout (offsets come from encode.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from . import BuildError
from smolchat.runtime_form import EXTERNAL_DATA_NAME


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
    role: str           # "matrix" | "scale" | "float_rows" | "copy"
    param: str | None = None
    values: np.ndarray | None = None


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
