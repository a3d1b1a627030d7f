"""Fixtures shared by the browser test areas (tests/web, tests/embed): the assembled site,
one headless Debian Chromium per pytest process, and the folder for screenshots and other
artifacts. Each area runs in its own pytest process (build.sh test), so "session" means
"this area"."""

from __future__ import annotations

from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="session")
def site():
    from smolchat_web.site import DIST, build_site
    build_site(log=lambda m: None)
    return DIST


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    from smolchat_web.headless import launch_browser
    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
