"""Named errors of SmolChat. Every error has a closed-set `kind` (the JS API maps kinds to
typed JS errors of the same name) and a message that says what to do.

What this module ignores: where errors are raised and how they are shown.
"""

from __future__ import annotations

KINDS = (
    "model_not_loaded",        # call before load finished
    "invalid_setting",         # a generation setting out of range / wrong type
    "context_window_exceeded", # current message + max_tokens cannot fit the window
    "bundle_missing",          # bundle folder or file not found
    "bundle_corrupt",          # sha256 / size / format mismatch
    "kv_cache_mismatch",       # engine and backend disagree on cached positions (a bug)
    "aborted",                 # cancelled by the caller
    "out_of_memory",           # runtime could not allocate
    "storage_full",            # browser cache quota exceeded
    "invalid_input",           # malformed message / history
    "network",                 # a download failed, stalled or was cut (browser; retryable)
    "site_incomplete",         # a runtime file of the served site is missing (browser)
    "unsupported_template",    # the bundle's chat template cannot be rendered (chat_template.py)
)


class SmolChatError(Exception):
    kind = "invalid_input"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": type(self).__name__, "message": str(self),
                "details": self.details}


class ModelNotLoaded(SmolChatError):
    kind = "model_not_loaded"


class InvalidSetting(SmolChatError):
    kind = "invalid_setting"

    def __init__(self, field: str, value, allowed: str):
        super().__init__(f"invalid setting {field}={value!r}: allowed {allowed}",
                         field=field, value=repr(value), allowed=allowed)


class ContextWindowExceeded(SmolChatError):
    kind = "context_window_exceeded"

    def __init__(self, needed: int, window: int, prompt_tokens: int, max_tokens: int):
        super().__init__(
            f"the message needs {needed} tokens ({prompt_tokens} prompt + {max_tokens} "
            f"max_tokens) but the context window is {window}: shorten the message, lower "
            f"max_tokens, or raise the context window",
            needed=needed, window=window, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


class BundleMissing(SmolChatError):
    kind = "bundle_missing"


class BundleCorrupt(SmolChatError):
    kind = "bundle_corrupt"


class KVCacheMismatch(SmolChatError):
    kind = "kv_cache_mismatch"


class Aborted(SmolChatError):
    kind = "aborted"


class OutOfMemory(SmolChatError):
    kind = "out_of_memory"


class InvalidInput(SmolChatError):
    kind = "invalid_input"


class UnsupportedTemplate(SmolChatError):
    """The bundle's chat template cannot be rendered (jinja2 refuses it, it needs jinja2
    where there is none, or its messages do not render one after another)."""
    kind = "unsupported_template"
