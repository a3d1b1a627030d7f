"""The runtime graph, written node by node from the model's config with ONNX Runtime's fused
CPU operators (the WASM backend is the CPU execution provider compiled to WebAssembly):

* RMSNorm: SimplifiedLayerNormalization (first) and SkipSimplifiedLayerNormalization
  (residual add + norm in one node, com.microsoft);
* attention: RotaryEmbedding (com.microsoft, non-interleaved as HF Llama's rotate_half) +
  FusedMatMul (q k^T, transB) / Softmax (rows padded to a multiple of 64 columns: no
  vectorization tail) / MatMul with a causal mask, the kv_heads' query
  groups stacked so no key/value is repeated, for prefill and decode alike (one path: a
  position's numbers do not depend on how its prefix was forwarded); KV cache BNSH
  [1, kv_heads, past, head_dim] holding rotated keys. cos/sin tables [max_positions,
  head_dim/2] are a constant subgraph (Range * inv_freq -> Cos/Sin) that ORT folds at load:
  not downloaded;
* linear layers: fp32 MatMul (preset exact) or, for compact, per-token symmetric int8
  activations (uint8, zero point 128) x int8 weights per output column in
  MatMulIntegerToFloat, then the per-token scale (8 small nodes quantize an activation once
  for all the matrices that read it: q/k/v, gate/up); each matrix's few highest-energy input
  features skip the quantization and are multiplied in float32 (`linear`); the other
  features are rotated first, in groups of 64, by the Walsh-Hadamard matrix the int8 weights
  were rotated by when model.data was made (`rotate`);
* SiLU: QuickGelu with alpha 1 (x * sigmoid(x), the fusion ORT's 'extended' level makes);
* ONE embedding table, stored [hidden, vocab], for the input Gather (axis=1) and the LM head;
* `last_position` Slice before the LM head: logits [1, 1, vocab]; compact: the head's four
  nodes are named `lm_head/...` and the tensors they read (codes, token scale, float features)
  are graph outputs too, so the browser drops the nodes and computes the head itself
  (web/kernels/lm_head.c, bit for bit the same logits; ORT runs every node of a graph
  whatever outputs are asked for, so the nodes must go from the graph it loads);
* one initializer per distinct constant value (`_G.const`).

About 2,850 top-level nodes for 30 layers (2,500 before the rotation, 1,300 before the float
features; the Optimum export rewritten to int8 had ~6,300; the float features' ~1,200 small
nodes left a decode step's time unchanged in ORT Web, 42.4 against 41-43 ms; the rotation's
~360 cost 1-3% of a native decode step, 7% of a 256-token prefill):
measured on this machine with native ORT, 1 thread, a decode step went from 74 ms to 15 ms
and the session opens in 0.4-1.5 s instead of 6.5 s; the int8 arithmetic is unchanged. In
ORT Web (Node, 1 thread) a 256-token prefill takes 1.2 s (3.4 s with GroupQueryAttention
for prefill too, which is why attention is MatMul/Softmax).

Inputs and outputs are those of Optimum's `text-generation-with-past` export (input_ids,
attention_mask, position_ids, past_key_values.{i}.key/value -> logits, present.{i}.key/value),
so engines and scorers see no difference; Optimum's export itself stays the build's fp32
parity check, and the exact preset's greedy goldens check this graph against PyTorch.

What it ignores: batch > 1 and padding (sequence lengths and the causal mask come from the
attention mask's length, fine for one unpadded row; position_ids feeds the rotary), rope scaling and attention/MLP
biases (refused by `check_config`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import BuildError
from .encode import rotation_block
from .export import ExtTensor
from smolchat.runtime_form import LAST_POSITION_NODE, LM_HEAD_INPUTS, LM_HEAD_PREFIX

MS = "com.microsoft"
OPSET = 18
SOFTMAX_BLOCK = 64   # attention rows padded to a multiple of this for Softmax (see `softmax`)


def check_config(cfg) -> None:
    for attr in ("attention_bias", "mlp_bias"):
        if getattr(cfg, attr, False):
            raise BuildError(f"{attr}=True is not supported by the runtime graph")
    if getattr(cfg, "rope_scaling", None):
        raise BuildError(f"rope_scaling {cfg.rope_scaling!r} is not supported by the runtime graph")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise BuildError(f"hidden_act {cfg.hidden_act!r} is not supported (silu only)")


class _G:
    """Node/initializer accumulator with fresh short names; a constant value is stored once."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0
        self._consts: dict = {}   # (dtype, shape, bytes) -> initializer name

    def name(self) -> str:
        self.n += 1
        return f"_{self.n:x}"

    def op(self, op_type: str, inputs: list, n_out: int = 1, outputs: list | None = None,
           domain: str = "", **attrs):
        outs = outputs or [self.name() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain or None,
                                           **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, name: str, value) -> str:
        """Initializer `name` holding value, or the existing one with the same value."""
        a = np.asarray(value)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            self.inits.append(numpy_helper.from_array(a, name))
            self._consts[key] = name
        return self._consts[key]


