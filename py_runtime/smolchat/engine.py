"""The chat engine: conversation, modes, context budget, KV-cache reuse, the decode loop.

    engine = ChatEngine(backend)                       # backend: see backend.py
    stream = engine.chat("Hi, my name is Alice", temperature=0)
    async for piece in stream: print(piece, end="")
    reply = await stream.result()                      # Reply: text, finish_reason, timings

Modes: `chat` (with history), `instruct` (one instruction, its own system prompt, no
history, does not touch the chat), `generate` (raw continuation, no template).

The engine keeps the exact token list the backend's KV cache holds (`_cache`) and checks
`backend.cache_length` against it around every forward. Each call renders its whole prompt
to ids, keeps the longest common prefix with the cache (`backend.truncate`) and forwards
only the rest: after the first turn that is the new suffix only; the system prompt's
prefix survives `clear()` and instruct calls that share it.

Context budget (`context_window`, default 2048): prompt + max_tokens must fit. Chat drops
the oldest whole exchanges (never the system prompt, never the current message); once it
has to drop, it drops until a quarter of the window is free as well, so the next few turns
reuse the cache instead of re-prefilling after every message. If the system prompt and
the current message alone cannot fit, `ContextWindowExceeded` says the sizes.
`history()` still returns every message; dropped exchanges are only hidden from the model.

Stops, each named in `finish_reason` (FINISH_REASONS): `stop` (eos, a ChatML control token
or a stop string), `repetition` (the reply started saying one span over and over:
repetition.py; on by default, setting `repetition_stop`; it only watches, so every token
before it is what the reply would have had without it), `length` (max_tokens), `context`
(the window is full), `abort` (cancelled).

Streams run lazily: nothing happens until the stream is iterated or `result()` is awaited;
then one task produces pieces into a queue (an abandoned iteration never leaves the engine
stuck). Calls queue behind each other on one lock. Abort (`stream.cancel()`) stops within
one token; a chat exchange whose run had started stays in history with the text streamed
so far (possibly empty): what the user saw is what the model will see next turn.

What this module ignores: tokenization and tensors (backend), template syntax
(chat_template.py), the sampling maths (sampling.py), UTF-8 and stop-string text
assembly (streaming.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from . import __version__
from .chat_template import IM_END, IM_START, ChatTemplate
from .errors import (ContextWindowExceeded, InvalidInput, InvalidSetting, KVCacheMismatch,
                     SmolChatError)
from .repetition import RepetitionStop
from .sampling import sample
from .settings import GenerationSettings, limits, resolve
from .streaming import StopMatcher, Utf8Decoder

DEFAULT_CONTEXT_WINDOW = 2048
MIN_CONTEXT_WINDOW = 64
PREFILL_CHUNK = 256          # tokens per prefill forward: bounds attention memory, allows abort
TRIM_FREE_FRACTION = 4       # after a trim, 1/4 of the window is left free (see module doc)
FINISH_REASONS = ("stop", "length", "abort", "context", "repetition")
PROFILE_PARTS = ("ort_run_ms", "interop_ms", "sampling_ms", "python_ms")   # Reply.profile


def _empty_profile() -> dict:
    return {**dict.fromkeys(PROFILE_PARTS, 0.0), "steps": 0}


@dataclass
class Reply:
    text: str = ""
    finish_reason: str = "abort"
    prompt_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)   # eos included when sampled
    ttft_ms: float = 0.0        # run start -> first token sampled (prefill included)
    prefill_ms: float = 0.0     # forwards of the prompt suffix not already cached
    decode_tok_s: float = 0.0   # tokens after the first / time after the first
    total_ms: float = 0.0
    seed: int | None = None
    cached_prompt_tokens: int = 0   # prompt tokens reused from the KV cache (not forwarded)
    dropped_exchanges: int = 0      # oldest chat exchanges hidden from the model this turn
    # Where the decode steps' time went (ms, sums over the reply; prefill and the first
    # token are excluded: see prefill_ms, ttft_ms). A step forwards one generated token, then
    # picks, detokenises, checks and streams the next one, so steps = completion_tokens - 1,
    # or completion_tokens after an abort (the last token was forwarded before the cancel was
    # seen). ort_run_ms: inside the runtime's run (backend.ort_run_ms); interop_ms: the rest
    # of backend.forward (feeds, outputs, in Pyodide the JS <-> Python hops); sampling_ms:
    # backend.candidates + sampling.sample; python_ms: the rest (loop, detokenising, stops,
    # streaming). The four parts sum to the steps' wall time (first decode forward -> end).
    profile: dict = field(default_factory=_empty_profile)
    # With settings.logprobs: one entry per generated token (eos included), OpenAI's shape
    # plus the id: {token_id, token, bytes, logprob, top_logprobs: [{token_id, token, bytes,
    # logprob}]}; logprob = the log-softmax over the whole vocabulary of the logits after the
    # penalties, before temperature, top-k and top-p (what the model and penalties say).
    logprobs: list | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.output_token_ids)

    def to_dict(self) -> dict:
        return {
            "text": self.text, "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "prompt_token_ids": list(self.prompt_token_ids),
            "output_token_ids": list(self.output_token_ids),
            "timings": {"ttft_ms": round(self.ttft_ms, 2), "prefill_ms": round(self.prefill_ms, 2),
                        "decode_tok_s": round(self.decode_tok_s, 2),
                        "total_ms": round(self.total_ms, 2)},
            "seed": self.seed, "cached_prompt_tokens": self.cached_prompt_tokens,
            "dropped_exchanges": self.dropped_exchanges,
            "profile": {**{k: round(self.profile[k], 3) for k in PROFILE_PARTS},
                        "steps": self.profile["steps"]},
            "logprobs": self.logprobs,
        }


_DONE = object()


class ReplyStream:
    """Async iterator of complete-UTF-8 text pieces; `result()` gives the Reply."""

    def __init__(self, engine: "ChatEngine", mode: str, text: str, settings: GenerationSettings):
        self._engine, self.mode, self._text, self.settings = engine, mode, text, settings
        self.cancelled = False
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._finished = False

    def cancel(self) -> None:
        """Stop within one token (finish_reason 'abort'). Safe to call at any time."""
        self.cancelled = True

    def _start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.ensure_future(self._produce())

    async def _produce(self) -> Reply:
        try:
            return await self._engine._run(self)
        finally:
            self._queue.put_nowait(_DONE)

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> str:
        self._start()
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _DONE:
            self._finished = True
            await self._task            # raises the run's error, if any
            raise StopAsyncIteration
        return item

    async def result(self) -> Reply:
        """The final Reply (drives the run to the end if nobody iterates)."""
        self._start()
        return await asyncio.shield(self._task)

    def _emit(self, piece: str) -> None:
        if piece:
            self._queue.put_nowait(piece)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatEngine:
    def __init__(self, backend, context_window: int = DEFAULT_CONTEXT_WINDOW,
                 system_prompt: str | None = None, defaults=None,
                 instruct_system_prompt: str | None = None):
        max_context = int(backend.max_context)
        if (isinstance(context_window, bool) or not isinstance(context_window, int)
                or not MIN_CONTEXT_WINDOW <= context_window <= max_context):
            raise InvalidSetting("context_window", context_window,
                                 f"an integer in [{MIN_CONTEXT_WINDOW}, {max_context}]")
        self.backend = backend
        self.context_window = context_window
        self.template = ChatTemplate(backend.chat_template, backend.special_tokens, backend.encode,
                                     getattr(backend, "template_tokens", None))
        base = GenerationSettings.from_generation_config(getattr(backend, "generation_config", None))
        if isinstance(defaults, GenerationSettings):
            self.defaults = resolve(base, defaults.to_dict())
        else:
            self.defaults = resolve(base, defaults)
        _check_text("system_prompt", system_prompt, optional=True)
        _check_text("instruct_system_prompt", instruct_system_prompt, optional=True)
        self._system_prompt = system_prompt
        self._instruct_system_prompt = instruct_system_prompt
        specials = backend.special_tokens
        self._stop_ids = frozenset(backend.eos_token_ids) | frozenset(
            specials[s] for s in (IM_START, IM_END, "<|endoftext|>") if s in specials)
        self._messages: list[dict] = []   # user/assistant alternating, whole exchanges
        self._window_start = 0            # first exchange the model sees
        # ids the backend KV cache holds; None = unknown (a used backend): the first run
        # empties it with truncate(0)
        self._cache: list[int] | None = [] if backend.cache_length == 0 else None
        self._lock = asyncio.Lock()
        self._epoch = 0                   # bumped when the conversation is replaced
        self._active: ReplyStream | None = None
        self._status, self._reason = "ready", None

    # ------------------------------------------------------------------ conversation

    @property
    def system_prompt(self) -> str | None:
        """The system prompt in effect (the template default when none was set)."""
        return self._system_prompt if self._system_prompt is not None \
            else self.template.default_system_prompt

    @property
    def instruct_system_prompt(self) -> str | None:
        return self._instruct_system_prompt if self._instruct_system_prompt is not None \
            else self.template.default_system_prompt

    def set_system_prompt(self, text: str | None) -> None:
        """New system prompt (None: the template's default); resets the conversation."""
        _check_text("system_prompt", text, optional=True)
        self._reset()
        self._system_prompt = text

    def set_instruct_system_prompt(self, text: str | None) -> None:
        _check_text("instruct_system_prompt", text, optional=True)
        self._instruct_system_prompt = text

    def clear(self) -> None:
        """Forget the conversation; keep the system prompt (and its KV cache)."""
        self._reset()

    def history(self) -> list[dict]:
        """[{role, content}], JSON-serialisable. Starts with the system message only when a
        custom system prompt is set, so that load_history(history()) restores it."""
        head = [] if self._system_prompt is None else [
            {"role": "system", "content": self._system_prompt}]
        return head + [dict(m) for m in self._messages]

    def load_history(self, messages: list) -> None:
        """Replace the conversation: an optional leading system message (sets the system
        prompt; without one the current system prompt stays) then whole user/assistant
        exchanges. Keys other than role and content are ignored. Nothing changes on error."""
        if not isinstance(messages, (list, tuple)):
            raise InvalidInput("history must be a list of {role, content} messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                    or m.get("role") not in ("system", "user", "assistant"):
                raise InvalidInput(f"history[{i}] must be {{'role': 'system'|'user'|'assistant', "
                                   f"'content': str}}, got {m!r:.80}", index=i)
            clean.append({"role": m["role"], "content": m["content"]})
        system = clean.pop(0)["content"] if clean and clean[0]["role"] == "system" else None
        for i, m in enumerate(clean):
            want = "user" if i % 2 == 0 else "assistant"
            if m["role"] != want:
                raise InvalidInput(f"history message {i + (system is not None)} has role "
                                   f"{m['role']!r} where {want!r} was expected: history is an "
                                   "optional system message then user/assistant pairs", index=i)
        if len(clean) % 2:
            raise InvalidInput("history ends with a user message without a reply: drop it or "
                               "send it with chat()")
        self._reset()
        if system is not None:
            self._system_prompt = system
        self._messages = clean

    def _reset(self) -> None:
        if self._active is not None and self._active.mode == "chat":
            self._active.cancel()                 # its exchange belongs to the old chat
        self._epoch += 1
        self._messages = []
        self._window_start = 0

    # ------------------------------------------------------------------ status

    def info(self) -> dict:
        info = dict(self.backend.info())
        info.update({
            "engine": f"smolchat {__version__}",
            "context_window": self.context_window,
            "system_prompt": self.system_prompt,
            "default_system_prompt": self.template.default_system_prompt,
            "instruct_system_prompt": self.instruct_system_prompt,
            "defaults": self.defaults.to_dict(),
            "limits": limits(),
            "cached_tokens": len(self._cache or ()),
            "exchanges": len(self._messages) // 2,
        })
        return info

    def health(self) -> dict:
        return {"status": self._status, "reason": self._reason}

    # ------------------------------------------------------------------ tokenizer

    def decode(self, ids: list) -> str:
        """Token ids -> text (UTF-8; control tokens as their text, broken bytes as U+FFFD)."""
        if not isinstance(ids, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise InvalidInput("decode takes a list of token ids (non-negative integers)")
        return b"".join(self.backend.token_bytes(i) for i in ids).decode("utf-8", "replace")

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True) -> list[int]:
        """Messages -> the prompt ids chat() would feed for them: without a leading system
        message the current system prompt (or the model's default) comes first."""
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages):
            raise InvalidInput("apply_chat_template takes a list of {role: 'system'|'user'|"
                               "'assistant', content: str} messages")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not (messages and messages[0]["role"] == "system") and self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.template.render_ids(messages, bool(add_generation_prompt))

    # ------------------------------------------------------------------ entry points

    def chat(self, message: str, **settings) -> ReplyStream:
        """Answer `message` in the conversation."""
        return self._stream("chat", "message", message, settings)

    def instruct(self, instruction: str, **settings) -> ReplyStream:
        """Answer one instruction on its own (instruct system prompt, no history)."""
        return self._stream("instruct", "instruction", instruction, settings)

    def generate(self, prompt: str, **settings) -> ReplyStream:
        """Continue raw text (no chat template; special-token text stays plain text)."""
        if isinstance(prompt, str) and not prompt:
            raise InvalidInput("generate needs a non-empty prompt")
        return self._stream("generate", "prompt", prompt, settings)

    def _stream(self, mode: str, name: str, text, settings: dict) -> ReplyStream:
        _check_text(name, text)
        resolved = resolve(self.defaults, settings)
        if self._active is None and not self._lock.locked():
            self._plan(mode, text, resolved)     # raises ContextWindowExceeded now, if it will
        return ReplyStream(self, mode, text, resolved)

    async def warmup(self) -> int:
        """Prefill the chat's current prefix (system prompt and kept history) so the next
        turn's time to first token is small. Returns the tokens forwarded."""
        async with self._lock:
            self._status = "loading"
            try:
                ids = self._system_ids(self.system_prompt)
                kept = [t for ex in self._exchange_ids()[self._window_start:] for t in ex]
                if len(ids) + len(kept) + self.defaults.max_tokens <= self.context_window:
                    ids += kept
                forwarded = await self._sync_prefix(ids, None) if ids else 0
            except BaseException as err:
                self._fail(err)
                raise
            self._status, self._reason = "ready", None
            return forwarded

    async def close(self) -> None:
        await self.backend.close()

    # ------------------------------------------------------------------ prompts

    def _system_ids(self, system: str | None) -> list[int]:
        return self.template.system_ids(system)

    def _exchange_ids(self) -> list[list[int]]:
        m = self._messages
        return [self.template.message_ids("user", m[i]["content"])
                + self.template.message_ids("assistant", m[i + 1]["content"])
                for i in range(0, len(m) - 1, 2)]

    def _plan(self, mode: str, text: str, settings: GenerationSettings) -> tuple[list[int], int]:
        """(prompt ids, first exchange kept) for a call, or ContextWindowExceeded."""
        window, max_tokens = self.context_window, settings.max_tokens
        if mode == "generate":
            fixed = self.template.encode_plain(text)
        else:
            system = self._system_ids(self.instruct_system_prompt if mode == "instruct"
                                      else self.system_prompt)
            fixed = system + self.template.message_ids("user", text)
            fixed += self.template.generation_prompt_ids()
        if len(fixed) + max_tokens > window:
            raise ContextWindowExceeded(len(fixed) + max_tokens, window, len(fixed), max_tokens)
        if mode != "chat":
            return fixed, 0
        exchanges = self._exchange_ids()
        start = min(self._window_start, len(exchanges))
        used = len(fixed) + sum(len(e) for e in exchanges[start:])
        if used + max_tokens > window:
            target = window - max_tokens - window // TRIM_FREE_FRACTION
            while start < len(exchanges) and used > target:
                used -= len(exchanges[start])
                start += 1
        system = self._system_ids(self.system_prompt)
        ids = system + [t for e in exchanges[start:] for t in e] + fixed[len(system):]
        return ids, start

    # ------------------------------------------------------------------ the run

    async def _run(self, stream: ReplyStream) -> Reply:
        async with self._lock:
            reply = Reply(finish_reason="abort")
            if stream.cancelled:
                return reply
            epoch = self._epoch
            self._active = stream
            try:
                prompt, start = self._plan(stream.mode, stream._text, stream.settings)
                if stream.mode == "chat":
                    reply.dropped_exchanges = start
                    self._window_start = start
                    self._messages.append({"role": "user", "content": stream._text})
                try:
                    await self._decode(stream, prompt, reply)
                except BaseException as err:
                    if stream.mode == "chat" and epoch == self._epoch:
                        self._messages.pop()          # the turn never happened
                    self._fail(err)
                    raise
                if stream.mode == "chat" and epoch == self._epoch:
                    self._messages.append({"role": "assistant", "content": reply.text})
                self._status, self._reason = "ready", None
                return reply
            finally:
                self._active = None

    def _fail(self, err: BaseException) -> None:
        """After an error mid-run the backend cache is unknown: the next run starts over."""
        if isinstance(err, ContextWindowExceeded):
            return
        self._cache = None
        if not isinstance(err, (SmolChatError, asyncio.CancelledError)) or \
                isinstance(err, KVCacheMismatch):
            self._status, self._reason = "error", f"{type(err).__name__}: {err}"

    async def _forward(self, ids: list[int]) -> float:
        """backend.forward(ids) with the cache checked around it; returns its seconds."""
        b = self.backend
        if b.cache_length != len(self._cache):
            raise KVCacheMismatch(f"backend cache holds {b.cache_length} positions, engine "
                                  f"expected {len(self._cache)}: this is a bug, please report it",
                                  backend=b.cache_length, engine=len(self._cache))
        t = time.perf_counter()
        await b.forward(ids)
        t = time.perf_counter() - t
        self._cache.extend(ids)
        if b.cache_length != len(self._cache):
            raise KVCacheMismatch(f"after forwarding {len(ids)} tokens the backend cache holds "
                                  f"{b.cache_length} positions, engine expected "
                                  f"{len(self._cache)}: this is a bug, please report it",
                                  backend=b.cache_length, engine=len(self._cache))
        return t

    async def _sync_prefix(self, prompt: list[int], stream: ReplyStream | None) -> int:
        """Make the cache hold exactly `prompt` (reusing the longest common prefix) with
        fresh logits for its last position. Returns the tokens forwarded."""
        if self._cache is None:
            await self.backend.truncate(0)
            self._cache = []
        keep = min(_common_prefix(self._cache, prompt), len(prompt) - 1)
        if keep < len(self._cache):
            await self.backend.truncate(keep)
            del self._cache[keep:]
        forwarded = 0
        for i in range(keep, len(prompt), PREFILL_CHUNK):
            if stream is not None and stream.cancelled:
                break
            chunk = prompt[i:i + PREFILL_CHUNK]
            await self._forward(chunk)
            forwarded += len(chunk)
        return forwarded

    def _logprob_entry(self, token: int, ids, logits, lse: float, top: int) -> dict:
        """One Reply.logprobs entry: the chosen token and the `top` best candidates (ids come
        best first, so the first `top` are the most likely)."""
        entry = _token_entry(self.backend, token, float(logits[ids.index(token)]) - lse)
        entry["top_logprobs"] = [_token_entry(self.backend, i, float(v) - lse)
                                 for i, v in zip(ids[:top], logits[:top])]
        return entry

    async def _decode(self, stream: ReplyStream, prompt: list[int], reply: Reply) -> None:
        s, b = stream.settings, self.backend
        t0 = time.perf_counter()
        reply.prompt_token_ids = prompt
        reply.cached_prompt_tokens = min(_common_prefix(self._cache or [], prompt), len(prompt) - 1)
        await self._sync_prefix(prompt, stream)
        t_first = time.perf_counter()
        reply.prefill_ms = (t_first - t0) * 1000
        reply.seed = s.seed if s.seed is not None else random.randrange(2**32)
        rng = random.Random(reply.seed)
        k = 1 if s.temperature == 0 else s.top_k
        extra = {}                            # the backend's optional candidate arguments
        if s.logprobs:
            k = max(k, s.top_logprobs)        # sample() still keeps only top_k of them
            extra["logsumexp"] = True
            reply.logprobs = []
        counts = {} if (s.frequency_penalty or s.presence_penalty) else None
        decoder, stops = Utf8Decoder(), StopMatcher(s.stop)
        looping = RepetitionStop() if s.repetition_stop else None   # watches, never picks
        out, pieces = reply.output_token_ids, []
        penalty = s.repetition_penalty != 1.0
        seen = set(self._cache) if penalty else None
        finish, stopped = None, False
        forward_s = sampling_s = 0.0         # decode steps only (Reply.profile)
        t_steps, ort_ms0, steps = 0.0, 0.0, 0
        while finish is None:
            if stream.cancelled:
                finish = "abort"
                break
            t_pick = time.perf_counter()
            if counts:
                extra.update(count_ids=list(counts), counts=list(counts.values()),
                             frequency_penalty=s.frequency_penalty,
                             presence_penalty=s.presence_penalty)
            got = b.candidates(k, s.repetition_penalty, sorted(seen) if penalty else (), **extra)
            ids, logits = got[0], got[1]
            token = sample(ids, logits, s, rng)
            if counts is not None:
                counts[token] = counts.get(token, 0) + 1
            if s.logprobs:
                reply.logprobs.append(self._logprob_entry(token, ids, logits, got[2], s.top_logprobs))
            t_picked = time.perf_counter()
            out.append(token)
            if len(out) == 1:
                t_first = t_picked
                reply.ttft_ms = (t_first - t0) * 1000
            else:
                sampling_s += t_picked - t_pick
            if token in self._stop_ids:
                finish = "stop"
                break
            piece, stopped = stops.push(decoder.feed(b.token_bytes(token)))
            if piece:
                pieces.append(piece)
                stream._emit(piece)
                await asyncio.sleep(0)        # let the consumer show it now
            if stopped:
                finish = "stop"
            elif looping is not None and looping.push(token):
                finish = "repetition"
            elif len(out) >= s.max_tokens:
                finish = "length"
            elif len(self._cache) >= self.context_window:
                finish = "context"
            else:
                if not steps:
                    t_steps, ort_ms0 = time.perf_counter(), getattr(b, "ort_run_ms", 0.0)
                forward_s += await self._forward([token])
                steps += 1
                if penalty:
                    seen.add(token)
        if steps:
            t_loop = time.perf_counter()
            ort_ms = getattr(b, "ort_run_ms", 0.0) - ort_ms0
            parts = {"ort_run_ms": ort_ms, "interop_ms": max(0.0, forward_s * 1000 - ort_ms),
                     "sampling_ms": sampling_s * 1000}
            parts["python_ms"] = max(0.0, (t_loop - t_steps) * 1000 - sum(parts.values()))
            reply.profile = {**parts, "steps": steps}
        if not stopped:                       # held-back text was not a stop string
            tail = stops.flush()
            if tail:
                pieces.append(tail)
                stream._emit(tail)
        decoder.finish()
        reply.finish_reason = finish
        reply.text = "".join(pieces)
        t_end = time.perf_counter()
        reply.total_ms = (t_end - t0) * 1000
        if len(out) > 1 and t_end > t_first:
            reply.decode_tok_s = (len(out) - 1) / (t_end - t_first)


def _token_entry(backend, token_id: int, logprob: float) -> dict:
    raw = backend.token_bytes(token_id)
    return {"token_id": token_id, "token": raw.decode("utf-8", "replace"), "bytes": list(raw),
            "logprob": logprob}


def _check_text(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}", field=name)
