"""OpenAI's frequency/presence penalties and logprobs in the engine and the CPython backend.

Penalties: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty, over
the tokens generated so far in the reply, before top-k. Logprobs: the log-softmax over the
whole vocabulary of those (penalized) logits. The real-model tests check both against a
separate computation (one full-sequence onnxruntime run + numpy; tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from smolchat import ChatEngine
from smolchat.errors import InvalidSetting
from smolchat.fake_backend import FakeBackend
from smolchat.settings import RANGES, limits


class Recording(FakeBackend):
    """The fake model, recording the penalty arguments of every candidates() call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.penalty_calls = []

    def candidates(self, k, repetition_penalty=1.0, penalty_ids=(), **kw):
        self.penalty_calls.append(dict(zip(kw.get("count_ids", ()), kw.get("counts", ()))))
        return super().candidates(k, repetition_penalty, penalty_ids, **kw)


def run(engine, text, **settings):
    return asyncio.run(engine.chat(text, **settings).result())


def test_penalties_count_the_generated_tokens_only():
    backend = Recording()
    reply = run(ChatEngine(backend), "Hi", temperature=0, max_tokens=12, frequency_penalty=0.7,
                presence_penalty=0.4)
    out = reply.output_token_ids
    assert len(backend.penalty_calls) == len(out)
    for i, counts in enumerate(backend.penalty_calls):
        assert counts == dict(Counter(out[:i])), i       # the prompt's tokens are not counted


def test_penalties_change_the_logits_by_openais_rule():
    backend = FakeBackend()
    asyncio.run(backend.forward([1, 5, 6, 7]))
    ids, plain = backend.candidates(backend.vocab_size)
    base = dict(zip(ids, plain))
    ids, vals = backend.candidates(backend.vocab_size, count_ids=[10, 11], counts=[3, 1],
                                   frequency_penalty=0.5, presence_penalty=0.25)
    got = dict(zip(ids, vals))
    assert got[10] == pytest.approx(base[10] - 3 * 0.5 - 0.25)
    assert got[11] == pytest.approx(base[11] - 0.5 - 0.25)
    assert all(got[i] == base[i] for i in got if i not in (10, 11))


def test_logprobs_are_the_log_softmax_of_the_candidates():
    backend = FakeBackend()
    reply = run(ChatEngine(backend), "Hi", temperature=0, max_tokens=5, logprobs=True,
                top_logprobs=3)
    assert len(reply.logprobs) == reply.completion_tokens
    for entry, token in zip(reply.logprobs, reply.output_token_ids):
        assert entry["token_id"] == token and entry["logprob"] <= 0
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token_id"] == token      # greedy: the best one
        assert tops[0]["logprob"] == entry["logprob"]
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        assert bytes(entry["bytes"]) == backend.token_bytes(token)
    # sampling: the chosen token need not be the best, its logprob is still reported
    reply = run(ChatEngine(FakeBackend()), "Hi", temperature=1.5, seed=3, max_tokens=8,
                logprobs=True)
    assert all(e["top_logprobs"] == [] and e["logprob"] <= 0 for e in reply.logprobs)
    d = reply.to_dict()
    assert d["logprobs"] == reply.logprobs
    assert run(ChatEngine(FakeBackend()), "Hi", max_tokens=3).to_dict()["logprobs"] is None


@pytest.mark.parametrize("settings, field", [
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"presence_penalty": -3}, "presence_penalty"),
    ({"logprobs": "yes"}, "logprobs"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs")])
def test_bad_values_name_the_field(settings, field):
    with pytest.raises(InvalidSetting) as err:
        ChatEngine(FakeBackend()).chat("Hi", **settings)
    assert err.value.details["field"] == field


def test_limits_in_info_are_the_ranges_resolve_uses():
    info = ChatEngine(FakeBackend()).info()
    assert info["limits"] == limits()
    for field, spec in info["limits"].items():
        if spec["type"] != "number" or field == "seed":
            continue
        ChatEngine(FakeBackend()).chat("Hi", **{field: spec["max"]})      # accepted
        with pytest.raises(InvalidSetting):
            ChatEngine(FakeBackend()).chat("Hi", **{field: spec["max"] + 0.01})
    assert set(RANGES) <= set(info["limits"])


def test_tokenizer_calls_match_the_engine():
    engine = ChatEngine(FakeBackend())
    reply = run(engine, "Hello world", temperature=0, max_tokens=4)
    # the ids chat() fed for the first turn are exactly what apply_chat_template gives
    assert engine.apply_chat_template([{"role": "user", "content": "Hello world"}]) == reply.prompt_token_ids
    assert engine.decode(engine.backend.encode("Hello world!")) == "Hello world!"
    ids = engine.apply_chat_template([{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert engine.decode(ids) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.real_model
def test_onnx_penalties_and_logprobs_equal_a_separate_log_softmax(compact_dir, logprob_reference):
    from smolchat.backend_onnx import OnnxBackend
    engine = ChatEngine(OnnxBackend.load(compact_dir))
    for question, f, p in (("List three fruits.", 0.0, 0.0), ("Name three colours.", 0.8, 0.6)):
        engine.clear()
        reply = run(engine, question, temperature=0, max_tokens=24, logprobs=True,
                    top_logprobs=2, frequency_penalty=f, presence_penalty=p)
        want = logprob_reference(compact_dir, reply.prompt_token_ids, reply.output_token_ids, f, p,
                                 cached=reply.cached_prompt_tokens)
        got = [e["logprob"] for e in reply.logprobs]
        print(f"\n[logprobs f={f} p={p}] {reply.text!r}: max |diff| "
              f"{max(abs(a - b) for a, b in zip(got, want)):.2e}")
        assert got == pytest.approx(want, abs=1e-6), (got, want)
        assert all(math.isclose(e["top_logprobs"][0]["logprob"], e["logprob"]) for e in reply.logprobs)
