"""The one training loop every trainer shares.

What it is for: per-epoch shuffling from the seed (or an explicit schedule of windows), micro-batches,
gradient accumulation with the loss normalised over the whole effective batch (the trainer's
`micro_step` divides by the window's weight), global-norm clipping, AdamW, the linear warmup/decay
schedule, a log entry every `logging_steps` optimiser steps (plus one for a final partial window), the
callback, the non-finite guard (raise, or skip with `bo_qua_batch_loi`) and the wall time; checkpoints
every N steps, resume from one, and a checkpoint on Ctrl-C (the files themselves: io/checkpoints.py).
spec/losses.md ("Optimisation") and spec/api.md ("Checkpoints and resume") are the normative texts.

The loop's whole mutable state is one `TrainState` that changes only when a step is complete (the
commit), so a checkpoint of it — periodic, final or on interrupt — is always consistent, and a run
resumed from it replays exactly the steps an uninterrupted run would take (bit-identical on CPU).
Checkpoint bookkeeping (the run identity, periodic saves) runs only when checkpoints are on; the one
exception is a copy of the dropout RNG state at each commit (a few integers on NumPy), so that even the
checkpoint of an interrupt in a run without checkpoint options resumes bit-identically.

What it is not: a trainer. It knows nothing of tokens, pairs or rewards; SFT/DPO/RM supply
`micro_step(batch, denominator) -> (loss, stats)` and `weight_of(example)`; the online-RL trainers add
`prepare_window(window, step)`, which turns a window of prompts into one of scored completions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from ..backends import get_backend
from ..core.errors import NonFiniteError
from ..core.optim import AdamW, clip_coefficient, linear_schedule
from ..io.checkpoints import INTERRUPT_DIR, dropout_rng_state, run_identity, write_checkpoint
from .settings import LoopSettings, epoch_order, plan_steps

__all__ = ["TrainState", "run_loop"]


@dataclass
class TrainState:
    """The loop's whole mutable state: what a checkpoint stores (`to_dict`) and a resumed run starts from."""

    history: dict
    window_stats: dict  # stat key -> [sum, count] of the open logging window
    global_step: int = 0  # optimiser steps taken = the scheduler's step
    epoch: int = 0  # the epoch the next window belongs to
    next_window: int = 0  # index of the next window within that epoch's order
    epochs_done: int = 0
    window_losses: list = field(default_factory=list)  # per-step losses of the open logging window
    last: dict = field(default_factory=lambda: {"lr": 0.0, "grad_norm": 0.0})
    stopped: bool = False
    finished: bool = False
    skipped: int = 0  # non-finite steps skipped (bo_qua_batch_loi=True)
    time: float = 0.0  # wall seconds of the calls before this one (resumed runs add up)

    @classmethod
    def fresh(cls, stat_keys, has_eval) -> "TrainState":
        history = {k: [] for k in ("step", "epoch", "train_loss", "learning_rate", "grad_norm", *stat_keys)}
        if has_eval:
            history["eval_loss"] = []
        return cls(history=history, window_stats={k: [0.0, 0] for k in stat_keys})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


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


