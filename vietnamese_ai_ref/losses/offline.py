"""The offline alignment losses of spec/losses.md, one pure function per spec section.

What it is for: the numbers every trainer of `vietnamese_ai_ref` computes and every conforming
implementation must reproduce: the sequence log-probability of a completion (§1), the SFT loss over a
whole effective batch (§2), the DPO loss with conservative label smoothing and its rewards (§3, §4),
the Bradley–Terry reward-model loss (§5), the normalised (z-scored) score (§6) and the reduction of
per-pair losses over an effective batch (§10). Each function works on autograd `Tensor`s (the result
carries gradients back to them) *and* on plain backend arrays, host NumPy arrays or Python lists (the
result is then a plain backend array, see "Input kinds" below).

What it is not: a trainer. Nothing here runs a model, reads data, steps an optimiser or averages over
micro-batches by itself; the callers (SFTTrainer, DPOTrainer, RewardModel) do that with the
reductions stated in the spec. No function here reduces unless its spec section says so.

Input kinds (every function): if any floating input is a `Tensor`, the outputs are `Tensor`s (loss
outputs differentiable, rewards detached); otherwise floating inputs are turned into backend arrays
(an array keeps its floating dtype, a list or Python number gets the backend's policy dtype) and the
outputs are backend arrays (`xp.ndarray`, 0-d for scalars). `normalize_scores` also maps a Python list
to a list of floats.

Errors are `ValueError`s whose message is Vietnamese first, English after the slash, naming the
argument, what was expected and what was received.
"""

from __future__ import annotations

import builtins
import math
import numbers

from ..core import autograd as ag
from ..core.autograd import Tensor
from ..backends import get_backend

__all__ = [
    "IGNORE_INDEX",
    "sequence_logps",
    "count_target_tokens",
    "sft_loss",
    "dpo_loss",
    "dpo_metrics",
    "reward_loss",
    "reward_accuracy",
    "normalize_scores",
    "reduce_pair_losses",
]

#: Label value of positions that are not predicted (prompt, padding): as torch/transformers.
IGNORE_INDEX = -100


# ============================ helpers: input kinds and validation ================================

def _err(vi: str, en: str) -> ValueError:
    return ValueError(f"{vi} / {en}")


def _any_tensor(*xs) -> bool:
    return any(isinstance(x, Tensor) for x in xs)


def _as_float(x, name: str) -> Tensor:
    """A Tensor over a floating backend array (Tensors pass through unchanged)."""
    if isinstance(x, Tensor):
        if x.dtype.kind != "f":
            raise _err(
                f"`{name}` phải là số thực (float)",
                f"`{name}` must be floating point, got dtype {x.dtype}",
            )
        return x
    be = get_backend()
    try:
        if be.is_array(x) or type(x).__module__.split(".")[0] in ("numpy", "cupy"):
            a = be.xp.asarray(x)  # an array keeps its floating dtype
        else:
            a = be.asarray(x)  # lists and Python numbers get the policy dtype
    except Exception as e:  # ragged lists, strings, ...
        raise _err(
            f"`{name}` không chuyển được thành mảng số",
            f"`{name}` cannot be converted to a numeric array ({e})",
        ) from e
    if a.dtype.kind in "iub":
        a = a.astype(be.dtype)
    elif a.dtype.kind != "f":
        raise _err(
            f"`{name}` phải là mảng số thực",
            f"`{name}` must be a real floating array, got dtype {a.dtype}",
        )
    return Tensor(a)


def _as_labels(labels, name: str = "labels"):
    """An integer backend array (labels are never differentiated)."""
    be = get_backend()
    a = labels.data if isinstance(labels, Tensor) else be.xp.asarray(labels)
    if a.dtype.kind not in "iu":
        raise _err(
            f"`{name}` phải là mảng số nguyên (token id hoặc {IGNORE_INDEX})",
            f"`{name}` must be an integer array (token ids or {IGNORE_INDEX}), got dtype {a.dtype}",
        )
    return a


def _out(t: Tensor, as_tensor: bool):
    return t if as_tensor else t.data


def _check_finite(t: Tensor, name: str):
    xp = get_backend().xp
    if t.data.size and not bool(xp.isfinite(t.data).all()):
        bad = int((~xp.isfinite(t.data)).sum())
        raise _err(
            f"`{name}` chứa NaN hoặc vô cực ({bad} phần tử)",
            f"`{name}` must be finite, got {bad} NaN/inf element(s)",
        )


