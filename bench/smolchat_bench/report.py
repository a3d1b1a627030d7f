"""Results -> bench/results/: the JSON (everything, raw samples included) and a Markdown
table per thread count with SmolChat's advantage over each anchor.

Advantage = how many times better SmolChat's median is (anchor/SmolChat for times and
memory, SmolChat/anchor for rates): > 1 means SmolChat is ahead on that row.
"""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import METRICS

SCHEMA = "smolchat-bench/1"
# Issue 6's targets (benchmark figures, not test assertions): metric -> (threads or None, bound)
TARGETS = {
    "ttft_followup_ms": (None, 35.0),
    "decode_tok_s": (2, 80.0),
    "memory_rss_page_mb": (None, 350.0),
    "ready_cached_ms": (None, 3000.0),
}
BROWSER_ANCHORS = ("wllama", "transformersjs")
# Issue 16: SmolChat against native onnxruntime on the same runtime form, same run.
NATIVE_REFERENCE = "native_ort"
LABELS = {"smolchat": "SmolChat", "wllama": "wllama", "transformersjs": "transformers.js",
          "native_ort": "native ORT (runtime form)", "native_llamacpp": "native llama.cpp"}


def write(results: dict, out_dir: Path, stem: str = "latest") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    j.write_text(json.dumps(results, indent=1) + "\n")
    m.write_text(markdown(results))
    return j, m


def _fmt(x, unit: str) -> str:
    if x is None:
        return "–"
    if unit == "ms":
        return f"{x:,.0f}"
    return f"{x:,.1f}"


def _cell(s: dict | None) -> str:
    """median (best) from a metric summary."""
    if not s or s.get("median") is None:
        return "–"
    best = s["min"] if s["better"] == "lower" else s["max"]
    if s["n"] == 1:
        return _fmt(s["median"], s["unit"])
    return f"{_fmt(s['median'], s['unit'])} ({_fmt(best, s['unit'])})"


def advantage(ours: dict | None, anchor: dict | None) -> float | None:
    if not ours or not anchor or not ours.get("median") or not anchor.get("median"):
        return None
    a, b = ours["median"], anchor["median"]
    return b / a if ours["better"] == "lower" else a / b


def _run(results: dict, system: str, threads: int) -> dict | None:
    sysres = results["systems"].get(system)
    if not sysres or not sysres.get("available"):
        return None
    return sysres["runs"].get(str(threads))


