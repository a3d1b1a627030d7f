"""Cache Storage for bundles (web/src/bundle_cache.js), with the tiny random bundle: byte
progress on the first load, zero model bytes on the next, weights.bin kept inflated (its own
entry replaced by `weights.bin.inflated`, so a later load does not inflate), a new manifest
bundle_hash forcing a fresh download, a corrupt cached file (or inflated form) fetched again, a
full quota running without caching. The same reload with the real bundle is in test_api.py
(zero bytes, the same greedy ids)."""

from __future__ import annotations

import hashlib
import zlib

import pytest

pytestmark = [pytest.mark.browser]

TINY_URL = "/models/tiny-random/"
CACHE = "smolchat-tiny-random"
INFLATED = "weights.bin.inflated"

ENTRIES_JS = """async (name) => {
  if (!(await caches.has(name))) return null;
  const cache = await caches.open(name);
  const out = {};
  for (const req of await cache.keys()) {
    const res = await cache.match(req);
    out[req.url.split('/').pop()] = { hash: res.headers.get('x-smolchat-bundle-hash'),
                                      sha: res.headers.get('x-smolchat-sha256'), bytes: (await res.arrayBuffer()).byteLength,
                                      source: res.headers.get('x-smolchat-source-sha256') };
  }
  return out;
}"""


@pytest.fixture
def blank(browser, origin, kit):
    """A page of the app's origin that loads no model by itself, with route counting."""
    kit.require_bundle(kit.TINY)
    context = browser.new_context()
    traffic = kit.BundleTraffic(context, origin)
    errors: list[str] = []
    page = kit.new_page(context, errors)
    page.goto(f"{origin}/examples/widget.html")
    yield page, traffic, context, errors
    context.close()


def manifest_files(kit):
    import json
    m = json.loads((kit.TINY / "manifest.json").read_text())
    return m, {n: m["files"][n] for n in kit.BUNDLE_FILES}


def cached_entries(kit, manifest, files, bundle_hash=None):
    """What the cache holds after a load: every file as downloaded, except weights.bin, which
    is kept inflated (zlib, as the build wrote it) under its own sha256 and its source's."""
    assert manifest["runtime"]["weights_encoding"] == "zlib"
    raw = zlib.decompress((kit.TINY / "weights.bin").read_bytes())
    assert len(raw) == manifest["runtime"]["weights_raw_bytes"]
    h = bundle_hash or manifest["bundle_hash"]
    out = {n: {"hash": h, "sha": f["sha256"], "bytes": f["bytes"], "source": None}
           for n, f in files.items() if n != "weights.bin"}
    out[INFLATED] = {"hash": h, "sha": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                     "source": files["weights.bin"]["sha256"]}
    return out


def reload(page, origin):
    page.goto(f"{origin}/examples/widget.html")


