"""Every subcommand through the real entry point (`python -m vietnamese_ai_ref`, a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")


def cli(*args, cwd=None, check=True):
    p = subprocess.run([sys.executable, "-m", "vietnamese_ai_ref", *map(str, args)], capture_output=True, text=True,
                       env=ENV, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


SFT = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(3) for b in range(3)]
PREF = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(6)]
SMALL = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An SFT run through the CLI; later tests reuse its checkpoint."""
    d = tmp_path_factory.mktemp("cli")
    data = write_jsonl(d / "sft.jsonl", SFT)
    out = d / "sft-run"
    p = cli("sft", "--data", data, "--val", data, "--so-vong", "2", "--quiet", "--out", out, *SMALL)
    return d, out, p


def test_sft_writes_run_directory(trained):
    d, out, p = trained
    for f in ("config.json", "metrics.jsonl", "summary.json", "model/config.json", "model/model.safetensors"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["eval_loss_min"] is not None
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["stage"] == "sft"
    assert json.loads((out / "config.json").read_text())["sft"]["so_vong"] == 2


def test_reward_and_score(trained):
    d, out, _ = trained
    data = write_jsonl(d / "pref.jsonl", PREF)
    rm_out = d / "rm-run"
    cli("reward", "--model", out / "model", "--data", data, "--quiet", "--out", rm_out, "--so-vong", "2")
    summary = json.loads((rm_out / "summary.json").read_text())
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    p = cli("score", "--model", rm_out / "model", "--text", "Dạ, 2 ạ.", "--text", "Không biết.")
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert [r["van_ban"] for r in rows] == ["Dạ, 2 ạ.", "Không biết."]
    assert rows[0]["score_normalized"] == pytest.approx(-rows[1]["score_normalized"])


def test_dpo(trained):
    d, out, _ = trained
    data = write_jsonl(d / "pref-dpo.jsonl", PREF)
    dpo_out = d / "dpo-run"
    cli("dpo", "--model", out / "model", "--data", data, "--quiet", "--out", dpo_out, "--toc-do-hoc", "1e-3")
    summary = json.loads((dpo_out / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["final_reward_margin"] is not None
    first = json.loads((dpo_out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] == pytest.approx(0.6931, abs=1e-3)


def test_generate(trained):
    _, out, _ = trained
    p = cli("generate", "--model", out / "model", "--prompt", "Tính 1 + 1", "--max-new-tokens", "5")
    row = json.loads(p.stdout.splitlines()[0])
    assert row["prompt"] == "Tính 1 + 1" and isinstance(row["output"], str)


def test_pipeline_from_toml(tmp_path):
    write_jsonl(tmp_path / "sft.jsonl", SFT)
    write_jsonl(tmp_path / "pref.jsonl", PREF)
    (tmp_path / "p.toml").write_text(
        '[model]\nn_layer = 1\nn_embd = 16\nn_head = 2\nn_positions = 64\n'
        '[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n'
        '[sft]\nso_vong = 1\ntoc_do_hoc = 1e-3\n[dpo]\nbeta = 0.2\n[reward]\nso_vong = 1\n', encoding="utf-8")
    out = tmp_path / "run"
    cli("pipeline", "--config", tmp_path / "p.toml", "--quiet", "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    assert "policy_reward_delta" in summary and summary["sft"]["global_step"] >= 1
    assert (out / "policy" / "model.safetensors").exists() and (out / "reward_model" / "model.safetensors").exists()


def test_conformance_subcommand():
    p = cli("conformance", "vietnamese_ai_ref.conformance:reference_adapter", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert " 0 FAIL" in p.stdout and "-> PASS" in p.stdout


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', encoding="utf-8")
    p = cli("sft", "--data", bad, "--quiet", "--out", tmp_path / "r", *SMALL, check=False)
    assert p.returncode == 2
    assert f"{bad}:2" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_bad_record_is_one_line_error(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a"}])
    p = cli("sft", "--data", bad, "--quiet", *SMALL, check=False)
    assert p.returncode == 2 and "bản ghi 1" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_bad_argument_exit_2(tmp_path):
    p = cli("dpo", "--model", tmp_path / "missing", "--data", tmp_path / "x.jsonl", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = cli("dpo", "--beta", "x", check=False)
    assert p.returncode == 2


@pytest.mark.parametrize("cmd", ["demo", "sft", "reward", "dpo", "pipeline", "generate", "score", "conformance"])
def test_help_is_complete(cmd):
    p = cli(cmd, "--help")
    assert "usage:" in p.stdout and len(p.stdout.splitlines()) >= 3
