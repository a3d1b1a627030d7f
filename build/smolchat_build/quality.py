"""Quality: greedy generation (PyTorch reference and ORT runtime form), perplexity and top-1
agreement of a bundle against the reference, and the goldens file other tests read.

What it leaves to others: building bundles, the engine's own sampling/stopping logic.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from .log import bar

GOLDEN_NEW_TOKENS = 32
# Fixed prompt set (tests read the ids; never hand-type them). Multi-turn and system prompts.
GOLDEN_PROMPTS = [
    ("france", [{"role": "user", "content": "What is the capital of France?"}]),
    ("system_pirate", [{"role": "system", "content": "You are a pirate. Always answer like a pirate."},
                       {"role": "user", "content": "Tell me about the sea."}]),
    ("multi_turn", [{"role": "user", "content": "Hi! What's your name?"},
                    {"role": "assistant", "content": "I'm SmolLM, an AI assistant. How can I help you today?"},
                    {"role": "user", "content": "Can you give me a short tip for learning to cook?"}]),
    ("python", [{"role": "user", "content": "Write a Python function that returns the sum of a list."}]),
    ("arithmetic", [{"role": "user", "content": "What is 12 + 35?"}]),
    ("translate", [{"role": "user", "content": "Translate 'good morning' into French."}]),
    ("health", [{"role": "user", "content": "Give me three tips for staying healthy."}]),
    ("unicode", [{"role": "system", "content": "Réponds en français."},
                 {"role": "user", "content": "Écris une phrase avec des accents: é, è, à. 🙂"}]),
]


def default_text() -> tuple[str, str]:
    """(text, description) of the fixed offline quality text: CPython's pydoc topics."""
    import pydoc_data.topics as t
    p = Path(t.__file__)
    data = p.read_bytes()
    return data.decode("utf-8"), (f"CPython {sys.version.split()[0]} "
                                  f"Lib/pydoc_data/topics.py sha256 "
                                  f"{hashlib.sha256(data).hexdigest()}")


def calibration_text() -> tuple[str, str]:
    """Activation statistics text (never the quality text): CPython's argparse.py source."""
    import argparse
    import inspect
    text = inspect.getsource(argparse)
    return text, (f"CPython {sys.version.split()[0]} Lib/argparse.py sha256 "
                  f"{hashlib.sha256(text.encode()).hexdigest()}")


def activation_stats(model, ids: list, window: int = 1024, cov_keys: tuple = ()
                     ) -> tuple[dict, dict]:
    """-> (mean squared input activation per input feature [K], input covariance X^T X / n
    [K, K] float64 for the keys in `cov_keys`), keyed by HF parameter name of each Linear (the
    LM head's under "lm_head.weight": the tied embedding is quantized for it)."""
    import torch
    acc, cov, hooks = {}, {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(mod, args, key=name + ".weight"):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                acc[key] = acc.get(key, 0) + (x ** 2).sum(0).numpy()
                if key in cov_keys:
                    cov[key] = cov.get(key, 0) + (x.T @ x).numpy()
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(ids), window):
                model(torch.tensor([ids[i:i + window]]))
    finally:
        for h in hooks:
            h.remove()
    return ({k: v / len(ids) for k, v in acc.items()},
            {k: v / len(ids) for k, v in cov.items()})


def torch_greedy(model, ids: list, n_new: int, eos: int) -> list:
    import torch
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n_new, do_sample=False, eos_token_id=eos, pad_token_id=eos,
                         temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


def _past_zeros(sess) -> dict:
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            shp = [1 if j == 0 else (0 if isinstance(d, str) or d is None else d)
                   for j, d in enumerate(i.shape)]
            shp[2] = 0
            feeds[i.name] = np.zeros(shp, np.float32)
    return feeds


def ort_forward(sess, ids: list, past: dict, pos: int):
    """One forward of `ids` after `pos` cached positions -> (logits [1, s|1, V], new past)."""
    s = len(ids)
    feeds = {"input_ids": np.array([ids], np.int64),
             "attention_mask": np.ones((1, pos + s), np.int64),
             "position_ids": np.arange(pos, pos + s, dtype=np.int64)[None]}
    feeds.update(past)
    names = [o.name for o in sess.get_outputs()]
    res = dict(zip(names, sess.run(None, feeds)))
    new_past = {n.replace("present", "past_key_values"): v for n, v in res.items()
                if n.startswith("present")}
    return res["logits"], new_past


