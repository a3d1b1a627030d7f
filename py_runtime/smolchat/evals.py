"""Evals that score: the case format, checks on a reply, pass rates, comparisons, the table.

A case file is JSON Lines, one case per line (blank lines and lines starting with `#` are
skipped):

    {"id": "capital-france", "turns": ["What is the capital of France?"], "expect_any": ["Paris"]}
    {"id": "recall", "system": "You are terse.", "turns": ["My name is Ana.", "What is my name?"],
     "expect_all": ["Ana"], "max_words": 20, "settings": {"max_tokens": 48}, "tags": ["recall"]}

Fields (anything else is refused, so a typo such as `expect` is never silently ignored):
  id         string, unique in the file (required)
  turns      non-empty list; each a user message (string) or {"user": str, <checks>} whose
             checks apply to that turn's reply (required)
  system     system prompt (default: the model's own)
  mode       chat (default) | instruct | generate
  settings   generation settings for this case (engine names and ranges: max_tokens,
             temperature, top_k, top_p, repetition_penalty, seed, stop)
  tags       list of strings: the report gives a pass rate per tag
  note       free text for humans
  checks (on the last turn's reply, or on a turn's reply inside its object):
  expect_any list of strings: at least one occurs      } case-insensitive substring match
  expect_all list of strings: every one occurs         } (str.casefold on both sides)
  forbidden  list of strings: none occurs (each occurrence is a leak)
  regex      a Python regular expression, or a list of them: each must match somewhere
             (re.search, case-sensitive unless the pattern says `(?i)`)
  max_words, min_words   integer bounds on the reply's words (whitespace-separated)

A case passes when every check of every turn passes and no turn raised an error. A case
without checks passes when its turns run. Words: `len(text.split())`.

Settings for a run: the engine's defaults, then the run's settings (the CLI flags), then the
case's `settings`; the seed is 0 unless one of them sets it, so a sampled run is repeatable.

`parse_cases` validates the whole file before anything loads and raises `CaseFileError`
naming the line and the field. `check_reply`, `score_case`, `summarize`, `compare` and
`table` are pure functions over plain dicts; `run_cases(engine, cases)` drives a ChatEngine
(any backend: the CPython runtime, the fake model, Pyodide); `run_bundle` / `suite_pass_rate`
load a bundle with the CPython backend (numpy + onnxruntime, imported only there).

What this module ignores: the browser runtime (smolchat_web.headless produces the same turn
dicts from the real page) and the command line (smolchat_web.evaluate).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInput, InvalidSetting, SmolChatError
from .settings import GenerationSettings, resolve

FORMAT = "smolchat-eval/1"
MODES = ("chat", "instruct", "generate")
CHECKS = ("expect_any", "expect_all", "forbidden", "regex", "max_words", "min_words")
CASE_FIELDS = ("id", "turns", "system", "mode", "settings", "tags", "note") + CHECKS
TURN_FIELDS = ("user",) + CHECKS
#: The task suite of the fidelity issue (#15): tests/data/tasks.jsonl in the source tree.
TASKS = Path(__file__).resolve().parents[2] / "tests" / "data" / "tasks.jsonl"
#: Looping tail, an independent test of the repetition stop (repetition.py): among the last
#: LOOP_WORDS words of a reply, fewer than LOOP_DISTINCT of the word trigrams are distinct.
LOOP_WORDS, LOOP_DISTINCT = 40, 0.5


class CaseFileError(InvalidInput):
    """A malformed case file: `line` (1-based) and `field` say where, the message what to do."""

    def __init__(self, path: str, line: int, field: str | None, problem: str):
        where = f"{path} line {line}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}", path=path, line=line, field=field)
        self.line, self.field = line, field


@dataclass(frozen=True)
class Turn:
    user: str
    checks: dict = field(default_factory=dict)     # check name -> value, as validated


@dataclass(frozen=True)
class Case:
    id: str
    turns: tuple[Turn, ...]
    line: int
    system: str | None = None
    mode: str = "chat"
    settings: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def n_checks(self) -> int:
        return sum(len(t.checks) for t in self.turns)


# ---------------------------------------------------------------------------------- parsing

def _strings(value, allow_one: bool) -> list[str] | None:
    if allow_one and isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(s, str) and s for s in value):
        return list(value)
    return None


def _checks(obj: dict, err) -> dict:
    """The checks present in `obj`, validated (err(field, problem) raises)."""
    out = {}
    for name in ("expect_any", "expect_all", "forbidden"):
        if name in obj:
            v = _strings(obj[name], allow_one=True)
            if v is None:
                err(name, "must be a non-empty string or a non-empty list of non-empty strings")
            out[name] = v
    if "regex" in obj:
        v = _strings(obj["regex"], allow_one=True)
        if v is None:
            err("regex", "must be a pattern or a non-empty list of patterns")
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                err("regex", f"{pattern!r} is not a valid Python regular expression ({e})")
        out["regex"] = v
    for name in ("max_words", "min_words"):
        if name in obj:
            v = obj[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                err(name, f"must be a non-negative integer, got {v!r}")
            out[name] = v
    if out.get("min_words", 0) > out.get("max_words", float("inf")):
        err("min_words", f"{out['min_words']} is above max_words {out['max_words']}")
    return out


def parse_case(obj, line: int, path: str = "<cases>") -> Case:
    def err(field, problem):
        raise CaseFileError(path, line, field, problem)

    if not isinstance(obj, dict):
        err(None, f"each line must be a JSON object (a case), got {type(obj).__name__}")
    unknown = [k for k in obj if k not in CASE_FIELDS]
    if unknown:
        err(unknown[0], "unknown field: allowed " + ", ".join(CASE_FIELDS))
    cid = obj.get("id")
    if not isinstance(cid, str) or not cid.strip():
        err("id", "every case needs an id (a non-empty string)")
    raw = obj.get("turns")
    if not isinstance(raw, list) or not raw:
        err("turns", "must be a non-empty list of user messages (strings or {\"user\": ...})")
    turns = []
    for i, t in enumerate(raw):
        if isinstance(t, str):
            t = {"user": t}
        if not isinstance(t, dict):
            err(f"turns[{i}]", "must be a string or an object {\"user\": str, <checks>}")
        bad = [k for k in t if k not in TURN_FIELDS]
        if bad:
            err(f"turns[{i}].{bad[0]}", "unknown field: allowed " + ", ".join(TURN_FIELDS))
        if not isinstance(t.get("user"), str) or not t["user"].strip():
            err(f"turns[{i}].user", "must be a non-empty string")
        turns.append(Turn(t["user"], _checks(t, lambda f, p, i=i: err(f"turns[{i}].{f}", p))))
    last = _checks(obj, err)
    if last:
        turns[-1] = Turn(turns[-1].user, {**turns[-1].checks, **last})
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        err("system", "must be a string (or absent for the model's own)")
    mode = obj.get("mode", "chat")
    if mode not in MODES:
        err("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "chat" and len(turns) > 1:
        err("turns", f"mode {mode} has no history: give one turn, or use mode chat")
    if mode == "generate" and system is not None:
        err("system", "mode generate uses no chat template, so no system prompt")
    settings = obj.get("settings", {})
    if not isinstance(settings, dict):
        err("settings", "must be an object of generation settings")
    try:
        resolve(GenerationSettings(), settings)
    except InvalidSetting as e:
        err(f"settings.{e.details.get('field')}", str(e))
    tags = obj.get("tags", [])
    if tags != [] and _strings(tags, allow_one=False) is None:
        err("tags", "must be a list of non-empty strings")
    if "note" in obj and not isinstance(obj["note"], str):
        err("note", "must be a string")
    return Case(cid, tuple(turns), line, system, mode, dict(settings), tuple(tags))


def parse_cases(text: str, path: str = "<cases>") -> list[Case]:
    """Every case of a JSONL text, validated; CaseFileError on the first bad line."""
    cases, seen = [], {}
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            raise CaseFileError(path, n, None, f"not valid JSON ({e.msg} at column {e.colno})")
        case = parse_case(obj, n, path)
        if case.id in seen:
            raise CaseFileError(path, n, "id", f"{case.id!r} is already the id of line {seen[case.id]}")
        seen[case.id] = n
        cases.append(case)
    if not cases:
        raise CaseFileError(path, 1, None, "no cases: one JSON object per line")
    return cases


def load_cases(path) -> list[Case]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"case file {p} not found", path=str(p)) from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"case file {p} is not UTF-8 text ({e.reason} at byte {e.start})",
                           path=str(p)) from None
    return parse_cases(text, str(p))


# ---------------------------------------------------------------------------------- checks

def words(text: str) -> int:
    return len(text.split())


def leaks(text: str, forbidden) -> list[str]:
    low = text.casefold()
    return [w for w in forbidden if w.casefold() in low]


def check_reply(text: str, checks: dict) -> list[dict]:
    """The failed checks of one reply: [{check, expected, detail}] (empty: all pass)."""
    low, fails = text.casefold(), []

    def fail(check, expected, detail):
        fails.append({"check": check, "expected": expected, "detail": detail})

    if "expect_any" in checks and not any(s.casefold() in low for s in checks["expect_any"]):
        fail("expect_any", checks["expect_any"], "none of them occurs")
    if "expect_all" in checks:
        missing = [s for s in checks["expect_all"] if s.casefold() not in low]
        if missing:
            fail("expect_all", checks["expect_all"], "missing: " + ", ".join(missing))
    if "forbidden" in checks:
        found = leaks(text, checks["forbidden"])
        if found:
            fail("forbidden", checks["forbidden"], "leaked: " + ", ".join(found))
    for pattern in checks.get("regex", ()):
        if not re.search(pattern, text):
            fail("regex", pattern, "no match")
    n = words(text)
    if "max_words" in checks and n > checks["max_words"]:
        fail("max_words", checks["max_words"], f"{n} words")
    if "min_words" in checks and n < checks["min_words"]:
        fail("min_words", checks["min_words"], f"{n} words")
    return fails


def looping(text: str) -> bool:
    """True when the reply's tail repeats itself (few distinct word trigrams among the last
    LOOP_WORDS words). Independent of the token-level stop in repetition.py: the report uses
    it to count replies that ran to the limit by repeating."""
    w = text.split()[-LOOP_WORDS:]
    if len(w) < LOOP_WORDS:
        return False
    grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    return len(set(grams)) < LOOP_DISTINCT * len(grams)


def score_case(case: Case, turns: list[dict]) -> dict:
    """One case's result from its turn results. Each turn dict has `reply` (text) and
    `finish_reason`, or `error` ({kind, message}); other keys (ids, timings) are kept."""
    failures, leaked = [], []
    for i, (turn, r) in enumerate(zip(case.turns, turns)):
        if "error" in r:
            failures.append({"turn": i, "check": "error", "expected": None,
                             "detail": f"{r['error'].get('kind')}: {r['error'].get('message')}",
                             "reply": None})
            break
        for f in check_reply(r["reply"], turn.checks):
            failures.append({"turn": i, **f, "reply": r["reply"]})
        leaked += leaks(r["reply"], turn.checks.get("forbidden", ()))
    if len(turns) < len(case.turns) and not any(f["check"] == "error" for f in failures):
        failures.append({"turn": len(turns), "check": "error", "expected": None,
                         "detail": "the turn did not run", "reply": None})
    last = turns[-1] if turns else {}
    reply = last.get("reply")
    return {"id": case.id, "passed": not failures, "tags": list(case.tags),
            "checks": case.n_checks, "failures": failures, "leaks": leaked,
            "reply": reply, "words": words(reply) if reply is not None else None,
            "finish_reason": last.get("finish_reason"),
            "looping": bool(reply) and last.get("finish_reason") == "length" and looping(reply),
            "time_ms": round(sum(t.get("time_ms", 0.0) for t in turns), 1), "turns": turns}


def summarize(results: list[dict]) -> dict:
    """Pass rate, average words, leaks, finish reasons, time, per-tag pass rates."""
    total = len(results)
    passed = sum(r["passed"] for r in results)
    replied = [r["words"] for r in results if r["words"] is not None]
    finish: dict[str, int] = {}
    for r in results:
        for t in r["turns"]:
            key = t.get("finish_reason") or "error"
            finish[key] = finish.get(key, 0) + 1
    tags: dict[str, list[int]] = {}
    for r in results:
        for tag in r["tags"]:
            tags.setdefault(tag, [0, 0])
            tags[tag][0] += r["passed"]
            tags[tag][1] += 1
    time_ms = sum(r["time_ms"] for r in results)
    return {
        "total": total, "passed": passed, "failed": total - passed,
        "pass_rate": round(passed / total, 4) if total else 0.0,
        "avg_words": round(sum(replied) / len(replied), 1) if replied else 0.0,
        "forbidden_leaks": sum(len(r["leaks"]) for r in results),
        "cases_with_leaks": [r["id"] for r in results if r["leaks"]],
        "errors": sum(any(f["check"] == "error" for f in r["failures"]) for r in results),
        "finish_reasons": dict(sorted(finish.items())),
        "length_looping": [r["id"] for r in results if r["looping"]],
        "time_s": round(time_ms / 1000, 2),
        "avg_case_ms": round(time_ms / total, 1) if total else 0.0,
        "tags": {t: {"passed": p, "total": n, "pass_rate": round(p / n, 4)}
                 for t, (p, n) in sorted(tags.items())},
    }


def compare(a: list[dict], b: list[dict]) -> dict:
    """Case by case, run a against run b (same cases): the ones whose verdict changed."""
    bb = {r["id"]: r for r in b}
    changed = [{"id": r["id"], "a": r["passed"], "b": bb[r["id"]]["passed"]}
               for r in a if r["id"] in bb and r["passed"] != bb[r["id"]]["passed"]]
    return {"changed": changed,
            "fixed": sum(1 for c in changed if c["b"] and not c["a"]),
            "broken": sum(1 for c in changed if c["a"] and not c["b"])}


# ---------------------------------------------------------------------------------- table

def _short(text, n: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[:n - 1] + "…"


def _cell(r: dict) -> str:
    mark = "pass" if r["passed"] else "FAIL"
    return f"{mark} {r['words'] if r['words'] is not None else '-':>4}w {r['time_ms'] / 1000:6.1f}s"


def table(report: dict, width: int = 100) -> str:
    """The report as text: one row per case (side by side under --compare), the failed
    checks with their replies, then the summary lines."""
    runs = report["runs"]
    ids = [r["id"] for r in runs[0]["cases"]]
    by = [{r["id"]: r for r in run["cases"]} for run in runs]
    idw = min(max([4] + [len(i) for i in ids]), 32)
    cw = min(max([22] + [len(str(run["bundle_id"])) for run in runs]), 40)
    head = f"{'case':<{idw}}  " + "  ".join(f"{_short(run['bundle_id'], cw):<{cw}}" for run in runs)
    lines = [head, "-" * len(head)]
    changed = {c["id"] for c in report.get("compare", {}).get("changed", ())}
    for i in ids:
        row = f"{_short(i, idw):<{idw}}  " + "  ".join(f"{_cell(b[i]):<{cw}}" for b in by)
        lines.append(row + ("  <- changed" if i in changed else ""))
    for run, b in zip(runs, by):
        failed = [b[i] for i in ids if not b[i]["passed"]]
        if failed:
            lines += ["", f"failed checks, {run['bundle_id']}:"]
        for r in failed:
            for f in r["failures"]:
                exp = "" if f["expected"] is None else f" {_short(json.dumps(f['expected'], ensure_ascii=False), 40)}"
                lines.append(f"  {r['id']} turn {f['turn']}: {f['check']}{exp}: {f['detail']}")
                if f["reply"] is not None:
                    lines.append(f"      reply: {_short(f['reply'], width - 13)!r}")
    lines.append("")
    for run in runs:
        s = run["summary"]
        lines.append(
            f"{run['bundle_id']} ({run['runtime']}): {s['passed']}/{s['total']} passed "
            f"({s['pass_rate']:.1%}), avg {s['avg_words']} words, {s['forbidden_leaks']} "
            f"forbidden-word leaks, {s['errors']} errors, finish {s['finish_reasons']}, "
            f"{len(s['length_looping'])} ran to the limit looping, {s['time_s']} s "
            f"({s['avg_case_ms'] / 1000:.1f} s a case)")
    if "compare" in report:
        c = report["compare"]
        a, b = runs[0]["bundle_id"], runs[1]["bundle_id"]
        lines.append(f"changed: {len(c['changed'])} cases ({c['fixed']} pass only in {b}, "
                     f"{c['broken']} pass only in {a})"
                     + "".join(f"\n  {x['id']}: {a} {'pass' if x['a'] else 'FAIL'}, "
                               f"{b} {'pass' if x['b'] else 'FAIL'}" for x in c["changed"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- running

#: Seed of every reply unless the run or the case sets one: sampled runs are reproducible.
DEFAULT_SEED = 0


def case_settings(case: Case, run_settings: dict | None) -> dict:
    """The engine's defaults are under these: run settings (CLI flags), then the case's."""
    return {"seed": DEFAULT_SEED, **(run_settings or {}), **case.settings}


async def run_case(engine, case: Case, run_settings: dict | None = None) -> list[dict]:
    """The case's turns on a ChatEngine, from a fresh conversation. -> turn dicts (stops at
    the first error, which is recorded as {"error": {...}})."""
    settings = case_settings(case, run_settings)
    engine.set_system_prompt(case.system)            # also clears the conversation
    out = []
    for turn in case.turns:
        t0 = time.perf_counter()
        try:
            reply = await getattr(engine, case.mode)(turn.user, **settings).result()
        except SmolChatError as e:
            out.append({"user": turn.user, "error": {"kind": e.kind, "message": str(e)},
                        "time_ms": round((time.perf_counter() - t0) * 1000, 1)})
            break
        d = reply.to_dict()
        out.append({"user": turn.user, "reply": d["text"], "finish_reason": d["finish_reason"],
                    "completion_tokens": d["completion_tokens"], "seed": d["seed"],
                    "prompt_token_ids": d["prompt_token_ids"],
                    "output_token_ids": d["output_token_ids"],
                    "time_ms": round((time.perf_counter() - t0) * 1000, 1)})
    return out


async def run_cases(engine, cases: list[Case], run_settings: dict | None = None,
                    progress=None) -> list[dict]:
    """Score every case on one engine. progress(i, total, result) after each case."""
    results = []
    for i, case in enumerate(cases):
        r = score_case(case, await run_case(engine, case, run_settings))
        results.append(r)
        if progress:
            progress(i + 1, len(cases), r)
    return results


def make_run(bundle_id: str, runtime: str, settings: dict, results: list[dict]) -> dict:
    return {"bundle_id": bundle_id, "runtime": runtime, "settings": dict(settings),
            "summary": summarize(results), "cases": results}


def run_bundle(bundle_dir, cases: list[Case], settings: dict | None = None, threads: int = 2,
               progress=None) -> dict:
    """A run of `cases` on a bundle with the CPython runtime (OnnxBackend)."""
    import asyncio

    from .backend_onnx import OnnxBackend
    from .engine import ChatEngine

    async def go():
        backend = OnnxBackend.load(bundle_dir, threads=threads)
        try:
            engine = ChatEngine(backend)
            results = await run_cases(engine, cases, settings, progress)
            return make_run(backend.info()["bundle_id"], "python", settings or {}, results)
        finally:
            await backend.close()
    return asyncio.run(go())


def suite_pass_rate(bundle_dir, settings: dict | None = None, cases_path=TASKS,
                    threads: int = 2) -> dict:
    """Task-suite score of a bundle (CPython runtime): {pass_rate, passed, total}. For the
    build's manifest `quality`; settings={"temperature": 0} scores greedy decoding."""
    s = run_bundle(bundle_dir, load_cases(cases_path), settings, threads)["summary"]
    return {"pass_rate": s["pass_rate"], "passed": s["passed"], "total": s["total"]}
