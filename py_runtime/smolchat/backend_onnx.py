"""The CPython backend: onnxruntime on the bundle's runtime form, `tokenizers`, numpy.

    backend = OnnxBackend.load("models/smollm2-135m-instruct-compact", threads=2)

The session comes from `runtime_form.load_session` (it expands weights.bin into the graph's
external data in memory, exactly as the browser does). Input and output names are read
from the session: every `past_key_values.*` input is fed from the `present.*` output of the
same suffix. The KV cache is a dict of numpy arrays, each [1, kv_heads, positions, head_dim].
The vocabulary-wide work of `candidates` (penalties, top-k, log-sum-exp) is numpy.

This is the only module of the package that imports numpy, onnxruntime or tokenizers.

What this module ignores: chat templates, sampling, stop rules (engine.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BundleMissing, KVCacheMismatch
from .vocab import ByteVocab, bundle_facts, model_facts

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
PAST, PRESENT = "past_key_values.", "present."


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


class OnnxBackend:
    def __init__(self, session, manifest: dict, bundle_dir: Path, threads: int):
        from tokenizers import Tokenizer

        self.bundle_dir, self.manifest, self.threads = bundle_dir, manifest, threads
        tok_json = _read_json(bundle_dir / "tokenizer.json")
        self.config = _read_json(bundle_dir / "config.json")
        self.generation_config = _read_json(bundle_dir / "generation_config.json")
        facts = bundle_facts(tok_json, _read_json(bundle_dir / "tokenizer_config.json"),
                             self.config, self.generation_config)
        self.chat_template: str = facts["chat_template"]
        self.template_tokens: dict = facts["template_tokens"]
        self.special_tokens: dict[str, int] = facts["special_tokens"]
        self.eos_token_ids: tuple[int, ...] = facts["eos_token_ids"]
        self.max_context: int = facts["max_context"]
        self.token_bytes = ByteVocab(tok_json)
        self._tokenizer = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))

        self._session = session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self._past_names = [n for n in inputs if n.startswith(PAST)]
        self._present_of = {PRESENT + n[len(PAST):]: n for n in self._past_names}
        missing = [p for p in self._present_of if p not in outputs]
        if missing or "logits" not in outputs:
            raise KVCacheMismatch(f"the graph lacks outputs {missing or ['logits']}: rebuild "
                                  "the bundle with ./build.sh bundle")
        # logits and the KV cache (a compact graph's lm_head.* outputs are the browser's)
        self._output_names = ["logits", *self._present_of]
        self._uses = {n: n in inputs for n in ("attention_mask", "position_ids")}
        first = inputs[self._past_names[0]]
        cfg = self.config
        heads = first.shape[1] if isinstance(first.shape[1], int) else \
            int(cfg.get("num_key_value_heads", cfg.get("num_attention_heads")))
        head_dim = first.shape[3] if isinstance(first.shape[3], int) else \
            int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
        self._kv_dtype = _DTYPES.get(first.type, np.float32)
        self._empty = np.zeros((1, heads, 0, head_dim), dtype=self._kv_dtype)
        self._kv: dict[str, np.ndarray] = {n: self._empty for n in self._past_names}
        self._logits: np.ndarray | None = None   # [vocab] float32, last position
        self._length = 0                          # positions in the KV cache
        self.ort_run_ms = 0.0                     # ms inside session.run since load (total)

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, threads: int = 2) -> "OnnxBackend":
        bundle = Path(bundle_dir)
        if not (bundle / "manifest.json").is_file():
            raise BundleMissing(f"no model bundle at {bundle}: build it with ./build.sh bundle",
                                path=str(bundle))
        from .runtime_form import load_session
        session, manifest = load_session(bundle, threads=threads)
        return cls(session, manifest, bundle, threads)

    # -- protocol ------------------------------------------------------------------------
    def info(self) -> dict:
        import onnxruntime
        return {
            **model_facts(self.manifest, self.config),
            "bundle_id": self.manifest.get("bundle_id", self.bundle_dir.name),
            "backend": "onnxruntime-python",
            "threads": self.threads,
            "max_context": self.max_context,
            "bundle_dir": str(self.bundle_dir),
            "ort_version": onnxruntime.__version__,
            "python_version": sys.version.split()[0],
        }

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    @property
    def cache_length(self) -> int:
        return self._length

    async def forward(self, token_ids: Sequence[int]) -> None:
        n = len(token_ids)
        if n < 1:
            raise ValueError("forward needs at least one token")
        past = self._length
        feeds = {"input_ids": np.asarray([token_ids], dtype=np.int64)}
        if self._uses["attention_mask"]:
            feeds["attention_mask"] = np.ones((1, past + n), dtype=np.int64)
        if self._uses["position_ids"]:
            feeds["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None, :]
        feeds.update(self._kv)
        t = time.perf_counter()
        results = self._session.run(self._output_names, feeds)
        self.ort_run_ms += (time.perf_counter() - t) * 1000
        kv = {}
        for name, value in zip(self._output_names, results):
            if name == "logits":
                self._logits = np.asarray(value[0, -1], dtype=np.float32)  # [1, s|1, vocab]
            elif name in self._present_of:
                kv[self._present_of[name]] = value
        got = kv[self._past_names[0]].shape[2]
        if got != past + n:
            raise KVCacheMismatch(f"graph returned {got} cached positions, expected {past + n}: "
                                  "the bundle's graph does not match the runtime")
        self._kv = kv
        self._length = past + n

    async def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise KVCacheMismatch(f"truncate({length}) with {self._length} cached positions")
        if length < self._length:
            self._kv = {n: (self._empty if length == 0
                            else np.ascontiguousarray(v[:, :, :length, :]))
                        for n, v in self._kv.items()}
            self._logits = None
            self._length = length

    def candidates(self, k: int, repetition_penalty: float = 1.0,
                   penalty_ids: Sequence[int] = (), *, count_ids: Sequence[int] = (),
                   counts: Sequence[int] = (), frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, logsumexp: bool = False):
        if self._logits is None:
            raise KVCacheMismatch("candidates() before forward(): no logits yet")
        logits = self._logits
        if repetition_penalty != 1.0 and len(penalty_ids):
            logits = logits.copy()
            idx = np.unique(np.asarray(penalty_ids, dtype=np.int64))
            v = logits[idx]
            logits[idx] = np.where(v > 0, v / repetition_penalty, v * repetition_penalty)
        if (frequency_penalty or presence_penalty) and len(count_ids):
            # OpenAI's definition, in float64 then rounded to float32 (as ort_glue.js topK does)
            logits = logits.copy() if logits is self._logits else logits
            idx = np.asarray(count_ids, dtype=np.int64)
            c = np.asarray(counts, dtype=np.float64)
            v = logits[idx].astype(np.float64)
            logits[idx] = (v - c * frequency_penalty - (c > 0) * presence_penalty).astype(np.float32)
        if k == 1:
            i = int(np.argmax(logits))          # first maximum: ties go to the lower id
            ids, vals = [i], [float(logits[i])]
        else:
            k = min(k, logits.shape[0])
            kth = logits[np.argpartition(-logits, k - 1)[k - 1]]
            above = np.flatnonzero(logits > kth)
            ties = np.flatnonzero(logits == kth)[:k - len(above)]   # lower ids win ties
            top = np.concatenate([above, ties])
            order = np.lexsort((top, -logits[top]))
            ids, vals = top[order].tolist(), logits[top][order].astype(float).tolist()
        if not logsumexp:
            return ids, vals
        wide = logits.astype(np.float64)        # log-sum-exp over the whole vocabulary
        peak = float(wide.max())
        return ids, vals, peak + float(np.log(np.exp(wide - peak).sum()))

    async def close(self) -> None:
        self._session = None
        self._kv = {}
        self._logits = None
        self._length = 0
