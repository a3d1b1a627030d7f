"""`python -m smolchat_bench` (= `./build.sh bench`): every system, one run, one table.

    python -m smolchat_bench                      # full: 128 tokens, 3 repetitions, 1 and 2 threads
    python -m smolchat_bench --quick              # 16 tokens, 1 repetition (development, CI)
    python -m smolchat_bench --systems native,wllama --threads 1 --out /tmp/b
    python -m smolchat_bench --load-only --systems smolchat,wllama --threads 1   # ready + memory
    python -m smolchat_bench --soak [--turns 200] [--bundle ID]   # memory soak (soak.py)

Systems: smolchat, wllama, transformersjs (browser, served from one local origin with
COOP/COEP, driven in headless Chromium), native (onnxruntime on our runtime form, plus
llama.cpp when llama-cpp-python is importable; --with-llama-cpp builds it, ~6 min; and the
runtime form's memory in ORT Web's wasm, run in Node: runtime_memory.mjs).
A system that cannot run is reported as not available with the reason; the others still run.
Full runs write bench/results/latest.{json,md} (committed) and a timestamped copy under
bench/results/raw/; quick runs write bench/results/raw/quick.{json,md} (--load-only runs
raw/load.{json,md}) unless --out is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from . import deps, metrics, prompts, report
from .paths import (BENCH, BENCH_CACHE, BUNDLE_ID, MODELS, NODE_MODULES, PAGES, RESULTS, ROOT,
                    SITE, bundle_dir, gguf_path)

ALL_SYSTEMS = ("smolchat", "wllama", "transformersjs", "native")
BROWSER_SYSTEMS = ("smolchat", "wllama", "transformersjs")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class LoadSampler:
    """os.getloadavg() at start, at end, and the highest 1-min value seen (every 5 s)."""

    def __init__(self):
        self.start = [round(x, 2) for x in os.getloadavg()]
        self.max_1min = self.start[0]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(5):
            self.max_1min = max(self.max_1min, round(os.getloadavg()[0], 2))

    def snapshot(self) -> dict:
        now = [round(x, 2) for x in os.getloadavg()]
        return {"start": self.start, "end": now, "max_1min": max(self.max_1min, now[0])}

    def finish(self) -> dict:
        self._stop.set()
        return self.snapshot()


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m smolchat_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 tokens, 1 repetition")
    ap.add_argument("--contexts", choices=("on", "off"),
                    help="the context sweep: decode at ~50/500/1,500 tokens of past, prefill of "
                         "~1,500 tokens (default: on in full mode, off with --quick)")
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                    help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--max-tokens", type=int, help="new tokens per chat turn (default 128, quick 16)")
    ap.add_argument("--out", type=Path, help="directory for the JSON and Markdown")
    ap.add_argument("--smolchat-bundle", default=BUNDLE_ID,
                    help="bundle id under models/ for the smolchat row (default %(default)s)")
    ap.add_argument("--load-only", action="store_true",
                    help="browser systems: the cold and cached loads and their memory only, no chat "
                         "turn (ready times, load stages, renderer RSS; the other rows stay empty)")
    ap.add_argument("--with-llama-cpp", action="store_true",
                    help="build llama-cpp-python (~6 min) if it is missing, for the native llama.cpp row")
    a = ap.parse_args(argv)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    bad = [s for s in a.systems if s not in ALL_SYSTEMS]
    if bad:
        ap.error(f"unknown system(s) {bad}: choose from {ALL_SYSTEMS}")
    a.threads = [int(t) for t in a.threads.split(",")]
    if any(t < 1 or t > 16 for t in a.threads):
        ap.error("--threads values must be 1..16")
    a.contexts = (a.contexts or ("off" if a.quick else "on")) == "on"
    a.reps = a.reps or (1 if a.quick else 3)
    a.max_tokens = a.max_tokens or (16 if a.quick else 128)
    if a.reps < 1 or not 2 <= a.max_tokens <= 1024:
        ap.error("--reps >= 1 and 2 <= --max-tokens <= 1024")
    return a


def prompt_token_counts(quick: bool) -> dict:
    """Chat-templated prompt lengths with our tokenizer (the same model for every system)."""
    src = bundle_dir() or (BENCH_CACHE / "tjs" / "SmolLM2-135M-Instruct")
    try:
        import jinja2
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        tpl = jinja2.Environment().from_string(
            json.loads((src / "tokenizer_config.json").read_text())["chat_template"])
    except Exception:
        return {}

    def n(msgs):
        return len(tok.encode(tpl.render(messages=msgs, add_generation_prompt=True),
                              add_special_tokens=False).ids)
    return {"first": n([{"role": "system", "content": prompts.SYSTEM_PROMPT},
                        {"role": "user", "content": prompts.FIRST}]),
            "long": n([{"role": "user", "content": prompts.long_prompt(quick)}]),
            **{k: n([{"role": "user", "content": v}]) for k, v in prompts.CONTEXTS.items()}}


def smolchat_unavailable(bundle_id: str) -> str | None:
    """Why the SmolChat row cannot run (./build.sh bench builds both first), or None."""
    missing = []
    if not (SITE / "smolchat.js").exists():
        missing.append("dist/site/smolchat.js (./build.sh site)")
    if not (MODELS / bundle_id / "manifest.json").exists():
        missing.append(f"models/{bundle_id}/manifest.json (./build.sh bundle)")
    return ("missing " + ", ".join(missing)) if missing else None


def run_browser(args, systems: list[str], results: dict, n_long: int | None, checkpoint) -> None:
    from playwright.sync_api import sync_playwright
    from . import browser
    from .server import StaticServer

    reps: dict[tuple[str, int], list] = {}
    info: dict[tuple[str, int], dict] = {}
    todo = []
    for s in systems:
        try:
            if s == "smolchat":
                reason = smolchat_unavailable(args.smolchat_bundle)
                if reason:
                    raise browser.SystemUnavailable(reason)
            elif s == "wllama":
                gguf_path(log)
            elif s == "transformersjs":
                from . import tjs_export
                try:
                    tjs_export.ensure_export(log)
                except tjs_export.ExportUnavailable as e:
                    raise browser.SystemUnavailable(str(e)) from e
            todo.append(s)
        except Exception as e:
            results["systems"][s] = {"kind": "browser", "available": False, "reason": str(e)}
    if not todo:
        return
    # models/ directly (not the site's symlinks, made when the site was last assembled)
    mounts = {"/pages/": PAGES, "/npm/": NODE_MODULES, "/tjs/": BENCH_CACHE / "tjs",
              "/gguf/": gguf_path(log).parent, "/models/": MODELS, "/": SITE}
    with StaticServer(mounts) as srv, sync_playwright() as pw:
        for rep in range(args.reps):
            for threads in args.threads:
                for s in list(todo):
                    log(f"{s}, {threads} thread(s), repetition {rep + 1}/{args.reps}")
                    url = srv.url(f"/pages/bench.html?system={s}&threads={threads}"
                                  f"&bundle={args.smolchat_bundle}")
                    t0 = time.monotonic()
                    try:
                        r = browser.run_rep(pw, url, args.max_tokens, prompts.long_prompt(args.quick),
                                            prompts.CONTEXTS if args.contexts else None,
                                            load_only=args.load_only)
                    except Exception as e:
                        reason = str(e) if isinstance(e, browser.SystemUnavailable) else \
                            f"{type(e).__name__}: {e}"
                        log(f"{s}: not available: {reason[:300]}")
                        results["systems"][s] = {"kind": "browser", "available": False,
                                                 "reason": reason[:2000]}
                        todo.remove(s)
                        continue
                    r["duration_s"] = round(time.monotonic() - t0, 1)
                    r["load_average_1min"] = round(os.getloadavg()[0], 2)
                    log(f"{s}, {threads} thread(s): {r['duration_s']} s")
                    info[(s, threads)] = {"info": r.pop("info"),
                                          "cross_origin_isolated": r.pop("cross_origin_isolated")}
                    reps.setdefault((s, threads), []).append(r)
                    _assemble_browser(args, todo, reps, info, results, n_long)
                    checkpoint()


def _assemble_browser(args, todo, reps, info, results, n_long) -> None:
    for s in todo:
        runs = {}
        for threads in args.threads:
            rs = reps.get((s, threads), [])
            if not rs:
                continue
            runs[str(threads)] = {"threads": threads, **info[(s, threads)],
                                  "metrics": metrics.figures(rs, n_long, args.prompt_tokens),
                                  "tokens": metrics.token_counts(rs),
                                  "decode_profile": metrics.decode_profile(rs),
                                  "engine_reported": metrics.engine_reported(rs),
                                  "load_stages": metrics.load_stages(rs),
                                  "raw": [_strip(r) for r in rs]}
        if not runs:
            continue
        results["systems"][s] = {"kind": "browser", "available": True, "reason": None, "runs": runs}
        if s == "smolchat":
            results["systems"][s]["bundle"] = {"id": args.smolchat_bundle}


def _strip(rep: dict) -> dict:
    """Raw record for the JSON, without the replies' text (kept short: first 200 chars)."""
    out = dict(rep)
    out["turns"] = {k: {**v, "text": (v.get("text") or "")[:200]} for k, v in rep["turns"].items()}
    return out


