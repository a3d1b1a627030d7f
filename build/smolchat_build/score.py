"""`score` and `goldens` commands: both need the fp32 reference of a bundle's source."""

from __future__ import annotations

import json
from pathlib import Path

from . import BuildError
from .bundle import CACHE, MODELS


def _reference(man: dict | None, source: str | None = None):
    from .source import load_source
    if man is not None:
        key = man["source"]["key"]
        spec = None if key["spec"].startswith("pypi:") else key["spec"]
        adapter = key.get("adapter")
        return load_source(spec, CACHE, Path(adapter) if adapter else None)
    return load_source(source, CACHE, None)


def score(textfile: Path, bundle: Path, tokens: int | None, window: int) -> dict:
    from smolchat.errors import SmolChatError
    from smolchat.runtime_form import load_session

    from . import quality, tokenizer
    if not textfile.is_file():
        raise BuildError(f"{textfile}: no such file")
    try:
        sess, man = load_session(bundle, threads=2, full_logits=True)
    except SmolChatError as e:
        raise BuildError(str(e)) from None
    tok = tokenizer.load(bundle)
    ids = tok(textfile.read_text(encoding="utf-8", errors="replace"),
              add_special_tokens=False)["input_ids"]
    if tokens:
        ids = ids[:tokens + 1]
    if len(ids) < 2:
        raise BuildError(f"{textfile}: fewer than 2 tokens")
    src = _reference(man)
    out = quality.perplexity(sess, src.model, ids, window)
    out.update(bundle=str(bundle), bundle_id=man["bundle_id"], text=str(textfile))
    return out


def write_goldens(source: str | None, out: str | None) -> str:
    from . import quality, tokenizer
    src = _reference(None, source)
    if src.gguf_path is not None:
        text, cfg = tokenizer.from_gguf(src.gguf_path)
    else:
        text, cfg = tokenizer.from_hf_folder(src.hf_dir)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tokenizer.write(Path(d), text, cfg)
        tok = tokenizer.load(Path(d))
        gold = quality.goldens(src.model, tok, {"kind": src.kind, "sha256": src.sha256})
    path = Path(out) if out else MODELS / "goldens.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gold, indent=1, ensure_ascii=False))
    return str(path)
