"""The bundle's chat template, rendered straight to token ids.

Two renderers, one interface (`ChatTemplate`):

* **ChatML fast path** (SmolLM2 and every ChatML template): written out by hand,

      <|im_start|>{role}\\n{content}<|im_end|>\\n   for each message
      <|im_start|>assistant\\n                      generation prompt

  When the first message is not a system message, SmolLM2's template inserts a default system
  message; `default_system_prompt` reads it from the template text. It needs no Jinja engine,
  so it runs where jinja2 is not installed. Where jinja2 is installed, a template is taken
  as ChatML only when jinja2 renders sample conversations to exactly the same text (SmolLM2's
  own template is known to: `_KNOWN_CHATML`, so its load imports no jinja2).
* **Jinja path** (any other template, e.g. Llama 3's with `bos_token` and header tokens): the
  template is compiled once by jinja2 in a sandbox set up as transformers'
  `apply_chat_template` sets it up (trim_blocks, lstrip_blocks, loopcontrols, `tojson`,
  `raise_exception`, `strftime_now`, the tokenizer's `bos_token`/`eos_token`/... strings).

Both give what transformers' `apply_chat_template(..., tokenize=True)` gives, message by
message: the prompt is head (the template's start and the system message) + one piece per
message + the generation prompt, each piece rendered and encoded once and memoized, so
unchanged messages are never re-encoded and the engine can drop whole old exchanges. The
Jinja path finds the pieces as differences of renders (with placeholder neighbours) and checks
once that they add up to the whole render; a template whose messages render differently
depending on what follows is refused (`UnsupportedTemplate`), as is one jinja2 cannot compile
or render, or any non-ChatML template where jinja2 is not installed.

Control-token text inside a message (`<|im_start|>`, `<|eot_id|>`, any special string) is
encoded as plain text, never as the special id: `encode_plain` cuts each such string at a
pre-tokenizer boundary, so `backend.encode` never sees one whole and no user can forge a
turn. On the Jinja path the message contents go into the template with every special string
in them broken by a marker character; only the special strings left whole in the rendered
text (the template's own) become special ids, then the markers are removed.

What this module ignores: history trimming, the KV cache, generation.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Callable, Iterable, Sequence

from .errors import BundleCorrupt, UnsupportedTemplate

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")

# Fragments every ChatML template has; a template without one of them (or with bos_token)
# is rendered by the Jinja path.
_REQUIRED = (IM_START, IM_END, "add_generation_prompt", IM_START + "assistant")
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.DOTALL)
# sha256 of ChatML template texts whose Jinja rendering equals the fast path's (SmolLM2's:
# tests/engine/test_chat_template.py checks it): no jinja2 import and check at load for them.
_KNOWN_CHATML = {"872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788"}
# Private-use characters marking cuts in special strings of message contents (Jinja path);
# the first one that occurs in neither the template nor the content is used.
_MARKERS = tuple(chr(c) for c in range(0xE000, 0xE010))
# Neighbour messages of the piece being rendered (Jinja path): plain text, no specials.
_CTX_USER, _CTX_ASSISTANT = "Hello there.", "Hi! How can I help?"
# Sample conversations the Jinja path checks its pieces against (and the ChatML check uses).
_SAMPLES = (
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse.\n"},
     {"role": "user", "content": "  Hi, I am Ana."},
     {"role": "assistant", "content": "Hello Ana! "},
     {"role": "user", "content": "What is my name?\n\n"}],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."},
     {"role": "user", "content": "Again, in French: 😀"}],
)


def _cut_point(special: str) -> int:
    """Where to split a special string so both halves are pre-tokenizer pieces anyway:
    the first punctuation -> letter/digit step ("<|" | "im_end|>", "<" | "filename>")."""
    for i in range(1, len(special)):
        if special[i].isalnum() and not special[i - 1].isalnum():
            return i
    return max(1, len(special) // 2)


def split_specials(text: str, specials: Iterable[str]) -> list[str]:
    """`text` cut into pieces none of which contains a special string whole."""
    specials = [s for s in specials if len(s) > 1]
    pieces = [text]
    for s in sorted(specials, key=len, reverse=True):
        cut = _cut_point(s)
        out = []
        for piece in pieces:
            start = 0
            while (i := piece.find(s, start)) >= 0:
                out.append(piece[start:i + cut])
                start = i + cut
            out.append(piece[start:])
        pieces = [p for p in out if p]
    return pieces


def default_system_prompt(template: str) -> str | None:
    m = _DEFAULT_SYSTEM.search(template)
    if not m:
        return None
    text = m.group(1)
    return text.replace("\\n", "\n") if "\\n" in template[m.start():m.end()] else text


def is_chatml(template: str) -> bool:
    """The template has every ChatML fragment and no bos_token (a text check, no Jinja)."""
    return (all(f in template for f in _REQUIRED) and "bos_token" not in template
            and re.search(r"""message\[['"]content['"]\]""", template) is not None)


