"""Subprocess worker of tests/test_cli_runs.py (not a test module): the command-line tool's `main`, run
in a fresh process with one fault injected, so a test can kill or break a CLI run at a chosen point.

    python tests/_cli_worker.py [--kill-after-step N] [--signal KILL|TERM|INT] [--kill-phase PHASE:STEP]
                                [--kill-in-save] [--enospc-in-save] -- CLI ARGS...

--kill-after-step N: send the signal to itself right after AdamW's N-th update (default SIGKILL).
--kill-phase PHASE:STEP: SIGKILL inside the checkpoint write of STEP at PHASE (io/checkpoints._write_hook).
--kill-in-save: SIGKILL when the finished run saves its model into the run folder (after training).
--enospc-in-save: the model's weights file cannot be written into the run folder: OSError(ENOSPC), as on
a full disk (checkpoints still write).
The exit status is the CLI's (or -signal when killed).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from vietnamese_ai_ref.app import cli
from vietnamese_ai_ref.core import optim
from vietnamese_ai_ref.io import checkpoints


def _is_run_model(path) -> bool:
    """A model written by the CLI into its run folder (<out>.partial/.<name>.tmp-…/model.safetensors), not
    one inside a training checkpoint (<out>.partial/checkpoints/.checkpoint-….tmp-…/model/…)."""
    return os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path)))).endswith(".partial")


def main():
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--kill-after-step", type=int, default=None)
    p.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "INT"])
    p.add_argument("--kill-phase", default=None)
    p.add_argument("--kill-in-save", action="store_true")
    p.add_argument("--enospc-in-save", action="store_true")
    a = p.parse_args(argv[:split])
    sig = getattr(signal, f"SIG{a.signal}")

    if a.kill_after_step is not None:
        original_step = optim.AdamW.step

        def step(self, lr):
            original_step(self, lr)
            if self.step_count == a.kill_after_step:
                sys.stdout.flush()
                os.kill(os.getpid(), sig)

        optim.AdamW.step = step
    if a.kill_phase:
        phase, at = a.kill_phase.split(":")
        checkpoints._write_hook = lambda ph, st: os.kill(os.getpid(), signal.SIGKILL) \
            if (ph, st) == (phase, int(at)) else None
    if a.kill_in_save or a.enospc_in_save:
        import safetensors.numpy

        original_save = safetensors.numpy.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if _is_run_model(filename):
                if a.kill_in_save:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
            return original_save(tensors, filename, *args, **kwargs)

        safetensors.numpy.save_file = save_file
    sys.exit(cli.main(argv[split + 1:]))


if __name__ == "__main__":
    main()
