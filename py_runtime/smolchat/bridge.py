"""The Pyodide backend: ONNX Runtime Web + the JS tokenizer behind the Backend protocol, and
the entry points the Web Worker calls (web/src/worker.js).

This is the only module that imports `js`/`pyodide`. Those imports are lazy, so the module
imports in plain CPython: tests drive WorkerHost there over the fake backend
(tests/web/test_bridge_host.py); OrtWebBackend itself needs Pyodide (the browser tests).

- OrtWebBackend implements backend.py. Every tensor stays in JS: the KV cache is ONE JS array
  of ort.Tensor (order: the session's past_key_values.* input names) held by one JsProxy;
  after each step the replaced tensors are disposed. Vocabulary-wide work (top-k, repetition
  penalty, tokenization) happens in JS (web/src/ort_glue.js); Python sees k ids and logits.
  session.run is awaited through glue.run, which times it with performance.now()
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

class OrtWebBackend:
    """Backend over an ort.InferenceSession (WASM EP) created in JS.

    `res` is a JS object from worker.js: {session, tokenizer, glue, texts: {tokenizer_json,
    tokenizer_config, config, generation_config, manifest}, threads, crossOriginIsolated,
    versions: {ort, pyodide}, bundleUrl}.
    """

    def __init__(self, res):
        texts = res.texts
        tok_json = json.loads(texts.tokenizer_json)
        self.manifest = json.loads(texts.manifest)
        self.config = json.loads(texts.config)
        #: generation_config.json as a dict (the engine's default settings come from it)
        self.generation_config = json.loads(texts.generation_config)
        facts = bundle_facts(tok_json, json.loads(texts.tokenizer_config), self.config,
                             self.generation_config)
        self.chat_template: str = facts["chat_template"]
        self.special_tokens: dict[str, int] = facts["special_tokens"]
        self.eos_token_ids: tuple[int, ...] = facts["eos_token_ids"]
        self.max_context: int = facts["max_context"]
        self._token_bytes = ByteVocab(tok_json)
        del tok_json

        self._session = res.session
        self._tokenizer = res.tokenizer
        self._glue = res.glue
        self._threads = int(res.threads)
        self._isolated = bool(res.crossOriginIsolated)
        self._versions = res.versions.to_py()
        self._bundle_url = str(res.bundleUrl)

        # present.{i}.{key,value} -> past_key_values.{i}.{key,value}, ordered by input names.
        inputs = list(self._session.inputNames.to_py())
        outputs = set(self._session.outputNames.to_py())
        self._past_names = [n for n in inputs if n.startswith("past_key_values.")]
        present = ["present." + n[len("past_key_values."):] for n in self._past_names]
        missing = [p for p in present if p not in outputs]
        if missing or "logits" not in outputs:
            raise SmolChatError(f"the runtime graph lacks outputs {missing or ['logits']}: "
                                f"rebuild the bundle (./build.sh bundle)")
        self._uses = {n: n in inputs for n in ("attention_mask", "position_ids")}
        self._past_names_js = _to_js(self._past_names)
        self._present_names_js = _to_js(present)
        heads = int(self.config.get("num_key_value_heads", self.config.get("num_attention_heads")))
        head_dim = int(self.config.get("head_dim") or
                       self.config["hidden_size"] // self.config["num_attention_heads"])
        self._kv_shape = (heads, head_dim)  # each KV tensor is [1, heads, positions, head_dim]
        self._kv = self._glue.emptyKV(len(self._past_names), heads, head_dim)  # JS Array
        self._logits = None  # ort.Tensor [1, 1, vocab] (or [1, s, vocab]) of the last step
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
            "kv_tensors": len(self._past_names),
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
        return float(self._glue.runMs())

    async def forward(self, token_ids: Sequence[int]) -> None:
        if self._session is None:
            raise ModelNotLoaded("the model was unloaded: load it again")
        n = len(token_ids)
        if n < 1:
            raise ValueError("forward needs at least one token")
        past = self._length
        feeds = self._glue.stepFeeds(self._past_names_js, self._kv, _to_js(list(token_ids)),
                                     past, self._uses["attention_mask"], self._uses["position_ids"])
        try:
            results = await self._glue.run(self._session, feeds)
        except Exception as e:  # ORT throws plain Errors; OOM is the one users can act on
            if self._glue.isOutOfMemory(str(e)):
                raise OutOfMemory("the browser ran out of memory while running the model: "
                                  "close other tabs, shorten the chat, or reload") from e
            raise
        finally:
            self._glue.disposeInputs(feeds)
        step = self._glue.collect(results, self._present_names_js)
        length = int(step.length)
        if length != past + n:
            self._glue.disposeStep(step)
            raise KVCacheMismatch(f"graph returned {length} cached positions, expected "
                                  f"{past + n}: the bundle's graph does not match the runtime")
        self._glue.disposeAll(self._kv)
        if self._logits is not None:
            self._glue.disposeTensor(self._logits)
        self._kv = step.kv
        self._logits = step.logits
        self._length = length

    async def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise KVCacheMismatch(f"truncate({length}) with {self._length} cached positions")
        if length == self._length:
            return
        heads, head_dim = self._kv_shape
        kv = (self._glue.emptyKV(len(self._past_names), heads, head_dim) if length == 0
              else self._glue.sliceKV(self._kv, length))
        self._glue.disposeAll(self._kv)
        self._kv = kv
        if self._logits is not None:
            self._glue.disposeTensor(self._logits)
            self._logits = None
        self._length = length

    def candidates(self, k: int, repetition_penalty: float = 1.0,
                   penalty_ids: Sequence[int] = (), *, count_ids: Sequence[int] = (),
                   counts: Sequence[int] = (), frequency_penalty: float = 0.0,
                   presence_penalty: float = 0.0, logsumexp: bool = False):
        if self._logits is None:
            raise KVCacheMismatch("candidates() before forward(): no logits yet")
        ids_js = _to_js(list(penalty_ids)) if repetition_penalty != 1.0 and penalty_ids else None
        if count_ids and (frequency_penalty or presence_penalty) or logsumexp:
            counted = bool(count_ids) and bool(frequency_penalty or presence_penalty)
            got = self._glue.topK(self._logits, int(k), float(repetition_penalty), ids_js,
                                  _to_js(list(count_ids)) if counted else None,
                                  _to_js(list(counts)) if counted else None,
                                  float(frequency_penalty), float(presence_penalty),
                                  bool(logsumexp)).to_py()
            return tuple(got)
        pair = self._glue.topK(self._logits, int(k), float(repetition_penalty), ids_js)
        ids, values = pair.to_py()
        return ids, values

    async def close(self) -> None:
        if self._kv is not None:
            self._glue.disposeAll(self._kv)
            self._kv = None
        if self._logits is not None:
            self._glue.disposeTensor(self._logits)
            self._logits = None
        if self._session is not None:
            await self._session.release()
            self._session = None
        self._length = 0

    def live_tensors(self) -> int:
        """ort.Tensors created by the glue and not yet disposed (60 KV + 1 logits at rest)."""
        return int(self._glue.liveTensors())


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

    def _need(self):
        if self.engine is None:
            raise ModelNotLoaded("the model is not loaded yet: call load() and wait for it")
        return self.engine

    async def load(self, res, options_json: str = "{}") -> str:
        try:
            from .engine import ChatEngine
            options = json.loads(options_json)
            self.backend = OrtWebBackend(res)
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
            async for piece in stream:
                on_piece(piece)
            reply = await stream.result()
            return _ok(reply.to_dict())
        except Exception as e:
            return _err(e)
        finally:
            self._streams.pop(req_id, None)

    def cancel(self, req_id: int) -> bool:
        stream = self._streams.get(req_id)
        if stream is None:
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
                result = {**result, "live_tensors": self.backend.live_tensors()}
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
