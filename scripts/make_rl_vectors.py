"""Regenerates the golden vectors of spec/rl.md (spec 1.1): spec/vectors/{grpo_advantages, grpo_loss,
rloo_advantages, rloo_loss, online_dpo_pairs}.json.

What it is for: the single, deterministic source of the RL conformance vectors, in the file format of
spec/vectors/README.md (`vietnamese_ai_ref.vectors/1`; arrays and floats encoded by
`conformance.encode_value`). Inputs come from Python's `random.Random("<SEED>:<file stem>")` (as
scripts/make_vectors.py: reproducible on every platform and NumPy version); expected values and the
gradients w.r.t. `logps` (of Σ upstream ⊙ loss, for a recorded random upstream) come from
`RLReferenceAdapter` below (vietnamese_ai_ref.losses.rl, NumPy backend, float64). Run from the
repository root:

    python scripts/make_rl_vectors.py                   # (re)write the five files
    python scripts/make_rl_vectors.py --check           # exit 1 if the committed files disagree with the code
    python scripts/make_rl_vectors.py --print-manifest  # the manifest entries of the five files (JSON)

What it is not: the manifest (spec/vectors/manifest.json is written by scripts/make_vectors.py; the
entries printed by --print-manifest go there when the runner learns the RL protocol) nor a test
(tests/test_rl_vectors.py regenerates in memory and compares).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np  # scripts/ is outside the package: the host-NumPy rule applies to vietnamese_ai_ref/ only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_vectors import SEED, _case, _err_case, _u, diff, dumps  # noqa: E402,F401 (diff, dumps: used by tests/test_rl_vectors.py)

from vietnamese_ai_ref.losses import rl as RL  # noqa: E402
from vietnamese_ai_ref.conformance import FORMAT, reference_adapter  # noqa: E402

RL_SPEC_VERSION = "1.1"
OUT_DIR = Path(__file__).resolve().parent.parent / "spec" / "vectors"

#: The adapter protocol of the five functions: positional argument order, outputs, differentiated
#: arguments (the `<name>_grad(*args, upstream)` function returns {"logps": ∂Σ(upstream ⊙ loss)/∂logps}).
RL_PROTOCOL = {
    "grpo_advantages": {"args": ["rewards", "num_generations", "scale_rewards"], "outputs": ["advantages"], "wrt": []},
    "grpo_loss": {"args": ["logps", "old_logps", "advantages", "mask", "ref_logps", "beta", "epsilon_low",
                           "epsilon_high", "loss_type", "importance_sampling_level", "delta", "num_items_in_batch",
                           "max_completion_length", "num_accumulation_steps"], "outputs": ["loss"], "wrt": ["logps"]},
    "rloo_advantages": {"args": ["rewards", "num_generations", "old_logps", "ref_logps", "mask", "beta",
                                 "normalize_advantages", "reward_clip_range"], "outputs": ["advantages"], "wrt": []},
    "rloo_loss": {"args": ["logps", "old_logps", "advantages", "mask", "epsilon_low", "epsilon_high",
                           "num_accumulation_steps"], "outputs": ["loss"], "wrt": ["logps"]},
    "online_dpo_pairs": {"args": ["rewards", "has_eos", "missing_eos_penalty"],
                         "outputs": ["chosen_index", "rejected_index"], "wrt": []},
}
SECTIONS = {
    "grpo_advantages": "rl.md#2-grpo-advantages",
    "grpo_loss": "rl.md#3-grpo-loss",
    "rloo_advantages": "rl.md#5-rloo-advantages",
    "rloo_loss": "rl.md#6-rloo-loss",
    "online_dpo_pairs": "rl.md#7-online-dpo-pair-choice",
}


#: The package's own reference adapter computes every expected value (the oracle runs what it certifies).
A = reference_adapter



# ============================ input helpers ========================================================

def _mask(rng, B, T, lengths=None):
    """(B, T) int64 right-aligned completion mask; lengths drawn in [0, T] unless given."""
    lengths = [rng.randrange(0, T + 1) for _ in range(B)] if lengths is None else lengths
    return np.array([[1 if t < n else 0 for t in range(T)] for n in lengths], dtype=np.int64)


def _rollout(rng, B, T, spread, lengths=None):
    lp = _u(rng, -4.0, -0.05, (B, T))
    old = lp + _u(rng, -spread, spread, (B, T))
    ref = lp + _u(rng, -0.6, 0.6, (B, T))
    adv = _u(rng, -2.0, 2.0, (B,))
    return lp, old, ref, adv, _mask(rng, B, T, lengths)


def _args(names, values):
    return dict(zip(names, values))


# ============================ one builder per file =================================================

def _grpo_advantages(rng):
    names = RL_PROTOCOL["grpo_advantages"]["args"]
    cases = []

    def add(name, r, G, scale, description):
        cases.append(_case(f"grpo_advantages/{name}", _args(names, (r, G, scale)),
                           {"advantages": A.grpo_advantages(r, G, scale)}, description=description))

    add("spec_worked_example", np.array([1.0, 2.0, 3.0, 5.0, 5.0, math.nan]), 3, "group",
        "spec/rl.md §2.4: [1, 2, 3] -> ±1/1.0001 and 0; [5, 5, NaN] -> zero std and an unscorable row -> 0")
    r = _u(rng, -3.0, 3.0, (12,))
    for scale in ("group", "batch", "none"):
        add(f"random_{scale}", r, 4, scale, f"3 prompts x 4 completions, scale_rewards={scale!r}")
    rn = _u(rng, -1.0, 1.0, (12,))
    rn[[1, 4, 5, 6]] = math.nan  # group 1: one NaN; group 2: a single scorable reward (std NaN -> 0)
    rn[8:12] = 0.5  # group 3: zero std -> 0
    for scale in ("group", "batch", "none"):
        add(f"nan_and_zero_std_{scale}", rn, 4, scale, "NaN rewards (advantage 0), a group with one scorable reward, a zero-std group")
    add("g1_group", _u(rng, -1.0, 1.0, (5,)), 1, "group", "num_generations = 1: std 0, every advantage 0")
    add("g1_batch", _u(rng, -1.0, 1.0, (5,)), 1, "batch", "num_generations = 1: R minus its own group mean = 0")
    add("large_scale", _u(rng, -1.0, 1.0, (8,)) * 1e6, 2, "group", "rewards near 1e6: the 1e-4 is negligible")
    add("small_spread", 3.0 + _u(rng, -1.0, 1.0, (6,)) * 1e-4, 3, "group",
        "spread ~1e-4: the +1e-4 in the denominator matters (TRL's 1e-4, not 1e-8)")
    for name, r_, G, scale, reason in (
        ("error_not_divisible", np.zeros(6), 4, "group", "B = 6 not divisible by num_generations = 4"),
        ("error_num_generations_zero", np.zeros(4), 0, "group", "num_generations must be >= 1"),
        ("error_infinite_reward", np.array([0.0, math.inf]), 2, "group", "rewards must be finite or NaN"),
        ("error_scale_rewards", np.zeros(4), 2, "std", "scale_rewards must be group, batch or none"),
        ("error_rewards_2d", np.zeros((2, 2)), 2, "group", "rewards must be 1-D"),
    ):
        cases.append(_err_case(f"grpo_advantages/{name}", _args(names, (r_, G, scale)), reason))
    return cases


def _grpo_values(lp, old, adv, mask, ref=None, beta=0.0, el=0.2, eh=None, lt="dapo", level="token", delta=None,
                 n=None, L=None, k=1):
    return (lp, old, adv, mask, ref, beta, el, eh, lt, level, delta, n, L, k)


def _grpo_loss(rng):
    names = RL_PROTOCOL["grpo_loss"]["args"]
    cases = []

    def add(name, values, description):
        up = _u(rng, -1.0, 1.0, ())
        cases.append(_case(f"grpo_loss/{name}", _args(names, values), {"loss": A.grpo_loss(*values)},
                           {"upstream": up, "expected": A.grpo_loss_grad(*values, up)}, description=description))

    lp = np.array([[-1.0, -2.0, -9.0], [-0.5, -3.0, -4.0]])
    add("spec_worked_example", _grpo_values(lp, lp.copy(), np.array([1.0, -3.0]), np.array([[1, 1, 0], [1, 0, 0]]),
                                            lt="grpo"),
        "spec/rl.md §3.6: r = 1, A = [1, -3]: loss 1, gradient -A / (count · B)")
    B, T = 6, 7
    for lt in RL.GRPO_LOSS_TYPES:
        for level in ("token", "sequence"):
            lp, old, ref, adv, mask = _rollout(rng, B, T, 0.5, lengths=[7, 0, 3, 5, 1, 6])
            n = int(mask.sum()) + 9 if lt == "dapo" else None
            add(f"{lt}_{level}_kl", _grpo_values(lp, old, adv, mask, ref, 0.04, 0.2, 0.28, lt, level, None, n, 8, 2),
                f"{lt}, importance_sampling_level={level!r}, beta 0.04, epsilon 0.2/0.28, an all-masked row, "
                "ratios on both sides of the clip range, 2 accumulation steps")
            add(f"{lt}_{level}_no_ref", _grpo_values(lp, old, adv, mask, None, 0.0, 0.2, None, lt, level, None, n, 8, 1),
                f"{lt}, {level}, beta 0 and no reference")
    lp, _, ref, adv, mask = _rollout(rng, 4, 5, 0.0)
    add("on_policy_ratio_one", _grpo_values(lp, lp.copy(), adv, mask, ref, 0.1, lt="dapo"),
        "old_logps == logps (num_iterations = 1): r = 1, the value is −mean(A) + β·KL and the gradient is not 0")
    lp, old, ref, adv, mask = _rollout(rng, 5, 4, 0.7)
    add("delta_two_sided", _grpo_values(lp, old, adv, mask, ref, 0.02, 0.2, 0.2, "bnpo", "token", 1.5),
        "delta = 1.5 caps the unclipped ratio (two-sided clipping)")
    lp, old, ref, adv, mask = _rollout(rng, 3, 4, 0.3)
    adv_tok = _u(rng, -1.0, 1.0, (3, 4))
    add("token_advantages", _grpo_values(lp, old, adv_tok, mask, ref, 0.05, lt="grpo"),
        "advantages of shape (B, T), one per token")
    # one optimiser step of 5 rows split 3 + 2: the dapo micro-batch losses sum to the whole batch's
    lp, old, ref, adv, mask = _rollout(rng, 5, 6, 0.4, lengths=[6, 2, 4, 0, 5])
    N = int(mask.sum())
    add("dapo_accumulation_full_batch", _grpo_values(lp, old, adv, mask, ref, 0.04, n=N),
        f"the whole step: {N} completion tokens")
    add("dapo_accumulation_micro_1", _grpo_values(*(a[:3].copy() for a in (lp, old, adv, mask)), ref[:3].copy(), 0.04, n=N),
        "rows 0-2 of dapo_accumulation_full_batch with num_items_in_batch = its total; micro_1 + micro_2 = full")
    add("dapo_accumulation_micro_2", _grpo_values(*(a[3:].copy() for a in (lp, old, adv, mask)), ref[3:].copy(), 0.04, n=N),
        "rows 3-4 of dapo_accumulation_full_batch")
    z = np.zeros((2, 3), dtype=np.int64)
    add("all_masked_micro_batch", _grpo_values(_u(rng, -2, -0.1, (2, 3)), _u(rng, -2, -0.1, (2, 3)), np.array([1.0, -1.0]), z,
                                               n=0), "no completion token and num_items_in_batch 0: loss 0, gradient 0")
    ok = _grpo_values(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), np.ones((2, 3), dtype=np.int64))
    for name, patch, reason in (
        ("error_loss_type", {"loss_type": "ppo"}, "loss_type must be grpo, bnpo, dr_grpo or dapo"),
        ("error_importance_level", {"importance_sampling_level": "seq"}, "importance_sampling_level must be token or sequence"),
        ("error_epsilon_zero", {"epsilon_low": 0.0}, "epsilon_low must be > 0"),
        ("error_epsilon_high_negative", {"epsilon_high": -0.1}, "epsilon_high must be > 0"),
        ("error_beta_negative", {"beta": -0.01}, "beta must be >= 0"),
        ("error_beta_without_ref", {"beta": 0.1}, "beta > 0 needs ref_logps"),
        ("error_dr_grpo_without_length", {"loss_type": "dr_grpo"}, "dr_grpo needs max_completion_length"),
        ("error_num_items_below_local", {"num_items_in_batch": 5}, "num_items_in_batch smaller than this batch's 6 tokens"),
        ("error_accumulation_zero", {"num_accumulation_steps": 0}, "num_accumulation_steps must be >= 1"),
        ("error_mask_not_binary", {"mask": np.full((2, 3), 2, dtype=np.int64)}, "mask must hold 0 and 1 only"),
        ("error_nan_logps", {"logps": np.array([[0.0, math.nan, 0.0], [0.0, 0.0, 0.0]])}, "logps must be finite"),
        ("error_shape_mismatch", {"old_logps": np.zeros((2, 4))}, "old_logps must have the shape of logps"),
    ):
        args = _args(names, ok)
        args.update(patch)
        cases.append(_err_case(f"grpo_loss/{name}", args, reason))
    return cases


def _rloo_advantages(rng):
    names = RL_PROTOCOL["rloo_advantages"]["args"]
    cases = []

    def add(name, values, description):
        cases.append(_case(f"rloo_advantages/{name}", _args(names, values),
                           {"advantages": A.rloo_advantages(*values)}, description=description))

    add("spec_worked_example", (np.array([1.0, 2.0, 6.0]), 3, None, None, None, 0.0, False, None),
        "spec/rl.md §5.4: baselines 4, 3.5, 1.5")
    B, T = 8, 5
    r = _u(rng, -2.0, 2.0, (B,))
    _, old, ref, _, mask = _rollout(rng, B, T, 0.3)
    for G in (2, 4):
        for beta in (0.0, 0.05):
            for norm in (False, True):
                kl = (old, ref, mask) if beta else (None, None, None)
                add(f"g{G}_beta{beta}_{'normalized' if norm else 'raw'}", (r, G) + kl + (beta, norm, None),
                    f"num_generations {G}, beta {beta} (k1 KL summed over the mask), normalize_advantages {norm}")
    add("reward_clip_then_kl", (r * 3, 4, old, ref, mask, 0.05, False, [-2.5, 2.5]),
        "rewards clipped to [-2.5, 2.5] before the KL is subtracted")
    rn = r.copy()
    rn[[0, 5, 6, 7]] = math.nan  # group 1 (rows 0-3): 3 scorable; group 2: a single scorable row
    add("nan_rewards", (rn, 4, None, None, None, 0.0, True, None),
        "NaN rewards: the baseline uses scorable siblings; a lone scorable row and unscorable rows get 0")
    add("g1", (r[:3].copy(), 1, None, None, None, 0.0, False, None), "num_generations = 1: advantages 0")
    ok = [np.zeros(4), 2, None, None, None, 0.0, False, None]
    for name, idx, val, reason in (
        ("error_not_divisible", 1, 3, "B = 4 not divisible by num_generations = 3"),
        ("error_beta_without_logps", 5, 0.1, "beta > 0 needs old_logps, ref_logps and mask"),
        ("error_beta_negative", 5, -0.1, "beta must be >= 0"),
        ("error_clip_range_reversed", 7, [1.0, -1.0], "reward_clip_range needs low <= high"),
    ):
        v = list(ok)
        v[idx] = val
        cases.append(_err_case(f"rloo_advantages/{name}", _args(names, v), reason))
    return cases


def _rloo_loss(rng):
    names = RL_PROTOCOL["rloo_loss"]["args"]
    cases = []

    def add(name, values, description):
        up = _u(rng, -1.0, 1.0, ())
        cases.append(_case(f"rloo_loss/{name}", _args(names, values), {"loss": A.rloo_loss(*values)},
                           {"upstream": up, "expected": A.rloo_loss_grad(*values, up)}, description=description))

    add("spec_worked_example", (np.array([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0]]), np.array([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0]]),
                                np.array([2.0, -1.0]), np.array([[1, 1, 0], [1, 0, 0]]), 0.2, None, 2),
        "spec/rl.md §6.3: r = 1, loss −mean(A)/2 = −0.25")
    for i, (spread, eh, k) in enumerate(((0.15, None, 1), (0.15, 0.3, 1), (0.08, None, 3))):
        lp, old, _, adv, mask = _rollout(rng, 8, 5, spread, lengths=[5, 0, 2, 3, 5, 1, 4, 5])
        add(f"random_{i}", (lp, old, adv, mask, 0.2, eh, k),
            f"sequence ratios on both sides of the clip range, epsilon_high {eh}, {k} accumulation step(s), an all-masked row")
    lp, _, _, adv, mask = _rollout(rng, 4, 3, 0.0)
    add("on_policy_ratio_one", (lp, lp.copy(), adv, mask, 0.2, None, 1), "old == logps: r = 1")
    ok = [np.zeros((2, 2)), np.zeros((2, 2)), np.zeros(2), np.ones((2, 2), dtype=np.int64), 0.2, None, 1]
    for name, idx, val, reason in (
        ("error_advantages_per_token", 2, np.zeros((2, 2)), "advantages must be (B,)"),
        ("error_epsilon_negative", 4, -0.2, "epsilon_low must be > 0"),
        ("error_mask_shape", 3, np.ones((2, 3), dtype=np.int64), "mask must have the shape of logps"),
        ("error_nan_old_logps", 1, np.array([[math.nan, 0.0], [0.0, 0.0]]), "old_logps must be finite"),
    ):
        v = list(ok)
        v[idx] = val
        cases.append(_err_case(f"rloo_loss/{name}", _args(names, v), reason))
    return cases


def _online_dpo_pairs(rng):
    names = RL_PROTOCOL["online_dpo_pairs"]["args"]
    cases = []

    def add(name, values, description):
        c, r = A.online_dpo_pairs(*values)
        cases.append(_case(f"online_dpo_pairs/{name}", _args(names, values),
                           {"chosen_index": c, "rejected_index": r}, description=description))

    add("spec_worked_example", (np.array([1.0, 1.0, 0.0, 2.0, 3.0, -1.0]),
                                np.array([False, True, True, True, False, True]), 0.5),
        "spec/rl.md §7.3: the penalty breaks prompt 0's tie; prompt 2 keeps its first sample")
    r = np.array([float(rng.randrange(-2, 3)) for _ in range(16)])  # small integers: ties occur
    eos = np.array([rng.random() < 0.6 for _ in range(16)])
    r[1], r[5] = r[0], r[4]  # two certain ties: one decided by the penalty, one kept by the first sample
    eos[:2], eos[4:6] = (False, True), (True, True)
    add("ties_no_penalty", (r, eos, None), "ties go to the first sample; has_eos is ignored without a penalty")
    add("ties_with_penalty", (r, eos, 1.0), "missing_eos_penalty 1.0 subtracted where has_eos is False")
    add("random", (_u(rng, -5.0, 5.0, (10,)), np.array([rng.random() < 0.5 for _ in range(10)]), 0.25), "random rewards")
    for name, values, reason in (
        ("error_odd_length", (np.zeros(3), np.ones(3, dtype=bool), None), "two completions per prompt"),
        ("error_nan_reward", (np.array([0.0, math.nan]), np.ones(2, dtype=bool), None), "rewards must be finite"),
        ("error_negative_penalty", (np.zeros(2), np.ones(2, dtype=bool), -1.0), "missing_eos_penalty must be >= 0"),
        ("error_has_eos_shape", (np.zeros(4), np.ones(2, dtype=bool), None), "has_eos must have the shape of rewards"),
    ):
        cases.append(_err_case(f"online_dpo_pairs/{name}", _args(names, values), reason))
    return cases


BUILDERS = {
    "grpo_advantages": _grpo_advantages,
    "grpo_loss": _grpo_loss,
    "rloo_advantages": _rloo_advantages,
    "rloo_loss": _rloo_loss,
    "online_dpo_pairs": _online_dpo_pairs,
}


def build(seed: int = SEED) -> dict:
    """{file name: vector object} for the five RL files."""
    out = {}
    for fn, builder in BUILDERS.items():
        cases = builder(random.Random(f"{seed}:{fn}"))
        out[f"{fn}.json"] = {"format": FORMAT, "spec_version": RL_SPEC_VERSION, "function": fn,
                             "section": SECTIONS[fn], "cases": cases}
    return out


def manifest_entries(files: dict) -> list:
    """The entries of manifest.json's "files" list for the five files (as scripts/make_vectors.py writes them)."""
    entries = []
    for name, obj in files.items():
        cases = obj["cases"]
        entries.append({"file": name, "function": obj["function"], "section": obj["section"], "cases": len(cases),
                        "value_checks": sum("expected" in c for c in cases),
                        "grad_checks": sum("grad" in c for c in cases),
                        "error_checks": sum("expect_error" in c for c in cases)})
    return entries


def main(argv=None) -> int:
    """--print-manifest prints the five files' manifest entries; anything else is scripts/make_vectors.py's
    job (it writes and checks every vector file, these five included, and the manifest)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--print-manifest", action="store_true", help="print the manifest entries and exit")
    ns, rest = p.parse_known_args(argv)
    if ns.print_manifest:
        print(json.dumps(manifest_entries(build(ns.seed)), indent=1))
        return 0
    import make_vectors

    return make_vectors.main(rest)


if __name__ == "__main__":
    sys.exit(main())
