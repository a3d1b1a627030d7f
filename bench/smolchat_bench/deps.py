"""What the benchmark installs for itself: the anchors' npm packages in bench/node_modules
(`npm ci` pinned by bench/package-lock.json, --ignore-scripts: a dependency's postinstall
downloads from outside), and optionally llama-cpp-python (a ~6 min source build, never in CI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

from .paths import BENCH, NODE_MODULES
from .native import LLAMA_CPP_TARGET

NPM_STAMP = NODE_MODULES / ".smolchat-bench-stamp"
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"


def ensure_node_modules(log=print) -> None:
    lock = (BENCH / "package-lock.json").read_bytes() + (BENCH / "package.json").read_bytes()
    want = hashlib.sha256(lock).hexdigest()[:16]
    if NPM_STAMP.exists() and NPM_STAMP.read_text() == want:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js 20+ (apt-get install nodejs npm)")
    log("npm ci in bench/ (wllama, transformers.js: benchmark-only dev dependencies)")
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=BENCH, check=True)
    NPM_STAMP.write_text(want)


def llama_cpp_importable() -> bool:
    return (LLAMA_CPP_TARGET / "llama_cpp" / "__init__.py").exists()


def build_llama_cpp(log=print) -> None:
    """pip-install llama-cpp-python into .cache/bench/llama_cpp_py (GGML_NATIVE=OFF: a native
    build took 18 min here and segfaulted in AMX kernels, FACTS.md)."""
    log(f"building {LLAMA_CPP_PIN} from source into {LLAMA_CPP_TARGET} (~6 min on 2 cores)")
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=OFF")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(LLAMA_CPP_TARGET), LLAMA_CPP_PIN, "diskcache"], env=env, check=True)