class _Checkpointer:
    """Everything about checkpoints for one run. Periodic saves run only when checkpoints are on (a
    directory, a resume, or periodic saves); without them it only writes the checkpoint of an interrupt
    (./checkpoint-interrupted). Either way the dropout RNG state is copied at each commit (cheap; None on
    CuPy, whose generators cannot export it): an interrupt abandons its window after some micro-batches
    have drawn dropout masks, and the checkpoint must hold the state from before them."""

    def __init__(self, ck, run, on: bool):
        self.ck, self.run, self.on = ck, run, on
        self.identity = None
        self.path = None
        self.committed_rng = dropout_rng_state(run.model)  # as of the last committed step

    def ensure_identity(self):
        if self.identity is None:
            r = self.run
            self.identity = run_identity(kind=self.ck.kind, trainer_config=self.ck.trainer_config, settings=r.s,
                                         model=r.model, examples=r.examples, stat_keys=r.stat_keys,
                                         has_eval=r.evaluate is not None)
        return self.identity

    def save(self, directory=None, exclusive=False) -> str:
        r = self.run
        r.st.time = r.time_before + (time.perf_counter() - r.t0)
        self.path = write_checkpoint(directory or self.ck.directory, identity=self.ensure_identity(),
                                     loop_state=r.st.to_dict(), model=r.model, opt=r.opt,
                                     rng_state=self.committed_rng, extra=r.extra_state, keep=self.ck.keep,
                                     exclusive=exclusive)
        return self.path

    def after_commit(self, step: int, periodic: bool) -> None:
        self.committed_rng = dropout_rng_state(self.run.model)
        if not self.on:
            return
        if periodic and self.ck.every and step % self.ck.every == 0:
            self.save()

    def on_interrupt(self, exc) -> None:
        """Checkpoint the last completed step (reusing one just written for it), attach its path to the
        KeyboardInterrupt as `checkpoint_path` and say where it is. A failing write is reported, not
        raised: the interrupt must still propagate."""
        st, path = self.run.st, self.path
        try:
            if path is None or not path.endswith(f"-{st.global_step:08d}") or not os.path.isdir(path):
                path = self.save(self.ck.directory or os.path.abspath(INTERRUPT_DIR),
                                 exclusive=self.ck.directory is None)
        except Exception as e:  # noqa: BLE001 — disk full, permissions, …
            print(f"Không lưu được checkpoint khi bị ngắt / could not save a checkpoint on interrupt: {e}",
                  file=sys.stderr)
            return
        exc.checkpoint_path = path
        print(f"Đã lưu checkpoint khi bị ngắt / checkpoint saved on interrupt: {path} "
              f"(chạy tiếp / resume with tiep_tuc_tu={path!r})", file=sys.stderr)


