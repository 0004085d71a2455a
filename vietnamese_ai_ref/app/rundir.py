"""Run directories and progress bars of the command-line tool and the demo.

What it is for: a tqdm bar fed by the trainers' log callback (it also keeps the log entries for
metrics.jsonl), the planned step count of a run, and the run directory a command writes into.
What it is not: training or saving logic; the commands in cli.py and demo.py use these helpers.
"""

from __future__ import annotations

import os
import time


class Progress:
    """A tqdm bar fed by the trainers' log callback; collects the log entries for metrics.jsonl."""

    def __init__(self, total, desc, quiet, stage):
        self.entries = []
        self.stage = stage
        self.last_step = 0
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="bước", dynamic_ncols=True, leave=True)

    def __call__(self, info):
        info = dict(info, stage=self.stage)
        self.entries.append(info)
        if self.bar is not None:
            self.bar.update(info["step"] - self.last_step)
            post = {"loss": f"{info['train_loss']:.4f}"}
            for k in ("reward_margin", "accuracy", "reward_accuracy"):
                if k in info:
                    post[k.replace("reward_", "r_")] = f"{info[k]:.3f}"
            self.bar.set_postfix(post)
        self.last_step = info["step"]
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()


def total_steps(n_records, batch_size, accumulation, epochs):
    from ..trainers.settings import LoopSettings, plan_steps

    s = LoopSettings(epochs=epochs, batch_size=batch_size, accumulation=accumulation, lr=1.0,
                     weight_decay=0.0, warmup_ratio=0.0, clip=0.0, logging_steps=1, seed=0)
    return plan_steps(n_records, s)[2]


def make_run_dir(out, command):
    if out is None:
        out = os.path.join("runs", f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)
    return out
