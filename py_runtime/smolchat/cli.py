"""Terminal front end: `python -m smolchat chat` and `python -m smolchat ask "message"`.

    python -m smolchat chat [--bundle DIR] [--system S]
        streams replies; commands: /system [TEXT|default], /clear, /history,
        /mode chat|instruct|generate, /set NAME VALUE, /settings, /info, /help, /quit.
        Ctrl-C while a reply streams stops it (finish_reason abort); at the prompt it quits.
    python -m smolchat ask "message" [--runtime python] [--bundle DIR] [--system S]
        [--mode M] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
        [--repetition-penalty R] [--seed N] [--stop S]... [--no-repetition-stop] [--json]

Both use the CPython backend (backend_onnx). `main(argv, backend=...)` takes any Backend so
tests can drive whole transcripts with the fake backend.

What this module ignores: the browser runtime (`./build.sh ask --runtime browser` goes to
smolchat_web) and everything the engine does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from .engine import ChatEngine
from .errors import InvalidSetting, SmolChatError
from .settings import FIELDS, resolve

BUNDLE_ID = "smollm2-135m-instruct-compact"
MODES = ("chat", "instruct", "generate")


def default_bundle() -> Path:
    """$SMOLCHAT_BUNDLE, else models/<compact> in the source tree (next to py_runtime/),
    else ./models/<compact>."""
    if os.environ.get("SMOLCHAT_BUNDLE"):
        return Path(os.environ["SMOLCHAT_BUNDLE"])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "py_runtime").is_dir():
        return repo / "models" / BUNDLE_ID
    return Path.cwd() / "models" / BUNDLE_ID


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smolchat",
                                description="SmolLM2-135M-Instruct chat in the terminal.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", default=None,
                        help=f"a bundle id under models/ (compact, exact, my-lora), or a bundle "
                             f"folder (default: models/{BUNDLE_ID})")
    common.add_argument("--system", default=None, help="system prompt")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--context-window", type=int, default=2048)
    sub.add_parser("chat", parents=[common], help="interactive chat")
    ask = sub.add_parser("ask", parents=[common], help="one reply")
    ask.add_argument("message")
    ask.add_argument("--runtime", choices=("python", "browser"), default="python")
    ask.add_argument("--mode", choices=MODES, default="chat")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--top-k", type=int)
    ask.add_argument("--top-p", type=float)
    ask.add_argument("--repetition-penalty", type=float)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--stop", action="append", help="stop string (repeatable)")
    ask.add_argument("--no-repetition-stop", dest="repetition_stop", action="store_false",
                     default=None, help="let a looping reply run to max_tokens")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None, backend=None, stdin=None, stdout=None) -> int:
    args = _parser().parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if getattr(args, "runtime", "python") == "browser":
        print("error: the browser runtime runs through ./build.sh ask --runtime browser",
              file=sys.stderr)
        return 2
    try:
        if backend is None:
            from .backend_onnx import OnnxBackend
            bundle = default_bundle()
            if args.bundle is not None:
                from .bundle_id import resolve
                bundle = resolve(args.bundle, bundle.parent)
            backend = OnnxBackend.load(bundle, threads=args.threads)
        engine = ChatEngine(backend, context_window=args.context_window,
                            system_prompt=args.system)
        if args.command == "ask":
            return asyncio.run(_ask(engine, args, stdout))
        return asyncio.run(_chat(engine, stdin, stdout))
    except SmolChatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


async def _ask(engine: ChatEngine, args, out) -> int:
    names = {"max_tokens": args.max_tokens, "temperature": args.temperature,
             "top_k": args.top_k, "top_p": args.top_p,
             "repetition_penalty": args.repetition_penalty, "seed": args.seed, "stop": args.stop,
             "repetition_stop": args.repetition_stop}
    settings = {k: v for k, v in names.items() if v is not None}
    stream = getattr(engine, args.mode)(args.message, **settings)
    async for piece in stream:
        if not args.json:
            out.write(piece)
            out.flush()
    reply = await stream.result()
    if args.json:
        d = reply.to_dict()
        out.write(json.dumps({
            "reply": d["text"], "finish_reason": d["finish_reason"], "mode": args.mode,
            "prompt_token_ids": d["prompt_token_ids"], "output_token_ids": d["output_token_ids"],
            **d["timings"], "seed": d["seed"], "bundle_id": engine.info().get("bundle_id"),
            "runtime": "python"}) + "\n")
    else:
        out.write("\n")
    return 0


HELP = """commands:
  /system [TEXT]       show the system prompt, or set it (resets the chat); '/system default'
  /clear               forget the conversation (keeps the system prompt)
  /history             print the conversation as JSON
  /mode chat|instruct|generate
  /set NAME VALUE      a generation setting (NAME: {names}); /set NAME default to unset
  /settings            the settings in use
  /info                model, bundle, backend
  /quit                leave (also Ctrl-D)"""


def _parse_value(name: str, text: str):
    """The text after `/set NAME` -> a value for resolve(); InvalidSetting when `stop` starts
    like a JSON list but is not one (the engine checks everything else)."""
    if name == "stop":
        if not text.startswith("["):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidSetting("stop", text, 'a plain string, or a JSON list of strings such as '
                                 f'["\\n\\n", "User:"] ({e.msg} at character {e.pos})') from None
    if text.lower() == "none":
        return None
    if text.lower() in ("true", "false"):          # repetition_stop
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


async def _chat(engine: ChatEngine, stdin, out) -> int:
    info = engine.info()
    out.write(f"SmolChat: {info.get('model_name')} ({info.get('bundle_id')}, "
              f"{info.get('backend')}, {info.get('threads')} threads). /help for commands.\n")
    await engine.warmup()
    mode, overrides, active = "chat", {}, []
    interactive = stdin is sys.stdin and stdin.isatty()

    def on_sigint(signum, frame):
        if active:
            active[0].cancel()
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint) if interactive else None
    try:
        while True:
            out.write(f"{'you' if mode == 'chat' else mode}> ")
            out.flush()
            try:
                line = input() if interactive else stdin.readline()
            except (EOFError, KeyboardInterrupt):
                line = ""
            if not line:
                out.write("\n")
                return 0
            line = line.rstrip("\n")
            if not interactive:
                out.write(line + "\n")          # piped input: keep the transcript readable
            if not line.strip():
                continue
            if line.startswith("/"):
                cmd, _, rest = line.partition(" ")
                rest = rest.strip()
                try:
                    if cmd in ("/quit", "/exit"):
                        return 0
                    elif cmd == "/help":
                        out.write(HELP.format(names=", ".join(FIELDS)) + "\n")
                    elif cmd == "/system":
                        if rest:
                            engine.set_system_prompt(None if rest == "default" else rest)
                            await engine.warmup()
                        out.write(f"system: {engine.system_prompt}\n")
                    elif cmd == "/clear":
                        engine.clear()
                        out.write("(conversation cleared)\n")
                    elif cmd == "/history":
                        out.write(json.dumps(engine.history(), ensure_ascii=False, indent=1) + "\n")
                    elif cmd == "/mode":
                        if rest not in MODES:
                            out.write(f"modes: {', '.join(MODES)} (now {mode})\n")
                        else:
                            mode = rest
                            out.write(f"mode: {mode}\n")
                    elif cmd == "/set":
                        name, _, value = rest.partition(" ")
                        if value.strip() == "default":
                            overrides.pop(name, None)
                        else:
                            candidate = {**overrides, name: _parse_value(name, value.strip())}
                            resolve(engine.defaults, candidate)      # validate now
                            overrides = candidate
                        out.write(f"{name} = {resolve(engine.defaults, overrides).to_dict().get(name)}\n")
                    elif cmd == "/settings":
                        out.write(json.dumps(resolve(engine.defaults, overrides).to_dict()) + "\n")
                    elif cmd == "/info":
                        out.write(json.dumps(engine.info(), indent=1, default=str) + "\n")
                    else:
                        out.write(f"unknown command {cmd}: /help lists them\n")
                except SmolChatError as e:
                    out.write(f"error: {e}\n")
                continue
            try:
                stream = getattr(engine, mode)(line, **overrides)
                active[:] = [stream]
                async for piece in stream:
                    out.write(piece)
                    out.flush()
                reply = await stream.result()
            except SmolChatError as e:
                out.write(f"error: {e}\n")
                continue
            finally:
                active.clear()
            t = reply.to_dict()["timings"]
            out.write(f"\n[{reply.finish_reason}, {reply.completion_tokens} tokens, "
                      f"ttft {t['ttft_ms']:.0f} ms, {t['decode_tok_s']:.1f} tok/s]\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
