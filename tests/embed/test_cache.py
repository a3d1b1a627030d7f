"""Cache Storage for bundles (web/src/bundle_cache.js), with the tiny random bundle: byte
progress on the first load, zero model bytes on the next, a new manifest bundle_hash forcing a
fresh download, a corrupt cached file fetched again, a full quota running without caching.
The same reload with the real bundle is in test_api.py (zero bytes and faster)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser]

TINY_URL = "/models/tiny-random/"
CACHE = "smolchat-tiny-random"

ENTRIES_JS = """async (name) => {
  if (!(await caches.has(name))) return null;
  const cache = await caches.open(name);
  const out = {};
  for (const req of await cache.keys()) {
    const res = await cache.match(req);
    out[req.url.split('/').pop()] = { hash: res.headers.get('x-smolchat-bundle-hash'),
                                      sha: res.headers.get('x-smolchat-sha256'), bytes: (await res.arrayBuffer()).byteLength };
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
    entries = page.evaluate(ENTRIES_JS, CACHE)
    assert entries == {n: {"hash": manifest["bundle_hash"], "sha": f["sha256"], "bytes": f["bytes"]}
                       for n, f in files.items()}

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

    # 4. A rebuilt bundle (the manifest's bundle_hash changed): everything downloaded afresh,
    #    the old entries replaced.
    new_hash = "f" * 64
    traffic.patch = lambda m: {**m, "bundle_hash": new_hash}
    traffic.reset()
    reload(page, origin)
    info = kit.load_api(page, TINY_URL)
    assert (info["from_cache"], info["cache"], info["bundle_hash"]) == (False, "miss", new_hash)
    assert names(traffic.model_files()) == sorted(kit.BUNDLE_FILES) and traffic.model_bytes() == total
    entries = page.evaluate(ENTRIES_JS, CACHE)
    assert set(entries) == set(kit.BUNDLE_FILES) and {e["hash"] for e in entries.values()} == {new_hash}

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
