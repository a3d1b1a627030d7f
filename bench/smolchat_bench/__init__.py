"""SmolChat benchmarks against wllama, transformers.js and native references (issue 6).

Entry: `python -m smolchat_bench` (cli.py). One module per concept: server (local origin with
COOP/COEP), browser (Chromium protocol + RSS), native (onnxruntime / llama.cpp subprocesses),
metrics (raw -> figures), report (JSON + Markdown), tjs_export, deps, prompts, paths.
"""
