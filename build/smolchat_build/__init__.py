"""SmolChat model-bundle builder: source weights -> verified ONNX bundle in models/<bundle-id>/.

Steps (one module each): `source` (fetch/read GGUF or checkpoint, GGUF-equivalent quantized
tensors, fp32 reference model), `tokenizer` (tokenizer.json rebuilt from the GGUF vocab),
`export` (Optimum export, the fp32 parity check), `graph` (the runtime graph, written with
ORT's fused operators), `shapes` (named shapes of its values, for ORT's session creation), `encode` (download form `weights.bin` and the
expansion table), `quality` (perplexity, greedy goldens), `bundle` (orchestration, manifest,
atomic write, skip when up to date). Run as `python -m smolchat_build bundle|score|goldens`.
"""

# Per preset: bump when the bytes a preset's recipe produces change (the skip check compares it).
CODE_VERSION = {"compact": "2026-12-03.22", "exact": "2026-12-03.12"}
EXPORT_VERSION = "1"  # bump when the cached fp32 Optimum export must be redone


class BuildError(Exception):
    """A build failure with a one-line message that says what to do (exit code 1)."""
