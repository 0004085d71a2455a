"""The committed golden vectors agree with the code, and cover what spec/losses.md promises.

What it is for: regenerating spec/vectors/*.json in memory with scripts/make_vectors.py and comparing
every number with the committed files (tight tolerance, not bytes: a NumPy upgrade may move the last
bit), checking the manifest (spec version, file list, counts, tolerances, the reserved trainer slot)
and the coverage of the required edge cases.
What it is not: the conformance runner's tests (tests/test_conformance.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vietnamese_ai_ref import SPEC_VERSION
from vietnamese_ai_ref.conformance import FORMAT, PROTOCOL, TRAINER_FORMAT, decode

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "scripts" / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()
REGENERATED = GEN.build()


def _committed(name):
    with open(VEC / name, encoding="utf-8") as f:
        return json.load(f)


MANIFEST = _committed("manifest.json")
FILES = {e["file"]: _committed(e["file"]) for e in MANIFEST["files"]}


def _cases(function):
    return {c["name"]: c for c in FILES[f"{function}.json"]["cases"]}


@pytest.mark.parametrize("name", sorted(REGENERATED))
def test_committed_vectors_match_regenerated(name):
    assert (VEC / name).is_file(), f"{name} missing: run python scripts/make_vectors.py"
    # round-trip through the writer's text, as the file was written
    regenerated = json.loads(GEN.dumps(REGENERATED[name]))
    problems = GEN.diff(_committed(name), regenerated, rtol=1e-13, atol=1e-13)
    assert not problems, "vectors and code disagree (regenerate and bump the spec if intended):\n" + "\n".join(problems[:20])


def _introduced_ok(version: str) -> bool:
    """A vector file carries the spec version that introduced it: same major, not newer than the spec."""
    major, minor = (int(x) for x in version.split("."))
    smajor, sminor = (int(x) for x in SPEC_VERSION.split("."))
    return major == smajor and minor <= sminor


def test_no_stray_vector_files():
    on_disk = {p.name for p in VEC.glob("*.json")}
    rl = {f"{fn}.json" for fn in ("grpo_advantages", "grpo_loss", "rloo_advantages", "rloo_loss", "online_dpo_pairs")}
    assert on_disk == set(REGENERATED) | rl  # the spec 1.1 RL files: scripts/make_rl_vectors.py, tests/test_rl_vectors.py


def test_diff_detects_changes():
    obj = json.loads(GEN.dumps(REGENERATED["dpo_loss.json"]))
    other = json.loads(json.dumps(obj))
    other["cases"][1]["expected"]["losses"]["data"][0] *= 1 + 1e-10
    assert GEN.diff(obj, other)
    other = json.loads(json.dumps(obj))
    other["cases"][1]["expected"]["losses"]["data"][0] *= 1 + 1e-15  # last-bit noise is tolerated
    assert not GEN.diff(obj, other)


def test_generator_is_deterministic():
    again = GEN.build()
    for name in REGENERATED:
        assert GEN.dumps(again[name]) == GEN.dumps(REGENERATED[name])


def test_manifest():
    m = MANIFEST
    assert m["spec_version"] == SPEC_VERSION and m["format"] == FORMAT
    assert m["generator"] == "scripts/make_vectors.py" and isinstance(m["seed"], int) and m["dtype"] == "float64"
    assert m["tolerances"]["default"] == {"rtol": 1e-12, "atol": 1e-12}
    assert {e["function"] for e in m["files"]} == set(PROTOCOL)
    for e in m["files"]:
        f = FILES[e["file"]]
        assert f["format"] == FORMAT and _introduced_ok(f["spec_version"]) and f["function"] == e["function"]
        cases = f["cases"]
        assert e["cases"] == len(cases)
        assert e["value_checks"] == sum("expected" in c for c in cases)
        assert e["grad_checks"] == sum("grad" in c for c in cases)
        assert e["error_checks"] == sum("expect_error" in c for c in cases)
        names = [c["name"] for c in cases]
        assert len(set(names)) == len(names) and all(n.startswith(e["function"] + "/") for n in names)
        for c in cases:
            assert set(c["args"]) == set(PROTOCOL[e["function"]].args)
            assert ("expected" in c) != ("expect_error" in c)
    slot = m["trainer_vectors"]
    assert slot["format"] == TRAINER_FORMAT and "run_trainer_vector" in slot["status"]
    assert slot["tolerances"] == {"rtol": 1e-10, "atol": 1e-12}
    assert [e["trainer"] for e in slot["files"]] == ["sft", "dpo", "reward", "grpo", "rloo"]
    assert (VEC / "README.md").read_text(encoding="utf-8").count(TRAINER_FORMAT) >= 1


def test_floats_round_trip_and_are_finite_in_expected():
    for f in FILES.values():
        for c in f["cases"]:
            for key in ("expected", "grad"):
                if key in c:
                    for v in _leaves(decode(c[key])):
                        assert np.all(np.isfinite(v))
    text = (VEC / "dpo_loss.json").read_text(encoding="utf-8")
    assert "NaN" in text and "Infinity" in text  # the rejected inputs use the string encoding
    for x in (0.1, 1 / 3, 1e-300, 123456789.123456789):
        assert json.loads(json.dumps(x)) == x and len(repr(x).replace("e-", "").replace(".", "").lstrip("0")) <= 17


def _leaves(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _leaves(x)
    else:
        yield np.asarray(v, dtype=float)


# ------------------------------------------------------------------ coverage the brief and the spec require
def test_coverage_every_loss_has_gradients():
    for fn in ("sequence_logps", "sft_loss", "dpo_loss", "reward_loss"):
        cases = [c for c in FILES[f"{fn}.json"]["cases"] if "expected" in c]
        assert cases and all("grad" in c for c in cases)
        for c in cases:
            assert set(c["grad"]["expected"]) == set(PROTOCOL[fn].wrt)


def test_coverage_sequence_logps_and_sft():
    seq = [decode(c["args"]) for c in _cases("sequence_logps").values() if "expected" in c]
    assert any(np.any(np.all(a["labels"][:, 1:] == -100, axis=1)) for a in seq)  # an all-ignored row
    sft = _cases("sft_loss")
    assert any(c["args"]["num_items_in_batch"] not in (None,) for c in sft.values() if "expected" in c)
    full = float(decode(sft["sft_loss/accumulation_full_batch"]["expected"]["loss"]))
    parts = sum(float(decode(sft[f"sft_loss/accumulation_micro_{i}"]["expected"]["loss"])) for i in (1, 2))
    assert parts == pytest.approx(full, rel=1e-13)
    g_full = decode(sft["sft_loss/accumulation_full_batch"]["args"])
    assert g_full["logits"].shape[0] == 5
    assert "expect_error" in sft["sft_loss/error_no_target_tokens"]


def test_coverage_dpo():
    cases = [c for c in _cases("dpo_loss").values() if "expected" in c]
    eps = {c["args"]["label_smoothing"] for c in cases}
    assert {0.0, 0.1, 0.5} <= eps
    zmax = {}
    for c in cases:
        a = decode(c["args"])
        z = np.abs(a["beta"] * ((a["policy_chosen_logps"] - a["policy_rejected_logps"])
                                - (a["reference_chosen_logps"] - a["reference_rejected_logps"])))
        zmax[c["name"]] = float(z.max())
        if z.max() >= 1e3:
            assert np.all(np.isfinite(decode(c["expected"]["losses"])))
    assert any(v >= 1e3 for v in zmax.values()) and any(v == pytest.approx(1e4) for v in zmax.values())
    ex = _cases("dpo_loss")["dpo_loss/spec_worked_example"]
    assert decode(ex["expected"]["losses"])[0] == pytest.approx(0.6359570477895321, rel=1e-15)
    same = decode(_cases("dpo_loss")["dpo_loss/policy_equals_reference"]["expected"]["losses"])
    np.testing.assert_allclose(same, math.log(2), rtol=1e-15)
    errors = {c["name"] for c in _cases("dpo_loss").values() if "expect_error" in c}
    assert {"dpo_loss/error_label_smoothing_above_half", "dpo_loss/error_beta_zero", "dpo_loss/error_nan_input"} <= errors


def test_coverage_reward_and_normalize():
    rm = [decode(c["args"]) for c in _cases("reward_loss").values() if "expected" in c]
    assert any(a["margin"] is None for a in rm) and any(a["margin"] is not None for a in rm)
    assert any(np.abs(a["rewards_chosen"] - a["rewards_rejected"]).max() >= 1e4 for a in rm)
    ns = _cases("normalize_scores")
    np.testing.assert_array_equal(decode(ns["normalize_scores/n1"]["expected"]["normalized"]), [0.0])
    np.testing.assert_array_equal(decode(ns["normalize_scores/all_equal"]["expected"]["normalized"]), np.zeros(5))
    z = decode(ns["normalize_scores/general"]["expected"]["normalized"])
    assert abs(z.mean()) < 1e-15 and z.std() == pytest.approx(1.0, rel=1e-14)


# ------------------------------------------------------------------ end-to-end trainer vectors
TRAINER_FILES = {e["file"]: _committed(e["file"]) for e in MANIFEST["trainer_vectors"]["files"]}
EXPECTED_KEYS = {
    "sft": {"logits"},
    "dpo": {"logps", "chosen_rewards", "rejected_rewards", "reward_margin"},
    "reward": {"scores", "accuracy", "reward_margin"},
}
COMMON_KEYS = {"loss", "grad_norm", "grads", "learning_rates", "grad_norms", "loss_trajectory", "parameters_after"}
RL_KEYS = {"token_logps", "advantages", "kl"}  # spec 1.1's GRPO and RLOO vectors (tests/test_trainer_vectors_rl.py)


def test_trainer_vector_files():
    rl = [e for e in MANIFEST["trainer_vectors"]["files"] if e["trainer"] in ("grpo", "rloo")]
    assert [e["trainer"] for e in rl] == ["grpo", "rloo"]
    for e in rl:
        f = TRAINER_FILES[e["file"]]
        assert f["spec_version"] == e["spec_version"] == "1.1" and e["cases"] == len(f["cases"]) == 1
        assert (VEC / e["file"]).stat().st_size < 2_000_000
        inputs, expected = decode(f["cases"][0]["inputs"]), decode(f["cases"][0]["expected"])
        assert set(expected) == COMMON_KEYS | RL_KEYS and inputs["trainer"] == e["trainer"]
        assert list(expected["grads"]) == list(inputs["parameters"]) == list(expected["parameters_after"])
        assert len(inputs["windows"]) == len(inputs["rewards"]) == inputs["trainer_config"]["total_steps"] == 2
        assert expected["advantages"].shape == (2, 12) and expected["kl"].shape == (2,)
        assert expected["token_logps"].shape == inputs["micro_batches"][0]["completion_mask"].shape
        for v in _leaves(expected):
            assert np.all(np.isfinite(v))
    for e in MANIFEST["trainer_vectors"]["files"][:3]:
        f = TRAINER_FILES[e["file"]]
        kind = e["trainer"]
        assert f["format"] == TRAINER_FORMAT and _introduced_ok(f["spec_version"]) and f["trainer"] == kind
        assert e["file"] == f"trainer_{kind}.json" and e["cases"] == len(f["cases"]) == 1
        assert (VEC / e["file"]).stat().st_size < 2_000_000
        case = f["cases"][0]
        assert case["name"].startswith(kind + "/")
        inputs, expected = decode(case["inputs"]), decode(case["expected"])
        assert inputs["trainer"] == kind
        assert set(expected) == COMMON_KEYS | EXPECTED_KEYS[kind]
        params = inputs["parameters"]
        assert list(expected["grads"]) == list(params) == list(expected["parameters_after"])  # every tensor
        assert ("score.weight" in params) == (kind == "reward")
        for name, a in params.items():
            assert a.dtype == np.float64 and expected["grads"][name].shape == a.shape
        tc = inputs["trainer_config"]
        T = tc["total_steps"]
        assert len(inputs["windows"]) == T == 5
        for k in ("learning_rates", "grad_norms", "loss_trajectory") + tuple(EXPECTED_KEYS[kind] - {"logits", "logps", "scores"}):
            assert expected[k].shape == (T,), k
        assert expected["loss"] == expected["loss_trajectory"][0] and expected["grad_norm"] == expected["grad_norms"][0]
        assert set(tc["no_decay_parameters"]) == {n for n, a in params.items() if a.ndim < 2}
        mb0 = inputs["micro_batches"][0]
        if kind == "sft":
            assert expected["logits"].shape == mb0["input_ids"].shape + (inputs["model_config"]["vocab_size"],)
        if kind == "dpo":
            assert tc["label_smoothing"] > 0 and set(expected["logps"]) == {
                "policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"}
        for v in _leaves(expected):
            assert np.all(np.isfinite(v))


def test_trainer_vector_diff_uses_the_case_tolerances():
    obj = json.loads(GEN.dumps(REGENERATED["trainer_sft.json"]))
    assert not GEN.diff(TRAINER_FILES["trainer_sft.json"], obj)
    other = json.loads(json.dumps(obj))
    other["cases"][0]["expected"]["loss_trajectory"]["data"][2] *= 1 + 1e-8  # beyond rtol 1e-10
    assert any("loss_trajectory" in d for d in GEN.diff(obj, other))
    other = json.loads(json.dumps(obj))
    other["cases"][0]["expected"]["loss_trajectory"]["data"][2] *= 1 + 1e-12  # BLAS-level noise is tolerated
    assert not GEN.diff(obj, other)
    other = json.loads(json.dumps(obj))
    other["cases"][0]["inputs"]["micro_batches"][0]["input_ids"]["data"][1] += 1  # inputs compare exactly
    assert GEN.diff(obj, other)


def test_check_mode_of_the_generator(capsys):
    assert GEN.main(["--check"]) == 0
    assert "agree" in capsys.readouterr().out
