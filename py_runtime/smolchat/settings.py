"""Generation settings: the knobs of one reply, validated once at the entry.

`GenerationSettings` is an immutable value. `resolve(defaults, overrides)` is the one
entry point: it rejects unknown names, wrong types and out-of-range values with
`InvalidSetting(field, value, allowed)` and never clamps. Defaults come from the bundle's
`generation_config.json` through `from_generation_config`; where it has no value (SmolLM2's
has only bos/eos/pad ids), the class defaults below apply. This is the one place defaults
live: the engine reports them in `info()["defaults"]`, and the page, the widget, the JS API
and the CLIs send only what the user set, so everything else comes from here.

What this module ignores: what the settings do (sampling.py, engine.py) and where the
bundle's generation config is read from (the backend or the caller hands over a dict).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .errors import InvalidSetting

#: Most candidates the backend is asked for per token. top_k is bounded by it so that the
#: per-token Python work (and the Pyodide boundary crossing) stays a few hundred floats.
MAX_TOP_K = 200
#: Longest reply one call may ask for; the context window bounds it further per turn.
MAX_TOKENS_LIMIT = 8192
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_SEED = 2**32 - 1
#: Most alternatives reported per token with logprobs (OpenAI's limit).
MAX_TOP_LOGPROBS = 20

#: The numeric bounds, one table: resolve() checks them and ChatEngine.info()["limits"] hands
#: them to the UIs (the page validates its Settings with these, never with copies).
#: {field: (type, low, high, low_open)}
RANGES = {
    "max_tokens": ("integer", 1, MAX_TOKENS_LIMIT, False),
    "temperature": ("number", 0.0, 2.0, False),
    "top_k": ("integer", 1, MAX_TOP_K, False),
    "top_p": ("number", 0.0, 1.0, True),
    "repetition_penalty": ("number", 1.0, 2.0, False),
    "frequency_penalty": ("number", -2.0, 2.0, False),
    "presence_penalty": ("number", -2.0, 2.0, False),
    "top_logprobs": ("integer", 0, MAX_TOP_LOGPROBS, False),
    "seed": ("integer", 0, MAX_SEED, False),
}


@dataclass(frozen=True)
class GenerationSettings:
    # Why these defaults (README "Defaults and the repetition stop" has the measurements):
    # temperature 0.2 and top_p 0.9 are the SmolLM2-Instruct model card's own example; top_k 50
    # is transformers' default. The repetition penalty stays off: the HF rule divides the logit
    # of every token already in the context, the user's own words included, so it also pushes
    # down the name or number a reply should repeat (recall); loops are ended by
    # repetition_stop instead, which never changes a token. 256 tokens (~190 words) holds the
    # answers this model gives: on the task suite (compact, greedy, no stop) the replies that
    # ended by themselves took 25 tokens (median) and 246 at most, and 27 of the 28 that
    # reached 256 were loops (the 28th a pirate's long tale).
    max_tokens: int = 256            # generated tokens per reply, eos included
    temperature: float = 0.2         # 0 = greedy (argmax)
    top_k: int = 50                  # candidates kept before top_p, <= MAX_TOP_K
    top_p: float = 0.9               # nucleus mass kept, (0, 1]
    repetition_penalty: float = 1.0  # HF-style, over the tokens in the context; 1 = off
    seed: int | None = None          # None = a fresh random seed per reply
    stop: tuple[str, ...] = ()       # strings that end the reply (not part of its text)
    repetition_stop: bool = True     # end a reply that loops (repetition.py): "repetition"
    # OpenAI's penalties over the tokens generated so far in this reply, on the logits before
    # top-k: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False           # report each generated token's log-probability
    top_logprobs: int = 0            # and this many most likely alternatives (needs logprobs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_generation_config(cls, config: dict | None) -> "GenerationSettings":
        """Defaults from a transformers generation_config.json dict. Reads max_new_tokens,
        temperature, top_k, top_p, repetition_penalty; `do_sample: false` means greedy
        (temperature 0). Everything else (bos/eos/pad ids, versions) is ignored here."""
        base = cls()
        if not config:
            return base
        values = {}
        for src, dst in (("max_new_tokens", "max_tokens"), ("temperature", "temperature"),
                         ("top_k", "top_k"), ("top_p", "top_p"),
                         ("repetition_penalty", "repetition_penalty")):
            if config.get(src) is not None:
                values[dst] = config[src]
        if config.get("do_sample") is False:
            values["temperature"] = 0.0
        return resolve(base, values)


FIELDS = tuple(GenerationSettings.__dataclass_fields__)


def _int(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidSetting(field, value, f"an integer in [{lo}, {hi}]")
    return value


def _float(field: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi)
    if not ok:
        raise InvalidSetting(field, value, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")
    return float(value)


def _stop(value) -> tuple[str, ...]:
    allowed = (f"a string or a list of at most {MAX_STOP_STRINGS} strings of 1 to "
               f"{MAX_STOP_CHARS} characters")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) > MAX_STOP_STRINGS:
        raise InvalidSetting("stop", value, allowed)
    for s in items:
        if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
            raise InvalidSetting("stop", value, allowed)
    return tuple(dict.fromkeys(items))


def limits() -> dict:
    """RANGES as JSON: {field: {"type", "min", "max", "min_exclusive"}} (for the UIs)."""
    return {f: {"type": t, "min": lo, "max": hi, "min_exclusive": lo_open}
            for f, (t, lo, hi, lo_open) in RANGES.items()}


def resolve(base: GenerationSettings, overrides: dict | None = None) -> GenerationSettings:
    """`base` with `overrides` applied, every override checked. Raises InvalidSetting for the
    first bad field (unknown names included); never adjusts a value."""
    if not overrides:
        return base
    checked = {}
    for field, value in overrides.items():
        if field == "seed" and value is None:
            checked[field] = None
        elif field in RANGES:
            kind, lo, hi, lo_open = RANGES[field]
            checked[field] = (_int(field, value, lo, hi) if kind == "integer"
                              else _float(field, value, lo, hi, lo_open=lo_open))
        elif field == "stop":
            checked[field] = _stop(value)
        elif field in ("repetition_stop", "logprobs"):
            if not isinstance(value, bool):
                raise InvalidSetting(field, value, "true or false")
            checked[field] = value
        else:
            raise InvalidSetting(field, value, "one of " + ", ".join(FIELDS))
    out = replace(base, **checked)
    if out.top_logprobs and not out.logprobs:
        raise InvalidSetting("top_logprobs", out.top_logprobs,
                             "0 unless logprobs is true (set logprobs: true to get alternatives)")
    return out
