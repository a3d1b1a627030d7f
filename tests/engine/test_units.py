"""Table-driven tests of the engine's pure parts: settings, sampling, streaming, template."""

from __future__ import annotations

import random

import jinja2
import pytest

from smolchat.chat_template import (ChatTemplate, check_template, default_system_prompt,
                                    split_specials)
from smolchat import chat_template
from smolchat.errors import InvalidSetting, UnsupportedTemplate
from smolchat.fake_backend import SMOLLM2_CHAT_TEMPLATE, FakeBackend
from smolchat.sampling import argmax, sample
from smolchat.settings import GenerationSettings, resolve
from smolchat.streaming import StopMatcher, Utf8Decoder

S = GenerationSettings


# ------------------------------------------------------------------ settings

def test_resolve_applies_and_never_clamps():
    s = resolve(S(), {"temperature": 1, "stop": "###", "seed": None, "top_k": 200})
    assert (s.temperature, s.stop, s.seed, s.top_k) == (1.0, ("###",), None, 200)
    assert isinstance(s.temperature, float)
    with pytest.raises(InvalidSetting):
        resolve(S(), {"top_k": 201})
    assert resolve(S(), {"stop": ["a", "a", "b"]}).stop == ("a", "b")


def test_from_generation_config():
    assert GenerationSettings.from_generation_config(None) == S()
    s = GenerationSettings.from_generation_config(
        {"eos_token_id": 2, "bos_token_id": 1, "do_sample": True, "temperature": 0.6,
         "top_k": 20, "repetition_penalty": 1.1})
    assert (s.temperature, s.top_k, s.repetition_penalty) == (0.6, 20, 1.1)
    with pytest.raises(InvalidSetting):
        GenerationSettings.from_generation_config({"top_k": 0})


# ------------------------------------------------------------------ sampling

def test_argmax_ties_go_to_lower_id():
    assert argmax([5, 3, 9], [1.0, 1.0, 0.5]) == 3


def test_temperature_zero_draws_nothing():
    rng = random.Random(1)
    state = rng.getstate()
    assert sample([7, 8], [0.1, 2.0], S(temperature=0), rng) == 8
    assert rng.getstate() == state


def test_top_p_and_top_k_limit_the_choice():
    ids, logits = [10, 11, 12, 13], [5.0, 1.0, 0.9, 0.8]
    rng = random.Random(0)
    assert {sample(ids, logits, S(temperature=1.0, top_p=0.5), rng) for _ in range(200)} == {10}
    got = {sample(ids, logits, S(temperature=1.0, top_k=2, top_p=1.0), rng) for _ in range(500)}
    assert got == {10, 11}


def test_sampling_follows_the_distribution():
    rng = random.Random(3)
    ids, logits = [0, 1], [0.0, 0.0]
    n = sum(sample(ids, logits, S(temperature=1.0, top_p=1.0), rng) for _ in range(4000))
    assert 1800 < n < 2200


def test_same_rng_seed_same_draws():
    draw = lambda seed: [sample(list(range(5)), [1, 2, 3, 2, 1], S(temperature=1.5), random.Random(seed))  # noqa: E731
                         for _ in range(1)]
    assert draw(5) == draw(5)


# ------------------------------------------------------------------ streaming

def test_utf8_decoder_holds_partial_characters():
    d = Utf8Decoder()
    data = "é😀".encode()
    out = [d.feed(data[i:i + 1]) for i in range(len(data))]
    assert out == ["", "é", "", "", "", "😀"]
    d.feed(b"\xf0\x9f")
    assert d.pending_bytes() == 2 and d.finish() == ""
    assert Utf8Decoder().feed(b"\xff") == "\ufffd"


@pytest.mark.parametrize("stops, chunks, emitted, stopped", [
    (["###"], ["ab#", "#", "#cd"], ["ab", "", ""], True),
    (["###"], ["ab#", "x"], ["ab", "#x"], False),
    (["END"], ["The E", "N", "D"], ["The ", "", ""], True),
    (["ab", "b"], ["xab"], ["x"], True),          # earliest match wins
    ([], ["a", "b"], ["a", "b"], False),
])
def test_stop_matcher(stops, chunks, emitted, stopped):
    m = StopMatcher(stops)
    got, hit = [], False
    for c in chunks:
        out, hit = m.push(c)
        got.append(out)
        if hit:
            break
    assert got == emitted and hit == stopped


# ------------------------------------------------------------------ chat template

def test_template_check_and_default_system_prompt(monkeypatch):
    check_template(SMOLLM2_CHAT_TEMPLATE)
    assert default_system_prompt(SMOLLM2_CHAT_TEMPLATE) == \
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    escaped = SMOLLM2_CHAT_TEMPLATE.replace("system\nYou", "system\\nYou")
    assert default_system_prompt(escaped).startswith("You are a helpful")
    llama = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    check_template(llama)                       # not ChatML: jinja2 renders it
    monkeypatch.setattr(chat_template, "_jinja2", lambda: None)   # a runtime without jinja2
    check_template(SMOLLM2_CHAT_TEMPLATE)       # ChatML needs no Jinja engine
    with pytest.raises(UnsupportedTemplate, match="no jinja2"):
        check_template(llama)


@pytest.mark.parametrize("text, pieces", [
    ("plain", ["plain"]),
    ("a<|im_end|>b", ["a<|", "im_end|>b"]),
    ("<|im_start|><|im_start|>", ["<|", "im_start|><|", "im_start|>"]),
    ("x<|endoftext|>", ["x<|", "endoftext|>"]),
])
def test_split_specials(text, pieces):
    specials = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert split_specials(text, specials) == pieces
    assert "".join(pieces) == text


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi, my name is Alice"},
     {"role": "assistant", "content": "Hello Alice!"},
     {"role": "user", "content": "What's my name?"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "emoji 😀\n\nnew lines"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_rendering_matches_the_jinja_template(messages):
    """Our renderer (what the engine feeds) equals the bundle's own Jinja template."""
    b = FakeBackend()
    t = ChatTemplate(SMOLLM2_CHAT_TEMPLATE, b.special_tokens, b.encode)
    want = jinja2.Template(SMOLLM2_CHAT_TEMPLATE).render(messages=messages,
                                                         add_generation_prompt=True)
    system = [] if messages[0]["role"] == "system" else [
        {"role": "system", "content": t.default_system_prompt}]
    assert t.render_text(system + messages) == want
    assert b.decode(t.render_ids(system + messages)) == want
