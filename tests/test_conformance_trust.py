"""The conformance runner cannot be fooled: tolerances, an adapter that ends its process, tampered vectors.

What it is for: issue 15's "runner trust" — `--rtol/--atol` must be finite and > 0 and are printed; an
adapter that calls `sys.exit(0)`, `os._exit(0)` or is killed makes the run exit 1 (never 0), with FAIL
rows for the checks it did not answer, and the run goes on with the next case; every vector file's
sha256, spec version and case count are checked against the manifest (one line, exit 2); the gradient
functions receive `upstream` positionally; the padded-position logits are not compared.
What it is not: the runner's ordinary behaviour on honest adapters (tests/test_conformance.py).
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
REF = "vietnamese_ai_ref.conformance:reference_adapter"

#: an adapter made of the reference functions; a test replaces one of them
BASE = """
    import os, signal, sys
    from vietnamese_ai_ref.conformance import reference_adapter as R
    sequence_logps, sft_loss, dpo_loss, reward_loss, normalize_scores = (
        R.sequence_logps, R.sft_loss, R.dpo_loss, R.reward_loss, R.normalize_scores)
    dpo_loss_grad, reward_loss_grad = R.dpo_loss_grad, R.reward_loss_grad
"""


def _adapter(tmp_path, body: str, name: str = "planted_adapter.py") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(BASE) + textwrap.dedent(body), encoding="utf-8")
    return str(p)


def _cli(*args, cwd=ROOT):
    env = dict(os.environ)
    env.pop("VIETNAMESE_AI_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "vietnamese_ai_ref.conformance", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def _rows(out: str) -> dict:
    body = out.split("detail\n", 1)[1].splitlines()[:-1]
    return {(ln.split()[1], ln.split()[2]): ln.split()[0] for ln in body if ln[:1] != " "}


# ============================ tolerance overrides =============================================

@pytest.mark.parametrize("flag,value", [("--rtol", "nan"), ("--atol", "nan"), ("--rtol", "inf"), ("--rtol", "-1"),
                                        ("--atol", "0"), ("--rtol", "abc")])
def test_bad_tolerance_override_exits_2(flag, value, capsys):
    assert C.main([REF, "--only", "normalize_scores", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err or "not a number" in err
    with pytest.raises(C.UsageError, match="finite number > 0"):
        C.run(C.reference_adapter, only=["normalize_scores"], rtol=float("nan"))


def test_tolerance_override_is_printed_and_applied(capsys):
    assert C.main([REF, "--only", "normalize_scores", "--rtol", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "tolerances: OVERRIDDEN on the command line: rtol=1e-06, atol=(vectors)" in out
    assert C.main([REF, "--only", "normalize_scores"]) == 0
    assert "tolerances: the vectors' own" in capsys.readouterr().out
    # a loose override makes the wrong adapter's small-ε vector pass; without it, it fails
    wrong = C.load_adapter(str(ROOT / "examples" / "wrong_adapter.py"))
    assert C.run(wrong, only=["dpo_loss/random_eps0.1_beta0.1"], rtol=10.0).ok
    assert not C.run(wrong, only=["dpo_loss/random_eps0.1_beta0.1"]).ok


# ============================ an adapter that ends its process ================================

def test_sys_exit_in_a_function_is_a_fail(tmp_path):
    path = _adapter(tmp_path, """
        def dpo_loss(*a):
            sys.exit(0)
    """)
    r = _cli(path, "--only", "dpo_loss", "--only", "reward_loss")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _rows(r.stdout)
    assert rows[("dpo_loss/spec_worked_example", "value")] == "FAIL"
    assert rows[("dpo_loss/error_beta_zero", "raises")] == "FAIL"
    assert rows[("dpo_loss/spec_worked_example", "grad")] == "OK"  # the gradient is the reference's
    assert rows[("reward_loss/no_margin", "value")] == "OK"
    assert "adapter called sys.exit(0)" in r.stdout and "-> FAIL" in r.stdout
    # in this process, too: run() turns the SystemExit into FAIL rows
    report = C.run(C.load_adapter(path), only=["dpo_loss/spec_worked_example"])
    assert [x.status for x in report.rows] == ["FAIL", "OK"]


def test_os_exit_fails_its_check_and_the_run_goes_on(tmp_path):
    flag = tmp_path / "died_once"
    path = _adapter(tmp_path, f"""
        def reward_loss(c, r, m):
            if not os.path.exists({str(flag)!r}):
                open({str(flag)!r}, "w").close()
                print("adapter output goes to stderr")
                os._exit(0)
            return R.reward_loss(c, r, m)
    """)
    r = _cli(path, "--only", "reward_loss", "--only", "normalize_scores")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _rows(r.stdout)
    first = "reward_loss/no_margin"
    assert rows[(first, "value")] == "FAIL" and rows[(first, "grad")] == "FAIL"
    assert "the adapter process ended (exit code 0) during this check" in r.stdout
    assert "not run: the adapter process ended (exit code 0)" in r.stdout
    # a new worker took the next case: every later check came back
    assert rows[("reward_loss/scalar_margin", "value")] == "OK" and rows[("normalize_scores/general", "value")] == "OK"
    assert "adapter output goes to stderr" in r.stderr and "adapter output" not in r.stdout
    assert "2 FAIL" in r.stdout.splitlines()[-1]


def test_a_killed_worker_never_passes(tmp_path):
    path = _adapter(tmp_path, """
        def normalize_scores(s):
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    report = C.run_isolated(path, only=["normalize_scores"])
    assert not report.ok and report.accounted
    assert all(r.status == "FAIL" for r in report.rows) and len(report.rows) == 9
    assert "killed by signal 9" in report.rows[0].detail
    # after MAX_RESTARTS + 1 deaths the remaining checks are FAIL rows without another start
    assert sum("during this check" in r.detail for r in report.rows) == C.MAX_RESTARTS + 1
    assert "not run: the adapter process ended 4 times" in report.rows[-1].detail


