"""The backend boundary: what the chat engine asks of a model runtime.

The engine (engine.py) owns token sequences, the chat template, sampling, stop rules and the
context budget. A backend owns everything vocabulary-wide or tensor-shaped: text <-> ids,
running the graph on new tokens while it keeps the KV cache, and picking a handful of
candidate tokens out of a 49,152-wide logits row (in Pyodide a Python loop over that row
costs 12-28 ms per token, so it never happens in Python).

Implementations:
- backend_onnx.py: CPython, onnxruntime + tokenizers + numpy on the bundle's runtime form.
- bridge.py: Pyodide, ONNX Runtime Web + the JS tokenizer. The only module importing js/pyodide.
- fake_backend.py: a scripted fake (tests, demos) that implements this same protocol.

Optional attributes (read with getattr, so not part of the runtime-checked Protocol):
`generation_config: dict`, the bundle's generation_config.json; the engine takes its default
settings from it (settings.GenerationSettings.from_generation_config).
`ort_run_ms: float`, a running total of the milliseconds spent inside the runtime's run
call (session.run) since load; the engine reads its change over the decode steps for
Reply.profile. Without it the whole of forward() counts as interop.

What this protocol ignores: chat roles, templates, sampling randomness, stop strings, UTF-8
assembly (token_bytes gives raw bytes; the engine decodes incrementally).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    #: chat template text from the bundle (tokenizer_config.json "chat_template"), Jinja.
    chat_template: str
    #: special token strings -> ids, e.g. {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    special_tokens: dict[str, int]
    #: ids that end generation (generation_config.json eos_token_id), e.g. (2,)
    eos_token_ids: tuple[int, ...]
    #: model's maximum context in tokens (config/manifest), e.g. 8192
    max_context: int

    def info(self) -> dict:
        """model_name, parameters, bundle_id, preset, backend ('onnxruntime-python' or
        'onnxruntime-web'), threads, max_context, plus backend-specific facts."""

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids with no special-token handling added (no BOS/EOS). The engine
        never passes a string that contains a special-token string (it splits them first)."""

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (byte-level BPE: may be a partial UTF-8 character)."""

    @property
    def cache_length(self) -> int:
        """Positions held in the KV cache (= tokens fed since the last truncate(0))."""

    async def forward(self, token_ids: Sequence[int]) -> None:
        """Run the graph on token_ids at positions cache_length .. cache_length+n-1, append
        their keys/values to the cache, and keep the last position's logits [vocab] as the
        current logits for candidates(). n >= 1."""

    async def truncate(self, length: int) -> None:
        """Keep only the first `length` cached positions (0 empties the cache). Used to reuse
        the longest common prefix when history changes."""

    def candidates(self, k: int, repetition_penalty: float = 1.0,
                   penalty_ids: Sequence[int] = (), *, count_ids: Sequence[int] = (),
                   counts: Sequence[int] = (), frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, logsumexp: bool = False):
        """Top-k (ids, logits) of the current logits, best first (ties: lower id first),
        after the HF-style repetition penalty on penalty_ids (positive logits divided by
        the penalty, negative ones multiplied), then OpenAI's penalties on count_ids (the
        tokens generated so far, counts[i] times each): logit -= count * frequency_penalty
        + (count > 0) * presence_penalty, computed in float64 and rounded to float32.
        k=1 is argmax. Raises if no logits yet. With logsumexp=True returns
        (ids, logits, lse), lse = log(sum(exp(logit))) over the whole vocabulary of the same
        penalized logits (float64), so logit - lse is a token's log-probability. The engine
        passes the keyword arguments only when a reply uses them."""

    async def close(self) -> None:
        """Release sessions and tensors."""
