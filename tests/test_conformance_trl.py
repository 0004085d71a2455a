"""examples/trl_adapter.py: transformers' GPT-2 and TRL's losses through the conformance runner.

What it is for: transformers' own GPT-2 passes trainer_sft (padded-position logits are not normative,
spec/model.md §4, and are not compared — yet they do differ); with TRL 0.28 installed, the adapter over
`DPOTrainer.dpo_loss` and RewardTrainer's loss passes every spec 1.0 check; TRL >= 0.29's sigmoid
loss (label smoothing dropped) FAILs exactly the conservative-DPO checks, citing losses.md §3.
What it is not: a test of TRL's trainers (their per-micro-batch mean is rejected by the trainer vectors,
tests/test_trainer_vectors.py). torch and transformers are test oracles: skipped where absent; TRL too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vietnamese_ai_ref.conformance import runner as C  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"
ADAPTER = str(ROOT / "examples" / "trl_adapter.py")
DPO_SECTION = "spec/losses.md#3-dpo-loss-with-conservative-label-smoothing"


def _cli(*args):
    env = dict(os.environ)
    env.pop("VIETNAMESE_AI_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "vietnamese_ai_ref.conformance", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def adapter():
    return C.load_adapter(ADAPTER)


def test_transformers_gpt2_passes_trainer_sft(adapter):
    r = _cli(ADAPTER, "--only", "trainer_sft.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK     sft/tiny_gpt2_5_steps" in r.stdout and "1 OK, 0 FAIL, 0 SKIP" in r.stdout
    # the exclusion matters: transformers' padded queries do not see themselves (model.md §4 lets them)
    case = json.loads((VEC / "trainer_sft.json").read_text(encoding="utf-8"))["cases"][0]
    got = adapter.run_trainer_vector(C.decode(case["inputs"]))
    expected = C.decode(case["expected"])["logits"]
    mask = np.asarray(C.decode(case["inputs"]["micro_batches"][0]["attention_mask"])) != 0
    diff = np.abs(np.asarray(got["logits"]) - expected).max(axis=-1)  # (B, T)
    assert diff[~mask].max() > 0.1 and diff[mask].max() < 1e-13
    assert not C.compare(got["logits"], expected, 1e-10, 1e-12)[0]  # all positions: it would fail
    errors = C.trainer_errors(got, case)
    assert errors["loss"][0] < 1e-14 and errors["grads"][0] < 1e-14 and errors["parameters_after"][0] < 1e-14


def test_sft_loss_without_trl(adapter):
    """sft_loss is transformers' fixed_cross_entropy in float64 (no TRL needed)."""
    report = C.run(adapter, only=["sft_loss"])
    assert report.ok and max(r.max_abs for r in report.rows if r.max_abs is not None) < 1e-13


def test_trl_028_passes_every_spec_1_0_check():
    pytest.importorskip("trl")
    r = _cli(ADAPTER, "--quiet")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "of TRL 0.28" in r.stdout.splitlines()[0]
    assert "89 OK, 0 FAIL, 116 SKIP (205 of 205 checks) -> PASS" in r.stdout  # SKIP: spec 1.1 RL functions and trainers


def _cdpo_checks() -> set:
    """(case, check) of every dpo_loss check with label_smoothing > 0 — except a value where every
    h = 0 (both losses are log 2 there) — and the DPO trainer vector (ε = 0.1)."""
    out = {("dpo/tiny_gpt2_5_steps", "trainer")}
    for c in json.loads((VEC / "dpo_loss.json").read_text(encoding="utf-8"))["cases"]:
        if "expected" not in c or c["args"]["label_smoothing"] == 0:
            continue
        a = C.decode(c["args"])
        h = (a["policy_chosen_logps"] - a["policy_rejected_logps"]) - (a["reference_chosen_logps"] - a["reference_rejected_logps"])
        out |= {(c["name"], "grad")} | ({(c["name"], "value")} if np.abs(h).max() > 0 else set())
    return out


def test_trl_029_sigmoid_fails_exactly_the_cdpo_checks():
    pytest.importorskip("trl")
    variant = C.load_adapter(ADAPTER + ":trl_0_29_sigmoid")
    report = C.run(variant)
    fails = {(r.case, r.check) for r in report.rows if r.status == "FAIL"}
    assert fails == _cdpo_checks() and len(fails) == 18
    assert all(r.section == "losses.md#3-dpo-loss-with-conservative-label-smoothing"
               for r in report.rows if r.status == "FAIL")
    text = C.format_report(report, variant.name, quiet=True)
    assert text.count(DPO_SECTION) == 18
    assert all(len(line) <= 400 for line in text.splitlines())  # one quantity per line
    assert report.counts == {"OK": 71, "FAIL": 18, "SKIP": 116}