def _check_real_scalar(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:  # 0-d arrays
            if getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None and value.dtype.kind in "iuf":
                return float(value)
        except Exception:
            pass
        raise _err(
            f"`{name}` phải là một số thực",
            f"`{name}` must be a real number, got {value!r} ({type(value).__name__})",
        )
    return float(value)


def _check_logits_labels(lg: Tensor, lab, ignore_index: int):
    if lg.ndim != 3:
        raise _err(
            "`logits` phải có dạng (B, T, V)",
            f"`logits` must have shape (B, T, V), got shape {tuple(lg.shape)}",
        )
    if lab.ndim != 2 or tuple(lab.shape) != tuple(lg.shape[:2]):
        raise _err(
            "`labels` phải có dạng (B, T) khớp với `logits`",
            f"`labels` must have shape (B, T) = {tuple(lg.shape[:2])} matching `logits`, got {tuple(lab.shape)}",
        )
    if lg.shape[2] < 1:
        raise _err("`logits` phải có V ≥ 1", f"`logits` must have a vocabulary axis V >= 1, got {lg.shape[2]}")
    # the label range is checked once, by autograd.cross_entropy (which every loss here goes through)


def _shifted_token_losses(lg: Tensor, lab, ignore_index: int) -> Tensor:
    """Per-position −log p(labels[:, t+1] | logits[:, t]), 0 where ignored: shape (B, T−1)."""
    shifted = lg[:, :-1, :]
    return ag.cross_entropy(shifted, lab[:, 1:], ignore_index=ignore_index, reduction="none")


# ============================ §1 sequence log-probability =========================================

def sequence_logps(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Sum of log-probabilities of the target tokens of each row (spec/losses.md §1).

    logits: (B, T, V) floats; labels: (B, T) integers, unshifted (labels[b, t] is the token at
    position t; prompt and padding positions are `ignore_index`). logits[:, t] predicts labels[:, t+1],
    so labels[:, 0] is never a target. Returns (B,): Σ_t log softmax(logits[b, t])[labels[b, t+1]] over
    the non-ignored targets. A row without any target token gives exactly 0 (an empty sum).
    """
    as_tensor = _any_tensor(logits)
    lg = _as_float(logits, "logits")
    lab = _as_labels(labels)
    _check_logits_labels(lg, lab, ignore_index)
    if lg.shape[1] < 2:  # no position predicts anything
        xp = get_backend().xp
        z = Tensor(xp.zeros((lg.shape[0],), dtype=lg.dtype))
        out = ag.sum(lg, axis=(1, 2)) * 0.0 + z if lg.requires_grad else z
        return _out(out, as_tensor)
    tok = _shifted_token_losses(lg, lab, ignore_index)  # (B, T-1), 0 where ignored
    return _out(0.0 - ag.sum(tok, axis=1), as_tensor)  # 0 - x: an empty row gives +0, not -0


# ============================ §2 SFT loss ===========================================================

def count_target_tokens(labels, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of non-ignored *target* tokens: labels[:, 1:] != ignore_index (labels[:, 0] is never a target).

    labels: (B, T) integers, or a list of such label arrays/lists (micro-batches of one effective
    batch; rows of different lengths are fine), whose counts are added. Returns a Python int.
    """
    if isinstance(labels, (list, tuple)) and len(labels) == 0:
        return 0
    if isinstance(labels, (list, tuple)) and not isinstance(labels[0], numbers.Number):
        first = labels[0]
        # a list of micro-batches (each 2-D), or a list of 1-D rows, or one 2-D nested list
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], numbers.Number):
            return builtins.sum(_count_row(r, ignore_index) for r in labels)
        return builtins.sum(count_target_tokens(mb, ignore_index) for mb in labels)
    lab = _as_labels(labels)
    if lab.ndim == 1:
        return _count_row(lab, ignore_index)
    if lab.ndim != 2:
        raise _err(
            "`labels` phải có dạng (B, T)",
            f"`labels` must have shape (B, T), got shape {tuple(lab.shape)}",
        )
    return int((lab[:, 1:] != ignore_index).sum())


