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
                 "wait_bundle", "tokenizer", "engine_texts", "session", "engine_load", "warmup"):
        assert name in st, (name, st)
        start, end = st[name]
        assert 0 <= start <= end <= info["load_ms"] + 1, (name, st)
    # the bundle is read on the helper thread while Python boots, not after it
    assert st["read_verify"][0] < st["python_boot"][1], st
    assert st["inflate"][0] >= st["read_verify"][1] - 1 and st["expand"][0] >= st["inflate"][1] - 1, st
    # the session needs both: it starts once Python and the expanded weights are there
    assert st["session"][0] >= max(st["python_wheel"][1], st["expand"][1]) - 1, st
    assert st["warmup"][0] >= st["session"][1] - 1, st
    # Python parses the bundle's texts before the session, not after it (bridge.py BundleTexts)
    assert st["tokenizer"][1] - 1 <= st["engine_texts"][0] <= st["engine_texts"][1] <= st["session"][0] + 1, st

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


def wheels_requested(urls: list[str]) -> list[str]:
    return sorted({u.split("?")[0].rsplit("/", 1)[-1] for u in urls if ".whl" in u})


def test_network_then_cached_load_both_answer(blank, origin, kit):
    page, context, errors = blank
    requests: list[str] = []   # every request of the page and its workers
    context.on("request", lambda r: requests.append(r.url))
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r
    assert (r["info"]["from_cache"], r["info"]["cache"]) == (False, "miss")
    # a first visit boots Python from the site's own snapshot (made when the site was built)
    assert r["info"]["python_snapshot"] == "site"
    assert r["info"]["python_snapshot_zero_mb"] > 1
    check_load(page, r["info"])
    reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 3, temperature: 0 })")
    assert reply["completion_tokens"] >= 1
    first_reply = reply["text"]

    page.goto(f"{origin}/examples/widget.html")
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r
    assert (r["info"]["from_cache"], r["info"]["cache"]) == (True, "hit")
    assert r["info"]["python_snapshot"] == "hit"
    # the restore left the snapshot's zero blocks unwritten (python_snapshot.js sparseRestore:
    # ~15 MB of Pyodide's 30 MB heap stay non-resident) and Python runs the same: same reply
    assert r["info"]["python_snapshot_zero_mb"] > 1
    check_load(page, r["info"])
    reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 3, temperature: 0 })")
    assert reply["completion_tokens"] >= 1
    assert reply["text"] == first_reply
    assert errors == []
    # a ChatML bundle needs no jinja2: only our wheel is fetched, on both loads
    assert wheels_requested(requests) == ["smolchat-0.1.0-py3-none-any.whl"], wheels_requested(requests)
    assert "python_jinja2" not in r["info"]["stages"]


