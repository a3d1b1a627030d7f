"""Raw measurements -> figures. Pure functions of the per-repetition records that
browser.py and native.py produce (dicts with ready times, turns with in-page timestamps).

A turn record: {t0, times[], tokens, promptTokens, ...}: t0 when the message was sent,
times[i] when the i-th streamed piece arrived (ms, same clock). Definitions:
- ttft_ms = times[0] - t0 (template + tokenization + prefill + first sampling step);
- decode_tok_s = (n - 1) / (times[-1] - times[0]) with n the generated tokens (the system's
  own count when it reports one, else the number of pieces);
- prefill_tok_s = prompt tokens of the ~500-token turn / its ttft.
- the context sweep (when run): decode_ctx{50,500,1500}_tok_s = decode_tok_s of the first turn
  (~50 tokens of past) and of the ctx500 / ctx1500 turns; prefill_ctx1500_tok_s = the
  ctx1500 turn's prompt tokens / its ttft.
"""

from __future__ import annotations

import statistics

MB = 1e6

# name -> (unit, which way is better, label in the table)
METRICS = {
    "ready_cold_ms": ("ms", "lower", "ready, cold (ms)"),
    "ready_cached_ms": ("ms", "lower", "ready, model cached (ms)"),
    "ttft_first_ms": ("ms", "lower", "TTFT first message + system prompt (ms)"),
    "ttft_followup_ms": ("ms", "lower", "TTFT follow-up message (ms)"),
    "decode_tok_s": ("tok/s", "higher", "decode (tok/s)"),
    "prefill_tok_s": ("tok/s", "higher", "prefill, ~500-token prompt (tok/s)"),
    "decode_ctx50_tok_s": ("tok/s", "higher", "decode at ~50 tokens of past (tok/s)"),
    "decode_ctx500_tok_s": ("tok/s", "higher", "decode at ~500 tokens of past (tok/s)"),
    "decode_ctx1500_tok_s": ("tok/s", "higher", "decode at ~1,500 tokens of past (tok/s)"),
    "prefill_ctx1500_tok_s": ("tok/s", "higher", "prefill, ~1,500-token prompt (tok/s)"),
    "memory_uasm_mb": ("MB", "lower", "peak JS+wasm memory, measureUserAgentSpecificMemory (MB)"),
    "memory_rss_page_mb": ("MB", "lower", "peak RSS, page renderer / native process (MB)"),
    "memory_rss_total_mb": ("MB", "lower", "peak RSS, all browser processes (MB)"),
    "memory_rss_cached_load_mb": ("MB", "lower", "peak RSS, page renderer, cached load alone (MB)"),
    "memory_rss_cached_ready_mb": ("MB", "lower", "RSS, page renderer, 0.5 s after the cached load is ready (MB)"),
}


def summary(samples: list[float], unit: str, better: str) -> dict:
    xs = [float(x) for x in samples if x is not None]
    return {"unit": unit, "better": better, "n": len(xs), "samples": [round(x, 3) for x in xs],
            "min": round(min(xs), 3) if xs else None,
            "median": round(statistics.median(xs), 3) if xs else None,
            "max": round(max(xs), 3) if xs else None}


def ttft_ms(turn: dict | None) -> float | None:
    if not turn:   # not run (--load-only)
        return None
    if turn.get("times"):
        return turn["times"][0] - turn["t0"]
    # no streamed piece (the only token was an end token): the reply's end is the first token
    return turn["t1"] - turn["t0"] if turn.get("tokens") else None


def generated(turn: dict | None) -> int:
    if not turn:
        return 0
    return turn["tokens"] if turn.get("tokens") is not None else len(turn.get("times") or [])


def decode_tok_s(turn: dict) -> float | None:
    if not turn:
        return None
    times, n = turn.get("times") or [], generated(turn)
    if n < 2 or len(times) < 2 or times[-1] <= times[0]:
        return None
    return (n - 1) / ((times[-1] - times[0]) / 1000.0)