def markdown(results: dict) -> str:
    s = results["settings"]
    la = results["load_average"]
    lines = [
        f"# SmolChat benchmark ({results['mode']} mode, {results['created_utc']})",
        "",
        *([] if results.get("complete", True) else
          ["**Partial: the run was still going or was interrupted when this was written; "
           "see n in latest.json for the repetitions behind each figure.**",
           *([results["interrupted_note"]] if results.get("interrupted_note") else []), ""]),
        f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['chromium']}. "
        f"Load average (1/5/15 min) at start {la['start']}, at end {la['end']}, "
        f"max 1-min seen {la['max_1min']}.",
        f"Greedy, {s['max_new_tokens']} new tokens per chat turn, {s['reps']} repetition(s); "
        f"cells are median (best) over repetitions; decode pools the first and follow-up turns. "
        f"Prompts: first turn {s['prompt_tokens'].get('first') or '?'} tokens, "
        f"long prompt {s['prompt_tokens'].get('long') or '?'} tokens.",
        "Advantage = how many times better SmolChat's median is than the anchor's "
        "(> 1: SmolChat ahead).",
        "",
    ]
    systems = [k for k in LABELS if k in results["systems"]]
    for threads in s["threads"]:
        avail = [k for k in systems if _run(results, k, threads)]
        if not avail:
            continue
        head = ["metric"] + [LABELS[k] for k in avail]
        anchors = [a for a in (*BROWSER_ANCHORS, NATIVE_REFERENCE) if a in avail] \
            if "smolchat" in avail else []
        head += [f"SmolChat vs {LABELS[a]}" for a in anchors]
        lines += [f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, (unit, better, label) in METRICS.items():
            if "_ctx" in name and not any(
                    (_run(results, k, threads)["metrics"].get(name) or {}).get("n") for k in avail):
                continue   # the context sweep did not run (quick mode, --contexts off)
            row = [label]
            for k in avail:
                row.append(_cell(_run(results, k, threads)["metrics"].get(name)))
            for a in anchors:
                adv = advantage(_run(results, "smolchat", threads)["metrics"].get(name),
                                _run(results, a, threads)["metrics"].get(name))
                row.append("–" if adv is None else f"{adv:.2f}x")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += _context_ratios(results, avail, threads)
    lines += ["## Not measured", ""]
    missing = [f"- {LABELS.get(k, k)}: {v['reason']}" for k, v in results["systems"].items()
               if not v.get("available")]
    lines += (missing or ["- nothing: every system ran."]) + [""]
    lines += _targets(results) + _load_stages(results) + _runtime_memory(results) + _profiles(results)
    return "\n".join(lines)


def _context_ratios(results: dict, systems: list[str], threads: int) -> list[str]:
    """Decode at ~1,500 tokens of past over decode at ~50, per system (issue 16: >= 0.8)."""
    parts = []
    for k in systems:
        m = _run(results, k, threads)["metrics"]
        a = (m.get("decode_ctx1500_tok_s") or {}).get("median")
        b = (m.get("decode_ctx50_tok_s") or {}).get("median")
        if a and b:
            parts.append(f"{LABELS[k]} {a / b:.2f}")
    return [f"Decode at ~1,500 tokens of past / at ~50: {', '.join(parts)}.", ""] if parts else []


def _targets(results: dict) -> list[str]:
    lines = ["## Issue 6 targets (SmolChat)", "", "| target | threads | median | status |",
             "|---|---|---|---|"]
    for name, (want_threads, bound) in TARGETS.items():
        unit, better, label = METRICS[name]
        for threads in results["settings"]["threads"]:
            if want_threads and threads != want_threads:
                continue
            run = _run(results, "smolchat", threads)
            med = run["metrics"][name]["median"] if run else None
            op = "<=" if better == "lower" else ">="
            if med is None:
                status = "not measured"
            else:
                status = "met" if (med <= bound if better == "lower" else med >= bound) else "not met"
            lines.append(f"| {label} {op} {bound:g} | {threads} | {_fmt(med, unit)} | {status} |")
    return lines + [""]


def _load_stages(results: dict) -> list[str]:
    """SmolChat's ready time, stage by stage (its worker's marks; medians over repetitions)."""
    lines = []
    for k, v in results["systems"].items():
        for threads, run in (v.get("runs") or {}).items():
            st = run.get("load_stages")
            if not st:
                continue
            if not lines:
                lines = ["## Load stages (SmolChat's worker marks, ms since the load began; "
                         "median over repetitions)", "",
                         "Stages on the load helper thread (read_verify, inflate, expand) run "
                         "while Python boots (python_boot, python_wheel); ready is the last end.",
                         ""]
            kinds = [kd for kd in ("cold", "cached") if kd in st]
            names = list(dict.fromkeys(n for kd in kinds for n in st[kd]))
            lines += [f"{LABELS.get(k, k)}, {threads} thread(s):", "",
                      "| stage | " + " | ".join(f"{kd}: start-end (ms)" for kd in kinds) + " |",
                      "|---|" + "---|" * len(kinds)]
            for n in names:
                cells = []
                for kd in kinds:
                    x = st[kd].get(n)
                    cells.append("–" if not x else
                                 f"{x['start_ms']:,.0f}-{x['end_ms']:,.0f} ({x['ms']:,.0f})")
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _runtime_memory(results: dict) -> list[str]:
    rm = results.get("runtime_form_memory")
    if not rm:
        return []
    lines = ["## Runtime form memory (ORT Web's wasm in Node, the model's data alone)", ""]
    if not rm.get("available"):
        return lines + [f"- not measured: {rm.get('reason')}", ""]
    lines += ["MB above the engine (ORT initialised, all its wasm compiled: node "
              f"{' '.join(rm['node_flags'])}); one process per row; prefill then 16 decode steps.",
              "", "| model.data given to ORT | load peak | load + run peak | after, steady | "
              "wasm heap: session | wasm heap: after prefill | session ms |",
              "|---|---|---|---|---|---|---|"]
    names = {"on-demand": "on demand, tensor by tensor (the page)", "whole": "whole, expanded first"}
    for k, v in rm["variants"].items():
        lines.append(f"| {names.get(k, k)} | {v['load_peak_above_engine_mb']:.0f} | "
                     f"{v['run_peak_above_engine_mb']:.0f} | "
                     f"{v['steady_rss_above_engine_mb']:.0f} | {v['wasm_heap_mb']:.0f} | "
                     f"{v['wasm_heap_prefill_mb']:.0f} ({v['prefill_tokens']} tokens) | {v['session_ms']} |")
    return lines + [""]


def _profiles(results: dict) -> list[str]:
    lines = ["## Decode step profile (ms per step)", ""]
    any_ = False
    for k, v in results["systems"].items():
        for threads, run in (v.get("runs") or {}).items():
            prof = run.get("decode_profile")
            if prof:
                any_ = True
                parts = ", ".join(f"{p} {x:.2f}" for p, x in prof["per_step"].items())
                lines.append(f"- {LABELS.get(k, k)}, {threads} thread(s), {prof['steps']} steps: {parts}")
            eng = run.get("engine_reported")
            if eng:
                any_ = True
                page = run["metrics"]
                parts = ", ".join(
                    f"{m} {_fmt(eng[m]['median'], eng[m]['unit'])} (page: "
                    f"{_fmt(page[m]['median'], page[m]['unit'])})"
                    for m in ("ttft_first_ms", "ttft_followup_ms", "decode_tok_s") if eng[m]["n"])
                lines.append(f"- {LABELS.get(k, k)}, {threads} thread(s), as its engine reports "
                             f"itself (worker clock; page-measured in parentheses): {parts}")
    if not any_:
        lines.append("- no system reported a per-step split.")
    notes = results.get("profile_notes")
    if notes:
        lines += ["", notes]
    return lines + [""]
