"""`./build.sh eval CASES.jsonl`: score a case file on a bundle, or on two side by side.

    eval CASES.jsonl [--bundle B] [--compare B2] [--runtime python|browser] [--out report.json]
         [--min-pass-rate X] [--temperature T] [--max-tokens N] [--seed N] ...

The case file is validated first (smolchat.evals.load_cases): a malformed line is refused
with its line number and field before any model loads. Each bundle then runs every case in
the chosen runtime: `python` (default) is the CPython engine on onnxruntime (the same
runtime form as the browser, ~3x faster here), `browser` the real page in headless Chromium
(smolchat_web.headless). The report (JSON: `format`, `cases_file`, `runtime`, `settings`,
`runs` [one per bundle: bundle_id, summary, cases], `compare`) goes to --out; the table to
stdout. Exit status: 0, or 1 when the first bundle's pass rate is under --min-pass-rate, or
2 for a bad case file, bundle or setting.

What this module ignores: what a check means (smolchat.evals) and how the page is driven
(smolchat_web.headless).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .site import MODELS


def bundle_dir(name: str) -> Path:
    """compact / exact / a bundle id under models/ / a folder -> the bundle folder, or
    InvalidSetting / BundleMissing (smolchat/bundle_id.py)."""
    from smolchat.bundle_id import resolve
    return resolve(str(name), MODELS)


def main(a, log) -> int:
    from smolchat import evals
    from smolchat.errors import SmolChatError
    from smolchat.settings import GenerationSettings, resolve

    settings = {k: v for k, v in {
        "max_tokens": a.max_tokens, "temperature": a.temperature, "top_k": a.top_k,
        "top_p": a.top_p, "repetition_penalty": a.repetition_penalty, "seed": a.seed,
    }.items() if v is not None}
    if a.no_repetition_stop:
        settings["repetition_stop"] = False
    try:
        if a.min_pass_rate is not None and not 0 <= a.min_pass_rate <= 1:
            raise SmolChatError(f"--min-pass-rate {a.min_pass_rate}: give a fraction in [0, 1], "
                                "e.g. 0.8")
        resolve(GenerationSettings(), settings)
        cases = evals.load_cases(a.file)
        bundles = [a.bundle] + ([a.compare] if a.compare else [])
        for b in bundles:
            bundle_dir(b)
    except SmolChatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(f"eval: {len(cases)} cases from {a.file}, runtime {a.runtime}, settings {settings or 'defaults'}")

    def progress(i, n, r):
        log(f"  [{i}/{n}] {r['id']}: {'pass' if r['passed'] else 'FAIL'} "
            f"({r['time_ms'] / 1000:.1f} s)")

    runs = []
    for b in bundles:
        if a.runtime == "browser":
            from . import headless
            try:
                run = headless.run_cases(cases, bundle=str(bundle_dir(b)), settings=settings,
                                         threads=a.threads, log=log, progress=progress)
            except headless.PageError as e:
                print(json.dumps({"error": e.error}), file=sys.stderr)
                return 2
        else:
            try:
                run = evals.run_bundle(bundle_dir(b), cases, settings,
                                       threads=a.threads or 2, progress=progress)
            except SmolChatError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        run["bundle"] = str(b)
        runs.append(run)
    report = {"format": evals.FORMAT, "cases_file": str(a.file), "runtime": a.runtime,
              "settings": settings, "runs": runs}
    if len(runs) == 2:
        report["compare"] = evals.compare(runs[0]["cases"], runs[1]["cases"])
    if a.out:
        Path(a.out).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n",
                               encoding="utf-8")
        log(f"eval: report written to {a.out}")
    print(evals.table(report), flush=True)
    rate = runs[0]["summary"]["pass_rate"]
    if a.min_pass_rate is not None and rate < a.min_pass_rate:
        log(f"eval: pass rate {rate:.1%} is under --min-pass-rate {a.min_pass_rate:.1%}")
        return 1
    return 0


def add_setting_flags(s) -> None:
    """The generation settings every command takes (`ask` too): unset = the engine's default."""
    s.add_argument("--max-tokens", type=int, default=None)
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--repetition-penalty", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)


def add_arguments(s) -> None:
    s.add_argument("file", help="cases, JSON Lines (format: README, 'Evals')")
    s.add_argument("--bundle", default="compact", help="compact, exact, a bundle id or a folder")
    s.add_argument("--compare", default=None, metavar="BUNDLE",
                   help="a second bundle run on the same cases, shown side by side")
    s.add_argument("--runtime", default="python", choices=["python", "browser"])
    s.add_argument("--out", default=None, help="write the JSON report here")
    s.add_argument("--min-pass-rate", type=float, default=None, metavar="X",
                   help="exit 1 when the (first) bundle's pass rate is under X (0..1)")
    s.add_argument("--threads", type=int, default=None)
    add_setting_flags(s)
    s.add_argument("--no-repetition-stop", action="store_true",
                   help="let looping replies run to max_tokens (finish_reason length)")
