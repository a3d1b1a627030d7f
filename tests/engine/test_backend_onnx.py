"""The CPython backend (backend_onnx) against the Backend protocol, on a real bundle."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from smolchat.backend import Backend

pytestmark = pytest.mark.real_model

TEXTS = ["Hello world", "12345678", "café naïve — “quotes”", "emoji 😀👍🏽 and 你好",
         "  leading spaces\n\ttabs\n\n", "<|im_end|> looks special but is text here"]


def run(coro):
    return asyncio.run(coro)


def test_implements_the_protocol(protocol_backend):
    b = protocol_backend
    assert isinstance(b, Backend)
    assert b.special_tokens["<|im_start|>"] == 1 and b.special_tokens["<|im_end|>"] == 2
    assert 2 in b.eos_token_ids and b.max_context >= 2048
    info = b.info()
    for key in ("model_name", "parameters", "bundle_id", "preset", "backend", "threads",
                "max_context"):
        assert info[key] is not None, key
    assert info["backend"] == "onnxruntime-python"


@pytest.mark.parametrize("text", TEXTS[:-1])
def test_token_bytes_round_trip(protocol_backend, text):
    ids = protocol_backend.encode(text)
    assert b"".join(protocol_backend.token_bytes(i) for i in ids) == text.encode()


def test_known_ids(protocol_backend):
    assert protocol_backend.encode("12345678") == list(range(33, 41))   # digits split
    assert protocol_backend.token_bytes(2) == b"<|im_end|>"


def test_cache_forward_truncate_and_candidates(protocol_backend):
    b = protocol_backend
    ids = [1, 9690, 198] + b.encode("You are a helpful assistant.") + [2, 198]
    run(b.truncate(0))
    assert b.cache_length == 0
    with pytest.raises(Exception):
        b.candidates(1)
    run(b.forward(ids))
    assert b.cache_length == len(ids)
    top_ids, top_logits = b.candidates(8)
    assert len(top_ids) == 8 and top_logits == sorted(top_logits, reverse=True)
    assert b.candidates(1)[0] == top_ids[:1]
    # truncate + the same forward reproduces the logits exactly
    run(b.truncate(len(ids) - 4))
    assert b.cache_length == len(ids) - 4
    run(b.forward(ids[-4:]))
    again = b.candidates(8)
    run(b.truncate(0))
    run(b.forward(ids))
    assert b.candidates(8) == (top_ids, top_logits)
    assert again[0][0] == top_ids[0]          # batch split may move logits a little, not argmax
    # one token at a time agrees on the argmax
    run(b.truncate(len(ids) - 3))
    for t in ids[-3:]:
        run(b.forward([t]))
    assert b.candidates(1)[0] == top_ids[:1]


def test_repetition_penalty_matches_hf_rule(protocol_backend):
    b = protocol_backend
    run(b.truncate(0))
    run(b.forward([1, 9690, 198] + b.encode("Say hello hello hello")))
    ids, logits = b.candidates(50)
    penalized = ids[:3]
    p_ids, p_logits = b.candidates(50, 1.5, penalized)
    want = {i: (v / 1.5 if v > 0 else v * 1.5) if i in penalized else v for i, v in zip(ids, logits)}
    for i, v in zip(p_ids, p_logits):
        if i in want:
            assert v == pytest.approx(want[i], rel=1e-6)
    assert p_logits == sorted(p_logits, reverse=True)


def test_candidate_ties_prefer_lower_ids(protocol_backend):
    b = protocol_backend
    saved = b._logits
    try:
        b._logits = np.zeros(b.token_bytes.size, dtype=np.float32)
        b._logits[[7, 9]] = 1.0
        assert b.candidates(4) == ([7, 9, 0, 1], [1.0, 1.0, 0.0, 0.0])
        assert b.candidates(1) == ([7], [1.0])
    finally:
        b._logits = saved
