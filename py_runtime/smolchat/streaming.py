"""Turn a stream of token bytes into text pieces that are safe to show.

Two filters, used in this order by the engine:
- `Utf8Decoder`: byte-level BPE tokens may end inside a UTF-8 character (an emoji is often
  split over 2-4 tokens); text comes out only once each character is complete.
  Malformed bytes become U+FFFD as soon as they are known to be malformed.
- `StopMatcher`: stop strings may span tokens; text that could be the start of a stop
  string is held back until it is known not to be, so nothing shown is ever retracted.
  The stop string itself is never emitted.

What this module ignores: token ids, sampling, and where the pieces go.
"""

from __future__ import annotations

import codecs
from typing import Sequence


class Utf8Decoder:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """Text of every character completed by `data` ("" while one is incomplete)."""
        return self._decoder.decode(data)

    def pending_bytes(self) -> int:
        """Bytes of an incomplete character held back."""
        return len(self._decoder.getstate()[0])

    def finish(self) -> str:
        """End of reply: an incomplete trailing character is dropped, never shown half."""
        self._decoder.reset()
        return ""


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was found). After a
        stop, the returned text is everything before the stop string and the rest is dropped."""
        if not self.stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[:min(hits)], ""
            return out, True
        hold = self._held_suffix()
        out = self._pending[:len(self._pending) - hold]
        self._pending = self._pending[len(out):]
        return out, False

    def flush(self) -> str:
        """End of reply without a stop: the held-back text was not a stop after all."""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self) -> int:
        """Length of the longest suffix of the pending text that starts some stop string."""
        p = self._pending
        for n in range(min(len(p), max(len(s) for s in self.stops) - 1), 0, -1):
            tail = p[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