def test_cache_lifecycle(blank, origin, kit):
    """One visitor, five visits: download (byte progress), cache hit, a corrupt cached file,
    a rebuilt bundle (new bundle_hash), then a hit on the new version."""
    page, traffic, _, errors = blank
    manifest, files = manifest_files(kit)
    total = sum(f["bytes"] for f in files.values())
    names = lambda urls: sorted(u.rsplit("/", 1)[1] for u in urls)   # noqa: E731

    # 1. First visit: every file over the network, byte progress, every file cached.
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"], info["cache_name"]) == (False, "miss", CACHE)
    assert names(traffic.model_files()) == sorted(kit.BUNDLE_FILES)
    assert traffic.model_bytes() == total == info["network_bytes"]
    downloads = [p for p in page.evaluate("() => window.progress") if p["stage"] == "download"]
    loaded = [p["loaded"] for p in downloads]
    assert len(downloads) >= 2 and loaded == sorted(loaded) and loaded[-1] == downloads[-1]["total"] == total
    assert page.evaluate(ENTRIES_JS, CACHE) == cached_entries(kit, manifest, files)

    # 2. Next visit: zero model bytes; only the (small) manifest is fetched, always fresh.
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"], info["network_bytes"]) == (True, "hit", 0)
    assert traffic.model_files() == [] and traffic.model_bytes() == 0
    assert names(traffic.requests) == ["manifest.json"]
    reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 4, temperature: 0 })")
    assert reply["completion_tokens"] >= 1

    # 3. A cached file with the right headers but wrong bytes: the sha256 check on read
    #    catches it and that file alone is downloaded again.
    page.evaluate("""async (name) => {
      const cache = await caches.open(name);
      const key = (await cache.keys()).find((r) => r.url.endsWith('/config.json'));
      const old = await cache.match(key);
      const bytes = new Uint8Array(await old.arrayBuffer()); bytes[0] ^= 0xff;
      await cache.put(key, new Response(bytes, { headers: old.headers }));
    }""", CACHE)
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert names(traffic.model_files()) == ["config.json"]
    assert (info["from_cache"], info["cache"]) == (False, "miss")
    assert page.evaluate(ENTRIES_JS, CACHE)["config.json"]["sha"] == files["config.json"]["sha256"]

    # 3b. The inflated weights with a flipped byte: its own sha256 catches it on read, weights.bin
    #     alone is downloaded (and inflated) again, and the entry is made anew; the reply is the
    #     one the first load gave (same greedy ids).
    page.evaluate("""async ([name, file]) => {
      const cache = await caches.open(name);
      const key = (await cache.keys()).find((r) => r.url.endsWith('/' + file));
      const old = await cache.match(key);
      const bytes = new Uint8Array(await old.arrayBuffer()); bytes[bytes.length >> 1] ^= 0x5a;
      await cache.put(key, new Response(bytes, { headers: old.headers }));
    }""", [CACHE, INFLATED])
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert names(traffic.model_files()) == ["weights.bin"]
    assert (info["from_cache"], info["cache"]) == (False, "miss")
    assert page.evaluate(ENTRIES_JS, CACHE) == cached_entries(kit, manifest, files)
    again = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 4, temperature: 0 })")
    assert again["text"] == reply["text"], (again, reply)

    # 4. A rebuilt bundle (the manifest's bundle_hash changed): everything downloaded afresh,
    #    the old entries replaced.
    new_hash = "f" * 64
    traffic.patch = lambda m: {**m, "bundle_hash": new_hash}
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"], info["bundle_hash"]) == (False, "miss", new_hash)
    assert names(traffic.model_files()) == sorted(kit.BUNDLE_FILES) and traffic.model_bytes() == total
    assert page.evaluate(ENTRIES_JS, CACHE) == cached_entries(kit, manifest, files, new_hash)

    # 5. The new version is what is cached now.
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"]) == (True, "hit") and traffic.model_bytes() == 0
    assert errors == []


def test_storage_full_runs_without_caching_and_says_so(blank, origin, kit):
    page, traffic, context, errors = blank
    cdp = context.new_cdp_session(page)
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 200_000})
    info = kit.load_api(page, TINY_URL)
    assert info["from_cache"] is False
    assert info["cache"].startswith("disabled: storage full (QuotaExceededError)"), info["cache"]
    assert page.evaluate("(n) => caches.has(n)", CACHE) is False   # no partial cache left
    reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 4, temperature: 0 })")
    assert reply["completion_tokens"] >= 1

    assert len(traffic.model_files()) == len(kit.BUNDLE_FILES)
    assert errors == []


def test_no_room_for_the_inflated_weights_keeps_the_files(blank, origin, kit):
    """Room for the bundle's files but not for weights.bin inflated as well: the files stay
    cached (weights.bin too) and the next visit reads them, with no model bytes."""
    page, traffic, context, errors = blank
    manifest, files = manifest_files(kit)
    total = sum(f["bytes"] for f in files.values())
    raw = manifest["runtime"]["weights_raw_bytes"]
    cdp = context.new_cdp_session(page)
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": total + raw // 2})
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"]) == (False, "miss"), info["cache"]
    entries = page.evaluate(ENTRIES_JS, CACHE)
    assert set(entries) == set(kit.BUNDLE_FILES), entries
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"], info["network_bytes"]) == (True, "hit", 0)
    assert traffic.model_bytes() == 0
    assert errors == []
