"""What ships: the wheel is pure (py3-none-any), declares no runtime dependencies, and the
engine imports and runs from it with numpy, onnxruntime and tokenizers unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

BLOCK = "import sys\nfor m in ('numpy', 'onnxruntime', 'tokenizers', 'jinja2'):\n    sys.modules[m] = None\n"


def test_wheel_is_pure_without_dependencies(built_wheel):
    assert built_wheel.name == "smolchat-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(built_wheel) as z:
        meta = z.read("smolchat-0.1.0.dist-info/METADATA").decode()
        names = z.namelist()
    requires = [l for l in meta.splitlines() if l.startswith("Requires-Dist:")]
    assert all("extra ==" in l for l in requires), requires
    for module in ("engine", "settings", "sampling", "chat_template", "streaming", "cli",
                   "backend", "errors", "backend_onnx", "fake_backend", "vocab", "__main__"):
        assert f"smolchat/{module}.py" in names


def test_wheel_runs_the_scenario_without_numpy(built_wheel, scenario_file, cpython_scenario):
    code = BLOCK + f"sys.path.insert(0, {str(built_wheel)!r})\n" + (
        "import asyncio, json\n"
        "import smolchat, smolchat.engine, smolchat.cli, smolchat.fake_backend, smolchat.vocab\n"
        f"assert smolchat.__file__.startswith({str(built_wheel)!r}), smolchat.__file__\n"
        f"ns = {{}}\nexec(open({str(scenario_file)!r}).read(), ns)\n"
        "print(json.dumps(asyncio.run(ns['scenario']())))\n")
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == cpython_scenario