def runtime_graph(model, tensors: dict, preset: str, float_feats: dict | None = None,
                  ) -> tuple[onnx.ModelProto, list]:
    """-> (graph with external initializers not yet placed, [ExtTensor]) for the HF Llama
    `model` (fp32 reference: norm weights and inv_freq come from it) and its QTensors.
    float_feats (compact): QTensor param -> the input features its matrix takes in float32
    instead of through the per-token int8 quantization (`linear`); the embedding's key is
    the LM head's."""
    cfg = model.config
    check_config(cfg)
    L, H = cfg.num_hidden_layers, cfg.hidden_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = H // nh
    V = cfg.vocab_size
    eps = float(cfg.rms_norm_eps)
    max_pos = int(cfg.max_position_embeddings)
    sd = model.state_dict()
    g = _G()
    ext: list[ExtTensor] = []
    compact = preset == "compact"

    def weight(param: str, base: str):
        """-> (weight, scale, float rows, float features, K) initializer names / values."""
        n, k = tensors[param].shape
        if compact:
            ext.append(ExtTensor(base, TensorProto.INT8, (k, n), "matrix", param))
            ext.append(ExtTensor(base + "_s", TensorProto.FLOAT, (n,), "scale", param))
            feats = list((float_feats or {}).get(param) or [])
            if feats:
                ext.append(ExtTensor(base + "_f", TensorProto.FLOAT, (len(feats), n),
                                     "float_rows", param))
            return base, base + "_s", base + "_f" if feats else None, feats, k
        ext.append(ExtTensor(base, TensorProto.FLOAT, (k, n), "matrix", param))
        return base, None, None, [], k

    def norm_weight(param: str, base: str) -> str:
        a = sd[param].float().numpy().astype(np.float32)
        ext.append(ExtTensor(base, TensorProto.FLOAT, a.shape, "copy", values=a.copy()))
        return base

    c_one = g.const("a_one", np.array(1.0, np.float32))
    if compact:  # activation quantization constants
        c_last = g.const("k_axes_last", np.array([-1], np.int64))
        c_tiny = g.const("a_tiny", np.array(1e-30, np.float32))
        c_127 = g.const("a_127", np.array(127.0, np.float32))
        c_128 = g.const("a_128", np.array(128.0, np.float32))
        c_zp = g.const("a_zp", np.array(128, np.uint8))
    quant_cache: dict = {}
    hadamard: dict = {}  # block size -> the [b, b] matrix's name

    def rotate(x: str, k: int) -> str:
        """x [1, s, K] -> x times the block-diagonal Hadamard matrix (blocks of b =
        rotation_block(K), entries +-1/sqrt(b)): the runtime form rotated the int8 weights'
        rows the same way (README `rotate`); the matrix is symmetric and orthonormal, so this
        also undoes it. Reshape [1, s, K/b, b] -> MatMul [b, b] -> Reshape back."""
        b = rotation_block(k)
        if b not in hadamard:  # H_b = H_r (x) H_r (Kronecker), r = sqrt(b): a [r, r] constant
            r = int(round(np.sqrt(b)))              # in the file, folded when the session opens
            hr = np.ones((1, 1), np.float32)
            while hr.shape[0] < r:
                hr = np.block([[hr, hr], [hr, -hr]])
            hr = hr.astype(np.float32)   # +-1 times +-1/r (r a power of 2): exactly +-1/sqrt(b)
            hadamard[b] = g.op("Reshape", [
                g.op("Mul", [g.const(f"a_hr{r}_a", hr.reshape(r, 1, r, 1)),
                             g.const(f"a_hr{r}_b", (hr / r).reshape(1, r, 1, r))]),
                g.const(f"k_hb{b}", np.array([b, b], np.int64))])
        hb = hadamard[b]
        y = g.op("Reshape", [x, g.const(f"k_rot{k}", np.array([1, -1, k // b, b], np.int64))])
        return g.op("Reshape", [g.op("MatMul", [y, hb]),
                                g.const(f"k_unrot{k}", np.array([1, -1, k], np.int64))])

    def quant(x: str, feats: list, k: int):
        """x [1, s, K] float -> (uint8 codes, zero point 128; scale [1, s, 1]; the float
        features [1, s, F] or None): the features in `feats` are zeroed first (they go in
        float32, see `linear`), then scale = max|x| / 127 per token, codes = round(x / scale)
        + 128, of the features rotated (`rotate`). Cached: q/k/v and gate/up read one
        quantized input."""
        key = (x, tuple(feats))
        if key not in quant_cache:
            xf = None
            if feats:
                idx = g.const(f"k_ff{len(quant_cache)}", np.array(feats, np.int64))
                xf = g.op("Gather", [x, idx], axis=2)                       # [1, s, F]
                # keep [K]: 1, 0 at the features; constant, folded when the session opens
                keep = g.op("ScatterElements", [
                    g.op("Expand", [c_one, g.const(f"k_dim{k}", np.array([k], np.int64))]),
                    idx, g.const(f"a_zeros{len(feats)}", np.zeros(len(feats), np.float32))],
                    axis=0)
                x = g.op("Mul", [x, keep])
            x = rotate(x, k)
            am = g.op("ReduceMax", [g.op("Abs", [x]), c_last], keepdims=1)
            sc = g.op("Div", [g.op("Max", [am, c_tiny]), c_127])
            r = g.op("Round", [g.op("Div", [x, sc])])
            q = g.op("Cast", [g.op("Add", [r, c_128])], to=TensorProto.UINT8)
            quant_cache[key] = (q, sc, xf)
        return quant_cache[key]

    def linear(x: str, w: tuple, out: str | None = None) -> str:
        """x @ W. compact: MatMulIntegerToFloat on the int8 input, times the token scale,
        plus x[..., F] @ W_f [F, N] (float32 rows, zero in the int8 table) for the float
        features F: a few features carry ~100-1000x the median energy and would leave the
        others a few int8 levels (LLM.int8()'s decomposition)."""
        wn, ws, wf, feats, k = w
        outs = [out] if out else None
        if not compact:
            return g.op("MatMul", [x, wn], outputs=outs)
        q, sc, xf = quant(x, feats, k)
        y = g.op("MatMulIntegerToFloat", [q, wn, c_one, ws, c_zp], domain=MS)
        if xf is None:
            return g.op("Mul", [y, sc], outputs=outs)
        return g.op("Add", [g.op("Mul", [y, sc]), g.op("MatMul", [xf, wf])], outputs=outs)

    # rotary tables [max_pos, hd/2]: a constant subgraph, folded by ORT when the session loads
    inv_freq = model.model.rotary_emb.inv_freq.float().numpy().astype(np.float32)
    if inv_freq.shape != (hd // 2,):
        raise BuildError(f"rotary inv_freq has shape {inv_freq.shape}, want ({hd // 2},)")
    pos = g.op("Range", [g.const("r_start", np.array(0.0, np.float32)),
                         g.const("r_limit", np.array(float(max_pos), np.float32)), c_one])
    freqs = g.op("Mul", [g.op("Unsqueeze", [pos, g.const("k_axes_1b", np.array([1], np.int64))]),
                         g.const("inv_freq", inv_freq[None, :])])
    cos, sin = g.op("Cos", [freqs]), g.op("Sin", [freqs])

    # Attention, prefill and decode alike: RotaryEmbedding + MatMul/Softmax with a causal mask,
    # the kv_heads' query groups stacked so no key/value is repeated. One path for every step
    # so that a position's numbers do not depend on whether its prefix came from the KV cache
    # or from a prefill (native ORT: bit-identical logits for a prompt forwarded whole, in
    # three chunks or as prefix + one token, 1 or 2 threads; the If with GroupQueryAttention
    # for single tokens that code versions <= 2026-11-22.18 had was 1e-5 off there, enough to
    # flip greedy near-ties; measured 2026-12-03). Decode step time in ORT Web was the same
    # within noise (Node, 1 thread, past 50 / 500 / 1,500).
    grp = nh // nkv
    i64 = lambda name, v: g.const(name, np.array(v, np.int64))  # noqa: E731
    s_len = g.op("Shape", ["input_ids"], start=1, end=2)                      # [1]
    t_len = g.op("Shape", ["attention_mask"], start=1, end=2)                 # [1]
    zero, one = i64("k_zero", 0), i64("k_one", 1)
    zero_1, axis_3 = i64("k_zero1", [0]), i64("k_axis3", [3])
    rows = g.op("Add", [g.op("Range", [zero, g.op("Squeeze", [s_len]), one]),
                        g.op("Sub", [t_len, s_len])])                         # [s] positions
    cols = g.op("Range", [zero, g.op("Squeeze", [t_len]), one])               # [T]
    future = g.op("Greater", [g.op("Unsqueeze", [cols, i64("k_ax0", [0])]),
                              g.op("Unsqueeze", [rows, i64("k_ax1", [1])])])  # [s, T]
    mask = g.op("Tile", [g.op("Where", [future, g.const("a_ninf", np.array(-np.inf, np.float32)),
                                        g.const("a_zero", np.array(0.0, np.float32))]),
                         i64("k_tile", [grp, 1])])                            # [grp*s, T]
    c_qscale = g.const("a_qscale", np.array(1.0 / np.sqrt(hd), np.float32))
    # Softmax rows padded with -inf to a multiple of SOFTMAX_BLOCK columns, sliced back after:
    # ORT's vectorized softmax (MLAS) sums a row's exps in blocks and its tail apart, so a
    # position's probabilities depended on the row's length T, i.e. on how many later tokens
    # shared its prefill chunk (WebAssembly, 2026-12-03: a 40-token prompt forwarded as 17 + 23
    # gave logits up to 0.23 off the whole prompt's, through the int8 requantization). Padded,
    # every row has no tail and a position's sum is the same whatever T is.
    blk = i64("k_sm_block", [SOFTMAX_BLOCK])
    pad_n = g.op("Mod", [g.op("Sub", [blk, g.op("Mod", [t_len, blk])]), blk])      # [1]
    sm_pads = g.op("Concat", [i64("k_sm_zeros7", [0] * 7), pad_n], axis=0)          # [8]

    def softmax(sc: str) -> str:
        """Softmax over the last axis of [1, kv, grp*s, T], computed on T padded to a
        multiple of SOFTMAX_BLOCK with -inf (exp 0), then sliced back to T."""
        padded = g.op("Pad", [sc, sm_pads, g.const("a_ninf", np.array(-np.inf, np.float32))],
                      mode="constant")
        return g.op("Slice", [g.op("Softmax", [padded], axis=-1), zero_1, t_len, axis_3])

    def attention(i: int, q: str, k: str, v: str) -> str:
        """q [1, s, nh*hd], k/v [1, s, nkv*hd] -> [1, s, nh*hd]; present.{i}.key/value
        [1, nkv, T, hd] = past + the new rotated keys / values."""
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        qr = g.op("RotaryEmbedding", [q, "position_ids", cos, sin], domain=MS, num_heads=nh)
        kr = g.op("RotaryEmbedding", [k, "position_ids", cos, sin], domain=MS, num_heads=nkv)
        qg = g.op("Reshape", [g.op("Transpose", [g.op("Reshape", [
            g.op("Mul", [qr, c_qscale]), i64(f"k_q4_{i}", [1, -1, nh, hd])])], perm=[0, 2, 1, 3]),
            i64(f"k_qg_{i}", [1, nkv, -1, hd])])                             # [1, kv, grp*s, hd]
        kv4 = i64(f"k_kv4_{i}", [1, -1, nkv, hd])
        ek = g.op("Concat", [past_k, g.op("Transpose", [g.op("Reshape", [kr, kv4])],
                                          perm=[0, 2, 1, 3])], axis=2,
                  outputs=[f"present.{i}.key"])                              # [1, kv, T, hd]
        ev = g.op("Concat", [past_v, g.op("Transpose", [g.op("Reshape", [v, kv4])],
                                          perm=[0, 2, 1, 3])], axis=2,
                  outputs=[f"present.{i}.value"])
        # q k^T without a transposed copy of the keys: FusedMatMul (com.microsoft) hands MLAS
        # transB (ORT Web, Node, 1 thread, decode step at 1,500 tokens of past: -13%)
        sc = g.op("Add", [g.op("FusedMatMul", [qg, ek], domain=MS, transB=1, alpha=1.0), mask])
        o = g.op("MatMul", [softmax(sc), ev])                               # [1, kv, grp*s, hd]
        return g.op("Reshape", [g.op("Transpose", [g.op("Reshape", [
            o, i64(f"k_oh_{i}", [1, nh, -1, hd])])], perm=[0, 2, 1, 3]),
            i64(f"k_oa_{i}", [1, -1, nh * hd])])

    # embedding: one table [H, V] for Gather and LM head
    emb = weight("model.embed_tokens.weight", "emb")
    gt = g.op("Gather", [emb[0], "input_ids"], axis=1)                # [H, 1, s]
    h = g.op("Transpose", [gt], perm=[1, 2, 0])                        # [1, s, H]
    if compact:
        gs = g.op("Unsqueeze", [g.op("Gather", [emb[1], "input_ids"]), c_last])  # [1, s, 1]
        h = rotate(g.op("Mul", [g.op("Cast", [h], to=TensorProto.FLOAT), gs]), H)
        if emb[3]:  # the float features: out of the int8 table, their float32 rows put here
            hf = g.op("Transpose", [g.op("Gather", [emb[2], "input_ids"], axis=1)],
                      perm=[1, 2, 0])                                # [1, s, F]
            at = g.op("Expand", [g.const("k_emb_feats", np.array(emb[3], np.int64)),
                                 g.op("Shape", [hf])])                # [1, s, F]
            h = g.op("ScatterElements", [h, at, hf], axis=2)

    prev = None  # previous layer's MLP output, added to the residual by the next norm
    for i in range(L):
        p = f"model.layers.{i}."
        g_in = norm_weight(p + "input_layernorm.weight", f"n{i}a")
        g_post = norm_weight(p + "post_attention_layernorm.weight", f"n{i}b")
        if prev is None:
            x = g.op("SimplifiedLayerNormalization", [h, g_in], axis=-1, epsilon=eps,
                     stash_type=1)
        else:
            x, _, _, h = g.op("SkipSimplifiedLayerNormalization", [prev, h, g_in],
                              outputs=[g.name(), "", "", g.name()], domain=MS, epsilon=eps)
        q = linear(x, weight(p + "self_attn.q_proj.weight", f"w{i}q"))
        k = linear(x, weight(p + "self_attn.k_proj.weight", f"w{i}k"))
        v = linear(x, weight(p + "self_attn.v_proj.weight", f"w{i}v"))
        a = attention(i, q, k, v)
        o = linear(a, weight(p + "self_attn.o_proj.weight", f"w{i}o"))
        x, _, _, h = g.op("SkipSimplifiedLayerNormalization", [o, h, g_post],
                          outputs=[g.name(), "", "", g.name()], domain=MS, epsilon=eps)
        gate = linear(x, weight(p + "mlp.gate_proj.weight", f"w{i}g"))
        up = linear(x, weight(p + "mlp.up_proj.weight", f"w{i}u"))
        act = g.op("Mul", [g.op("QuickGelu", [gate], domain=MS, alpha=1.0), up])  # silu*up
        prev = linear(act, weight(p + "mlp.down_proj.weight", f"w{i}d"))
    g_f = norm_weight("model.norm.weight", "nf")
    x, _, _, _ = g.op("SkipSimplifiedLayerNormalization", [prev, h, g_f],
                      outputs=[g.name(), "", "", ""], domain=MS, epsilon=eps)
    last = g.op("Slice", [x, g.const("k_last_start", np.array([-1], np.int64)),
                          g.const("k_last_end", np.array([2 ** 62], np.int64)),
                          g.const("k_last_axes", np.array([1], np.int64))])
    g.nodes[-1].name = LAST_POSITION_NODE
    n_head = len(g.nodes)
    linear(last, emb, out="logits")
    extra = []
    if compact:  # the head's nodes named, the tensors they read from the rest exposed
        new = g.nodes[n_head:]   # quant(last) and the head
        mm = next(n for n in new if n.op_type == "MatMulIntegerToFloat")
        mul = next(n for n in new if n.op_type == "Mul" and mm.output[0] in n.input)
        fm = [n for n in new if n.op_type == "MatMul" and n.input[1] == emb[2]]
        head = [mm, mul, *fm, *[n for n in new if n.op_type == "Add" and "logits" in n.output]]
        sources = {mm.input[0]: LM_HEAD_INPUTS[0],
                   next(x for x in mul.input if x != mm.output[0]): LM_HEAD_INPUTS[1]}
        if fm:
            sources[fm[0].input[0]] = LM_HEAD_INPUTS[2]
        for n in g.nodes:   # rename the three tensors everywhere
            for lst in (n.input, n.output):
                for j, x in enumerate(lst):
                    if x in sources:
                        lst[j] = sources[x]
        for j, n in enumerate(head):
            n.name = f"{LM_HEAD_PREFIX}{n.op_type}_{j}"
        extra = [helper.make_tensor_value_info(LM_HEAD_INPUTS[0], TensorProto.UINT8, [1, "lm_positions", H]),
                 helper.make_tensor_value_info(LM_HEAD_INPUTS[1], TensorProto.FLOAT, [1, "lm_positions", 1])]
        if fm:
            extra.append(helper.make_tensor_value_info(LM_HEAD_INPUTS[2], TensorProto.FLOAT,
                                                       [1, "lm_positions", len(emb[3])]))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, [1, "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", i64, [1, "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", i64, [1, "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, 1, V]), *extra]
    for i in range(L):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kv}", f32, [1, nkv, "past_sequence_length", hd]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", f32, [1, nkv, "total_sequence_length", hd]))
    graph = helper.make_graph(g.nodes, "smolchat", inputs, outputs, g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                helper.make_opsetid(MS, 1)],
                          producer_name="smolchat_build")
    m.ir_version = 8
    return m, ext
