"""The benchmark's quick mode runs end to end and writes well-formed results.

No timing assertions: figures depend on the machine. What is checked: the command exits 0,
the JSON has every field with the right types and units, statistics are consistent
(min <= median <= max, n = number of samples), a browser anchor (wllama, headless Chromium)
and the native ORT reference actually ran, and the Markdown carries the table.
Subset kept small for CI (< ~4 min): native + wllama, 1 thread, 4 new tokens, 1 repetition.
The pure parts (metrics, ratios) are checked on hand-made records without a browser.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolchat_bench import metrics, report
from smolchat_bench.paths import bundle_dir

ROOT = Path(__file__).resolve().parents[2]


def _turn(t0, times, tokens=None, prompt=None):
    return {"t0": t0, "t1": times[-1] if times else t0, "times": times, "tokens": tokens,
            "promptTokens": prompt, "text": "x", "extra": None}


def test_metrics_definitions():
    first = _turn(100.0, [300.0, 400.0, 500.0], tokens=3)
    assert metrics.ttft_ms(first) == 200.0
    assert metrics.decode_tok_s(first) == pytest.approx(2 / 0.2)
    # pieces fewer than tokens (a streamed piece may hold several tokens): the count wins
    assert metrics.decode_tok_s(_turn(0.0, [10.0, 110.0], tokens=11)) == pytest.approx(100.0)
    assert metrics.decode_tok_s(_turn(0.0, [10.0], tokens=1)) is None
    rep = {"ready_cold_ms": 1000.0, "ready_cached_ms": 500.0,
           "turns": {"first": first, "followup": _turn(0.0, [50.0, 150.0]),
                     "long": _turn(0.0, [250.0], tokens=1, prompt=500)},
           "uasm": [None, {"bytes": 2e8}, {"bytes": 3e8}], "rss_page_peak_bytes": 4e8}
    f = metrics.figures([rep], None)
    assert set(f) == set(metrics.METRICS)
    assert f["prefill_tok_s"]["median"] == pytest.approx(2000.0)
    assert f["memory_uasm_mb"]["median"] == pytest.approx(300.0)
    assert f["memory_rss_total_mb"]["n"] == 0 and f["memory_rss_total_mb"]["median"] is None
    assert f["decode_tok_s"]["n"] == 2


def test_context_sweep_figures_and_ratio_line():
    """Issue 16's sweep: decode at ~50 (the first turn), ~500 and ~1,500 tokens of past, the
    ~1,500-token prefill, and the report's 1,500/50 ratio and SmolChat-vs-native column."""
    def rep(scale):
        return {"ready_cold_ms": 1.0, "turns": {
            "first": _turn(0.0, [10.0, 10.0 + 100 * scale], tokens=2),              # 10/scale tok/s
            "followup": _turn(0.0, [10.0, 20.0], tokens=2),
            "long": _turn(0.0, [250.0], tokens=1, prompt=500),
            "ctx500": _turn(0.0, [10.0, 10.0 + 125 * scale], tokens=2),             # 8/scale
            "ctx1500": _turn(0.0, [3000.0, 3000.0 + 200 * scale], tokens=2, prompt=1500)}}
    ours = metrics.figures([rep(1.0)], None)
    assert ours["decode_ctx50_tok_s"]["median"] == pytest.approx(10.0)
    assert ours["decode_ctx500_tok_s"]["median"] == pytest.approx(8.0)
    assert ours["decode_ctx1500_tok_s"]["median"] == pytest.approx(5.0)
    assert ours["prefill_ctx1500_tok_s"]["median"] == pytest.approx(500.0)
    native = metrics.figures([rep(0.5)], None)                          # twice as fast
    run = lambda f: {"available": True, "runs": {"1": {"metrics": f}}}  # noqa: E731
    md = report.markdown({"mode": "full", "created_utc": "x", "load_average": {
        "start": [0, 0, 0], "end": [0, 0, 0], "max_1min": 0}, "machine": {"cpus": 2, "chromium": "c"},
        "settings": {"threads": [1], "reps": 1, "max_new_tokens": 2, "prompt_tokens": {}},
        "systems": {"smolchat": run(ours), "native_ort": run(native)}})
    assert "| decode at ~1,500 tokens of past (tok/s) | 5.0 | 10.0 | 0.50x |" in md
    assert "Decode at ~1,500 tokens of past / at ~50: SmolChat 0.50, native ORT (runtime form) 0.50." in md
    quick = metrics.figures([{**rep(1.0), "turns": {k: v for k, v in rep(1.0)["turns"].items()
                                                   if not k.startswith("ctx")}}], None)
    assert quick["decode_ctx50_tok_s"]["n"] == 0


