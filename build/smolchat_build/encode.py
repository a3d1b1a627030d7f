"""The download form `weights.bin` and the expansion table manifest["runtime"]["tensors"].

Presets (README "Bundle format" has the byte layouts). Either way the download form is
stored zlib-compressed as one stream (`weights_encoding: "zlib"`, bundle.py): deflate's
Huffman codes take the Q4_1 codes to ~3.87 bits (centred: ~3.83) and the float16 block
parameters, stored as byte planes, to ~9.5 bits.
* exact:   layer matrices as the GGUF's Q4_1 (4-bit codes + fp16 scale d and min m per block
           of 32), embedding as Q8_0; expanded to fp32 [K, N] (bit-equal to the reference).
* compact: layer matrices exactly as the GGUF's Q4_1 too (op `q4_1z_i8h`: d and m as byte
           planes, the codes centred on each block's zero code), expanded to int8 [K, N] +
           float32 scale [N] per column. The Q8_0 embedding is re-quantized (op `q4cx_i8h`)
           to 4-bit codes into 16 fixed levels (NF4's; value = d * L[code]), rows from
           COARSE_FROM on (the rarer tokens: BPE ids follow merge order) to 3-bit codes into 8
           levels, rows before FINE_UNTIL (the most frequent) to 5-bit codes into 32 levels,
           and rows before EXACT_UNTIL (the most frequent of all) keep their Q8_0 values; one
           4-bit scale index per block of 32, codes and scales chosen GPTQ-style for the LM
           head's output error (its input covariance from calibration, errors pushed onto the
           hidden features not yet rounded); its columns at the LM head's float features are
           int8 per column (`int8_cols`). Each matrix's FLOAT_FEATURES highest-energy input
           features (calibration) also get their weights as float32 rows (`float_rows`): the
           graph multiplies those features in float32 instead of through the per-token int8
           activation quantization. The int8 tables hold the other features rotated (`rotate`,
           ROTATE): the "h" in the op names.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from smolchat.runtime_form import zero_codes

from .log import bar

ALIGN_SRC = 8    # weights.bin parts (lets JS take typed-array views)
ALIGN_DST = 64   # model.data tensors
QK = 32
LM_HEAD = "lm_head.weight"  # key of the LM head's input importance (quality.activation_importance)
# Input features per matrix computed in float32 (LLM.int8()'s decomposition): a few hidden
# features carry ~100-1000x the median energy and would set every token's int8 scale.
# Measured (PyTorch simulation, exact weights, 2,048 scoring tokens): int8 activations
# everywhere 1.032 / top-1 91.6%; the 8 features in float at every matrix 1.011 / 95.6%
# (32: 1.006 / 95.5%); all float 1.004 / 97.0%.
FLOAT_FEATURES = 8
# Embedding rows from here on (token ids in BPE merge order: the rarer tokens) get 3-bit codes.
# Measured (exact layers, float features, 2,048 scoring tokens): all rows 4-bit 1.0095 / top-1
# 91.3%, 14.0 MB deflated; from 32768 on 3-bit 1.0096 / 91.0%, 13.0 MB; from 16384 on 1.030 /
# 89.2%, 11.9 MB. 29696 fits the 70 MiB budget with the int8 columns below and ~80 KB to
# spare (30720: 11 KB; 28672: GPL-3 ratio 1.059 against 1.053).
COARSE_FROM = 25600
# Embedding rows before this (the most frequent tokens) get 5-bit codes (FINE_LEVELS), one
# byte each in the download form, paid for by more 3-bit rows. Measured (simulation as for
# INT8_COLS, pydoc / GPL-3 4,096 tokens each, equal bytes): none, 3-bit from 29696: 1.019 /
# 92.9% and 1.046 / 87.6%; 5-bit before 2048, 3-bit from 27648: 1.009 / 93.1% and 1.037 /
# 89.0%; before 4096, from 25600: 1.011 / 93.2% and 1.031 / 89.3%. With the rotation (.16's form,
# pydoc 2,048 / GPL-3 4,096): before 4096 0.999 / 94.9% and 1.027 / 91.4%; before 8192 (+0.30
# MB, paid by the layers' centred codes) 1.002 / 95.1% and 1.026 / 91.7%; before 12288 (+0.61
# MB) 1.001 / 95.1% and 1.023 / 91.6%: within the simulation's noise, so the rest of the 0.58
# MB stays margin. The embedding's loss is on both sides (exact rows at the input Gather
# only: 95.9% / 93.4%; at the LM head only: 95.8% / 94.7%; both: 97.5% / 96.7%).
FINE_UNTIL = 8192
# Embedding rows before this (the most frequent tokens of all) keep the GGUF's Q8_0 values
# exactly (int8 codes + float16 scale per block of 32, ~610 bytes a row against ~330 at 5 bits).
# Measured (simulation as for FINE_UNTIL, .17's form): which rows' errors cost top-1 on prose:
# the LM head's rows before 1024 / 2048 / 4096 / 8192 exact 93.1% / 93.5% / 93.8% / 93.8% on
# GPL-3 against 91.7% (pydoc 95.2-95.3% against 95.1%), the rows from 8192 on exact 92.6%: the
# frequent rows' logits decide the near-ties, even at 5 bits. Exact on both sides (the input
# Gather too): before 1024 95.3% / 93.2%, before 2048 95.8% / 93.4%.
EXACT_UNTIL = 1024
# The embedding's columns at the LM head's INT8_COLS highest-energy input features (its float
# features) are int8 per column, not 4-bit. Measured (exact layers, float features, GPTQ;
# pydoc 2,048 / GPL-3 4,096 tokens): 4-bit 1.009 / 90.6% and 1.051 / 84.5%; these 8 columns
# int8 1.017 / 93.0% and 1.047 / 87.3%, +0.30 MB deflated; 16 or 32 columns: top-1 no higher.
INT8_COLS = 8
# The int8 matrices are rotated: each group of ROTATE input features goes through a
# Walsh-Hadamard transform (orthonormal; the graph rotates the activations the same way, so
# x . w is unchanged) before the per-token and per-column int8 rounding. A feature that carries
# most of a token's energy is spread over 64, so the int8 steps shrink on both sides (QuaRot's
# online Hadamard, block-diagonal so that it costs a [64, 64] MatMul per quantized input).
# Measured (PyTorch simulation, exact weights, int8 weights and activations, 8 float features,
# the embedding's float features out of its int8 table; pydoc 2,048 / GPL-3 4,096 tokens):
# none 1.009 / 96.0% and 1.017 / 93.5%; 64 1.002 / 97.5% and 1.002 / 96.7%; 32 97.7% and
# 96.8%; a dense random rotation 98.1% and 96.4%; the LM head not rotated: 97.4% and 96.0%.
ROTATE = 64


def rotation_block(k: int) -> int:
    """The largest power of 4 up to ROTATE dividing k (k is a multiple of QK = 32)."""
    b = ROTATE
    while k % b:
        b //= 4
    return b


def _lloyd(x: np.ndarray, k: int = 16, iters: int = 12, w: np.ndarray | None = None):
    """1-D k-means (Lloyd-Max) levels for x, float32, sorted; quantile initialised."""
    x = x.astype(np.float64).ravel()
    w = np.ones_like(x) if w is None else w.astype(np.float64).ravel()
    lv = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        edges = (lv[1:] + lv[:-1]) / 2
        idx = np.searchsorted(edges, x)
        sw = np.bincount(idx, w, k)
        sx = np.bincount(idx, w * x, k)
        lv = np.where(sw > 0, sx / np.maximum(sw, 1e-300), lv)
        lv = np.sort(lv)
    return lv.astype(np.float32)


def pack_nibbles(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint8).ravel()
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


# 16 code levels for the embedding: NF4's (normal-distribution quantiles scaled to [-1, 1],
# QLoRA), nearer to the embedding's bell-shaped values than a uniform grid: measured with the
# layers left exact, 2,048 tokens, ratio to the reference 1.165 (uniform) -> 1.107 (these);
# 1.067 / 1.039 with the error weighted by the LM head's input (below).
CODE_LEVELS = np.array([-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1848051,
                        -0.0910500, 0.0, 0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098,
                        0.5626170, 0.7229568, 1.0], np.float32)


def _hinv_upper(h: np.ndarray, damp: float) -> np.ndarray:
    """U with U^T U = (H + damp * diag(H))^-1, upper triangular, float64 (GPTQ's form)."""
    h = np.array(h, np.float64)
    dg = np.diag(h).copy()
    dg[dg <= 0] = 1  # a feature never seen in calibration
    h[np.diag_indices_from(h)] = dg * (1 + damp)
    return np.linalg.cholesky(np.linalg.inv(h)).T


# 8 levels for the coarse rows, built as NF4's are (normal quantiles, 4 above zero, 3 below).
COARSE_LEVELS = np.array([-1.0, -0.4786478, -0.2171512, 0.0, 0.1609372, 0.3379293, 0.5626374,
                          1.0], np.float32)


# 32 levels for the fine rows (the most frequent tokens), built as NF4's are (normal quantiles,
# 16 above zero, 15 below).
FINE_LEVELS = np.array([
    -1.0000000, -0.8258587, -0.7102716, -0.6202751, -0.5447901, -0.4786478, -0.4189838,
    -0.3640274, -0.3125948, -0.2638453, -0.2171512, -0.1720229, -0.1280620, -0.0849318,
    -0.0423354, 0.0000000, 0.0396845, 0.0795838, 0.1199213, 0.1609372, 0.2029006, 0.2461229,
    0.2909777, 0.3379293, 0.3875773, 0.4407274, 0.4985152, 0.5626374, 0.6358267, 0.7229776,
    0.8344330, 1.0000000], np.float32)


def compact_embedding(q, cov: np.ndarray | None = None, damp: float = 0.03,
                      rows: int = 2048, coarse_from: int | None = None,
                      int8_cols: list | tuple = (), fine_until: int = 0,
                      exact_until: int = 0) -> dict:
    """Q8_0 embedding [V, H] -> 4-bit codes into CODE_LEVELS: value = col[v] * A[a] * L[code].

    The table is also the LM head, so its codes minimise the LM head's output error
    ||X (W - Wq)^T||^2 for the head's input covariance `cov` = X^T X / n [H, H] (a few hidden
    features carry ~1000x the median energy), GPTQ-style: along H, each block of 32's scale
    index a is chosen (exhaustive, the 16 levels) for the error weighted by 1 / U[k, k]^2, its
    codes are rounded one feature at a time and each rounding error is pushed onto the
    features not yet rounded through U, the upper Cholesky factor of the damped inverse
    covariance. cov=None: identity (plain nearest-level rounding, no error feedback).
    Rows from `coarse_from` on use COARSE_LEVELS (codes 0..7), rows before `fine_until`
    FINE_LEVELS (5-bit codes 0..31), rows before `exact_until` none: they keep q's Q8_0 values
    (their codes and scale indices are left 0).
    `int8_cols` (the LM head's highest-energy input features): those columns are int8 with a
    float32 scale per column instead (value = xs[i] * xq[i, v]), rounded in their turn from the
    errors pushed onto them, so they also soak up the other features' rounding at a fine step;
    their codes are the zero level's and their error is left out of the block scale choice."""
    n, k = q.shape
    nb = k // QK
    coarse_from = n if coarse_from is None else coarse_from
    w0 = q.dequant().astype(np.float64)
    am = np.abs(w0.reshape(n, nb, QK)).max(-1)
    col = am.max(axis=1).astype(np.float16)
    col[col == 0] = 1
    A = _lloyd(am / col.astype(np.float64)[:, None]).astype(np.float32)
    A64 = A.astype(np.float64)
    u = _hinv_upper(np.eye(k) if cov is None else cov, damp)
    wk = 1.0 / np.diag(u) ** 2
    xcol = {int(f): i for i, f in enumerate(sorted(int8_cols))}
    wk_codes = wk.copy()                          # the block scale choice ignores int8 columns
    wk_codes[list(xcol)] = 0
    xs = (np.abs(w0[:, sorted(xcol)]).max(axis=0) / 127).astype(np.float32)
    xs[xs == 0] = 1
    xs64 = xs.astype(np.float64)
    xq = np.zeros((len(xcol), n), np.int8)       # [C, V]: a column's values contiguous
    ai_all = np.zeros((n, nb), np.uint8)
    codes_all = np.zeros((n, k), np.uint8)
    bounds = set(range(0, n, rows)) | {min(n, c) for c in (coarse_from, fine_until, exact_until, n)}
    cuts = sorted(c for c in bounds if c >= min(n, exact_until))  # rows before: Q8_0 kept
    for r0, r1 in zip(cuts[:-1], cuts[1:]):  # rows are independent: any cut gives the same codes
        L = (FINE_LEVELS if r0 < fine_until else CODE_LEVELS if r0 < coarse_from
             else COARSE_LEVELS).astype(np.float64)
        mid = (L[1:] + L[:-1]) / 2
        zero_code = int(np.flatnonzero(L == 0)[0])
        w = w0[r0:r1].copy()              # [rows, H], updated with the pushed errors
        c = col[r0:r1].astype(np.float64)
        for j in range(nb):
            s, e = j * QK, (j + 1) * QK
            best_err = np.full(r1 - r0, np.inf)
            dd = np.zeros(r1 - r0)
            for a in range(16):
                da = c * A64[a]
                codes = np.searchsorted(mid, w[:, s:e] / da[:, None])
                err = (wk_codes[s:e] * (da[:, None] * L[codes] - w[:, s:e]) ** 2).sum(-1)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                ai_all[r0:r1, j][better] = a
                dd = np.where(better, da, dd)
            errs = np.zeros((r1 - r0, QK))
            for i in range(s, e):
                if i in xcol:
                    x = np.clip(np.floor(w[:, i] / xs64[xcol[i]] + 0.5), -127, 127)
                    xq[xcol[i], r0:r1] = x
                    codes_all[r0:r1, i] = zero_code
                    errs[:, i - s] = (w[:, i] - xs64[xcol[i]] * x) / u[i, i]
                else:
                    codes = np.searchsorted(mid, w[:, i] / dd)
                    codes_all[r0:r1, i] = codes
                    errs[:, i - s] = (w[:, i] - dd * L[codes]) / u[i, i]
                w[:, i + 1:e] -= np.outer(errs[:, i - s], u[i, i + 1:e])
            w[:, e:] -= errs @ u[s:e, e:]
        bar("embedding", r1, n)
    return {"codes": codes_all, "params": ai_all, "col": col, "A": A, "L": CODE_LEVELS,
            "coarse_from": coarse_from, "C": COARSE_LEVELS, "fine_until": fine_until,
            "F": FINE_LEVELS, "exact_until": exact_until,
            "int8_cols": sorted(xcol), "xq": xq, "xs": xs}


def f16_planes(a: np.ndarray) -> tuple:
    """float16 values -> (low bytes, high bytes): deflate codes the nearly constant high bytes
    (sign, exponent) apart from the noisy low ones."""
    u = np.ascontiguousarray(a, np.float16).view(np.uint16).ravel()
    return (u & 255).astype(np.uint8), (u >> 8).astype(np.uint8)


def float_features(imp: dict | None, param: str, count: int = FLOAT_FEATURES) -> list:
    """The `count` input features of `param` with the highest mean squared input (sorted)."""
    if not imp or param not in imp:
        return []
    return sorted(np.argsort(-imp[param], kind="stable")[:count].tolist())


class _Ref(int):
    """An offset in the download form, known once every part is placed (_Writer.bytes)."""


class _Writer:
    """The download form, laid out by section (a src field name: all "codes" together, then
    all "d" low-byte planes, ...): deflate's Huffman tables then fit one kind of data at a
    time (measured: interleaving each matrix's parts cost ~0.8 MB of the compressed file)."""

    def __init__(self):
        self.sections: dict = {}   # section -> [(ref index, uint8 array)]
        self.offsets: list = []

    def add(self, b: np.ndarray, section: str = "misc") -> int:
        """-> a reference (index) to the part's offset; `resolve` turns it into the offset."""
        self.offsets.append(None)
        ref = _Ref(len(self.offsets) - 1)
        self.sections.setdefault(section, []).append(
            (ref, np.ascontiguousarray(b).view(np.uint8).ravel()))
        return ref

    def bytes(self) -> bytes:
        parts, size = [], 0
        for sec in self.sections.values():
            for ref, b in sec:
                pad = (-size) % ALIGN_SRC
                parts.append(np.zeros(pad, np.uint8))
                size += pad
                self.offsets[ref] = size
                parts.append(b)
                size += b.size
        return b"".join(p.tobytes() for p in parts)

    def resolve(self, v):
        """Replace every reference in a table entry by its offset."""
        if isinstance(v, _Ref):
            return self.offsets[v]
        if isinstance(v, dict):
            return {k: self.resolve(x) for k, x in v.items()}
        return v


def encode(ext: list, tensors: dict, preset: str, imp: dict | None = None,
           cov: dict | None = None, feats: dict | None = None) -> tuple[bytes, dict, dict]:
    """-> (download form bytes, before compression; runtime table {tensors, expanded_bytes};
    layout name -> (offset, nbytes) in model.data). imp / cov: quality.activation_stats of the
    calibration (mean squared Linear inputs; the LM head's input covariance). feats: QTensor
    param -> the input features written as float32 rows too (the graph's, runtime_graph)."""
    wr = _Writer()
    table, layout = [], {}
    dst = 0

    def place(name: str, nbytes: int) -> int:
        nonlocal dst
        dst += (-dst) % ALIGN_DST
        off = dst
        layout[name] = (off, nbytes)
        dst += nbytes
        return off

    by_role = {(t.role, t.param): t.name for t in ext if t.role in ("scale", "float_rows")}
    mats = [t for t in ext if t.role == "matrix"]
    for t in ext:
        if t.role == "copy":
            a = t.values.astype(np.float32)
            table.append({"name": t.name, "op": "copy", "src": wr.add(a, "copy"), "bytes": a.nbytes,
                          "dst": place(t.name, a.nbytes)})
    for i, t in enumerate(mats):
        q = tensors[t.param]
        n, k = q.shape
        head = {"name": t.name, "n": n, "k": k, "block": QK}
        fr = (feats or {}).get(t.param) or []  # its float features (the graph's)
        if preset == "exact":
            src = {"codes": wr.add(pack_nibbles(q.codes) if q.kind == "q4_1" else q.codes,
                                   "codes"),
                   "d": wr.add(q.d.astype(np.float16), "d")}
            if q.kind == "q4_1":
                src["m"] = wr.add(q.m.astype(np.float16), "m")
            table.append({**head, "op": f"{q.kind}_f32", "src": src,
                          "dst": place(t.name, 4 * n * k)})
            continue
        if q.kind == "q4_1":  # the GGUF's values exactly; codes centred on each block's zero code
            z = zero_codes(q.d, q.m).reshape(n, k // QK, 1)
            centred = (q.codes.reshape(n, k // QK, QK).astype(np.int64) - z + 8) & 15
            entry = {**head, "op": "q4_1z_i8h",
                     "src": {"codes": wr.add(pack_nibbles(centred), "codes")}}
            for f, v in (("d", q.d), ("m", q.m)):
                lo, hi = f16_planes(v)
                entry["src"].update({f: wr.add(lo, f), f + "_hi": wr.add(hi, f + "_hi")})
        else:  # the embedding: input Gather and LM head
            c = compact_embedding(q, (cov or {}).get(LM_HEAD), coarse_from=COARSE_FROM,
                                  int8_cols=fr[:INT8_COLS], fine_until=min(n, FINE_UNTIL),
                                  exact_until=min(n, EXACT_UNTIL))
            fine, ex = c["fine_until"], c["exact_until"]
            entry = {**head, "op": "q4cx_i8h" if ex else "q4c_i8h", "params": "a4",
                     "src": {"codes": wr.add(pack_nibbles(c["codes"][max(ex, fine):]),
                                             "emb_codes"),
                             "params": wr.add(pack_nibbles(c["params"]), "params"),
                             "col": wr.add(c["col"]), "a_levels": wr.add(c["A"]),
                             "code_levels": wr.add(c["L"])}}
            if c["coarse_from"] < n:
                entry["coarse_from"] = int(c["coarse_from"])
                entry["src"]["coarse_levels"] = wr.add(c["C"])
            if ex:  # the Q8_0 rows as in the GGUF
                entry["exact_until"] = int(ex)
                entry["src"].update(exact_codes=wr.add(q.codes[:ex], "emb_exact"),
                                    exact_d=wr.add(q.d[:ex].astype(np.float16)))
            if fine > ex:
                entry["fine_until"] = int(fine)
                entry["src"].update(fine_codes=wr.add(c["codes"][ex:fine], "emb_fine"),
                                    fine_levels=wr.add(c["F"]))
            if c["int8_cols"]:
                entry["int8_cols"] = [int(f) for f in c["int8_cols"]]
                entry["src"].update(cols_q=wr.add(c["xq"], "emb_cols"), cols_scale=wr.add(c["xs"]))
        entry.update(rotate=rotation_block(k), dst=place(t.name, n * k),
                     dst_scale=place(by_role["scale", t.param], 4 * n))
        if fr:
            # zero: the graph takes these features in float (also the input Gather's)
            entry.update(float_rows=[int(f) for f in fr], float_rows_int8="zero",
                         dst_float=place(by_role["float_rows", t.param], 4 * len(fr) * n))
        table.append(entry)
        bar("compress", i + 1, len(mats))
    dst += (-dst) % ALIGN_DST
    form = wr.bytes()
    return form, {"tensors": [wr.resolve(e) for e in table], "expanded_bytes": dst}, layout


def dtype_bytes(dtype: int) -> int:
    return {TensorProto.FLOAT: 4, TensorProto.INT8: 1}[dtype]
