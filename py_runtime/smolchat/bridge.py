"""The Pyodide backend: ONNX Runtime Web + the JS tokenizer behind the Backend protocol, and
the entry points the Web Worker calls (web/src/worker.js).

This is the only module that imports `js`/`pyodide`. Those imports are lazy, so the module
imports in plain CPython: tests drive WorkerHost there over the fake backend
(tests/web/test_bridge_host.py); OrtWebBackend itself needs Pyodide (the browser tests).

- OrtWebBackend implements backend.py. Every tensor stays in JS: the KV cache and the logits
  belong to one JS runner object (`res.runner`, made by worker.js): web/src/ort_heap.js
  HeapRunner keeps them in ORT's wasm heap, web/src/ort_glue.js TensorRunner (the fallback) in
  ort.Tensors. A step is one call, `await runner.forward(ids)`, which returns the positions now
  cached; this module checks that against its own count. Vocabulary-wide work (top-k,
  repetition penalty, tokenization) happens in JS; Python sees k ids and logits.
  `runner.runMs` times the runs and the LM head kernel (lm_head.js) with performance.now()
  (`ort_run_ms`, for the engine's decode profile).
- WorkerHost wraps a ChatEngine for the worker: every method returns a JSON string
  {"ok": result} or {"error": SmolChatError.to_dict()}, so no Python object crosses to JS.

Proxy discipline: JS values reach Python as JsProxy objects, released when their last Python
reference goes (refcounting), so per-token proxies are locals or replace the previous one.
Python values go to JS only as str/int/float/bool or through to_js (plain JS copies), so no
PyProxy is ever created per token.

What this module ignores: chat templates, sampling, stop rules (engine.py); fetching and
expanding the bundle and creating the session (web/src/bundle_loader.js).
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from .errors import KVCacheMismatch, ModelNotLoaded, OutOfMemory, SmolChatError
from .vocab import ByteVocab, bundle_facts, model_facts

def _to_js(value):
    from pyodide.ffi import to_js
    import js
    return to_js(value, dict_converter=js.Object.fromEntries)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

class BundleTexts:
    """The bundle's text files parsed: what OrtWebBackend reads of them. It needs no session,
    so worker.js has it made (WorkerHost.prepare) while it waits for model.data; parsing the
    2 MB tokenizer.json and building the byte vocabulary took ~0.1-0.2 s of the load's
    `engine_load` stage after the session. `texts` is the JS object of res.texts."""

    def __init__(self, texts):
        #: the manifest's own text: load() uses this parse only for the same bundle
        self.manifest_text = str(texts.manifest)
        tok_json = json.loads(texts.tokenizer_json)
        self.manifest = json.loads(self.manifest_text)
        self.config = json.loads(texts.config)
        self.generation_config = json.loads(texts.generation_config)
        self.facts = bundle_facts(tok_json, json.loads(texts.tokenizer_config), self.config,
                                  self.generation_config)
        self.token_bytes = ByteVocab(tok_json)


class OrtWebBackend:
    """Backend over an ort.InferenceSession (WASM EP) created in JS.

    `res` is a JS object from worker.js: {session, runner, kvCacheNote, tokenizer, glue,
    texts: {tokenizer_json, tokenizer_config, config, generation_config, manifest}, threads,
    crossOriginIsolated, versions: {ort, pyodide}, bundleUrl}.
    """

    def __init__(self, res, parsed: BundleTexts | None = None):
        # (`parsed`: res.texts parsed ahead by WorkerHost.prepare, used when it is this bundle's)
        if parsed is None or parsed.manifest_text != str(res.texts.manifest):
            parsed = BundleTexts(res.texts)
        self.manifest = parsed.manifest
        self.config = parsed.config
        #: generation_config.json as a dict (the engine's default settings come from it)
        self.generation_config = parsed.generation_config
        facts = parsed.facts
        self.chat_template: str = facts["chat_template"]
        self.template_tokens: dict = facts["template_tokens"]
        self.special_tokens: dict[str, int] = facts["special_tokens"]
        self.eos_token_ids: tuple[int, ...] = facts["eos_token_ids"]
        self.max_context: int = facts["max_context"]
        self._token_bytes = parsed.token_bytes

        self._session = res.session
        self._runner = res.runner    # HeapRunner | TensorRunner (see the module docstring)
        self._kv_cache = str(res.runner.kind)
        self._kv_cache_note = str(res.kvCacheNote) or None   # why not the heap ("": it is)
        self._lm_head = str(res.lmHead)                    # 'kernel' | 'ort' (lm_head.js)
        self._lm_head_note = str(res.lmHeadNote) or None   # why ORT computes it ("": it does not)
        self._tokenizer = res.tokenizer
        self._glue = res.glue
        self._threads = int(res.threads)
        self._isolated = bool(res.crossOriginIsolated)
        self._versions = res.versions.to_py()
        self._bundle_url = str(res.bundleUrl)
        inputs = list(self._session.inputNames.to_py())
        self._kv_count = sum(1 for n in inputs if n.startswith("past_key_values."))
        self._has_logits = False
        self._length = 0     # positions in the KV cache

    # -- protocol ---------------------------------------------------------------------------
    def info(self) -> dict:
        m = self.manifest
        return {
            **model_facts(m, self.config),
            "bundle_hash": m.get("bundle_hash"),
            "compute": (m.get("runtime") or {}).get("compute"),
            "backend": "onnxruntime-web",
            "execution_provider": "wasm",
            "threads": self._threads,
            "cross_origin_isolated": self._isolated,
            "max_context": self.max_context,
            "kv_tensors": self._kv_count,
            "kv_cache": "wasm-heap" if self._kv_cache == "heap" else "js-tensors",
            "kv_cache_note": self._kv_cache_note,
            "lm_head": self._lm_head,
            "lm_head_note": self._lm_head_note,
            "bundle_url": self._bundle_url,
            "ort_version": self._versions.get("ort"),
            "pyodide_version": self._versions.get("pyodide"),
            "python_version": sys.version.split()[0],
        }

    def encode(self, text: str) -> list[int]:
        ids = self._glue.encode(self._tokenizer, text)
        return ids.to_py()

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes(token_id)

    @property
    def cache_length(self) -> int:
        return self._length

    @property
    def ort_run_ms(self) -> float:
        """ms inside session.run since the worker started (JS clock, a running total)."""
        return float(self._runner.runMs)

    async def forward(self, token_ids: Sequence[int]) -> None:
        if self._session is None:
            raise ModelNotLoaded("the model was unloaded: load it again")
        n = len(token_ids)
        if n < 1:
            raise ValueError("forward needs at least one token")
        past = self._length
        self._has_logits = False
        try:
            length = int(await self._runner.forward(_to_js(list(token_ids))))
        except Exception as e:  # ORT throws plain Errors; OOM is the one users can act on
            text = str(e)
            if self._glue.isOutOfMemory(text):
                raise OutOfMemory("the browser ran out of memory while running the model: "
                                  "close other tabs, shorten the chat, or reload") from e
            if "kv_mismatch: " in text:
                raise KVCacheMismatch(text.split("kv_mismatch: ", 1)[1]) from e
            raise
        if length != past + n:
            raise KVCacheMismatch(f"the runtime holds {length} cached positions, expected "
                                  f"{past + n}: the bundle's graph does not match the runtime")
        self._length = length
        self._has_logits = True

    async def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise KVCacheMismatch(f"truncate({length}) with {self._length} cached positions")
        if length == self._length:
            return
        self._runner.truncate(length)
        self._has_logits = False
        self._length = length

    def candidates(self, k: int, repetition_penalty: float = 1.0,
                   penalty_ids: Sequence[int] = (), *, count_ids: Sequence[int] = (),
                   counts: Sequence[int] = (), frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, logsumexp: bool = False):
        if not self._has_logits:
            raise KVCacheMismatch("candidates() before forward(): no logits yet")
        ids_js = _to_js(list(penalty_ids)) if repetition_penalty != 1.0 and penalty_ids else None
        if count_ids and (frequency_penalty or presence_penalty) or logsumexp:
            counted = bool(count_ids) and bool(frequency_penalty or presence_penalty)
            got = self._runner.topK(int(k), float(repetition_penalty), ids_js,
                                    _to_js(list(count_ids)) if counted else None,
                                    _to_js(list(counts)) if counted else None,
                                    float(frequency_penalty), float(presence_penalty),
                                    bool(logsumexp)).to_py()
            return tuple(got)
        pair = self._runner.topK(int(k), float(repetition_penalty), ids_js)
        ids, values = pair.to_py()
        return ids, values

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.dispose()
            self._runner = None
        if self._session is not None:
            await self._session.release()
            self._session = None
        self._has_logits = False
        self._length = 0

    def live_tensors(self) -> int:
        """ort.Tensors created by the runner and not yet disposed: 60 KV + 1 logits at rest on
        the JS-tensor path, 0 on the heap path (its heap blocks: heap_blocks())."""
        return int(self._runner.liveTensors()) if self._runner is not None else 0

    def heap_blocks(self) -> int | None:
        """Heap blocks the heap runner holds (constant between steps once grown), else None."""
        if self._runner is None or self._kv_cache != "heap":
            return None
        return int(self._runner.heapBlocks())


# ---------------------------------------------------------------------------------------------
# Worker entry points: JSON strings in and out
# ---------------------------------------------------------------------------------------------

def _ok(value) -> str:
    return json.dumps({"ok": value})


def _err(e: BaseException) -> str:
    if isinstance(e, SmolChatError):
        return json.dumps({"error": e.to_dict()})
    if isinstance(e, MemoryError):
        return json.dumps({"error": OutOfMemory(
            "Python ran out of memory: reload the page").to_dict()})
    import traceback
    return json.dumps({"error": {"kind": "internal", "name": type(e).__name__,
                                 "message": f"{type(e).__name__}: {e}",
                                 "details": {"traceback": traceback.format_exc()[-4000:]}}})


MODES = ("chat", "instruct", "generate")


class WorkerHost:
    """One ChatEngine per worker. worker.js serializes the calls that change state."""

    def __init__(self):
        self.engine = None
        self.backend = None
        self._streams: dict[int, object] = {}
        # ids cancelled after worker.js started them but before run() registered their stream
        # (the coroutine starts on the next event-loop turn); run() cancels them at once
        self._cancel_early: set[int] = set()
        self._parsed: BundleTexts | None = None   # prepare()'s, taken by load()

    def _need(self):
        if self.engine is None:
            raise ModelNotLoaded("the model is not loaded yet: call load() and wait for it")
        return self.engine

    def prepare(self, texts) -> str:
        """Parse the bundle's text files (res.texts' shape) ahead of load(), while worker.js
        waits for model.data. Never an error: load() parses again whatever this could not,
        and reports it there."""
        try:
            self._parsed = BundleTexts(texts)
        except Exception:
            self._parsed = None
        return _ok(None)

    async def load(self, res, options_json: str = "{}") -> str:
        try:
            from .engine import ChatEngine
            options = json.loads(options_json)
            parsed, self._parsed = self._parsed, None
            self.backend = OrtWebBackend(res, parsed)
            window = min(int(options.get("context_window", 2048)), self.backend.max_context)
            self.engine = ChatEngine(self.backend, context_window=window,
                                     system_prompt=options.get("system_prompt"))
            return _ok(self.engine.info())
        except Exception as e:
            return _err(e)

    async def warmup(self) -> str:
        try:
            await self._need().warmup()
            return _ok(None)
        except Exception as e:
            return _err(e)

    async def run(self, req_id: int, mode: str, message: str, settings_json: str,
                  on_piece) -> str:
        """Stream one reply: on_piece(text) per complete-UTF-8 piece; returns reply.to_dict()."""
        try:
            engine = self._need()
            if mode not in MODES:
                raise SmolChatError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
            settings = json.loads(settings_json)
            stream = getattr(engine, mode)(message, **settings)
            self._streams[req_id] = stream
            if req_id in self._cancel_early:
                stream.cancel()                  # before it started: it changes nothing
            async for piece in stream:
                on_piece(piece)
            reply = await stream.result()
            return _ok(reply.to_dict())
        except Exception as e:
            return _err(e)
        finally:
            self._streams.pop(req_id, None)
            self._cancel_early.discard(req_id)

    def cancel(self, req_id: int) -> bool:
        """Stop the stream of request `req_id` (True), or remember the id for run() when it is
        not running yet (False; worker.js only cancels requests it has started)."""
        stream = self._streams.get(req_id)
        if stream is None:
            self._cancel_early.add(req_id)
            return False
        stream.cancel()
        return True

    def call(self, name: str, args_json: str = "[]") -> str:
        """Synchronous engine calls: set_system_prompt, clear, history, load_history, info,
        health, decode, apply_chat_template."""
        try:
            engine = self._need()
            if name not in ("set_system_prompt", "clear", "history", "load_history", "info",
                            "health", "decode", "apply_chat_template"):
                raise SmolChatError(f"unknown call {name!r}")
            result = getattr(engine, name)(*json.loads(args_json))
            if name == "health" and isinstance(result, dict) and self.backend is not None:
                result = {**result, "live_tensors": self.backend.live_tensors(),
                          "heap_blocks": self.backend.heap_blocks()}
            return _ok(result)
        except Exception as e:
            return _err(e)

    async def unload(self) -> str:
        try:
            for stream in list(self._streams.values()):
                stream.cancel()
            if self.backend is not None:
                await self.backend.close()
            self.engine = None
            self.backend = None
            return _ok(None)
        except Exception as e:
            return _err(e)
