"""The load path (web/src/worker.js + load_worker.js + python_snapshot.js, issue 17), with the
tiny random bundle: the bundle is read, verified, inflated and expanded on a helper thread
while Python boots (from a memory snapshot on a return visit, version-checked);
every load reports its stages and one progress bar that says what it does; the cached and
the network path both end ready and answering; a load that breaks half-way ends in a typed
error that names the fix. No timing is asserted: only what ran, in which order, and what the
visitor sees."""

from __future__ import annotations

import hashlib
import json
import zlib

import pytest

pytestmark = [pytest.mark.browser]

TINY_URL = "/models/tiny-random/"
STAGE_NAMES = ["download", "python", "compile", "warmup"]
LOAD_JS = """async (bundleUrl) => {
  const { SmolChat } = await import('/smolchat.js');
  window.progress = [];
  try {
    window.bot = await SmolChat.load({ bundleUrl, onProgress: (p) => window.progress.push(p) });
    return { info: await window.bot.info() };
  } catch (e) {
    return { error: { kind: e.kind, name: e.name, message: e.message } };
  }
}"""


@pytest.fixture
def blank(browser, origin, kit):
    """A page of the app's origin that loads no model by itself (fresh profile)."""
    kit.require_bundle(kit.TINY)
    context = browser.new_context()
    errors: list[str] = []
    page = kit.new_page(context, errors)
    page.goto(f"{origin}/examples/widget.html")
    yield page, context, errors
    context.close()


def check_load(page, info):
    """What every successful load shows: its stages, the helper's beside Python, and a bar."""
    st = info["stages"]
    for name in ("ort_init", "python_boot", "python_wheel", "read_verify", "inflate", "expand",
                 "wait_bundle", "tokenizer", "session", "engine_load", "warmup"):
        assert name in st, (name, st)
        start, end = st[name]
        assert 0 <= start <= end <= info["load_ms"] + 1, (name, st)
    # the bundle is read on the helper thread while Python boots, not after it
    assert st["read_verify"][0] < st["python_boot"][1], st
    assert st["inflate"][0] >= st["read_verify"][1] - 1 and st["expand"][0] >= st["inflate"][1] - 1, st
    # the session needs both: it starts once Python and the expanded weights are there
    assert st["session"][0] >= max(st["python_wheel"][1], st["expand"][1]) - 1, st
    assert st["warmup"][0] >= st["session"][1] - 1, st

    events = page.evaluate("() => window.progress")
    percents = [p["percent"] for p in events]
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert all(p["stage"] in STAGE_NAMES and p["message"] for p in events), events
    shown = [STAGE_NAMES.index(p["stage"]) for p in events if p["stage"] != "download"]
    assert shown == sorted(shown), "the shown stage never goes back"
    downloads = [p for p in events if p["stage"] == "download"]
    assert downloads and downloads[-1]["loaded"] == downloads[-1]["total"] == info["download_bytes"]
    messages = " | ".join(dict.fromkeys(p["message"] for p in events))
    for words in ("Reading the model", "Starting Python", "Expanding", "ONNX Runtime session", "Ready"):
        assert words in messages, (words, messages)


def test_network_then_cached_load_both_answer(blank, origin, kit):
    page, _, errors = blank
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r
    assert (r["info"]["from_cache"], r["info"]["cache"]) == (False, "miss")
    assert r["info"]["python_snapshot"] == "stored"
    check_load(page, r["info"])
    reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 3, temperature: 0 })")
    assert reply["completion_tokens"] >= 1

    page.goto(f"{origin}/examples/widget.html")
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r
    assert (r["info"]["from_cache"], r["info"]["cache"]) == (True, "hit")
    assert r["info"]["python_snapshot"] == "hit"
    check_load(page, r["info"])
    reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 3, temperature: 0 })")
    assert reply["completion_tokens"] >= 1
    assert errors == []