def _known_chatml(template: str) -> bool:
    return hashlib.sha256(template.encode()).hexdigest() in _KNOWN_CHATML


def needs_jinja2(template) -> bool:
    """Whether `ChatTemplate(template)` uses jinja2 where it is installed: every template but
    the known ChatML ones. A runtime that installs jinja2 on demand (the page: worker.js) asks
    this before the engine loads; a template that is not text needs nothing (check_template
    refuses it)."""
    if not isinstance(template, str) or not template.strip():
        return False
    return not (is_chatml(template) and _known_chatml(template))


def check_template(template: str) -> None:
    """Refuse what no renderer can take: a template that is not text, or not ChatML where
    jinja2 is not installed."""
    if not isinstance(template, str) or not template.strip():
        raise UnsupportedTemplate("the bundle has no chat template (tokenizer_config.json "
                                  "'chat_template' is empty): add the model's template to the "
                                  "source's tokenizer_config.json and rebuild the bundle")
    if not is_chatml(template) and _jinja2() is None:
        raise UnsupportedTemplate(
            "the bundle's chat template is not ChatML and this runtime has no jinja2 to render "
            "it: install jinja2 (pip install jinja2; the web build ships it with the site)")


def _jinja2():
    try:
        import jinja2
        import jinja2.sandbox  # noqa: F401
        return jinja2
    except ImportError:
        return None


