"""Pick the next token from a handful of candidates: a pure function of
(candidate ids, candidate logits, settings, rng).

The backend has already done the vocabulary-wide work: repetition penalty and top-k
(backend.candidates). Here: temperature, top_k (again, in case more were passed), top_p,
and one draw from `rng` (a `random.Random`, so the same seed gives the same draw in
CPython and in Pyodide). Temperature 0 is argmax and draws nothing from `rng`.

What this module ignores: where logits come from, stop rules, and token text.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from .settings import GenerationSettings


def argmax(ids: Sequence[int], logits: Sequence[float]) -> int:
    """Highest logit; ties go to the lower id (the backend's candidate order)."""
    best = 0
    for i in range(1, len(ids)):
        if logits[i] > logits[best] or (logits[i] == logits[best] and ids[i] < ids[best]):
            best = i
    return ids[best]


def sample(ids: Sequence[int], logits: Sequence[float], settings: GenerationSettings,
           rng: random.Random) -> int:
    if not ids or len(ids) != len(logits):
        raise ValueError(f"need matching, non-empty candidates (got {len(ids)} ids, "
                         f"{len(logits)} logits)")
    if settings.temperature == 0.0:
        return argmax(ids, logits)
    # best first, ties to the lower id, then keep top_k
    order = sorted(range(len(ids)), key=lambda i: (-logits[i], ids[i]))[:settings.top_k]
    scaled = [logits[i] / settings.temperature for i in order]
    peak = scaled[0]
    weights = [math.exp(s - peak) for s in scaled]
    total = sum(weights)
    # nucleus: the shortest best-first prefix whose probability reaches top_p
    if settings.top_p < 1.0:
        kept, mass = 0, 0.0
        while kept < len(weights):
            mass += weights[kept]
            kept += 1
            if mass >= settings.top_p * total:
                break
        weights, order = weights[:kept], order[:kept]
        total = mass
    r = rng.random() * total
    acc = 0.0
    for w, i in zip(weights, order):
        acc += w
        if r < acc:
            return ids[i]
    return ids[order[-1]]  # r == total after rounding
