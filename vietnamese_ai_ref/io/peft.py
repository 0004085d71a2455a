"""LoRA adapters on disk in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

What it is for: `luu_adapter(model, path)` writes the adapters of a model (models/lora.py) so that
`peft.PeftModel.from_pretrained(transformers_model, path)` computes our logits; `tai_adapter(model, path)`
attaches adapters PEFT (or we) saved to one of our models. Keys are PEFT's:
`base_model.model.<transformers module>.lora_A.weight` / `.lora_B.weight` (GPT-2's modules carry
transformers' `transformer.` prefix), and `base_model.model.score.weight` for a reward model's score head
(PEFT's `modules_to_save` of sequence classification). The projections that get adapters on load are
exactly those the file holds (PEFT's regex `target_modules` need not be interpreted).

What it is not: the LoRA maths (models/lora.py) or PEFT's other methods: DoRA, LoRA biases, per-layer
rank/alpha patterns and several adapters per model are refused with an error naming the setting.
"""

from __future__ import annotations

import json
import os
import tempfile

from ..backends import get_backend, host_np
from ..core.errors import CheckpointError
from ..models.lora import LoraConfig, attach, family, pair_shapes
from ..text.jsonl import read_json_object
from .hf import _to_file_key
from .safetensors import read_safetensors, write_safetensors

__all__ = ["luu_adapter", "tai_adapter", "save_adapter", "load_adapter", "ADAPTER_CONFIG_NAME",
           "ADAPTER_WEIGHTS_NAME"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
#: settings of adapter_config.json we cannot honour, with the value that means "not used"
_UNSUPPORTED = {"use_dora": False, "bias": "none", "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {},
                "layers_to_transform": None, "layer_replication": None, "target_parameters": None,
                "trainable_token_indices": None}


def _file_key(model, name: str) -> str:
    """Our parameter name -> PEFT's key."""
    return _PREFIX + (_to_file_key(name) if family(model) == "gpt2" else name)


def _our_name(model, key: str) -> str | None:
    """PEFT's key -> our parameter name (None when it is not one of ours)."""
    if not key.startswith(_PREFIX):
        return None
    name = key[len(_PREFIX):]
    if family(model) == "gpt2" and name != "score.weight":
        return name[len("transformer."):] if name.startswith("transformer.") else None
    return name


def adapter_config_dict(model) -> dict:
    """adapter_config.json of the model's adapters (the fields PEFT reads; others take PEFT's defaults)."""
    cfg = model.lora_config
    targets = sorted({n.rsplit(".", 1)[-1] for n in model._lora})
    score = model.has_score_head
    return {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if score else "CAUSAL_LM",
        "r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout, "use_rslora": cfg.use_rslora,
        "target_modules": targets, "fan_in_fan_out": family(model) == "gpt2", "bias": "none",
        "modules_to_save": ["score"] if score else None, "init_lora_weights": True, "inference_mode": True,
        "base_model_name_or_path": None, "use_dora": False,
    }


def luu_adapter(model, path) -> None:
    """Lưu adapter LoRA / save the model's LoRA adapters (and score head) as a PEFT folder at `path`.
    Other files in the folder stay; the two files are each written to a temporary file and renamed."""
    if not getattr(model, "has_adapters", False):
        raise ValueError("Mô hình không có adapter LoRA / the model has no LoRA adapters to save (them_lora first)")
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointError(f"Đường dẫn đã tồn tại và không phải thư mục / path exists and is not a directory: {path}")
    be = get_backend()
    tensors = {_file_key(model, n): host_np.ascontiguousarray(be.to_numpy(p.data))
               for n, p in model.named_parameters().items() if ".lora_" in n or n == "score.weight"}
    os.makedirs(path, exist_ok=True)
    text = json.dumps(adapter_config_dict(model), ensure_ascii=False, indent=2) + "\n"
    for fname, write in ((ADAPTER_WEIGHTS_NAME, lambda f: write_safetensors(f, tensors)),
                         (ADAPTER_CONFIG_NAME, lambda f: _write_text(f, text))):
        fd, tmp = tempfile.mkstemp(prefix=f".{fname}.tmp-", dir=path)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, os.path.join(path, fname))
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _check_config(raw: dict, where: str, model) -> LoraConfig:
    """LoraConfig from adapter_config.json; anything we cannot compute raises naming the setting."""
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{where}: peft_type phải là 'LORA' / peft_type must be 'LORA', got {raw.get('peft_type')!r}")
    for key, off in _UNSUPPORTED.items():
        value = raw.get(key, off)
        if value is not None and value != off:
            raise CheckpointError(f"{where}: thiết lập không được hỗ trợ / unsupported setting {key}={raw[key]!r} "
                                  f"(supported: {off!r})")
    if raw.get("fan_in_fan_out") and family(model) != "gpt2":
        raise CheckpointError(f"{where}: fan_in_fan_out=true chỉ dành cho Conv1D của GPT-2 / fan_in_fan_out=true "
                              f"is for GPT-2's Conv1D only, not a {model.config.model_type} model")
    try:
        return LoraConfig(r=raw.get("r", 8), lora_alpha=raw.get("lora_alpha", 8),
                          lora_dropout=float(raw.get("lora_dropout", 0.0) or 0.0),
                          use_rslora=bool(raw.get("use_rslora", False)))
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e