def test_advantage_direction():
    fast = metrics.summary([10.0], "ms", "lower")
    slow = metrics.summary([40.0], "ms", "lower")
    assert report.advantage(fast, slow) == pytest.approx(4.0)
    hi = metrics.summary([80.0], "tok/s", "higher")
    lo = metrics.summary([20.0], "tok/s", "higher")
    assert report.advantage(hi, lo) == pytest.approx(4.0)
    assert report.advantage(None, lo) is None


def test_load_only_records_give_ready_and_memory_rows_only():
    """--load-only: a repetition without chat turns still gives the ready and memory figures
    (the renderer's peak of the cached load and its RSS at ready); the turn rows stay empty."""
    rep = {"ready_cold_ms": 9000.0, "ready_cached_ms": 6000.0, "turns": {}, "uasm": [{"bytes": 2.4e8}],
           "rss_page_peak_bytes": 7e8, "rss_page_peak_cached_bytes": 6.5e8,
           "rss_page_cached_ready_bytes": 5.5e8}
    f = metrics.figures([rep, dict(rep, rss_page_cached_ready_bytes=5.7e8)], None)
    assert f["ready_cached_ms"]["median"] == 6000.0
    assert f["memory_rss_cached_load_mb"]["median"] == pytest.approx(650.0)
    assert f["memory_rss_cached_ready_mb"]["median"] == pytest.approx(560.0)
    for name in ("ttft_first_ms", "ttft_followup_ms", "decode_tok_s", "prefill_tok_s"):
        assert f[name]["n"] == 0, name
    assert metrics.decode_profile([rep]) is None and metrics.engine_reported([rep]) is None
    assert metrics.token_counts([rep]) == {}


def test_load_stages_medians_and_table():
    """SmolChat's worker marks -> per-stage medians (cold and cached) -> the bench's table."""
    reps = [{"stages_cold": {"python_boot": [0, 3000], "session": [3000, 6000]},
             "stages_cached": {"python_boot": [0, 1000], "read_verify": [10, 500], "session": [1000, 4000]}},
            {"stages_cold": {"python_boot": [0, 5000], "session": [5000, 7000]},
             "stages_cached": {"python_boot": [0, 2000], "read_verify": [20, 700], "session": [2000, 4000]}},
            {"stages_cold": None, "stages_cached": None}]
    st = metrics.load_stages(reps)
    assert st["cold"]["python_boot"] == {"start_ms": 0, "end_ms": 4000, "ms": 4000, "n": 2}
    assert st["cached"]["session"]["ms"] == 2500 and st["cached"]["read_verify"]["start_ms"] == 15
    assert metrics.load_stages([{"stages_cold": None}]) is None
    results = {"systems": {"smolchat": {"available": True, "runs": {"1": {"load_stages": st}}}}}
    table = "\n".join(report._load_stages(results))
    assert "| read_verify | – | 15-600 (585) |" in table and "| session | 4,000-6,500 (2,500) | 1,500-4,000 (2,500) |" in table


def _check_summary(name, s):
    unit, better, _ = metrics.METRICS[name]
    assert s["unit"] == unit and s["better"] == better, name
    assert isinstance(s["n"], int) and s["n"] == len(s["samples"]), name
    assert all(isinstance(x, float) for x in s["samples"]), name
    if s["n"]:
        assert s["min"] <= s["median"] <= s["max"], name
        assert all(x > 0 for x in s["samples"]), name
    else:
        assert s["min"] is s["median"] is s["max"] is None, name


