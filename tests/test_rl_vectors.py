"""The committed RL golden vectors (spec 1.1) agree with the code, follow the vector format and cover spec/rl.md.

What it is for: regenerating spec/vectors/{grpo_advantages, grpo_loss, rloo_advantages, rloo_loss,
online_dpo_pairs}.json in memory with scripts/make_rl_vectors.py and comparing every number with the
committed files; running every case through the reference adapter as the conformance runner will
(positional arguments in protocol order, values, `<name>_grad` gradients, ValueError for error cases);
checking the coverage the spec promises (four aggregations × two ratio levels with gradients, NaN rewards,
G = 1, the dapo micro-batch identity, the worked examples).
What it is not: the runner's own tests (the runner learns these functions when the manifest lists them)
nor the torch cross-check of the vectors (tests/test_rl_losses_torch.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vietnamese_ai_ref.conformance import FORMAT, decode

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_rl_vectors", ROOT / "scripts" / "make_rl_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()
REGENERATED = GEN.build()
FILES = {name: json.loads((VEC / name).read_text(encoding="utf-8")) for name in REGENERATED}


def _cases(fn):
    return {c["name"]: c for c in FILES[f"{fn}.json"]["cases"]}


@pytest.mark.parametrize("name", sorted(REGENERATED))
def test_committed_rl_vectors_match_regenerated(name):
    regenerated = json.loads(GEN.dumps(REGENERATED[name]))
    problems = GEN.diff(FILES[name], regenerated, rtol=1e-13, atol=1e-13)
    assert not problems, "RL vectors and code disagree (run python scripts/make_rl_vectors.py):\n" + "\n".join(problems[:20])


def test_generator_is_deterministic_and_check_mode_passes(capsys):
    again = GEN.build()
    assert all(GEN.dumps(again[n]) == GEN.dumps(REGENERATED[n]) for n in REGENERATED)
    assert GEN.main(["--check"]) == 0 and "agree" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(REGENERATED))
def test_file_format_and_protocol(name):
    f = FILES[name]
    fn = f["function"]
    proto = GEN.RL_PROTOCOL[fn]
    assert f["format"] == FORMAT and f["spec_version"] == "1.1" and name == f"{fn}.json"
    anchor = f["section"].split("#", 1)[1]
    headings = re.findall(r"^## (.+)$", (ROOT / "spec" / "rl.md").read_text(encoding="utf-8"), re.M)
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    assert anchor in slugs, f"section anchor {anchor!r} is not a heading of spec/rl.md"
    names = [c["name"] for c in f["cases"]]
    assert len(set(names)) == len(names) and all(n.startswith(fn + "/") for n in names)
    for c in f["cases"]:
        assert list(c["args"]) == proto["args"]  # every argument present, in protocol order
        assert ("expected" in c) != ("expect_error" in c)
        if "expected" in c:
            assert list(c["expected"]) == proto["outputs"]
        if "grad" in c:
            assert list(c["grad"]["expected"]) == proto["wrt"]
        if "expect_error" in c:
            assert c["expect_error"] == "ValueError" and c["reason"]


def _run(adapter, case, fn):
    args = decode(case["args"])
    return [args[a] for a in GEN.RL_PROTOCOL[fn]["args"]]


@pytest.mark.parametrize("name", sorted(REGENERATED))
def test_every_case_passes_through_the_reference_adapter(name):
    fn = FILES[name]["function"]
    A = GEN.A
    impl = getattr(A, fn)
    for case in FILES[name]["cases"]:
        argv = _run(A, case, fn)
        if "expect_error" in case:
            with pytest.raises(ValueError):
                impl(*argv)
            continue
        out = impl(*argv)
        outs = dict(zip(GEN.RL_PROTOCOL[fn]["outputs"], out if isinstance(out, tuple) else (out,)))
        for k, want in decode(case["expected"]).items():
            np.testing.assert_allclose(outs[k], want, rtol=1e-12, atol=1e-12, err_msg=case["name"])
        if "grad" in case:
            g = decode(case["grad"])
            got = getattr(A, fn + "_grad")(*argv, g["upstream"])
            for k, want in g["expected"].items():
                np.testing.assert_allclose(got[k], want, rtol=1e-12, atol=1e-12, err_msg=case["name"])


def test_coverage_grpo_loss():
    cases = [c for c in _cases("grpo_loss").values() if "expected" in c]
    assert all("grad" in c for c in cases)
    seen = {(c["args"]["loss_type"], c["args"]["importance_sampling_level"]) for c in cases}
    assert seen >= {(lt, lv) for lt in ("grpo", "bnpo", "dr_grpo", "dapo") for lv in ("token", "sequence")}
    assert any(c["args"]["ref_logps"] is None for c in cases) and any(c["args"]["beta"] > 0 for c in cases)
    assert any(c["args"]["delta"] is not None for c in cases)
    assert any(c["args"]["num_accumulation_steps"] > 1 for c in cases)
    # ratios on both sides of the clip range occur, and an all-masked row
    a = decode(_cases("grpo_loss")["grpo_loss/grpo_token_kl"]["args"])
    r = np.exp(a["logps"] - a["old_logps"])[a["mask"] == 1]
    assert (r < 0.8).any() and (r > 1.28).any() and (a["mask"].sum(axis=1) == 0).any()
    # dapo: the micro-batch losses (and gradients) of one step sum to the whole batch's
    c = _cases("grpo_loss")
    full = decode(c["grpo_loss/dapo_accumulation_full_batch"]["expected"]["loss"])
    parts = [decode(c[f"grpo_loss/dapo_accumulation_micro_{i}"]["expected"]["loss"]) for i in (1, 2)]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-13)
    assert float(decode(c["grpo_loss/spec_worked_example"]["expected"]["loss"])) == pytest.approx(1.0, rel=1e-15)
    zero = c["grpo_loss/all_masked_micro_batch"]
    assert float(decode(zero["expected"]["loss"])) == 0.0 and not decode(zero["grad"]["expected"]["logps"]).any()
    errors = {n for n, x in c.items() if "expect_error" in x}
    assert {"grpo_loss/error_loss_type", "grpo_loss/error_beta_without_ref", "grpo_loss/error_epsilon_zero"} <= errors


def test_coverage_advantages_and_pairs():
    g = _cases("grpo_advantages")
    assert {c["args"]["scale_rewards"] for c in g.values() if "expected" in c} == {"group", "batch", "none"}
    nan_case = decode(g["grpo_advantages/nan_and_zero_std_group"]["args"])["rewards"]
    assert np.isnan(nan_case).any()
    np.testing.assert_array_equal(decode(g["grpo_advantages/g1_group"]["expected"]["advantages"]), np.zeros(5))
    ex = decode(g["grpo_advantages/spec_worked_example"]["expected"]["advantages"])
    np.testing.assert_allclose(ex, [-1 / 1.0001, 0, 1 / 1.0001, 0, 0, 0], rtol=1e-15)
    r = _cases("rloo_advantages")
    np.testing.assert_array_equal(decode(r["rloo_advantages/spec_worked_example"]["expected"]["advantages"]), [-3.0, -1.5, 4.5])
    assert any(c["args"]["normalize_advantages"] for c in r.values() if "expected" in c)
    assert any(c["args"]["reward_clip_range"] is not None for c in r.values() if "expected" in c)
    lo = _cases("rloo_loss")
    assert float(decode(lo["rloo_loss/spec_worked_example"]["expected"]["loss"])) == -0.25
    p = _cases("online_dpo_pairs")
    ex = decode(p["online_dpo_pairs/spec_worked_example"]["expected"])
    np.testing.assert_array_equal(ex["chosen_index"], [1, 3, 4])
    ties = decode(p["online_dpo_pairs/ties_no_penalty"]["args"])["rewards"]
    assert (ties[0::2] == ties[1::2]).any()
    assert all(math.isfinite(v) for c in p.values() if "expected" in c for v in decode(c["args"])["rewards"])
