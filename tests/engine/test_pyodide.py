"""The same engine inside real Pyodide (CPython 3.14 on WebAssembly, in Node): the built wheel
is unpacked into Pyodide's site-packages and scenario_fake.py runs there; its result must
equal the CPython run of the same scenario."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYODIDE = REPO / "web" / "node_modules" / "pyodide"

RUNNER = """
import { loadPyodide } from %(module)s;
import { readFileSync } from "node:fs";
const [wheel, scenario] = process.argv.slice(2);
const py = await loadPyodide({ indexURL: %(index)s });
const purelib = py.runPython("import sysconfig; sysconfig.get_paths()['purelib']");
py.unpackArchive(new Uint8Array(readFileSync(wheel)), "wheel", { extractDir: purelib });
const out = await py.runPythonAsync(readFileSync(scenario, "utf8") + `
import json, sys
import smolchat
assert "site-packages" in smolchat.__file__, smolchat.__file__
json.dumps({"result": await scenario(), "python": sys.version, "platform": sys.platform})
`);
process.stdout.write(out);
"""


def test_engine_runs_in_pyodide_like_cpython(tmp_path, built_wheel, scenario_file,
                                              cpython_scenario):
    if not (PYODIDE / "pyodide.mjs").is_file():
        pytest.fail("web/node_modules/pyodide is missing: run ./build.sh setup (npm ci in web/)",
                    pytrace=False)
    node = shutil.which("node")
    assert node, "node is not installed (Node.js 20+ is required)"
    runner = tmp_path / "run.mjs"
    runner.write_text(RUNNER % {"module": json.dumps((PYODIDE / "pyodide.mjs").as_uri()),
                                "index": json.dumps(str(PYODIDE) + "/")})
    run = subprocess.run([node, str(runner), str(built_wheel), str(scenario_file)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2500:]
    got = json.loads(run.stdout)
    assert got["platform"] == "emscripten" and got["python"].startswith("3.14")
    assert got["result"] == cpython_scenario
