"""Command-line runs lose no work (spec/errors.md §7 "Run directories", §8 exit codes): every run is a real
subprocess (`python -m vietnamese_ai_ref`, or tests/_cli_worker.py to inject a fault into the CLI's main).

- a run is a transaction: `<out>.partial` while it runs, renamed to `<out>` at the end with summary.json
  last; `--out` onto an earlier run is refused before any step, a user's folder is never replaced;
- SIGKILL at three points (mid-step, inside a checkpoint write, while saving the finished model), then
  `--resume`: the model and metrics.jsonl are byte-identical to an uninterrupted run;
- SIGTERM takes Ctrl-C's path: a checkpoint inside the run folder, exit 143, resumable;
- a full disk (ENOSPC from the weights writer) and a read-only folder: exit 3, nothing looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

WORKER = os.path.join(os.path.dirname(__file__), "_cli_worker.py")
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", VIETNAMESE_AI_BACKEND="numpy")
ENV.pop("VIETNAMESE_AI_DTYPE", None)
KILLED = -signal.SIGKILL

SFT = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(4) for b in range(4)]
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "64"]  # a new model
MODEL: list = []  # ["--model", <a tiny model folder with dropout>], set by the `data` fixture
# 3 epochs of 4 optimiser steps
SETTINGS = ["--so-vong", "3", "--kich-thuoc-batch", "2", "--gradient-accumulation", "2", "--logging-steps", "3",
            "--seed", "5"]


def cli(*args, cwd=None, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "vietnamese_ai_ref", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300, preexec_fn=preexec_fn)


def worker(*fault, cli_args):
    return subprocess.run([sys.executable, WORKER, *map(str, fault), "--", *map(str, cli_args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def tree_hash(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def one_error_line(p, code):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("lỗi / error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The SFT file (with a UTF-8 byte order mark: accepted) and an uninterrupted reference run."""
    d = tmp_path_factory.mktemp("cli-runs")
    f = d / "sft.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT).encode())
    # the model: tiny, with dropout on, so the dropout RNG is part of what a resume must restore
    TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=3, embd_pdrop=0.1,
                            attn_pdrop=0.1, resid_pdrop=0.1)).save(d / "init")
    MODEL[:] = ["--model", d / "init"]
    p = cli("sft", "--data", f, "--quiet", "--out", d / "ref", *MODEL, *SETTINGS)
    assert p.returncode == 0, p.stderr
    return d, f, d / "ref"


def assert_same_run(ref, got):
    """Weights and metrics byte-identical; the run folder holds nothing half-written."""
    for name in ("model/model.safetensors", "model/config.json", "metrics.jsonl"):
        assert (ref / name).read_bytes() == (got / name).read_bytes(), name
    assert json.loads((got / "summary.json").read_text())["global_step"] == 12
    assert not [n for n in os.listdir(got) if n.startswith(".")]
    assert not os.path.exists(str(got) + ".partial")


