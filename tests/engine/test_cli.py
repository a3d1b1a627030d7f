"""Whole CLI transcripts with the fake backend, and the missing-bundle error."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

from smolchat.cli import main
from smolchat.fake_backend import FakeBackend

REPO = Path(__file__).resolve().parents[2]


def replies(prompt: str) -> str:
    return "Your name is Alice." if "name is Alice" in prompt and "What" in prompt else "Hello!"


def run_chat(lines: list[str], *args: str) -> str:
    out = io.StringIO()
    rc = main(["chat", *args], backend=FakeBackend(replies=replies),
              stdin=io.StringIO("".join(l + "\n" for l in lines)), stdout=out)
    assert rc == 0
    return re.sub(r"ttft \d+ ms, [\d.]+ tok/s", "ttft N ms, N tok/s", out.getvalue())


def test_chat_transcript():
    got = run_chat(["Hi, my name is Alice", "What's my name?", "/set temperature 0.7",
                    "/set top_k 9999", "/set max_tokens 2", "/mode instruct", "What's my name?",
                    "/set max_tokens default", "/system You are a pirate.", "/history",
                    "/clear", "/mode nope", "/frobnicate", "/quit"], "--system", "Be brief.")
    assert got == """\
SmolChat: fake (fake, fake, 1 threads). /help for commands.
you> Hi, my name is Alice
Hello!
[stop, 3 tokens, ttft N ms, N tok/s]
you> What's my name?
Your name is Alice.
[stop, 7 tokens, ttft N ms, N tok/s]
you> /set temperature 0.7
temperature = 0.7
you> /set top_k 9999
error: invalid setting top_k=9999: allowed an integer in [1, 200]
you> /set max_tokens 2
max_tokens = 2
you> /mode instruct
mode: instruct
instruct> What's my name?
Hello!
[length, 2 tokens, ttft N ms, N tok/s]
instruct> /set max_tokens default
max_tokens = 256
instruct> /system You are a pirate.
system: You are a pirate.
instruct> /history
[
 {
  "role": "system",
  "content": "You are a pirate."
 }
]
instruct> /clear
(conversation cleared)
instruct> /mode nope
modes: chat, instruct, generate (now instruct)
instruct> /frobnicate
unknown command /frobnicate: /help lists them
instruct> /quit
"""


def test_chat_ends_at_end_of_input():
    assert run_chat(["Hi"]).endswith("[stop, 3 tokens, ttft N ms, N tok/s]\nyou> \n")


def test_ask_json():
    out = io.StringIO()
    rc = main(["ask", "Hi, my name is Alice", "--json", "--temperature", "0", "--seed", "3",
               "--max-tokens", "20"], backend=FakeBackend(replies=replies), stdout=out)
    assert rc == 0
    d = json.loads(out.getvalue())
    assert set(d) >= {"reply", "finish_reason", "prompt_token_ids", "output_token_ids", "ttft_ms",
                      "prefill_ms", "decode_tok_s", "total_ms", "bundle_id"}
    assert (d["reply"], d["finish_reason"], d["bundle_id"], d["seed"]) == \
        ("Hello!", "stop", "fake", 3)


def test_ask_streams_text_and_validates():
    out = io.StringIO()
    assert main(["ask", "hello", "--mode", "instruct", "--temperature", "0"],
                backend=FakeBackend(replies=replies), stdout=out) == 0
    assert out.getvalue() == "Hello!\n"
    assert main(["ask", "hello", "--temperature", "5"], backend=FakeBackend(), stdout=out) == 1


def test_missing_bundle_is_one_line_naming_the_build_step(tmp_path):
    run = subprocess.run([sys.executable, "-m", "smolchat", "ask", "hi", "--bundle",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={"PYTHONPATH": str(REPO / "py_runtime"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 1
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "./build.sh bundle" in lines[0] and lines[0].startswith("error:")


def test_bad_set_in_the_real_chat_process_keeps_the_conversation(tmp_path):
    """Issue 20 #7: `printf 'hello\\n/set stop [x\\n' | ./build.sh chat` died with a
    JSONDecodeError traceback (exit 1). The real process, on the tiny bundle (same format)."""
    tiny = REPO / "models" / "tiny-random"
    assert (tiny / "manifest.json").is_file(), \
        "models/tiny-random is missing: ./build.sh bundle --source tiny-random --out models/tiny-random"
    run = subprocess.run(
        [sys.executable, "-m", "smolchat", "chat", "--bundle", str(tiny)],
        input="hello\n/set max_tokens 4\n/set stop [x\n/set stop [\"x\"\n/set stop [\"x\"]\n/history\n",
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"PYTHONPATH": str(REPO / "py_runtime"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "JSONDecodeError" not in run.stdout + run.stderr
    assert "error: invalid setting stop='[x': allowed a plain string, or a JSON list of strings" in run.stdout
    assert "error: invalid setting stop='[\"x\"'" in run.stdout
    assert "stop = ['x']" in run.stdout
    history = json.loads(run.stdout.split("you> /history\n", 1)[1].rsplit("you> ", 1)[0])
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hello"
