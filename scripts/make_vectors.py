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

A file whose numbers agree with the code (within diff()'s tolerance) is kept byte for byte, so that its
sha256 in manifest.json — which the conformance runner verifies with the spec version and case count
of every file before it calls an adapter — changes only when a number does.

It also writes the end-to-end trainer vectors trainer_{sft,dpo,reward}.json (and, from
scripts/make_rl_trainer_vectors.py, the spec 1.1 trainer_{grpo,rloo}.json): a tiny float64 GPT-2 with
explicit initial weights (Python random again), records, their collated micro-batches and the explicit
step schedule (= the order the real trainers use for the stated seed), and the expected numbers of
`reference_adapter.run_trainer_vector` (the trainers' components driven as training.run_loop drives
them). tests/test_trainer_vectors.py shows that the real trainers reproduce them.

What it is not: a test by itself (tests/test_vectors.py regenerates in memory and compares numbers
with a tight tolerance — for the trainer vectors' expected values, the cases' own tolerances).
"""

from __future__ import annotations

import argparse
import hashlib
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


# ============================ end-to-end trainer vectors ============================================
#
# One file per trainer (trainer_sft.json, trainer_dpo.json, trainer_reward.json), format
# vietnamese_ai_ref.trainer-vectors/1 (spec/vectors/README.md). Inputs: a tiny GPT-2 with explicit
# initial weights (drawn from Python's random.Random, not from the model's init stream), the records,
# their tokenised and collated micro-batches and the explicit step schedule `windows`. The schedule IS
# the order the real trainers use for `trainer_config.seed` (training.epoch_order, batched as
# training.run_loop batches it), so SFTTrainer / DPOTrainer / RewardModel.huan_luyen reproduce the
# expected numbers exactly (tests/test_trainer_vectors.py); other implementations just follow
# `windows`: the order is an input, not normative. Expected values: reference_adapter.run_trainer_vector.

TRAINER_FILES = (
    ("sft", "losses.md#2-sft-loss-over-the-effective-batch"),
    ("dpo", "losses.md#3-dpo-loss-with-conservative-label-smoothing"),
    ("reward", "losses.md#5-reward-model-bradleyterry-loss"),
)
TRAINER_SECTIONS = (
    "api.md#the-shared-training-loop", "model.md#2-architecture-gpt-2-pre-ln", "model.md#5-reward-head",
    "losses.md#7-adamw-and-weight-decay-groups", "losses.md#8-learning-rate-schedule",
    "losses.md#9-gradient-clipping-and-the-logged-values", "losses.md#10-gradient-accumulation-for-dpo-and-reward-model-pairs",
)

TRAINER_MODEL_CONFIG = {
    "vocab_size": 259, "n_positions": 64, "n_embd": 16, "n_layer": 2, "n_head": 2, "layer_norm_epsilon": 1e-5,
    "activation": "gelu_new", "tie_word_embeddings": True, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0,
    "pad_token_id": 256, "bos_token_id": 257, "eos_token_id": 258,
}
_TRAINER_COMMON = {"so_vong": 1, "kich_thuoc_batch": 2, "gradient_accumulation": 2, "toc_do_hoc": 1e-2,
                   "gradient_clip": 1.0, "warmup_ratio": 0.1, "weight_decay": 0.1, "max_seq_length": 64,
                   "logging_steps": 1, "seed": 42}
TRAINER_CONFIGS = {
    "sft": dict(_TRAINER_COMMON),
    "dpo": dict(_TRAINER_COMMON, beta=0.5, label_smoothing=0.1),
    "reward": dict(_TRAINER_COMMON),
}
#: Tolerance of every trainer-vector quantity (measured errors of the independent plain-torch adapter:
#: spec/vectors/README.md) ...
TRAINER_TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
#: ... except the final values of the parameters whose gradient is mathematically zero, so that what
#: they receive is rounding noise (~1e-17) which AdamW divides by sqrt(v̂) + eps ≈ eps = 1e-8: the
#: attention *key* biases (softmax is invariant to adding q·b_k to every score of a row; the q and v
#: thirds of c_attn.bias share the entry) and, for the reward model, ln_f.bias (it shifts r_c and r_r
#: alike, which cancels in r_c − r_r − m). Their final values are fixed only to ~Σ lr·noise/eps ≈ 1e-10.
NOISE_INTEGRATOR_TOLERANCE = {"atol": 1e-8}


def _quantity_tolerances(kind: str) -> dict:
    n_layer = TRAINER_MODEL_CONFIG["n_layer"]
    names = [f"h.{i}.attn.c_attn.bias" for i in range(n_layer)] + (["ln_f.bias"] if kind == "reward" else [])
    return {f"parameters_after.{n}": dict(NOISE_INTEGRATOR_TOLERANCE) for n in names}

_SFT_QA = [
    ("Xin chào", " Chào bạn!"), ("2 + 3 =", " 5"), ("Thủ đô Việt Nam?", " Hà Nội."), ("Màu của lá?", " Xanh."),
    ("1, 2, 3,", " 4, 5, 6"), ("Trời mưa", " Mang ô nhé."), ("Cảm ơn", " Không có gì."), ("Mèo kêu", " meo meo"),
    ("Số chẵn?", " 2, 4, 6, 8"), ("Phở là gì?", " Một món ăn."), ("Tạm biệt", " Hẹn gặp lại!"), ("9 - 4 =", " 5"),
    ("Biển màu gì?", " Xanh lam."), ("Sông dài nhất?", " Mê Kông."), ("Sau Chủ Nhật?", " Thứ Hai."),
    ("Chó sủa", " gâu gâu"), ("Học gì?", " Toán."), ("Mấy giờ?", " Bảy giờ."), ("Ba con", " gà"),
]
_DPO_PAIRS = [
    ("Chào", "Xin chào bạn!", "Gì?"), ("2 + 2?", "Bằng 4.", "Bằng 5."), ("Thủ đô?", "Hà Nội.", "Không biết."),
    ("Màu trời?", "Xanh.", "Đỏ chót."), ("Cảm ơn", "Không có gì ạ.", "Ừ."), ("Mèo?", "Kêu meo.", "Kêu gâu."),
    ("Phở?", "Món ăn ngon.", "Một loại xe."), ("3 x 3?", "Là 9.", "Là 6."), ("Tết?", "Năm mới.", "Mùa hè."),
    ("Nước?", "H2O.", "CO2."), ("Ngủ?", "Ngủ ngon nhé!", "Thức đi."), ("Đi đâu?", "Đi học.", "Không."),
    ("Trăng?", "Mặt trăng sáng.", "Trăng vuông."), ("5 - 1?", "Còn 4.", "Còn 3."),
    ("Kể chuyện dài", "Ngày xưa có một cô bé sống bên dòng sông xanh, ngày ngày chăm đàn vịt nhỏ.", "Hết."),
    ("Sách?", "Đọc mỗi ngày.", "Đốt sách."), ("Bạn là ai?", "Trợ lý tiếng Việt.", "Ai biết."),
    ("Mùa thu?", "Lá vàng rơi.", "Tuyết rơi dày."), ("Chợ?", "Mua rau.", "Bay."),
]
_RM_PAIRS = [
    (None, "Cảm ơn bạn rất nhiều!", "Kệ bạn.", None), (None, "Hà Nội là thủ đô.", "Huế là thủ đô.", 1.0),
    ("2 + 2?", "Bằng 4.", "Bằng 22.", None), (None, "Trời hôm nay đẹp.", "Trời.", 0.5), (None, "Xin lỗi nhé.", "Ờ.", None),
    (None, "Uống nước nhiều.", "Uống ít nước.", -0.25), ("Mèo?", "Kêu meo meo.", "Kêu ò ó o.", None),
    (None, "Học tập chăm chỉ.", "Lười học.", 2.0), (None, "Ăn rau xanh.", "Ăn kẹo mãi.", None),
    (None, "Ngủ đủ giấc.", "Thức trắng đêm.", 0.75), (None, "Đi bộ mỗi ngày.", "Nằm cả ngày.", None),
    ("Sông?", "Sông Hồng.", "Sông Kem.", 0.0), (None, "Giúp đỡ mọi người.", "Mặc kệ.", None),
    (None, "Đọc sách hay.", "Xé sách.", 1.5), (None, "Tiết kiệm điện.", "Bật đèn suốt.", None),
    (None, "Chào buổi sáng!", "Sáng.", -0.5), (None, "Trồng thêm cây.", "Chặt cây.", None),
    (None, "Rửa tay sạch.", "Tay bẩn.", 0.25), ("Mưa?", "Mang áo mưa.", "Đi chân đất.", None),
]


def _trainer_records(kind):
    if kind == "sft":
        from vietnamese_ai_ref.text.tokenizer import ByteTokenizer

        tok = ByteTokenizer()
        out = []
        for q, a in _SFT_QA:
            p_ids = [tok.bos_token_id] + tok.encode(q)
            r_ids = tok.encode(a) + [tok.eos_token_id]
            out.append({"input_ids": p_ids + r_ids, "labels": [-100] * len(p_ids) + r_ids})
        return out
    if kind == "dpo":
        return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in _DPO_PAIRS]
    out = []
    for p, c, r, m in _RM_PAIRS:
        rec = {"prompt": p} if p is not None else {}
        rec.update({"chosen": c, "rejected": r})
        if m is not None:
            rec["margin"] = m
        out.append(rec)
    return out


def _initial_parameters(rng: random.Random, kind: str) -> dict:
    """Explicit initial weights (GPT-2 names, Conv1D layout): Gaussian, LayerNorm weights around 1, every
    bias non-zero (so that a dropped or swapped bias shows at step 1), a score head for the reward model."""
    from vietnamese_ai_ref.backends import use_backend
    from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

    mc = TRAINER_MODEL_CONFIG
    with use_backend("numpy", "float64"):
        m = TransformerLM(GPTConfig(**{k: mc[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                                          "layer_norm_epsilon")}))
        if kind == "reward":
            m.add_score_head()
        shapes = {n: tuple(p.shape) for n, p in m.named_parameters().items()}
    out = {}
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        if ".ln_" in name or name.startswith("ln_"):
            base, std = (1.0, 0.1) if name.endswith(".weight") else (0.0, 0.1)
        elif name.endswith(".bias"):
            base, std = 0.0, 0.1
        elif name in ("wte.weight", "wpe.weight", "score.weight") or "c_attn" in name:
            base, std = 0.0, 0.3
        else:
            base, std = 0.0, 0.2
        out[name] = np.array([base + rng.gauss(0.0, std) for _ in range(n)], dtype=np.float64).reshape(shape)
    return out


def _trainer_case(kind: str, seed: int) -> dict:
    from vietnamese_ai_ref.backends import use_backend
    from vietnamese_ai_ref.core.optim import no_decay, warmup_steps_for
    from vietnamese_ai_ref.text.records import pad_batch, prepare_pairs, prepare_sft
    from vietnamese_ai_ref.text.tokenizer import ByteTokenizer
    from vietnamese_ai_ref.trainers.settings import LoopSettings, epoch_order, plan_steps

    rng = random.Random(f"{seed}:trainer_{kind}")
    tc = dict(TRAINER_CONFIGS[kind])
    mc = TRAINER_MODEL_CONFIG
    records = _trainer_records(kind)
    tok = ByteTokenizer()
    L = min(tc["max_seq_length"], mc["n_positions"])
    params = _initial_parameters(rng, kind)
    with use_backend("numpy", "float64"):
        if kind == "sft":
            examples = prepare_sft(records, tok, L, mc["vocab_size"])
        else:
            examples = prepare_pairs(records, tok, L, require_prompt=(kind == "dpo"), allow_margin=(kind == "reward"))
        settings = LoopSettings(epochs=tc["so_vong"], batch_size=tc["kich_thuoc_batch"],
                                accumulation=tc["gradient_accumulation"], lr=tc["toc_do_hoc"],
                                weight_decay=tc["weight_decay"], warmup_ratio=tc["warmup_ratio"],
                                clip=tc["gradient_clip"], logging_steps=1, seed=tc["seed"])
        n = len(examples)
        _, _, total, warmup = plan_steps(n, settings)
        micro_batches, windows = [], []
        for epoch in range(tc["so_vong"]):  # exactly as training.run_loop orders and groups them
            order = epoch_order(n, tc["seed"], epoch)
            batches = [order[i:i + tc["kich_thuoc_batch"]] for i in range(0, n, tc["kich_thuoc_batch"])]
            for w in range(0, len(batches), tc["gradient_accumulation"]):
                window = []
                for b in batches[w:w + tc["gradient_accumulation"]]:
                    window.append(len(micro_batches))
                    micro_batches.append(_collate(kind, [examples[j] for j in b], b, tok.pad_token_id, pad_batch))
                windows.append(window)
    assert len(windows) == total
    tc.update({
        "total_steps": total, "warmup_steps": warmup, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
        "clip_eps": 1e-6,
        "no_decay_parameters": [nm for nm, a in params.items() if no_decay(nm, a)],
    })
    inputs = {
        "trainer": kind,
        "model_config": dict(mc),
        "parameters": params,
        "trainer_config": tc,
        "records": records,
        "micro_batches": micro_batches,
        "windows": windows,
    }
    from vietnamese_ai_ref.conformance.reference import reference_trainer_run as _reference_trainer_run

    diagnostics = {}
    with use_backend("numpy", "float64"):  # = R.run_trainer_vector, from exactly what the file will hold
        expected = _reference_trainer_run(decode(encode_value(inputs)), diagnostics)
    _check_trainer_case(kind, inputs, expected, diagnostics)
    title = {"sft": "SFTTrainer", "dpo": "DPOTrainer (reference = the initial model)",
             "reward": "RewardModel.huan_luyen (score head included in the parameters)"}[kind]
    case = {
        "name": f"{kind}/tiny_gpt2_{total}_steps",
        "description": (f"{title}: GPT-2 n_layer 2, n_embd 16, n_head 2, byte vocabulary 259, float64; "
                        f"{n} examples, kich_thuoc_batch {tc['kich_thuoc_batch']}, gradient_accumulation "
                        f"{tc['gradient_accumulation']} (micro-batches of unequal token counts; the last window holds "
                        f"micro-batches of 2 and 1 rows), {total} optimiser steps with warmup W = {warmup} (step 1 runs at lr 0), "
                        f"clipping active, weight decay with the no-decay rule"),
        "inputs": encode_value(inputs),
        "expected": encode_value(expected),
        "tolerances": dict(TRAINER_TOLERANCE),
        "quantity_tolerances": _quantity_tolerances(kind),
    }
    return case


def _collate(kind, exs, indices, pad, pad_batch):
    """One micro-batch as the trainers collate it (right padding, -100 labels on padding)."""
    idx = np.array(indices, dtype=np.int64)
    if kind == "sft":
        ids, mask, labels = pad_batch([e["input_ids"] for e in exs], pad, [e["labels"] for e in exs])
        return {"example_indices": idx, "input_ids": np.array(ids, dtype=np.int64),
                "attention_mask": np.array(mask, dtype=np.int64), "labels": np.array(labels, dtype=np.int64)}
    mb = {"example_indices": idx}
    for side in ("chosen", "rejected"):
        if kind == "dpo":
            ids, mask, labels = pad_batch([e[f"{side}_ids"] for e in exs], pad, [e[f"{side}_labels"] for e in exs])
            mb[f"{side}_labels"] = np.array(labels, dtype=np.int64)
        else:
            ids, mask = pad_batch([e[f"{side}_ids"] for e in exs], pad)
        mb[f"{side}_input_ids"] = np.array(ids, dtype=np.int64)
        mb[f"{side}_attention_mask"] = np.array(mask, dtype=np.int64)
    if kind == "reward":
        mb["margin"] = np.array([e["margin"] for e in exs], dtype=np.float64)
    # keep the key order stable: ids, mask, labels per side, then margin
    order = ["example_indices"] + [f"{s}_{k}" for s in ("chosen", "rejected") for k in ("input_ids", "attention_mask", "labels")]
    return {k: mb[k] for k in order + ["margin"] if k in mb}


def _check_trainer_case(kind, inputs, expected, diagnostics):
    """The vector exercises what it claims: accumulation with unequal token counts and row counts,
    clipping, warmup (lr 0 at step 1), and no quantity sits on a discontinuity (accuracy ties)."""
    mbs, windows, tc = inputs["micro_batches"], inputs["windows"], inputs["trainer_config"]
    assert all(len(w) <= tc["gradient_accumulation"] for w in windows) and len(windows[0]) == 2
    # a window whose micro-batches hold different numbers of rows: the pair mean of losses.md §10 differs
    # from a mean of micro-batch means there, and SFT's token mean (§2) from a mean of micro-batch token means
    sizes = [len(mbs[i]["example_indices"]) for i in windows[-1]]
    assert len(sizes) == 2 and sizes[0] != sizes[1], sizes
    if kind == "sft":
        for w in (windows[0], windows[-1]):  # step 1 (its gradients are in the vector) and the last step
            counts = [int((mbs[i]["labels"][:, 1:] != -100).sum()) for i in w]
            assert counts[0] != counts[1], counts
    assert tc["warmup_steps"] >= 1 and expected["learning_rates"][0] == 0.0
    norms = expected["grad_norms"]
    assert norms[0] > tc["gradient_clip"] and sum(x > tc["gradient_clip"] for x in norms) >= 3, norms  # clipping active
    if kind == "reward":
        # accuracies are discontinuous in the scores: every pair's score difference stays away from 0
        assert min(diagnostics["min_abs_pair_difference"]) > 1e-4, diagnostics


FILES = (
    ("sequence_logps", _sequence_logps, "losses.md#1-sequence-log-probability"),
    ("sft_loss", _sft_loss, "losses.md#2-sft-loss-over-the-effective-batch"),
    ("dpo_loss", _dpo_loss, "losses.md#3-dpo-loss-with-conservative-label-smoothing"),
    ("reward_loss", _reward_loss, "losses.md#5-reward-model-bradleyterry-loss"),
    ("normalize_scores", _normalize_scores, "losses.md#6-normalised-score"),
)


#: The spec version that introduced the files this script writes (they did not change in 1.1).
INTRODUCED = "1.0"


def build(seed: int = SEED, keep=OUT_DIR) -> dict:
    """{file name: JSON object} for every vector file and manifest.json, computed in memory (the spec 1.1
    RL files come from scripts/make_rl_vectors.py and are listed in the same manifest). The manifest
    records each file's spec version and the sha256 of its text as `file_texts(files, keep)` gives it."""
    out, entries = {}, []
    for function, builder, section in FILES:
        rng = random.Random(f"{seed}:{function}")
        cases = builder(rng)
        fname = f"{function}.json"
        out[fname] = {
            "format": FORMAT,
            "spec_version": INTRODUCED,
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
    if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path (tests): find the sibling
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_rl_vectors  # the spec 1.1 RL files (same folder; imports this module)

    rl_files = make_rl_vectors.build()
    out.update(rl_files)
    entries += make_rl_vectors.manifest_entries(rl_files)
    trainer_entries = []
    for kind, section in TRAINER_FILES:
        fname = f"trainer_{kind}.json"
        cases = [_trainer_case(kind, seed)]
        out[fname] = {
            "format": TRAINER_FORMAT,
            "spec_version": INTRODUCED,
            "trainer": kind,
            "section": section,
            "sections": list(TRAINER_SECTIONS),
            "cases": cases,
        }
        trainer_entries.append({"file": fname, "trainer": kind, "section": section, "cases": len(cases)})
    import make_rl_trainer_vectors  # the spec 1.1 GRPO and RLOO trainer vectors (spec/rl.md §11)

    for fname, obj in make_rl_trainer_vectors.build(seed).items():
        out[fname] = obj
        trainer_entries.append({"file": fname, "trainer": obj["trainer"], "section": obj["section"],
                                "cases": len(obj["cases"])})
    texts = file_texts(out, keep)
    for e in entries + trainer_entries:  # what the runner verifies before it calls an adapter (codec.load_vectors)
        e["spec_version"] = out[e["file"]]["spec_version"]
        e["sha256"] = hashlib.sha256(texts[e["file"]].encode("utf-8")).hexdigest()
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
            "status": "end-to-end vectors, one per trainer: run through the optional adapter function "
                      "run_trainer_vector(inputs); see README.md, 'End-to-end trainer vectors'",
            "rng": "Python random.Random(f'{seed}:trainer_{trainer}') for the initial weights; the step order is "
                   "the trainers' own (training.epoch_order for trainer_config.seed), written out as an input",
            "tolerances": dict(TRAINER_TOLERANCE),
            "files": trainer_entries,
        },
    }
    return out