class _Run:
    """One call of `run_loop`: the settings, the model and optimiser, the state, and the step."""

    def __init__(self, *, model, examples, settings, micro_step, weight_of, stat_keys, callback, evaluate,
                 checkpoint, skip_nonfinite, extra_state, schedule, on_step, warmup_steps, prepare_window=None):
        self.t0 = time.perf_counter()
        self.model, self.examples, self.s = model, examples, settings
        self.micro_step, self.weight_of, self.stat_keys = micro_step, weight_of, tuple(stat_keys)
        self.callback, self.evaluate, self.skip_nonfinite = callback, evaluate, skip_nonfinite
        self.extra_state, self.schedule, self.on_step = extra_state, schedule, on_step
        self.prepare_window = prepare_window
        if schedule is None:
            _, _, self.total, self.warmup = plan_steps(len(examples), settings)
        else:
            self.total = len(schedule)
            self.warmup = plan_steps(1, dataclasses.replace(settings, epochs=self.total))[3]
        if warmup_steps is not None:
            self.warmup = warmup_steps
        ck = checkpoint
        self.resume = ck.resume if ck is not None else None
        on = ck is not None and (self.resume is not None or ck.directory is not None or bool(ck.every))
        self.st = TrainState.fresh(self.stat_keys, evaluate is not None)
        self.ckpt = _Checkpointer(ck, self, on) if ck is not None else None
        if self.resume is not None:
            self.resume.check(self.ckpt.ensure_identity(), model)  # before anything is written or changed
        if self.ckpt is not None and ck.directory is not None:
            ck.check_directory(self.ckpt.ensure_identity())
        if self.resume is not None:
            self.resume.restore_model(model)
            self.st = TrainState.from_dict(self.resume.loop_state())
        self.opt = AdamW(model.named_parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        if self.resume is not None:
            self.resume.restore_optimizer(self.opt)
        self.time_before = float(self.st.time)
        self.defer = _SigintDeferral()

    # -- epochs and windows --------------------------------------------------------------------
    def windows_of(self, epoch: int) -> list:
        """The optimiser steps of one epoch: each a list of micro-batches, each a list of examples."""
        if self.schedule is not None:
            return self.schedule
        s, n = self.s, len(self.examples)
        order = epoch_order(n, s.seed, epoch)
        batches = [[self.examples[j] for j in order[i:i + s.batch_size]] for i in range(0, n, s.batch_size)]
        return [batches[i:i + s.accumulation] for i in range(0, len(batches), s.accumulation)]

    def epochs(self) -> None:
        """The epochs from st.epoch, window st.next_window on."""
        st = self.st
        n_epochs = 1 if self.schedule is not None else self.s.epochs
        for epoch in range(st.epoch, n_epochs):
            windows = self.windows_of(epoch)
            first = st.next_window if epoch == st.epoch else 0
            for w_index in range(first, len(windows)):
                self.step(windows[w_index], epoch, w_index, len(windows))
                if st.stopped:
                    break
                self.defer.check()
            if self.evaluate is not None:
                self.model.eval()
                st.history["eval_loss"].append(self.evaluate()["eval_loss"])
                self.model.train()
            st.epochs_done = epoch + 1
            st.epoch, st.next_window = epoch + 1, 0
            if st.stopped:
                break
            self.defer.check()

    def step(self, window, epoch: int, w_index: int, n_windows: int) -> None:
        """One optimiser step over `window`; `st` changes only at the commit at its end."""
        st, opt = self.st, self.opt
        xp = get_backend().xp
        step_stats = {k: [0.0, 0] for k in self.stat_keys}
        if self.prepare_window is not None:  # e.g. the RL trainers' rollout: prompts in, completions out
            window, window_stats = self.prepare_window(window, st.global_step)
            for k, (total_k, count_k) in window_stats.items():
                step_stats[k][0] += total_k
                step_stats[k][1] += count_k
        denominator = sum(self.weight_of(e) for mb in window for e in mb)
        opt.zero_grad()
        # the step's loss is summed on the device in float64 (what adding loss.item() floats would give,
        # addition for addition) and read once per step: no device sync per micro-batch
        loss_sum = xp.zeros((), dtype=xp.float64)
        for batch in window:
            loss, stats = self.micro_step(batch, denominator)
            loss.backward()
            loss_sum += loss.data.astype(xp.float64)
            for k, (total_k, count_k) in stats.items():  # a key it leaves out counts nothing this micro-batch
                step_stats[k][0] += total_k
                step_stats[k][1] += count_k
            self.defer.check()  # Ctrl-C: abandon this window; the state is that of the last step
        step_loss = float(loss_sum)
        opt.gather_grads()
        norm = opt.grad_norm()
        if self.on_step is not None:
            self.on_step(st.global_step, opt, norm)
        finite = math.isfinite(step_loss) and math.isfinite(norm)
        if not finite and not self.skip_nonfinite:
            raise self._nonfinite(window, step_loss, norm)
        if finite:
            opt.scale_grads(clip_coefficient(norm, self.s.clip))
            lr = self.s.lr * linear_schedule(st.global_step, self.total, self.warmup)
            opt.step(lr)
        opt.zero_grad()
        # -- commit: the step is done; the state now says so -------------------------------------
        st.global_step += 1
        st.epoch, st.next_window = epoch, w_index + 1
        if finite:
            st.window_losses.append(step_loss)
            for k in self.stat_keys:
                st.window_stats[k][0] += step_stats[k][0]
                st.window_stats[k][1] += step_stats[k][1]
            st.last["lr"], st.last["grad_norm"] = lr, norm
        else:
            st.skipped += 1
        if st.global_step % self.s.logging_steps == 0 and st.window_losses:
            self.log(epoch + (w_index + 1) / n_windows)
        if self.ckpt is not None:
            self.ckpt.after_commit(st.global_step, periodic=not st.stopped)

    def _nonfinite(self, window, step_loss, norm) -> NonFiniteError:
        idx = sorted(e.get("index", -1) if isinstance(e, dict) else -1 for mb in window for e in mb)
        step = self.st.global_step + 1
        return NonFiniteError(
            f"Loss/gradient không hữu hạn ở bước {step} (loss={step_loss}, grad_norm={norm}); các bản ghi "
            f"của bước: {idx} / non-finite loss or gradient at step {step}; records of the step: {idx}. "
            f"Trọng số chưa bị thay đổi (bo_qua_batch_loi=True để bỏ qua) / weights unchanged (pass "
            f"bo_qua_batch_loi=True to skip)."
        )

    def log(self, epoch_float: float) -> None:
        """Close the logging window: one history entry, then the callback (False stops the run)."""
        st = self.st
        entry = {"step": st.global_step, "epoch": epoch_float,
                 "train_loss": sum(st.window_losses) / len(st.window_losses),
                 "learning_rate": st.last["lr"], "grad_norm": st.last["grad_norm"]}
        for k in self.stat_keys:
            total_k, count_k = st.window_stats[k]
            entry[k] = total_k / count_k if count_k else float("nan")
            st.window_stats[k] = [0.0, 0]
        for key, value in entry.items():
            st.history[key].append(value)
        st.window_losses.clear()
        if self.callback is not None and self.callback(dict(entry)) is False:
            st.stopped = True

    # -- the whole run -----------------------------------------------------------------------
    def __call__(self) -> dict:
        st, model = self.st, self.model
        was_training = getattr(model, "training", True)
        model.train()
        try:
            with self.defer:
                try:
                    if not st.finished:
                        self.epochs()
                        if st.window_losses:  # the final partial logging window
                            self.log(float(st.epochs_done))
                        st.finished = True
                        if self.ckpt is not None and self.ckpt.ck.directory is not None:
                            self.ckpt.save()
                    self.defer.check()  # a Ctrl-C during the last step or the final save is not lost
                except KeyboardInterrupt as exc:
                    if self.ckpt is not None and not self.defer.forced and (st.global_step > 0 or self.resume):
                        self.ckpt.on_interrupt(exc)
                    raise
        finally:
            model.train() if was_training else model.eval()
            self.opt.release_grad_homes()  # the trained model must not keep the gradient buffer alive
        return {"history": st.history, "global_step": st.global_step, "epochs_done": st.epochs_done,
                "total_steps": self.total, "warmup_steps": self.warmup,
                "time": self.time_before + (time.perf_counter() - self.t0), "stopped": st.stopped,
                "skipped": st.skipped, "checkpoint": self.ckpt.path if self.ckpt is not None else None,
                "resumed_from": self.resume.path if self.resume is not None else None}


def run_loop(*, model, examples, settings: LoopSettings, micro_step, weight_of, stat_keys=(),
             callback=None, evaluate=None, checkpoint=None, skip_nonfinite=False, extra_state=None,
             schedule=None, on_step=None, warmup_steps=None, prepare_window=None) -> dict:
    """Train `model` on `examples`. Returns a dict: history, global_step, epochs_done, total_steps,
    warmup_steps, time, stopped, skipped, checkpoint (the last one written, or None), resumed_from.

    micro_step(batch, denominator) -> (loss Tensor already divided by `denominator`, stats) where
    `batch` is a list of examples and stats maps some of `stat_keys` to a (sum, count) pair over it.
    `denominator` is the total `weight_of` over the optimiser step's whole window of micro-batches.
    evaluate() -> dict of metrics, called after each epoch when given.
    checkpoint: an io.checkpoints.CheckpointOptions (directory, every, keep, resume) or None.
    skip_nonfinite: a non-finite step is skipped (counted in `skipped`) instead of raising NonFiniteError.
    extra_state: JSON-able dict stored in every checkpoint (DPO: the reference log-probabilities).
    schedule: instead of shuffled epochs, an explicit list of optimiser steps, each a list of
    micro-batches (lists of examples) — the trainer vectors' step schedule (spec/vectors/README.md).
    on_step(step, opt, grad_norm): called after the gradient norm of each step, before clipping (the
    conformance reference reads the step-1 gradients there). warmup_steps: overrides the warm-up the
    settings imply (a trainer vector states its own).
    prepare_window(window, step) -> (window, stats): called at the start of each optimiser step with its
    window and the 0-based step index (global_step before the step); the window it returns (lists of
    examples again) is what `weight_of` and `micro_step` see, and `stats` ((sum, count) pairs of some of
    `stat_keys`) join the step's statistics. The online-RL trainers sample and score their rollout here
    (the step index numbers the rollout, so a resumed run draws the same tokens).
    """
    return _Run(model=model, examples=examples, settings=settings, micro_step=micro_step, weight_of=weight_of,
                stat_keys=stat_keys, callback=callback, evaluate=evaluate, checkpoint=checkpoint,
                skip_nonfinite=skip_nonfinite, extra_state=extra_state, schedule=schedule, on_step=on_step,
                warmup_steps=warmup_steps, prepare_window=prepare_window)()
