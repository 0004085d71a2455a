"""The one training loop every trainer shares, and the argument checks they share.

What it is for: per-epoch shuffling from the seed, micro-batches, gradient accumulation with the loss
normalised over the whole effective batch (the trainer's `micro_step` divides by the window's
weight), global-norm clipping, AdamW, the linear warmup/decay schedule, a log entry every
`logging_steps` optimiser steps (plus one for a final partial window), the callback, the
non-finite guard (raise, or skip with `bo_qua_batch_loi`) and the wall time; checkpoints every N steps,
resume from one, and a checkpoint on Ctrl-C (the files themselves: checkpointing.py). spec/losses.md
("Optimisation") and spec/api.md ("Checkpoints and resume") are the normative texts.

The loop's whole mutable state lives in one dict (`_fresh_state`) that changes only when a step is
complete, so a checkpoint of it — periodic, final or on interrupt — is always consistent, and a run
resumed from it replays exactly the steps an uninterrupted run would take (bit-identical on CPU).

What it is not: a trainer. It knows nothing of tokens, pairs or rewards; SFT/DPO/RM supply
`micro_step(batch, denominator) -> (loss, stats)` and `weight_of(example)`.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time

from ..core.optim import AdamW, clip_coefficient, linear_schedule
from ..core.errors import NonFiniteError
from .settings import LoopSettings, check_bool, check_int, check_path, checked, epoch_order, plan_steps


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def _fresh_state(stat_keys, has_eval) -> dict:
    """The loop's whole mutable state: what a checkpoint stores and a resumed run starts from."""
    history = {"step": [], "epoch": [], "train_loss": [], "learning_rate": [], "grad_norm": []}
    for k in stat_keys:
        history[k] = []
    if has_eval:
        history["eval_loss"] = []
    return {
        "global_step": 0,  # optimiser steps taken = the scheduler's step
        "epoch": 0,  # the epoch the next window belongs to
        "next_window": 0,  # index of the next window within that epoch's order
        "epochs_done": 0,
        "history": history,
        "window_losses": [],  # per-step losses of the open logging window
        "window_stats": {k: [0.0, 0] for k in stat_keys},  # (sum, count) of the open logging window
        "last": {"lr": 0.0, "grad_norm": 0.0},
        "stopped": False,
        "finished": False,
        "skipped": 0,  # non-finite steps skipped (bo_qua_batch_loi=True)
        "time": 0.0,  # wall seconds of the calls before this one (resumed runs add up)
    }


