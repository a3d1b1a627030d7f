"""The bundle's ChatML chat template, rendered straight to token ids.

SmolLM2's template (tokenizer_config.json "chat_template") is ChatML:

    <|im_start|>{role}\\n{content}<|im_end|>\\n   for each message
    <|im_start|>assistant\\n                      generation prompt

and, when the first message is not a system message, it inserts a default system message
("You are a helpful AI assistant named SmolLM, trained by Hugging Face"). `ChatTemplate`
checks that the bundle's Jinja text is this form (no Jinja engine is shipped: the package
has no dependencies), takes the default system prompt from it, and renders messages to ids
exactly as transformers' `apply_chat_template(..., tokenize=True)` does, message by message
so that unchanged messages are never re-encoded (tests/engine compare with transformers).

Control-token text inside a message (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, any
special string) is encoded as plain text, never as the special id: `encode_plain` cuts each
such string at a pre-tokenizer boundary, so `backend.encode` never sees one whole and no
user can forge a turn.

What this module ignores: history trimming, the KV cache, generation.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from .errors import BundleCorrupt

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")

# Fragments every supported template has; a template without one of them (or with
# bos_token) renders differently from what this module produces.
_REQUIRED = (IM_START, IM_END, "add_generation_prompt", IM_START + "assistant")
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.DOTALL)


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


def check_template(template: str) -> None:
    missing = [f for f in _REQUIRED if f not in template]
    if not re.search(r"""message\[['"]content['"]\]""", template):
        missing.append("message['content']")
    if missing or "bos_token" in template:
        raise BundleCorrupt(
            "the bundle's chat template is not the ChatML form SmolChat renders "
            f"(missing {missing or 'nothing'}, bos_token {'used' if 'bos_token' in template else 'unused'}): "
            "rebuild the bundle with ./build.sh bundle", missing=missing)


class ChatTemplate:
    def __init__(self, template: str, special_tokens: dict[str, int],
                 encode: Callable[[str], list[int]], cache_size: int = 512):
        check_template(template)
        for s in (IM_START, IM_END):
            if s not in special_tokens:
                raise BundleCorrupt(f"special token {s} is missing from the tokenizer: "
                                    "rebuild the bundle with ./build.sh bundle")
        self.template = template
        self.default_system_prompt = default_system_prompt(template)
        self.special_tokens = dict(special_tokens)
        self._encode = encode
        self._start, self._end = special_tokens[IM_START], special_tokens[IM_END]
        self._newline = self.encode_plain("\n")
        self._generation_prompt = [self._start, *self.encode_plain("assistant\n")]
        self._memo: dict[tuple[str, str], list[int]] = {}
        self._memo_size = cache_size

    def encode_plain(self, text: str) -> list[int]:
        """Text -> ids with every special string kept as plain text."""
        ids: list[int] = []
        for piece in split_specials(text, self.special_tokens):
            ids.extend(self._encode(piece))
        return ids

    def message_ids(self, role: str, content: str) -> list[int]:
        """<|im_start|>role\\ncontent<|im_end|>\\n as ids (memoized per message)."""
        key = (role, content)
        ids = self._memo.get(key)
        if ids is None:
            ids = [self._start, *self.encode_plain(f"{role}\n{content}"), self._end,
                   *self._newline]
            if len(self._memo) >= self._memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = ids
        return list(ids)

    def generation_prompt_ids(self) -> list[int]:
        """<|im_start|>assistant\n as ids."""
        return list(self._generation_prompt)

    def render_ids(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """All messages as the template renders them (system messages are not added here:
        the caller decides the system prompt), plus the generation prompt."""
        ids: list[int] = []
        for m in messages:
            ids += self.message_ids(m["role"], m["content"])
        if add_generation_prompt:
            ids += self.generation_prompt_ids()
        return ids

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The same prompt as text (for display and debugging)."""
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")