def test_reference_run_is_complete(data):
    d, _, ref = data
    assert sorted(os.listdir(ref)) == ["config.json", "metrics.jsonl", "model", "summary.json"]
    lines = (ref / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [3, 6, 9, 12]
    assert json.loads((ref / "config.json").read_text())["args"]["so_vong"] == 3


def test_sigkill_at_three_points_then_resume_is_byte_identical(data, tmp_path):
    d, f, ref = data
    out, partial = tmp_path / "run", tmp_path / "run.partial"
    ck = partial / "checkpoints"
    # 1. mid-step: after AdamW's 3rd update (checkpoint 2 exists)
    p = worker("--kill-after-step", "3",
               cli_args=["sft", "--data", f, "--quiet", "--out", out, *MODEL, *SETTINGS, "--checkpoint-every", "2"])
    assert p.returncode == KILLED, p.stderr
    assert not out.exists() and sorted(os.listdir(ck)) == ["checkpoint-00000002"]
    assert not (partial / "summary.json").exists()
    # 2. resumed, then killed inside the write of checkpoint 6 (after the optimizer file)
    p = worker("--kill-phase", "optimizer:6", cli_args=["sft", "--resume", partial, "--quiet"])
    assert p.returncode == KILLED, p.stderr
    assert [n for n in sorted(os.listdir(ck)) if not n.startswith(".")] == ["checkpoint-00000002",
                                                                           "checkpoint-00000004"]
    # 3. resumed (by the --out it was started with), trained to the end, killed while saving the model
    p = worker("--kill-in-save", cli_args=["sft", "--resume", out, "--quiet"])
    assert p.returncode == KILLED, p.stderr
    assert not out.exists() and "checkpoint-00000012" in os.listdir(ck)
    # 4. resumed to the end: the same bytes as the run that was never interrupted
    p = cli("sft", "--resume", partial, "--quiet")
    assert p.returncode == 0, p.stderr
    assert_same_run(ref, out)
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-00000010", "checkpoint-00000012"]  # --keep 2


def test_sigterm_checkpoints_inside_the_run_folder_and_resumes(data, tmp_path):
    d, f, ref = data
    out = tmp_path / "run"
    p = worker("--kill-after-step", "5", "--signal", "TERM",
               cli_args=["sft", "--data", f, "--quiet", "--out", out, *MODEL, *SETTINGS], )
    assert p.returncode == 143, p.stderr
    ck = tmp_path / "run.partial" / "checkpoints" / "checkpoint-00000005"
    assert ck.is_dir() and str(ck) in p.stderr and f"--resume {tmp_path / 'run.partial'}" in p.stderr
    assert "SIGTERM" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not (tmp_path / "checkpoint-interrupted").exists()
    p = cli("sft", "--resume", tmp_path / "run.partial", "--quiet")
    assert p.returncode == 0, p.stderr
    assert_same_run(ref, out)
    assert not (out / "checkpoints").exists()  # without --checkpoint-every only the model folder stays


def test_out_onto_an_earlier_run_is_refused_before_any_step(data):
    d, f, ref = data
    before = tree_hash(ref)
    # the worker would SIGKILL itself after the first step: exit 2 proves no step ran
    p = worker("--kill-after-step", "1", cli_args=["sft", "--data", f, "--quiet", "--out", ref, *TINY])
    line = one_error_line(p, 2)
    assert "not empty" in line and "--overwrite" in line
    assert tree_hash(ref) == before and not os.path.exists(str(ref) + ".partial")


def test_out_onto_a_users_folder_is_refused_even_with_overwrite(data, tmp_path):
    d, f, _ = data
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("keep me")
    before = tree_hash(mine)
    for extra in ([], ["--overwrite"]):
        p = worker("--kill-after-step", "1", cli_args=["sft", "--data", f, "--quiet", "--out", mine, *TINY, *extra])
        one_error_line(p, 2)
    assert "not a run directory of this tool" in p.stderr
    assert tree_hash(mine) == before


def test_overwrite_replaces_a_finished_run(data, tmp_path):
    d, f, _ = data
    out = tmp_path / "run"
    assert cli("sft", "--data", f, "--quiet", "--out", out, *TINY, "--so-vong", "1").returncode == 0
    p = cli("sft", "--data", f, "--quiet", "--out", out, *TINY, "--so-vong", "2", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "summary.json").read_text())["global_step"] == 8
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the replaced run is gone, nothing left aside


@pytest.mark.parametrize("where", ["file", "parent-file"])
def test_out_that_is_a_file_is_refused(data, tmp_path, where):
    d, f, _ = data
    (tmp_path / "x").write_text("a file")
    out = tmp_path / "x" if where == "file" else tmp_path / "x" / "run"
    line = one_error_line(cli("sft", "--data", f, "--quiet", "--out", out, *TINY), 2)
    assert "is a file" in line and sorted(os.listdir(tmp_path)) == ["x"]


def test_an_interrupted_run_is_not_silently_restarted(data, tmp_path):
    d, f, _ = data
    (tmp_path / "run.partial").mkdir()
    line = one_error_line(cli("sft", "--data", f, "--quiet", "--out", tmp_path / "run", *TINY), 2)
    assert "interrupted run" in line and "--resume" in line


def test_full_disk_while_saving_leaves_nothing_that_looks_finished(data, tmp_path):
    d, f, ref = data
    out = tmp_path / "run"
    p = worker("--enospc-in-save", cli_args=["sft", "--data", f, "--quiet", "--out", out, *MODEL, *SETTINGS])
    line = one_error_line(p, 3)
    assert "disk full" in line and "partial run folder is kept" in line and "--resume" in line
    assert not out.exists()
    assert not (tmp_path / "run.partial" / "summary.json").exists()
    # space freed: the resume writes only what was missing, and the run is the uninterrupted one
    p = cli("sft", "--resume", tmp_path / "run.partial", "--quiet")
    assert p.returncode == 0, p.stderr
    assert_same_run(ref, out)