class _SigintDeferral:
    """In the main thread, turn Ctrl-C into a flag the loop checks at step boundaries, so that a
    checkpoint written on interrupt holds a consistent state. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self.forced = False
        self._installed = False
        self._previous = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def _handler(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def check(self):
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
        return False


def run_loop(*, model, examples, settings: LoopSettings, micro_step, weight_of, stat_keys=(),
             callback=None, evaluate=None, checkpoint=None, skip_nonfinite=False, extra_state=None):
    """Train `model` on `examples`. Returns a dict: history, global_step, epochs_done, total_steps,
    warmup_steps, time, stopped, skipped, checkpoint (the last one written, or None), resumed_from.

    micro_step(batch, denominator) -> (loss Tensor already divided by `denominator`, stats) where
    stats maps each of `stat_keys` to a (sum, count) pair over the batch. `denominator` is the total
    `weight_of` over the optimiser step's whole window of micro-batches.
    evaluate() -> dict of metrics, called after each epoch when given.
    checkpoint: a checkpointing.CheckpointOptions (directory, every, keep, resume) or None.
    skip_nonfinite: a non-finite step is skipped (counted in `skipped`) instead of raising NonFiniteError.
    extra_state: JSON-able dict stored in every checkpoint (DPO: the reference log-probabilities).
    """
    t0 = time.perf_counter()
    s = settings
    n = len(examples)
    _, _, total, warmup = plan_steps(n, s)
    ck = checkpoint
    resume = ck.resume if ck is not None else None
    identity = None
    if ck is not None and (resume is not None or ck.directory is not None):
        identity = _identity(ck, s, model, examples, stat_keys, evaluate is not None)
        if resume is not None:
            resume.check(identity, model)  # before anything is written or any weight changes
        ck.check_directory(identity)

    st = _fresh_state(stat_keys, evaluate is not None)
    if resume is not None:
        resume.restore_model(model)
        st = resume.loop_state()
    opt = AdamW(model.named_parameters(), lr=s.lr, weight_decay=s.weight_decay)
    if resume is not None:
        resume.restore_optimizer(opt)
    time_before = float(st["time"])
    history, window_losses, window_stats, last = st["history"], st["window_losses"], st["window_stats"], st["last"]
    saved = {"path": None}
    # the dropout RNG as of the last committed step (an abandoned window has drawn from it since)
    committed = {"rng": _dropout_state(model)}

    def save(directory=None, exclusive=False):
        nonlocal identity
        from ..io.checkpoints import write_checkpoint

        if identity is None:
            identity = _identity(ck, s, model, examples, stat_keys, evaluate is not None)
        st["time"] = time_before + (time.perf_counter() - t0)
        saved["path"] = write_checkpoint(directory or ck.directory, identity=identity, loop_state=st, model=model,
                                         opt=opt, rng_state=committed["rng"], extra=extra_state, keep=ck.keep,
                                         exclusive=exclusive)
        return saved["path"]

    def log(epoch_float):
        entry = {
            "step": st["global_step"],
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

    was_training = getattr(model, "training", True)
    model.train()
    defer = _SigintDeferral()
    try:
        with defer:
            try:
                if not st["finished"]:
                    _epochs(st, s, n, total, warmup, examples, model, opt, micro_step, weight_of, stat_keys,
                            callback, evaluate, skip_nonfinite, defer, log,
                            save if (ck is not None and ck.every) else None, ck.every if ck is not None else None,
                            committed)
                    if window_losses:  # the final partial logging window
                        entry = log(float(st["epochs_done"]))
                        if callback is not None:
                            callback(dict(entry))
                    st["finished"] = True
                    if ck is not None and ck.directory is not None:
                        save()
                defer.check()  # a Ctrl-C that came during the last step or the final save is not lost
            except KeyboardInterrupt as exc:
                if ck is not None and not defer.forced and (st["global_step"] > 0 or resume is not None):
                    _save_on_interrupt(exc, ck, st, saved, save)
                raise
    finally:
        model.train() if was_training else model.eval()
        opt.release_grad_homes()  # the trained model must not keep the gradient buffer alive
    return {
        "history": history,
        "global_step": st["global_step"],
        "epochs_done": st["epochs_done"],
        "total_steps": total,
        "warmup_steps": warmup,
        "time": time_before + (time.perf_counter() - t0),
        "stopped": st["stopped"],
        "skipped": st["skipped"],
        "checkpoint": saved["path"],
        "resumed_from": resume.path if resume is not None else None,
    }


def _save_on_interrupt(exc, ck, st, saved, save):
    """Checkpoint the last completed step (reusing one just written for it), attach its path to the
    KeyboardInterrupt as `checkpoint_path` and say where it is. A failing write is reported, not raised:
    the interrupt must still propagate."""
    from ..io.checkpoints import INTERRUPT_DIR

    path = saved["path"]
    try:
        if path is None or not path.endswith(f"-{st['global_step']:08d}") or not os.path.isdir(path):
            path = save(ck.directory or os.path.abspath(INTERRUPT_DIR), exclusive=ck.directory is None)
    except Exception as e:  # noqa: BLE001 — disk full, permissions, …
        print(f"Không lưu được checkpoint khi bị ngắt / could not save a checkpoint on interrupt: {e}",
              file=sys.stderr)
        return
    exc.checkpoint_path = path
    print(f"Đã lưu checkpoint khi bị ngắt / checkpoint saved on interrupt: {path} "
          f"(chạy tiếp / resume with tiep_tuc_tu={path!r})", file=sys.stderr)


def _dropout_state(model):
    from ..io.checkpoints import dropout_rng_state

    return dropout_rng_state(model)


def _identity(ck, s, model, examples, stat_keys, has_eval):
    from ..io.checkpoints import run_identity

    return run_identity(kind=ck.kind, trainer_config=ck.trainer_config, settings=s, model=model,
                        examples=examples, stat_keys=stat_keys, has_eval=has_eval)


def _epochs(st, s, n, total, warmup, examples, model, opt, micro_step, weight_of, stat_keys, callback, evaluate,
            skip_nonfinite, defer, log, save, every, committed):
    """The epochs from st["epoch"], window st["next_window"] on. `st` changes only once a step is
    complete (the commit), so an interrupt between commits leaves it consistent."""
    window_losses, window_stats, last, history = st["window_losses"], st["window_stats"], st["last"], st["history"]
    for epoch in range(st["epoch"], s.epochs):
        order = epoch_order(n, s.seed, epoch)
        batches = [order[i:i + s.batch_size] for i in range(0, n, s.batch_size)]
        windows = [batches[i:i + s.accumulation] for i in range(0, len(batches), s.accumulation)]
        first = st["next_window"] if epoch == st["epoch"] else 0
        for w_index in range(first, len(windows)):
            window = windows[w_index]
            denominator = sum(weight_of(examples[j]) for b in window for j in b)
            opt.zero_grad()
            step_loss = 0.0
            step_stats = {k: [0.0, 0] for k in stat_keys}
            for b in window:
                loss, stats = micro_step([examples[j] for j in b], denominator)
                loss.backward()
                step_loss += loss.item()
                for k in stat_keys:
                    step_stats[k][0] += stats[k][0]
                    step_stats[k][1] += stats[k][1]
                defer.check()  # Ctrl-C: abandon this window; the state is that of the last step
            opt.gather_grads()
            norm = opt.grad_norm()
            finite = math.isfinite(step_loss) and math.isfinite(norm)
            if not finite and not skip_nonfinite:
                idx = sorted(examples[j].get("index", j) for b in window for j in b)
                raise NonFiniteError(
                    f"Loss/gradient không hữu hạn ở bước {st['global_step'] + 1} (loss={step_loss}, "
                    f"grad_norm={norm}); các bản ghi của bước: {idx} / non-finite loss or gradient "
                    f"at step {st['global_step'] + 1}; records of the step: {idx}. Trọng số chưa bị thay đổi "
                    f"(bo_qua_batch_loi=True để bỏ qua) / weights unchanged (pass bo_qua_batch_loi=True to skip)."
                )
            if finite:
                opt.scale_grads(clip_coefficient(norm, s.clip))
                lr = s.lr * linear_schedule(st["global_step"], total, warmup)
                opt.step(lr)
            opt.zero_grad()
            # -- commit: the step is done; the state now says so ---------------------------------
            st["global_step"] += 1
            st["epoch"], st["next_window"] = epoch, w_index + 1
            if finite:
                window_losses.append(step_loss)
                for k in stat_keys:
                    window_stats[k][0] += step_stats[k][0]
                    window_stats[k][1] += step_stats[k][1]
                last["lr"], last["grad_norm"] = lr, norm
            else:
                st["skipped"] += 1
            committed["rng"] = _dropout_state(model)
            if st["global_step"] % s.logging_steps == 0 and window_losses:
                entry = log(epoch + (w_index + 1) / len(windows))
                if callback is not None and callback(dict(entry)) is False:
                    st["stopped"] = True
            if st["stopped"]:
                break
            if save is not None and st["global_step"] % every == 0:
                save()
            defer.check()
        if evaluate is not None:
            model.eval()
            history["eval_loss"].append(evaluate()["eval_loss"])
            model.train()
        st["epochs_done"] = epoch + 1
        st["epoch"], st["next_window"] = epoch + 1, 0
        if st["stopped"]:
            break
        defer.check()


def min_or_none(values):
    vals = [v for v in values if v == v]
    return min(vals) if vals else None


class TrainerBase:
    """What every trainer shares: history, thong_ke() and the loop settings."""

    _result: dict | None

    def _init_common(self, config: dict):
        """Check every constructor parameter in `config` (in its order) and set it as an attribute."""
        for name, value in config.items():
            setattr(self, name, checked(name, value))
        self._config = dict(config)
        self._result = None
        self._history: dict = {}
        self._run: dict | None = None

    def _finish(self, run: dict, history_keys, **extra) -> dict:
        """Record a finished run and build the result every trainer returns: the seeds' common keys,
        the trainer's own (`extra`), and `history` restricted to `history_keys`."""
        self._run = run
        self._history = run["history"]
        h = run["history"]
        self._result = {
            "tong_thoi_gian": run["time"],
            "so_epoch": run["epochs_done"],
            "global_step": run["global_step"],
            "train_loss_min": min_or_none(h["train_loss"]),
            **extra,
            "history": {k: list(h.get(k, [])) for k in history_keys},
        }
        return self._result

    def _checkpoint_options(self, kind, *, thu_muc_checkpoint=None, luu_moi=None, giu_lai=2, tiep_tuc_tu=None,
                            bo_qua_batch_loi=False):
        """Check the checkpoint/resume keywords of huan_luyen (before any compute) and read the checkpoint
        to resume from. Returns (CheckpointOptions, skip_nonfinite)."""
        from ..io.checkpoints import CheckpointError, CheckpointOptions, list_checkpoints, load_checkpoint

        check_path("thu_muc_checkpoint", thu_muc_checkpoint)
        check_path("tiep_tuc_tu", tiep_tuc_tu)
        if luu_moi is not None:
            check_int("luu_moi", luu_moi)
            if thu_muc_checkpoint is None:
                raise ValueError(
                    "'luu_moi' cần 'thu_muc_checkpoint' (nơi lưu checkpoint) / 'luu_moi' needs "
                    "'thu_muc_checkpoint' (where to write the checkpoints)"
                )
        check_int("giu_lai", giu_lai)
        check_bool("bo_qua_batch_loi", bo_qua_batch_loi)
        if thu_muc_checkpoint is not None:
            d = os.fspath(thu_muc_checkpoint)
            if os.path.lexists(d) and not os.path.isdir(d):
                raise CheckpointError(
                    f"'thu_muc_checkpoint' không phải thư mục / 'thu_muc_checkpoint' is not a directory: {d}"
                )
            if tiep_tuc_tu is None and list_checkpoints(d):
                raise CheckpointError(
                    f"Thư mục checkpoint đã có checkpoint: {d}; hãy truyền tiep_tuc_tu để chạy tiếp hoặc dùng thư "
                    f"mục trống / the checkpoint directory already holds checkpoints: {d}; pass tiep_tuc_tu to "
                    f"resume or use an empty directory"
                )
        resume = load_checkpoint(tiep_tuc_tu) if tiep_tuc_tu is not None else None
        opts = CheckpointOptions(kind=kind, trainer_config=self._config, directory=thu_muc_checkpoint,
                                 every=luu_moi, keep=giu_lai, resume=resume)
        return opts, bo_qua_batch_loi

    def lay_lich_su(self) -> dict:
        """Lịch sử huấn luyện / the training history (lists per log entry), {} before training."""
        return {k: list(v) for k, v in self._history.items()}

    def thong_ke(self) -> dict:
        """Cấu hình, số bước, thời gian, chỉ số cuối / configuration, step counts, time, last metrics,
        non-finite steps skipped (so_buoc_bo_qua)."""
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
            "so_buoc_bo_qua": run.get("skipped", 0),
            "chi_so_cuoi": last,
        }
