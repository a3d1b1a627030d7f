"""The chat page with the real compact bundle, in headless Debian Chromium (one loaded page
for the module, see conftest.py): answers, conversation rules, Stop, keyboard, isolation and
threads, no foreign requests, no console errors, no tensor leaks, screenshots."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

# "Name the capital of France." rather than "What is the capital of France?": on the latter
# the fp32 reference itself hesitates between English and French (first-token logits
# "The" 25.33 vs "L" 25.24), so int8 rounding in either runtime may tip it into French.
FRANCE = "Name the capital of France."
LONG = "Write a long story about a dragon who learns to bake bread. Make it very detailed."


def last_assistant_text(page) -> str:
    return page.locator(".msg.assistant .text").last.text_content()


def test_isolated_with_two_threads(chat, artifacts):
    assert chat.page.evaluate("crossOriginIsolated") is True
    assert chat.info["cross_origin_isolated"] is True
    assert chat.info["threads"] == 2
    assert chat.info["backend"] == "onnxruntime-web"
    chat.page.screenshot(path=str(artifacts / "idle.png"))


def test_france_greedy_answer_is_paris(chat):
    chat.reset()
    reply = chat.send(FRANCE, maxTokens=40)
    assert "Paris" in reply["text"], reply["text"]
    assert reply["finish_reason"] == "stop"
    assert "Paris" in last_assistant_text(chat.page)        # shown in the page too
    status = chat.page.inner_text("#status")
    assert "TTFT" in status and "tok/s" in status
    # The engine's decode profile came through the worker and the JS API (ms over the steps).
    prof = reply["profile"]
    parts = {k: prof[k] for k in ("ort_run_ms", "interop_ms", "sampling_ms", "python_ms")}
    assert set(prof) == {*parts, "steps"}
    assert prof["steps"] == reply["completion_tokens"] - 1   # 'stop': the eos is not forwarded
    assert all(v >= 0 for v in parts.values()) and prof["ort_run_ms"] > 0, prof
    assert sum(parts.values()) <= reply["timings"]["total_ms"] + 0.01, (prof, reply["timings"])
    print(f"\n[decode profile, ms per step over {prof['steps']} steps] "
          + ", ".join(f"{k} {v / prof['steps']:.3f}" for k, v in parts.items()))


def test_two_turn_chat_uses_the_first_turn(chat):
    chat.reset()
    first = chat.send("My name is Alice. Remember it.", maxTokens=32)
    second = chat.send("What is my name?", maxTokens=24)
    # The second prompt starts with the whole first prompt (the first user message included)
    # and reuses the KV cache of the first exchange instead of prefilling it again.
    assert second["prompt_token_ids"][:len(first["prompt_token_ids"])] == first["prompt_token_ids"]
    assert second["cached_prompt_tokens"] >= len(first["prompt_token_ids"])
    # ... and carries the first reply too (whether a 135M model then recalls the name is the
    # model's quality, not the product's: the fp32 reference itself often does not).
    # History keeps the reply as text, so the second prompt holds its encoding (the JS
    # tokenizer's ids of that text) right after the first prompt.
    reply_ids = chat.call("encode(arg)", first["text"])
    start = len(first["prompt_token_ids"])
    assert reply_ids and second["prompt_token_ids"][start:start + len(reply_ids)] == reply_ids
    history = chat.call("getConversationHistory()")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]


def test_changing_the_system_prompt_resets_the_chat(chat):
    chat.reset()
    chat.send("My name is Alice. Remember it.", maxTokens=16)
    page = chat.page
    if page.is_hidden("#settings"):
        page.click("#settings-toggle")
    page.fill("#system-prompt", "You are a pirate. Answer like a pirate.")
    page.click("#apply-system")
    page.wait_for_function("() => document.querySelectorAll('.msg').length === 0")
    assert chat.call("getConversationHistory()") == [
        {"role": "system", "content": "You are a pirate. Answer like a pirate."}]
    reply = chat.send("What is my name?", maxTokens=16)
    pirate = chat.call("encode(arg)", "You are a pirate.")
    ids = reply["prompt_token_ids"]
    assert any(ids[i:i + len(pirate)] == pirate for i in range(len(ids)))
    alice = chat.call("encode(arg)", " Alice")
    assert not any(ids[i:i + len(alice)] == alice for i in range(len(ids)))
    page.fill("#system-prompt", "")
    page.click("#apply-system")
    page.click("#settings-toggle")


def test_instruct_mode_ignores_history(chat):
    chat.reset()
    first = chat.send("My name is Alice. Remember it.", maxTokens=16)
    before = chat.call("getConversationHistory()")
    reply = chat.send("What is my name?", mode="instruct", maxTokens=16)
    assert len(reply["prompt_token_ids"]) < len(first["prompt_token_ids"]) + 5
    alice = chat.call("encode(arg)", " Alice")
    ids = reply["prompt_token_ids"]
    assert not any(ids[i:i + len(alice)] == alice for i in range(len(ids)))
    assert chat.call("getConversationHistory()") == before


def test_stop_aborts_mid_reply_and_the_next_message_works(chat, artifacts):
    chat.reset()
    page = chat.page
    if page.is_hidden("#settings"):
        page.click("#settings-toggle")
    page.fill("#max-tokens", "200")
    page.fill("#temperature", "0")
    page.click("#settings-toggle")
    page.fill("#input", LONG)
    page.press("#input", "Enter")                                   # Enter sends
    page.wait_for_function("() => (document.querySelector('.msg.assistant.streaming .text')"
                           " || {}).textContent?.length > 40", timeout=120_000)
    page.screenshot(path=str(artifacts / "mid-reply.png"))
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    t0 = time.perf_counter()
    page.keyboard.press("Escape")                                   # Escape stops
    page.wait_for_selector(".msg.assistant .meta", timeout=30_000)
    stop_s = time.perf_counter() - t0
    meta = page.locator(".msg.assistant .meta").last.text_content()
    assert "stopped" in meta
    assert stop_s < 5, f"Stop took {stop_s:.1f} s"
    tokens = int(meta.split()[0])
    assert 0 < tokens < 200
    reply = chat.send(FRANCE, maxTokens=40)
    assert "Paris" in reply["text"]


def test_shift_enter_is_a_new_line(chat):
    page = chat.page
    page.fill("#input", "")
    page.click("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two"
    assert page.locator(".msg.assistant.streaming").count() == 0
    page.fill("#input", "")


def test_typing_stays_responsive_while_a_reply_streams(chat):
    chat.reset()
    page = chat.page
    page.evaluate("""(text) => { window.__gaps = []; let last = performance.now();
        window.__tick = setInterval(() => { const now = performance.now(); window.__gaps.push(now - last); last = now; }, 10);
        window.__pending = window.smolchatApp.send(text, {settings: {maxTokens: 60, temperature: 0}}); }""", LONG)
    page.wait_for_function("() => document.querySelector('.msg.assistant.streaming')", timeout=60_000)
    page.click("#input")
    typed = "typing while it streams"
    t0 = time.perf_counter()
    page.keyboard.type(typed, delay=15)
    typing_s = time.perf_counter() - t0
    still_streaming = page.locator(".msg.assistant.streaming").count() == 1
    page.evaluate("() => window.__pending")
    gaps = page.evaluate("() => { clearInterval(window.__tick); return window.__gaps; }")
    assert page.input_value("#input") == typed
    assert still_streaming, "the reply ended before typing did: the test measured nothing"
    assert typing_s < 3, f"typing {len(typed)} characters took {typing_s:.1f} s"
    assert max(gaps) < 250, f"the page's main thread stalled {max(gaps):.0f} ms"
    page.fill("#input", "")


def test_copy_button_copies_the_reply(chat):
    chat.reset()
    chat.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=chat.origin)
    reply = chat.send(FRANCE, maxTokens=40)
    chat.page.locator(".msg.assistant .copy").last.click()
    assert chat.page.evaluate("() => navigator.clipboard.readText()") == reply["text"]


def test_model_output_is_text_not_html(chat):
    chat.reset()
    reply = chat.send("Repeat exactly: <b>bold</b> <img src=x onerror=alert(1)>", maxTokens=40)
    assert chat.page.locator(".msg.assistant .text b, .msg.assistant .text img").count() == 0
    bubble = chat.page.locator(".msg.assistant").last
    assert bubble.get_attribute("data-raw") == reply["text"]          # Copy copies this
    # rendered: the tags the model wrote are shown as the text it wrote
    assert "<img src=x onerror=alert(1)>" in last_assistant_text(chat.page), last_assistant_text(chat.page)


# Hostile Markdown rendered by what ships (/markdown.js, the page's and the widget's renderer).
HOSTILE = [
    "<img src=x onerror=\"window.pwned=1\">",
    "<script>window.pwned=1</script>",
    "[click me](javascript:window.pwned=1)",
    "<svg onload=\"window.pwned=1\"><circle r=5></circle></svg>",
    "<a href=\"javascript:window.pwned=1\">raw link</a>",
    "[data](data:text/html,<script>window.pwned=1</script>)",
    "![remote](https://images.example/x.png)",
    "<iframe src=\"https://evil.example/\"></iframe><style>body{display:none}</style>",
    "[relative](/index.html) and [fine](https://example.com/a?b=1)",
    "```html\n<script>window.pwned=1</script>\n```",
    "<details open ontoggle=\"window.pwned=1\">x</details>",
]

RENDER_ALL_JS = """async (cases) => {
  const md = await import('/markdown.js');
  const out = [];
  for (const text of cases) {
    const box = document.createElement('div');
    document.body.append(box);
    md.renderInto(box, text);
    await new Promise((r) => setTimeout(r, 50));   // give onerror/onload handlers a chance
    const els = [...box.querySelectorAll('*')];
    out.push({
      html: box.innerHTML, text: box.textContent,
      tags: [...new Set(els.map((e) => e.tagName.toLowerCase()))],
      handlers: els.flatMap((e) => [...e.attributes].map((a) => a.name)).filter((n) => n.startsWith('on')),
      links: [...box.querySelectorAll('a')].map((a) => ({ href: a.getAttribute('href'), target: a.target, rel: a.rel })),
    });
    box.remove();
  }
  return { out, pwned: window.pwned === 1 };
}"""


def test_markdown_is_sanitized(chat):
    result = chat.page.evaluate(RENDER_ALL_JS, HOSTILE)
    assert result["pwned"] is False
    for text, r in zip(HOSTILE, result["out"]):
        assert not set(r["tags"]) & {"script", "img", "svg", "iframe", "style", "details", "object"}, (text, r)
        assert r["handlers"] == [], (text, r)
        for link in r["links"]:
            if link["href"] is not None:
                assert link["href"].startswith(("http://", "https://")), (text, link)
                assert link["target"] == "_blank" and link["rel"] == "noopener noreferrer", (text, link)
    by = dict(zip(HOSTILE, result["out"]))
    assert "<img src=x" in by[HOSTILE[0]]["text"]                  # raw HTML shown as text
    assert by[HOSTILE[2]]["links"] == [{"href": None, "target": "", "rel": ""}]   # text, no link
    assert [l["href"] for l in by[HOSTILE[8]]["links"]] == [None, "https://example.com/a?b=1"]
    assert by[HOSTILE[6]]["links"][0]["href"] == "https://images.example/x.png"   # a link, not a load
    assert "pre" in by[HOSTILE[9]]["tags"] and "<script>" in by[HOSTILE[9]]["text"]


def test_markdown_reply_is_rendered_with_code_copy(chat, artifacts):
    chat.reset()
    chat.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=chat.origin)
    reply = chat.send("Write a Python function that adds two numbers.", maxTokens=60)
    assert "```" in reply["text"], reply["text"]     # the model wrote a fenced block...
    bubble = chat.page.locator(".msg.assistant").last
    code = bubble.locator(".code-block pre code").first            # ...the page shows code
    assert "```" not in bubble.locator(".text").text_content()
    assert "monospace" in code.evaluate("(e) => getComputedStyle(e).fontFamily")
    chat.page.screenshot(path=str(artifacts / "markdown-code.png"))
    bubble.locator(".code-copy").first.click()
    assert chat.page.evaluate("() => navigator.clipboard.readText()").rstrip("\n") == code.text_content().rstrip("\n")
    md = chat.page.evaluate("""async () => { const m = await import('/markdown.js'); const d = document.createElement('div');
      m.renderInto(d, '1. **one**\\n2. *two*\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n\\nsee [docs](https://example.com)');
      return [...d.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()); }""")
    assert {"ol", "li", "strong", "em", "table", "th", "td", "a"} <= set(md), md


def test_context_full_is_shown_in_plain_words(chat):
    chat.reset()
    page = chat.page
    reply = page.evaluate("(t) => window.smolchatApp.send(t, {settings: {maxTokens: 2048}})", FRANCE)
    assert reply["error"]["kind"] == "context_window_exceeded"
    assert page.get_attribute("#error", "data-kind") == "context_window_exceeded"
    assert "no longer fits" in page.inner_text("#error-text")
    page.click("#error-close")
    assert page.is_hidden("#error")
    assert chat.send(FRANCE, maxTokens=8)["completion_tokens"] >= 1   # the page still works


def test_no_tensor_leaks_across_replies(chat):
    """The KV cache lives in ORT's wasm heap (ort_heap.js): no ort.Tensor stays alive between
    steps, and the heap blocks it holds stay the same from reply to reply."""
    assert (chat.info["kv_cache"], chat.info["kv_cache_note"]) == ("wasm-heap", None)
    # (and its load expanded int4 -> int8 in web/kernels/expand.c, not in JS)
    assert (chat.info["expand"], chat.info["expand_note"]) == ("kernel", None)
    assert chat.info["threads"] == 2 and chat.info["cross_origin_isolated"]   # ORT's pthreads
    before = chat.call("health()")
    for _ in range(2):
        chat.send(FRANCE, maxTokens=12)
    after = chat.call("health()")
    assert after["live_tensors"] == before["live_tensors"] == 0
    assert after["heap_blocks"] == before["heap_blocks"] > chat.info["kv_tensors"]


def test_narrow_screen(chat, artifacts):
    page = chat.page
    page.set_viewport_size({"width": 380, "height": 760})
    try:
        page.screenshot(path=str(artifacts / "narrow.png"))
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 380, f"the page scrolls sideways on a phone ({width} px)"
        assert page.is_visible("#send") and page.is_visible("#stop") and page.is_visible("#input")
    finally:
        page.set_viewport_size({"width": 1000, "height": 760})


def test_no_request_left_the_origin(chat):
    assert chat.external == []
    # The route saw the worker's own fetches too, so the zero above means something.
    seen = " ".join(chat.seen)
    for part in ("pyodide.asm.wasm", "ort-wasm-simd-threaded.wasm", "weights.bin", "model.onnx", ".whl"):
        assert part in seen, f"route interception never saw {part}"


def test_no_console_errors(chat):
    assert chat.console_errors == []


def test_dark_mode_follows_the_system_and_the_toggle(chat, artifacts):
    page = chat.page
    bg = lambda: page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor")
    try:
        page.emulate_media(color_scheme="dark")
        assert bg() == "rgb(17, 20, 24)"
        page.screenshot(path=str(artifacts / "dark.png"))
        page.emulate_media(color_scheme="light")
        assert bg() == "rgb(246, 247, 249)"
        page.click("#theme")                                   # auto -> dark, whatever the system
        assert page.inner_text("#theme") == "Theme: dark" and bg() == "rgb(17, 20, 24)"
        page.emulate_media(color_scheme="dark")
        page.click("#theme")                                   # dark -> light
        assert page.inner_text("#theme") == "Theme: light" and bg() == "rgb(246, 247, 249)"
        assert page.evaluate("() => localStorage.getItem('smolchat-theme')") == "light"
        page.click("#theme")                                   # light -> auto: the system again
        assert page.inner_text("#theme") == "Theme: auto" and bg() == "rgb(17, 20, 24)"
    finally:
        page.emulate_media(color_scheme="light")


def test_a_failed_send_keeps_the_text_and_leaves_no_bubble(chat):
    chat.reset()
    page = chat.page
    history = chat.call("getConversationHistory()")
    if page.is_hidden("#settings"):
        page.click("#settings-toggle")
    try:
        # 1. Settings out of the engine's range: refused before sending.
        page.fill("#temperature", "5")
        page.fill("#input", "Hello there")
        page.press("#input", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "Temperature must be a number from 0 to 2" in page.inner_text("#error-text")
        assert page.get_attribute("#temperature", "aria-invalid") == "true"
        assert page.input_value("#input") == "Hello there"
        assert page.locator(".msg").count() == 0
        # 2. Refused by the engine (prompt + max tokens past the window): same outcome.
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "2048")
        page.press("#input", "Enter")
        page.wait_for_function("() => document.getElementById('error').dataset.kind === 'context_window_exceeded'")
        page.wait_for_function("() => !window.smolchatApp.busy")
        assert page.input_value("#input") == "Hello there"
        assert page.locator(".msg").count() == 0
        assert chat.call("getConversationHistory()") == history
        # 3. Fixed: it sends, and the box empties.
        page.fill("#max-tokens", "16")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant .meta")
        assert page.input_value("#input") == "" and page.locator(".msg.user").count() == 1
    finally:
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "256")
        page.fill("#input", "")
        page.click("#error-close") if page.is_visible("#error-close") else None
        page.click("#settings-toggle")


def test_stats_row_stays_visible_after_a_long_reply(chat, artifacts):
    chat.reset()
    page = chat.page
    page.set_viewport_size({"width": 1000, "height": 600})
    try:
        page.fill("#input", LONG)
        page.press("#input", "Enter")
        page.wait_for_function("() => !window.smolchatApp.busy && document.querySelector('.msg.assistant .meta')",
                               timeout=240_000)
        page.wait_for_timeout(100)
        box = page.evaluate("""() => { const m = document.getElementById('messages').getBoundingClientRect();
            const r = document.querySelector('.msg.assistant .meta').getBoundingClientRect();
            return {top: r.top, bottom: r.bottom, viewTop: m.top, viewBottom: m.bottom,
                    scrolls: document.getElementById('messages').scrollHeight > m.height}; }""")
        page.screenshot(path=str(artifacts / "long-reply.png"))
        assert box["scrolls"], "the reply was too short to test scrolling"
        assert box["viewTop"] <= box["top"] and box["bottom"] <= box["viewBottom"] + 1, box
    finally:
        page.set_viewport_size({"width": 1000, "height": 760})


def test_progress_label_and_phone_placeholder(browser, origin):
    """On a phone-sized touch screen (tiny bundle: the load, not the answers): the placeholder
    names no keys, and every progress label is one measure (MB while downloading, else none)."""
    tiny = Path(__file__).resolve().parents[2] / "models" / "tiny-random"
    if not (tiny / "manifest.json").is_file():
        pytest.fail("models/tiny-random is missing: ./build.sh bundle --source tiny-random --out models/tiny-random")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.add_init_script("""window.labels = [];
          document.addEventListener('DOMContentLoaded', () => new MutationObserver(() =>
            window.labels.push(document.getElementById('progress-label').textContent))
            .observe(document.getElementById('progress-label'), { childList: true, characterData: true, subtree: true }));""")
        page.goto(f"{origin}/index.html?bundle=tiny-random")
        page.evaluate("() => window.smolchatApp.ready")
        placeholder = page.get_attribute("#input", "placeholder")
        assert "Esc" not in placeholder and "Shift" not in placeholder and "Enter" not in placeholder, placeholder
        labels = page.evaluate("() => window.labels")
        assert any("MB" in l for l in labels) and any(l.startswith("Step 4 of 4") for l in labels), labels
        assert not [l for l in labels if "%" in l], labels
    finally:
        context.close()
