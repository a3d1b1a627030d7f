"""smolchat.bridge.WorkerHost in plain CPython, over the scripted fake backend: the JSON
contract worker.js relies on ({"ok": ...} | {"error": {kind, name, message}}), streaming
through the callback, cancel, and the synchronous calls. The OrtWebBackend half of bridge.py
needs Pyodide and ORT Web: the browser tests cover it."""

from __future__ import annotations

import asyncio
import json

from smolchat.bridge import WorkerHost
from smolchat.vocab import llama_parameters
from smolchat.engine import ChatEngine
from smolchat.fake_backend import FakeBackend


def host_with(replies="Paris is the capital.") -> WorkerHost:
    host = WorkerHost()
    host.engine = ChatEngine(FakeBackend(replies=replies))
    return host


def run(host, req_id, mode, message, settings=None, pieces=None):
    pieces = [] if pieces is None else pieces
    out = asyncio.run(host.run(req_id, mode, message, json.dumps(settings or {}), pieces.append))
    return json.loads(out), pieces


def test_run_streams_pieces_and_returns_the_reply_dict():
    reply, pieces = run(host_with(), 1, "chat", "Capital of France?", {"temperature": 0})
    r = reply["ok"]
    assert "".join(pieces) == r["text"] == "Paris is the capital."
    assert r["finish_reason"] == "stop"
    assert set(r["timings"]) == {"ttft_ms", "prefill_ms", "decode_tok_s", "total_ms"}
    assert set(r["profile"]) == {"ort_run_ms", "interop_ms", "sampling_ms", "python_ms", "steps"}
    assert r["profile"]["steps"] == r["completion_tokens"] - 1      # eos is not forwarded


def test_errors_come_back_typed():
    host = host_with()
    bad, _ = run(host, 2, "chat", "hi", {"temperature": 9})
    assert bad["error"]["kind"] == "invalid_setting" and bad["error"]["name"] == "InvalidSetting"
    full, _ = run(host, 3, "chat", "hi", {"max_tokens": 8192})
    assert full["error"]["kind"] == "context_window_exceeded"
    mode, _ = run(host, 4, "poem", "hi")
    assert mode["error"]["kind"] == "invalid_input"
    assert json.loads(WorkerHost().call("info"))["error"]["kind"] == "model_not_loaded"


def test_cancel_stops_the_stream():
    host = host_with("word " * 200)

    async def go():
        pieces = []

        def on_piece(p):
            pieces.append(p)
            if len(pieces) == 3:
                assert host.cancel(7) is True
        out = json.loads(await host.run(7, "chat", "talk", json.dumps({"max_tokens": 100}), on_piece))
        return out["ok"], pieces
    reply, pieces = asyncio.run(go())
    assert reply["finish_reason"] == "abort"
    assert 3 <= reply["completion_tokens"] < 100
    assert host.cancel(7) is False                      # finished streams are forgotten


def test_cancel_before_run_registers_changes_nothing():
    # worker.js started request 8 but Python has not run it yet (issue 20 #2): the cancel is
    # remembered, the run ends at once as an abort and nothing joins the history
    host = host_with("word " * 200)
    assert host.cancel(8) is False
    reply, pieces = run(host, 8, "chat", "talk", {"max_tokens": 100})
    assert reply["ok"]["finish_reason"] == "abort" and reply["ok"]["completion_tokens"] == 0
    assert pieces == [] and json.loads(host.call("history"))["ok"] == []
    reply, _ = run(host, 9, "chat", "talk", {"max_tokens": 3})   # the next one runs normally
    assert reply["ok"]["finish_reason"] == "length"


def test_sync_calls_round_trip_history():
    host = host_with()
    run(host, 1, "chat", "hello")
    history = json.loads(host.call("history"))["ok"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert json.loads(host.call("set_system_prompt", json.dumps(["Be brief."])))["ok"] is None
    assert json.loads(host.call("history"))["ok"] == [{"role": "system", "content": "Be brief."}]
    assert json.loads(host.call("load_history", json.dumps([history])))["ok"] is None
    assert json.loads(host.call("history"))["ok"][-2:] == history
    assert json.loads(host.call("shutdown"))["error"]["kind"] == "invalid_input"


def test_parameter_count_of_smollm2_135m():
    cfg = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}
    assert llama_parameters(cfg) == 134_515_008
