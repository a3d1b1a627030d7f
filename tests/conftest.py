"""Fixtures shared by the browser test areas (tests/web, tests/embed): the assembled site,
one headless Debian Chromium per pytest process, and the folder for screenshots and other
artifacts. Each area runs in its own pytest process (build.sh test), so "session" means
"this area"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session")
def site():
    from smolchat_web.site import DIST, build_site
    build_site(log=lambda m: None)
    return DIST


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    from smolchat_web.headless import launch_browser
    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def logprob_reference():
    """reference(bundle_dir, prompt_ids, output_ids, frequency_penalty=0, presence_penalty=0,
    cached=0) -> [log-probability of output_ids[i]], computed apart from the engine and its
    backends: plain onnxruntime on the bundle's graph, run as the runtimes run it (the prompt's
    first `cached` tokens in one run, the rest in another, then one run per output token with
    the KV cache: the graph's one-token decode path differs from its prefill path in the last
    bits, which the int8 activations can amplify to ~0.3 in a logprob), OpenAI's penalties over
    the tokens generated before each position, then numpy's log-softmax over the whole
    vocabulary (float64). Pass the reply's cached_prompt_tokens as `cached`; the cached prefix
    must have been prefilled (no decoded token in it: ask something new each time)."""
    import numpy as np
    sessions = {}

    def reference(bundle, prompt_ids, output_ids, frequency_penalty=0.0, presence_penalty=0.0,
                  cached=0):
        from smolchat.runtime_form import load_session
        if bundle not in sessions:
            sessions[bundle] = load_session(bundle, threads=2)[0]
        session = sessions[bundle]
        names = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        cfg = json.loads((Path(bundle) / "config.json").read_text())
        heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        past = {n: np.zeros((1, heads, 0, head_dim), dtype=np.float32)
                for n in names if n.startswith("past_key_values.")}
        length = 0

        def step(ids):
            nonlocal past, length
            feeds = {"input_ids": np.asarray([ids], dtype=np.int64), **past}
            if "attention_mask" in names:
                feeds["attention_mask"] = np.ones((1, length + len(ids)), dtype=np.int64)
            if "position_ids" in names:
                feeds["position_ids"] = np.arange(length, length + len(ids), dtype=np.int64)[None, :]
            got = dict(zip(outputs, session.run(outputs, feeds)))
            past = {n: got["present." + n[len("past_key_values."):]] for n in past}
            length += len(ids)
            return got["logits"][0, -1].astype(np.float64)

        if cached:
            step(list(prompt_ids[:cached]))
        row = step(list(prompt_ids[cached:]))    # < 256 tokens: one chunk, as the engine does
        out, counts = [], {}
        for i, token in enumerate(output_ids):
            if i:
                row = step([output_ids[i - 1]])
            pen = row.copy()
            for t, c in counts.items():
                pen[t] -= c * frequency_penalty + presence_penalty
            peak = pen.max()
            out.append(float(pen[token] - peak - np.log(np.exp(pen - peak).sum())))
            counts[token] = counts.get(token, 0) + 1
        return out
    return reference
