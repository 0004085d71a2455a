"""Tokenizers in GGUF files: llama.cpp's `tokenizer.ggml.*` metadata <-> a Hugging Face tokenizer.json string.

What it is for: `gguf.py` reads and writes GGUF files; this module turns the vocabulary a GGUF file
carries (tokenizer.ggml.model "gpt2": byte-level BPE tokens, merges, token types, the `pre` name of
the split regex, special token ids) into a tokenizer.json that `tokenizers.Tokenizer.from_str` loads,
and a tokenizer.json of a byte-level BPE back into that metadata. The pre-tokenizer of a known `pre`
name (gpt-2/default, smollm, llama-bpe and its aliases, qwen2 and its aliases) is rebuilt exactly as
the model's own tokenizer.json has it; an unknown name falls back to GPT-2's regex with a warning.

What it is not: a SentencePiece ("llama" tokenizer model with scores) or WordPiece converter — those
raise a clear error; and no chat-template handling (the template is a plain string in the metadata).
"""

from __future__ import annotations

import json
import warnings

__all__ = ["tokenizer_json_from_gguf", "gguf_vocab_from_tokenizer_json", "SPECIAL_KEYS", "GGUFVocabError"]

# llama.cpp's token types (gguf.TokenType), spelled here so this module needs no import of gguf
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# tokenizer.ggml.<key>_token_id -> config.json key
SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "padding": "pad_token_id", "unknown": "unk_token_id"}

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class GGUFVocabError(ValueError):
    """A tokenizer that cannot be expressed in (or rebuilt from) GGUF metadata; the message names why."""


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _pre_tokenizer(pre: str | None) -> dict:
    """tokenizer.json's pre_tokenizer for llama.cpp's `tokenizer.ggml.pre` name."""
    if pre in (None, "gpt-2", "default", "gpt2"):
        return _byte_level(True)
    if pre == "smollm":  # SmolLM/SmolLM2: every digit alone, then GPT-2's regex
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                      _byte_level(True)]}
    if pre in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3"):
        return {"type": "Sequence", "pretokenizers": [_split(_LLAMA3_SPLIT), _byte_level(False)]}
    if pre in ("qwen2", "deepseek-r1-qwen"):
        return {"type": "Sequence", "pretokenizers": [_split(_QWEN2_SPLIT), _byte_level(False)]}
    warnings.warn(f"tokenizer.ggml.pre={pre!r} không quen / unknown pre-tokenizer name: using GPT-2's split "
                  f"regex, so some texts may tokenize differently from llama.cpp", stacklevel=3)
    return _byte_level(True)


def _pre_name(pre_tokenizer) -> str:
    """The inverse of `_pre_tokenizer` for the pre-tokenizers it builds; else "default"."""
    for name in ("gpt-2", "smollm", "llama-bpe", "qwen2"):
        if _normal(_pre_tokenizer(name)) == _normal(pre_tokenizer):
            return name
    return "default"


def _normal(pt):
    """A pre_tokenizer dict without the keys that do not change how text is split (for comparison)."""
    if isinstance(pt, dict):
        return {k: _normal(v) for k, v in pt.items() if k not in ("trim_offsets",)}
    if isinstance(pt, list):
        return [_normal(v) for v in pt]
    return pt


def tokenizer_json_from_gguf(meta: dict, where: str = "GGUF") -> str:
    """tokenizer.json (a string) from the `tokenizer.ggml.*` values of `meta` ({key: python value}).

    BPE model with the file's tokens (id = position) and merges; CONTROL tokens become special added
    tokens and USER_DEFINED ones non-special added tokens; byte-level decoder; no post-processor
    (bos/eos are added by the caller, as HFTokenizer does).
    """
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFVocabError(
            f"tokenizer.ggml.model={model!r} không được hỗ trợ / unsupported tokenizer model in {where}: only "
            f"'gpt2' (byte-level BPE) is rebuilt; SentencePiece ('llama') vocabularies are not"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not tokens:
        raise GGUFVocabError(f"Thiếu / missing or empty tokenizer.ggml.tokens in {where}")
    if not isinstance(merges, list):
        raise GGUFVocabError(f"Thiếu / missing tokenizer.ggml.merges in {where} (a 'gpt2' BPE vocabulary needs it)")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFVocabError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens in {where}")
    vocab, added = {}, []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if tok in vocab:
            raise GGUFVocabError(f"Token trùng lặp / duplicate token {tok!r} (ids {vocab[tok]} and {i}) in {where}")
        vocab[tok] = i
        if kind in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": kind != CONTROL, "special": kind == CONTROL})
    for k, m in enumerate(merges):
        if not isinstance(m, str) or len(m.split(" ")) != 2:
            raise GGUFVocabError(f"tokenizer.ggml.merges[{k}]={m!r} is not 'left right' in {where}")
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(meta.get("tokenizer.ggml.pre")),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None,
                  "unk_token": tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens)
                  and types[unk_id] == UNKNOWN else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": list(merges)},
    }
    return json.dumps(doc, ensure_ascii=False)


def gguf_vocab_from_tokenizer_json(tokenizer_json: str) -> dict:
    """{tokenizer.ggml.* key: value} for a byte-level BPE tokenizer.json (model, pre, tokens, token_type, merges).

    Ids must be contiguous from 0 (GGUF stores the tokens as a list). Added special tokens are CONTROL,
    other added tokens USER_DEFINED, the BPE unk token UNKNOWN, every other token NORMAL.
    """
    try:
        doc = json.loads(tokenizer_json)
    except (TypeError, json.JSONDecodeError) as e:
        raise GGUFVocabError(f"tokenizer_json không phải JSON / is not valid JSON: {e}") from e
    model = doc.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise GGUFVocabError(f"Chỉ hỗ trợ BPE / only a BPE tokenizer.json can be written to GGUF, got model type "
                             f"{model.get('type')!r}")
    if model.get("byte_fallback"):
        raise GGUFVocabError("BPE với byte_fallback không được hỗ trợ / BPE with byte_fallback (SentencePiece "
                             "style) is not supported: only byte-level BPE ('gpt2')")
    by_id = {int(i): t for t, i in model["vocab"].items()}
    kinds = {}
    for a in doc.get("added_tokens") or []:
        by_id[int(a["id"])] = a["content"]
        kinds[int(a["id"])] = CONTROL if a.get("special") else USER_DEFINED
    n = max(by_id) + 1 if by_id else 0
    gaps = [i for i in range(n) if i not in by_id]
    if gaps:
        raise GGUFVocabError(f"Mã token không liên tục / token ids are not contiguous: id {gaps[0]} has no token "
                             f"({len(gaps)} gaps in [0, {n}))")
    unk = model.get("unk_token")
    tokens = [by_id[i] for i in range(n)]
    types = [kinds.get(i, UNKNOWN if tokens[i] == unk else NORMAL) for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_name(doc.get("pre_tokenizer")),
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