# A template only jinja2 renders (unk_token first, contents trimmed): not the ChatML fast path.
JINJA_TEMPLATE = ("{{ unk_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] "
                  "+ '\\n' + message['content'] | trim + '<|im_end|>\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def route_template(context, kit, template: str) -> None:
    """The tiny bundle served with `template` as its chat template (tokenizer_config.json and
    a manifest whose sizes and sha256 match it)."""
    config = json.loads((kit.TINY / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    body = json.dumps(config).encode()
    manifest = json.loads((kit.TINY / "manifest.json").read_text())
    manifest["files"]["tokenizer_config.json"] = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    manifest["bundle_hash"] = "1" * 64  # not the cache of the stock tiny bundle
    def serve(data):
        return lambda route: route.fulfill(status=200, body=data, headers={"Content-Type": "application/json"})
    context.route("**/models/tiny-random/manifest.json", serve(json.dumps(manifest).encode()))
    context.route("**/models/tiny-random/tokenizer_config.json", serve(body))


def test_jinja2_is_loaded_only_for_a_template_that_needs_it(blank, origin, kit, site):
    """A bundle whose chat template is not the known ChatML one gets jinja2 + MarkupSafe
    installed on demand and chats with the template's own tokens; without their wheels its
    load is SiteIncomplete naming the wheel; a ChatML bundle loads without them."""
    page, context, errors = blank
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    jinja_wheel = json.loads((site / "site.json").read_text())["python_packages"][0]
    assert "jinja2" in jinja_wheel
    missing = lambda route: route.fulfill(status=404, body="")  # noqa: E731
    context.route(f"**/{jinja_wheel}", missing)
    route_template(context, kit, JINJA_TEMPLATE)
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert r.get("error"), r
    assert (r["error"]["name"], r["error"]["kind"]) == ("SiteIncomplete", "site_incomplete"), r
    assert jinja_wheel in r["error"]["message"] and "./build.sh site" in r["error"]["message"], r

    context.unroute(f"**/{jinja_wheel}")
    requests.clear()
    page.goto(f"{origin}/examples/widget.html")
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r
    assert "python_jinja2" in r["info"]["stages"], r["info"]["stages"]
    assert wheels_requested(requests) == ["jinja2-3.1.6-py3-none-any.whl", "markupsafe-3.0.3-py3-none-any.whl",
                                          "smolchat-0.1.0-py3-none-any.whl"], wheels_requested(requests)
    reply = page.evaluate("() => window.bot.chat('  Hello  ', { maxTokens: 3, temperature: 0 })")
    assert reply["completion_tokens"] >= 1
    ids = reply["prompt_token_ids"]
    # <|endoftext|> (unk_token, the template's start) <|im_start|> user \n Hello <|im_end|> ...
    hello = page.evaluate("() => window.bot.encode('user\\nHello')")
    assert ids[:2 + len(hello)] == [0, 1, *hello] and ids[2 + len(hello)] == 2, (ids, hello)

    context.unroute("**/models/tiny-random/manifest.json")
    context.unroute("**/models/tiny-random/tokenizer_config.json")
    context.route(f"**/{jinja_wheel}", missing)
    page.goto(f"{origin}/examples/widget.html")
    r = page.evaluate(LOAD_JS, TINY_URL)
    assert "info" in r, r   # the stock template is ChatML: the missing wheel is never asked for
    assert "python_jinja2" not in r["info"]["stages"]
    assert [e for e in errors if "404" not in e] == [], errors


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
REWRITE_SNAPSHOT_JS = """async ([name, flipBuildId, version, wheel]) => {
  const cache = await caches.open(name);
  const [key] = await cache.keys();
  const old = await cache.match(key);
  const bytes = new Uint8Array(await old.arrayBuffer());
  if (flipBuildId) for (let i = 16; i < 48; i++) bytes[i] ^= 0x5a;   // Pyodide's BUILD_ID field
  const headers = new Headers(old.headers);
  if (version) headers.set('x-pyodide-version', version);
  if (wheel) headers.set('x-smolchat-wheel', wheel);
  await cache.put(key, new Response(bytes, { headers }));
  return bytes.length;
}"""


BARE_SNAPSHOT_JS = """async ([name]) => {
  const { loadPyodide } = await import('/vendor/pyodide/pyodide.mjs');
  const pyodide = await loadPyodide({ indexURL: '/vendor/pyodide/', _makeSnapshot: true });
  const bytes = pyodide.makeMemorySnapshot();
  const cache = await caches.open(name);
  const [key] = await cache.keys();
  const old = await cache.match(key);
  await cache.put(key, new Response(bytes, { headers: old.headers }));
  return bytes.length;
}"""


def test_site_snapshot_is_used_only_when_it_fits_and_never_fails_a_load(blank, origin, kit):
    """The site's own Python snapshot (site.json python_snapshot, made by the site build in
    Node) boots a first visit; one that site.json says was made from another wheel or by another
    Pyodide is not fetched, and a missing file means a full boot: both loads end ready and give
    the reply the snapshot boot gave, and a snapshot of their own is kept."""
    page, context, errors = blank
    site = json.loads((kit.SITE / "site.json").read_text())
    meta = site["python_snapshot"]
    assert meta["path"] == "python.snapshot.gz" and meta["pyodide"] == site["versions"]["pyodide"]
    wheel = (kit.SITE / site["wheel"]).read_bytes()
    assert meta["wheel_sha256"] == hashlib.sha256(wheel).hexdigest()
    assert len(zlib.decompress((kit.SITE / meta["path"]).read_bytes(), 47)) == meta["bytes"] > 10_000_000
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))

    def visit():
        page.evaluate("(n) => caches.delete(n)", SNAPSHOT_CACHE)
        requests.clear()
        page.goto(f"{origin}/examples/widget.html")
        r = page.evaluate(LOAD_JS, TINY_URL)
        assert "info" in r, r
        reply = page.evaluate("() => window.bot.chat('Hello', { maxTokens: 4, temperature: 0 })")
        fetched = any(u.endswith("/" + meta["path"]) for u in requests)
        return r["info"]["python_snapshot"], fetched, reply["text"]

    state, fetched, first = visit()
    assert (state, fetched) == ("site", True)
    def serve_site_json(patch):
        body = json.dumps({**site, "python_snapshot": {**meta, **patch}})
        return lambda route: route.fulfill(status=200, headers={"Content-Type": "application/json"}, body=body)

    for patch in ({"wheel_sha256": "f" * 64}, {"pyodide": "0.0.1"}):
        context.route("**/site.json", serve_site_json(patch))
        assert visit() == ("stored", False, first), patch
        context.unroute("**/site.json")
    context.route("**/" + meta["path"], lambda route: route.fulfill(status=404, body="gone"))
    state, fetched, reply = visit()
    assert (state, fetched, reply) == ("stored", True, first)
    context.unroute("**/" + meta["path"])
    assert errors == [] or all("404" in e for e in errors), errors


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

    # the first visit boots from the site's own snapshot (made when the site was built) and
    # keeps it; the next one reads it back
    assert visit() == "site"
    assert visit() == "hit"
    assert page.evaluate(REWRITE_SNAPSHOT_JS, [SNAPSHOT_CACHE, True, None, None]) > 1_000_000
    state = visit()
    assert state.startswith("rejected: Snapshot build id mismatch"), state
    assert visit() == "hit"  # the refused one was replaced by a fresh snapshot
    page.evaluate(REWRITE_SNAPSHOT_JS, [SNAPSHOT_CACHE, False, "0.0.1", None])
    state = visit()
    assert state.startswith("rejected: made by Pyodide 0.0.1"), state
    assert visit() == "hit"
    # the heap holds the smolchat modules it was made with: another wheel's is refused
    page.evaluate(REWRITE_SNAPSHOT_JS, [SNAPSHOT_CACHE, False, None, "f" * 64])
    state = visit()
    assert state.startswith("rejected: made with another smolchat wheel (sha256 ffffffffffff"), state
    assert visit() == "hit"
    # a heap with the right headers but without our modules (Pyodide's bare boot, made here
    # in the page): Python boots without it, the load ends ready, a good one replaces it
    assert page.evaluate(BARE_SNAPSHOT_JS, [SNAPSHOT_CACHE]) > 1_000_000
    state = visit()
    assert state == "rejected: the snapshot holds no smolchat.bridge", state
    assert visit() == "hit"
    assert errors == []