def _count_row(row, ignore_index: int) -> int:
    r = _as_labels(row)
    if r.ndim != 1:
        raise _err("mỗi hàng `labels` phải là 1 chiều", f"each `labels` row must be 1-D, got shape {tuple(r.shape)}")
    return int((r[1:] != ignore_index).sum())


def sft_loss(logits, labels, num_items_in_batch=None, ignore_index: int = IGNORE_INDEX):
    """SFT (causal-LM) loss of one (micro-)batch (spec/losses.md §2).

    Sum over the batch of the token cross-entropies −log p(labels[:, t+1] | logits[:, t]) at the
    non-ignored targets, divided by `num_items_in_batch`: the number of non-ignored target tokens in
    the WHOLE effective batch (all micro-batches of one optimiser step, transformers ≥ 4.46), so that
    summing the micro-batch losses gives the full-batch mean. When `num_items_in_batch` is None the
    divisor is this batch's own count. Returns a scalar (0-d).

    Raises ValueError when the divisor would be zero (no target token and no `num_items_in_batch`),
    when `num_items_in_batch` is not a positive integer, or when it is smaller than this batch's own
    count (it must count a window that contains this batch). A micro-batch without target tokens but
    with `num_items_in_batch` given is valid and contributes exactly 0.
    """
    as_tensor = _any_tensor(logits)
    lg = _as_float(logits, "logits")
    lab = _as_labels(labels)
    _check_logits_labels(lg, lab, ignore_index)
    local = int((lab[:, 1:] != ignore_index).sum())
    if num_items_in_batch is None:
        if local == 0:
            raise _err(
                "sft_loss: batch không có token đích nào (mọi nhãn đều là -100), loss không xác định",
                "sft_loss: the batch has no target token (every label is ignore_index) and "
                "`num_items_in_batch` is None: the mean over zero tokens is undefined (expected at least 1 token, got 0)",
            )
        n = local
    else:
        n = _check_num_items(num_items_in_batch, "num_items_in_batch")
        if n < local:
            raise _err(
                f"`num_items_in_batch` ({n}) nhỏ hơn số token đích của chính batch này ({local})",
                f"`num_items_in_batch` must count every target token of the effective batch, which contains "
                f"this batch: expected >= {local}, got {n}",
            )
    if lg.shape[1] < 2:
        total = ag.sum(lg) * 0.0
    else:
        total = ag.cross_entropy(lg[:, :-1, :], lab[:, 1:], ignore_index=ignore_index, reduction="sum")
    return _out(total / float(n), as_tensor)


def _check_num_items(value, name: str) -> int:
    if isinstance(value, Tensor):
        value = value.data
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or float(value) != int(value) or int(value) < 1:
        raise _err(
            f"`{name}` phải là số nguyên dương (số token đích của cả batch hiệu dụng)",
            f"`{name}` must be a positive integer (the target-token count of the whole effective batch), got {value!r}",
        )
    return int(value)


# ============================ §3–4 DPO loss and rewards ============================================

def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
):
    """Per-pair DPO loss with conservative label smoothing, and the implicit rewards (spec §3, §4).

    h = (π_c − π_r) − (ref_c − ref_r);  losses = −(1−ε)·log σ(β h) − ε·log σ(−β h)   (no reduction);
    chosen_rewards = β (π_c − ref_c), rejected_rewards = β (π_r − ref_r), both detached.
    Inputs: four arrays of the same shape (normally (B,)) of summed sequence log-probabilities (§1).
    Returns (losses, chosen_rewards, rejected_rewards), each of that shape.

    Raises ValueError unless β > 0 and finite, ε ∈ [0, 0.5], the four shapes are equal and every
    input is finite.
    """
    names = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")
    raw = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    as_tensor = _any_tensor(*raw)
    pc, pr, rc, rr = (_as_float(x, n) for x, n in zip(raw, names))
    b = _check_real_scalar(beta, "beta")
    if not (math.isfinite(b) and b > 0.0):
        raise _err(
            "`beta` phải là số dương hữu hạn",
            f"`beta` must be a finite number > 0, got {beta!r}",
        )
    eps = _check_real_scalar(label_smoothing, "label_smoothing")
    if not (0.0 <= eps <= 0.5):  # also rejects NaN
        raise _err(
            "`label_smoothing` phải nằm trong [0, 0.5]",
            f"`label_smoothing` must lie in [0, 0.5], got {label_smoothing!r}",
        )
    shapes = [tuple(t.shape) for t in (pc, pr, rc, rr)]
    if len(set(shapes)) != 1:
        raise _err(
            "bốn mảng log-prob phải cùng dạng",
            "the four log-probability inputs must have equal shapes, got "
            + ", ".join(f"{n}={s}" for n, s in zip(names, shapes)),
        )
    for t, n in zip((pc, pr, rc, rr), names):
        _check_finite(t, n)

    h = (pc - pr) - (rc - rr)
    z = h * b
    losses = -ag.logsigmoid(z) * (1.0 - eps) - ag.logsigmoid(-z) * eps
    with ag.no_grad():
        chosen_rewards = (pc.detach() - rc.detach()) * b
        rejected_rewards = (pr.detach() - rr.detach()) * b
    return _out(losses, as_tensor), _out(chosen_rewards, as_tensor), _out(rejected_rewards, as_tensor)


