"""Bundles with their own identity (issue 19 part 2): a bundle built from --adapter or --source
gets an id of its own beside the stock one; a wrong adapter folder is refused before the base
model loads; bundle ids are checked.

The adapters are made here with peft on the tiny random Llama (2 layers, hidden 64). "Before
the base model loads" is shown without timing: the base checkpoint folder given with --source
has a config.json but no weights, so any attempt to load it would fail with another error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smolchat import bundle_id as ids
from smolchat.errors import BundleMissing, InvalidSetting
from smolchat_build import BuildError
from smolchat_build.bundle import bundle_id

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=f"{ROOT/'build'}:{ROOT/'py_runtime'}")
    return subprocess.run([sys.executable, "-m", "smolchat_build", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900)


def make_adapter(folder: Path, targets=("q_proj", "v_proj", "down_proj"), seed=1, **cfg) -> Path:
    """A LoRA adapter saved by peft for a tiny Llama (`cfg` changes its config)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from smolchat_build.source import tiny_config
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**tiny_config(), **cfg}))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                            init_lora_weights=False))
    peft.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weightless_base(tmp_path_factory) -> Path:
    """An HF folder with the tiny model's config.json and no weights: loading it fails."""
    from transformers import LlamaConfig
    from smolchat_build.source import tiny_config
    d = tmp_path_factory.mktemp("weightless")
    LlamaConfig(**tiny_config()).save_pretrained(d)
    return d


def test_ids_are_derived_from_the_adapter_or_source_and_never_stock(tmp_path):
    ad = tmp_path / "My LoRA (v2)"
    ad.mkdir()
    assert bundle_id("compact", None) == "smollm2-135m-instruct-compact"
    assert bundle_id("exact", None) == "smollm2-135m-instruct-exact"
    assert bundle_id("compact", None, str(ad)) == "my-lora-v2"
    assert bundle_id("exact", "tiny-random", str(ad)) == "my-lora-v2-exact"
    assert bundle_id("compact", str(tmp_path / "Llama-3.2-1B.Q4_1.gguf")) == "llama-3.2-1b.q4_1"
    assert bundle_id("compact", None, str(ad), name="support-bot") == "support-bot"
    with pytest.raises(BuildError, match="--name '../x'"):
        bundle_id("compact", None, str(ad), name="../x")


@pytest.mark.parametrize("args, says", [
    (["--adapter", "{ad}", "--out", "{tmp}/smollm2-135m-instruct-compact"], "id of a stock bundle"),
    (["--adapter", "{ad}", "--name", "smollm2-135m-instruct-exact"], "id of a stock bundle"),
    (["--adapter", "{ad}", "--name", "a b"], "--name 'a b'"),
    (["--adapter", "{ad}", "--name", "x", "--out", "{tmp}/y"], "give one of them"),
])
def test_a_stock_id_or_a_bad_id_is_refused(tmp_path, args, says):
    ad = make_adapter(tmp_path / "ad")
    args = [a.format(ad=ad, tmp=tmp_path) for a in args]
    r = _cli("bundle", "--source", "tiny-random", *args)
    assert r.returncode == 1 and says in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "smollm2-135m-instruct-compact").exists()


