"""Settings of the trainers: the checks every constructor and `huan_luyen` argument goes through,
and the loop's settings and step plan.

What it is for: one bilingual error per bad setting, raised before any compute, naming the parameter
as the seeds spell it, what was expected and what came (spec/errors.md A4), as a `SettingError` (a
`DataError`, so a `ValueError`); numpy scalars are accepted wherever the Python type is and come back as
the Python type. `LoopSettings` and `plan_steps` say how many steps a run takes.
What it is not: the loop itself (loop.py) or record validation (text/records.py).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

from ..backends import get_backend, host_np
from ..core.errors import SettingError
from ..core.optim import warmup_steps_for


def _bad(name, expected_vi, expected_en, got):
    return SettingError(
        f"Tham số '{name}' không hợp lệ: cần {expected_vi}, nhận được {got!r} "
        f"/ invalid '{name}': expected {expected_en}, got {got!r}"
    )


def _is_bool(v) -> bool:
    return isinstance(v, (bool, host_np.bool_))


def check_int(name, v, minimum=1):
    """`v` as a Python int; numpy integer scalars are accepted, bools refused."""
    if _is_bool(v) or not isinstance(v, numbers.Integral) or v < minimum:
        raise _bad(name, f"số nguyên ≥ {minimum}", f"an int ≥ {minimum}", v)
    return int(v)


def check_float(name, v, *, low=None, high=None, low_open=False, allow_zero=True):
    """`v` as a Python float; numpy scalars (float32, float64, integers) are accepted, bools refused."""
    try:
        number = None if _is_bool(v) or not isinstance(v, numbers.Real) else float(v)
    except OverflowError:  # an int beyond the float range
        number = None
    if number is None or not math.isfinite(number):
        raise _bad(name, "một số thực hữu hạn", "a finite number", v)
    v = number
    if low is not None and (v < low or (low_open and v == low)):
        op = ">" if low_open else "≥"
        raise _bad(name, f"số {op} {low}", f"a number {op} {low}", v)
    if high is not None and v > high:
        raise _bad(name, f"số ≤ {high}", f"a number ≤ {high}", v)
    return v


def check_callback(callback):
    if callback is not None and not callable(callback):
        raise _bad("callback", "một hàm (callable) hoặc None", "a callable or None", callback)


def check_bool(name, v):
    if not _is_bool(v):
        raise _bad(name, "True hoặc False", "a bool", v)
    return bool(v)


def check_path(name, v):
    if v is not None and not isinstance(v, (str, os.PathLike)):
        raise _bad(name, "một đường dẫn (str/PathLike) hoặc None", "a path (str/PathLike) or None", v)
    return v


def check_model(model, name="model"):
    needed = ("named_parameters", "config", "tokenizer")
    if not all(hasattr(model, a) for a in needed):
        raise SettingError(
            f"'{name}' phải là một TransformerLM (thiếu {[a for a in needed if not hasattr(model, a)]}), "
            f"nhận được {type(model).__name__} / '{name}' must be a TransformerLM, got {type(model).__name__}"
        )


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs, already validated by the trainer."""

    epochs: int
    batch_size: int
    accumulation: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    clip: float
    logging_steps: int
    seed: int


def epoch_order(n: int, seed: int, epoch: int):
    """The shuffled example order of one epoch: a permutation from a generator seeded by (seed, epoch)."""
    return get_backend().host_rng([seed, epoch]).permutation(n).tolist()


def plan_steps(n: int, s: LoopSettings):
    """(micro-batches per epoch, optimiser steps per epoch, total steps, warmup steps)."""
    micro = math.ceil(n / s.batch_size)
    per_epoch = math.ceil(micro / s.accumulation)
    total = per_epoch * s.epochs
    return micro, per_epoch, total, warmup_steps_for(total, s.warmup_ratio)


#: The constructor parameters of the trainers and their rules (spec/errors.md A4): name -> checker.
SETTING_RULES = {
    "so_vong": lambda n, v: check_int(n, v),
    "kich_thuoc_batch": lambda n, v: check_int(n, v),
    "toc_do_hoc": lambda n, v: check_float(n, v, low=0.0, low_open=True),
    "beta": lambda n, v: check_float(n, v, low=0.0, low_open=True),
    "label_smoothing": lambda n, v: check_float(n, v, low=0.0, high=0.5),
    "gradient_accumulation": lambda n, v: check_int(n, v),
    "gradient_clip": lambda n, v: check_float(n, v, low=0.0),
    "warmup_ratio": lambda n, v: check_float(n, v, low=0.0, high=1.0),
    "weight_decay": lambda n, v: check_float(n, v, low=0.0),
    "max_seq_length": lambda n, v: check_int(n, v, minimum=2),
    "logging_steps": lambda n, v: check_int(n, v),
    "seed": lambda n, v: check_int(n, v, minimum=0),
    # the online-RL trainers (spec/rl.md; GRPOTrainer, RLOOTrainer, OnlineDPOTrainer)
    "num_generations": lambda n, v: check_int(n, v, minimum=2),
    "beta_kl": lambda n, v: check_float(n, v, low=0.0),  # β ≥ 0: 0 = no reference model
    "epsilon": lambda n, v: check_float(n, v, low=0.0, low_open=True),
    "optional_positive": lambda n, v: None if v is None else check_float(n, v, low=0.0, low_open=True),
    "optional_non_negative": lambda n, v: None if v is None else check_float(n, v, low=0.0),
    "max_completion_length": lambda n, v: check_int(n, v),
    "temperature": lambda n, v: check_float(n, v, low=0.0, low_open=True),
    "top_k": lambda n, v: check_int(n, v, minimum=0),
    "top_p": lambda n, v: check_float(n, v, low=0.0, high=1.0, low_open=True),
    "flag": lambda n, v: check_bool(n, v),
    "loss_type": lambda n, v: check_choice(n, v, ("grpo", "bnpo", "dr_grpo", "dapo")),
    "scale_rewards": lambda n, v: check_choice(n, v, ("group", "batch", "none")),
    "importance_sampling_level": lambda n, v: check_choice(n, v, ("token", "sequence")),
    "reward_clip_range": lambda n, v: check_range(n, v),
}


def check_choice(name, v, options):
    if not isinstance(v, str) or v not in options:
        raise _bad(name, f"một trong {', '.join(options)}", f"one of {options}", v)
    return v


def check_range(name, v):
    """None, or a pair (low, high) of finite numbers with low ≤ high (returned as a list)."""
    if v is None:
        return None
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(
        not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) for x in v)
    if not ok or v[0] > v[1]:
        raise _bad(name, "None hoặc cặp (thấp, cao) hữu hạn với thấp ≤ cao",
                   "None or a pair (low, high) of finite numbers with low <= high", v)
    return [float(v[0]), float(v[1])]


def check_divisible(batch_name, batch, group_name, group):
    """The batch (in completions) must hold whole groups of `group` completions (TRL issue #3061)."""
    if batch % group:
        raise SettingError(
            f"Tham số '{batch_name}' ({batch}) phải chia hết cho '{group_name}' ({group}): mỗi prompt sinh "
            f"{group} completion trong cùng một batch / '{batch_name}' = {batch} must be divisible by "
            f"'{group_name}' = {group} (the batch counts completions, {group} per prompt)"
        )


def checked(name: str, value, rule: str | None = None):
    """`value` of the trainer setting `name` after its rule in SETTING_RULES (`rule`, default `name`;
    raises if it is bad, naming `name`)."""
    return SETTING_RULES[rule or name](name, value)
