"""Tests of the conformance runner `python -m vietnamese_ai_ref.conformance`.

What it is for: the runner passes our reference adapter and the independent plain-torch adapter,
fails the deliberately wrong adapter naming the failing vectors, reports SKIP for absent optional
gradients, FAIL for a missing required function, a NaN, a wrong shape or an unraised error, runs
trainer vectors through the reserved slot, and exits 0 / 1 / 2 from the command line.
What it is not: a check of the vector contents (tests/test_vectors.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vietnamese_ai_ref.conformance import runner as C

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"


def _statuses(report):
    return {(r.case, r.check): r.status for r in report.rows}


def test_reference_adapter_passes_everything():
    report = C.run(C.reference_adapter)
    c = report.counts
    assert c["FAIL"] == 0 and c["SKIP"] == 0 and c["OK"] > 50
    checks = {r.check for r in report.rows}
    assert checks == {"value", "grad", "raises", "trainer"}
    for r in report.rows:
        if r.check not in ("raises", "trainer"):
            assert r.max_abs <= 1e-14  # the vectors were produced by this very code (bit-equal on one machine)
    # trainer vectors go through BLAS: equal here, within their own tolerances elsewhere
    assert sorted(r.case for r in report.rows if r.check == "trainer") == [
        "dpo/tiny_gpt2_5_steps", "grpo/tiny_gpt2_2_steps_fixed_rollouts", "reward/tiny_gpt2_5_steps",
        "rloo/tiny_gpt2_2_steps_fixed_rollouts", "sft/tiny_gpt2_5_steps"]


def test_main_with_reference_adapter(capsys):
    assert C.main(["vietnamese_ai_ref.conformance:reference_adapter"]) == 0
    out = capsys.readouterr().out
    assert "dpo_loss/spec_worked_example" in out and "-> PASS" in out and "0 FAIL" in out


def test_torch_adapter_passes():
    pytest.importorskip("torch")
    adapter = C.load_adapter(str(ROOT / "examples" / "torch_adapter.py"))
    report = C.run(adapter)
    fails = [r for r in report.rows if r.status == "FAIL"]
    assert not fails, C.format_report(report, "torch", quiet=True)
    # the example adapter implements spec 1.0; the optional 1.1 RL functions SKIP (tests/test_rl_losses_torch.py
    # checks the RL vectors against torch)
    skipped = {r.detail.split("()")[0].split()[-1].removesuffix("_grad") for r in report.rows if r.status == "SKIP"}
    assert skipped <= {f.name for f in C.PROTOCOL.values() if f.since != "1.0"}, skipped
    # independent code: agreement to rounding, not bit-identity everywhere
    assert max(r.max_abs for r in report.rows if r.max_abs is not None and r.check != "trainer") < 1e-13
    # end to end (5 AdamW steps): rounding, plus the noise-integrating parameters (README; < 1e-10 measured)
    trainer_rows = [r for r in report.rows if r.check == "trainer"]  # spec 1.0's three, spec 1.1's GRPO and RLOO
    assert len(trainer_rows) == 5 and max(r.max_abs for r in trainer_rows) < 1e-9


def _rows(out):
    """{(case, check): status} of a printed report (continuation lines of FAIL rows skipped)."""
    body = out.split("detail\n", 1)[1].splitlines()[:-1]
    return {(ln.split()[1], ln.split()[2]): ln.split()[0] for ln in body if ln[:1] != " "}


def test_wrong_adapter_fails_and_names_the_vectors(capsys):
    rc = C.main([str(ROOT / "examples" / "wrong_adapter.py")])
    out = capsys.readouterr().out
    assert rc == 1 and "-> FAIL" in out
    lines = _rows(out)
    assert lines[("dpo_loss/random_eps0.1_beta0.1", "value")] == "FAIL"
    assert lines[("dpo_loss/spec_worked_example", "value")] == "FAIL"
    assert lines[("dpo_loss/extreme_beta1_eps0.5", "value")] == "FAIL"
    assert lines[("dpo_loss/random_eps0.0_beta0.1", "value")] == "OK"  # ε = 0 is unaffected by the bug
    assert lines[("dpo_loss/random_eps0.1_beta0.1", "grad")] == "SKIP"  # no dpo_loss_grad
    assert lines[("sft_loss/own_count", "value")] == "OK"
    assert lines[("sft/tiny_gpt2_5_steps", "trainer")] == "SKIP"  # no run_trainer_vector: it still fails on dpo_loss
    text = out.splitlines()
    i = next(k for k, ln in enumerate(text) if ln.startswith("FAIL") and "random_eps0.1_beta0.1" in ln)
    # the FAIL row cites the section its vector file names; each failing quantity on its own line
    assert text[i].endswith("spec/losses.md#3-dpo-loss-with-conservative-label-smoothing")
    assert text[i + 1].lstrip().startswith("- losses: max_abs") and "first mismatch at (0,)" in text[i + 1]
    assert not text[i + 2].startswith(" ")  # chosen/rejected rewards are right: only `losses` is listed


def test_only_filters(capsys):
    assert C.main(["vietnamese_ai_ref.conformance:reference_adapter", "--only", "normalize_scores"]) == 0
    out = capsys.readouterr().out
    assert "normalize_scores/n1" in out and "dpo_loss" not in out.split("detail\n", 1)[1]
    assert C.main(["examples.wrong_adapter", "--only", "dpo_loss/random_eps0.0*", "--only", "sft_loss"]) == 0
    assert C.main(["examples.wrong_adapter", "--only", "dpo_loss/spec_worked_example"]) == 1
    assert C.main(["vietnamese_ai_ref.conformance:reference_adapter", "--only", "no_such_vector"]) == 2
    capsys.readouterr()


def _selected(*only):
    return [(r.case, r.check) for r in C.run(_Cheap(), only=list(only)).rows]


class _Cheap:
    """An adapter without functions: every row SKIPs or FAILs at once (the selection is what is tested)."""


def test_only_rule_globs_file_names_functions_and_cases():
    trainers = [("sft/tiny_gpt2_5_steps", "trainer"), ("dpo/tiny_gpt2_5_steps", "trainer"),
                ("reward/tiny_gpt2_5_steps", "trainer"), ("grpo/tiny_gpt2_2_steps_fixed_rollouts", "trainer"),
                ("rloo/tiny_gpt2_2_steps_fixed_rollouts", "trainer")]
    assert _selected("trainer_*") == trainers                       # a glob over file stems
    assert _selected("trainer_*.json") == trainers                  # ... and file names
    assert _selected("trainer_sft.json") == trainers[:1]            # a file name
    assert _selected("trainer_sft") == trainers[:1]                 # its stem
    assert _selected("sft") == trainers[:1]                         # the trainer's name, as a whole name
    sft_loss = _selected("sft_loss")                                # a function: all its cases and checks
    assert len(sft_loss) == 7 + 7 + 3 and {c for c, _ in sft_loss} == {c for c, _ in _selected("sft_loss.json")}
    assert set(_selected("*sft*")) == set(sft_loss) | set(trainers[:1])  # everything SFT
    assert _selected("grpo") == trainers[3:4] and _selected("trainer_rloo.json") == trainers[4:]
    assert len(_selected("grpo*")) == 1 + len(_selected("grpo_loss")) + len(_selected("grpo_advantages"))
    assert _selected("sft_loss/own_count") == [("sft_loss/own_count", "value"), ("sft_loss/own_count", "grad")]
    assert {c for c, _ in _selected("dpo_loss/")} == {c for c, _ in _selected("dpo_loss")}
    assert _selected("dpo_loss/random_eps0.0*")[0] == ("dpo_loss/random_eps0.0_beta0.1", "value")
    with pytest.raises(C.UsageError, match="'loss'"):  # never a substring: `loss` names nothing
        _selected("sft_loss", "loss")


def _write_adapter(tmp_path, body, name="adapter_under_test.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return str(p)


def test_missing_required_function_fails(tmp_path, capsys):
    path = _write_adapter(tmp_path, """
        from vietnamese_ai_ref.conformance import reference_adapter as R
        sequence_logps = R.sequence_logps
        sft_loss = R.sft_loss
        dpo_loss = R.dpo_loss
        reward_loss = R.reward_loss
        # normalize_scores missing; no gradient functions
    """)
    assert C.main([path, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "normalize_scores/general" in out and "lacks required function normalize_scores()" in out
    report = C.run(C.load_adapter(path))
    st = _statuses(report)
    assert st[("dpo_loss/spec_worked_example", "grad")] == "SKIP"
    assert st[("dpo_loss/spec_worked_example", "value")] == "OK"


def test_bad_outputs_fail(tmp_path):
    path = _write_adapter(tmp_path, """
        import numpy as np
        from vietnamese_ai_ref.conformance import reference_adapter as R
        sequence_logps = R.sequence_logps
        def sft_loss(logits, labels, n):            # NaN instead of an error, and NaN values
            return np.array(float("nan"))
        def dpo_loss(*a):                          # wrong arity of the result
            return R.dpo_loss(*a)[:2]
        def reward_loss(c, r, m):                  # wrong shape
            return R.reward_loss(c, r, m)[None]
        def normalize_scores(s):                   # raises on valid input
            raise RuntimeError("boom")
        def sequence_logps_grad(logits, labels, up):   # not a dict
            return [0]
        def reward_loss_grad(c, r, m, up):         # missing a key
            return {"rewards_chosen": R.reward_loss_grad(c, r, m, up)["rewards_chosen"]}
    """, name="bad_adapter.py")
    st = _statuses(C.run(C.load_adapter(path)))
    assert st[("sequence_logps/mixed_rows", "value")] == "OK"
    assert st[("sequence_logps/mixed_rows", "grad")] == "FAIL"
    assert st[("sft_loss/own_count", "value")] == "FAIL"
    assert st[("sft_loss/error_no_target_tokens", "raises")] == "FAIL"
    assert st[("dpo_loss/spec_worked_example", "value")] == "FAIL"
    assert st[("reward_loss/no_margin", "value")] == "FAIL"
    assert st[("reward_loss/no_margin", "grad")] == "FAIL"
    assert st[("normalize_scores/general", "value")] == "FAIL"
    assert st[("normalize_scores/error_nan", "raises")] == "FAIL"  # RuntimeError is not ValueError


def test_compare_rules():
    assert C.compare([1.0, 2.0], [1.0, 2.0 + 1e-13], 1e-12, 0)[0]
    ok, ma, mr, detail = C.compare([1.0, 2.1], [1.0, 2.0], 1e-12, 1e-12)
    assert not ok and ma == pytest.approx(0.1) and "(1,)" in detail
    assert not C.compare([np.nan], [1.0], 1, 1)[0]
    assert not C.compare([1.0, 2.0], [[1.0, 2.0]], 1, 1)[0]
    assert C.compare(np.zeros(0), np.zeros(0), 0, 0)[0]


def test_tolerance_override_and_encoding_round_trip():
    a = np.array([[1.5, -np.inf], [np.nan, 2.0]])
    back = C.decode(json.loads(json.dumps(C.encode_value({"x": a, "n": None, "b": float("inf")}))))
    assert back["n"] is None and back["b"] == float("inf")
    np.testing.assert_array_equal(back["x"], a)
    assert C.decode(C.encode_array(np.zeros((2, 0)))).shape == (2, 0)
    assert C.decode(C.encode_array(np.array(3.0))).shape == ()
    # a loose CLI tolerance makes the wrong adapter's small-ε vector pass
    report = C.run(C.load_adapter(str(ROOT / "examples" / "wrong_adapter.py")), only=["dpo_loss/random_eps0.1_beta0.1"], rtol=10.0)
    assert report.ok


def _rehash(vec, manifest):
    """Record the current sha256 of every listed file (as scripts/make_vectors.py would)."""
    for e in manifest["files"] + manifest["trainer_vectors"]["files"]:
        e["sha256"] = hashlib.sha256((vec / e["file"]).read_bytes()).hexdigest()
    (vec / "manifest.json").write_text(json.dumps(manifest))


def test_trainer_slot_and_version_check(tmp_path):
    vec = tmp_path / "vectors"
    shutil.copytree(VEC, vec)
    manifest = json.loads((vec / "manifest.json").read_text())
    trainer = {
        "format": C.TRAINER_FORMAT, "spec_version": "1.0", "trainer": "sft",
        "cases": [{"name": "sft/toy", "inputs": {"x": C.encode_array(np.array([1.0, 2.0]))},
                   "expected": {"loss": 1.5, "grads": {"w": C.encode_array(np.array([0.5, -0.5]))}}}],
    }
    (vec / "trainer_sft.json").write_text(json.dumps(trainer))
    manifest["trainer_vectors"]["files"] = [{"file": "trainer_sft.json", "trainer": "sft", "cases": 1,
                                             "spec_version": "1.0"}]
    _rehash(vec, manifest)

    class Good:
        def run_trainer_vector(self, inputs):
            x = inputs["x"]
            return {"loss": x.mean(), "grads": {"w": np.array([0.5, -0.5])}}

    class Bad:
        def run_trainer_vector(self, inputs):
            return {"loss": 1.6}

    assert _statuses(C.run(Good(), vec, only=["sft/toy"]))[("sft/toy", "trainer")] == "OK"
    bad = C.run(Bad(), vec, only=["sft/toy"])
    assert not bad.ok and "grads.w: missing" in bad.rows[0].detail
    assert [p[0] for p in bad.rows[0].problems] == ["loss", "grads.w"]  # one failing quantity per entry
    assert _statuses(C.run(C.load_adapter("examples.wrong_adapter"), vec, only=["sft/toy"]))[("sft/toy", "trainer")] == "SKIP"
    # the reference adapter implements run_trainer_vector: a malformed vector is a FAIL, not a crash
    ref = C.run(C.reference_adapter, vec, only=["sft/toy"])
    assert not ref.ok and "raised KeyError" in ref.rows[0].detail

    manifest["spec_version"] = "2.0"
    (vec / "manifest.json").write_text(json.dumps(manifest))
    assert C.main(["vietnamese_ai_ref.conformance:reference_adapter", "--vectors", str(vec)]) == 2
    assert C.main(["vietnamese_ai_ref.conformance:reference_adapter", "--vectors", str(tmp_path / "none")]) == 2


def test_trainer_quantity_tolerances(tmp_path):
    """Per-quantity tolerances: the longest matching prefix of `quantity_tolerances` wins; the CLI beats all."""
    case = {"name": "sft/q", "inputs": {}, "quantity_tolerances": {"p": {"atol": 1e-3}, "p.b": {"atol": 1e-1}},
            "expected": {"loss": 1.0, "p": {"a": C.encode_array(np.array([1.0])), "b": C.encode_array(np.array([1.0]))}}}
    got = {"loss": 1.0 + 1e-11, "p": {"a": np.array([1.0 + 1e-4]), "b": np.array([1.05])}}
    res = dict(C.trainer_comparisons(got, case, 1e-12, 1e-12))
    assert not res["loss"][0] and res["p.a"][0] and res["p.b"][0]
    res = dict(C.trainer_comparisons(got, case, 1e-12, 1e-12, {"rtol": 0.0, "atol": 1e-5}))
    assert res["loss"][0] and not res["p.a"][0] and not res["p.b"][0]
    errs = C.trainer_errors(got, case)
    assert set(errs) == {"loss", "p", "p.b"} and errs["p.b"][0] == pytest.approx(0.05)

    class NotADict:
        def run_trainer_vector(self, inputs):
            return [1.0]

    rows = []
    C._run_trainer_case(NotADict(), case, 1e-12, 1e-12, rows)
    assert rows[0].status == "FAIL" and "must return a dict" in rows[0].detail


def _cli(*args):
    env = dict(os.environ)
    env.pop("VIETNAMESE_AI_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "vietnamese_ai_ref.conformance", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_exit_codes():
    ok = _cli("vietnamese_ai_ref.conformance:reference_adapter", "--quiet")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "-> PASS" in ok.stdout
    bad = _cli("examples.wrong_adapter", "--only", "dpo_loss")
    assert bad.returncode == 1 and "FAIL   dpo_loss/random_eps0.1_beta0.1" in bad.stdout
    missing = _cli("no_such_module_xyz:adapter")
    assert missing.returncode == 2 and "cannot import adapter module" in missing.stderr
    usage = _cli()
    assert usage.returncode == 2
