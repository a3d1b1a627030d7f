"""The JS tokenizer the browser uses (@huggingface/tokenizers with the bundle's
tokenizer.json, through the worker's encode, the same call the bridge makes) gives the same
ids as Python `tokenizers` on a table of strings."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

TABLE = [
    "What is the capital of France?",
    "Hello, world!",
    "12345678",
    "3.14159 and 2,718 and -42",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines\r\n",
    "naïve café, résumé, Ünïcödé",
    "日本語のテキスト、中文文本",
    "emoji 🙂👍🏽 and 🇫🇷 flags",
    "def f(x):\n    return x ** 2  # comment",
    "<b>html</b> &amp; <script>alert(1)</script>",
    "can't won't it's I'm we've they'll",
    "URLs like https://example.com/path?q=1&r=2",
    "ALL CAPS AND MiXeD cAsE",
    "a" * 300,
    "",
    " ",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
]


def test_js_tokenizer_ids_equal_python_tokenizers(chat, bundle_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    js_ids = chat.page.evaluate(
        "async (table) => { const out = []; for (const s of table) out.push(await window.smolchatApp.bot.encode(s)); return out; }",
        TABLE)
    for text, ids in zip(TABLE, js_ids):
        assert ids == tok.encode(text, add_special_tokens=False).ids, repr(text)
