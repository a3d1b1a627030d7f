"""Native references on this machine, each run in its own subprocess (clean peak RSS):

- `ort`: onnxruntime (Python) on our bundle's runtime form, loaded by the bundle engineer's
  `smolchat.runtime_form.load_session(bundle_dir, threads)`; a plain greedy loop in numpy
  that times each decode step split into session.run, sampling (argmax over the vocabulary)
  and the rest of Python (feeds, bookkeeping): the native half of the decode profile.
- `llamacpp`: llama.cpp through llama-cpp-python on the GGUF, only if it is importable
  (optional: it builds from source in ~6 min, so CI never builds it; `--with-llama-cpp`
  asks the CLI to build it into .cache/bench/llama_cpp_py/).

Same protocol as the browser systems (prompts.py): ready, first turn with the system prompt,
follow-up in the same chat (KV cache reused up to the longest common prefix), ~500-token
prompt in a new chat with 1 new token. Prints one JSON object on stdout.

    python -m smolchat_bench.native ort --bundle DIR --threads 2 --max-tokens 128 --reps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from . import prompts
from .paths import BENCH_CACHE

LLAMA_CPP_TARGET = BENCH_CACHE / "llama_cpp_py"


def _now_ms() -> float:
    return time.perf_counter() * 1000.0


# ---------------------------------------------------------------- onnxruntime, runtime form

class OrtChat:
    """Greedy chat on an ORT session with the README's runtime graph I/O. KV cache held as
    numpy arrays: past[i] = (key, value), each [1, 3, past, 64] float32."""

    def __init__(self, session, tokenizer, chat_template: str, eos_ids: tuple[int, ...]):
        import jinja2
        self.sess, self.tok, self.eos = session, tokenizer, set(eos_ids)
        self.template = jinja2.Environment().from_string(chat_template)
        self.in_names = [i.name for i in session.get_inputs()]
        self.out_names = [o.name for o in session.get_outputs()]
        self.kv_in = [n for n in self.in_names if n.startswith("past_key_values.")]
        # present.{i}.{key,value} -> past_key_values.{i}.{key,value}, read from the session
        self.kv_map = {n: "past_key_values." + n[len("present."):]
                       for n in self.out_names if n.startswith("present.")}
        self.kv_shape = {i.name: i.shape for i in session.get_inputs() if i.name in self.kv_in}
        self.reset(None)

    def reset(self, system_prompt: str | None) -> None:
        self.messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.cached: list[int] = []      # ids whose keys/values are in self.past
        self.past = None                 # name -> array [1, 3, len(cached), 64]

    def _empty_past(self):
        import numpy as np
        return {n: np.zeros((1, s[1], 0, s[3]), np.float32) for n, s in self.kv_shape.items()}

    def _forward(self, ids: list[int], prof: dict):
        """Run ids at positions len(cached).. ; returns the last position's logits [vocab]."""
        import numpy as np
        t0 = _now_ms()
        past = self.past if self.past is not None else self._empty_past()
        n0, n = len(self.cached), len(ids)
        feeds = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, n0 + n), np.int64),
                 "position_ids": np.arange(n0, n0 + n, dtype=np.int64)[None, :], **past}
        t1 = _now_ms()
        outs = self.sess.run(None, feeds)
        t2 = _now_ms()
        res = dict(zip(self.out_names, outs))
        self.past = {self.kv_map[k]: v for k, v in res.items() if k in self.kv_map}
        self.cached += ids
        logits = res["logits"].reshape(-1, res["logits"].shape[-1])[-1]
        t3 = _now_ms()
        prof["ort_run_ms"] += t2 - t1
        prof["python_ms"] += (t1 - t0) + (t3 - t2)
        return logits

    def _truncate(self, length: int) -> None:
        self.cached = self.cached[:length]
        if self.past is not None:
            self.past = {k: v[:, :, :length, :] for k, v in self.past.items()}

    def send(self, text: str, max_tokens: int) -> dict:
        """One chat turn: -> {t0, times[], tokens, promptTokens, text, profile}."""
        import numpy as np
        t0 = _now_ms()
        self.messages.append({"role": "user", "content": text})
        prompt = self.template.render(messages=self.messages, add_generation_prompt=True)
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        common = 0  # longest common prefix with what the cache holds
        for a, b in zip(self.cached, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        self._truncate(common)
        prof = {"ort_run_ms": 0.0, "python_ms": 0.0, "sampling_ms": 0.0, "steps": 0}
        logits = self._forward(ids[common:], prof)
        times, out = [], []
        step_prof = {"ort_run_ms": 0.0, "python_ms": 0.0, "sampling_ms": 0.0, "steps": 0}
        while True:
            ts = _now_ms()
            nxt = int(np.argmax(logits))
            te = _now_ms()
            (step_prof if out else prof)["sampling_ms"] += te - ts
            times.append(te)
            out.append(nxt)
            if nxt in self.eos or len(out) >= max_tokens:
                break
            logits = self._forward([nxt], step_prof)
            step_prof["steps"] += 1
        reply = self.tok.decode([t for t in out if t not in self.eos])
        self.messages.append({"role": "assistant", "content": reply})
        return {"t0": t0, "t1": _now_ms(), "times": times, "tokens": len(out),
                "promptTokens": len(ids), "text": reply,
                "extra": {"prefill_profile": prof, "decode_profile": step_prof}}


def run_ort(bundle: Path, threads: int, max_tokens: int, reps: int, long_text: str,
            contexts: dict | None = None) -> dict:
    from smolchat.runtime_form import load_session
    from tokenizers import Tokenizer
    import onnxruntime
    out = {"reps": []}
    for _ in range(reps):
        t0 = _now_ms()
        sess, man = load_session(bundle, threads)
        tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        cfg = json.loads((bundle / "tokenizer_config.json").read_text())
        gen = json.loads((bundle / "generation_config.json").read_text())
        eos = gen.get("eos_token_id", 2)
        chat = OrtChat(sess, tok, cfg["chat_template"], tuple(eos if isinstance(eos, list) else [eos]))
        ready = _now_ms() - t0
        out["reps"].append(_protocol(chat, ready, max_tokens, long_text, contexts))
        del chat, sess
    out["info"] = {"system": "onnxruntime-python", "version": onnxruntime.__version__,
                   "threads": threads, "model": f"{bundle.name} (runtime form)",
                   "bundle_id": man.get("bundle_id", bundle.name) if isinstance(man, dict) else bundle.name}
    return out


def _protocol(chat, ready_ms: float, max_tokens: int, long_text: str,
              contexts: dict | None = None) -> dict:
    chat.reset(prompts.SYSTEM_PROMPT)
    turns = {"first": chat.send(prompts.FIRST, max_tokens),
             "followup": chat.send(prompts.FOLLOW_UP, max_tokens)}
    chat.reset(None)
    turns["long"] = chat.send(long_text, 1)
    for name, text in (contexts or {}).items():     # the context sweep (prompts.py)
        chat.reset(None)
        turns[name] = chat.send(text, prompts.CONTEXT_TOKENS)
    return {"ready_cold_ms": ready_ms, "turns": turns}


# ---------------------------------------------------------------- llama.cpp (llama-cpp-python)

class LlamaChat:
    """llama-cpp-python's chat completion on the GGUF (its own ChatML template); the Llama
    object reuses the KV cache of the longest common prefix between calls."""

    def __init__(self, llm):
        self.llm = llm
        self.reset(None)

    def reset(self, system_prompt):
        self.messages = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def send(self, text: str, max_tokens: int) -> dict:
        self.messages.append({"role": "user", "content": text})
        t0, times, pieces = _now_ms(), [], []
        for chunk in self.llm.create_chat_completion(messages=self.messages, max_tokens=max_tokens,
                                                     temperature=0.0, stream=True):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                times.append(_now_ms())
                pieces.append(piece)
        reply = "".join(pieces)
        self.messages.append({"role": "assistant", "content": reply})
        return {"t0": t0, "t1": _now_ms(), "times": times, "tokens": None,
                "promptTokens": None, "text": reply, "extra": None}


def run_llamacpp(gguf: Path, threads: int, max_tokens: int, reps: int, long_text: str,
                 contexts: dict | None = None) -> dict:
    sys.path.insert(0, str(LLAMA_CPP_TARGET))
    import llama_cpp
    out = {"reps": []}
    for _ in range(reps):
        t0 = _now_ms()
        llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                              n_ctx=2048, n_batch=512, verbose=False)
        ready = _now_ms() - t0
        out["reps"].append(_protocol(LlamaChat(llm), ready, max_tokens, long_text, contexts))
        del llm
    out["info"] = {"system": "llama.cpp", "version": f"llama-cpp-python {llama_cpp.__version__}",
                   "threads": threads, "model": gguf.name}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m smolchat_bench.native")
    ap.add_argument("engine", choices=["ort", "llamacpp"])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--reps", type=int, required=True)
    ap.add_argument("--quick", action="store_true", help="the short long-prompt (prompts.py)")
    ap.add_argument("--contexts", action="store_true", help="the context sweep (prompts.py)")
    a = ap.parse_args(argv)
    long_text = prompts.long_prompt(a.quick)
    contexts = prompts.CONTEXTS if a.contexts else None
    if a.engine == "ort":
        res = run_ort(a.bundle, a.threads, a.max_tokens, a.reps, long_text, contexts)
    else:
        res = run_llamacpp(a.gguf, a.threads, a.max_tokens, a.reps, long_text, contexts)
    # ru_maxrss is KiB on Linux: the peak of this whole process, all repetitions included.
    res["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