@pytest.mark.parametrize("how", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_adapter_that_exits_while_importing_is_a_usage_error(tmp_path, how):
    p = tmp_path / "exits_on_import.py"
    p.write_text(how + "\n", encoding="utf-8")
    r = _cli(str(p), "--only", "normalize_scores")
    assert r.returncode == 2 and r.stdout == ""
    assert "exits_on_import" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_rows_count_against_the_plan():
    report = C.run(C.reference_adapter, only=["normalize_scores"])
    assert report.ok and len(report.rows) == len(report.expected) == 9 and report.manifest_checks == 205
    report.rows.pop()  # a check that never came back
    assert not report.ok and report.counts["FAIL"] == 0
    assert "8 of 9 selected checks; the manifest lists 205) -> FAIL" in C.summary_line(report)


# ============================ vector integrity ================================================

def _copy(tmp_path) -> Path:
    vec = tmp_path / "vectors"
    shutil.copytree(VEC, vec)
    return vec


def _edit(vec: Path, name: str, change) -> None:
    obj = json.loads((vec / name).read_text(encoding="utf-8"))
    change(obj)
    (vec / name).write_text(json.dumps(obj), encoding="utf-8")


def _rehash(vec: Path, name: str) -> None:
    """Record `name`'s new sha256 in the manifest (a tamperer who also edits the manifest)."""
    def change(m):
        for e in m["files"] + m["trainer_vectors"]["files"]:
            if e["file"] == name:
                e["sha256"] = hashlib.sha256((vec / name).read_bytes()).hexdigest()
    _edit(vec, "manifest.json", change)


TAMPERING = {
    "spec_version_2": (lambda v: _edit(v, "dpo_loss.json", lambda o: o.update(spec_version="2.0")), "sha256"),
    "cases_emptied": (lambda v: _edit(v, "sft_loss.json", lambda o: o.update(cases=[])), "sha256"),
    "missing_file": (lambda v: (v / "reward_loss.json").unlink(), "missing"),
    "corrupt_file": (lambda v: (v / "trainer_sft.json").write_bytes(b"{\"format\": "), "sha256"),
    "spec_version_2_rehashed": (lambda v: (_edit(v, "dpo_loss.json", lambda o: o.update(spec_version="2.0")),
                                           _rehash(v, "dpo_loss.json")), "spec_version '2.0'"),
    "cases_emptied_rehashed": (lambda v: (_edit(v, "sft_loss.json", lambda o: o.update(cases=[])),
                                          _rehash(v, "sft_loss.json")), "holds 0 cases, the manifest records 10"),
    "corrupt_rehashed": (lambda v: ((v / "trainer_sft.json").write_bytes(b"{\"format\": "),
                                    _rehash(v, "trainer_sft.json")), "not valid JSON"),
    "one_case_dropped_and_counts_edited": (
        lambda v: (_edit(v, "normalize_scores.json", lambda o: o.update(cases=o["cases"][:-1])),
                   _rehash(v, "normalize_scores.json"),
                   _edit(v, "manifest.json", lambda m: m["files"][4].update(cases=8))), "error_checks is 0"),
    "file_says_1_1_manifest_entry_1_0": (
        lambda v: (_edit(v, "dpo_loss.json", lambda o: o.update(spec_version="1.1")), _rehash(v, "dpo_loss.json")),
        "spec_version '1.1', the manifest records '1.0'"),
    "manifest_without_sha256": (lambda v: _edit(v, "manifest.json", lambda m: m["files"][0].pop("sha256")), "lacks"),
    "manifest_not_json": (lambda v: (v / "manifest.json").write_text("{", encoding="utf-8"), "manifest.json"),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampered_vectors_exit_2_with_one_line(tmp_path, name):
    tamper, words = TAMPERING[name]
    vec = _copy(tmp_path)
    tamper(vec)
    r = _cli(REF, "--vectors", str(vec))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(C.UsageError):  # before any adapter code runs, in process too
        C.run(C.reference_adapter, vec)


def test_committed_vectors_verify():
    manifest, files = C.load_vectors(VEC, C.SPEC_VERSION)
    assert [f.name for f in files][-5:] == ["trainer_sft.json", "trainer_dpo.json", "trainer_reward.json",
                                            "trainer_grpo.json", "trainer_rloo.json"]
    # each file keeps the spec version that introduced it; the manifest is the current one
    assert {f.obj["spec_version"] for f in files} == {"1.0", "1.1"} and manifest["spec_version"] == C.SPEC_VERSION
    for f in files:
        assert f.entry["sha256"] == hashlib.sha256((VEC / f.name).read_bytes()).hexdigest()


# ============================ protocol details ================================================

def test_upstream_is_passed_positionally(tmp_path):
    ok = _adapter(tmp_path, """
        def reward_loss_grad(rewards_chosen, rewards_rejected, margin, upstream, /):
            return R.reward_loss_grad(rewards_chosen, rewards_rejected, margin, upstream)
    """, name="positional.py")
    kw = _adapter(tmp_path, """
        def reward_loss_grad(rewards_chosen, rewards_rejected, margin, *, upstream):
            return R.reward_loss_grad(rewards_chosen, rewards_rejected, margin, upstream)
    """, name="keyword_only.py")
    assert C.run(C.load_adapter(ok), only=["reward_loss"]).ok
    bad = C.run(C.load_adapter(kw), only=["reward_loss/no_margin"])
    assert [r.status for r in bad.rows] == ["OK", "FAIL"] and "TypeError" in bad.rows[1].detail


def test_compare_ignores_unmarked_elements():
    e = np.array([[1.0, 2.0], [3.0, 4.0]])
    a = np.array([[1.0, np.nan], [3.0, 99.0]])
    where = np.array([[True, False], [True, False]])
    assert C.compare(a, e, 1e-12, 1e-12, where)[:3] == (True, 0.0, 0.0)
    assert not C.compare(a, e, 1e-12, 1e-12)[0]
    ok, ma, _, detail = C.compare(a + [[1e-3, 0], [0, 0]], e, 1e-12, 1e-12, where)
    assert not ok and ma == pytest.approx(1e-3) and "(0, 0)" in detail


def test_trainer_sft_logits_compared_at_real_positions_only():
    case = json.loads((VEC / "trainer_sft.json").read_text(encoding="utf-8"))["cases"][0]
    expected = C.decode(case["expected"])
    mask = np.asarray(C.decode(case["inputs"]["micro_batches"][0]["attention_mask"])) != 0
    assert (~mask).any()  # the vector has padded positions
    got = dict(expected, logits=expected["logits"].copy())
    got["logits"][~mask] += 5.0  # arbitrary values where the model's output is not normative (model.md §4)
    res = dict(C.trainer_comparisons(got, case, 1e-10, 1e-12))
    assert res["logits"][0] and res["logits"][1] == 0.0
    got["logits"][mask.nonzero()[0][0], mask.nonzero()[1][0], 3] += 1e-6  # a real position: compared
    assert not dict(C.trainer_comparisons(got, case, 1e-10, 1e-12))["logits"][0]


# ============================ optional (spec 1.1) trainer vectors =============================

def test_an_optional_trainer_vector_may_be_declined_a_required_one_may_not(tmp_path):
    """run_trainer_vector raising NotImplementedError: SKIP for the spec 1.1 GRPO/RLOO vectors (optional,
    as the 1.1 functions), FAIL for the spec 1.0 ones; any other exception FAILs either."""
    ad = _adapter(tmp_path, """
        def run_trainer_vector(inputs):
            if inputs["trainer"] in ("grpo", "rloo"):
                raise NotImplementedError("offline trainers only")
            if inputs["trainer"] == "reward":
                raise NotImplementedError("no reward model")
            return R.run_trainer_vector(inputs)
    """)
    r = _cli(ad, "--only", "trainer_*")
    rows = _rows(r.stdout)
    assert rows[("grpo/tiny_gpt2_2_steps_fixed_rollouts", "trainer")] == "SKIP"
    assert rows[("rloo/tiny_gpt2_2_steps_fixed_rollouts", "trainer")] == "SKIP"
    assert rows[("reward/tiny_gpt2_5_steps", "trainer")] == "FAIL"
    assert rows[("sft/tiny_gpt2_5_steps", "trainer")] == "OK" and r.returncode == 1, r.stdout
    assert "(optional, spec 1.1)" in r.stdout and "raised NotImplementedError: no reward model" in r.stdout
    ad = _adapter(tmp_path, """
        def run_trainer_vector(inputs):
            raise KeyError(inputs["trainer"])
    """, "keyerror_adapter.py")
    r = _cli(ad, "--only", "grpo")
    assert _rows(r.stdout) == {("grpo/tiny_gpt2_2_steps_fixed_rollouts", "trainer"): "FAIL"} and r.returncode == 1


def test_grpo_token_logps_are_compared_at_completion_tokens_only():
    """spec/rl.md §11: the first per-token log-probs count where completion_mask = 1; elsewhere (prompt,
    padding, a masked truncated row) any value passes, and a change at a completion token fails."""
    from vietnamese_ai_ref.conformance import reference_adapter

    case = json.loads((VEC / "trainer_grpo.json").read_text(encoding="utf-8"))["cases"][0]
    got = reference_adapter.run_trainer_vector(C.decode(case["inputs"]))
    cm = C.decode(case["inputs"]["micro_batches"][0]["completion_mask"])
    for where, status in (((cm == 0), "OK"), ((cm != 0), "FAIL")):
        bent = dict(got, token_logps=np.where(where, got["token_logps"] + 0.5, got["token_logps"]))
        rows = []
        C._run_trainer_case(type("A", (), {"run_trainer_vector": staticmethod(lambda i, b=bent: b)})(),
                            case, 1e-10, 1e-12, rows)
        assert rows[0].status == status, rows[0].detail
    assert (cm == 0).sum() > 0 and (cm != 0).sum() > 0
