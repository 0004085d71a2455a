"""Regenerates the golden vectors spec/vectors/*.json and spec/vectors/manifest.json.

What it is for: the single, deterministic source of the conformance vectors of spec/losses.md.
Inputs are drawn from Python's `random.Random` seeded per file with the string "<SEED>:<file stem>"
(Python guarantees `random()` is reproducible across versions and platforms; NumPy's generators are
not used, so a NumPy upgrade cannot move the inputs). Expected values and gradients are computed by
`vietnamese_ai_ref.conformance.reference_adapter` (NumPy backend, float64). Floats are written by
`json` as `repr(x)`: the shortest decimal string that round-trips to the same float64 (at most 17
significant digits). Run from the repository root:

    python scripts/make_vectors.py            # rewrite spec/vectors/
    python scripts/make_vectors.py --check    # exit 1 if the committed vectors disagree with the code

What it is not: a test by itself (tests/test_vectors.py regenerates in memory and compares numbers
with a tight tolerance), nor the producer of end-to-end trainer vectors: the manifest only reserves
their slot (spec/vectors/README.md describes their format).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np  # scripts/ is outside the package: the host-NumPy rule applies to vietnamese_ai_ref/ only

from vietnamese_ai_ref import SPEC_VERSION
from vietnamese_ai_ref.conformance import FORMAT, TRAINER_FORMAT, decode, encode_value, reference_adapter

SEED = 20241121
GENERATOR = "scripts/make_vectors.py"
GENERATOR_VERSION = 1
DEFAULT_TOLERANCE = {"rtol": 1e-12, "atol": 1e-12}
ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "spec" / "vectors"

R = reference_adapter


# ============================ small deterministic input helpers ====================================

def _u(rng: random.Random, lo: float, hi: float, shape) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    return np.array([lo + (hi - lo) * rng.random() for _ in range(n)], dtype=np.float64).reshape(shape)


def _ints(rng: random.Random, lo: int, hi: int, shape) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    return np.array([rng.randrange(lo, hi) for _ in range(n)], dtype=np.int64).reshape(shape)


def _labels(rng, B, T, V, prompt_lens, pad_lens):
    """Labels (B, T): -100 on the first prompt_lens[b] positions and the last pad_lens[b], ids elsewhere."""
    lab = _ints(rng, 0, V, (B, T))
    for b in range(B):
        lab[b, : prompt_lens[b]] = -100
        if pad_lens[b]:
            lab[b, T - pad_lens[b]:] = -100
    return lab


def _case(name, args, expected=None, grad=None, **extra):
    c = {"name": name}
    c.update(extra)
    c["args"] = encode_value(args)
    if expected is not None:
        c["expected"] = encode_value(expected)
    if grad is not None:
        c["grad"] = encode_value(grad)
    return c


def _err_case(name, args, reason):
    return {"name": name, "reason": reason, "args": encode_value(args), "expect_error": "ValueError"}


# ============================ one builder per vector file ===========================================

def _sequence_logps(rng):
    cases = []

    def add(name, logits, labels, description):
        out = R.sequence_logps(logits, labels)
        up = _u(rng, -1.0, 1.0, out.shape)
        g = R.sequence_logps_grad(logits, labels, up)
        cases.append(_case(f"sequence_logps/{name}", {"logits": logits, "labels": labels}, {"logps": out},
                           {"upstream": up, "expected": g}, description=description))

    B, T, V = 4, 7, 6
    add("mixed_rows", _u(rng, -3, 3, (B, T, V)), _labels(rng, B, T, V, [2, 3, 1, T], [0, 2, 1, 0]),
        "prompt/padding masked with -100; the last row has no target token (logps 0)")
    add("all_targets", _u(rng, -2, 2, (2, 5, 4)), _ints(rng, 0, 4, (2, 5)),
        "no -100 at all: labels[:, 0] is still never a target (the shift)")
    add("peaked_logits", _u(rng, -60, 60, (3, 6, 5)), _labels(rng, 3, 6, 5, [1, 2, 3], [1, 0, 0]),
        "logits of magnitude up to 60: log-softmax must be computed stably")
    add("all_ignored", _u(rng, -1, 1, (2, 4, 3)), np.full((2, 4), -100, dtype=np.int64),
        "every label is -100: logps are exactly 0 and the gradient is 0")
    add("t2_single_position", _u(rng, -1, 1, (3, 2, 5)), np.array([[2, 3], [0, -100], [-100, 4]], dtype=np.int64),
        "T = 2: only logits[:, 0] predicts (labels[:, 1])")
    cases.append(_err_case("sequence_logps/error_label_out_of_range",
                           {"logits": _u(rng, -1, 1, (1, 3, 4)), "labels": np.array([[-100, 1, 4]], dtype=np.int64)},
                           "target id 4 with V = 4"))
    return cases


def _sft_loss(rng):
    cases = []

    def add(name, logits, labels, n, description):
        out = R.sft_loss(logits, labels, n)
        up = np.asarray(_u(rng, -1.0, 1.0, ()).reshape(()))
        g = R.sft_loss_grad(logits, labels, n, up)
        cases.append(_case(f"sft_loss/{name}", {"logits": logits, "labels": labels, "num_items_in_batch": n},
                           {"loss": out}, {"upstream": up, "expected": g}, description=description))

    B, T, V = 3, 6, 5
    lg = _u(rng, -3, 3, (B, T, V))
    lab = _labels(rng, B, T, V, [2, 1, 3], [0, 2, 1])
    add("own_count", lg, lab, None, "num_items_in_batch = None: divide by this batch's own target count")
    add("num_items_override", lg, lab, 17, "num_items_in_batch = 17 (the effective batch's count): divide by 17")
    # one effective batch of 5 rows split into micro-batches of 3 and 2 rows with different token counts
    T2 = 7
    full_lg = _u(rng, -2, 2, (5, T2, V))
    full_lab = _labels(rng, 5, T2, V, [1, 4, 2, 5, 3], [0, 0, 2, 0, 1])
    n_total = int((full_lab[:, 1:] != -100).sum())
    add("accumulation_full_batch", full_lg, full_lab, None, f"the whole effective batch: {n_total} target tokens")
    add("accumulation_micro_1", full_lg[:3].copy(), full_lab[:3].copy(), n_total,
        "rows 0-2 of accumulation_full_batch with num_items_in_batch = its total; micro_1 + micro_2 = full")
    add("accumulation_micro_2", full_lg[3:].copy(), full_lab[3:].copy(), n_total,
        "rows 3-4 of accumulation_full_batch with num_items_in_batch = its total")
    add("micro_batch_without_targets", _u(rng, -1, 1, (2, 4, V)), np.full((2, 4), -100, dtype=np.int64), 9,
        "a micro-batch without target tokens inside a larger window: loss 0, gradient 0")
    add("peaked_logits", _u(rng, -50, 50, (2, 5, V)), _labels(rng, 2, 5, V, [1, 2], [0, 1]), None,
        "logits of magnitude up to 50")
    z = np.full((2, 4), -100, dtype=np.int64)
    lg0 = _u(rng, -1, 1, (2, 4, V))
    cases.append(_err_case("sft_loss/error_no_target_tokens",
                           {"logits": lg0, "labels": z, "num_items_in_batch": None},
                           "no target token and num_items_in_batch None: mean over zero tokens"))
    cases.append(_err_case("sft_loss/error_num_items_zero",
                           {"logits": lg, "labels": lab, "num_items_in_batch": 0}, "num_items_in_batch must be >= 1"))
    cases.append(_err_case("sft_loss/error_num_items_below_local_count",
                           {"logits": lg, "labels": lab, "num_items_in_batch": 2},
                           "num_items_in_batch smaller than this batch's own count"))
    return cases


def _dpo_args(pc, pr, rc, rr, beta, eps):
    return {"policy_chosen_logps": pc, "policy_rejected_logps": pr, "reference_chosen_logps": rc,
            "reference_rejected_logps": rr, "beta": beta, "label_smoothing": eps}


def _dpo_loss(rng):
    cases = []

    def add(name, pc, pr, rc, rr, beta, eps, description):
        losses, cr, rj = R.dpo_loss(pc, pr, rc, rr, beta, eps)
        up = _u(rng, -1.0, 1.0, losses.shape)
        g = R.dpo_loss_grad(pc, pr, rc, rr, beta, eps, up)
        cases.append(_case(f"dpo_loss/{name}", _dpo_args(pc, pr, rc, rr, beta, eps),
                           {"losses": losses, "chosen_rewards": cr, "rejected_rewards": rj},
                           {"upstream": up, "expected": g}, description=description))

    def logps(n):
        return _u(rng, -80.0, -5.0, (n,))

    add("spec_worked_example", np.array([-10.0]), np.array([-12.0]), np.array([-11.0]), np.array([-11.5]), 0.1, 0.1,
        "the worked example of spec/losses.md §3.6")
    for eps, beta in ((0.0, 0.1), (0.1, 0.1), (0.5, 0.1), (0.25, 2.0), (0.0, 0.5), (0.3, 0.01)):
        add(f"random_eps{eps}_beta{beta}", logps(6), logps(6), logps(6), logps(6), beta, eps,
            f"random summed log-probs, label_smoothing {eps}, beta {beta}")
    same = logps(4), logps(4)
    add("policy_equals_reference", same[0], same[1], same[0].copy(), same[1].copy(), 0.3, 0.2,
        "policy == reference: every loss is log 2, rewards 0")
    add("tie_h0_eps0", np.array([-3.0, -9.0]), np.array([-4.0, -2.0]), np.array([-3.0, -9.0]), np.array([-4.0, -2.0]),
        0.1, 0.0, "h = 0 exactly: loss log 2")
    hs = np.array([1e3, -1e3, 5e3, -5e3, 1e4, -1e4])
    pc, pr = -5.0 - np.maximum(-hs, 0.0), -5.0 - np.maximum(hs, 0.0)  # log-probs <= 0 with pc - pr = hs
    for eps in (0.0, 0.1, 0.5):
        add(f"extreme_beta1_eps{eps}", pc, pr, np.full(6, -7.0), np.full(6, -7.0), 1.0, eps,
            "|beta*h| from 1e3 to 1e4: losses finite (≈ 0 or ≈ |beta*h| times a weight), gradients finite")
    add("extreme_beta0.1_h1e5", np.array([-1.0, -100001.0]), np.array([-100001.0, -1.0]), np.array([-2.0, -2.0]),
        np.array([-2.0, -2.0]), 0.1, 0.1, "|beta*h| = 1e4 reached with beta 0.1")
    ok = _dpo_args([-1.0, -2.0], [-3.0, -1.0], [-1.5, -2.0], [-2.0, -1.5], 0.1, 0.0)
    for name, patch, reason in (
        ("error_label_smoothing_above_half", {"label_smoothing": 0.6}, "label_smoothing must lie in [0, 0.5]"),
        ("error_label_smoothing_negative", {"label_smoothing": -0.1}, "label_smoothing must lie in [0, 0.5]"),
        ("error_beta_zero", {"beta": 0.0}, "beta must be > 0"),
        ("error_beta_negative", {"beta": -0.1}, "beta must be > 0"),
        ("error_beta_infinite", {"beta": math.inf}, "beta must be finite"),
        ("error_beta_nan", {"beta": math.nan}, "beta must be finite"),
        ("error_nan_input", {"policy_chosen_logps": [math.nan, -2.0]}, "inputs must be finite"),
        ("error_inf_input", {"reference_rejected_logps": [-math.inf, -1.5]}, "inputs must be finite"),
        ("error_shape_mismatch", {"policy_rejected_logps": [-3.0, -1.0, -4.0]}, "the four inputs must have equal shapes"),
    ):
        args = dict(ok)
        args.update(patch)
        args = {k: (np.array(v, dtype=np.float64) if isinstance(v, list) else v) for k, v in args.items()}
        cases.append(_err_case(f"dpo_loss/{name}", args, reason))
    return cases


def _reward_loss(rng):
    cases = []

    def add(name, c, r, m, description):
        out = R.reward_loss(c, r, m)
        up = _u(rng, -1.0, 1.0, out.shape)
        g = R.reward_loss_grad(c, r, m, up)
        cases.append(_case(f"reward_loss/{name}", {"rewards_chosen": c, "rewards_rejected": r, "margin": m},
                           {"losses": out}, {"upstream": up, "expected": g}, description=description))

    add("no_margin", _u(rng, -3, 3, (8,)), _u(rng, -3, 3, (8,)), None, "margin None (m = 0)")
    add("scalar_margin", _u(rng, -3, 3, (5,)), _u(rng, -3, 3, (5,)), 0.75, "one margin for every pair")
    add("per_pair_margin", _u(rng, -3, 3, (5,)), _u(rng, -3, 3, (5,)), _u(rng, 0, 2, (5,)), "one margin per pair")
    add("equal_rewards", np.array([0.5, -2.0, 7.0]), np.array([0.5, -2.0, 7.0]), None, "r_c == r_r: loss log 2")
    d = np.array([1e3, -1e3, 1e4, -1e4, 40.0, -40.0])
    add("extreme_differences", d / 2, -d / 2, None, "|r_c - r_r| up to 1e4: finite losses and gradients")
    add("extreme_with_margin", np.array([5e3, -5e3]), np.array([0.0, 0.0]), np.array([1e4, -1e4]),
        "margin of magnitude 1e4")
    cases.append(_err_case("reward_loss/error_shape_mismatch",
                           {"rewards_chosen": np.zeros(3), "rewards_rejected": np.zeros(2), "margin": None},
                           "equal shapes required"))
    cases.append(_err_case("reward_loss/error_nan",
                           {"rewards_chosen": np.array([math.nan, 1.0]), "rewards_rejected": np.zeros(2), "margin": None},
                           "inputs must be finite"))
    return cases


def _normalize_scores(rng):
    cases = []

    def add(name, s, description):
        cases.append(_case(f"normalize_scores/{name}", {"scores": s}, {"normalized": R.normalize_scores(s)},
                           description=description))

    add("general", _u(rng, -4, 4, (7,)), "z-scores with population std (ddof 0)")
    add("n2", np.array([3.0, -1.0]), "two different scores give exactly [1, -1]")
    add("n1", np.array([2.5]), "n = 1: [0], never NaN")
    add("n0_empty", np.zeros((0,)), "no score: an empty result")
    add("all_equal", np.full(5, 3.7), "all scores equal: zeros, never NaN")
    add("with_ties", np.array([1.0, 1.0, 2.0, 5.0, 5.0, -3.0]), "ties keep equal z-scores")
    add("large_scale", _u(rng, -1, 1, (6,)) * 1e150, "values near 1e150: no overflow in the squares")
    add("tiny_scale", _u(rng, -1, 1, (6,)) * 1e-200, "values near 1e-200: no underflow in the squares")
    cases.append(_err_case("normalize_scores/error_nan", {"scores": np.array([1.0, math.nan, 2.0])}, "scores must be finite"))
    return cases


FILES = (
    ("sequence_logps", _sequence_logps, "losses.md#1-sequence-log-probability"),
    ("sft_loss", _sft_loss, "losses.md#2-sft-loss-over-the-effective-batch"),
    ("dpo_loss", _dpo_loss, "losses.md#3-dpo-loss-with-conservative-label-smoothing"),
    ("reward_loss", _reward_loss, "losses.md#5-reward-model-bradleyterry-loss"),
    ("normalize_scores", _normalize_scores, "losses.md#6-normalised-score"),
)


def build(seed: int = SEED) -> dict:
    """{file name: JSON object} for every vector file and manifest.json, computed in memory."""
    out, entries = {}, []
    for function, builder, section in FILES:
        rng = random.Random(f"{seed}:{function}")
        cases = builder(rng)
        fname = f"{function}.json"
        out[fname] = {
            "format": FORMAT,
            "spec_version": SPEC_VERSION,
            "function": function,
            "section": section,
            "cases": cases,
        }
        entries.append({
            "file": fname,
            "function": function,
            "section": section,
            "cases": len(cases),
            "value_checks": sum(1 for c in cases if "expected" in c),
            "grad_checks": sum(1 for c in cases if "grad" in c),
            "error_checks": sum(1 for c in cases if "expect_error" in c),
        })
    out["manifest.json"] = {
        "format": FORMAT,
        "spec_version": SPEC_VERSION,
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "rng": "Python random.Random(f'{seed}:{function}'), one stream per file",
        "dtype": "float64",
        "float_encoding": "JSON numbers written as repr(float) (shortest round-trip, <= 17 significant digits); "
                          "non-finite values as the strings NaN, Infinity, -Infinity",
        "tolerances": {"default": dict(DEFAULT_TOLERANCE)},
        "files": entries,
        "trainer_vectors": {
            "format": TRAINER_FORMAT,
            "status": "reserved: no trainer vectors in spec 1.0 yet; see README.md, 'End-to-end trainer vectors'",
            "tolerances": {"rtol": 1e-9, "atol": 1e-10},
            "files": [],
        },
    }
    return out


# ============================ deterministic JSON text ==============================================

def dumps(obj) -> str:
    """Indented JSON in which each array's flat `data` list stays on one line (diff-friendly, stable)."""
    return _dump(obj, 0) + "\n"


