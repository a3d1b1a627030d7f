"""The repetition stop: notice a reply that has started repeating itself, token by token.

    stop = RepetitionStop()
    for token in reply_tokens:
        if stop.push(token): ...          # finish_reason "repetition"

A reply is looping when its last tokens are one span of `p` tokens (1 <= p <= MAX_PERIOD)
said over and over, back to back: at least MIN_REPEATS times and over at least MIN_TOKENS
tokens (so a span of 4 tokens, "la France, ", needs 8 repeats; a 12-token sentence 3;
one token repeated needs 32 in a row). Measured on the task suite (tests/data/tasks.jsonl)
these never fire on a reply that ends by itself, and catch every reply that ran to the
limit repeating itself (README: "Defaults and the repetition stop").

It only watches: it never changes a token, so every token before it fires is the same as
without it (greedy stays exact). Cost: MAX_PERIOD integer comparisons per token (for each
period p, the length of the run of positions where token[i] == token[i - p] ends here).

What this module ignores: text (it sees token ids only), the prompt (only the reply's own
tokens count) and what happens after it fires (engine.py ends the reply).
"""

from __future__ import annotations

from typing import Iterable

MAX_PERIOD = 64      # longest repeated span looked for, tokens (~2 sentences)
MIN_REPEATS = 3      # the span said at least this many times in a row
MIN_TOKENS = 32      # and the repeated stretch at least this long, tokens


class RepetitionStop:
    def __init__(self, max_period: int = MAX_PERIOD, min_repeats: int = MIN_REPEATS,
                 min_tokens: int = MIN_TOKENS):
        if max_period < 1 or min_repeats < 2 or min_tokens < 2:
            raise ValueError("need max_period >= 1, min_repeats >= 2, min_tokens >= 2")
        self.max_period = max_period
        # run[p]: positions i at the end with out[i] == out[i - p]; the last run[p] + p tokens
        # then have period p. need[p]: the run at which that stretch is MIN_REPEATS spans and
        # MIN_TOKENS tokens long.
        self._need = [0] + [max((min_repeats - 1) * p, min_tokens - p)
                            for p in range(1, max_period + 1)]
        self._run = [0] * (max_period + 1)
        self._out: list[int] = []
        self.period: int | None = None    # the repeated span's length once it fired

    def push(self, token: int) -> bool:
        """Add the reply's next token; True when the reply is now looping."""
        out, run, need = self._out, self._run, self._need
        out.append(token)
        last = len(out) - 1
        fired = None
        for p in range(1, min(self.max_period, last) + 1):
            if out[last - p] == token:
                run[p] += 1
                if fired is None and run[p] >= need[p]:
                    fired = p
            else:
                run[p] = 0
        if fired is not None and self.period is None:
            self.period = fired
        return fired is not None


def first_loop(tokens: Iterable[int], **limits) -> int | None:
    """How many tokens of `tokens` there are when RepetitionStop first fires (None: never)."""
    stop = RepetitionStop(**limits)
    for n, t in enumerate(tokens, 1):
        if stop.push(t):
            return n
    return None