def figures(reps: list[dict], prompt_tokens_long: int | None,
            prompt_tokens_ctx: dict | None = None) -> dict:
    """Per-repetition records -> {metric: summary}. A record holds ready_cold_ms,
    ready_cached_ms?, turns{first, followup, long}, uasm [{bytes, by_scope}|None],
    rss_page_peak_bytes, rss_total_peak_bytes when measured."""
    col = {k: [] for k in METRICS}
    for r in reps:
        t = {"first": None, "followup": None, "long": None, **r["turns"]}   # none with --load-only
        col["ready_cold_ms"].append(r.get("ready_cold_ms"))
        col["ready_cached_ms"].append(r.get("ready_cached_ms"))
        col["ttft_first_ms"].append(ttft_ms(t["first"]))
        col["ttft_followup_ms"].append(ttft_ms(t["followup"]))
        col["decode_tok_s"] += [decode_tok_s(t["first"]), decode_tok_s(t["followup"])]
        n_long = prompt_tokens_long or (t["long"] or {}).get("promptTokens")
        tt = ttft_ms(t["long"])
        col["prefill_tok_s"].append(n_long / (tt / 1000.0) if n_long and tt else None)
        if "ctx1500" in t:   # the context sweep ran
            col["decode_ctx50_tok_s"].append(decode_tok_s(t["first"]))
            col["decode_ctx500_tok_s"].append(decode_tok_s(t["ctx500"]))
            col["decode_ctx1500_tok_s"].append(decode_tok_s(t["ctx1500"]))
            n_ctx = (prompt_tokens_ctx or {}).get("ctx1500") or t["ctx1500"].get("promptTokens")
            tt = ttft_ms(t["ctx1500"])
            col["prefill_ctx1500_tok_s"].append(n_ctx / (tt / 1000.0) if n_ctx and tt else None)
        uasm = [m["bytes"] for m in r.get("uasm") or [] if m]
        col["memory_uasm_mb"].append(max(uasm) / MB if uasm else None)
        page = r.get("rss_page_peak_bytes")
        col["memory_rss_page_mb"].append(page / MB if page else None)
        tot = r.get("rss_total_peak_bytes")
        col["memory_rss_total_mb"].append(tot / MB if tot else None)
        cached = r.get("rss_page_peak_cached_bytes")
        col["memory_rss_cached_load_mb"].append(cached / MB if cached else None)
        ready = r.get("rss_page_cached_ready_bytes")
        col["memory_rss_cached_ready_mb"].append(ready / MB if ready else None)
    return {k: summary(v, *METRICS[k][:2]) for k, v in col.items()}


def token_counts(reps: list[dict]) -> dict:
    """What was actually generated/prefilled (to see that every system ran the same work)."""
    out = {}
    for name in ("first", "followup", "long", "ctx500", "ctx1500"):
        if not all(name in r["turns"] for r in reps):
            continue
        out[name] = {"generated": [generated(r["turns"][name]) for r in reps],
                     "prompt_tokens_reported": [r["turns"][name].get("promptTokens") for r in reps]}
    return out


def decode_profile(reps: list[dict]) -> dict | None:
    """Mean ms per decode step by part, from turns whose extra carries a decode_profile
    {<part>_ms: total, ..., steps: n}: native ORT's under extra.decode_profile, SmolChat's
    reply.profile {ort_run_ms, interop_ms, sampling_ms, python_ms, steps} under extra.profile."""
    totals, steps = {}, 0
    for r in reps:
        for name in ("first", "followup"):
            extra = (r["turns"].get(name) or {}).get("extra") or {}
            prof = extra.get("decode_profile") or extra.get("profile")
            if not isinstance(prof, dict) or not prof.get("steps"):
                continue
            steps += prof["steps"]
            for k, v in prof.items():
                if k != "steps" and isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + v
    if not steps:
        return None
    per = {k: round(v / steps, 4) for k, v in totals.items()}
    per["total_ms"] = round(sum(v for k, v in per.items() if k.endswith("_ms")), 4)
    return {"unit": "ms per decode step", "steps": steps, "per_step": per}


def engine_reported(reps: list[dict]) -> dict | None:
    """The figures SmolChat's engine reports about itself (reply.timings, Python clock in the
    worker) next to the page-measured ones: the gap is worker messaging + main-thread
    scheduling, i.e. what the engine's own numbers do not see."""
    col = {"ttft_first_ms": [], "ttft_followup_ms": [], "decode_tok_s": []}
    for r in reps:
        for name in ("first", "followup"):
            t = (((r["turns"].get(name) or {}).get("extra") or {}).get("timings")) or {}
            if "ttft_ms" in t:
                col[f"ttft_{name}_ms"].append(t["ttft_ms"])
            if t.get("decode_tok_s"):
                col["decode_tok_s"].append(t["decode_tok_s"])
    if not any(col.values()):
        return None
    return {k: summary(v, *METRICS[k][:2]) for k, v in col.items()}


def load_stages(reps: list[dict]) -> dict | None:
    """Median [start, end] (ms since the load began) of each load stage a system marks
    (SmolChat's info.stages), cold and cached: stages on different threads overlap, so the
    ready time is the last end, not the sum. None when no repetition carried marks."""
    out = {}
    for kind in ("cold", "cached"):
        marks = [r.get(f"stages_{kind}") for r in reps if r.get(f"stages_{kind}")]
        if not marks:
            continue
        names = list(dict.fromkeys(n for m in marks for n in m))
        out[kind] = {n: {"start_ms": statistics.median([m[n][0] for m in marks if n in m]),
                         "end_ms": statistics.median([m[n][1] for m in marks if n in m]),
                         "ms": statistics.median([m[n][1] - m[n][0] for m in marks if n in m]),
                         "n": sum(1 for m in marks if n in m)}
                     for n in names}
    return out or None