def run_native(args, results: dict, n_long: int | None, checkpoint) -> None:
    engines = []
    bdir = bundle_dir()
    try:
        import smolchat.runtime_form  # noqa: F401  (the bundle engineer's loader)
        reason = None if bdir else f"no bundle at models/{BUNDLE_ID}/ (./build.sh bundle)"
    except ImportError as e:
        reason = f"smolchat.runtime_form not importable ({e})"
    if reason:
        results["systems"]["native_ort"] = {"kind": "native", "available": False, "reason": reason}
    else:
        engines.append(("native_ort", ["ort", "--bundle", str(bdir)]))
    if args.with_llama_cpp and not deps.llama_cpp_importable():
        try:
            deps.build_llama_cpp(log)
        except subprocess.CalledProcessError as e:
            log(f"llama-cpp-python build failed: {e}")
    if deps.llama_cpp_importable():
        engines.append(("native_llamacpp", ["llamacpp", "--gguf", str(gguf_path(log))]))
    else:
        results["systems"]["native_llamacpp"] = {
            "kind": "native", "available": False,
            "reason": "skipped: llama-cpp-python is not installed (optional; --with-llama-cpp "
                      "builds 0.3.36 from source with GGML_NATIVE=OFF, ~6 min; never in CI)"}
    for name, argv in engines:
        runs = {}
        try:
            for threads in args.threads:
                log(f"{name}, {threads} thread(s), {args.reps} repetition(s)")
                cmd = [sys.executable, "-m", "smolchat_bench.native", *argv, "--threads",
                       str(threads), "--max-tokens", str(args.max_tokens), "--reps", str(args.reps),
                       *(["--quick"] if args.quick else []),
                       *(["--contexts"] if args.contexts else [])]
                t0 = time.monotonic()
                p = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
                log(f"{name}, {threads} thread(s): {time.monotonic() - t0:.1f} s")
                if p.returncode != 0:
                    raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[-1500:]}")
                res = json.loads(p.stdout)
                rs = res["reps"]
                for r in rs:  # one process for all repetitions: its peak covers them all
                    r["rss_page_peak_bytes"] = res["rss_peak_bytes"]
                runs[str(threads)] = {"threads": threads, "info": res["info"],
                                      "cross_origin_isolated": None,
                                      "metrics": metrics.figures(rs, n_long, args.prompt_tokens),
                                      "tokens": metrics.token_counts(rs),
                                      "decode_profile": metrics.decode_profile(rs),
                                      "raw": [_strip(r) for r in rs]}
            results["systems"][name] = {"kind": "native", "available": True, "reason": None,
                                        "runs": runs}
            checkpoint()
        except Exception as e:
            log(f"{name}: not available: {e}")
            results["systems"][name] = {"kind": "native", "available": False,
                                        "reason": f"{type(e).__name__}: {e}"[:2000]}