@pytest.mark.browser
def test_quick_mode_end_to_end(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("bench", "build", "py_runtime", "web"))
    cmd = [sys.executable, "-m", "smolchat_bench", "--quick", "--systems", "native,wllama",
           "--threads", "1", "--max-tokens", "4", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, p.stderr[-3000:]

    res = json.loads((tmp_path / "latest.json").read_text())
    assert res["schema"] == "smolchat-bench/1" and res["mode"] == "quick"
    s = res["settings"]
    assert s["threads"] == [1] and s["reps"] == 1 and s["max_new_tokens"] == 4
    assert s["sampling"] == "greedy"
    assert all(isinstance(n, int) and n > 0 for n in s["prompt_tokens"].values())
    la = res["load_average"]
    assert len(la["start"]) == 3 and len(la["end"]) == 3 and isinstance(la["max_1min"], float)
    assert res["machine"]["cpus"] >= 1 and "hromium" in res["machine"]["chromium"]

    systems = res["systems"]
    for name, v in systems.items():
        assert v["kind"] in ("browser", "native") and isinstance(v["available"], bool), name
        if not v["available"]:
            assert isinstance(v["reason"], str) and v["reason"], name
            continue
        assert v["reason"] is None and set(v["runs"]) == {"1"}, name
        run = v["runs"]["1"]
        assert run["threads"] == 1 and isinstance(run["info"], dict), name
        assert set(run["metrics"]) == set(metrics.METRICS), name
        for m, summ in run["metrics"].items():
            _check_summary(m, summ)
        for turn in ("first", "followup", "long"):
            gen = run["tokens"][turn]["generated"]
            assert len(gen) == 1 and 1 <= gen[0] <= 4, (name, turn)
        for m in ("ttft_first_ms", "ttft_followup_ms", "decode_tok_s", "prefill_tok_s",
                  "ready_cold_ms", "memory_rss_page_mb"):
            assert run["metrics"][m]["n"] >= 1, (name, m)

    wl = systems["wllama"]
    assert wl["available"], wl.get("reason")
    run = wl["runs"]["1"]
    assert run["cross_origin_isolated"] is True
    assert run["metrics"]["ready_cached_ms"]["n"] == 1
    assert run["metrics"]["memory_uasm_mb"]["n"] == 1  # measureUserAgentSpecificMemory worked
    if bundle_dir() is not None:
        assert systems["native_ort"]["available"], systems["native_ort"].get("reason")
        assert systems["native_ort"]["runs"]["1"]["decode_profile"]["per_step"]["ort_run_ms"] > 0
        rm = res["runtime_form_memory"]  # the page's ORT wasm and runtime_form.js, in Node
        assert rm["available"], rm.get("reason")
        assert set(rm["variants"]) == {"on-demand", "whole"}
        for v in rm["variants"].values():
            # the wasm heap holds model.data, and the run's prefill can only grow it
            assert v["expanded_mb"] <= v["wasm_heap_mb"] <= v["wasm_heap_prefill_mb"]
            assert v["load_peak_above_engine_mb"] >= v["wasm_heap_mb"] - v["expanded_mb"] * 0.1
        assert "## Runtime form memory" in (tmp_path / "latest.md").read_text()
    llama = systems["native_llamacpp"]  # optional: built only on request, never in CI
    assert llama["available"] or "llama-cpp-python" in llama["reason"]

    md = (tmp_path / "latest.md").read_text()
    assert md.startswith("# SmolChat benchmark (quick mode")
    assert "## 1 thread" in md and "| metric | wllama" in md
    assert "## Issue 6 targets" in md and "## Decode step profile" in md
    lines = md.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("| metric"))
    rows = []   # the 1-thread table: header, separator, one row per metric measured
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break
        rows.append(ln)
    assert all(ln.count("|") == rows[0].count("|") for ln in rows)
    # quick mode runs no context sweep: its rows are left out, every other metric is there
    assert len(rows) == 2 + sum(1 for m in metrics.METRICS if "_ctx" not in m)
