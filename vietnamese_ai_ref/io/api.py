"""`tai_mo_hinh` / `luu_mo_hinh`: load or save a model as a Hugging Face folder or a GGUF file.

What it is for: the seeds-style entry points. A path ending in `.gguf` is a GGUF file (llama.cpp's
format, through the `gguf` extra: gguf.py); anything else is a transformers-style folder (hf.py).
Registers these as the model base's `from_pretrained` / `save_pretrained`.
What it is not: a format of its own; it only dispatches.
"""

from __future__ import annotations

import os

from ..models.base import register_folder_io
from . import gguf as _gguf
from . import hf as _hf

__all__ = ["tai_mo_hinh", "luu_mo_hinh"]


def _is_gguf(path) -> bool:
    return os.fspath(path).lower().endswith(".gguf")


def tai_mo_hinh(path, tokenizer=None):
    """Tải mô hình / load a model: a `.gguf` file (hyper-parameters, dequantised weights, tokenizer and
    chat template from its metadata) or a Hugging Face folder; eval mode, parameters in the backend dtype."""
    if _is_gguf(path):
        return _gguf.model_from_gguf(path, tokenizer=tokenizer)
    return _hf.from_pretrained(path, tokenizer=tokenizer)


def luu_mo_hinh(model, path, dtype: str | None = None) -> None:
    """Lưu mô hình / save a model: `path` ending in `.gguf` writes a GGUF file (dtype "F32", "F16" or
    "BF16"; F32 by default), anything else a transformers-loadable folder (dtype not used)."""
    if _is_gguf(path):
        _gguf.save_gguf(model, path, dtype=dtype or "F32")
        return
    _hf.save_pretrained(model, path)


register_folder_io(save=luu_mo_hinh, load=tai_mo_hinh)
