"""`python -m smolchat_web ask/eval` (what `./build.sh ask --runtime browser` and
`./build.sh eval` run) on the real bundle, and greedy parity with the CPython runtime
(`python -m smolchat ask --json`): same bundle, same runtime form.

Parity is exact on the `exact` bundle (fp32 graph): ORT Web's WASM kernels and native MLAS
differ only in float rounding, which never flipped a greedy token there. On `compact` the
graph re-quantizes every activation to int8 per token, so those last-bit differences can move
a value across a rounding boundary, and greedy paths part: measured 2026-11-22 on the France
prompt's prefill, layer outputs agree to 1e-6 through layer 4, where one rounding flips on
an `<|im_start|>` position (their activations are ~50x the others', so one int8 step is
large); the difference grows to ~7% of the final hidden state and the first greedy token
differs (native "The capital of France is Paris.", ORT Web "L'Étoil de l'Amérique...": the
reference itself nearly answers that prompt in French, see ANSWERS).
So on compact the test holds prompt ids equal and both answers right (Paris), and records
the agreement; token identity is asserted on `exact`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    str(ROOT / p) for p in ("build", "py_runtime", "web", "bench"))}
PROMPTS = [
    "Name the capital of France.",  # see ANSWERS
    "Give me three tips for staying healthy.",
    "Write a haiku about the sea.",
]
MAX_TOKENS = 32
PY_KEYS = {"reply", "finish_reason", "mode", "prompt_token_ids", "output_token_ids", "ttft_ms",
           "prefill_ms", "decode_tok_s", "total_ms", "seed", "bundle_id", "runtime"}
BROWSER_EXTRA = {"load_ms", "peak_memory_mb", "threads", "cross_origin_isolated"}


def run(args, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def python_ask(bundle: Path, message: str) -> dict:
    r = run(["-m", "smolchat", "ask", message, "--json", "--bundle", str(bundle),
             "--temperature", "0", "--max-tokens", str(MAX_TOKENS)])
    return json.loads(r.stdout.strip().splitlines()[-1])


def browser_eval_rows(cases: list[dict], bundle: Path, out_dir: Path) -> tuple[dict, list[dict]]:
    """`eval --runtime browser` on cases -> (its run, one row per turn: id, turn + the turn)."""
    src, out = out_dir / "in.jsonl", out_dir / "report.json"
    src.write_text("".join(json.dumps(c) + "\n" for c in cases))
    run(["-m", "smolchat_web", "eval", str(src), "--runtime", "browser", "--out", str(out),
         "--bundle", str(bundle)])
    report = json.loads(out.read_text())
    run_ = report["runs"][0]
    rows = [{"id": c["id"], "turn": i, **t} for c in run_["cases"] for i, t in enumerate(c["turns"])]
    return run_, rows


@pytest.fixture(scope="module")
def browser_eval(bundle_dir, tmp_path_factory, artifacts):
    lines = [{"id": f"p{i}", "turns": [p], "settings": {"temperature": 0, "max_tokens": MAX_TOKENS}}
             for i, p in enumerate(PROMPTS)]
    lines.append({"id": "two-turns", "system": "You are a terse assistant.", "mode": "chat",
                  "turns": ["My name is Alice.", "What is my name?"],
                  "settings": {"temperature": 0, "max_tokens": 24}})
    run_, rows = browser_eval_rows(lines, bundle_dir, tmp_path_factory.mktemp("eval"))
    (artifacts / "eval-out.json").write_text(json.dumps(run_, indent=1))
    return run_, rows


def test_eval_reports_every_turn(browser_eval):
    run_, rows = browser_eval
    assert run_["runtime"] == "browser" and run_["page"]["threads"] == 2
    assert run_["page"]["cross_origin_isolated"] is True and run_["page"]["load_ms"] > 0
    assert [(r["id"], r["turn"]) for r in rows] == [
        ("p0", 0), ("p1", 0), ("p2", 0), ("two-turns", 0), ("two-turns", 1)]
    for r in rows:
        assert "error" not in r, r
        assert {"reply", "finish_reason", "prompt_token_ids", "output_token_ids", "seed",
                "time_ms"} <= set(r)
    a, b = rows[3], rows[4]
    assert b["prompt_token_ids"][:len(a["prompt_token_ids"])] == a["prompt_token_ids"]


# "Name the capital of France." rather than "What is the capital of France?": on the latter
# the fp32 reference itself hesitates between English and French (first-token logits
# "The" 25.33 vs "L" 25.24), so int8 rounding in either runtime may tip it into French.
ANSWERS = {"Name the capital of France.": "Paris"}  # compact: what both replies must say


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_compact_browser_and_python_agree_on_prompt_and_answer(browser_eval, bundle_dir,
                                                                artifacts):
    agreement = {}
    for prompt, row in zip(PROMPTS, browser_eval[1]):
        py = python_ask(bundle_dir, prompt)
        assert set(py) >= PY_KEYS
        assert row["prompt_token_ids"] == py["prompt_token_ids"], prompt
        n = _common_prefix(row["output_token_ids"], py["output_token_ids"])
        agreement[prompt] = {"common_prefix": n, "browser": row["reply"], "python": py["reply"]}
        assert row["output_token_ids"] and py["output_token_ids"], (prompt, agreement)
        if prompt in ANSWERS:
            assert ANSWERS[prompt] in row["reply"] and ANSWERS[prompt] in py["reply"], agreement
    (artifacts / "compact-parity.json").write_text(json.dumps(agreement, indent=2))


def test_exact_greedy_token_ids_match_the_python_runtime(tmp_path):
    exact = ROOT / "models" / "smollm2-135m-instruct-exact"
    if not (exact / "manifest.json").is_file():
        pytest.fail(f"{exact}/ is missing: build it with ./build.sh bundle --preset exact",
                    pytrace=False)
    _, rows = browser_eval_rows([{"id": f"p{i}", "turns": [p], "settings": {
        "temperature": 0, "max_tokens": MAX_TOKENS}} for i, p in enumerate(PROMPTS)], exact, tmp_path)
    assert len(rows) == len(PROMPTS)
    for prompt, row in zip(PROMPTS, rows):
        assert "error" not in row, row
        py = python_ask(exact, prompt)
        assert row["prompt_token_ids"] == py["prompt_token_ids"], prompt
        assert row["output_token_ids"] == py["output_token_ids"], prompt
        assert row["reply"] == py["reply"]


def test_ask_cli_prints_the_python_json_plus_browser_facts(bundle_dir, artifacts):
    r = run(["-m", "smolchat_web", "ask", "Name the capital of France.", "--runtime", "browser",
             "--json", "--temperature", "0", "--max-tokens", "40", "--bundle", str(bundle_dir)])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    (artifacts / "ask-browser.json").write_text(json.dumps(out, indent=2))
    assert set(out) == PY_KEYS | BROWSER_EXTRA
    assert "Paris" in out["reply"]
    assert out["threads"] == 2 and out["cross_origin_isolated"] is True
    assert out["load_ms"] > 0 and out["peak_memory_mb"] > 0
