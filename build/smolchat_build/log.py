"""Progress lines with step timings, on stderr (stdout is reserved for JSON answers)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[smolchat_build {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(name: str):
    """`with step("export"):` prints the start and the step's wall time."""
    t = time.monotonic()
    say(f"{name} ...")
    yield
    say(f"{name} done in {time.monotonic() - t:.1f}s")


_last_tenth: dict[str, int] = {}


def bar(label: str, i: int, n: int) -> None:
    """A one-line progress bar for long loops (i of n done). On a terminal it redraws one
    line; in a log (CI, a pipe) it writes a line per tenth done, not one per step."""
    if n <= 0:
        return
    width = 30
    fill = int(width * i / n)
    line = f"  {label} [{'#' * fill}{'.' * (width - fill)}] {i}/{n}"
    if sys.stderr.isatty():
        print(line, end="\n" if i >= n else "\r", file=sys.stderr, flush=True)
        return
    tenth = 10 * i // n
    if i >= n or tenth > _last_tenth.get(label, -1):
        _last_tenth[label] = -1 if i >= n else tenth
        print(line, file=sys.stderr, flush=True)
