"""tokenizer.json / tokenizer_config.json rebuilt from a GGUF's vocabulary and merges.

transformers' own GGUF tokenizer is wrong for SmolLM2 (adds a BOS, eos becomes <|im_start|>,
digits are not split): we build the byte-level BPE ourselves. Pre-tokenizer: every digit on
its own, then ByteLevel (GPT-2 regex, no prefix space). No BOS, eos <|im_end|> (2).
For an HF checkpoint folder its own tokenizer files are copied (minified).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import BuildError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def from_gguf(gguf_path: Path) -> tuple[str, dict]:
    """-> (minified tokenizer.json text, tokenizer_config dict)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    r = GGUFReader(str(gguf_path))
    if _field(r, "tokenizer.ggml.model") != "gpt2":
        raise BuildError(f"{gguf_path.name}: tokenizer model "
                         f"{_field(r, 'tokenizer.ggml.model')!r} is not byte-level BPE (gpt2)")
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(r, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t == 3]  # 3 = CONTROL
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    text = _minify(tok.to_str(pretty=False))
    eos = tokens[_field(r, "tokenizer.ggml.eos_token_id", 2)]
    bos = tokens[_field(r, "tokenizer.ggml.bos_token_id", 1)]
    unk = tokens[_field(r, "tokenizer.ggml.unknown_token_id", 0)]
    pad = tokens[_field(r, "tokenizer.ggml.padding_token_id", 2)]
    cfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad,
        "additional_special_tokens": [s for s in special if s not in (bos, eos, unk, pad)],
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(r, "llama.context_length", 8192)),
        "chat_template": _field(r, "tokenizer.chat_template", FALLBACK_TEMPLATE),
    }
    return text, cfg


def _minify(text: str) -> str:
    """Compact JSON, merges as "a b" strings (the classic form every loader reads; the pair
    form costs ~200 KB more)."""
    d = json.loads(text)
    merges = d.get("model", {}).get("merges") or []
    if merges and isinstance(merges[0], list) and all(" " not in x for m in merges for x in m):
        d["model"]["merges"] = [" ".join(m) for m in merges]
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"))


def from_hf_folder(folder: Path) -> tuple[str, dict]:
    tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not tj.exists() or not tc.exists():
        raise BuildError(f"{folder}: needs tokenizer.json and tokenizer_config.json")
    text = _minify(tj.read_text(encoding="utf-8"))
    cfg = json.loads(tc.read_text())
    cfg.pop("added_tokens_decoder", None)
    if "chat_template" not in cfg:
        ct = folder / "chat_template.jinja"
        cfg["chat_template"] = ct.read_text() if ct.exists() else FALLBACK_TEMPLATE
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    return text, cfg


def write(out: Path, text: str, cfg: dict) -> None:
    (out / "tokenizer.json").write_text(text, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1),
                                               encoding="utf-8")


def load(folder: Path):
    """transformers tokenizer from a folder holding our two files."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def check_smollm2(tok) -> None:
    """The FACTS.md checks; only meaningful for the SmolLM2 vocabulary."""
    ids = tok("12345678")["input_ids"]
    if ids != list(range(33, 41)):
        raise BuildError(f"tokenizer check failed: '12345678' -> {ids}, want [33..40]")
    p = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                add_generation_prompt=True, tokenize=True)
    if list(p[:3]) != [1, 9690, 198] or tok.eos_token_id != 2:
        raise BuildError(f"tokenizer check failed: ChatML prompt starts {list(p[:3])}, "
                         f"eos {tok.eos_token_id} (want [1, 9690, 198], eos 2)")