# V8 compiles all of ORT's wasm up front (TurboFan), so the engine baseline holds all its code
# and the figures above it are the model's data alone (lazy compilation would add the code of
# the kernels this graph uses to the model's figures: ~100-200 MB, an engine cost).
RUNTIME_MEMORY_FLAGS = ["--expose-gc", "--no-liftoff", "--no-wasm-lazy-compilation"]


def run_runtime_memory(results: dict, n_long: int | None) -> None:
    """The runtime form's memory in ORT Web's wasm (runtime_memory.mjs in Node), loaded the
    page's way (on demand) and the first landing's way (whole model.data first)."""
    bdir = bundle_dir()
    script = Path(__file__).resolve().parent / "runtime_memory.mjs"
    if not bdir or not (SITE / "runtime_form.js").exists():
        results["runtime_form_memory"] = {"available": False,
                                          "reason": "needs the compact bundle and dist/site"}
        return
    from smolchat.engine import PREFILL_CHUNK  # the chunks the engine prefills in
    variants = {}
    try:
        for variant in ("on-demand", "whole"):
            cmd = ["node", *RUNTIME_MEMORY_FLAGS, str(script), str(bdir), str(SITE), variant,
                   str(n_long or 500), str(PREFILL_CHUNK)]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[-800:]}")
            variants[variant] = json.loads(p.stdout.strip().splitlines()[-1])
            log(f"runtime form memory, {variant}: {variants[variant]}")
        results["runtime_form_memory"] = {"available": True, "node_flags": RUNTIME_MEMORY_FLAGS,
                                          "variants": variants}
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        results["runtime_form_memory"] = {"available": False, "reason": f"{type(e).__name__}: {e}"[:1000]}