def _host_floats(x, name: str):
    t = x.detach() if isinstance(x, Tensor) else _as_float(x, name)
    return t.data


def dpo_metrics(chosen_rewards, rejected_rewards) -> dict:
    """Batch statistics of the DPO rewards (spec §4), as Python floats.

    Returns {"chosen_rewards": mean, "rejected_rewards": mean, "reward_margin": mean of
    (chosen − rejected), "reward_accuracy": share of pairs with chosen > rejected (strict: ties count 0)}.
    Raises ValueError for unequal shapes or an empty batch.
    """
    c = _host_floats(chosen_rewards, "chosen_rewards")
    r = _host_floats(rejected_rewards, "rejected_rewards")
    _check_pair_shapes(c, r, "chosen_rewards", "rejected_rewards")
    return {
        "chosen_rewards": float(c.mean()),
        "rejected_rewards": float(r.mean()),
        "reward_margin": float((c - r).mean()),
        "reward_accuracy": float((c > r).mean()),
    }


def _check_pair_shapes(c, r, nc: str, nr: str):
    if tuple(c.shape) != tuple(r.shape):
        raise _err(
            f"`{nc}` và `{nr}` phải cùng dạng",
            f"`{nc}` and `{nr}` must have equal shapes, got {tuple(c.shape)} and {tuple(r.shape)}",
        )
    if c.size == 0:
        raise _err(
            "batch rỗng: không có cặp nào để tính trung bình",
            f"empty batch: `{nc}`/`{nr}` must hold at least one pair, got 0",
        )


# ============================ §5 reward-model loss ==================================================

def reward_loss(rewards_chosen, rewards_rejected, margin=None):
    """Per-pair Bradley–Terry reward-model loss (spec/losses.md §5): −log σ(r_c − r_r − m).

    rewards_chosen, rewards_rejected: equal shapes (normally (B,)); margin: None (m = 0), a number,
    or an array of the same shape (one margin per pair). No reduction. Raises ValueError for unequal
    shapes or non-finite inputs.
    """
    as_tensor = _any_tensor(rewards_chosen, rewards_rejected, margin)
    c = _as_float(rewards_chosen, "rewards_chosen")
    r = _as_float(rewards_rejected, "rewards_rejected")
    if tuple(c.shape) != tuple(r.shape):
        raise _err(
            "`rewards_chosen` và `rewards_rejected` phải cùng dạng",
            f"`rewards_chosen` and `rewards_rejected` must have equal shapes, got {tuple(c.shape)} and {tuple(r.shape)}",
        )
    _check_finite(c, "rewards_chosen")
    _check_finite(r, "rewards_rejected")
    d = c - r
    if margin is not None:
        m = _as_float(margin, "margin")
        if m.ndim != 0 and tuple(m.shape) != tuple(c.shape):
            raise _err(
                "`margin` phải là một số hoặc mảng cùng dạng với phần thưởng",
                f"`margin` must be a number or have the rewards' shape {tuple(c.shape)}, got {tuple(m.shape)}",
            )
        _check_finite(m, "margin")
        d = d - m
    return _out(-ag.logsigmoid(d), as_tensor)


def reward_accuracy(rewards_chosen, rewards_rejected) -> float:
    """Share of pairs with r_c > r_r (strict: a tie counts as wrong), as a Python float (spec §5)."""
    c = _host_floats(rewards_chosen, "rewards_chosen")
    r = _host_floats(rewards_rejected, "rewards_rejected")
    _check_pair_shapes(c, r, "rewards_chosen", "rewards_rejected")
    return float((c > r).mean())


