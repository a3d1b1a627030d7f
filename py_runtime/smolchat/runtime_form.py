"""CPython loader of a SmolChat model bundle (models/<bundle-id>/): verify the files, expand
the download form `weights.bin` into the exact bytes of the graph's external-data file
`model.data` (never shipped), and open an onnxruntime session on it.

The expansion is the pure function specified by manifest["runtime"] (README, "Bundle
format"); web/src/runtime_form.js implements it again for the browser with bit-identical
output (tests/build checks the sha256 of both). All float arithmetic is IEEE float64 in a
fixed order, rounding is floor(x + 0.5), so numpy and JS agree bit for bit.

This module needs numpy and onnxruntime: CPython only, never imported in Pyodide.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from .errors import BundleCorrupt, BundleMissing

FORMAT = "smolchat-bundle/1"
EXTERNAL_DATA_NAME = "model.data"
LAST_POSITION_NODE = "last_position"  # Slice before the LM head (logits of the last position)
# compact: the LM head's nodes are named LM_HEAD_PREFIX + ... and their inputs are graph outputs
# of their own (codes uint8 [1, 1, K], scale [1, 1, 1], float features [1, 1, F]), so that the
# browser can drop the nodes and compute the head in web/kernels/lm_head.c (web/src/lm_head.js)
LM_HEAD_PREFIX = "lm_head/"
LM_HEAD_INPUTS = ("lm_head.codes", "lm_head.scale", "lm_head.features")


def read_manifest(bundle_dir) -> dict:
    path = Path(bundle_dir) / "manifest.json"
    if not path.is_file():
        raise BundleMissing(f"no manifest.json in {bundle_dir}: build it with "
                            f"./build.sh bundle", path=str(path))
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleCorrupt(f"{path} is not valid JSON ({e}): rebuild the bundle",
                            path=str(path)) from None
    if man.get("format") != FORMAT:
        raise BundleCorrupt(f"{path}: format {man.get('format')!r}, want {FORMAT!r}: rebuild "
                            f"the bundle", path=str(path))
    return man


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_bundle(bundle_dir) -> dict:
    """Check every file listed in the manifest (bytes and sha256); return the manifest."""
    bundle_dir = Path(bundle_dir)
    man = read_manifest(bundle_dir)
    for name, info in man["files"].items():
        p = bundle_dir / name
        if not p.is_file():
            raise BundleMissing(f"{p} is missing: rebuild the bundle (./build.sh bundle)",
                                path=str(p))
        size = p.stat().st_size
        if size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise BundleCorrupt(f"{p} does not match manifest.json (bytes {size} vs "
                                f"{info['bytes']} or sha256 differs): rebuild the bundle",
                                path=str(p))
    return man


# ---------------------------------------------------------------------------------------
# Expansion: weights.bin -> model.data (see README "Bundle format" for the table's ops)
# ---------------------------------------------------------------------------------------

def _f16(buf: np.ndarray, off: int, count: int) -> np.ndarray:
    return buf[off:off + 2 * count].view(np.float16).astype(np.float64)


def _f32(buf: np.ndarray, off: int, count: int) -> np.ndarray:
    return buf[off:off + 4 * count].view(np.float32).astype(np.float64)


def _nibbles(buf: np.ndarray, off: int, count: int) -> np.ndarray:
    """count 4-bit values, element 2i in the low nibble of byte i."""
    b = buf[off:off + (count + 1) // 2]
    out = np.empty(2 * b.size, np.uint8)
    out[0::2] = b & 15
    out[1::2] = b >> 4
    return out[:count]


def _f16_planes(buf: np.ndarray, lo_off: int, hi_off: int, count: int) -> np.ndarray:
    """count float16 values stored as two byte planes: low bytes at lo_off, high at hi_off."""
    lo = buf[lo_off:lo_off + count].astype(np.uint16)
    hi = buf[hi_off:hi_off + count].astype(np.uint16)
    return (lo | (hi << 8)).view(np.float16).astype(np.float64)


def _rotate(val: np.ndarray, b: int) -> np.ndarray:
    """Rows of val [r, K] (float64) times the block-diagonal Hadamard matrix: each group of b
    features (b a power of 4) -> its Walsh-Hadamard transform (Sylvester order, butterflies
    h = 1, 2, 4, ...: pair (i, i + h) -> (x_i + x_{i+h}, x_i - x_{i+h})), times 1/sqrt(b) (a
    power of two: exact). Orthonormal and symmetric: the graph multiplies the activations by
    the same matrix, so x . w is unchanged while one large feature is spread over b."""
    r, k = val.shape
    x = val.reshape(r, k // b, b)
    h = 1
    while h < b:
        x = x.reshape(r, k // b, b // (2 * h), 2, h)
        x = np.stack([x[..., 0, :] + x[..., 1, :], x[..., 0, :] - x[..., 1, :]], axis=-2)
        h *= 2
    return x.reshape(r, k) * (1.0 / np.sqrt(b))


def rotation_block(t: dict) -> int:
    """An int8 entry's `rotate` b: the "h" ops (q4_1_i8h, q4c_i8h) need a power of 4 dividing
    k, the others none (0). The rotation is in the op's name so that a runtime that does not
    rotate refuses the entry as an unknown op instead of expanding it to wrong weights."""
    b = t.get("rotate", 0)
    if t["op"].endswith("h"):
        ok = isinstance(b, int) and b > 0 and not b & (b - 1) and b.bit_length() % 2 == 1 \
            and t["k"] % b == 0
    else:
        ok = not b
    if not ok:
        raise BundleCorrupt(f"{t['op']} rotate {b!r} for k {t['k']}: this runtime reads powers "
                            f"of 4 dividing k (ops ending in h only); rebuild the bundle or "
                            f"update SmolChat")
    return b


def _write_int8(t: dict, val: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
    """Rows r0:r1 of the values [N, K] (float64) -> int8 [K, N] at dst, per column float32
    scale s = fround(max_k |value| / 127) (1 if 0) at dst_scale; with `float_rows` (input
    features k), also float32 [F, N] = fround(value[:, k]) at dst_float, and when
    float_rows_int8 == "zero" those values are 0 in what follows; with `rotate` b, the values
    are then rotated (_rotate) before the scale and the int8 rounding."""
    n, k = t["n"], t["k"]
    fr = t.get("float_rows")
    if fr:
        fl = out[t["dst_float"]:t["dst_float"] + 4 * len(fr) * n].view(np.float32)
        fl.reshape(len(fr), n)[:, r0:r1] = val[:, fr].astype(np.float32).T
        if t["float_rows_int8"] == "zero":
            val = val.copy()
            val[:, fr] = 0.0
    b = rotation_block(t)
    if b:
        val = _rotate(val, b)
    dst = out[t["dst"]:t["dst"] + n * k].view(np.int8).reshape(k, n)
    scale = out[t["dst_scale"]:t["dst_scale"] + 4 * n].view(np.float32)
    sc = (np.abs(val).max(axis=1) / 127.0).astype(np.float32)
    sc[sc == 0] = 1.0
    q = np.floor(val / sc.astype(np.float64)[:, None] + 0.5)
    dst[:, r0:r1] = np.clip(q, -127, 127).astype(np.int8).T
    scale[r0:r1] = sc


def _q4c_i8(t: dict, w: np.ndarray, out: np.ndarray, rows: int = 4096) -> None:
    """value = col[n] * A[a] * L[code] (float64; rows >= coarse_from: coarse levels; rows <
    fine_until: fine levels, codes one per byte in fine_codes; the nibbles of `codes` start at
    the first row after them); with `int8_cols` (input features k), value[n, k] =
    cols_scale[i] * cols_q[i, n] instead. q4cx: rows < exact_until are Q8_0, value = d[n, j] *
    exact_codes[n, k] (exact), their params/col/cols_q unused; fine_codes then starts there."""
    n, k, qk = t["n"], t["k"], t["block"]
    s = t["src"]
    nb = k // qk
    if t.get("params") != "a4":
        raise BundleCorrupt(f"{t['op']} params {t.get('params')!r}: this runtime reads 'a4' "
                            f"only; rebuild the bundle or update SmolChat")
    xc = t.get("int8_cols") or []
    if xc:
        xq = w[s["cols_q"]:s["cols_q"] + len(xc) * n].view(np.int8).reshape(len(xc), n)
        xs = _f32(w, s["cols_scale"], len(xc))
    col = _f16(w, s["col"], n)
    a_lv = _f32(w, s["a_levels"], 16)
    levels = _f32(w, s["code_levels"], 16)
    coarse_from = t.get("coarse_from", n)
    coarse = _f32(w, s["coarse_levels"], 8) if coarse_from < n else None
    exact = t.get("exact_until", 0) if t["op"] == "q4cx_i8h" else 0
    fine = max(exact, t.get("fine_until", 0))
    fine_lv = _f32(w, s["fine_levels"], 32) if fine > exact else None
    params = _nibbles(w, s["params"], n * nb).reshape(n, nb)
    cuts = sorted(set(range(0, n, rows)) | {exact, fine, n})
    for r0, r1 in zip(cuts[:-1], cuts[1:]):  # row chunks bound the float64 temporaries
        if r0 < exact:
            codes = w[s["exact_codes"] + r0 * k:s["exact_codes"] + r1 * k].view(np.int8)
            d8 = _f16(w, s["exact_d"] + 2 * r0 * nb, (r1 - r0) * nb)
            val = (d8.reshape(r1 - r0, nb, 1) * codes.reshape(r1 - r0, nb, qk)).reshape(r1 - r0, k)
            _write_int8(t, val, out, r0, r1)
            continue
        if r0 < fine:
            off = s["fine_codes"] + (r0 - exact) * k
            codes = w[off:off + (r1 - r0) * k]
            lv = fine_lv[codes.reshape(r1 - r0, nb, qk)]
        else:
            codes = _nibbles(w, s["codes"] + (r0 - fine) * k // 2, (r1 - r0) * k)
            codes = codes.reshape(r1 - r0, nb, qk)
            lv = levels[codes]
        d = col[r0:r1, None] * a_lv[params[r0:r1]]         # float64, exact
        c0 = max(0, coarse_from - r0)                       # first coarse row of the chunk
        if c0 < r1 - r0:
            lv[c0:] = coarse[codes[c0:]]
        val = (d[..., None] * lv).reshape(r1 - r0, k)       # one rounding
        if xc:
            val[:, xc] = (xs[:, None] * xq[:, r0:r1]).T     # exact: float32 * int8
        _write_int8(t, val, out, r0, r1)


def zero_codes(d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Q4_1 blocks' zero codes: the code nearest the value 0, clamp(floor(-m / d + 0.5), 0, 15)
    in float64 (8 where d <= 0 or -m / d is not finite), int64 of d's shape. The `q4_1z` ops
    store each code as (code - z + 8) mod 16: a block's codes cluster around its zero code
    (the weights are centred on 0), so centred they share one distribution and deflate's
    Huffman codes take them to ~3.83 bits instead of ~3.87 (0.58 MB over the layers)."""
    d = np.asarray(d, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -np.asarray(m, np.float64) / d
    ok = (d > 0) & np.isfinite(t)
    return np.where(ok, np.clip(np.floor(np.where(ok, t, 0) + 0.5), 0, 15), 8).astype(np.int64)


def _q4_1_i8(t: dict, w: np.ndarray, out: np.ndarray, rows: int = 4096) -> None:
    """value = fround(d * code + m) (the Q4_1 value as float32, as the reference has it); the
    `q4_1z` op's stored codes are centred: code = (stored + z + 8) mod 16 (zero_codes)."""
    n, k, qk = t["n"], t["k"], t["block"]
    s = t["src"]
    nb = k // qk
    d = _f16_planes(w, s["d"], s["d_hi"], n * nb).reshape(n, nb, 1)
    m = _f16_planes(w, s["m"], s["m_hi"], n * nb).reshape(n, nb, 1)
    shift = zero_codes(d, m) + 8 if t["op"].startswith("q4_1z") else None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        codes = _nibbles(w, s["codes"] + r0 * k // 2, (r1 - r0) * k).reshape(r1 - r0, nb, qk)
        if shift is not None:
            codes = (codes + shift[r0:r1]) & 15
        codes = codes.astype(np.float64)
        val = (d[r0:r1] * codes + m[r0:r1]).astype(np.float32).astype(np.float64)
        _write_int8(t, val.reshape(r1 - r0, k), out, r0, r1)


def _q4_1_f32(t: dict, w: np.ndarray, out: np.ndarray) -> None:
    n, k, qk = t["n"], t["k"], t["block"]
    s = t["src"]
    codes = _nibbles(w, s["codes"], n * k).reshape(n, k // qk, qk).astype(np.float64)
    d = _f16(w, s["d"], n * k // qk).reshape(n, k // qk, 1)
    m = _f16(w, s["m"], n * k // qk).reshape(n, k // qk, 1)
    val = (d * codes + m).astype(np.float32).reshape(n, k)
    out[t["dst"]:t["dst"] + 4 * n * k].view(np.float32).reshape(k, n)[:] = val.T


def _q8_0_f32(t: dict, w: np.ndarray, out: np.ndarray) -> None:
    n, k, qk = t["n"], t["k"], t["block"]
    s = t["src"]
    codes = w[s["codes"]:s["codes"] + n * k].view(np.int8).reshape(n, k // qk, qk)
    d = _f16(w, s["d"], n * k // qk).reshape(n, k // qk, 1)
    val = (d * codes.astype(np.float64)).astype(np.float32).reshape(n, k)
    out[t["dst"]:t["dst"] + 4 * n * k].view(np.float32).reshape(k, n)[:] = val.T


def _copy(t: dict, w: np.ndarray, out: np.ndarray) -> None:
    out[t["dst"]:t["dst"] + t["bytes"]] = w[t["src"]:t["src"] + t["bytes"]]


OPS = {"q4c_i8": _q4c_i8, "q4_1_i8": _q4_1_i8, "q4c_i8h": _q4c_i8, "q4_1_i8h": _q4_1_i8,
       "q4_1z_i8h": _q4_1_i8, "q4cx_i8h": _q4c_i8, "q4_1_f32": _q4_1_f32, "q8_0_f32": _q8_0_f32, "copy": _copy}


def download_form(runtime: dict, file_bytes: bytes) -> np.ndarray:
    """weights.bin as stored -> the download form the ops read (uint8): inflated when
    runtime["weights_encoding"] is "zlib" (one RFC 1950 stream of the whole form)."""
    enc = runtime.get("weights_encoding", "raw")
    if enc == "raw":
        return np.frombuffer(file_bytes, np.uint8)
    if enc != "zlib":
        raise BundleCorrupt(f"unknown weights_encoding {enc!r}: this runtime is older than "
                            f"the bundle; update SmolChat")
    try:
        raw = zlib.decompress(file_bytes)
    except zlib.error as e:
        raise BundleCorrupt(f"weights.bin does not inflate ({e}): rebuild the bundle") from None
    if len(raw) != runtime["weights_raw_bytes"]:
        raise BundleCorrupt(f"weights.bin inflates to {len(raw)} bytes, the manifest says "
                            f"{runtime['weights_raw_bytes']}: rebuild the bundle")
    return np.frombuffer(raw, np.uint8)


def expand(runtime: dict, weights: np.ndarray) -> np.ndarray:
    """manifest["runtime"] + the download form (uint8, see download_form) -> model.data
    bytes (uint8)."""
    out = np.zeros(runtime["expanded_bytes"], np.uint8)
    for t in runtime["tensors"]:
        op = OPS.get(t["op"])
        if op is None:
            raise BundleCorrupt(f"unknown runtime op {t['op']!r}: this runtime is older than "
                                f"the bundle; update SmolChat")
        op(t, weights, out)
    return out


def expand_runtime_data(bundle_dir, manifest: dict, check: bool = True) -> np.ndarray:
    rt = manifest["runtime"]
    path = Path(bundle_dir) / rt["weights_file"]
    if not path.is_file():
        raise BundleMissing(f"{path} is missing: rebuild the bundle", path=str(path))
    weights = download_form(rt, path.read_bytes())
    data = expand(rt, weights)
    if check and hashlib.sha256(data).hexdigest() != rt["expanded_sha256"]:
        raise BundleCorrupt(f"expanded {rt['external_data']} of {bundle_dir} has the wrong "
                            f"sha256: weights.bin is corrupt or the runtime is out of date")
    return data


def full_logits_graph(model_bytes: bytes) -> bytes:
    """The same graph with logits for every position (drops the last-position Slice)."""
    import onnx
    m = onnx.ModelProto()
    m.ParseFromString(model_bytes)
    g = m.graph
    node = next((n for n in g.node if n.name == LAST_POSITION_NODE), None)
    if node is None:
        raise BundleCorrupt(f"graph has no {LAST_POSITION_NODE!r} node: rebuild the bundle")
    src, dst = node.input[0], node.output[0]
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == dst:
                n.input[i] = src
    g.node.remove(node)
    used = {x for n in g.node for x in n.input}
    for i in [i for i in g.initializer if i.name in node.input[1:] and i.name not in used]:
        g.initializer.remove(i)
    for o in g.output:
        if o.name == "logits":
            o.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    # the head's values now have s positions, not the 1 their value_info (build shapes.py)
    # names: the scoring variant keeps none (it only costs ORT ~3 s more to plan)
    del g.value_info[:]
    return m.SerializeToString()


def load_session(bundle_dir, threads: int = 2, full_logits: bool = False, verify: bool = True,
                 optimization: str | None = None):
    """-> (onnxruntime.InferenceSession, manifest). full_logits=True: the scoring variant with
    logits [1, s, vocab] (same weights, graph edited in memory). optimization: ORT graph
    optimization level 'none' | 'basic' | 'all'; default manifest["runtime"]["graph_optimization"]
    ('basic' when unstated; 'all' miscomputed an earlier int8 graph's single-token steps in
    ORT 1.31 native and ORT Web 1.30 alike; web/src/bundle_loader.js uses the same rule)."""
    import onnxruntime as ort
    bundle_dir = Path(bundle_dir)
    man = verify_bundle(bundle_dir) if verify else read_manifest(bundle_dir)
    data = expand_runtime_data(bundle_dir, man, check=verify)
    model_bytes = (bundle_dir / man["runtime"]["graph"]).read_bytes()
    if full_logits:
        model_bytes = full_logits_graph(model_bytes)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    optimization = optimization or man["runtime"].get("graph_optimization", "basic")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    so.add_external_initializers_from_files_in_memory(
        [man["runtime"]["external_data"]], [data], [data.size])
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    del data
    return sess, man
