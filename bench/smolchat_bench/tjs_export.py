"""The transformers.js anchor's model: an int8 ONNX export of the same GGUF, in the layout
transformers.js loads offline (`<dir>/onnx/model_quantized.onnx` + tokenizer and configs).

Steps (each verifies before it saves; the result is cached under .cache/bench/ and never
committed): GGUF -> fp32 PyTorch (transformers, dequantized) -> Optimum
`text-generation-with-past` ONNX -> `onnxruntime.quantization.quantize_dynamic` (QInt8,
what transformers.js calls dtype "q8") -> tokenizer files copied from our own bundle.

transformers' GGUF tokenizer is wrong for this model (FACTS.md), so the tokenizer is ours: the
files of `models/smollm2-135m-instruct-compact/` when that bundle exists, else the same files
made by the bundle build's own code (`smolchat_build.tokenizer.from_gguf`, GGUF vocab + merges).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .paths import BENCH_CACHE, gguf_path, bundle_dir

EXPORT_DIR = BENCH_CACHE / "tjs" / "SmolLM2-135M-Instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ExportUnavailable(RuntimeError):
    """The export cannot be made here; the message says what is missing."""


def ensure_export(log=print) -> Path:
    """Return the transformers.js model directory, building what is missing."""
    onnx_int8 = EXPORT_DIR / "onnx" / "model_quantized.onnx"
    if not onnx_int8.exists():
        _export_int8(onnx_int8, log)
    _write_tokenizer_and_configs(log)
    return EXPORT_DIR


def _export_int8(dest: Path, log) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForCausalLM

    gguf = gguf_path(log)
    with tempfile.TemporaryDirectory(dir=BENCH_CACHE) as tmp:
        tmp = Path(tmp)
        log(f"tjs export: GGUF -> fp32 PyTorch ({gguf.name}, dequantized)")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     torch_dtype="float32")
        model.generation_config.eos_token_id = 2
        model.save_pretrained(tmp / "hf")
        del model
        log("tjs export: Optimum text-generation-with-past -> fp32 ONNX")
        main_export(str(tmp / "hf"), output=tmp / "onnx", task="text-generation-with-past",
                    no_post_process=False, do_validation=False, library_name="transformers")
        fp32 = tmp / "onnx" / "model.onnx"
        onnx.checker.check_model(str(fp32))
        log("tjs export: quantize_dynamic QInt8 (transformers.js dtype q8)")
        int8 = tmp / "model_quantized.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        onnx.checker.check_model(str(int8))
        dest.parent.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "generation_config.json"):
            shutil.copy(tmp / "hf" / name, EXPORT_DIR / name)
        shutil.move(str(int8), dest)
    log(f"tjs export: wrote {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")


def _write_tokenizer_and_configs(log) -> None:
    src = bundle_dir()
    if src is not None:
        for name in TOKENIZER_FILES:
            shutil.copy(src / name, EXPORT_DIR / name)
    else:
        try:
            from smolchat_build import tokenizer
        except ImportError as e:
            raise ExportUnavailable("needs our tokenizer: build the bundle (./build.sh bundle) "
                                    f"or put build/ on PYTHONPATH ({e})") from e
        src = Path(tokenizer.__file__)
        tokenizer.write(EXPORT_DIR, *tokenizer.from_gguf(gguf_path(log)))
    log(f"tjs export: tokenizer from {src}")
    cfg = json.loads((EXPORT_DIR / "tokenizer_config.json").read_text())
    # transformers.js 4.3.1 wants the template inline and a class it knows (FACTS.md).
    if not isinstance(cfg.get("chat_template"), str):
        raise ExportUnavailable(f"{src}/tokenizer_config.json has no inline chat_template")
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    (EXPORT_DIR / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    gen = json.loads((EXPORT_DIR / "generation_config.json").read_text())
    gen.update(eos_token_id=2, pad_token_id=2, bos_token_id=1)
    (EXPORT_DIR / "generation_config.json").write_text(json.dumps(gen, indent=1))
