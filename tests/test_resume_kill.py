"""Kill -9 and resume: a run SIGKILLed at arbitrary points — mid-step, inside a checkpoint write, after
the rename but before pruning, at a random moment — and resumed from its newest checkpoint ends with
weights and history bit-identical to an uninterrupted run of the same seed (CPU).

Each run is a real subprocess (tests/_resume_worker.py, tiny models: n_layer=1, n_embd=16, dropout on).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from vietnamese_ai_ref.io.checkpoints import list_checkpoints, load_checkpoint, tim_checkpoint

WORKER = os.path.join(os.path.dirname(__file__), "_resume_worker.py")
KILLED = -signal.SIGKILL


def _env():
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["VIETNAMESE_AI_BACKEND"] = "numpy"
    env.pop("VIETNAMESE_AI_DTYPE", None)
    return env


def run(kind, out, *args):
    """Run the worker to its end (or its self-kill); returns the exit status."""
    p = subprocess.run([sys.executable, WORKER, kind, str(out), *args], env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode in (0, KILLED), p.stderr
    return p.returncode


def run_and_kill_randomly(kind, out, ckpt, after_step, seed):
    """Start the worker slowed down, SIGKILL it at a random moment after it announces `after_step`."""
    p = subprocess.Popen([sys.executable, WORKER, kind, str(out), "--ckpt", str(ckpt), "--announce", "--slow", "0.05"],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.strip() == f"step {after_step}":
                time.sleep(random.Random(seed).uniform(0.0, 0.1))
                p.send_signal(signal.SIGKILL)
                break
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    return p.returncode


def assert_same_run(ref_dir, got_dir):
    w_ref, w_got = np.load(os.path.join(ref_dir, "weights.npz")), np.load(os.path.join(got_dir, "weights.npz"))
    assert sorted(w_ref.files) == sorted(w_got.files)
    for name in w_ref.files:
        assert np.array_equal(w_ref[name], w_got[name]), name  # bit-identical
    with open(os.path.join(ref_dir, "result.json")) as f:
        r_ref = json.load(f)
    with open(os.path.join(got_dir, "result.json")) as f:
        r_got = json.load(f)
    assert r_got["lich_su"] == r_ref["lich_su"]  # every loss/metric list, exactly
    assert r_got["result"] == r_ref["result"]
    assert r_got["thong_ke"] == r_ref["thong_ke"]
    return r_ref


def steps(ckpt):
    return [s for s, _ in list_checkpoints(ckpt)]


def test_sft_killed_four_times_resumes_bit_identical(tmp_path):
    ckpt, ref, out = tmp_path / "ck", tmp_path / "ref", tmp_path / "out"
    assert run("sft", ref) == 0  # uninterrupted, no checkpointing at all

    # 1. mid-step: after AdamW's 3rd update, before the loop records it (checkpoint 2 exists)
    assert run("sft", out, "--ckpt", str(ckpt), "--kill-after-step", "3") == KILLED
    assert steps(ckpt) == [2]

    # 2. inside the write of checkpoint 6, after the model and optimizer files, before trainer_state.json
    assert run("sft", out, "--ckpt", str(ckpt), "--kill-phase", "optimizer:6") == KILLED
    assert steps(ckpt) == [2, 4]  # the previous checkpoints are intact ...
    assert any(n.startswith(".checkpoint-00000006.tmp-") for n in os.listdir(ckpt))  # ... the torn one is hidden
    assert load_checkpoint(ckpt).global_step == 4  # and the newest complete one loads

    # 3. after the rename of checkpoint 8, before the old ones are pruned
    assert run("sft", out, "--ckpt", str(ckpt), "--kill-phase", "renamed:8") == KILLED
    assert steps(ckpt) == [4, 6, 8]

    # 4. at a random moment after step 9 (slowed down so the kill lands inside the run)
    rc = run_and_kill_randomly("sft", out, ckpt, after_step=9, seed=1)
    assert rc in (KILLED, 0)
    assert tim_checkpoint(ckpt) is not None

    # 5. resume to the end
    assert run("sft", out, "--ckpt", str(ckpt)) == 0
    assert not any(n.startswith(".") for n in os.listdir(ckpt))  # leftovers cleaned by later writes
    assert steps(ckpt) == [10, 12]
    r = assert_same_run(ref, out)
    assert r["result"]["global_step"] == 12 and len(r["lich_su"]["eval_loss"]) == 3
    assert r["lich_su"]["step"] == [3, 6, 9, 12]


def test_dpo_resume_uses_stored_reference_logps(tmp_path):
    """ref_model=None: the reference was a copy of the *initial* policy; a resumed process no longer has
    it, so the checkpoint's stored reference log-probs must be what the resumed run uses."""
    ckpt, ref, out = tmp_path / "ck", tmp_path / "ref", tmp_path / "out"
    assert run("dpo", ref) == 0
    assert run("dpo", out, "--ckpt", str(ckpt), "--kill-after-step", "6") == KILLED
    assert steps(ckpt) == [4]
    assert run("dpo", out, "--ckpt", str(ckpt), "--kill-phase", "model:8") == KILLED
    assert steps(ckpt) == [4]
    assert run("dpo", out, "--ckpt", str(ckpt)) == 0
    r = assert_same_run(ref, out)
    assert r["result"]["global_step"] == 12 and len(r["lich_su"]["train_loss"]) == 12


def test_reward_killed_during_first_write_restarts_then_resumes(tmp_path):
    ckpt, ref, out = tmp_path / "ck", tmp_path / "ref", tmp_path / "out"
    assert run("reward", ref) == 0
    # killed while writing the very first checkpoint: nothing complete, the next run starts afresh
    assert run("reward", out, "--ckpt", str(ckpt), "--kill-phase", "state:3") == KILLED
    assert steps(ckpt) == []
    assert run("reward", out, "--ckpt", str(ckpt), "--kill-after-step", "5") == KILLED
    assert steps(ckpt) == [3]
    assert run("reward", out, "--ckpt", str(ckpt)) == 0
    r = assert_same_run(ref, out)
    assert r["result"]["global_step"] == 8 and r["lich_su"]["step"] == [2, 4, 6, 8]
