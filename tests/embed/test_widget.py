"""The <smol-chat> widget on a third-party page: loaded from the app's origin into a page on
another origin (and site) whose CSS is hostile, it answers with a streamed reply, and neither
side's CSS reaches the other. Also the same-origin example page web/examples/widget.html.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.browser]

HOSTILE_CSS = """
* { color: red !important; font-size: 40px !important; font-family: "Comic Sans MS", cursive !important;
    line-height: 3 !important; letter-spacing: 5px !important; box-sizing: content-box !important; }
div { display: none !important; }
p, section, header, form { display: none; padding: 30px; }
button, textarea { background: lime !important; padding: 50px !important; border: 9px solid orange !important; }
html { font-size: 40px !important; }
"""

# Computed styles compared between the hostile page and a plain one (same widget state).
STYLE_PROPS = ["color", "font-size", "font-family", "line-height", "letter-spacing", "box-sizing",
               "display", "background-color", "padding-top", "border-top-width", "position",
               "width", "height"]
STYLE_TARGETS = [".root", ".launcher", ".panel", "header", ".title", ".messages", "textarea",
                 ".send", ".stop", ".status"]

FINGERPRINT_JS = """([targets, props]) => {
  const el = document.querySelector('smol-chat');
  const out = {};
  for (const sel of targets) {
    const node = el.shadowRoot.querySelector(sel);
    const cs = getComputedStyle(node);
    out[sel] = Object.fromEntries(props.map((p) => [p, cs.getPropertyValue(p)]));
  }
  const host = getComputedStyle(el);
  out[':host'] = { position: host.position, display: host.display, color: host.color, 'font-size': host.fontSize };
  return out;
}"""


def host_page(origin: str, css: str, bundle_attr: str = "", extra: str = "") -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Third-party shop</title><link rel="icon" href="data:,">
<style>{css}</style>
<script type="module" src="{origin}/widget.js"></script></head>
<body>
<h1>Our shop</h1><header id="host-header">host header</header>
<span id="host-msg" class="msg user">host span with the widget's class names</span>
{extra}
<smol-chat {bundle_attr} title="Shop helper" theme="dark" temperature="0" max-tokens="24"
  system-prompt="You are a helpful AI assistant named SmolLM, trained by Hugging Face"></smol-chat>
</body></html>"""


def fingerprint(page):
    page.wait_for_function("() => customElements.get('smol-chat') && document.querySelector('smol-chat').shadowRoot")
    return page.evaluate(FINGERPRINT_JS, [STYLE_TARGETS, STYLE_PROPS])


