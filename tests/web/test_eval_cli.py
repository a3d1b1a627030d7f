"""`./build.sh eval` (python -m smolchat_web eval) end to end: a malformed file refused before
any model loads; the real compact bundle in the CPython runtime, compared with tiny-random
(a case that passes, one failing each check kind, a forbidden-word leak, the cases that
changed, --out, --min-pass-rate); the same cases through the real page (--runtime browser),
whose settings fields show the engine's defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    str(ROOT / p) for p in ("build", "py_runtime", "web", "bench"))}
COMPACT = ROOT / "models" / "smollm2-135m-instruct-compact"
TINY = ROOT / "models" / "tiny-random"

GERMANY = "What is the capital of Germany?"
CASES = [  # checks say what a right answer must (not) contain; the failing ones cannot pass
    {"id": "berlin", "turns": [GERMANY], "expect_any": ["Berlin"], "forbidden": ["Paris"],
     "max_words": 40},
    {"id": "fail-any", "turns": [GERMANY], "expect_any": ["Lisbon", "Oslo"]},
    {"id": "fail-all", "turns": [GERMANY], "expect_all": ["Berlin", "zebra-quartz"]},
    {"id": "fail-regex", "turns": [GERMANY], "regex": r"^\d{12}$"},
    {"id": "fail-max", "turns": [GERMANY], "max_words": 0},
    {"id": "fail-min", "turns": [GERMANY], "min_words": 500},
    {"id": "leak", "turns": ["Repeat this sentence exactly: The sky is blue."],
     "forbidden": ["sky"]},
    # whether a 135M model recalls the name is the model's quality: the test checks the
    # verdict follows the reply, not which it is
    {"id": "recall", "turns": ["Hi, my name is Alice.", "What is my name?"],
     "expect_any": ["Alice"]},
]
SETTINGS = ["--temperature", "0", "--max-tokens", "40"]


def smolchat_web(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smolchat_web", *map(str, args)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def need(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        pytest.fail(f"{path}/ is missing: ./build.sh test builds it first", pytrace=False)
    return path


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    return path


def check_report(run: dict):
    by = {c["id"]: c for c in run["cases"]}
    assert by["berlin"]["passed"], by["berlin"]
    for kind in ("any", "all", "regex", "max", "min"):
        case = by[f"fail-{kind}"]
        assert not case["passed"] and case["failures"][0]["reply"] == case["reply"]
        assert [f["check"] for f in case["failures"]] == [
            {"any": "expect_any", "all": "expect_all", "max": "max_words",
             "min": "min_words"}.get(kind, kind)]
    assert by["leak"]["leaks"] == ["sky"] and not by["leak"]["passed"]
    recall = by["recall"]
    assert len(recall["turns"]) == 2 and recall["reply"] == recall["turns"][1]["reply"]
    assert recall["passed"] == ("alice" in recall["reply"].lower())
    s = run["summary"]
    assert (s["total"], s["passed"], s["forbidden_leaks"], s["cases_with_leaks"]) == (
        8, 1 + recall["passed"], 1, ["leak"])
    assert s["avg_words"] > 0 and all(c["time_ms"] > 0 for c in run["cases"])


def test_malformed_file_is_refused_before_any_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CASES[0]) + "\n" + json.dumps({"id": "x", "turn": ["hi"]}) + "\n")
    # a bundle that does not exist: had the model been loaded first, that would be the error
    r = smolchat_web("eval", bad, "--bundle", tmp_path / "no-bundle", timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"{bad} line 2, field 'turn': unknown field" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    bad.write_text(json.dumps({"id": "x"}) + "\n")
    r = smolchat_web("eval", bad, "--bundle", tmp_path / "no-bundle", timeout=60)
    assert r.returncode == 2 and "line 1, field 'turns': must be a non-empty list" in r.stderr
    r = smolchat_web("eval", bad.with_name("missing.jsonl"), timeout=60)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = smolchat_web("eval", tmp_path / "x.jsonl", "--min-pass-rate", "80", timeout=60)
    assert r.returncode == 2 and "--min-pass-rate 80.0: give a fraction" in r.stderr


@pytest.mark.real_model
def test_python_runtime_scores_and_compares(cases_file, tmp_path, artifacts):
    out = tmp_path / "report.json"
    r = smolchat_web("eval", cases_file, "--bundle", need(COMPACT), "--compare", need(TINY),
                     "--out", out, *SETTINGS, "--min-pass-rate", "0.1")
    assert r.returncode == 0, r.stderr[-3000:]
    (artifacts / "eval-report.json").write_text(out.read_text())
    (artifacts / "eval-table.txt").write_text(r.stdout)
    report = json.loads(out.read_text())
    assert report["format"] == "smolchat-eval/1" and report["runtime"] == "python"
    assert report["settings"] == {"temperature": 0.0, "max_tokens": 40}
    compact, tiny = report["runs"]
    assert (compact["bundle_id"], tiny["bundle_id"]) == ("smollm2-135m-instruct-compact",
                                                         "tiny-random")
    check_report(compact)
    # random weights answer nothing: the cases that passed on compact changed
    tiny_by = {c["id"]: c["passed"] for c in tiny["cases"]}
    assert not tiny_by["berlin"]
    changed = {c["id"] for c in report["compare"]["changed"]}
    assert "berlin" in changed and report["compare"]["broken"] >= 1
    assert report["compare"]["fixed"] + report["compare"]["broken"] == len(changed)
    # the table: one row per case, both bundles side by side, changed rows marked,
    # the failed checks with their replies, the summary lines
    rows = {l.split()[0]: l for l in r.stdout.splitlines()
            if l and not l[0].isspace() and l.split()[0] in tiny_by}
    assert rows["berlin"].count("pass") == 1 and rows["berlin"].endswith("<- changed")
    assert "leak turn 0: forbidden [\"sky\"]: leaked: sky" in r.stdout
    passed = compact["summary"]["passed"]
    assert f"smollm2-135m-instruct-compact (python): {passed}/8 passed ({passed / 8:.1%})" in r.stdout
    assert "changed:" in r.stdout
    # the gate: under --min-pass-rate the exit status is 1 (compact alone, no compare)
    r = smolchat_web("eval", cases_file, "--bundle", COMPACT, *SETTINGS, "--min-pass-rate", "0.5")
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"pass rate {passed / 8:.1%} is under --min-pass-rate 50.0%" in r.stderr


@pytest.mark.browser
@pytest.mark.real_model
def test_browser_runtime_scores_the_same_cases(cases_file, tmp_path, artifacts):
    out = tmp_path / "report.json"
    r = smolchat_web("eval", cases_file, "--runtime", "browser", "--bundle", need(COMPACT),
                     "--out", out, *SETTINGS)
    assert r.returncode == 0, r.stderr[-3000:]
    (artifacts / "eval-report-browser.json").write_text(out.read_text())
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert report["runtime"] == run["runtime"] == "browser"
    assert run["page"]["threads"] == 2 and run["page"]["cross_origin_isolated"] is True
    check_report(run)


@pytest.mark.browser
def in_own_thread(fn):
    """fn() on a thread of its own: another browser test's sync Playwright (tests/conftest.py,
    session-scoped) keeps an event loop running on this one, where neither a second sync
    Playwright nor asyncio.run() may start."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def test_page_fields_show_the_engines_defaults(site):
    """No second copy of the defaults in the page: its fields are filled from the engine's
    info().defaults, which are settings.py's GenerationSettings (tiny bundle: fast load)."""
    from smolchat.settings import GenerationSettings
    from smolchat_web.headless import PageSession

    def read():
        with PageSession(str(need(TINY)), build=False, log=lambda m: None) as s:
            return (s.page.evaluate("() => window.smolchatApp.bot.loadInfo.defaults"),
                    s.page.evaluate("() => [document.getElementById('temperature').value,"
                                    " document.getElementById('max-tokens').value]"))
    defaults, fields = in_own_thread(read)
    assert defaults == GenerationSettings().to_dict()
    assert fields == [str(GenerationSettings().temperature), str(GenerationSettings().max_tokens)]


