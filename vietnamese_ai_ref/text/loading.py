"""One registry of tokenizer classes and one `load_tokenizer` that rebuilds a saved tokenizer.

What it is for: reading a folder's tokenizer back — a Hugging Face `tokenizer.json` folder gives an
`HFTokenizer`, otherwise tokenizer_config.json's `tokenizer_class` names a registered class (the byte
tokenizer, or one a user registers with `register_tokenizer`).
What it is not: a tokenizer itself (tokenizer.py, hf_tokenizer.py) or a model folder reader (io/).
"""

from __future__ import annotations

import os

from ..core.errors import TokenizerError
from ..text.hf_tokenizer import HFTokenizer
from ..text.tokenizer import TOKENIZER_CONFIG_NAME, ByteTokenizer, read_tokenizer_config

__all__ = ["load_tokenizer", "register_tokenizer"]

_REGISTRY: dict[str, type] = {"ByteTokenizer": ByteTokenizer, "HFTokenizer": HFTokenizer}


def register_tokenizer(cls):
    """Make a tokenizer class loadable by `load_tokenizer` under its class name (usable as decorator)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def load_tokenizer(directory):
    """Rebuild the tokenizer saved in `directory` (tokenizer.json, else tokenizer_config.json)."""
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):  # a Hugging Face tokenizer folder
        return HFTokenizer.load(directory)
    cfg = read_tokenizer_config(directory)
    name = cfg.get("tokenizer_class")
    if name not in _REGISTRY:
        raise TokenizerError(
            f"Lớp tokenizer không xác định / unknown tokenizer class {name!r} in "
            f"{os.path.join(directory, TOKENIZER_CONFIG_NAME)}; known: {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name].load(directory)