@pytest.mark.real_model
def test_widget_on_a_third_party_page_streams_an_answer(browser, origin, host, artifacts, kit):
    kit.require_bundle(kit.COMPACT)
    # The reference: the same widget on a plain page of the same host (bundle that does not
    # exist, so opening it shows the error in plain words without loading a model).
    host.pages["/plain.html"] = host_page(origin, "", f'bundle="{origin}/models/no-such-bundle/"')
    host.pages["/hostile.html"] = host_page(origin, HOSTILE_CSS)   # default bundle: next to widget.js

    context = browser.new_context(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    try:
        traffic = kit.BundleTraffic(context, origin)
        plain = kit.new_page(context, errors)
        plain.goto(host.url + "/plain.html")
        reference = fingerprint(plain)
        plain.evaluate("() => document.querySelector('smol-chat').open()")
        plain.wait_for_function("() => !document.querySelector('smol-chat').shadowRoot.querySelector('.error').hidden")
        error_text = plain.evaluate("() => document.querySelector('smol-chat').shadowRoot.querySelector('.error').textContent")
        assert "no-such-bundle" in error_text and "build" in error_text, error_text
        reference_open = fingerprint(plain)
        plain.close()
        errors.clear()

        page = kit.new_page(context, errors)
        page.goto(host.url + "/hostile.html")
        closed = fingerprint(page)
        assert closed == reference, _diff(closed, reference)
        assert page.evaluate("() => crossOriginIsolated") is False

        # Open: the progress bar shows, then the model is ready.
        page.evaluate("() => document.querySelector('smol-chat').shadowRoot.querySelector('.launcher').click()")
        page.wait_for_function("() => { const r = document.querySelector('smol-chat').shadowRoot;"
                               " return parseFloat(r.querySelector('.fill').style.width) > 0; }")
        page.screenshot(path=str(artifacts / "widget-loading.png"))
        info = page.evaluate("async () => { const el = document.querySelector('smol-chat'); await el.load(); return await el.info(); }")
        (artifacts / "widget-info.json").write_text(json.dumps(info, indent=2))
        assert info["threads"] == 1 and info["cross_origin_isolated"] is False, info
        assert info["bundle_url"] == f"{origin}/models/smollm2-135m-instruct-compact/", info["bundle_url"]
        status = page.evaluate("() => document.querySelector('smol-chat').shadowRoot.querySelector('.status').textContent")
        assert "not cross-origin isolated" in status, status
        opened = fingerprint(page)
        for sel in STYLE_TARGETS:   # the loaded panel vs the plain page's open (failed) panel,
            if sel in (".status", ".messages"):   # whose error line takes height from the list
                continue
            assert opened[sel] == reference_open[sel], (sel, _diff({sel: opened[sel]}, {sel: reference_open[sel]}))

        # Type and press Enter, as a visitor does; count the streamed updates of the bubble.
        page.evaluate("""() => {
          const root = document.querySelector('smol-chat').shadowRoot;
          window.updates = 0;
          new MutationObserver((records) => { window.updates += records.length; })
            .observe(root.querySelector('.messages'), { subtree: true, characterData: true, childList: true });
          window.reply = new Promise((resolve) => document.addEventListener('smolchat-reply', (e) => resolve(e.detail), { once: true }));
        }""")
        textarea = page.locator("smol-chat textarea")
        textarea.fill("What is the capital of France?")
        textarea.press("Enter")
        reply = page.evaluate("() => window.reply")
        bubble = page.evaluate("""() => { const b = [...document.querySelector('smol-chat').shadowRoot.querySelectorAll('.msg.assistant')].pop();
                                   const md = b.querySelector('.md');
                                   return { raw: b.dataset.raw, text: md.textContent, copy: b.querySelectorAll('.reply-copy').length,
                                            tags: [...md.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()) }; }""")
        page.screenshot(path=str(artifacts / "widget-answer.png"))
        # The answer's quality is checked once, in test_api.py ("Paris"); here: it streamed,
        # as text, and the bubble holds exactly the reply.
        assert reply["completion_tokens"] >= 3 and reply["text"].strip(), reply
        # rendered as Markdown (a sentence: one paragraph), with a Copy button for the reply
        assert bubble["raw"] == reply["text"] and bubble["copy"] == 1, bubble
        assert bubble["text"].strip() and all(w in reply["text"] for w in bubble["text"].split()), bubble
        assert set(bubble["tags"]) <= {"p", "br", "strong", "em", "code", "ol", "ul", "li", "a"}, bubble
        assert page.evaluate("() => window.updates") >= 3, "the reply was not streamed piece by piece"

        # Host CSS did not change the widget; the widget's CSS did not leak into the host.
        bubble_style = page.evaluate("""() => { const b = document.querySelector('smol-chat').shadowRoot.querySelector('.msg.assistant');
                                         const cs = getComputedStyle(b); return [cs.color, cs.fontSize, cs.display, cs.fontFamily]; }""")
        assert bubble_style[0] == "rgb(249, 250, 251)" and bubble_style[1] == "14px" and bubble_style[2] == "block", bubble_style
        assert "Comic" not in bubble_style[3]
        leak = page.evaluate("""() => { const s = getComputedStyle(document.getElementById('host-msg'));
                                 const h = getComputedStyle(document.getElementById('host-header'));
                                 return [s.backgroundColor, s.borderRadius, h.display, h.borderBottomWidth]; }""")
        assert leak == ["rgba(0, 0, 0, 0)", "0px", "none", "0px"], leak

        # Stop mid-reply: the partial text stays, the panel is ready for the next message.
        textarea.fill("Write a long story about a dragon who learns to bake bread.")
        textarea.press("Enter")
        page.wait_for_function("""() => { const r = document.querySelector('smol-chat').shadowRoot;
            const b = [...r.querySelectorAll('.msg.assistant')].pop();
            return r.querySelectorAll('.msg.assistant').length === 2 && b.textContent.length > 0 && !r.querySelector('.stop').disabled; }""")
        page.locator("smol-chat .stop").click()
        page.wait_for_function("""() => { const r = document.querySelector('smol-chat').shadowRoot;
            return [...r.querySelectorAll('.msg.assistant')].pop().dataset.finish === 'abort'
                   && !r.querySelector('.send').disabled && r.querySelector('.stop').disabled; }""")
        assert page.evaluate("() => document.querySelector('smol-chat').shadowRoot.querySelector('.status').textContent") == "Stopped"

        # Everything came from the app's origin or the host: nothing else.
        assert traffic.other_origins == []
        assert all(u.startswith(origin + "/models/") for u in traffic.requests)
        assert traffic.model_bytes() == info["network_bytes"] == info["download_bytes"]
        assert not [e for e in errors if "no-such-bundle" not in e], errors
    finally:
        context.close()


def _diff(a: dict, b: dict) -> dict:
    return {sel: {p: (a[sel].get(p), b.get(sel, {}).get(p)) for p in a[sel] if a[sel].get(p) != b.get(sel, {}).get(p)}
            for sel in a if a[sel] != b.get(sel)}


def test_example_widget_page(browser, origin, kit):
    """web/examples/widget.html: the element is defined, the launcher opens the panel and the
    load starts with a moving progress bar (the full answer path is tested above)."""
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = kit.new_page(context, errors)
        page.goto(f"{origin}/examples/widget.html")
        page.wait_for_function("() => customElements.get('smol-chat') !== undefined")
        assert page.evaluate("() => document.querySelector('smol-chat').shadowRoot.querySelector('.panel').hidden")
        assert page.locator("smol-chat .launcher").inner_text() == "Ask SmolLM2"
        page.locator("smol-chat .launcher").click()
        page.wait_for_function("() => { const r = document.querySelector('smol-chat').shadowRoot;"
                               " return !r.querySelector('.panel').hidden && parseFloat(r.querySelector('.fill').style.width) > 0; }",
                               timeout=120_000)
        assert page.locator("smol-chat .launcher").get_attribute("aria-expanded") == "true"
        page.locator("smol-chat .close").click()
        assert page.evaluate("() => document.querySelector('smol-chat').shadowRoot.querySelector('.panel').hidden")
        assert errors == []
    finally:
        context.close()


def test_widget_on_an_isolated_third_party_page_uses_two_threads(browser, origin, host, kit):
    """A host that sends COOP/COEP itself: the blob: worker is isolated too, and ORT Web's
    thread workers start from the app's origin (tiny bundle: plumbing only)."""
    kit.require_bundle(kit.TINY)
    host.pages["/isolated/tiny.html"] = f"""<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<script type="module" src="{origin}/widget.js"></script></head>
<body><smol-chat bundle="tiny-random" preload></smol-chat></body></html>"""
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = kit.new_page(context, errors)
        page.goto(host.url + "/isolated/tiny.html")
        assert page.evaluate("() => crossOriginIsolated") is True
        info = page.evaluate("async () => { const el = document.querySelector('smol-chat'); await el.load(); return await el.info(); }")
        assert (info["threads"], info["cross_origin_isolated"]) == (2, True), info
        assert info["bundle_url"] == f"{origin}/models/tiny-random/"
        reply = page.evaluate("() => document.querySelector('smol-chat').send('Hi')")
        assert reply["completion_tokens"] >= 1
        assert errors == []
    finally:
        context.close()


WIDGET_HOSTILE = [
    "<img src=x onerror=\"window.pwned=1\">", "<script>window.pwned=1</script>",
    "[click](javascript:window.pwned=1)", "<svg onload=\"window.pwned=1\"></svg>",
    "see [docs](https://example.com/docs)", "```js\nconsole.log('<b>hi</b>');\n```",
]


def test_widget_renders_markdown_safely_in_its_shadow_root(browser, origin, host, kit):
    """The widget's renderer (markdown.js, the very module widget.js imported from the app's
    origin) inside the shadow root on a third-party page: nothing hostile comes alive, links
    are http(s) in a new tab, code is monospace with a working Copy button."""
    host.pages["/md.html"] = f"""<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<style>* {{ font-family: "Comic Sans MS", cursive !important; }}</style>
<script type="module" src="{origin}/widget.js"></script></head>
<body><smol-chat bundle="tiny-random" open></smol-chat></body></html>"""
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=host.url)
    errors: list[str] = []
    try:
        page = kit.new_page(context, errors)
        page.goto(host.url + "/md.html")
        page.wait_for_function("() => customElements.get('smol-chat') && document.querySelector('smol-chat').shadowRoot")
        r = page.evaluate("""async ([origin, cases]) => {
          const m = await import(origin + '/markdown.js');
          const root = document.querySelector('smol-chat').shadowRoot;
          const out = [];
          for (const text of cases) {
            const box = document.createElement('div');
            box.className = 'msg assistant';
            const md = document.createElement('div');
            md.className = 'md';
            box.append(md);
            root.querySelector('.messages').append(box);
            m.renderInto(md, text);
            await new Promise((r) => setTimeout(r, 50));
            const els = [...md.querySelectorAll('*')];
            out.push({ tags: els.map((e) => e.tagName.toLowerCase()),
                       handlers: els.flatMap((e) => [...e.attributes].map((a) => a.name)).filter((n) => n.startsWith('on')),
                       links: [...md.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.target, a.rel]),
                       text: md.textContent });
          }
          const code = root.querySelector('.code-block code');
          return { out, pwned: window.pwned === 1, font: getComputedStyle(code).fontFamily, code: code.textContent };
        }""", [origin, WIDGET_HOSTILE])
        assert r["pwned"] is False
        for text, o in zip(WIDGET_HOSTILE, r["out"]):
            assert not set(o["tags"]) & {"script", "img", "svg"} and o["handlers"] == [], (text, o)
        assert r["out"][2]["links"] == [[None, "", ""]]
        assert r["out"][4]["links"] == [["https://example.com/docs", "_blank", "noopener noreferrer"]]
        assert "monospace" in r["font"] and "Comic" not in r["font"], r["font"]
        page.locator("smol-chat .code-copy").click()
        assert page.evaluate("() => navigator.clipboard.readText()").rstrip("\n") == r["code"].rstrip("\n")
        assert r["code"].startswith("console.log('<b>hi</b>')")
    finally:
        context.close()


def test_readme_embed_snippet_runs(browser, origin, host, kit):
    """README's ten-line embed, as written (host filled in), on a third-party page: the widget
    element is defined, and the module's reply reaches the console."""
    from pathlib import Path
    kit.require_bundle(kit.COMPACT)
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = text.split("<!-- test: embed -->", 1)[1].split("```html\n", 1)[1].split("```", 1)[0]
    html = ("<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'></head><body>"
            + snippet.replace("https://your-smolchat-host", origin) + "</body></html>")
    with kit.host_page(browser, host, "/embed.html", html) as (page, errors, logs):
        page.wait_for_function("() => customElements.get('smol-chat') !== undefined")
        assert page.locator("smol-chat .launcher").inner_text() == "Ask SmolLM2"   # opening it loads a 2nd model
        deadline = 240
        while not logs and deadline > 0:
            page.wait_for_timeout(1000)
            deadline -= 1
        assert logs and "Paris" in logs[0], logs
        assert errors == [], errors
