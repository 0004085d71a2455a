"""The demo's model: the tiny one from scratch, or a user's (`--model PATH`, optional `--lora R`).

What it is for: `vietnamese-ai-ref demo --model PATH` runs the demo's stages on a pretrained model
instead of the tiny byte-level transformer: a transformers-style folder or a `.gguf` file (the `gguf`
extra), loaded by `io.api.tai_mo_hinh`. The path is checked before the run folder is made and before
any compute (`check_model_path`: one bilingual line, exit 2). With `--lora R` the stages train LoRA
adapters of rank R (models/lora.py, PEFT's default targets) and the demo merges them
(`hop_nhat_lora`) before it saves the policy and the reward model. A pretrained model gets smaller
learning rates and a subset of the bundled data (`USER_MODEL`): a CPU can run it.
What it is not: a recipe for fine-tuning real models (docs/huan-luyen.md), or a loader (io/).
"""

from __future__ import annotations

import copy
import importlib.util
import os

from .rundir import CliError

__all__ = ["USER_MODEL", "check_model_path", "demo_model", "limit_data", "merge_adapters"]

#: what changes for a pretrained model, per mode: records kept per split, learning rates (full
#: fine-tuning; with LoRA, LORA_LR's instead)
USER_MODEL = {
    "quick": {
        "limit": {"sft_train": 32, "sft_val": 8, "pref_train": 32, "pref_heldout": 12},
        "sft": dict(so_vong=1, kich_thuoc_batch=8, toc_do_hoc=2e-5),
        "reward": dict(toc_do_hoc=2e-5, kich_thuoc_batch=8),
        "reward_epochs": 1,
        "dpo": dict(so_vong=1, kich_thuoc_batch=8, toc_do_hoc=5e-6),
        "grpo": dict(kich_thuoc_batch=16, num_generations=4, toc_do_hoc=5e-6, max_completion_length=16),
        "grpo_prompts": 8,
    },
    "full": {
        "limit": {"sft_train": 200, "sft_val": 50, "pref_train": 200, "pref_heldout": 80},
        "sft": dict(so_vong=2, kich_thuoc_batch=8, toc_do_hoc=2e-5),
        "reward": dict(toc_do_hoc=2e-5, kich_thuoc_batch=8),
        "reward_epochs": 1,
        "dpo": dict(so_vong=1, kich_thuoc_batch=8, toc_do_hoc=5e-6),
        "grpo": dict(kich_thuoc_batch=32, num_generations=8, toc_do_hoc=5e-6, max_completion_length=24),
        "grpo_prompts": 64,
    },
}

#: learning rates of the LoRA adapters (A random, B zero). Measured on SmolLM2-135M-Instruct (full mode,
#: docs/quickstart.md): ×10 the full-model rates left SFT unlearnt (answers echoed the question); the
#: recipe's (docs/lora-smollm2.md) SFT and RM rates teach the format; its DPO/GRPO rate 1e-3 over-optimised
#: here (twice its steps: broken text), 2e-4 does not
LORA_LR = {"sft": 2e-3, "reward": 1e-3, "dpo": 2e-4, "grpo": 2e-4}


def user_settings(base: dict, mode: str, lora) -> dict:
    """The demo's settings of `mode` with USER_MODEL's changes on top (with LoRA, LORA_LR's learning
    rates); the tiny model's "model" entry is dropped."""
    S = copy.deepcopy(base)
    S.pop("model", None)
    for k, v in USER_MODEL[mode].items():
        S[k] = dict(S[k], **v) if isinstance(v, dict) and isinstance(S.get(k), dict) else copy.deepcopy(v)
    if lora:
        for k, lr in LORA_LR.items():
            S[k]["toc_do_hoc"] = lr
    return S


def check_model_path(path, lora) -> None:
    """--model and --lora, checked before any compute: a .gguf file (with the `gguf` package installed)
    or a folder holding config.json; --lora only with --model, a rank ≥ 1."""
    if lora is not None:
        if path is None:
            raise CliError("--lora chỉ dùng cùng --model (mô hình nhỏ của demo được huấn luyện toàn bộ) / --lora "
                           "needs --model (the demo's tiny model is trained in full)")
        if isinstance(lora, bool) or not isinstance(lora, int) or lora < 1:
            raise CliError(f"--lora: cần số nguyên ≥ 1 (hạng LoRA), nhận được {lora!r} / expected an int ≥ 1 "
                           f"(the LoRA rank), got {lora!r}")
    if path is None:
        return
    path = os.fspath(path)
    if path.lower().endswith(".gguf"):
        if not os.path.isfile(path):
            raise CliError(f"--model: không tìm thấy tệp .gguf / .gguf file not found: {path}")
        if importlib.util.find_spec("gguf") is None:
            raise CliError(f"--model {path}: cần gói 'gguf' để đọc tệp .gguf: pip install 'vietnamese-ai-ref[gguf]' "
                           f"/ the 'gguf' package is needed to read a .gguf file: pip install "
                           f"'vietnamese-ai-ref[gguf]'")
        return
    if not os.path.isdir(path):
        what = "không phải thư mục hay tệp .gguf / neither a folder nor a .gguf file" if os.path.exists(path) \
            else "không tìm thấy / not found"
        raise CliError(f"--model: {what}: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CliError(f"--model {path}: thư mục không có config.json (cần thư mục kiểu transformers hoặc tệp .gguf) "
                       f"/ the folder has no config.json (expected a transformers-style folder or a .gguf file)")


def demo_model(path, lora, S, seed):
    """The policy to train: a new tiny GPT-2 (S["model"]) or the model at `path`, with LoRA adapters of
    rank `lora` when given."""
    if path is None:
        from ..models.gpt2 import GPTConfig, TransformerLM

        return TransformerLM(GPTConfig(seed=seed, **S["model"]))
    from ..io.api import tai_mo_hinh

    model = tai_mo_hinh(os.fspath(path))
    model.train()
    if lora:
        from ..models.lora import them_lora

        them_lora(model, r=lora, lora_alpha=2.0 * lora, seed=seed)
    return model


def merge_adapters(*models) -> None:
    """Merge LoRA adapters into the base weights (hop_nhat_lora) of the models that have them, so that
    the saved folders are plain, loadable models."""
    from ..models.lora import hop_nhat_lora

    for m in models:
        if getattr(m, "has_adapters", False):
            hop_nhat_lora(m)


def limit_data(data: dict, limit) -> dict:
    """The first `limit[name]` records of each split (all of them when limit is None)."""
    if not limit:
        return data
    return {k: v[:limit[k]] if k in limit else v for k, v in data.items()}