def ort_greedy(sess, ids: list, n_new: int, eos: int) -> list:
    past, pos, cur, out = _past_zeros(sess), 0, list(ids), []
    for _ in range(n_new):
        logits, past = ort_forward(sess, cur, past, pos)
        pos += len(cur)
        tok = int(np.argmax(logits[0, -1]))
        out.append(tok)
        if tok == eos:
            break
        cur = [tok]
    return out


def goldens(model, tok, source: dict, n_new: int = GOLDEN_NEW_TOKENS) -> dict:
    eos = tok.eos_token_id
    items = []
    for name, msgs in GOLDEN_PROMPTS:
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == list(tok.apply_chat_template(msgs, add_generation_prompt=True,
                                                   tokenize=True))
        gen = torch_greedy(model, ids, n_new, eos)
        items.append({"name": name, "messages": msgs, "prompt_text": text, "prompt_ids": ids,
                      "greedy_ids": gen, "greedy_text": tok.decode(gen, skip_special_tokens=False),
                      "finish_reason": "stop" if gen and gen[-1] == eos else "length"})
    return {"format": "smolchat-goldens/1", "source": source,
            "reference": "transformers fp32 (GGUF dequantized), greedy, KV cache",
            "max_new_tokens": n_new, "eos_token_id": eos, "add_generation_prompt": True,
            "prompts": items}


def golden_agreement(sess, gold: dict) -> dict:
    """Greedy runtime-form tokens vs the goldens: identical sequences, token agreement up to
    the first divergence (and overall position-wise)."""
    same, match, total = 0, 0, 0
    per = {}
    for p in gold["prompts"]:
        got = ort_greedy(sess, p["prompt_ids"], gold["max_new_tokens"], gold["eos_token_id"])
        want = p["greedy_ids"]
        prefix = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                      min(len(got), len(want)))
        same += got == want
        match += prefix
        total += len(want)
        per[p["name"]] = {"identical": got == want, "common_prefix": prefix, "tokens": len(want)}
    return {"identical_sequences": same, "prompts": len(gold["prompts"]),
            "prefix_token_agreement": round(match / max(total, 1), 4), "per_prompt": per}


def _nll_top1(logits: np.ndarray, targets: np.ndarray):
    lg = logits.astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    nll = lse - lg[np.arange(len(targets)), targets]
    return nll, lg.argmax(-1)


def perplexity(sess, model, ids: list, window: int = 1024, cache: Path | None = None) -> dict:
    """Non-overlapping windows; each window predicts its tokens 1..w-1. sess: the bundle's
    full-logits session (or None); model: the torch reference (or None). cache: .npz file
    holding the reference's per-token nll and argmax for exactly these ids (reused)."""
    import torch
    ref_cached = None
    if cache is not None and cache.exists():
        z = np.load(cache)
        if z["ids"].tolist() == list(ids) and int(z["window"]) == window:
            ref_cached = (z["nll"], z["top"])
    b_nll, r_nll, b_tops, r_tops, n = [], [], [], [], 0
    chunks = [ids[i:i + window] for i in range(0, len(ids) - 1, window)]
    chunks = [c for c in chunks if len(c) > 1]
    for i, c in enumerate(chunks):
        tgt = np.array(c[1:])
        if sess is not None:
            lg, _ = ort_forward(sess, c, _past_zeros(sess), 0)
            nll, top = _nll_top1(lg[0, :-1], tgt)
            b_nll.append(nll)
            b_tops.append(top)
        if model is not None and ref_cached is None:
            with torch.no_grad():
                lg = model(torch.tensor([c])).logits[0, :-1].float().numpy()
            nll, top = _nll_top1(lg, tgt)
            r_nll.append(nll)
            r_tops.append(top)
        n += len(tgt)
        bar("perplexity", i + 1, len(chunks))
    if ref_cached is not None:
        r_nll, r_tops = [ref_cached[0]], [ref_cached[1]]
    elif cache is not None and r_nll:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".part.npz")
        np.savez(tmp, ids=np.array(ids), window=window, nll=np.concatenate(r_nll),
                 top=np.concatenate(r_tops))
        tmp.replace(cache)
    out = {"tokens": n, "window": window}
    if b_nll:
        out["bundle_perplexity"] = round(float(np.exp(np.concatenate(b_nll).mean())), 4)
    if r_nll:
        out["reference_perplexity"] = round(float(np.exp(np.concatenate(r_nll).mean())), 4)
    if b_nll and r_nll:
        out["ratio"] = round(out["bundle_perplexity"] / out["reference_perplexity"], 4)
        out["top1_agreement"] = round(float(
            (np.concatenate(b_tops) == np.concatenate(r_tops)).mean()), 4)
    return out