def _token_text(value) -> str | None:
    """tokenizer_config.json's token fields are strings or {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def compile_template(template: str):
    """jinja2 Template, compiled as transformers compiles chat templates."""
    jinja2 = _jinja2()
    from datetime import datetime

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise UnsupportedTemplate(
            f"the bundle's chat template cannot be rendered: jinja2 does not compile it "
            f"({type(e).__name__}: {e}); fix 'chat_template' in the source's "
            f"tokenizer_config.json and rebuild the bundle", reason=str(e)) from None


class ChatTemplate:
    def __init__(self, template: str, special_tokens: dict[str, int],
                 encode: Callable[[str], list[int]], tokens: dict | None = None,
                 cache_size: int = 512):
        """template: the Jinja text; special_tokens: string -> id; encode: plain text -> ids;
        tokens: tokenizer_config.json's bos_token / eos_token / unk_token / pad_token (the
        names templates use)."""
        check_template(template)
        self.template = template
        self.special_tokens = dict(special_tokens)
        self._encode = encode
        self._memo: dict[tuple[str, str], list[int]] = {}
        self._memo_size = cache_size
        self._vars = {k: t for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                      if (t := _token_text((tokens or {}).get(k))) is not None}
        self._jinja = None
        self.kind = "chatml"
        if is_chatml(template):
            for s in (IM_START, IM_END):
                if s not in special_tokens:
                    raise BundleCorrupt(f"special token {s} is missing from the tokenizer: "
                                        "rebuild the bundle with ./build.sh bundle")
            self.default_system_prompt = default_system_prompt(template)
            self._start, self._end = special_tokens[IM_START], special_tokens[IM_END]
            self._newline = self.encode_plain("\n")
            self._generation_prompt = [self._start, *self.encode_plain("assistant\n")]
            if not _known_chatml(template) and _jinja2() is not None and not self._chatml_matches_jinja():
                self.kind = "jinja"
        else:
            self.kind = "jinja"
        if self.kind == "jinja":
            self._init_jinja()

    # ------------------------------------------------------------------ shared

    def encode_plain(self, text: str) -> list[int]:
        """Text -> ids with every special string kept as plain text."""
        ids: list[int] = []
        for piece in split_specials(text, self.special_tokens):
            ids.extend(self._encode(piece))
        return ids

    def _remember(self, key, make):
        ids = self._memo.get(key)
        if ids is None:
            ids = make()
            if len(self._memo) >= self._memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = ids
        return list(ids)

    def system_ids(self, system: str | None) -> list[int]:
        """What comes before the first exchange: the template's start and the system message
        (None: no system message; a template may still insert its own default)."""
        if self.kind == "chatml":
            return [] if system is None else self.message_ids("system", system)
        return self._remember(("\0head", system), lambda: self._ids(*self._head_text(system)))

    def message_ids(self, role: str, content: str) -> list[int]:
        """One user/assistant message as the template renders it (memoized per message)."""
        if self.kind == "chatml":
            return self._remember((role, content), lambda: [
                self._start, *self.encode_plain(f"{role}\n{content}"), self._end, *self._newline])
        if role == "system":
            raise UnsupportedTemplate("internal: system messages go through system_ids")
        return self._remember((role, content), lambda: self._ids(*self._piece_text(role, content)))

    def generation_prompt_ids(self) -> list[int]:
        """The generation prompt (ChatML: <|im_start|>assistant\\n) as ids."""
        return list(self._generation_prompt)

    def render_ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """All messages as the template renders them, plus the generation prompt. A leading
        system message is the system prompt; without one no system message is added here
        (ChatML), the caller decides; the Jinja path adds the template's own start."""
        ids: list[int] = []
        rest = list(messages)
        if self.kind == "jinja" or (rest and rest[0]["role"] == "system"):
            system = rest.pop(0)["content"] if rest and rest[0]["role"] == "system" else None
            ids += self.system_ids(system)
        for m in rest:
            ids += self.message_ids(m["role"], m["content"])
        if add_generation_prompt:
            ids += self.generation_prompt_ids()
        return ids

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The same prompt as text (for display and debugging)."""
        if self.kind == "jinja":
            return self._render(list(messages), add_generation_prompt)
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")

    # ------------------------------------------------------------------ ChatML check

    def _chatml_matches_jinja(self) -> bool:
        """jinja2 renders the sample conversations to the fast path's text."""
        compiled = compile_template(self.template)
        for sample in _SAMPLES:
            for agp in (True, False):
                head = [] if sample[0]["role"] == "system" or self.default_system_prompt is None \
                    else [{"role": "system", "content": self.default_system_prompt}]
                try:
                    want = compiled.render(messages=sample, add_generation_prompt=agp,
                                           **self._vars)
                except Exception:  # noqa: BLE001 - any failure: not plain ChatML
                    return False
                if self.render_text(head + sample, agp) != want:
                    return False
        return True

    # ------------------------------------------------------------------ Jinja path

    def _init_jinja(self) -> None:
        self._compiled = compile_template(self.template)
        self.default_system_prompt = None   # a template's default stays inside the template
        self._specials_re = re.compile("|".join(
            re.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True) if s))
        self._segments: dict[str, list[int]] = {}
        user = {"role": "user", "content": _CTX_USER}
        base = self._render([user], False)
        self._generation_prompt = self._ids(self._diff([user], base, True))
        for sample in _SAMPLES:
            system = sample[0]["content"] if sample[0]["role"] == "system" else None
            rest = sample[1:] if system is not None else sample
            pieces = self.system_ids(system) + [t for m in rest for t in
                                                self.message_ids(m["role"], m["content"])]
            whole = self._ids(self._render(sample, True))
            if pieces + self._generation_prompt != whole:
                raise UnsupportedTemplate(
                    "the bundle's chat template cannot be rendered message by message: the "
                    "text of a message depends on the messages around it, so SmolChat cannot "
                    "reuse the KV cache between turns; use a template that renders each "
                    "message on its own (fix 'chat_template' in the source's "
                    "tokenizer_config.json and rebuild the bundle)")

    def _render(self, messages: list, add_generation_prompt: bool) -> str:
        jinja2 = _jinja2()
        try:
            return self._compiled.render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         **self._vars)
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError,
                IndexError, AttributeError) as e:
            raise UnsupportedTemplate(
                f"the bundle's chat template cannot be rendered: {type(e).__name__}: {e} "
                f"(roles {[m['role'] for m in messages]}); fix 'chat_template' in the "
                f"source's tokenizer_config.json and rebuild the bundle",
                reason=str(e)) from None

    def _diff(self, messages: list, before: str, add_generation_prompt: bool = False) -> str:
        """Text render(messages) adds after `before` (a render of fewer messages)."""
        after = self._render(messages, add_generation_prompt)
        if not after.startswith(before):
            raise UnsupportedTemplate(
                "the bundle's chat template cannot be rendered message by message: adding a "
                "message changes how the earlier ones render, so SmolChat cannot reuse the KV "
                "cache between turns; fix 'chat_template' in the source's "
                "tokenizer_config.json and rebuild the bundle")
        return after[len(before):]

    def _marked(self, content: str) -> tuple[str, str | None]:
        """(content with every special string in it cut by a marker character, the marker;
        None when it holds no special string). See the module doc."""
        pieces = split_specials(content, self.special_tokens)
        if "".join(pieces[:1]) == content:
            return content, None
        marker = next((m for m in _MARKERS if m not in content and m not in self.template),
                      None)
        if marker is None:
            raise UnsupportedTemplate("a message uses every private-use character "
                                      "U+E000-U+E00F and a special-token string: remove them")
        return marker.join(pieces), marker

    def _head_text(self, system: str | None) -> tuple[str, str | None]:
        """(The template's start and the system message as text, its marker)."""
        content, marker = self._marked(system or "")
        head = [] if system is None else [{"role": "system", "content": content}]
        user = {"role": "user", "content": _CTX_USER}
        whole = self._render(head + [user], False)
        piece, _ = self._piece_text("user", _CTX_USER)
        if not whole.endswith(piece):
            raise UnsupportedTemplate(
                "the bundle's chat template renders the first user message differently from "
                "later ones, so SmolChat cannot reuse the KV cache between turns; fix "
                "'chat_template' in the source's tokenizer_config.json and rebuild the bundle")
        return whole[:len(whole) - len(piece)], marker

    def _piece_text(self, role: str, content: str) -> tuple[str, str | None]:
        """One message's text: the render with it minus the render without it, neighbours
        being placeholder messages (a user message follows an exchange, an assistant
        message a user message)."""
        marked, marker = self._marked(content)
        ctx = [{"role": "user", "content": _CTX_USER}]
        if role == "user":
            ctx.append({"role": "assistant", "content": _CTX_ASSISTANT})
        return self._diff(ctx + [{"role": role, "content": marked}], self._render(ctx, False)), marker

    def _ids(self, text: str, marker: str | None = None) -> list[int]:
        """Rendered text -> ids: special strings left whole (the template's own) become
        their ids; the text between them, the marker removed, is encoded as plain text."""
        ids: list[int] = []
        start = 0
        for m in self._specials_re.finditer(text):
            ids += self._segment(text[start:m.start()], marker)
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids += self._segment(text[start:], marker)
        return ids

    def _segment(self, text: str, marker: str | None) -> list[int]:
        if marker is not None:
            text = text.replace(marker, "")
        if not text:
            return []
        ids = self._segments.get(text)
        if ids is None:
            ids = self.encode_plain(text)
            if len(self._segments) >= self._memo_size:
                self._segments.pop(next(iter(self._segments)))
            self._segments[text] = ids
        return list(ids)