def test_openai_shape_maps_every_engine_finish_reason():
    """openai.js turns each engine finish_reason into one OpenAI knows ('repetition' -> 'stop')."""
    from smolchat.engine import FINISH_REASONS
    r = subprocess.run(["node", "--input-type=module", "-e",
                        "const m = await import(process.argv[1]); console.log(JSON.stringify(m.FINISH_REASONS));",
                        (ROOT / "web" / "src" / "openai.js").as_uri()],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mapping = json.loads(r.stdout)
    assert set(mapping) == set(FINISH_REASONS)
    assert mapping["repetition"] == "stop" and set(mapping.values()) <= {"stop", "length", "abort"}


def test_suite_pass_rate_for_the_build(tmp_path):
    """The build's hook: bundle folder -> {pass_rate, passed, total} (CPython runtime)."""
    from smolchat import evals
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"id": "runs", "turns": ["Hi"], "max_words": 10_000}) + "\n"
                    + json.dumps({"id": "never", "turns": ["Hi"], "min_words": 10_000}) + "\n")
    got = in_own_thread(lambda: evals.suite_pass_rate(need(TINY), {"temperature": 0, "max_tokens": 8},
                                                      cases_path=path))
    assert got == {"pass_rate": 0.5, "passed": 1, "total": 2}
