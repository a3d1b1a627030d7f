"""The repetition stop: notice a reply that has started repeating itself, token by token.

    stop = RepetitionStop()
    for token in reply_tokens:
        if stop.push(token): ...          # finish_reason "repetition"

Two rules; either one fires:
- back to back: the reply's last tokens are one span of p tokens (1 <= p <= MAX_PERIOD) said
  over and over, at least MIN_REPEATS times and over at least MIN_TOKENS tokens (a span of 4
  tokens, "la France, ", needs 8 repeats; a 12-token sentence 3; one token 32 in a row);
- recurring: a span of SPAN tokens occurs for the SPAN_REPEATS-th time in the reply, each
  occurrence apart from the previous one (no overlap), so a sentence that keeps coming back
  with other words between ("She was a brave and noble dragon ... She was a brave and noble
  dragon ...") is caught too. Overlapping occurrences (a short span repeated back to back)
  are left to the first rule, so "0 0 0 0 0 0 0 0 0 0 0 0" is not cut at 12 tokens.
Measured on the task suite (tests/data/tasks.jsonl, compact and exact, greedy and sampled,
without the stop): they fired on 27 of the 28 compact greedy replies that ran to the 256-token
limit, and on 1 of 108 that ended by themselves, a paragraph said three times (README:
"Defaults and the repetition stop").

It only watches: it never changes a token, so every token before it fires is the same as
without it (greedy stays exact). Cost per token: MAX_PERIOD integer comparisons (for each
period p, the length of the run of positions where token[i] == token[i - p] ends here) and
one dict update keyed by the last SPAN tokens.

What this module ignores: text (it sees token ids only), the prompt (only the reply's own
tokens count) and what happens after it fires (engine.py ends the reply).
"""

from __future__ import annotations

from typing import Iterable

MAX_PERIOD = 64      # longest repeated span looked for, tokens (~2 sentences)
MIN_REPEATS = 3      # the span said at least this many times in a row
MIN_TOKENS = 32      # and the repeated stretch at least this long, tokens
SPAN = 10            # recurring rule: a span of this many tokens ...
SPAN_REPEATS = 3     # ... occurring this many times, apart


class RepetitionStop:
    def __init__(self, max_period: int = MAX_PERIOD, min_repeats: int = MIN_REPEATS,
                 min_tokens: int = MIN_TOKENS, span: int = SPAN, span_repeats: int = SPAN_REPEATS):
        if max_period < 1 or min_repeats < 2 or min_tokens < 2 or span < 1 or span_repeats < 2:
            raise ValueError("need max_period >= 1, min_repeats >= 2, min_tokens >= 2, "
                             "span >= 1, span_repeats >= 2")
        self.max_period, self.span, self.span_repeats = max_period, span, span_repeats
        # recurring rule: last SPAN tokens -> (occurrences apart so far, end of the last one)
        self._spans: dict[tuple[int, ...], tuple[int, int]] = {}
        # run[p]: positions i at the end with out[i] == out[i - p]; the last run[p] + p tokens
        # then have period p. need[p]: the run at which that stretch is MIN_REPEATS spans and
        # MIN_TOKENS tokens long.
        self._need = [0] + [max((min_repeats - 1) * p, min_tokens - p)
                            for p in range(1, max_period + 1)]
        self._run = [0] * (max_period + 1)
        self._out: list[int] = []
        # once fired: the distance in tokens between two repeats of the span (back to back:
        # the span's length)
        self.period: int | None = None

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
        n = len(out)
        if n >= self.span:
            key = tuple(out[n - self.span:])
            count, end = self._spans.get(key, (0, -n))
            if n - end >= self.span:                   # apart from the previous occurrence
                self._spans[key] = (count + 1, n)
                if count + 1 >= self.span_repeats and fired is None:
                    fired = n - end
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