def tai_adapter(model, path):
    """Tải adapter LoRA / attach the adapters of a PEFT folder to `model` (in place; returned). The base
    is frozen as after them_lora. Names, shapes and the config are checked before the model changes."""
    path = os.fspath(path)
    where = os.path.join(path, ADAPTER_CONFIG_NAME)
    raw = read_json_object(where, error=CheckpointError)
    cfg = _check_config(raw, where, model)
    arrays = read_safetensors(os.path.join(path, ADAPTER_WEIGHTS_NAME))
    named, score = {}, None
    for key, arr in arrays.items():
        name = _our_name(model, key)
        if name == "score.weight":
            score = arr
        elif name is None or not name.endswith((".lora_A.weight", ".lora_B.weight")):
            raise CheckpointError(f"{path}: tensor không mong đợi / unexpected tensor {key}")
        else:
            named[name] = (key, arr)
    projections = sorted({n.rsplit(".lora_", 1)[0] for n in named})
    cfg.target_modules = sorted({n.rsplit(".", 1)[-1] for n in projections})
    if model.has_adapters:
        raise ValueError("Mô hình đã có adapter LoRA / the model already has LoRA adapters")
    if score is not None and model.has_score_head:
        expected = tuple(model._params["score.weight"].shape)
        if tuple(score.shape) != expected:
            raise CheckpointError(f"{path}: score.weight has shape {tuple(score.shape)}, expected {expected}")
    _check_arrays(path, pair_shapes(model, projections, cfg.r), named)  # before `model` changes
    attach(model, cfg, projections)
    be = get_backend()
    params = model.named_parameters()
    for n, (_, arr) in named.items():
        params[n].data[...] = be.asarray(host_np.asarray(arr, dtype=be.dtype))
    if score is not None:
        if not model.has_score_head:
            model.add_score_head()
        model._params["score.weight"].data[...] = be.asarray(host_np.asarray(score, dtype=be.dtype))
    return model


def _check_arrays(path, shapes: dict, named: dict) -> None:
    missing = [n for n in shapes if n not in named]
    if missing:
        raise CheckpointError(f"{path}: thiếu tensor / missing tensor: {missing}")
    for n, shape in shapes.items():
        found = tuple(named[n][1].shape)
        if found != shape:
            raise CheckpointError(f"{path}: sai kích thước / wrong shape for {named[n][0]}: expected {shape}, "
                                  f"found {found}")


save_adapter = luu_adapter
load_adapter = tai_adapter