def _bad_adapters(tmp: Path) -> dict:
    """name -> (adapter folder, what the error says)."""
    out = {}
    out["missing"] = (tmp / "nope", "no such folder")
    d = tmp / "no-config"
    make_adapter(d)
    (d / "adapter_config.json").unlink()
    out["no-config"] = (d, "no adapter_config.json")
    d = tmp / "no-weights"
    make_adapter(d)
    (d / "adapter_model.safetensors").unlink()
    out["no-weights"] = (d, "no adapter_model.safetensors")
    d = tmp / "not-lora"
    make_adapter(d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    out["not-lora"] = (d, "only LoRA")
    out["wider-base"] = (make_adapter(tmp / "wider", hidden_size=128, intermediate_size=256),
                         "needs")
    out["deeper-base"] = (make_adapter(tmp / "deeper", num_hidden_layers=4), "is for layer 2")
    out["lm-head"] = (make_adapter(tmp / "head", targets=("q_proj", "lm_head")), "lm_head")
    d = make_adapter(tmp / "cut")
    w = d / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    out["cut"] = (d, "cut short")
    return out


def test_a_wrong_adapter_is_refused_before_the_base_loads(tmp_path, weightless_base):
    for name, (ad, says) in _bad_adapters(tmp_path).items():
        r = _cli("bundle", "--source", str(weightless_base), "--adapter", str(ad),
                 "--out", str(tmp_path / "o"))
        assert r.returncode == 1, (name, r.stderr)
        assert says in r.stderr and "--adapter" in r.stderr, (name, r.stderr)
        assert "could not load the checkpoint" not in r.stderr, name
        assert not (tmp_path / "o").exists()
    # the shape error names the base, what it needs and what the adapter was trained for
    r = _cli("bundle", "--source", str(weightless_base), "--adapter", str(tmp_path / "wider"))
    assert "hidden 64" in r.stderr and "has shape [4, 256]" in r.stderr, r.stderr
    assert "needs [r, 128]" in r.stderr and "pass its base with --source" in r.stderr


def test_a_good_adapter_passes_the_check_and_the_weightless_base_then_fails(tmp_path,
                                                                             weightless_base):
    """The control: the same folder with a fitting adapter gets past the checks to the load."""
    ad = make_adapter(tmp_path / "good")
    r = _cli("bundle", "--source", str(weightless_base), "--adapter", str(ad),
             "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "LoRA shapes fit the base" in r.stderr, r.stderr
    assert "could not load the checkpoint" in r.stderr, r.stderr


def test_lora_bundle_is_built_beside_the_stock_one_with_its_own_id(tmp_path, tiny_bundles):
    """--adapter on the tiny source, default --out: models/<adapter name>/ (here a models/
    of the test's own: the build writes MODELS / id), the tiny bundle untouched."""
    import smolchat_build.bundle as b
    from smolchat.runtime_form import load_session, verify_bundle
    from smolchat_build import quality as q
    models = tmp_path / "models"
    stock = tiny_bundles["compact"]
    before = verify_bundle(stock)["bundle_hash"]
    ad = make_adapter(tmp_path / "Support LoRA")
    old = b.MODELS
    b.MODELS = models
    try:
        out = b.build("compact", "tiny-random", str(ad), None, False, 0)
    finally:
        b.MODELS = old
    assert out == models / "support-lora"
    man = verify_bundle(out)
    assert man["bundle_id"] == "support-lora"
    assert man["model_name"] == "tiny-random (random weights) + LoRA Support LoRA"
    assert verify_bundle(stock)["bundle_hash"] == before
    assert ids.resolve("support-lora", models) == out
    ids_ = [1, 9690, 198, 2683, 359, 253, 5356]
    a, _ = load_session(out)
    s, _ = load_session(stock)
    la, _ = q.ort_forward(a, ids_, q._past_zeros(a), 0)
    ls, _ = q.ort_forward(s, ids_, q._past_zeros(s), 0)
    assert np.abs(la - ls).max() > 1e-3      # the adapter is in it


def test_bundle_ids_are_checked_and_missing_ones_named(tmp_path):
    (tmp_path / "a-bundle").mkdir()
    (tmp_path / "a-bundle" / "manifest.json").write_text("{}")
    assert ids.resolve("a-bundle", tmp_path) == tmp_path / "a-bundle"
    assert ids.full("compact") == "smollm2-135m-instruct-compact"
    for bad in ("../etc", "a/b", ".hidden", "", "x" * 101, "a b", "https://x.example/m/"):
        with pytest.raises(InvalidSetting, match="bundle id"):
            ids.check(bad)
    with pytest.raises(InvalidSetting):
        ids.resolve("a b", tmp_path)
    with pytest.raises(BundleMissing, match="no bundle folder ../no-such"):
        ids.resolve("../no-such", tmp_path)
    with pytest.raises(BundleMissing, match=r"no bundle 'other'.*built: a-bundle.*--name other"):
        ids.resolve("other", tmp_path)


def test_demo_adapter_fits_its_base_and_not_another(tmp_path, weightless_base):
    """./build.sh demo-adapter (README's walkthrough): a peft folder that passes the checks
    for its base, whose lora_B is not zero (it changes the model); a non-empty folder is kept."""
    from safetensors.numpy import load_file
    from smolchat_build.adapter import base_dims, check_adapter
    from smolchat_build.bundle import CACHE
    r = _cli("demo-adapter", str(tmp_path / "demo"), "--source", "tiny-random")
    assert r.returncode == 0, r.stderr
    cfg = check_adapter(tmp_path / "demo", base_dims("tiny-random", CACHE))
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == "tiny-random"
    w = load_file(tmp_path / "demo" / "adapter_model.safetensors")
    assert all(abs(v).max() > 0 for k, v in w.items() if "lora_B" in k)
    r = _cli("demo-adapter", str(tmp_path / "demo"))
    assert r.returncode == 1 and "not empty" in r.stderr
