"""The one training loop every trainer shares, and the argument checks they share.

What it is for: per-epoch shuffling from the seed, micro-batches, gradient accumulation with the loss
normalised over the whole effective batch (the trainer's `micro_step` divides by the window's
weight), global-norm clipping, AdamW, the linear warmup/decay schedule, a log entry every
`logging_steps` optimiser steps (plus one for a final partial window), the callback, the
non-finite guard and the wall time. spec/losses.md ("Optimisation") is the normative text.

What it is not: a trainer. It knows nothing of tokens, pairs or rewards; SFT/DPO/RM supply
`micro_step(batch, denominator) -> (loss, stats)` and `weight_of(example)`.
"""

from __future__ import annotations

import math
import time

from .backends import get_backend
from .optim import AdamW, clip_coefficient, linear_schedule, warmup_steps_for


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm became NaN/inf; raised before the weights change."""


# ---------------------------------------------------------------------------------------------
# argument checks (Vietnamese first, the parameter name as written in the seeds)
# ---------------------------------------------------------------------------------------------

def _bad(name, expected_vi, expected_en, got):
    return ValueError(
        f"Tham số '{name}' không hợp lệ: cần {expected_vi}, nhận được {got!r} "
        f"/ invalid '{name}': expected {expected_en}, got {got!r}"
    )


def check_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _bad(name, f"số nguyên ≥ {minimum}", f"an int ≥ {minimum}", v)
    return v


def check_float(name, v, *, low=None, high=None, low_open=False, allow_zero=True):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, "một số thực hữu hạn", "a finite number", v)
    v = float(v)
    if low is not None and (v < low or (low_open and v == low)):
        op = ">" if low_open else "≥"
        raise _bad(name, f"số {op} {low}", f"a number {op} {low}", v)
    if high is not None and v > high:
        raise _bad(name, f"số ≤ {high}", f"a number ≤ {high}", v)
    return v


def check_callback(callback):
    if callback is not None and not callable(callback):
        raise _bad("callback", "một hàm (callable) hoặc None", "a callable or None", callback)


def check_model(model, name="model"):
    needed = ("named_parameters", "config", "tokenizer")
    if not all(hasattr(model, a) for a in needed):
        raise ValueError(
            f"'{name}' phải là một TransformerLM (thiếu {[a for a in needed if not hasattr(model, a)]}), "
            f"nhận được {type(model).__name__} / '{name}' must be a TransformerLM, got {type(model).__name__}"
        )


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

class LoopSettings:
    """The loop's knobs, already validated by the trainer."""

    def __init__(self, *, epochs, batch_size, accumulation, lr, weight_decay, warmup_ratio, clip,
                 logging_steps, seed):
        self.epochs = epochs
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.clip = clip
        self.logging_steps = logging_steps
        self.seed = seed


def epoch_order(n: int, seed: int, epoch: int):
    """The shuffled example order of one epoch: a permutation from a generator seeded by (seed, epoch)."""
    return get_backend().host_rng([seed, epoch]).permutation(n).tolist()


def plan_steps(n: int, s: LoopSettings):
    """(micro-batches per epoch, optimiser steps per epoch, total steps, warmup steps)."""
    micro = math.ceil(n / s.batch_size)
    per_epoch = math.ceil(micro / s.accumulation)
    total = per_epoch * s.epochs
    return micro, per_epoch, total, warmup_steps_for(total, s.warmup_ratio)