def _drop_to_nobody():
    os.setgid(65534)
    os.setuid(65534)


def _unprivileged():
    """A preexec_fn that runs the child without root's override of permissions, or a skip."""
    if os.geteuid() != 0:
        return None
    if not hasattr(os, "setuid"):
        pytest.skip("running as root on a system without setuid: root writes into read-only folders")
    import subprocess
    import sys

    try:  # the interpreter must be reachable by the unprivileged user (not under a root-only /root)
        ok = subprocess.run([sys.executable, "-c", "import vietnamese_ai_ref"], preexec_fn=_drop_to_nobody,
                            capture_output=True, timeout=60).returncode == 0
    except OSError:
        ok = False
    if not ok:
        pytest.skip("root, and this Python or the package cannot be run by an unprivileged user here "
                    "(e.g. the interpreter lives under a root-only /root): a read-only folder cannot be tested")
    return _drop_to_nobody


@pytest.fixture
def open_tmp(tmp_path_factory):
    """A folder every user may enter (pytest's own is root-only), removed afterwards."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="nolost-")
    os.chmod(d, 0o755)
    yield d
    for root, dirs, _ in os.walk(d):
        for x in dirs:
            os.chmod(os.path.join(root, x), 0o755)
    shutil.rmtree(d)


def test_read_only_output_folder_exit_3_before_any_compute(open_tmp):
    pre = _unprivileged()
    f = os.path.join(open_tmp, "sft.jsonl")
    with open(f, "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT))
    os.chmod(f, 0o644)
    ro = os.path.join(open_tmp, "ro")
    os.mkdir(ro, 0o555)
    os.chmod(ro, 0o555)
    p = cli("sft", "--data", f, "--quiet", "--out", os.path.join(ro, "run"), *TINY, preexec_fn=pre)
    line = one_error_line(p, 3)
    assert "permission denied" in line and "nothing was computed" in line
    assert os.listdir(ro) == []
    # an unreadable data file is a user error (exit 2) with its own message
    os.chmod(f, 0o000)
    rw = os.path.join(open_tmp, "rw")
    os.mkdir(rw)
    os.chmod(rw, 0o777)
    p = cli("sft", "--data", f, "--quiet", "--out", os.path.join(rw, "run"), *TINY, preexec_fn=pre)
    line = one_error_line(p, 2)
    assert "--data" in line and "cannot read the file" in line and "Permission denied" in line


def test_pipeline_killed_then_resumed_is_byte_identical(tmp_path):
    """pipeline: the stages checkpoint into <out>.partial/checkpoints/{sft,reward,dpo}; a SIGKILL during
    SFT and `--resume` give the same policy, reward model and metrics as an uninterrupted pipeline."""
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT), "utf-8")
    pref = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(6)]
    (tmp_path / "pref.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pref), "utf-8")
    (tmp_path / "p.toml").write_text(
        '[model]\nn_layer = 1\nn_embd = 16\nn_head = 2\nn_positions = 64\nembd_pdrop = 0.1\n'
        '[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n'
        '[sft]\nso_vong = 2\nkich_thuoc_batch = 4\ngradient_accumulation = 1\nlogging_steps = 1\n'
        '[reward]\nso_vong = 1\nkich_thuoc_batch = 2\nlogging_steps = 1\n'
        '[dpo]\nkich_thuoc_batch = 2\ngradient_accumulation = 1\nlogging_steps = 1\ntoc_do_hoc = 1e-3\n', "utf-8")
    cfg = tmp_path / "p.toml"
    assert cli("pipeline", "--config", cfg, "--quiet", "--out", tmp_path / "ref").returncode == 0
    p = worker("--kill-after-step", "3",
               cli_args=["pipeline", "--config", cfg, "--quiet", "--out", tmp_path / "run", "--checkpoint-every", "2"])
    assert p.returncode == KILLED, p.stderr
    assert os.listdir(tmp_path / "run.partial" / "checkpoints" / "sft") == ["checkpoint-00000002"]
    p = cli("pipeline", "--resume", tmp_path / "run.partial", "--quiet")
    assert p.returncode == 0, p.stderr
    for name in ("policy/model.safetensors", "reward_model/model.safetensors", "metrics.jsonl"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name