def _dump(v, level: int) -> str:
    pad, pad1 = " " * level, " " * (level + 1)
    if isinstance(v, dict):
        if not v:
            return "{}"
        if set(v) == {"dtype", "shape", "data"}:
            return json.dumps(v, ensure_ascii=False, allow_nan=False)
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {_dump(x, level + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, list):
        if not v or all(not isinstance(x, (dict, list)) for x in v):
            return json.dumps(v, ensure_ascii=False, allow_nan=False)
        return "[\n" + ",\n".join(pad1 + _dump(x, level + 1) for x in v) + "\n" + pad + "]"
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


# ============================ comparison (used by --check and tests/test_vectors.py) ================

def diff(committed, regenerated, rtol: float = 1e-13, atol: float = 1e-13, path: str = "") -> list:
    """Differences between two decoded-or-encoded vector objects: structure exact, floats to a tolerance."""
    out = []
    if isinstance(committed, dict) and set(committed) == {"dtype", "shape", "data"}:
        a, b = decode(committed), decode(regenerated) if isinstance(regenerated, dict) else None
        if b is None or a.dtype != b.dtype or a.shape != b.shape:
            return [f"{path}: array dtype/shape differ"]
        if a.dtype.kind == "f":
            same_nan = np.isnan(a) == np.isnan(b)
            fa, fb = np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0)
            inf_ok = np.all(np.isinf(fa) == np.isinf(fb)) and np.all(fa[np.isinf(fa)] == fb[np.isinf(fb)])
            fin = np.isfinite(fa) & np.isfinite(fb)
            close = np.abs(fa[fin] - fb[fin]) <= atol + rtol * np.abs(fb[fin])
            if not (same_nan.all() and inf_ok and close.all()):
                return [f"{path}: values differ (max abs {float(np.max(np.abs(fa[fin] - fb[fin]), initial=0.0)):.3e})"]
            return []
        return [] if np.array_equal(a, b) else [f"{path}: integer/bool values differ"]
    if isinstance(committed, dict):
        if not isinstance(regenerated, dict) or list(committed) != list(regenerated):
            return [f"{path}: keys differ ({list(committed)[:6]} vs {list(regenerated)[:6] if isinstance(regenerated, dict) else type(regenerated).__name__})"]
        for k in committed:
            out += diff(committed[k], regenerated[k], rtol, atol, f"{path}.{k}" if path else k)
        return out
    if isinstance(committed, list):
        if not isinstance(regenerated, list) or len(committed) != len(regenerated):
            return [f"{path}: list length differs"]
        for i, (x, y) in enumerate(zip(committed, regenerated)):
            name = x.get("name") if isinstance(x, dict) and "name" in x else str(i)
            out += diff(x, y, rtol, atol, f"{path}[{name}]")
        return out
    if isinstance(committed, float) and isinstance(regenerated, (int, float)) and not isinstance(regenerated, bool):
        if not (abs(committed - regenerated) <= atol + rtol * abs(regenerated)):
            return [f"{path}: {committed!r} != {regenerated!r}"]
        return []
    if committed != regenerated:
        return [f"{path}: {committed!r} != {regenerated!r}"]
    return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT_DIR), help="output directory (default: spec/vectors)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    ns = p.parse_args(argv)
    out = Path(ns.out)
    files = build(ns.seed)
    if ns.check:
        problems = []
        for name, obj in files.items():
            path = out / name
            if not path.is_file():
                problems.append(f"{name}: missing")
                continue
            with open(path, encoding="utf-8") as f:
                problems += [f"{name}: {d}" for d in diff(json.load(f), json.loads(dumps(obj)))]
        for line in problems:
            print(line)
        print("vectors agree with the code" if not problems else f"{len(problems)} difference(s)")
        return 1 if problems else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (out / name).write_text(dumps(obj), encoding="utf-8")
    print(f"wrote {len(files)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
