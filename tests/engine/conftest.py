"""Fixtures for the engine tests: a scripted fake backend and a way to drive streams.

Real-model tests (marked real_model) need models/<bundle-id>/ from ./build.sh bundle; they
fail with a message saying so when it is missing (CI builds the bundles first).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from smolchat import ChatEngine
from smolchat.fake_backend import FakeBackend

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


async def drain(stream):
    """(pieces, reply) of one stream."""
    pieces = [p async for p in stream]
    return pieces, await stream.result()


@pytest.fixture
def talk():
    """talk(engine, mode, text, **settings) -> (pieces, reply), run to the end."""
    def run(engine, mode, text, **settings):
        return asyncio.run(drain(getattr(engine, mode)(text, **settings)))
    return run


@pytest.fixture
def make_engine():
    def make(replies=None, **kw):
        backend_kw = {k: kw.pop(k) for k in ("max_context", "seed", "generation_config",
                                             "chat_template") if k in kw}
        backend = FakeBackend(replies=replies, **backend_kw)
        return ChatEngine(backend, **kw), backend
    return make


def bundle_dir(preset: str) -> Path:
    """models/smollm2-135m-instruct-<preset>/, or a test failure naming the build step."""
    path = MODELS / f"smollm2-135m-instruct-{preset}"
    if not (path / "manifest.json").is_file():
        pytest.fail(f"bundle {path} is missing: build it with ./build.sh bundle --preset {preset} "
                    "(CI runs ./build.sh test, which builds it first)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def compact_dir() -> Path:
    return bundle_dir("compact")


@pytest.fixture(scope="session")
def goldens() -> dict:
    """models/goldens.json: prompt ids and greedy ids of the fp32 reference (./build.sh bundle)."""
    import json
    path = MODELS / "goldens.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: ./build.sh bundle writes it (CI builds it first)",
                    pytrace=False)
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def protocol_backend():
    """The CPython backend on the compact bundle (or on $SMOLCHAT_TEST_BUNDLE, e.g.
    models/tiny-random, for quick runs of the backend protocol tests)."""
    import os
    from smolchat.backend_onnx import OnnxBackend
    path = os.environ.get("SMOLCHAT_TEST_BUNDLE")
    return OnnxBackend.load(path or bundle_dir("compact"), threads=2)


@pytest.fixture(scope="session")
def compact_backend():
    from smolchat.backend_onnx import OnnxBackend
    return OnnxBackend.load(bundle_dir("compact"), threads=2)


@pytest.fixture(scope="session")
def exact_backend():
    from smolchat.backend_onnx import OnnxBackend
    return OnnxBackend.load(bundle_dir("exact"), threads=2)


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The shipped package: `pip wheel` of a copy of py_runtime/ (the copy keeps setuptools'
    build/ and egg-info out of the source tree). Offline: --no-build-isolation."""
    import shutil
    import subprocess
    import sys
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "py_runtime"
    shutil.copytree(REPO / "py_runtime", src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "dist"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", str(src), "-w", str(tmp / "dist")], check=True)
    wheels = list((tmp / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


SCENARIO = Path(__file__).with_name("scenario_fake.py")


def scenario_in_cpython() -> dict:
    """scenario_fake.scenario() run in this interpreter (source tree), timings excluded."""
    namespace: dict = {}
    exec(compile(SCENARIO.read_text(), str(SCENARIO), "exec"), namespace)
    return asyncio.run(namespace["scenario"]())


@pytest.fixture(scope="session")
def scenario_file() -> Path:
    return SCENARIO


@pytest.fixture(scope="session")
def cpython_scenario() -> dict:
    return scenario_in_cpython()