def file_texts(files: dict, keep=None) -> dict:
    """{file name: text} of every vector file (not the manifest): the text already in `keep` where its
    numbers agree with the regenerated ones (diff() finds nothing; the trainer files' last bits move with
    the BLAS build, and a committed file must not change, nor its sha256, when only they do), else the
    regenerated text."""
    out = {}
    for name, obj in files.items():
        if name == "manifest.json":
            continue
        text = dumps(obj)
        old = Path(keep) / name if keep is not None else None
        if old is not None and old.is_file():
            committed = old.read_text(encoding="utf-8")
            try:
                if committed == text or not diff(json.loads(committed), json.loads(text)):
                    text = committed
            except ValueError:  # not JSON: replaced by the regenerated text
                pass
        out[name] = text
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
    if isinstance(committed, dict) and "inputs" in committed and "expected" in committed and isinstance(regenerated, dict):
        return _diff_trainer_case(committed, regenerated, rtol, atol, path)
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


def _diff_trainer_case(committed, regenerated, rtol, atol, path) -> list:
    """A trainer case: everything but `expected` exactly as diff() compares it (the inputs come from
    Python's random and integer code); `expected` within the case's own tolerances (it runs a model
    through BLAS, whose last bits — and the noise-integrating parameters, README — may move with
    NumPy/BLAS builds), as the conformance runner would compare it."""
    from vietnamese_ai_ref.conformance.runner import trainer_comparisons

    if list(committed) != list(regenerated):
        return [f"{path}: keys differ ({list(committed)} vs {list(regenerated)})"]
    out = []
    for k in committed:
        if k != "expected":
            out += diff(committed[k], regenerated[k], rtol, atol, f"{path}.{k}")
    exp_c, exp_r = {}, {}
    _flatten_leaves("", committed["expected"], exp_c)
    _flatten_leaves("", regenerated["expected"], exp_r)
    if list(exp_c) != list(exp_r):
        return out + [f"{path}.expected: quantities differ"]
    tol = committed.get("tolerances", {"rtol": 1e-9, "atol": 1e-10})
    for leaf, (ok, max_abs, _, detail) in trainer_comparisons(decode(regenerated["expected"]), committed,
                                                              float(tol["rtol"]), float(tol["atol"])):
        if not ok:
            out.append(f"{path}.expected.{leaf}: {detail or 'differs'} (max abs {max_abs})")
    return out


def _flatten_leaves(prefix, v, out):
    if isinstance(v, dict) and set(v) != {"dtype", "shape", "data"}:
        for k, x in v.items():
            _flatten_leaves(f"{prefix}.{k}" if prefix else k, x, out)
    else:
        out[prefix] = v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT_DIR), help="output directory (default: spec/vectors)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    ns = p.parse_args(argv)
    out = Path(ns.out)
    files = build(ns.seed, keep=out)
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
    texts = file_texts(files, out)
    texts["manifest.json"] = dumps(files["manifest.json"])
    written = 0
    for name, text in texts.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written += 1
    print(f"wrote {written} of {len(texts)} files to {out} (the others agree with the code and are kept as they are)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
