"""A scripted stand-in model that implements backend.py, for tests and demos (CPython,
Pyodide, the browser) where the real bundle is not wanted.

Vocabulary: the three ChatML specials (ids 0-2, as in SmolLM2), one token per byte
(ids 3-258) and a few multi-character words. `encode` is greedy longest-match, so an emoji
comes out as 4 byte tokens: good for UTF-8 streaming tests.

Logits are a deterministic function of the last tokens and the position (no hash() salt,
so CPython and Pyodide agree). With `replies`, assistant turns are scripted: once the
cache ends inside an assistant turn (after `<|im_start|>assistant\\n`), the next token of
the scripted reply (then `<|im_end|>`) gets a large logit, so greedy decoding replays it.
`replies` is a string (every turn), a list (turn n of the prompt gets item n, the last
one repeats) or a callable(prompt_text) -> str.

It records every call: `forwarded` (lists of ids), `truncations`, `candidate_calls`;
`ort_run_ms` times its stand-in for the graph run (computing the logits).

What this module ignores: real language modelling and speed.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from typing import Callable, Sequence

#: SmolLM2-135M-Instruct's chat template, as in its tokenizer_config.json.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
WORDS = ("assistant", "system", "user", "\n", "Hello", "Hi", " world", " the", " is", " you",
         " my", " name", " Alice", " Paris", "You", " are", " a", " helpful", "!", ".", "?",
         " capital", " of", " France")
BYTE0 = len(SPECIALS)


class FakeBackend:
    eos_token_ids = (2,)

    def __init__(self, replies: str | Sequence[str] | Callable[[str], str] | None = None,
                 max_context: int = 8192, seed: int = 0,
                 chat_template: str = SMOLLM2_CHAT_TEMPLATE,
                 generation_config: dict | None = None):
        self.chat_template = chat_template
        self.special_tokens = {s: i for i, s in enumerate(SPECIALS)}
        self.max_context = max_context
        self.generation_config = generation_config
        self._replies, self._seed = replies, seed
        self._bytes = [s.encode() for s in SPECIALS] + [bytes([b]) for b in range(256)] + \
            [w.encode() for w in WORDS]
        self._words = {w.encode(): BYTE0 + 256 + i for i, w in enumerate(WORDS)}
        self._longest = max(len(w) for w in self._words)
        self._header = [1] + self.encode("assistant\n")
        self.vocab_size = len(self._bytes)
        self.cache: list[int] = []
        self.forwarded: list[list[int]] = []
        self.truncations: list[int] = []
        self.candidate_calls: list[tuple[int, float, tuple[int, ...]]] = []
        self._logits: list[float] | None = None
        self.ort_run_ms = 0.0     # ms in _compute_logits (the "graph run") since creation
        self.closed = False

    # -- text
    def encode(self, text: str) -> list[int]:
        for s in SPECIALS:
            assert s not in text, f"engine passed special string {s!r} to encode: {text!r}"
        data, ids, i = text.encode(), [], 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 1, -1):
                if data[i:i + n] in self._words:
                    ids.append(self._words[data[i:i + n]])
                    i += n
                    break
            else:
                ids.append(BYTE0 + data[i])
                i += 1
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", "replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def info(self) -> dict:
        return {"model_name": "fake", "parameters": 0, "bundle_id": "fake", "preset": "fake",
                "backend": "fake", "threads": 1, "max_context": self.max_context}

    # -- cache
    @property
    def cache_length(self) -> int:
        return len(self.cache)

    async def forward(self, token_ids: Sequence[int]) -> None:
        assert len(token_ids) >= 1
        assert len(self.cache) + len(token_ids) <= self.max_context, "past max_context"
        self.forwarded.append(list(token_ids))
        self.cache.extend(token_ids)
        t = time.perf_counter()
        self._logits = self._compute_logits()
        self.ort_run_ms += (time.perf_counter() - t) * 1000

    async def truncate(self, length: int) -> None:
        self.truncations.append(length)
        del self.cache[length:]
        self._logits = None

    def candidates(self, k: int, repetition_penalty: float = 1.0,
                   penalty_ids: Sequence[int] = (), *, count_ids: Sequence[int] = (),
                   counts: Sequence[int] = (), frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, logsumexp: bool = False):
        if self._logits is None:
            raise RuntimeError("no logits: forward first")
        self.candidate_calls.append((k, repetition_penalty, tuple(penalty_ids)))
        logits = list(self._logits)
        if repetition_penalty != 1.0:
            for i in set(penalty_ids):
                logits[i] = logits[i] / repetition_penalty if logits[i] > 0 \
                    else logits[i] * repetition_penalty
        for i, c in zip(count_ids, counts):
            logits[i] = logits[i] - c * frequency_penalty - (c > 0) * presence_penalty
        order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:k]
        if not logsumexp:
            return order, [logits[i] for i in order]
        peak = max(logits)
        lse = peak + math.log(sum(math.exp(v - peak) for v in logits))
        return order, [logits[i] for i in order], lse

    async def close(self) -> None:
        self.closed = True

    # -- the "model"
    def _compute_logits(self) -> list[float]:
        tail = self.cache[-4:] + [len(self.cache)]
        rng = random.Random(zlib.crc32(repr((self._seed, tail)).encode()))
        logits = [rng.uniform(-2.0, 2.0) for _ in range(self.vocab_size)]
        for s in range(BYTE0):
            logits[s] -= 4.0              # specials rarely win by chance
        forced = self._scripted_next()
        if forced is not None:
            logits[forced] = 8.0
        return logits

    def _scripted_next(self) -> int | None:
        if self._replies is None:
            return None
        h, c = self._header, self.cache
        starts = [i for i in range(len(c) - len(h) + 1) if c[i:i + len(h)] == h]
        if not starts:
            return None
        begin = starts[-1] + len(h)
        if 2 in c[begin:]:
            return None                   # the last assistant turn is already closed
        if callable(self._replies):
            text = self._replies(self.decode(c[:begin]))
        elif isinstance(self._replies, str):
            text = self._replies
        else:
            text = self._replies[min(len(starts), len(self._replies)) - 1]
        script = self.encode(text) + [2]
        j = len(c) - begin
        return script[j] if j < len(script) else None
