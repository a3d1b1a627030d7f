"""Bundle ids: the name of a bundle's folder under models/ and of its URL under the site's
models/ (`?bundle=<id>`, the widget's `bundle="<id>"`, `SmolChat.load({bundle})`, the CLIs'
`--bundle`).

An id is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (so it can
be neither a path nor a URL). `compact` and `exact` name the stock SmolLM2 bundles. A bundle
built from another source or an adapter gets an id of its own (`derive`), never a stock one.
The same rule is written in JS in web/src/smolchat.js (BUNDLE_ID).

What this module ignores: what is inside a bundle (runtime_form.py checks that).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import BundleMissing, InvalidSetting

STOCK = {"compact": "smollm2-135m-instruct-compact", "exact": "smollm2-135m-instruct-exact"}
PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ALLOWED = ("a bundle id: 1-100 letters, digits, '.', '_' or '-', starting with a letter or "
           "digit (e.g. my-lora), or compact / exact")


def check(bundle_id) -> str:
    """The id itself, or InvalidSetting naming the rule."""
    if not isinstance(bundle_id, str) or not PATTERN.fullmatch(bundle_id):
        raise InvalidSetting("bundle", bundle_id, ALLOWED)
    return bundle_id


def full(name: str) -> str:
    """'compact' / 'exact' -> the stock id; any other id as it is (checked)."""
    return STOCK.get(name) or check(name)


def derive(name: str) -> str:
    """An id from a folder or file name: lower case, other characters -> '-'
    ("My LoRA (v2)" -> "my-lora-v2")."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:100]
    return slug or "bundle"


def available(models: Path) -> list[str]:
    """Ids of the bundles built under `models` (folders with a manifest.json)."""
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir()
                  if not p.name.startswith(".") and (p / "manifest.json").is_file())


def resolve(name: str, models: Path) -> Path:
    """compact / exact / a bundle id under `models` / a bundle folder -> the bundle folder,
    or a typed error: InvalidSetting (not an id), BundleMissing (no such bundle, naming the
    ones there are and how to build one)."""
    d = models / STOCK.get(name, name)
    if PATTERN.fullmatch(name) and (d / "manifest.json").is_file():
        return d
    path = Path(name)
    if not path.is_dir() and ("/" in name or "\\" in name):
        raise BundleMissing(f"no bundle folder {name}: build one with ./build.sh bundle, or give "
                            f"a bundle id (built: {', '.join(available(models)) or 'none'})",
                            bundle=name)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise BundleMissing(f"{name} is not a bundle folder (no manifest.json): give a "
                                f"folder that ./build.sh bundle wrote", bundle=name)
        return path
    check(name)
    built = available(models)
    raise BundleMissing(
        f"no bundle {name!r} in {models}/ (built: {', '.join(built) or 'none'}): build it "
        f"with ./build.sh bundle (--adapter DIR or --source PATH, --name {name}), or give "
        f"a bundle folder", bundle=name, built=built)
