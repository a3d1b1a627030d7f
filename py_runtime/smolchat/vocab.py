"""What a backend reads from the bundle's JSON files, in pure Python (any backend can use it).

- `ByteVocab`: token id -> raw bytes. tokenizer.json's model.vocab is byte-level BPE: each
  character of a token string stands for one byte through GPT-2's `bytes_to_unicode` table;
  added tokens are their UTF-8 content. A token may end inside a UTF-8 character.
- `bundle_facts`: the Backend protocol's data attributes (chat_template, special_tokens,
  eos_token_ids, max_context) from tokenizer.json, tokenizer_config.json, config.json and
  generation_config.json.

What this module ignores: encoding text (the real tokenizer does that), files and fetching.
"""

from __future__ import annotations


def byte_decoder() -> dict[str, int]:
    """GPT-2's unicode character -> byte table (inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class ByteVocab:
    """id -> bytes, decoded lazily (a chat touches a few hundred distinct ids)."""

    def __init__(self, tokenizer_json: dict):
        vocab = tokenizer_json["model"]["vocab"]
        added = {t["id"]: t["content"].encode("utf-8")
                 for t in tokenizer_json.get("added_tokens", [])}
        size = max(max(vocab.values()), max(added, default=-1)) + 1
        self._strings: list[str | None] = [None] * size
        for s, i in vocab.items():
            self._strings[i] = s
        self._added = added
        self._decoder = byte_decoder()
        self._cache: dict[int, bytes] = {}
        self.size = size

    def __call__(self, token_id: int) -> bytes:
        b = self._cache.get(token_id)
        if b is None:
            b = self._added.get(token_id)
            if b is None:
                b = bytes(self._decoder[ch] for ch in self._strings[token_id])
            self._cache[token_id] = b
        return b


def bundle_facts(tokenizer_json: dict, tokenizer_config: dict, config: dict,
                 generation_config: dict) -> dict:
    """The Backend protocol's data attributes from the bundle's JSON files."""
    specials = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])
                if t.get("special", True)}
    eos = generation_config.get("eos_token_id")
    if eos is None:
        token = tokenizer_config.get("eos_token")
        token = token.get("content") if isinstance(token, dict) else token
        eos = specials.get(token, 2)
    return {
        "chat_template": tokenizer_config.get("chat_template") or "",
        # the token strings templates use ({{ bos_token }}): str or {"content": str}
        "template_tokens": {k: tokenizer_config[k] for k in
                            ("bos_token", "eos_token", "unk_token", "pad_token")
                            if k in tokenizer_config},
        "special_tokens": specials,
        "eos_token_ids": tuple(eos) if isinstance(eos, list) else (int(eos),),
        "max_context": int(config.get("max_position_embeddings", 2048)),
    }


def llama_parameters(cfg: dict) -> int | None:
    """Parameter count of a Llama config with tied embeddings (SmolLM2-135M: 134,515,008)."""
    try:
        h, n, i = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads", heads)
        d = cfg.get("head_dim") or h // heads
    except KeyError:
        return None
    layer = h * heads * d * 2 + h * kv * d * 2 + 3 * h * i + 2 * h
    embed = cfg["vocab_size"] * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
    return embed + n * layer + h


def model_facts(manifest: dict, config: dict) -> dict:
    """The model part of Backend.info(), the same for every backend."""
    source = (manifest.get("source") or {}).get("kind")
    return {
        "model_name": manifest.get("model_name") or (
            "SmolLM2-135M-Instruct" if source != "tiny-random" else "tiny-random (random weights)"),
        "parameters": manifest.get("parameters") or llama_parameters(config),
        "bundle_id": manifest.get("bundle_id"),
        "preset": manifest.get("preset"),
        "source": source,
    }
