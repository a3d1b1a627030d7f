"""The download form `weights.bin` and the expansion table manifest["runtime"]["tensors"].

Presets (README "Bundle format" has the byte layouts):
* exact:   layer matrices as the GGUF's Q4_1 (4-bit codes + fp16 scale d and min m per block
           of 32), embedding as Q8_0; expanded to fp32 [K, N] (bit-equal to the reference).
* compact: op `q4c_i8`. Layer matrices keep the Q4_1 codes (re-rounded only where the
           compressed block parameters moved the grid); each block's (d, m) becomes one byte:
           d = col[n] * A[a], m = d * T[t] (a, t: 4-bit indices into per-matrix 16-entry
           float32 codebooks; col[n]: fp16 per output column). The Q8_0 embedding is
           re-quantized to 4-bit codes into 16 fixed levels (NF4's; value = d * L[code]), one
           4-bit scale index per block of 32, codes and scales chosen GPTQ-style for the LM
           head's output error (its input covariance from calibration, errors pushed onto
           the hidden features not yet rounded). Expanded to int8 [K, N] + float32 scale [N]
           per column.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .log import bar

ALIGN_SRC = 8    # weights.bin parts (lets JS take typed-array views)
ALIGN_DST = 64   # model.data tensors
QK = 32
LM_HEAD = "lm_head.weight"  # key of the LM head's input importance (quality.activation_importance)


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


def _nearest2(x: np.ndarray, lv: np.ndarray):
    """Indices of the two nearest levels (sorted lv) for each x."""
    i = np.clip(np.searchsorted(lv, x), 1, len(lv) - 1)
    lo, hi = i - 1, i
    first = np.where(np.abs(x - lv[lo]) <= np.abs(x - lv[hi]), lo, hi)
    second = np.where(first == lo, hi, lo)
    return first, second


def pack_nibbles(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint8).ravel()
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def _nearest(x: np.ndarray, lv: np.ndarray, count: int) -> np.ndarray:
    """[count, *x.shape] indices of the `count` nearest levels of lv for each x."""
    return np.argsort(np.abs(x[..., None] - lv), axis=-1, kind="stable")[..., :count] \
        .transpose(-1, *range(x.ndim))


def compact_layer(q, imp: np.ndarray | None = None, cand: int = 5,
                  weighted_levels: bool = True) -> dict:
    """Q4_1 QTensor -> q4c parts {codes [N,K] uint8, params [N,B] uint8 (a<<4|t),
    col fp16 [N], A f32[16], T f32[16]}. Per block, the (a, t) pair among the `cand` nearest
    levels of each that minimises the weight error weighted by `imp` (mean squared input
    activation per input feature, from calibration; activation-aware), codes re-rounded."""
    n, k = q.shape
    nb = k // QK
    d = q.d.astype(np.float64)
    m = q.m.astype(np.float64)
    w = q.dequant().astype(np.float64).reshape(n, nb, QK)
    col = d.max(axis=1).astype(np.float16)
    col[col == 0] = 1
    c64 = col.astype(np.float64)[:, None]
    r = d / c64
    t = np.where(d > 0, m / np.where(d > 0, d, 1), -7.5)
    if weighted_levels:
        s2 = ((q.codes.reshape(n, nb, QK) + t[..., None]) ** 2).mean(-1)
        A, T = _lloyd(r, w=c64 ** 2 * s2), _lloyd(t, w=d ** 2)
    else:
        A, T = _lloyd(r), _lloyd(t)
    A64, T64 = A.astype(np.float64), T.astype(np.float64)
    wk = (np.ones(k) if imp is None else imp / max(imp.mean(), 1e-30)).reshape(nb, QK)
    best_err = np.full((n, nb), np.inf)
    best_a = np.zeros((n, nb), np.uint8)
    best_t = np.zeros((n, nb), np.uint8)
    best_c = np.zeros((n, nb, QK), np.uint8)
    for ai in _nearest(r, A64, cand):
        for ti in _nearest(t, T64, cand):
            dd = c64 * A64[ai]
            tt = T64[ti]
            codes = np.clip(np.floor(w / dd[..., None] - tt[..., None] + 0.5), 0, 15)
            err = (wk * (dd[..., None] * (codes + tt[..., None]) - w) ** 2).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_a[better] = ai[better]
            best_t[better] = ti[better]
            best_c[better] = codes[better]
    return {"codes": best_c.reshape(n, k), "params": (best_a << 4) | best_t, "col": col,
            "A": A, "T": T}


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


def compact_embedding(q, cov: np.ndarray | None = None, damp: float = 0.03,
                      rows: int = 8192) -> dict:
    """Q8_0 embedding [V, H] -> 4-bit codes into CODE_LEVELS: value = col[v] * A[a] * L[code].

    The table is also the LM head, so its codes minimise the LM head's output error
    ||X (W - Wq)^T||^2 for the head's input covariance `cov` = X^T X / n [H, H] (a few hidden
    features carry ~1000x the median energy), GPTQ-style: along H, each block of 32's scale
    index a is chosen (exhaustive, the 16 levels) for the error weighted by 1 / U[k, k]^2, its
    codes are rounded one feature at a time and each rounding error is pushed onto the
    features not yet rounded through U, the upper Cholesky factor of the damped inverse
    covariance. cov=None: identity (plain nearest-level rounding, no error feedback)."""
    n, k = q.shape
    nb = k // QK
    w0 = q.dequant().astype(np.float64)
    L = CODE_LEVELS.astype(np.float64)
    mid = (L[1:] + L[:-1]) / 2
    am = np.abs(w0.reshape(n, nb, QK)).max(-1)
    col = am.max(axis=1).astype(np.float16)
    col[col == 0] = 1
    A = _lloyd(am / col.astype(np.float64)[:, None]).astype(np.float32)
    A64 = A.astype(np.float64)
    u = _hinv_upper(np.eye(k) if cov is None else cov, damp)
    wk = 1.0 / np.diag(u) ** 2
    ai_all = np.zeros((n, nb), np.uint8)
    codes_all = np.zeros((n, k), np.uint8)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        w = w0[r0:r1].copy()              # [rows, H], updated with the pushed errors
        c = col[r0:r1].astype(np.float64)
        for j in range(nb):
            s, e = j * QK, (j + 1) * QK
            best_err = np.full(r1 - r0, np.inf)
            dd = np.zeros(r1 - r0)
            for a in range(16):
                da = c * A64[a]
                codes = np.searchsorted(mid, w[:, s:e] / da[:, None])
                err = (wk[s:e] * (da[:, None] * L[codes] - w[:, s:e]) ** 2).sum(-1)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                ai_all[r0:r1, j][better] = a
                dd = np.where(better, da, dd)
            errs = np.zeros((r1 - r0, QK))
            for i in range(s, e):
                codes = np.searchsorted(mid, w[:, i] / dd)
                codes_all[r0:r1, i] = codes
                errs[:, i - s] = (w[:, i] - dd * L[codes]) / u[i, i]
                w[:, i + 1:e] -= np.outer(errs[:, i - s], u[i, i + 1:e])
            w[:, e:] -= errs @ u[s:e, e:]
        bar("embedding", r1, n)
    return {"codes": codes_all, "params": ai_all, "col": col, "A": A, "L": CODE_LEVELS}


class _Writer:
    def __init__(self):
        self.parts: list = []
        self.size = 0

    def add(self, b: np.ndarray) -> int:
        pad = (-self.size) % ALIGN_SRC
        if pad:
            self.parts.append(np.zeros(pad, np.uint8))
            self.size += pad
        off = self.size
        b = np.ascontiguousarray(b).view(np.uint8).ravel()
        self.parts.append(b)
        self.size += b.size
        return off

    def bytes(self) -> bytes:
        return b"".join(p.tobytes() for p in self.parts)


def encode(ext: list, tensors: dict, preset: str, imp: dict | None = None,
           cov: dict | None = None) -> tuple[bytes, dict, dict]:
    """-> (weights.bin bytes, runtime table {tensors, expanded_bytes}, layout name ->
    (offset, nbytes) in model.data). imp / cov: quality.activation_stats of the calibration
    (mean squared Linear inputs; the LM head's input covariance)."""
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

    scales = {t.param: t.name for t in ext if t.role == "scale"}
    mats = [t for t in ext if t.role == "matrix"]
    for i, t in enumerate(ext):
        if t.role == "copy":
            a = t.values.astype(np.float32)
            table.append({"name": t.name, "op": "copy", "src": wr.add(a), "bytes": a.nbytes,
                          "dst": place(t.name, a.nbytes)})
    for i, t in enumerate(mats):
        q = tensors[t.param]
        n, k = q.shape
        head = {"name": t.name, "n": n, "k": k, "block": QK}
        if preset == "exact":
            src = {"codes": wr.add(pack_nibbles(q.codes) if q.kind == "q4_1" else q.codes),
                   "d": wr.add(q.d.astype(np.float16))}
            if q.kind == "q4_1":
                src["m"] = wr.add(q.m.astype(np.float16))
            table.append({**head, "op": f"{q.kind}_f32", "src": src,
                          "dst": place(t.name, 4 * n * k)})
        else:
            a4t4 = q.kind == "q4_1"
            c = (compact_layer(q, (imp or {}).get(t.param)) if a4t4
                 else compact_embedding(q, (cov or {}).get(LM_HEAD)))
            src = {"codes": wr.add(pack_nibbles(c["codes"])),
                   "params": wr.add(c["params"].astype(np.uint8) if a4t4
                                    else pack_nibbles(c["params"])),
                   "col": wr.add(c["col"]), "a_levels": wr.add(c["A"])}
            extra = {"params": "a4t4" if a4t4 else "a4"}
            if a4t4:
                src["t_levels"] = wr.add(c["T"])
                extra["n_t"] = int(c["T"].size)
            else:
                src["code_levels"] = wr.add(c["L"])
            sname = scales[t.param]
            table.append({**head, "op": "q4c_i8", **extra, "src": src,
                          "dst": place(t.name, n * k), "dst_scale": place(sname, 4 * n)})
            bar("compress", i + 1, len(mats))
    dst += (-dst) % ALIGN_DST
    return wr.bytes(), {"tensors": table, "expanded_bytes": dst}, layout


def dtype_bytes(dtype: int) -> int:
    return {TensorProto.FLOAT: 4, TensorProto.INT8: 1}[dtype]
