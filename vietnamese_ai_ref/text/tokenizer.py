"""Tokenizers: the byte-level `ByteTokenizer` and the small protocol every tokenizer follows.

What it is for: turning text into token ids and back, losslessly. `ByteTokenizer` maps a string to
its UTF-8 bytes (ids 0..255) plus three special tokens: 256 `<pad>`, 257 `<bos>`, 258 `<eos>`
(vocab_size 259). It needs no training and no vocabulary file, so every Vietnamese string — with any
diacritics — round-trips exactly.

What it is not: a normaliser or a subword (BPE) tokenizer. It does NOT apply Unicode normalisation:
"ệ" written composed (NFC, one code point U+1EC7) and decomposed (NFD, "e" + U+0323 + U+0302)
encode to different ids, and each decodes back to exactly what was encoded. Normalising text records
to NFC is the data layer's job, done before tokenisation (see spec/model.md).

The tokenizer protocol (any class with these members plugs into the model, generation and
checkpoints; register it with `text.loading.register_tokenizer` so `load_tokenizer` can rebuild it):

    vocab_size: int                 number of ids (the model's config.vocab_size must be >= this)
    pad_token_id, bos_token_id, eos_token_id: int
    encode(text, add_bos=False, add_eos=False) -> list[int]
    decode(ids, skip_special_tokens=True) -> str
    save(directory) -> None         writes tokenizer_config.json (+ any files it needs)
    classmethod load(directory)     the inverse of save (called by `load_tokenizer`)

tokenizer_config.json always holds at least {"tokenizer_class": <registered name>, "vocab_size",
"pad_token_id", "bos_token_id", "eos_token_id"}.
"""

from __future__ import annotations

import json
import os

from ..core.errors import TokenizerError
from ..text.jsonl import read_json_object

__all__ = ["ByteTokenizer", "NoTokenizer", "TokenizerError", "TOKENIZER_CONFIG_NAME", "read_tokenizer_config"]

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"



class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then `<pad>`=256, `<bos>`=257, `<eos>`=258. Lossless, no normalisation."""

    vocab_size = 259  # 256 byte values + 3 special tokens
    pad_token_id = 256
    bos_token_id = 257
    eos_token_id = 258
    special_tokens = {256: "<pad>", 257: "<bos>", 258: "<eos>"}

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """The UTF-8 bytes of `text` as ids, optionally wrapped in `<bos>` ... `<eos>`."""
        if not isinstance(text, str):
            raise TokenizerError(
                f"encode() cần một chuỗi str / encode() needs a str, got {type(text).__name__}"
            )
        try:
            ids = list(text.encode("utf-8"))
        except UnicodeEncodeError as e:  # lone surrogates have no UTF-8 encoding
            raise TokenizerError(
                f"Văn bản chứa ký tự không mã hoá được bằng UTF-8 (surrogate lẻ) / text holds a "
                f"character UTF-8 cannot encode (a lone surrogate) at index {e.start}"
            ) from e
        if add_bos:
            ids.insert(0, self.bos_token_id)
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text from ids. Invalid UTF-8 byte sequences become U+FFFD (errors="replace").

        Special tokens are dropped when `skip_special_tokens`, else written as `<pad>`, `<bos>`,
        `<eos>` (the bytes between them are decoded separately).
        """
        parts: list[str] = []
        buf = bytearray()
        for t in ids:
            t = int(t)
            if 0 <= t < 256:
                buf.append(t)
            elif t in self.special_tokens:
                if not skip_special_tokens:
                    parts.append(buf.decode("utf-8", errors="replace"))
                    buf = bytearray()
                    parts.append(self.special_tokens[t])
            else:
                raise TokenizerError(
                    f"Mã token ngoài phạm vi / token id out of range: {t} not in [0, {self.vocab_size})"
                )
        parts.append(buf.decode("utf-8", errors="replace"))
        return "".join(parts)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259, pad=256, bos=257, eos=258)"

    def __eq__(self, other) -> bool:
        return type(other) is ByteTokenizer

    def __hash__(self) -> int:
        return hash(ByteTokenizer)

    # -- files ---------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "tokenizer_class": type(self).__name__,
            "vocab_size": self.vocab_size,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token": "<pad>",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "normalization": None,  # lossless: no Unicode normalisation (the data layer does NFC)
        }

    def save(self, directory) -> None:
        """Write tokenizer_config.json into `directory` (created if missing)."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.config_dict(), f, ensure_ascii=False, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, directory) -> "ByteTokenizer":
        cfg = read_tokenizer_config(directory)
        tok = cls()
        for key in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
            if key in cfg and cfg[key] != getattr(tok, key):
                raise TokenizerError(
                    f"tokenizer_config.json không khớp ByteTokenizer / does not match ByteTokenizer: "
                    f"{key}={cfg[key]!r}, expected {getattr(tok, key)!r}"
                )
        return tok


def read_tokenizer_config(directory) -> dict:
    """tokenizer_config.json of `directory` as a dict; TokenizerError if missing or not a JSON object."""
    return read_json_object(os.path.join(directory, TOKENIZER_CONFIG_NAME), error=TokenizerError)


class NoTokenizer:
    """Stands in for the tokenizer of a model folder that has no tokenizer files: ids in, logits out.

    It knows only the special ids the folder's config names (None when it names none); `encode`,
    `decode` and `save` raise a TokenizerError saying how to supply a tokenizer, so only text-level
    calls fail, each with that clear message."""

    vocab_size = 0

    def __init__(self, pad_token_id=None, bos_token_id=None, eos_token_id=None):
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id

    def _missing(self, *args, **kwargs):
        raise TokenizerError(
            "Mô hình này được nạp không có tokenizer (thư mục không có tokenizer.json/tokenizer_config.json); "
            "hãy truyền tokenizer=... khi nạp / this model was loaded without a tokenizer (its folder has no "
            "tokenizer.json or tokenizer_config.json): pass tokenizer=... when loading it, or use token ids"
        )

    encode = decode = _missing

    def __repr__(self) -> str:
        return "NoTokenizer()"