def run_loop(*, model, examples, settings: LoopSettings, micro_step, weight_of, stat_keys=(),
             callback=None, evaluate=None):
    """Train `model` on `examples`. Returns a dict: history, global_step, epochs_done, time, stopped.

    micro_step(batch, denominator) -> (loss Tensor already divided by `denominator`, stats) where
    stats maps each of `stat_keys` to a (sum, count) pair over the batch. `denominator` is the total
    `weight_of` over the optimiser step's whole window of micro-batches.
    evaluate() -> dict of metrics, called after each epoch when given.
    """
    t0 = time.perf_counter()
    s = settings
    n = len(examples)
    _, _, total, warmup = plan_steps(n, s)
    opt = AdamW(model.named_parameters(), lr=s.lr, weight_decay=s.weight_decay)
    history = {"step": [], "epoch": [], "train_loss": [], "learning_rate": [], "grad_norm": []}
    for k in stat_keys:
        history[k] = []
    if evaluate is not None:
        history["eval_loss"] = []

    global_step = 0
    window_losses, window_stats = [], {k: [0.0, 0] for k in stat_keys}
    last = {"lr": 0.0, "grad_norm": 0.0}
    stopped = False
    epochs_done = 0
    was_training = getattr(model, "training", True)
    model.train()

    def log(epoch_float):
        entry = {
            "step": global_step,
            "epoch": epoch_float,
            "train_loss": sum(window_losses) / len(window_losses),
            "learning_rate": last["lr"],
            "grad_norm": last["grad_norm"],
        }
        for k in stat_keys:
            total_k, count_k = window_stats[k]
            entry[k] = total_k / count_k if count_k else float("nan")
        for key, value in entry.items():
            history[key].append(value)
        window_losses.clear()
        for k in stat_keys:
            window_stats[k] = [0.0, 0]
        return entry

    try:
        for epoch in range(s.epochs):
            order = epoch_order(n, s.seed, epoch)
            batches = [order[i:i + s.batch_size] for i in range(0, n, s.batch_size)]
            windows = [batches[i:i + s.accumulation] for i in range(0, len(batches), s.accumulation)]
            for w_index, window in enumerate(windows):
                denominator = sum(weight_of(examples[j]) for b in window for j in b)
                opt.zero_grad()
                step_loss = 0.0
                for b in window:
                    loss, stats = micro_step([examples[j] for j in b], denominator)
                    loss.backward()
                    step_loss += loss.item()
                    for k in stat_keys:
                        window_stats[k][0] += stats[k][0]
                        window_stats[k][1] += stats[k][1]
                opt.gather_grads()
                norm = opt.grad_norm()
                if not (math.isfinite(step_loss) and math.isfinite(norm)):
                    idx = sorted(examples[j].get("index", j) for b in window for j in b)
                    raise NonFiniteError(
                        f"Loss/gradient không hữu hạn ở bước {global_step + 1} (loss={step_loss}, "
                        f"grad_norm={norm}); các bản ghi của bước: {idx} / non-finite loss or gradient "
                        f"at step {global_step + 1}; records of the step: {idx}. Trọng số chưa bị thay đổi."
                    )
                opt.scale_grads(clip_coefficient(norm, s.clip))
                lr = s.lr * linear_schedule(global_step, total, warmup)
                opt.step(lr)
                opt.zero_grad()
                global_step += 1
                window_losses.append(step_loss)
                last["lr"], last["grad_norm"] = lr, norm
                if global_step % s.logging_steps == 0:
                    entry = log(epoch + (w_index + 1) / len(windows))
                    if callback is not None and callback(dict(entry)) is False:
                        stopped = True
                        break
            epochs_done = epoch + 1
            if evaluate is not None:
                model.eval()
                history["eval_loss"].append(evaluate()["eval_loss"])
                model.train()
            if stopped:
                break
        if window_losses:  # the final partial logging window
            entry = log(float(epochs_done))
            if callback is not None:
                callback(dict(entry))
    finally:
        model.train() if was_training else model.eval()
    return {
        "history": history,
        "global_step": global_step,
        "epochs_done": epochs_done,
        "total_steps": total,
        "warmup_steps": warmup,
        "time": time.perf_counter() - t0,
        "stopped": stopped,
    }


def min_or_none(values):
    vals = [v for v in values if v == v]
    return min(vals) if vals else None


class TrainerBase:
    """What every trainer shares: history, thong_ke() and the loop settings."""

    _result: dict | None

    def _init_common(self, config: dict):
        self._config = dict(config)
        self._result = None
        self._history: dict = {}
        self._run: dict | None = None

    def lay_lich_su(self) -> dict:
        """Lịch sử huấn luyện / the training history (lists per log entry), {} before training."""
        return {k: list(v) for k, v in self._history.items()}

    def thong_ke(self) -> dict:
        """Cấu hình, số bước, thời gian, chỉ số cuối / configuration, step counts, time, last metrics."""
        run = self._run or {}
        last = None
        if self._history.get("step"):
            last = {k: v[-1] for k, v in self._history.items() if v}
        return {
            "cau_hinh": dict(self._config),
            "da_huan_luyen": self._run is not None,
            "so_epoch": run.get("epochs_done", 0),
            "global_step": run.get("global_step", 0),
            "tong_so_buoc": run.get("total_steps", 0),
            "so_buoc_warmup": run.get("warmup_steps", 0),
            "tong_thoi_gian": run.get("time", 0.0),
            "dung_som": run.get("stopped", False),
            "chi_so_cuoi": last,
        }