def _child_env() -> dict:
    """The native subprocess imports smolchat_bench and smolchat (py_runtime/)."""
    paths = [str(BENCH), str(ROOT / "py_runtime")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def chromium_version() -> str:
    try:
        return subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or "chromium ?"
    except (OSError, subprocess.TimeoutExpired):
        return "chromium not found"


PROFILE_NOTES = (
    "Native ORT: ort_run_ms is session.run; sampling_ms the argmax over 49,152 logits (numpy); "
    "python_ms building feeds and unpacking outputs. SmolChat (browser): its engine's "
    "`reply.profile` (totals over a reply's decode steps, prefill excluded): ort_run_ms is the "
    "awaited ORT Web session.run (JS clock), interop_ms the rest of backend.forward (JS tensors, "
    "JS<->Python hops), sampling_ms the top-k in JS plus sampling in Python, python_ms the "
    "engine's loop (detokenising, stop strings, streaming).")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--soak"]:   # the memory soak in the page (soak.py), not the speed table
        from . import soak
        sys.exit(soak.main(argv[1:]))
    args = parse_args(argv)
    load = LoadSampler()
    started = dt.datetime.now(dt.timezone.utc)
    browser_systems = [s for s in args.systems if s in BROWSER_SYSTEMS]
    if browser_systems:
        deps.ensure_node_modules(log)
    n_prompt = prompt_token_counts(args.quick)
    args.prompt_tokens = n_prompt
    results = {
        "schema": report.SCHEMA,
        "mode": ("load-only, " if args.load_only else "") + ("quick" if args.quick else "full"),
        "created_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": {"systems": args.systems, "threads": args.threads, "reps": args.reps,
                     "max_new_tokens": args.max_tokens, "sampling": "greedy",
                     "context_sweep": args.contexts, "context_tokens": prompts.CONTEXT_TOKENS,
                     "prompt_tokens": n_prompt,
                     "prompts": {"system": prompts.SYSTEM_PROMPT, "first": prompts.FIRST,
                                 "followup": prompts.FOLLOW_UP,
                                 "long_chars": len(prompts.long_prompt(args.quick))}},
        "machine": {"cpus": os.cpu_count(), "mem_total_bytes": psutil.virtual_memory().total,
                    "platform": platform.platform(), "python": platform.python_version(),
                    "chromium": chromium_version() if browser_systems else None},
        "systems": {},
        "profile_notes": PROFILE_NOTES,
    }
    if args.out:
        out_dir, stem = args.out, "latest"
    elif args.quick or args.load_only:
        out_dir, stem = RESULTS / "raw", "load" if args.load_only else "quick"
    else:
        out_dir, stem = RESULTS / "raw", started.strftime("%Y%m%dT%H%M%SZ")

    def checkpoint(final: bool = False) -> tuple[Path, Path]:
        """Write what is measured so far (a long run interrupted still leaves its figures)."""
        results["complete"] = final
        results["load_average"] = load.finish() if final else load.snapshot()
        results["duration_s"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
        paths = report.write(results, out_dir, stem)
        if not args.out and not args.quick and not args.load_only:  # the committed table follows a full run as it goes
            paths = report.write(results, RESULTS)
        return paths

    # Native first: short, and it frees the cores before the long browser runs.
    if "native" in args.systems:
        run_native(args, results, n_prompt.get("long"), checkpoint)
        run_runtime_memory(results, n_prompt.get("long"))
        checkpoint()
    if browser_systems:
        run_browser(args, browser_systems, results, n_prompt.get("long"), checkpoint)
    paths = checkpoint(final=True)
    log(f"wrote {paths[0]} and {paths[1]}")
    print(paths[1].read_text())
