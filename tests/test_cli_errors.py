"""Exit codes that mean something and checks before any compute, through the real entry point (each case a
subprocess: `python -m vietnamese_ai_ref`, or tests/_cli_worker.py). spec/errors.md §7–§8 name each test.

Exit 2 with one bilingual line for user and data errors, 3 for the environment (tests/test_cli_runs.py),
1 with a traceback for a library bug. "Before any compute" is shown with the worker's
`--kill-after-step 1`: a run that took a step would die by SIGKILL instead of exiting 2.
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
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "64"]
SFT = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(3) for b in range(3)]
PREF = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(4)]


def cli(*args, cwd=None, env=ENV):
    return subprocess.run([sys.executable, "-m", "vietnamese_ai_ref", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def no_step(*args):
    """The CLI with a SIGKILL armed at its first optimiser step."""
    return subprocess.run([sys.executable, WORKER, "--kill-after-step", "1", "--", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def error_line(p, code=2) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lỗi / error: "), p.stderr
    return lines[0]


def usage_error(p) -> str:
    assert p.returncode == 2 and "Traceback" not in p.stderr and "usage:" in p.stderr, p.stderr
    return p.stderr.strip().splitlines()[-1]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-errors")
    TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64)).save(d / "model")
    return d, write_jsonl(d / "sft.jsonl", SFT), write_jsonl(d / "pref.jsonl", PREF), d / "model"


# -- model-size and generation settings ---------------------------------------------------------------

@pytest.mark.parametrize("opt", ["--n-layer", "--n-embd", "--n-head", "--n-positions"])
def test_model_size_options_must_be_positive(files, tmp_path, opt):
    d, sft, _, _ = files
    line = usage_error(cli("sft", "--data", sft, "--out", tmp_path / "o", opt, "0"))
    assert f"argument {opt}" in line and "an int ≥ 1" in line and not (tmp_path / "o").exists()


def test_model_size_options_not_with_model(files, tmp_path):
    d, sft, _, model = files
    line = error_line(no_step("sft", "--data", sft, "--model", model, "--n-layer", "2", "--out", tmp_path / "o"))
    assert "--n-layer" in line and "cannot be combined with --model" in line
    assert os.listdir(tmp_path) == []


def test_new_model_config_error_is_a_user_error(files, tmp_path):
    d, sft, _, _ = files
    line = error_line(cli("sft", "--data", sft, "--n-embd", "15", "--n-head", "2", "--out", tmp_path / "o"))
    assert "n_embd=15 is not divisible by n_head=2" in line


@pytest.mark.parametrize("args,fragment", [
    (["--sample", "--temperature", "nan"], "argument --temperature: cần một số hữu hạn"),
    (["--sample", "--temperature", "inf"], "argument --temperature"),
    (["--top-p", "nan"], "argument --top-p"),
])
def test_generation_settings_must_be_finite(files, args, fragment):
    p = cli("generate", "--model", files[3], "--prompt", "Tính 1 + 1", *args)
    assert fragment in usage_error(p) and p.stdout == ""


@pytest.mark.parametrize("args,fragment", [
    (["--sample", "--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
])
def test_generation_settings_in_range(files, args, fragment):
    p = cli("generate", "--model", files[3], "--prompt", "Tính 1 + 1", *args)
    assert error_line(p).startswith(f"lỗi / error: {fragment}:") and p.stdout == ""


def test_generate_prompt_longer_than_the_model(files):
    line = error_line(cli("generate", "--model", files[3], "--prompt", "x" * 80))
    assert "--prompt 0" in line and "longer than the model's n_positions=64" in line


def test_score_needs_a_score_head(files):
    line = error_line(cli("score", "--model", files[3], "--text", "Dạ."))
    assert "no score head" in line


def test_corrupt_model_weights_are_a_user_error(files, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(files[3]):
        (bad / f).write_bytes((files[3] / f).read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00" * 12)
    line = error_line(cli("generate", "--model", bad, "--prompt", "a"))
    assert "cannot read" in line and "model.safetensors" in line


# -- data files ------------------------------------------------------------------------------------------

def test_chosen_equal_to_rejected_names_the_record(files, tmp_path):
    d, _, _, model = files
    data = write_jsonl(tmp_path / "p.jsonl", PREF[:1] + [{"prompt": "Hỏi", "chosen": "Như nhau.",
                                                          "rejected": "Như nhau."}])
    line = error_line(no_step("dpo", "--model", model, "--data", data, "--out", tmp_path / "o"))
    assert "record 1, key 'rejected'" in line and "different from 'chosen'" in line
    assert sorted(os.listdir(tmp_path)) == ["p.jsonl"]


def test_data_that_is_a_directory(files, tmp_path):
    line = error_line(cli("sft", "--data", tmp_path, "--out", tmp_path / "o", *TINY))
    assert line.startswith("lỗi / error: --data:") and "is a directory, not a file" in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_data_that_is_a_pipe(files, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = error_line(cli("sft", "--data", fifo, "--out", tmp_path / "o", *TINY))
    assert "is a pipe, not a regular file" in line


def test_bad_record_in_val_names_val_and_its_file(files, tmp_path):
    d, sft, _, _ = files
    val = write_jsonl(tmp_path / "val.jsonl", [SFT[0], {"instruction": "a"}])
    line = error_line(no_step("sft", "--data", sft, "--val", val, "--out", tmp_path / "o", *TINY))
    assert f"--val {val}:" in line and "record 1, key 'output'" in line
    assert sorted(os.listdir(tmp_path)) == ["val.jsonl"]  # no run folder, not even an empty one


# -- pipeline config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("toml,fragment", [
    ('[data]\nsft = 5\npreference = "pref.jsonl"\n', "[data].sft must be a path (a string), got int 5"),
    ('sft = 5\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n', "[sft] must be a table, got int 5"),
    ('out = 1\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n', "out must be a string"),
    ('[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\nsft_val = "x"\n', "[data] có khóa không hợp lệ"),
    ('[model]\npath = "model"\nn_layer = 2\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n',
     "[model].path cannot be combined with ['n_layer']"),
    ('[model]\nn_layer = 0\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n', "[model]: "),
    ('[model]\nn_layer = "2"\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n', "[model]: "),
    ('[reward]\nso_vong = 0\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n', "invalid 'so_vong'"),
    ('[sft]\nmax_seq_length = "x"\n[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n',
     "invalid 'max_seq_length'"),
])
def test_pipeline_config_checked_before_any_compute(files, toml, fragment):
    d = files[0]
    cfg = d / "p.toml"
    cfg.write_text(toml, encoding="utf-8")
    line = error_line(no_step("pipeline", "--config", cfg, "--quiet", "--out", d / "never"))
    assert fragment in line, line
    assert not (d / "never").exists() and not (d / "never.partial").exists()


def test_pipeline_long_prompt_and_same_rules_everywhere(files, tmp_path):
    """A preference prompt longer than n_positions after templating: validated, trained and scored with
    the same truncation (it used to fail in the scoring step after two trained stages)."""
    d, sft, _, _ = files
    pref = write_jsonl(tmp_path / "pref.jsonl", PREF + [{"prompt": "Dài quá " * 20, "chosen": "Dạ.",
                                                         "rejected": "Không."}])
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[model]\nn_layer = 1\nn_embd = 16\nn_head = 2\nn_positions = 64\n[data]\nsft = "{sft}"\n'
                   f'preference = "{pref}"\n[sft]\nso_vong = 1\n[reward]\nso_vong = 1\n', encoding="utf-8")
    p = cli("pipeline", "--config", cfg, "--quiet", "--out", tmp_path / "run")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rlhf"]["global_step"] == 1 and isinstance(summary["policy_reward_delta"], float)
    stages = [json.loads(x)["stage"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages[0] == "sft" and stages[-1] == "rlhf" and "reward" in stages


# -- exit codes -----------------------------------------------------------------------------------------

def test_non_finite_step_exit_2_then_skip_nonfinite(files, tmp_path):
    d, sft, _, _ = files
    quiet_numpy = dict(ENV, PYTHONWARNINGS="ignore::RuntimeWarning")  # the overflow warnings are expected
    p = cli("sft", "--data", sft, "--out", tmp_path / "o", *TINY, "--toc-do-hoc", "1e30", "--so-vong", "1",
            "--quiet", env=quiet_numpy)
    line = error_line(p)
    assert "non-finite loss or gradient" in line and "--skip-nonfinite" in line and "removed" in line
    assert os.listdir(tmp_path) == []
    p = cli("sft", "--data", sft, "--out", tmp_path / "o", *TINY, "--toc-do-hoc", "1e30", "--so-vong", "1",
            "--quiet", "--skip-nonfinite", env=quiet_numpy)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["so_buoc_bo_qua"] >= 1


def test_a_library_bug_is_a_traceback_with_exit_1(files, tmp_path):
    d, sft, _, _ = files
    code = ("import sys\nfrom vietnamese_ai_ref.app import cli\nfrom vietnamese_ai_ref.trainers.sft import SFTTrainer\n"
            "def bug(*a, **k):\n    raise ValueError('simulated library bug')\n"
            "SFTTrainer.huan_luyen = bug\nsys.exit(cli.main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "sft", "--data", str(sft), "--out", str(tmp_path / "o"), *TINY,
                        "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 1 and "Traceback" in p.stderr and "ValueError: simulated library bug" in p.stderr
    assert os.listdir(tmp_path) == []  # the partial folder held no checkpoint: removed


def _tree(root):
    return {os.path.relpath(os.path.join(a, f), root): hashlib.sha256(open(os.path.join(a, f), "rb").read()).hexdigest()
            for a, _, fs in os.walk(root) for f in fs}


def test_resume_refusals(files, tmp_path):
    d, sft, _, _ = files
    data = write_jsonl(tmp_path / "sft.jsonl", SFT)
    out, partial = tmp_path / "run", tmp_path / "run.partial"
    p = subprocess.run([sys.executable, WORKER, "--kill-after-step", "3", "--", "sft", "--data", str(data),
                        "--out", str(out), *TINY, "--quiet", "--checkpoint-every", "2", "--kich-thuoc-batch", "2"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    before = _tree(partial)
    assert "drop --so-vong" in error_line(cli("sft", "--resume", partial, "--so-vong", "5"))
    assert "is a 'sft' run, not 'dpo'" in error_line(cli("dpo", "--resume", partial))
    assert "no interrupted run" in error_line(cli("sft", "--resume", tmp_path / "nothing"))
    write_jsonl(data, SFT[:-1])  # the data changed since the run started
    line = error_line(cli("sft", "--resume", partial, "--quiet"))
    assert "training data differs" in line
    assert _tree(partial) == before  # a refused resume writes nothing
    write_jsonl(data, SFT)
    assert cli("sft", "--resume", partial, "--quiet").returncode == 0
    assert "the run is finished, nothing to resume" in error_line(cli("sft", "--resume", out))
