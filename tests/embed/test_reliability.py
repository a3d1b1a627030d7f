"""Issue 20: bad input loses nothing, aborts end at once, every load ends (ready or a typed
error), on the real site in Debian Chromium.

Downloads: a real local server (`Faulty`, the site's own handler) that stalls mid-body, cuts
the connection mid-body, answers 404 for a file of the site, or serves a tokenizer.json whose
manifest sha256 matches but whose content is no tokenizer. Requests and options: the JS API
on the tiny random bundle (same format and tokenizer as the real one; the tests need replies
that run long, not good ones). The served site: no directory listings, a CSP header the page
runs under, bundles limited to the page's origin unless the embedder opts in.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from functools import partial

import pytest

pytestmark = [pytest.mark.browser]

TINY_URL = "/models/tiny-random/"
STALL_MS = 3000
LONG = "Write a long essay about rivers."


class Faults:
    """path -> fault, read by the server thread: ("stall", n) sends n body bytes then nothing;
    ("cut", n) sends n bytes then closes; ("404",); ("body", bytes). `once` faults apply to
    the first request only (the retry then gets the real file)."""

    def __init__(self):
        self.table: dict[str, tuple] = {}
        self.once: set[str] = set()
        self.hits: list[str] = []
        self.release = threading.Event()   # ends the stalls at teardown

    def set(self, path: str, fault: tuple, once: bool = False):
        self.table[path] = fault
        if once:
            self.once.add(path)

    def take(self, path: str):
        fault = self.table.get(path)
        if fault is not None:
            self.hits.append(path)
            if path in self.once:
                del self.table[path]
        return fault


@pytest.fixture(scope="module")
def faulty(site):
    from smolchat_web.server import SiteHandler, SiteServer
    faults = Faults()

    class Faulty(SiteHandler):
        quiet = True

        def do_GET(self):
            path = self.path.split("?")[0]
            fault = faults.take(path)
            if fault is None:
                return super().do_GET()
            if fault[0] == "404":
                self.send_error(404)
                return
            if fault[0] == "body":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(fault[1])))
                self.end_headers()
                self.wfile.write(fault[1])
                return
            data = (site / path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:fault[1]])
            self.wfile.flush()
            if fault[0] == "stall":
                faults.release.wait(120)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    server = SiteServer(("127.0.0.1", 0), partial(Faulty, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    faults.origin = f"http://127.0.0.1:{server.server_address[1]}"
    faults.other = f"http://localhost:{server.server_address[1]}"   # the same files, another origin
    yield faults
    faults.release.set()
    server.shutdown()


@pytest.fixture
def blank(browser, faulty, kit):
    """A fresh profile on a page of the site that loads no model by itself."""
    kit.require_bundle(kit.TINY)
    faulty.table.clear()
    faulty.once.clear()
    faulty.hits.clear()
    context = browser.new_context()
    errors: list[str] = []
    page = kit.new_page(context, errors)
    page.goto(f"{faulty.origin}/examples/widget.html")
    yield page, errors
    context.close()


LOAD_JS = """async ([bundleUrl, options]) => {
  const { SmolChat } = await import('/smolchat.js');
  const t0 = performance.now();
  try {
    window.bot = await SmolChat.load({ bundleUrl, cache: false, ...options });
    return { ok: true, info: await window.bot.info(), s: (performance.now() - t0) / 1000 };
  } catch (e) {
    return { ok: false, name: e.name, kind: e.kind, message: e.message, details: e.details,
             s: (performance.now() - t0) / 1000 };
  }
}"""


def load(page, bundle=TINY_URL, **options):
    options.setdefault("stallTimeoutMs", STALL_MS)
    return page.evaluate(LOAD_JS, [bundle, options])


# ---------------------------------------------------------------------------------------------
# Downloads: every load ends in ready or a typed error that names its fix
# ---------------------------------------------------------------------------------------------

def test_stalled_download_ends_in_network_error_and_a_retry_loads(blank, faulty):
    page, _ = blank
    path = TINY_URL + "weights.bin"
    faulty.set(path, ("stall", 1_000_000), once=True)
    r = load(page)
    assert not r["ok"] and (r["name"], r["kind"]) == ("NetworkError", "network"), r
    assert faulty.origin + path in r["message"] and "stalled" in r["message"], r
    assert r["details"]["retryable"] is True and r["details"]["url"] == faulty.origin + path
    assert r["s"] < 60, r   # bounded: the stall limit, not forever
    again = load(page)
    assert again["ok"] and again["info"]["bundle_id"] == "tiny-random", again


def test_connection_cut_mid_download_is_a_network_error(blank, faulty):
    page, _ = blank
    path = TINY_URL + "weights.bin"
    faulty.set(path, ("cut", 1_000_000))
    r = load(page)
    assert not r["ok"] and r["name"] == "NetworkError", r
    assert faulty.origin + path in r["message"] and "was cut after" in r["message"], r


def test_stalled_worker_script_ends_in_network_error(blank, faulty):
    # a script the worker imports (import, not fetch): the page side bounds the worker's start
    page, _ = blank
    faulty.set("/vendor/tokenizers/tokenizers.min.mjs", ("stall", 1000))
    r = load(page)
    assert not r["ok"] and r["name"] == "NetworkError" and "worker.js" in r["message"], r
    assert r["s"] < 60, r


def test_missing_wheel_says_the_site_is_incomplete(blank, faulty, site):
    page, _ = blank
    wheel = "/" + json.loads((site / "site.json").read_text())["wheel"]
    faulty.set(wheel, ("404",))
    r = load(page)
    assert not r["ok"] and (r["name"], r["kind"]) == ("SiteIncomplete", "site_incomplete"), r
    assert "./build.sh site" in r["message"] and faulty.origin + wheel in r["message"], r
    assert "Traceback" not in json.dumps(r)


@pytest.mark.parametrize("path", [
    "/vendor/ort/ort-wasm-simd-threaded.wasm",     # fetched by ORT at the first session
    "/vendor/ort/ort-wasm-simd-threaded.mjs",      # imported by ORT (import(), not fetch)
    "/vendor/pyodide/python_stdlib.zip",           # fetched by Pyodide's boot
    "/vendor/tokenizers/tokenizers.min.mjs",       # a static import of worker.js: no worker at all
])
def test_missing_runtime_file_says_rebuild_the_site_not_the_bundle(blank, faulty, path):
    page, _ = blank
    faulty.set(path, ("404",))
    r = load(page)
    assert not r["ok"] and (r["name"], r["kind"]) == ("SiteIncomplete", "site_incomplete"), r
    assert "rebuild it with ./build.sh site" in r["message"] and "bundle" not in r["message"], r
    assert r["s"] < 120, r


def test_missing_kernels_fall_back_to_ort_and_js(blank, faulty):
    """The LM head kernel (kernels/lm_head.wasm, lm_head.js) and the expansion kernel
    (kernels/expand.wasm, expand_kernel.js) are accelerators, not parts the model needs: without
    them the load ends ready with ORT computing the head and JS expanding the weights, and says
    why."""
    page, _ = blank
    faulty.set("/kernels/lm_head.wasm", ("404",))
    faulty.set("/kernels/expand.wasm", ("404",))
    r = load(page)
    assert r["ok"], r
    assert r["info"]["lm_head"] == "ort", r["info"]
    assert "could not be fetched" in r["info"]["lm_head_note"] and "./build.sh site" in r["info"]["lm_head_note"]
    assert r["info"]["expand"] == "js", r["info"]
    assert "could not be fetched" in r["info"]["expand_note"] and "./build.sh site" in r["info"]["expand_note"]
    faulty.table.clear()
    again = load(page)
    assert again["ok"] and again["info"]["lm_head"] == "kernel" and again["info"]["lm_head_note"] is None, again
    assert again["info"]["expand"] == "kernel" and again["info"]["expand_note"] is None, again


def test_tokenizer_with_a_matching_sha_but_no_tokenizer_is_bundle_corrupt(blank, faulty, kit):
    page, _ = blank
    junk = b'{"version": "1.0", "note": "not a tokenizer"}'
    manifest = json.loads((kit.TINY / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = {"bytes": len(junk), "sha256": hashlib.sha256(junk).hexdigest()}
    faulty.set(TINY_URL + "manifest.json", ("body", json.dumps(manifest).encode()))
    faulty.set(TINY_URL + "tokenizer.json", ("body", junk))
    r = load(page)
    assert not r["ok"] and (r["name"], r["kind"]) == ("BundleCorrupt", "bundle_corrupt"), r
    assert "tokenizer.json is not a valid tokenizer" in r["message"] and "./build.sh bundle" in r["message"], r


# ---------------------------------------------------------------------------------------------
# The served site
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/models/", "/vendor/", "/vendor/ort/", "/wheels/", "/examples/"])
def test_no_directory_listings(faulty, path):
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(faulty.origin + path, timeout=10)
    assert e.value.code == 404
    assert b"Directory listing" not in e.value.read()


def test_csp_header_allows_only_the_site(faulty):
    import urllib.request
    for path in ("/index.html", "/worker.js", "/examples/api.html"):
        with urllib.request.urlopen(faulty.origin + path, timeout=10) as r:
            csp = r.headers["Content-Security-Policy"]
        rules = dict(part.strip().split(" ", 1) for part in csp.split(";"))
        assert rules["default-src"] == "'self'" and rules["connect-src"] == "'self'", csp
        assert rules["worker-src"] == "'self' blob:" and rules["object-src"] == "'none'", csp
        assert "'unsafe-eval'" not in rules["script-src"] and "'unsafe-inline'" not in rules["script-src"], csp
        assert "'wasm-unsafe-eval'" in rules["script-src"], csp
        if path == "/examples/api.html":
            assert "'sha256-" in rules["script-src"], csp   # its one inline module script


def test_a_bundle_from_another_origin_needs_the_embedders_consent(blank, faulty, host, browser):
    page, errors = blank
    foreign = faulty.other + TINY_URL
    r = load(page, foreign)
    assert not r["ok"] and r["name"] == "InvalidSetting", r
    assert "allowedOrigins" in r["message"] and faulty.other in r["message"], r
    # The chat page: ?bundle= from elsewhere is refused in plain words, nothing is fetched.
    page.goto(f"{faulty.origin}/index.html?bundle={foreign}")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    assert "bundleUrl" in page.text_content("#error")
    assert not [h for h in faulty.hits if "localhost" in h]
    assert [e for e in errors if "Content Security Policy" in e] == []
    # A third-party page (its own origin, no CSP of ours) that opts in: the API and the widget.
    host.pages["/embed.html"] = (f'<script type="module" src="{faulty.origin}/widget.js"></script>'
                                 f'<smol-chat id="no" bundle="{foreign}"></smol-chat>'
                                 f'<smol-chat id="yes" bundle="{foreign}" allowed-origins="{faulty.other}"></smol-chat>')
    context = browser.new_context()
    try:
        p = context.new_page()
        p.goto(host.url + "/embed.html")
        refused = p.evaluate("""async () => { await customElements.whenDefined('smol-chat');
            try { await document.getElementById('no').load(); return null; } catch (e) { return e.name; } }""")
        assert refused == "InvalidSetting"
        info = p.evaluate("""async () => { const bot = await document.getElementById('yes').load();
            return await bot.info(); }""")
        assert info["bundle_url"] == foreign and info["bundle_id"] == "tiny-random"
    finally:
        context.close()


# ---------------------------------------------------------------------------------------------
# Requests: aborts end at once, resets abort the reply, bad input loses nothing
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(browser, faulty, kit):
    """One page with the tiny bundle loaded through the JS API (window.bot)."""
    kit.require_bundle(kit.TINY)
    context = browser.new_context()
    errors: list[str] = []
    page = kit.new_page(context, errors)
    page.goto(f"{faulty.origin}/examples/widget.html")
    r = load(page)
    assert r["ok"], r
    yield page, errors
    context.close()


def js(tiny, body: str, arg=None):
    return tiny[0].evaluate(f"async (arg) => {{ const bot = window.bot; {body} }}", arg)


def test_aborting_a_queued_request_rejects_at_once_and_changes_nothing(tiny):
    r = js(tiny, """await bot.clearConversation();
      const order = [];
      const a = bot.chat(arg, { maxTokens: 400 }).then((x) => { order.push('a'); return x; });
      const c = new AbortController();
      const b = bot.chat('SECOND', { maxTokens: 80, signal: c.signal })
        .then(() => ({ name: 'resolved' }), (e) => { order.push('b'); return { name: e.name, reply: e.reply ?? null }; });
      c.abort();
      const [ra, rb] = await Promise.all([a, b]);
      return { order, b: rb, a: ra.completion_tokens, history: await bot.getConversationHistory() };""", LONG)
    assert r["b"]["name"] == "AbortError" and r["b"]["reply"] is None, r
    assert r["order"] == ["b", "a"], r          # b ended while a still ran
    assert [m["content"] for m in r["history"] if m["role"] == "user"] == [LONG], r


def test_aborting_a_request_just_started_changes_nothing(tiny):
    # cancelled in the same task as the call: the worker may have started it, Python not yet
    r = js(tiny, """await bot.clearConversation();
      const c = new AbortController();
      const p = bot.chat('FIRST', { maxTokens: 80, signal: c.signal });
      c.abort();
      let name = null;
      try { await p; } catch (e) { name = e.name; }
      return { name, history: await bot.getConversationHistory() };""")
    assert r["name"] == "AbortError", r
    assert r["history"] == [], r


@pytest.mark.parametrize("reset, expected", [
    ("bot.clearConversation()", []),
    ("bot.setSystemPrompt('You are a pirate.')", [{"role": "system", "content": "You are a pirate."}]),
    ("bot.setConversationHistory([{ role: 'user', content: 'u' }, { role: 'assistant', content: 'v' }])",
     [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]),
])
def test_a_reset_aborts_the_streaming_reply_and_the_queued_one(tiny, reset, expected):
    r = js(tiny, f"""await bot.setSystemPrompt(null);
      let first;
      const started = new Promise((resolve) => {{ first = resolve; }});
      const a = bot.chat(arg, {{ maxTokens: 1500, onToken: () => first() }});
      const b = bot.chat('QUEUED', {{ maxTokens: 1500 }}).then((x) => x.finish_reason, (e) => e.name);
      await started;
      await {reset};
      const ra = await a;
      return {{ a: [ra.finish_reason, ra.completion_tokens], b: await b,
               history: await bot.getConversationHistory() }};""", LONG)
    assert r["a"][0] == "abort" and r["a"][1] < 1500, r
    assert r["b"] == "AbortError", r
    assert r["history"] == expected, r


def test_openai_bad_messages_keep_the_history_and_the_system_prompt(tiny):
    kept = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "keep"},
            {"role": "assistant", "content": "me"}]
    bodies = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "x"},
                      {"role": "user", "content": "b"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "b"}], "temperature": 5},
        {"messages": [{"role": "user", "content": "b"}], "max_tokens": 5000},
    ]
    for body in bodies:
        r = js(tiny, """await bot.setConversationHistory(arg.kept);
          let error = null;
          try { await bot.chat.completions.create(arg.body); } catch (e) { error = { name: e.name, message: e.message }; }
          return { error, history: await bot.getConversationHistory(), info: (await bot.info()).system_prompt };""",
               {"kept": kept, "body": body})
        assert r["error"] is not None and r["error"]["name"] in ("InvalidInput", "InvalidSetting",
                                                                 "ContextWindowExceeded"), (body, r)
        assert r["history"] == kept, (body, r)


@pytest.mark.parametrize("option, value_js, shown", [
    ("seed", "NaN", "seed=NaN"),
    ("seed", "Infinity", "seed=Infinity"),
    ("stop", "NaN", "stop=NaN"),
    ("temperature", "NaN", "temperature=NaN"),
    ("temperature", "-Infinity", "temperature=-Infinity"),
    ("maxTokens", "10n", "maxTokens=10n"),
    ("temperature", "({ valueOf() { return 0.5; } })", "temperature="),
    ("topP", "'0.5'", 'topP="0.5"'),
    ("maxTokens", "2.5", "maxTokens=2.5"),
    ("onToken", "'x'", 'onToken="x"'),
    ("signal", "({ aborted: false })", "signal="),
])
def test_options_json_cannot_carry_are_refused_before_the_worker(tiny, option, value_js, shown):
    r = js(tiny, f"""await bot.setSystemPrompt(null);
      await bot.setConversationHistory([{{ role: 'user', content: 'keep' }}, {{ role: 'assistant', content: 'me' }}]);
      let error = null;
      try {{ await bot.chat('hi', {{ maxTokens: 4, {option}: {value_js} }}); }}
      catch (e) {{ error = {{ name: e.name, kind: e.kind, message: e.message, field: e.details.field }}; }}
      return {{ error, history: await bot.getConversationHistory() }};""")
    e = r["error"]
    assert e is not None and (e["name"], e["kind"], e["field"]) == ("InvalidSetting", "invalid_setting", option), r
    assert shown in e["message"] and "allowed" in e["message"] and "None" not in e["message"], r
    assert len(r["history"]) == 2, r


@pytest.mark.parametrize("field, value_js, shown", [
    ("max_tokens", "NaN", "max_tokens=NaN"),
    ("seed", "Infinity", "seed=Infinity"),
    ("temperature", "10n", "temperature=10n"),
])
def test_openai_fields_json_cannot_carry_are_named_as_sent(tiny, field, value_js, shown):
    r = js(tiny, f"""let error = null;
      try {{ await bot.chat.completions.create({{ messages: [{{ role: 'user', content: 'x' }}], {field}: {value_js} }}); }}
      catch (e) {{ error = {{ name: e.name, message: e.message }}; }}
      return error;""")
    assert r is not None and r["name"] == "InvalidSetting" and shown in r["message"], r


def test_no_console_errors(tiny):
    assert tiny[1] == []


def test_unload_ends_the_streaming_reply_and_every_later_call_is_typed(blank):
    page, _ = blank
    assert load(page)["ok"]
    r = page.evaluate("""async () => {
      const bot = window.bot;
      let first;
      const started = new Promise((resolve) => { first = resolve; });
      const a = bot.chat('Write a long essay about rivers.', { maxTokens: 1500, onToken: () => first() })
        .then((x) => [x.finish_reason, x.completion_tokens], (e) => [e.name, null]);
      const queued = bot.chat('QUEUED', { maxTokens: 1500 }).then((x) => x.finish_reason, (e) => e.name);
      await started;
      await bot.unload();
      let after = null;
      try { await bot.chat('hi'); } catch (e) { after = e.name; }
      return { a: await a, queued: await queued, after };
    }""")
    assert r["a"][0] in ("abort", "AbortError", "ModelNotLoaded") and (r["a"][1] or 0) < 1500, r
    assert r["queued"] in ("AbortError", "ModelNotLoaded"), r
    assert r["after"] == "ModelNotLoaded", r
