"""Bundle pipeline on a tiny random Llama (real SmolLM2 tokenizer, 2 layers, hidden 64)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smolchat.errors import BundleCorrupt, BundleMissing
from smolchat.runtime_form import (download_form, expand_runtime_data, load_session, read_manifest,
                                   verify_bundle)
from smolchat_build import BuildError
from smolchat_build import quality as q

ROOT = Path(__file__).resolve().parents[2]
IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365]


def _ref_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_manifest_lists_every_file_and_runtime(tiny_bundles):
    for preset, d in tiny_bundles.items():
        man = verify_bundle(d)
        on_disk = {p.name for p in Path(d).iterdir()} - {"manifest.json"}
        assert set(man["files"]) == on_disk
        assert {"model.onnx", "weights.bin", "tokenizer.json", "tokenizer_config.json",
                "config.json", "generation_config.json"} <= on_disk
        assert man["total_bytes"] == sum(p.stat().st_size for p in Path(d).iterdir())
        assert man["runtime"]["compute"] == ("int8" if preset == "compact" else "fp32")
        cfg = json.loads((Path(d) / "tokenizer_config.json").read_text())
        assert cfg["tokenizer_class"] == "GPT2Tokenizer" and "<|im_start|>" in cfg["chat_template"]


def test_exact_runtime_form_matches_reference(tiny_bundles, tiny_reference):
    sess, _ = load_session(tiny_bundles["exact"])
    lg, _ = q.ort_forward(sess, IDS, q._past_zeros(sess), 0)
    assert lg.shape == (1, 1, 49152)  # last position only
    ref = _ref_logits(tiny_reference, IDS)
    assert np.abs(lg[0, 0] - ref[-1]).max() < 1e-4


def test_compact_runtime_form_close_to_reference(tiny_bundles, tiny_reference):
    sess, _ = load_session(tiny_bundles["compact"])
    lg, _ = q.ort_forward(sess, IDS, q._past_zeros(sess), 0)
    ref = _ref_logits(tiny_reference, IDS)[-1]
    corr = np.corrcoef(lg[0, 0], ref)[0, 1]
    print(f"tiny compact vs reference: corr {corr:.4f}")
    assert corr > 0.95


def test_full_logits_variant_and_kv_cache(tiny_bundles):
    """Both presets: the all-positions variant, the last-position graph and a KV-cached step
    agree to float precision. (compact quantizes activations per token, so a row's numbers do
    not depend on which other positions share the forward call.)"""
    for preset, d in tiny_bundles.items():
        last, _ = load_session(d)
        full, _ = load_session(d, full_logits=True)
        lf, _ = q.ort_forward(full, IDS, q._past_zeros(full), 0)
        ll, _ = q.ort_forward(last, IDS, q._past_zeros(last), 0)
        assert lf.shape == (1, len(IDS), 49152)
        _, past = q.ort_forward(last, IDS[:-1], q._past_zeros(last), 0)
        step, _ = q.ort_forward(last, IDS[-1:], past, len(IDS) - 1)
        np.testing.assert_allclose(lf[0, -1], ll[0, 0], atol=1e-4, err_msg=preset)
        np.testing.assert_allclose(step[0, 0], ll[0, 0], atol=1e-4, err_msg=preset)


def test_js_expansion_is_bit_identical_to_numpy(tiny_bundles, node_expand_sha):
    for d in tiny_bundles.values():
        man = read_manifest(d)
        js = node_expand_sha(d)
        import hashlib
        py = hashlib.sha256(expand_runtime_data(d, man)).hexdigest()
        assert js["sha256"] == py == man["runtime"]["expanded_sha256"]
        assert js["bytes"] == man["runtime"]["expanded_bytes"]
        # the on-demand source (what the page gives ORT) has the same bytes, however it is read
        assert js["source_sha256"] == py and js["source_bytes"] == js["bytes"]
        assert js["odd_reads_equal"] is True
        # the page's load helper expands tensor by tensor (expandParts): the same bytes
        assert js["parts_sha256"] == py and js["parts_odd_reads_equal"] is True
        # ... and posts them chunk by chunk as copies (onChunk): the same bytes
        assert js["chunks_sha256"] == py


def test_ort_web_reads_the_on_demand_source_one_tensor_at_a_time(tiny_bundles, node_expand_sha):
    """ORT Web (the page's wasm, in Node) takes runtimeDataSource as external data and reads
    it one whole initializer region at a time: the whole model.data is never asked for at once,
    so it never exists in JS. Pins the ORT behaviour the browser's memory relies on."""
    for d in tiny_bundles.values():
        js = node_expand_sha(d, with_ort=True)
        o = js["ort"]
        assert o["output_names"] > 1  # the session exists
        assert o["partial"] == 0  # every read is one tensor region, whole
        assert o["reads"] >= o["regions"] and o["bytes"] >= js["bytes"]  # every region read
        # and only once: no constant folded at session start reads model.data (the float rows
        # are tensors of their own), so each tensor is expanded once
        assert o["reads"] == o["regions"]
        assert o["expansions"] == o["tensors"]


def test_corrupted_or_missing_file_is_detected(tiny_bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(tiny_bundles["compact"], d)
    w = d / "weights.bin"
    b = bytearray(w.read_bytes())
    b[len(b) // 2] ^= 1
    w.write_bytes(bytes(b))
    with pytest.raises(BundleCorrupt):
        verify_bundle(d)
    with pytest.raises(BundleCorrupt):  # expansion catches it even without the file check
        expand_runtime_data(d, read_manifest(d))
    (d / "tokenizer.json").unlink()
    with pytest.raises(BundleMissing):
        verify_bundle(d)
    with pytest.raises(BundleMissing):
        read_manifest(tmp_path / "nowhere")


def test_up_to_date_bundle_is_skipped_fast(tiny_bundles):
    from smolchat_build.bundle import build
    d = tiny_bundles["compact"]
    before = (Path(d) / "weights.bin").stat().st_mtime_ns
    t = time.monotonic()
    build("compact", "tiny-random", None, str(d), False, 0)
    assert time.monotonic() - t < 5
    assert (Path(d) / "weights.bin").stat().st_mtime_ns == before


def test_size_gate_fails_and_leaves_nothing(tmp_path, monkeypatch):
    from smolchat_build import bundle
    monkeypatch.setitem(bundle.BUDGET, "compact", 1_000_000)
    out = tmp_path / "over"
    with pytest.raises(BuildError, match="over the compact budget"):
        bundle.build("compact", "tiny-random", None, str(out), True, 0)
    assert list(tmp_path.iterdir()) == []


def test_failed_step_leaves_no_half_bundle(tmp_path, monkeypatch):
    from smolchat_build import bundle, encode
    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(encode, "encode", boom)
    with pytest.raises(BuildError, match="disk full"):
        bundle.build("exact", "tiny-random", None, str(tmp_path / "x"), True, 0)
    assert list(tmp_path.iterdir()) == []


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=f"{ROOT/'build'}:{ROOT/'py_runtime'}")
    return subprocess.run([sys.executable, "-m", "smolchat_build", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    r = _cli("bundle", "--source", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.strip().startswith("error:")
    assert len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    r = _cli("bundle", "--source", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "not a readable GGUF" in r.stderr, r.stderr
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    r = _cli("bundle", "--source", str(hf), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "unsupported architecture" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_adapter_is_merged(tmp_path, tiny_bundles):
    """A LoRA adapter made here on the tiny model: the exact bundle's logits equal the merged
    PyTorch model (rounded to the bundle grid), and are close to the unrounded merge."""
    from peft import LoraConfig, get_peft_model
    from smolchat_build.bundle import build
    from smolchat_build.source import _round_model_to_grid, tiny_random_model
    base = tiny_random_model()
    ck = tmp_path / "ckpt"
    base.save_pretrained(ck)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_bundles["exact"]) / f, ck / f)
    torch.manual_seed(1)
    peft = get_peft_model(tiny_random_model(), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    ad = tmp_path / "adapter"
    peft.save_pretrained(ad)
    merged = peft.merge_and_unload().eval()
    ids = IDS
    raw = _ref_logits(merged, ids)[-1]
    unmerged = _ref_logits(tiny_random_model(), ids)[-1]
    assert np.abs(raw - unmerged).max() > 1e-3  # the adapter changes the model
    _round_model_to_grid(merged)
    rounded = _ref_logits(merged, ids)[-1]
    out = build("exact", str(ck), str(ad), str(tmp_path / "bundle"), False, 0)
    sess, man = load_session(out)
    lg, _ = q.ort_forward(sess, ids, q._past_zeros(sess), 0)
    assert man["source"]["adapter_sha256"]
    assert np.abs(lg[0, 0] - rounded).max() < 1e-4
    assert np.corrcoef(lg[0, 0], raw)[0, 1] > 0.98


def test_q4_1_roundtrip_matches_ggml_rule():
    from smolchat_build.source import quantize_q4_1, quantize_q8_0
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 64)).astype(np.float32)
    q4 = quantize_q4_1("x", w)
    assert q4.codes.max() <= 15
    err = np.abs(q4.dequant() - w).reshape(8, 2, 32).max(-1)
    assert (err <= q4.d.astype(np.float32) * 0.5 + 1e-2).all()
    q8 = quantize_q8_0("e", w)
    assert np.abs(q8.dequant() - w).max() < np.abs(w).max() / 127


def test_embedding_codes_lower_the_lm_head_output_error():
    """compact_embedding with the LM head's input covariance (a few high-energy, correlated
    features, as in SmolLM2) gives a smaller output error tr(E H E^T) than without it, and its
    codes stay 4-bit values on the documented grid."""
    from smolchat_build.encode import CODE_LEVELS, compact_embedding
    from smolchat_build.source import quantize_q8_0
    rng = np.random.default_rng(0)
    w = rng.normal(size=(512, 64)).astype(np.float32)
    x = rng.normal(size=(4096, 64))
    x[:, :3] *= 30
    x[:, 3] = x[:, 0] + rng.normal(size=4096)
    h = x.T @ x / len(x)
    q = quantize_q8_0("emb", w)

    def out_err(c):
        d = c["col"].astype(np.float64)[:, None] * c["A"].astype(np.float64)[c["params"]]
        lv = CODE_LEVELS.astype(np.float64)[c["codes"].reshape(512, 2, 32)]
        v = (d[..., None] * lv).reshape(512, 64)
        e = v - q.dequant()
        return np.einsum("nk,kl,nl->", e, h, e)
    plain, fed = compact_embedding(q, None), compact_embedding(q, h)
    assert fed["codes"].max() <= 15 and fed["params"].max() <= 15
    print(f"output error: plain {out_err(plain):.4g}, with covariance {out_err(fed):.4g}")
    assert out_err(fed) < 0.8 * out_err(plain)


def test_score_exact_tiny_bundle_equals_reference(tiny_bundles, tmp_path):
    from smolchat_build.score import score
    f = tmp_path / "text.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = score(f, Path(tiny_bundles["exact"]), 300, 128)
    assert out["tokens"] == 301 - 3  # 301 ids in windows of 128: each window predicts len-1
    assert abs(out["ratio"] - 1) < 1e-3 and out["top1_agreement"] > 0.99
    c = score(f, Path(tiny_bundles["compact"]), 300, 128)
    assert c["reference_perplexity"] == out["reference_perplexity"]
    assert {"bundle_perplexity", "ratio", "top1_agreement"} <= set(c)


def test_goldens_schema_on_tiny(tmp_path):
    from smolchat_build.quality import GOLDEN_PROMPTS
    from smolchat_build.score import write_goldens
    path = Path(write_goldens("tiny-random", str(tmp_path / "g.json")))
    g = json.loads(path.read_text())
    assert g["format"] == "smolchat-goldens/1" and g["eos_token_id"] == 2
    assert [p["name"] for p in g["prompts"]] == [n for n, _ in GOLDEN_PROMPTS]
    for p in g["prompts"]:
        assert p["prompt_ids"][:3] == [1, 9690, 198]  # ChatML system turn, no BOS
        assert 1 <= len(p["greedy_ids"]) <= g["max_new_tokens"]
        assert (p["finish_reason"] == "stop") == (p["greedy_ids"][-1] == 2)


_MATS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
         "o": "self_attn.o_proj", "g": "mlp.gate_proj", "u": "mlp.up_proj", "d": "mlp.down_proj"}


def _rotated(val: np.ndarray, b: int) -> np.ndarray:
    """val [N, K] times the block-diagonal Sylvester Hadamard matrix / sqrt(b), by matrix
    product (the runtimes use butterflies): README's `rotate`."""
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    n, k = val.shape
    return (val.reshape(n, k // b, b) @ (h / np.sqrt(b))).reshape(n, k)


def test_compact_layers_keep_the_gguf_values_and_float_rows(tiny_bundles, tiny_reference):
    """compact's layer matrices are the GGUF's Q4_1 values (the reference's weights) exactly:
    the float32 rows of each matrix's float features equal them bit for bit; the int8 table
    holds the other features' values, rotated by the block Hadamard matrix, each within half
    an int8 step; and the graph gathers exactly those features for each matrix's float
    product, and rotates the rest by the same matrix before quantizing."""
    import onnx
    from onnx import numpy_helper
    d = tiny_bundles["compact"]
    man = read_manifest(d)
    data = expand_runtime_data(d, man)
    sd = tiny_reference.state_dict()
    rt = man["runtime"]
    form = download_form(rt, (Path(d) / rt["weights_file"]).read_bytes())
    layers = [t for t in rt["tensors"] if t["op"] == "q4_1z_i8h"]
    assert len(layers) == 7 * tiny_reference.config.num_hidden_layers
    for t in layers:
        n, k, fr = t["n"], t["k"], t["float_rows"]
        w = sd[f"model.layers.{t['name'][1:-1]}.{_MATS[t['name'][-1]]}.weight"].numpy()  # [N, K]
        # the download form, decoded as README says: d, m float16 byte planes per block of 32,
        # codes centred on the block's zero code z (stored = (code - z + 8) mod 16)
        src, nb = t["src"], n * k // 32
        bd, bm = ((form[src[f]:src[f] + nb].astype(np.uint16)
                 | form[src[f + "_hi"]:src[f + "_hi"] + nb].astype(np.uint16) << 8)
                .view(np.float16).astype(np.float64).reshape(n, k // 32, 1) for f in ("d", "m"))
        z = np.where(bd > 0, np.clip(np.floor(-bm / np.where(bd > 0, bd, 1) + 0.5), 0, 15), 8)
        packed = form[src["codes"]:src["codes"] + n * k // 2]
        stored = np.stack([packed & 15, packed >> 4], -1).reshape(n, k // 32, 32)
        code = (stored + z.astype(np.int64) + 8) & 15
        np.testing.assert_array_equal((bd * code + bm).astype(np.float32).reshape(n, k), w)
        assert len(fr) == 8 and t["float_rows_int8"] == "zero"
        fl = data[t["dst_float"]:t["dst_float"] + 4 * len(fr) * n].view(np.float32).reshape(-1, n)
        np.testing.assert_array_equal(fl, w[:, fr].T)
        i8 = data[t["dst"]:t["dst"] + n * k].view(np.int8).reshape(k, n).astype(np.float64)
        s = data[t["dst_scale"]:t["dst_scale"] + 4 * n].view(np.float32).astype(np.float64)
        assert t["rotate"] == 64
        rest = w.astype(np.float64).copy()
        rest[:, fr] = 0
        want = _rotated(rest, 64).T                                  # [K, N]
        assert (np.abs(i8 * s - want) <= s / 2 * (1 + 1e-9)).all()
        assert np.abs(i8).max() == 127
    g = onnx.load(str(Path(d) / "model.onnx"), load_external_data=False).graph
    consts = {i.name: i for i in g.initializer}
    made_by = {o: nd for nd in g.node for o in nd.output}
    rows = {t["name"] + "_f": t["float_rows"] for t in man["runtime"]["tensors"] if "float_rows" in t}
    seen = set()
    for nd in g.node:
        if nd.op_type == "MatMul" and nd.input[1] in rows:
            gather = made_by[nd.input[0]]
            assert gather.op_type == "Gather"
            assert numpy_helper.to_array(consts[gather.input[1]]).tolist() == rows[nd.input[1]]
            seen.add(nd.input[1])
    assert seen == set(rows)  # the LM head's (the embedding's) included
    # every int8 product reads a rotated input: MatMulIntegerToFloat <- Cast <- Add <- Round <-
    # Div(x, scale), x = Reshape(MatMul(Reshape(..), Hadamard [64, 64]))
    for nd in g.node:
        if nd.op_type == "MatMulIntegerToFloat":
            x = made_by[made_by[made_by[made_by[made_by[nd.input[0]].input[0]].input[0]].input[0]].input[0]]
            assert x.op_type == "Reshape" and made_by[x.input[0]].op_type == "MatMul"
            hb = made_by[made_by[x.input[0]].input[1]]       # Reshape(Mul(a, b)): the Kronecker
            a, b = (numpy_helper.to_array(consts[c]) for c in made_by[hb.input[0]].input)
            np.testing.assert_array_equal((a * b).reshape(64, 64), _rotated(np.eye(64), 64))


def test_embedding_int8_columns_are_the_lm_heads_float_rows(tiny_bundles):
    """compact's embedding keeps its columns at the LM head's float features as int8 per
    column (int8_cols == float_rows): the float32 rows the LM head and the input Gather
    multiply in float are exactly cols_scale[i] * cols_q[i, n] (for the rows that keep their
    Q8_0 values, those values); the int8 table leaves them out (zero before the rotation), and
    the input path (int8 row * scale, rotated back, plus the float rows at their features)
    gives each column within an int8 step of them."""
    d = tiny_bundles["compact"]
    man = read_manifest(d)
    rt = man["runtime"]
    t = next(t for t in rt["tensors"] if t["op"] == "q4cx_i8h")
    n, k, cols, ex = t["n"], t["k"], t["int8_cols"], t["exact_until"]
    assert cols == t["float_rows"] and len(cols) == 8 and t["float_rows_int8"] == "zero"
    form = download_form(rt, (Path(d) / rt["weights_file"]).read_bytes())
    xq = form[t["src"]["cols_q"]:t["src"]["cols_q"] + len(cols) * n].view(np.int8).reshape(-1, n)
    xs = form[t["src"]["cols_scale"]:t["src"]["cols_scale"] + 4 * len(cols)].view(np.float32)
    assert np.abs(xq[:, ex:]).max() > 100  # the columns use the int8 range, not a handful of levels
    want = (xs.astype(np.float64)[:, None] * xq).astype(np.float32)
    want[:, :ex] = _exact_rows(form, t)[:, cols].T
    data = expand_runtime_data(d, man)
    fl = data[t["dst_float"]:t["dst_float"] + 4 * len(cols) * n].view(np.float32).reshape(-1, n)
    np.testing.assert_array_equal(fl, want)
    i8 = data[t["dst"]:t["dst"] + n * k].view(np.int8).reshape(k, n).astype(np.float64)
    s = data[t["dst_scale"]:t["dst_scale"] + 4 * n].view(np.float32).astype(np.float64)
    back = _rotated((i8 * s).T, t["rotate"])                     # [N, K]: the Gather's rows
    assert (np.abs(back[:, cols]) <= s[:, None] / 2 * np.sqrt(t["rotate"])).all()  # ~0: left out
    back[:, cols] += fl.T
    assert (np.abs(back[:, cols] - want.T) <= s[:, None] / 2 * np.sqrt(t["rotate"])).all()


def _exact_rows(form, t) -> np.ndarray:
    """The embedding rows before exact_until from the download form, as README says: Q8_0,
    exact_d [E, K/32] float16 times exact_codes [E, K] int8 -> float64 [E, K]."""
    ex, k, s = t["exact_until"], t["k"], t["src"]
    q8 = form[s["exact_codes"]:s["exact_codes"] + ex * k].view(np.int8).reshape(ex, k // 32, 32)
    d8 = form[s["exact_d"]:s["exact_d"] + 2 * ex * k // 32].view(np.float16).astype(np.float64)
    return (d8.reshape(ex, k // 32, 1) * q8).reshape(ex, k)


def test_zero_code_edge_cases_agree_in_both_runtimes(tiny_bundles, tmp_path, node_expand_sha):
    """q4_1z's zero code z = clamp(floor(-m/d + 0.5), 0, 15), 8 where d <= 0: on blocks with d
    = 0, d < 0, -m/d far above 15 or below 0, an exact .5 tie and m = -0, written into a layer
    of a bundle copy, numpy and JS expand to the same bytes."""
    import hashlib
    import zlib
    from smolchat.runtime_form import zero_codes
    d16 = np.array([0, -0.01, 0.01, 0.01, 0.25, 0.01], np.float16)
    m16 = np.array([0.3, 0.2, -0.5, 0.05, -0.625, -0.0], np.float16)
    assert zero_codes(d16, m16).tolist() == [8, 8, 15, 0, 3, 0]
    d, man = _edited_copy(tiny_bundles, tmp_path, lambda man: None)
    rt = man["runtime"]
    form = download_form(rt, (d / rt["weights_file"]).read_bytes()).copy()
    s = next(t for t in rt["tensors"] if t["op"] == "q4_1z_i8h")["src"]
    for plane, v in (("d", d16), ("m", m16)):
        u = v.view(np.uint16)
        form[s[plane]:s[plane] + u.size] = u & 255
        form[s[plane + "_hi"]:s[plane + "_hi"] + u.size] = u >> 8
    (d / rt["weights_file"]).write_bytes(zlib.compress(form.tobytes(), 9))
    py = hashlib.sha256(expand_runtime_data(d, man, check=False)).hexdigest()
    assert py != rt["expanded_sha256"]  # the edit reached the expansion
    assert node_expand_sha(d)["sha256"] == py


def _edited_copy(tiny_bundles, tmp_path, edit):
    """A copy of the tiny compact bundle whose manifest `edit(manifest)` changed -> (dir, manifest)."""
    d = tmp_path / "edited"
    shutil.copytree(tiny_bundles["compact"], d)
    man = json.loads((d / "manifest.json").read_text())
    edit(man)
    (d / "manifest.json").write_text(json.dumps(man))
    return d, man


def _node_expand(d) -> subprocess.CompletedProcess:
    """web/src/runtime_form.js expanding bundle `d` in Node (tests/build/expand_node.mjs)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    return subprocess.run(["node", str(ROOT / "tests" / "build" / "expand_node.mjs"), str(d),
                           (ROOT / "web" / "src" / "runtime_form.js").as_uri()],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("op,field,value,says", [
    ("q4cx_i8h", "params", "a4t4", "q4cx_i8h params"),  # an older bundle's embedding layout
    ("q4_1z_i8h", "rotate", 32, "q4_1z_i8h rotate 32"),  # not a power of 4: no exact 1/sqrt(b)
    ("q4cx_i8h", "rotate", 128, "q4cx_i8h rotate 128"),  # does not divide k = 64
    ("q4_1z_i8h", "rotate", 0, "q4_1z_i8h rotate 0"),    # a rotated op without its block
    ("q4_1z_i8h", "op", "q4_1_i8", "q4_1_i8 rotate 64"),  # rotated weights under the plain op
])
def test_unreadable_entry_is_refused(tiny_bundles, tmp_path, op, field, value, says):
    """An int8 entry in a layout this runtime does not read fails in both runtimes with a
    bundle_corrupt error saying what to do, instead of expanding to wrong weights."""
    def edit(man):
        next(t for t in man["runtime"]["tensors"] if t["op"] == op)[field] = value
    d, man = _edited_copy(tiny_bundles, tmp_path, edit)
    with pytest.raises(BundleCorrupt, match=f"{says}.*rebuild the bundle or update SmolChat"):
        expand_runtime_data(d, man, check=False)
    r = _node_expand(d)
    assert r.returncode != 0 and f"bundle_corrupt: {says}" in r.stderr


def test_unknown_op_is_refused(tiny_bundles, tmp_path):
    """An op this runtime does not know (a later layout: how an older runtime sees q4_1z_i8h's
    centred codes) is refused by both runtimes, saying to update SmolChat."""
    def edit(man):
        next(t for t in man["runtime"]["tensors"] if t["op"] == "q4_1z_i8h")["op"] = "q4_1y_i8h"
    d, man = _edited_copy(tiny_bundles, tmp_path, edit)
    with pytest.raises(BundleCorrupt, match="unknown runtime op 'q4_1y_i8h'.*update SmolChat"):
        expand_runtime_data(d, man, check=False)
    r = _node_expand(d)
    assert r.returncode != 0
    assert "bundle_corrupt: unknown runtime op q4_1y_i8h: update SmolChat" in r.stderr, r.stderr[-500:]


def test_other_bundle_format_is_refused(tiny_bundles, tmp_path):
    """A manifest of another format (a later smolchat-bundle/2) is refused by both runtimes
    before any expansion, with what to do."""
    d, _ = _edited_copy(tiny_bundles, tmp_path, lambda man: man.update(format="smolchat-bundle/2"))
    with pytest.raises(BundleCorrupt, match="smolchat-bundle/2.*rebuild the bundle"):
        read_manifest(d)
    r = _node_expand(d)
    assert r.returncode != 0
    assert 'bundle_corrupt: manifest format "smolchat-bundle/2"' in r.stderr, r.stderr[-500:]


def test_embedding_rows_in_four_precisions(tiny_bundles, tiny_reference):
    """compact's embedding rows come in four tiers by token id (BPE merge order, so by
    frequency): the source's Q8_0 values before exact_until, 5-bit codes (one byte each)
    before fine_until, 4-bit nibbles, 3-bit nibbles from coarse_from on. Each tier's values,
    decoded here from the download form as README's table says, are what the int8 table and
    its scale hold (within half an int8 step); the Q8_0 rows are the reference's weights."""
    d = tiny_bundles["compact"]
    man = read_manifest(d)
    rt = man["runtime"]
    t = next(t for t in rt["tensors"] if t["op"] == "q4cx_i8h")
    n, k, s = t["n"], t["k"], t["src"]
    ex, fine, coarse = t["exact_until"], t["fine_until"], t["coarse_from"]
    assert 0 < ex < fine < coarse < n
    form = download_form(rt, (Path(d) / rt["weights_file"]).read_bytes())
    exact = _exact_rows(form, t)
    emb = tiny_reference.state_dict()["model.embed_tokens.weight"].numpy()
    np.testing.assert_array_equal(exact.astype(np.float32), emb[:ex])
    f32 = lambda off, c: form[off:off + 4 * c].view(np.float32).astype(np.float64)
    col = form[s["col"]:s["col"] + 2 * n].view(np.float16).astype(np.float64)
    A, L, C, F = (f32(s["a_levels"], 16), f32(s["code_levels"], 16),
                  f32(s["coarse_levels"], 8), f32(s["fine_levels"], 32))
    fine_codes = form[s["fine_codes"]:s["fine_codes"] + (fine - ex) * k].reshape(fine - ex, k)
    assert fine_codes.max() > 15  # really 5-bit
    data = expand_runtime_data(d, man)
    i8 = data[t["dst"]:t["dst"] + n * k].view(np.int8).reshape(k, n)
    sc = data[t["dst_scale"]:t["dst_scale"] + 4 * n].view(np.float32).astype(np.float64)
    for row in (0, ex - 1, ex, fine - 1, fine, coarse - 1, coarse, n - 1):
        a = [(form[s["params"] + (row * k // 32 + j) // 2] >> (4 * ((row * k // 32 + j) % 2))) & 15
             for j in range(k // 32)]
        if row < ex:
            val = exact[row].copy()
        else:
            if row < fine:
                lv = F[fine_codes[row - ex]]
            else:
                nib = np.array([(form[s["codes"] + ((row - fine) * k + i) // 2] >> (4 * (i % 2))) & 15
                                for i in range(k)])
                assert row < coarse or nib.max() <= 7
                lv = (L if row < coarse else C)[nib]
            val = col[row] * A[np.repeat(a, 32)] * lv
        val[t["int8_cols"]] = 0  # float features (float32 rows): out of the int8 table
        val = _rotated(val[None], t["rotate"])[0]
        assert (np.abs(i8[:, row] * sc[row] - val) <= sc[row] / 2 * (1 + 1e-9)).all(), row
