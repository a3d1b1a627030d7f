"""Assemble the static site into dist/site/: everything the page loads, from one origin.

    dist/site/
      index.html, app.css, *.js          web/, web/*.js and web/src/ (flat: /smolchat.js is the
                                         JS API, /widget.js the widget)
      examples/                          web/examples/
      vendor/pyodide/                    Pyodide core (npm `pyodide`): mjs, asm.wasm, stdlib, lock
      vendor/ort/                        ONNX Runtime Web, WASM EP only (ort.wasm.min.mjs +
                                         ort-wasm-simd-threaded.{mjs,wasm})
      vendor/tokenizers/                 @huggingface/tokenizers ES module
      vendor/marked/, vendor/dompurify/  Markdown parser and HTML sanitizer ES modules (markdown.js)
      kernels/<name>.wasm                web/kernels/<name>.c compiled here to freestanding
                                         wasm32 + SIMD128 by `zig cc` (PyPI `ziglang`, pinned in
                                         requirements.txt; no emscripten: no libc, no JS glue)
      wheels/smolchat-*.whl              `pip wheel --no-deps py_runtime`; the worker unpacks
                                         it (pyodide.unpackArchive; no micropip, no loadPackage)
      wheels/jinja2-*, markupsafe-*      pure-Python wheels for non-ChatML chat templates
                                         (pywheels.py), unpacked the same way, only for those
      models/<bundle-id>/                symlinks to models/<bundle-id>/ (every built bundle)
      python.snapshot.gz                 Pyodide's memory snapshot with smolchat.bridge imported,
                                         made in Node (python_snapshot.mjs): a first visit boots
                                         Python from it
      site.json                          what was assembled: versions, wheel, bundles, default,
                                         runtime_files {path: bytes} (the load's progress bar)

Incremental: files are copied only when size or mtime changed; the wheel is rebuilt only when
py_runtime/ changed; a file of dist/site that no source gives any more (a renamed module, a
stray experiment) is deleted, so what is served is exactly what was assembled.
What this module ignores: serving (server.py), browsers (headless.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .pywheels import WheelError, python_wheels

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
NODE = WEB / "node_modules"
DIST = ROOT / "dist" / "site"
MODELS = ROOT / "models"
PY_RUNTIME = ROOT / "py_runtime"

DEFAULT_PRESET = "compact"
BUNDLE_PREFIX = "smollm2-135m-instruct-"

VENDOR = {
    "vendor/pyodide": ("pyodide", ["pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm",
                                   "python_stdlib.zip", "pyodide-lock.json"]),
    "vendor/ort": ("onnxruntime-web/dist", ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs",
                                            "ort-wasm-simd-threaded.wasm"]),
    "vendor/tokenizers": ("@huggingface/tokenizers/dist", ["tokenizers.min.mjs"]),
    "vendor/marked": ("marked/lib", ["marked.esm.js"]),
    "vendor/dompurify": ("dompurify/dist", ["purify.es.mjs"]),
}
NPM_PACKAGES = {"pyodide": "pyodide", "ort": "onnxruntime-web",
                "tokenizers": "@huggingface/tokenizers", "marked": "marked",
                "dompurify": "dompurify"}


class SiteError(RuntimeError):
    pass


def _copy(src: Path, dst: Path) -> bool:
    if not src.is_file():
        raise SiteError(f"{src} is missing: run `./build.sh setup` (npm ci in web/)")
    if dst.is_file() and not dst.is_symlink():
        s, d = src.stat(), dst.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return True


def _npm_version(package: str) -> str:
    return json.loads((NODE / package / "package.json").read_text())["version"]


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        parts = p.relative_to(folder).parts
        if not p.is_file() or any(x in ("__pycache__", "build", "dist") or x.endswith(".egg-info")
                                  for x in parts):
            continue
        h.update("/".join(parts).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


KERNEL_FLAGS = ["-target", "wasm32-freestanding", "-O3", "-msimd128", "-ffp-contract=off", "-nostdlib",
                "-Wl,--no-entry", "-Wl,--export-memory"]


def build_kernels(out: Path, log=print) -> list[str]:
    """web/kernels/*.c -> out/kernels/*.wasm (rebuilt when the source, a header of the folder
    or the flags changed: a .hash file beside each). -> the paths, relative to out."""
    made = []
    # (every kernel includes what it likes of the folder's headers: bump.h)
    headers = b"".join(h.read_bytes() for h in sorted((WEB / "kernels").glob("*.h")))
    for src in sorted((WEB / "kernels").glob("*.c")):
        rel = f"kernels/{src.stem}.wasm"
        dst, stamp = out / rel, out / f"kernels/.{src.stem}.hash"
        want = hashlib.sha256(src.read_bytes() + headers
                              + " ".join(KERNEL_FLAGS).encode()).hexdigest()[:16]
        made.append(rel)
        if dst.is_file() and stamp.is_file() and stamp.read_text() == want:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "ziglang", "cc", *KERNEL_FLAGS, "-o", str(dst),
                            str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SiteError(f"compiling {src.name} failed (is the `ziglang` wheel of "
                            f"requirements.txt installed? ./build.sh setup):\n{r.stderr[-2000:]}")
        stamp.write_text(want)
        log(f"site: compiled {src.name} -> {rel} ({dst.stat().st_size} bytes)")
    return made


def build_wheel(out: Path, previous: dict | None, log=print) -> str:
    """Build the smolchat wheel into out/wheels/ unless py_runtime/ is unchanged.
    Returns the wheel path relative to out."""
    if not (PY_RUNTIME / "pyproject.toml").is_file():
        raise SiteError("py_runtime/pyproject.toml is missing: the smolchat package cannot be "
                        "built into a wheel yet")
    digest = _tree_hash(PY_RUNTIME)
    if previous and previous.get("wheel_source_hash") == digest \
            and (out / previous.get("wheel", "-")).is_file():
        return previous["wheel"]
    wheels = out / "wheels"
    with tempfile.TemporaryDirectory() as tmp:
        # Copy first: building in place would leave build/ and *.egg-info in py_runtime/.
        src = Path(tmp) / "src"
        shutil.copytree(PY_RUNTIME, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", tmp + "/w"]
        log("site: building the smolchat wheel (pip wheel --no-deps py_runtime)")
        r = subprocess.run(base + ["--no-build-isolation"], capture_output=True, text=True)
        if r.returncode != 0:  # the build backend is not in this venv: let pip fetch it
            r = subprocess.run(base, capture_output=True, text=True)
        if r.returncode != 0:
            raise SiteError(f"pip wheel py_runtime failed:\n{r.stdout}\n{r.stderr}")
        built = list(Path(tmp, "w").glob("smolchat-*.whl"))
        if len(built) != 1:
            raise SiteError(f"expected one smolchat-*.whl, got {built}")
        if wheels.exists():
            shutil.rmtree(wheels)
        wheels.mkdir(parents=True)
        shutil.copy2(built[0], wheels / built[0].name)
    (out / ".wheel_source_hash").write_text(digest)
    return f"wheels/{built[0].name}"


SNAPSHOT = "python.snapshot.gz"


def build_python_snapshot(out: Path, wheel: str, previous: dict | None, log=print) -> dict:
    """Pyodide's memory snapshot with our wheel imported, made in Node by python_snapshot.mjs
    with the site's own Pyodide (~3 s), unless site.json already has one of this Pyodide
    version and wheel. A first visit boots Python from it (worker.js bootPython).
    Returns site.json's `python_snapshot`: {path, pyodide, wheel_sha256, bytes (uncompressed)}."""
    key = {"path": SNAPSHOT, "pyodide": _npm_version("pyodide"),
           "wheel_sha256": hashlib.sha256((out / wheel).read_bytes()).hexdigest()}
    prev = (previous or {}).get("python_snapshot") or {}
    if all(prev.get(k) == v for k, v in key.items()) and (out / SNAPSHOT).is_file():
        return prev
    node = shutil.which("node")
    if node is None:
        raise SiteError("node not found: install Node.js 20+ (the site build makes Python's snapshot with it)")
    log("site: making the Python snapshot (Pyodide in Node, the smolchat wheel imported)")
    r = subprocess.run([node, str(WEB / "smolchat_web" / "python_snapshot.mjs"), str(out), wheel,
                        str(out / SNAPSHOT)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SiteError(f"making the Python snapshot failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return {**key, "bytes": json.loads(r.stdout.strip().splitlines()[-1])["bytes"]}


def find_bundles() -> dict[str, Path]:
    """Every built bundle: models/<id>/ with a manifest.json."""
    if not MODELS.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file()}


def bundle_id(name: str) -> str:
    """'compact' / 'exact' -> full bundle id; anything else is checked as an id
    (InvalidSetting: smolchat/bundle_id.py)."""
    from smolchat.bundle_id import full
    return full(name)


def _remove_stale(out: Path, assembled: set[str]) -> int:
    """Delete files under out that are not in `assembled` (relative paths) and the folders
    left empty; models/ (symlinks to the bundles, kept in step below) is left alone."""
    removed = 0
    for p in sorted(out.rglob("*"), reverse=True):  # children before their folders
        rel = p.relative_to(out).as_posix()
        if rel == "models" or rel.startswith("models/"):
            continue
        if (p.is_file() or p.is_symlink()) and rel not in assembled:
            p.unlink()
            removed += 1
        elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    return removed


def build_site(out: Path = DIST, default_bundle: str = DEFAULT_PRESET, log=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    if (out / "site.json").is_file():
        previous = json.loads((out / "site.json").read_text())
        if (out / ".wheel_source_hash").is_file():
            previous["wheel_source_hash"] = (out / ".wheel_source_hash").read_text()

    copied = 0
    assembled = {"site.json", ".wheel_source_hash"}  # paths relative to out

    def put(src: Path, rel: str) -> None:
        nonlocal copied
        copied += _copy(src, out / rel)
        assembled.add(rel)

    ours = [WEB / "index.html", *sorted(WEB.glob("*.js")), *sorted(WEB.glob("*.d.ts")),
            *sorted((WEB / "src").glob("*.js")),
            *sorted((WEB / "src").glob("*.d.ts")), *sorted((WEB / "src").glob("*.css"))]
    for f in ours:
        put(f, f.name)
    for f in sorted((WEB / "examples").glob("*")) if (WEB / "examples").is_dir() else []:
        if f.is_file():
            put(f, f"examples/{f.name}")
    for dest, (package_dir, files) in VENDOR.items():
        for name in files:
            put(NODE / package_dir / name, f"{dest}/{name}")

    wheel = build_wheel(out, previous, log)
    assembled.add(wheel)
    python_snapshot = build_python_snapshot(out, wheel, previous, log)
    assembled.add(SNAPSHOT)
    for rel in build_kernels(out, log):
        assembled.update({rel, f"kernels/.{Path(rel).stem}.hash"})
    python_packages = []   # jinja2 + markupsafe for non-ChatML chat templates (pywheels.py)
    try:
        extra = python_wheels(log)
    except WheelError as e:
        raise SiteError(str(e)) from None
    for w in extra:
        put(w, f"wheels/{w.name}")
        python_packages.append(f"wheels/{w.name}")
    removed = _remove_stale(out, assembled)

    models = out / "models"
    models.mkdir(exist_ok=True)
    bundles = find_bundles()
    for link in models.iterdir():
        if link.is_symlink() and link.name not in bundles:
            link.unlink()
    for name, path in bundles.items():
        link = models / name
        if link.is_symlink() and link.resolve() == path.resolve():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path.resolve(), target_is_directory=True)

    info = {
        "format": "smolchat-site/1",
        "wheel": wheel,
        # Python's memory snapshot made at build time (python_snapshot.mjs): a first visit
        # boots from it when its Pyodide version and wheel are the running ones
        "python_snapshot": python_snapshot,
        "python_packages": python_packages,
        "versions": {k: _npm_version(v) for k, v in NPM_PACKAGES.items()},
        "bundles": {name: f"models/{name}/" for name in bundles},
        "default_bundle": bundle_id(default_bundle),
        # bytes of the runtime files a load fetches besides the bundle (the worker counts them
        # into its progress bar): the wasm binaries, Python's stdlib and our wheel (not the
        # template packages: a ChatML bundle never fetches them)
        "runtime_files": {rel: (out / rel).stat().st_size for rel in sorted(assembled)
                          if (rel.endswith((".wasm", ".zip", ".whl")) or rel == SNAPSHOT)
                          and rel not in python_packages},
    }
    (out / "site.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"site: {out} ({copied} files updated, {removed} stale removed, wheel {wheel}, bundles: "
        f"{', '.join(bundles) or 'none built yet'}; default {info['default_bundle']})")
    return info
