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
    """reference(bundle_dir, prompt_ids, output_ids, frequency_penalty=0, presence_penalty=0)
    -> [log-probability of output_ids[i]], computed apart from the engine: one onnxruntime run
    of the whole sequence with every position's logits (`load_session(full_logits=True)`),
    OpenAI's penalties over the tokens generated before each position, then numpy's
    log-softmax over the whole vocabulary (float64)."""
    import numpy as np
    sessions = {}

    def reference(bundle, prompt_ids, output_ids, frequency_penalty=0.0, presence_penalty=0.0):
        from smolchat.runtime_form import load_session
        if bundle not in sessions:
            sessions[bundle] = load_session(bundle, threads=2, full_logits=True)[0]
        session = sessions[bundle]
        ids = list(prompt_ids) + list(output_ids[:-1])
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        names = {i.name: i for i in session.get_inputs()}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones((1, len(ids)), dtype=np.int64)
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None, :]
        cfg = json.loads((Path(bundle) / "config.json").read_text())
        heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        for name in names:
            if name.startswith("past_key_values."):
                feeds[name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
        logits = session.run(["logits"], feeds)[0][0].astype(np.float64)   # [positions, vocab]
        out, counts = [], {}
        for i, token in enumerate(output_ids):
            row = logits[len(prompt_ids) - 1 + i].copy()
            for t, c in counts.items():
                row[t] -= c * frequency_penalty + presence_penalty
            peak = row.max()
            out.append(float(row[token] - peak - np.log(np.exp(row - peak).sum())))
            counts[token] = counts.get(token, 0) + 1
        return out
    return reference