# ============================ §6 normalised score =================================================

def normalize_scores(scores):
    """Z-scores of one call's scores, population standard deviation (ddof 0) (spec/losses.md §6).

    z_i = (s_i − mean(s)) / std(s). When n < 2 or all scores are exactly equal (max == min) the result
    is all zeros — never NaN. No tolerance is involved: any two different finite scores give a
    positive std. Computed after an exact power-of-two rescaling, so no overflow or underflow occurs
    for any finite input, with the corrected two-pass algorithm (the deviations are re-centred by
    their own mean), so that even a one-ulp spread gives mean 0 and std 1.

    scores: 1-D. A Python list/tuple gives a list of floats; an array gives a backend array; a Tensor
    gives a Tensor (differentiable; zero gradient in the all-zeros case). Raises ValueError for
    non-finite scores or a non-1-D input.
    """
    as_list = isinstance(scores, (list, tuple))
    as_tensor = isinstance(scores, Tensor)
    if as_list and len(scores) == 0:
        return []
    be = get_backend()
    xp = be.xp
    if as_list:
        s = Tensor(be.asarray([float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else _bad_score(v)
                               for v in scores]))
    else:
        s = _as_float(scores, "scores")
    if s.ndim != 1:
        raise _err(
            "`scores` phải là mảng 1 chiều",
            f"`scores` must be 1-D (one score per text), got shape {tuple(s.shape)}",
        )
    _check_finite(s, "scores")
    n = s.shape[0]
    if n < 2 or bool((s.data == s.data[0]).all()):
        z = Tensor(xp.zeros((n,), dtype=s.dtype))
        out = (s * 0.0) if s.requires_grad else z
    else:
        # exact rescaling by 2^-e with max|s| in [2^(e-1), 2^e): z-scores are scale-invariant, and the
        # rescaled values lie in (-1, 1), so neither the sum nor the squares overflow or underflow.
        top = float(xp.abs(s.data).max())
        k = -math.frexp(top)[1]
        s2 = s
        while k:  # 2^k in factors of at most 2^±1000, each representable (subnormal maxima need k > 1023)
            step = max(-1000, min(1000, k))
            s2 = s2 * math.ldexp(1.0, step)
            k -= step
        d = s2 - ag.mean(s2)
        d = d - ag.mean(d)  # corrected two-pass: removes the rounding error of the first mean
        var = ag.mean(d * d)
        out = d / ag.sqrt(var)
    if as_list:
        return [float(v) for v in be.to_numpy(out.data)]
    return _out(out, as_tensor)


def _bad_score(v):
    raise _err(
        "`scores` phải chứa các số thực",
        f"`scores` must hold real numbers, got {v!r} ({type(v).__name__})",
    )


# ============================ §10 reduction over an effective batch ===============================

def reduce_pair_losses(losses, num_pairs_in_batch=None):
    """The loss of one micro-batch of DPO or reward-model pairs under accumulation (spec §10).

    sum(losses) / num_pairs_in_batch, where `num_pairs_in_batch` is the number of pairs in the whole
    effective batch (all micro-batches of one optimiser step); None means this micro-batch's own
    count (a plain mean). Summing the micro-batch results over the window gives the mean over all
    pairs of the effective batch, so k micro-batches of b pairs ≡ one batch of k·b pairs.
    """
    as_tensor = _any_tensor(losses)
    t = _as_float(losses, "losses")
    local = int(t.size)
    if num_pairs_in_batch is None:
        if local == 0:
            raise _err(
                "không có cặp nào: trung bình không xác định",
                "reduce_pair_losses: no pair in the batch and `num_pairs_in_batch` is None: the mean over "
                "zero pairs is undefined (expected at least 1 pair, got 0)",
            )
        n = local
    else:
        n = _check_num_items(num_pairs_in_batch, "num_pairs_in_batch")
        if n < local:
            raise _err(
                f"`num_pairs_in_batch` ({n}) nhỏ hơn số cặp của chính batch này ({local})",
                f"`num_pairs_in_batch` must count every pair of the effective batch: expected >= {local}, got {n}",
            )
    return _out(ag.sum(t) / float(n), as_tensor)
