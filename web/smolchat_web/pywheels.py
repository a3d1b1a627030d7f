"""The pure-Python wheels the page's Python loads beside smolchat: jinja2 and MarkupSafe, for
chat templates that are not ChatML (py_runtime/smolchat/chat_template.py renders ChatML
without them).

Pinned here (the versions requirements.txt tests against in CPython):

* Jinja2 3.1.6: its PyPI wheel is py3-none-any; pip downloads it.
* MarkupSafe 3.0.3: PyPI has only compiled wheels and the sdist. Its setup.py builds without
  the C speedups when the compiler fails (and markupsafe then imports its own `_native`
  module): the sdist is built with CC=false into a py3-none-any wheel.

Both are kept in .cache/wheels/ (the network is needed once) and copied to dist/site/wheels/;
worker.js unpacks them (pyodide.unpackArchive) only for a bundle whose chat template needs
them (chat_template.needs_jinja2).
What this module ignores: the smolchat wheel (site.py) and serving.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "wheels"
# name on PyPI, version, wheel file name
PACKAGES = (("jinja2", "3.1.6", "jinja2-3.1.6-py3-none-any.whl"),
            ("markupsafe", "3.0.3", "markupsafe-3.0.3-py3-none-any.whl"))


class WheelError(Exception):
    """A wheel could not be fetched or built (message says what to do)."""


def _fetch(name: str, version: str, wheel: str, log) -> Path:
    dst = CACHE / wheel
    if dst.is_file():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip = [sys.executable, "-m", "pip"]
        if name == "markupsafe":
            log(f"site: building {wheel} from the sdist without its C speedups (CC=false)")
            cmd = pip + ["wheel", "--no-deps", "--no-binary", name, "--quiet",
                         f"{name}=={version}", "-w", tmp]
            env = dict(os.environ, CC="false", LDSHARED="false")
        else:
            log(f"site: pip download {name}=={version}")
            cmd = pip + ["download", "--no-deps", "--only-binary=:all:", "--quiet",
                         f"{name}=={version}", "-d", tmp]
            env = None
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        got = Path(tmp) / wheel
        if r.returncode != 0 or not got.is_file():
            last = (r.stderr.strip().splitlines() or [str(sorted(os.listdir(tmp)))])[-1]
            raise WheelError(f"could not get {wheel} ({last}): check the network / "
                             f"PIP_INDEX_URL and run ./build.sh site again")
        shutil.copy2(got, dst)
    return dst


def python_wheels(log=print) -> list[Path]:
    """The cached wheels (fetched or built on first use), in install order."""
    return [_fetch(name, version, wheel, log) for name, version, wheel in PACKAGES]