def test_missing_load_helper_is_a_typed_error(browser, site, kit, tmp_path):
    """A site served without load_worker.js (a runtime file missing): the load ends, typed,
    naming the fix. The site is the built one, linked file by file, less that file."""
    from smolchat_web.server import serve_in_thread
    kit.require_bundle(kit.TINY)
    for entry in site.iterdir():
        if entry.name != "load_worker.js":
            (tmp_path / entry.name).symlink_to(entry.resolve())
    server, url = serve_in_thread(tmp_path)
    context = browser.new_context()
    try:
        page = kit.new_page(context)
        page.goto(f"{url}/examples/widget.html")
        r = page.evaluate(LOAD_JS, TINY_URL)
        assert r.get("error"), r
        assert r["error"]["kind"] == "internal" and "./build.sh site" in r["error"]["message"], r
    finally:
        context.close()
        server.shutdown()


def test_weights_that_do_not_inflate_fail_half_way_as_bundle_corrupt(blank, kit):
    """weights.bin cut in half, with a manifest whose bytes and sha256 match the cut file: the
    read and verification pass, the inflate on the helper thread fails; the load ends with
    BundleCorrupt naming the rebuild, and no model is left half-loaded."""
    page, context, _ = blank
    raw = (kit.TINY / "weights.bin").read_bytes()
    cut = raw[: len(raw) // 2]
    assert zlib.decompressobj().decompress(cut)  # a valid start: the stream breaks half-way
    manifest = json.loads((kit.TINY / "manifest.json").read_text())
    manifest["files"]["weights.bin"] = {"bytes": len(cut), "sha256": hashlib.sha256(cut).hexdigest()}
    manifest["bundle_hash"] = "0" * 64  # not the cache of another test's bundle
    context.route("**/models/tiny-random/manifest.json",
                  lambda route: route.fulfill(status=200, body=json.dumps(manifest),
                                              headers={"Content-Type": "application/json"}))
    context.route("**/models/tiny-random/weights.bin",
                  lambda route: route.fulfill(status=200, body=cut,
                                              headers={"Content-Type": "application/octet-stream"}))
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert r.get("error"), r
    assert (r["error"]["kind"], r["error"]["name"]) == ("bundle_corrupt", "BundleCorrupt"), r
    assert "inflate" in r["error"]["message"] and "rebuild" in r["error"]["message"], r
    # the page can load again afterwards (a fresh instance; the failed one was terminated)
    context.unroute("**/models/tiny-random/manifest.json")
    context.unroute("**/models/tiny-random/weights.bin")
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r


SNAPSHOT_CACHE = "smolchat-python-snapshot"
REWRITE_SNAPSHOT_JS = """async ([name, flipBuildId, version]) => {
  const cache = await caches.open(name);
  const [key] = await cache.keys();
  const old = await cache.match(key);
  const bytes = new Uint8Array(await old.arrayBuffer());
  if (flipBuildId) for (let i = 16; i < 48; i++) bytes[i] ^= 0x5a;   // Pyodide's BUILD_ID field
  const headers = new Headers(old.headers);
  if (version) headers.set('x-pyodide-version', version);
  await cache.put(key, new Response(bytes, { headers }));
  return bytes.length;
}"""


def test_python_snapshot_is_used_on_return_and_its_version_is_checked(blank, origin):
    """The first visit keeps a Pyodide memory snapshot, the next boots from it; a snapshot of
    another Pyodide build (its build id) or version (our header) is refused, dropped and
    replaced, and the load still ends ready and answering."""
    page, _, errors = blank

    def visit():
        page.goto(f"{origin}/examples/widget.html")
        r = page.evaluate(LOAD_JS, TINY_URL)
        assert "info" in r, r
        reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 2, temperature: 0 })")
        assert reply["completion_tokens"] >= 1
        return r["info"]["python_snapshot"]

    assert visit() == "stored"
    assert visit() == "hit"
    assert page.evaluate(REWRITE_SNAPSHOT_JS, [SNAPSHOT_CACHE, True, None]) > 1_000_000
    state = visit()
    assert state.startswith("rejected: Snapshot build id mismatch"), state
    assert visit() == "hit"  # the refused one was replaced by a fresh snapshot
    page.evaluate(REWRITE_SNAPSHOT_JS, [SNAPSHOT_CACHE, False, "0.0.1"])
    state = visit()
    assert state.startswith("rejected: made by Pyodide 0.0.1"), state
    assert visit() == "hit"
    assert errors == []
