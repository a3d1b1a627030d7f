"""python -m smolchat_web site|serve|ask|eval (./build.sh routes here).

  site  [--bundle compact|exact|ID]             assemble dist/site (default bundle: compact)
  serve [--port 8000] [--host 127.0.0.1] [--bundle ...]   build what is missing, then serve
  ask "message" --runtime browser [--system S] [--mode chat|instruct|generate]
        [--max-tokens N] [--temperature T] [--seed N] [--json] [--bundle ...]
  eval CASES.jsonl [--bundle B] [--compare B2] [--runtime python|browser] [--out report.json]
       [--min-pass-rate X] [--temperature T] [--max-tokens N] [--seed N] ...   (evaluate.py)
"""

from __future__ import annotations

import argparse
import json
import sys

from .site import DIST, MODELS, SiteError, build_site


def main(argv: list[str] | None = None) -> int:
    from .evaluate import add_arguments, add_setting_flags
    p = argparse.ArgumentParser(prog="smolchat_web", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("site", help="assemble dist/site")
    s.add_argument("--bundle", default="compact", help="default bundle: compact, exact or an id")

    s = sub.add_parser("serve", help="serve dist/site with COOP/COEP")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--bundle", default="compact")

    s = sub.add_parser("ask", help="one reply from the real page in headless Chromium")
    s.add_argument("message")
    s.add_argument("--runtime", default="browser", choices=["browser"],
                   help="browser only here; `python -m smolchat ask` is the Python runtime")
    s.add_argument("--system", default=None)
    s.add_argument("--mode", default="chat", choices=["chat", "instruct", "generate"])
    add_setting_flags(s)
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--bundle", default="compact", help="compact, exact, a bundle id or a folder")
    s.add_argument("--threads", type=int, default=None)

    s = sub.add_parser("eval", help="score a JSONL case file on a bundle (or two, side by side)")
    add_arguments(s)

    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    from smolchat.errors import SmolChatError
    try:
        if a.cmd in ("site", "serve") and a.bundle != "compact":
            from smolchat.bundle_id import resolve
            resolve(a.bundle, MODELS)   # the default bundle must be built and under models/
        if a.cmd == "site":
            build_site(default_bundle=a.bundle, log=log)
            return 0
        if a.cmd == "serve":
            from .server import make_server
            build_site(default_bundle=a.bundle, log=log)
            server = make_server(DIST, a.port, a.host)
            print(f"SmolChat: serving {DIST} at http://{a.host}:{a.port}/  (Ctrl+C stops)",
                  flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            return 0
        if a.cmd == "eval":
            from . import evaluate
            return evaluate.main(a, log)
        from . import headless
        if a.cmd == "ask":
            settings = {k: v for k, v in {
                "max_tokens": a.max_tokens, "temperature": a.temperature, "top_k": a.top_k,
                "top_p": a.top_p, "repetition_penalty": a.repetition_penalty, "seed": a.seed,
            }.items() if v is not None}
            result = headless.ask(a.message, system=a.system, mode=a.mode, settings=settings,
                                  bundle=a.bundle, threads=a.threads, log=log)
            if a.json:
                print(json.dumps(result, ensure_ascii=False))
            else:
                print(result.get("reply", ""))
                log(f"[{result.get('finish_reason')}] ttft {result.get('ttft_ms')} ms, "
                    f"{result.get('decode_tok_s')} tok/s, load {result.get('load_ms')} ms, "
                    f"threads {result.get('threads')}, peak {result.get('peak_memory_mb')} MB")
            return 1 if "error" in result else 0
    except SiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except SmolChatError as e:   # a bad or missing bundle id (smolchat/bundle_id.py)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
