"""The repetition stop (smolchat.repetition): when it fires, and that the engine's replies
stop there with finish_reason "repetition" without changing a token before it (fake model)."""

from __future__ import annotations

import pytest

from smolchat.engine import FINISH_REASONS
from smolchat.errors import InvalidSetting
from smolchat.repetition import MIN_REPEATS, MIN_TOKENS, SPAN, RepetitionStop, first_loop
from smolchat.settings import GenerationSettings, resolve


# ------------------------------------------------------------------ the detector

BACK_TO_BACK_ONLY = {"span_repeats": 10**9}


@pytest.mark.parametrize("period", [1, 2, 4, 11, 12, 40, 64])
def test_back_to_back_rule_fires_once_a_span_repeats_enough(period):
    span = list(range(100, 100 + period))
    need = max(MIN_REPEATS * period, MIN_TOKENS)    # tokens of the periodic stretch
    head = [7, 8, 9]                                 # a non-repeating start
    tokens = head + span * (need // period + 3)
    assert first_loop(tokens, **BACK_TO_BACK_ONLY) == len(head) + need
    # the recurring rule counts the first SPAN tokens' occurrences that do not overlap: one
    # every ceil(SPAN / period) periods; the third fires it
    apart = -(-SPAN // period) * period
    assert first_loop(tokens) == len(head) + min(need, SPAN + 2 * apart)


def test_recurring_rule_catches_a_sentence_that_keeps_coming_back():
    sentence = list(range(200, 212))                 # 12 tokens, said again and again
    filler = [[300 + i, 400 + i, 500 + i] for i in range(5)]   # other words in between
    tokens = sentence + filler[0] + sentence + filler[1] + sentence + filler[2] + sentence
    third = len(sentence) * 2 + 6 + SPAN            # the 3rd time its first SPAN tokens occur
    assert first_loop(tokens) == third
    assert first_loop(tokens, **BACK_TO_BACK_ONLY) is None
    assert first_loop(tokens[:third - 1]) is None


def test_never_fires_on_text_without_a_repeated_span():
    assert first_loop(range(2000)) is None
    # a span said twice (a refrain), even a long one, is not a loop
    assert first_loop(list(range(50)) * 2 + list(range(500, 600))) is None
    # short spans repeated a few times ("no, no, no") are not a loop either
    assert first_loop([1, 2] * 10 + list(range(300, 400))) is None
    # nor is one short span said back to back 12 times (the recurring rule counts only
    # occurrences that do not overlap)
    assert first_loop([5] * 12 + list(range(300, 400))) is None


def test_period_longer_than_the_window_is_left_to_the_recurring_rule():
    span = list(range(1000, 1070))                   # 70 tokens > MAX_PERIOD
    assert first_loop(span * 5, **BACK_TO_BACK_ONLY) is None
    assert first_loop(span * 5, max_period=70, **BACK_TO_BACK_ONLY) == 70 * MIN_REPEATS
    assert first_loop(span * 5) == SPAN + 2 * 70


def test_reports_the_period():
    stop = RepetitionStop()
    fired = [stop.push(t) for t in [5, 6, 7, 8] * 20]
    assert fired.index(True) == MIN_TOKENS - 1 and stop.period == 4


# ------------------------------------------------------------------ in the engine

LOOP = "L'Etoile, " + "la France, " * 60          # what compact said to the France prompt


def test_a_looping_reply_stops_with_repetition(make_engine, talk):
    engine, _ = make_engine(replies=LOOP)
    pieces, reply = talk(engine, "chat", "What is the capital of France?", temperature=0,
                         max_tokens=400)
    assert reply.finish_reason == "repetition"
    assert reply.completion_tokens < 100             # not the 400 of the limit
    assert reply.text == "".join(pieces) and reply.text.startswith("L'Etoile, la France, la")
    assert engine.history()[-1] == {"role": "assistant", "content": reply.text}


@pytest.mark.parametrize("settings", [{"temperature": 0}, {"temperature": 0.3, "seed": 5}])
def test_the_stop_changes_no_token_before_it(make_engine, talk, settings):
    engine, _ = make_engine(replies=LOOP)
    _, on = talk(engine, "chat", "Hi", max_tokens=300, **settings)
    engine, _ = make_engine(replies=LOOP)
    _, off = talk(engine, "chat", "Hi", max_tokens=300, repetition_stop=False, **settings)
    assert off.finish_reason == "length" and off.completion_tokens == 300
    assert on.finish_reason == "repetition"
    assert on.output_token_ids == off.output_token_ids[:on.completion_tokens]
    assert off.text.startswith(on.text)
    assert first_loop(off.output_token_ids) == on.completion_tokens


def test_replies_that_end_or_repeat_a_little_are_untouched(make_engine, talk):
    text = "Paris. Paris. Paris is the capital, the capital of France."
    engine, _ = make_engine(replies=text)
    _, reply = talk(engine, "chat", "Hi", temperature=0)
    assert reply.finish_reason == "stop" and reply.text == text


def test_repetition_is_a_named_finish_reason_and_a_checked_setting():
    assert "repetition" in FINISH_REASONS
    assert GenerationSettings().repetition_stop is True
    assert resolve(GenerationSettings(), {"repetition_stop": False}).repetition_stop is False
    with pytest.raises(InvalidSetting, match="repetition_stop"):
        resolve(GenerationSettings(), {"repetition_stop": 1})
