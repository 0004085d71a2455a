"""The online-RL formulas of spec/rl.md (spec 1.1): GRPO, RLOO and the online-DPO pair choice.

What it is for: the numbers the RL trainers compute from rollouts and every conforming implementation
must reproduce, one pure function per spec section: group-relative advantages (§2 `grpo_advantages`),
the clipped-surrogate GRPO loss with its four aggregations and accumulation rules (§3 `grpo_loss`,
§4 `grpo_metrics`), RLOO's leave-one-out advantages with the k1 KL folded into the reward (§5
`rloo_advantages`) and its sequence-level clipped loss (§6 `rloo_loss`, `rloo_metrics`), the choice of
the chosen / rejected completion for online DPO (§7 `online_dpo_pairs`; the loss is
`losses.dpo_loss`), and the per-token log-probability and entropy of the sampling distribution
(§8 `token_logps`, `token_entropy`). The formulas follow TRL v1.9.0 (file and line in spec/rl.md).

What it is not: a trainer or a sampler. Nothing here runs a model, draws tokens, steps an optimiser or
sums micro-batches; the trainers do that with the arguments stated below (`num_items_in_batch`,
`num_accumulation_steps`), so that the sum of the micro-batch losses of one optimiser step is the
step's loss. Only `logps` (and `logits`) carry gradients: old, reference log-probs, advantages and
masks are constants (TRL detaches them too).

Input kinds (as offline.py): Tensors in give Tensors out (losses differentiable, advantages detached);
arrays, NumPy arrays or lists in give backend arrays out. Errors are ValueErrors, Vietnamese first,
English after the slash, naming the argument, what was expected and what came, raised before any
arithmetic.
"""

from __future__ import annotations

import math
import numbers

from ..backends import get_backend
from ..core import autograd as ag
from ..core.autograd import Tensor
from .offline import _as_float, _check_finite, _check_real_scalar, _err, _out

__all__ = [
    "ADVANTAGE_EPS",
    "GRPO_LOSS_TYPES",
    "grpo_advantages",
    "grpo_loss",
    "grpo_metrics",
    "rloo_advantages",
    "rloo_loss",
    "rloo_metrics",
    "online_dpo_pairs",
    "token_logps",
    "token_entropy",
]

#: Added to the standard deviation before dividing (TRL: 1e-4, not 1e-8).
ADVANTAGE_EPS = 1e-4
#: The aggregations of `grpo_loss` (spec/rl.md §3.3).
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
_SCALE_REWARDS = ("group", "batch", "none")
_IS_LEVELS = ("token", "sequence")


# ============================ validation helpers ==================================================

def _choice(value, name: str, options: tuple) -> str:
    if not isinstance(value, str) or value not in options:
        raise _err(
            f"`{name}` phải là một trong {', '.join(options)}",
            f"`{name}` must be one of {options}, got {value!r}",
        )
    return value


def _int_arg(value, name: str, minimum: int) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or int(value) < minimum:
        raise _err(
            f"`{name}` phải là số nguyên ≥ {minimum}",
            f"`{name}` must be an integer >= {minimum}, got {value!r}",
        )
    return int(value)


def _positive(value, name: str) -> float:
    v = _check_real_scalar(value, name)
    if not (math.isfinite(v) and v > 0.0):
        raise _err(f"`{name}` phải là số dương hữu hạn", f"`{name}` must be a finite number > 0, got {value!r}")
    return v


def _non_negative(value, name: str) -> float:
    v = _check_real_scalar(value, name)
    if not (math.isfinite(v) and v >= 0.0):
        raise _err(f"`{name}` phải là số hữu hạn ≥ 0", f"`{name}` must be a finite number >= 0, got {value!r}")
    return v


def _const(x, name: str, dtype=None):
    """A float backend array of a constant input (a Tensor's data, detached)."""
    t = _as_float(x.detach() if isinstance(x, Tensor) else x, name)
    a = t.data
    return a if dtype is None or a.dtype == dtype else a.astype(dtype)


def _shape(a, name: str, want: tuple, what: str):
    if tuple(a.shape) != tuple(want):
        raise _err(
            f"`{name}` phải có dạng {what} = {tuple(want)}",
            f"`{name}` must have shape {what} = {tuple(want)}, got {tuple(a.shape)}",
        )


def _finite(a, name: str):
    _check_finite(Tensor(a), name)


def _mask01(mask, shape, dtype):
    """The completion mask as floats 0/1 of `shape` (bool, integer or float input)."""
    xp = get_backend().xp
    m = mask.data if isinstance(mask, Tensor) else xp.asarray(mask)
    _shape(m, "mask", shape, "(B, T)")
    if m.dtype.kind not in "biuf":
        raise _err("`mask` phải là mảng 0/1", f"`mask` must be a 0/1 (bool, int or float) array, got dtype {m.dtype}")
    bad = int(((m != 0) & (m != 1)).sum()) if m.size else 0
    if bad:
        raise _err(
            f"`mask` chỉ được chứa 0 và 1 ({bad} phần tử khác)",
            f"`mask` must hold only 0 and 1, got {bad} other element(s)",
        )
    return m.astype(dtype)


def _epsilons(epsilon_low, epsilon_high) -> tuple:
    lo = _positive(epsilon_low, "epsilon_low")
    hi = lo if epsilon_high is None else _positive(epsilon_high, "epsilon_high")
    return lo, hi


def _rewards(rewards, num_generations) -> tuple:
    """(rewards (B,) float array, G): 1-D, NaN allowed (unscorable), ±inf rejected, G divides B."""
    as_tensor = isinstance(rewards, Tensor)
    r = _const(rewards, "rewards")
    if r.ndim != 1 or r.shape[0] < 1:
        raise _err(
            "`rewards` phải là mảng 1 chiều, mỗi completion một phần thưởng",
            f"`rewards` must be 1-D with at least one reward (one per completion), got shape {tuple(r.shape)}",
        )
    G = _int_arg(num_generations, "num_generations", 1)
    if r.shape[0] % G:
        raise _err(
            f"số completion ({r.shape[0]}) phải chia hết cho `num_generations` ({G})",
            f"the number of completions B = {r.shape[0]} must be divisible by `num_generations` = {G} "
            f"(B = prompts × num_generations), got remainder {r.shape[0] % G}",
        )
    xp = get_backend().xp
    n_inf = int(xp.isinf(r).sum())
    if n_inf:
        raise _err(
            f"`rewards` chứa vô cực ({n_inf} phần tử); NaN (không chấm được) thì được phép",
            f"`rewards` must be finite or NaN (unscorable), got {n_inf} infinite element(s)",
        )
    return r, G, as_tensor


# ============================ NaN-aware statistics (TRL trainer/utils.py nanstd) ===================

def _nanmean(x, axis=None):
    xp = get_backend().xp
    ok = ~xp.isnan(x)
    n = ok.sum(axis=axis).astype(x.dtype)  # float counts: an integer divisor would promote float32
    s = xp.where(ok, x, 0.0).sum(axis=axis)
    return xp.where(n > 0, s / xp.maximum(n, 1), xp.nan)


def _nanstd(x, axis=None):
    """Bessel-corrected std over the non-NaN entries; NaN where fewer than 2 (TRL `nanstd`)."""
    xp = get_backend().xp
    ok = ~xp.isnan(x)
    n = ok.sum(axis=axis).astype(x.dtype)
    m = _nanmean(x, axis)
    mk = m if axis is None else xp.expand_dims(m, axis)
    sq = xp.where(ok, (x - mk) ** 2, 0.0).sum(axis=axis)
    var = (sq / xp.maximum(n, 1)) * (n / xp.maximum(n - 1, 1))  # nanmean((x-m)^2) · n/(n−1), TRL's order
    return xp.where(n > 1, xp.sqrt(var), xp.nan)


def _nan_to_zero(a):
    xp = get_backend().xp
    return xp.where(xp.isnan(a), xp.zeros((), dtype=a.dtype), a)


# ============================ §2 GRPO advantages ==================================================

def grpo_advantages(rewards, num_generations, scale_rewards="group"):
    """Group-relative advantages (spec/rl.md §2; TRL grpo_trainer.py `_generate_and_score_completions`).

    rewards: (B,) with B = prompts × G, the G completions of one prompt contiguous (rows p·G … p·G+G−1);
    NaN marks an unscorable completion. A = R − nanmean_group(R), then ÷ (std + 1e-4) with std the
    Bessel-corrected nanstd of the group (`"group"`) or of the whole batch (`"batch"`); `"none"` does not
    divide. G = 1 with "group" gives std 0 (A = 0). Where A is NaN (an unscorable row, a group or batch
    with too few scorable rewards) it is 0. Returns (B,) advantages without gradient.
    """
    r, G, as_tensor = _rewards(rewards, num_generations)
    scale = _choice(scale_rewards, "scale_rewards", _SCALE_REWARDS)
    xp = get_backend().xp
    B = r.shape[0]
    grouped = r.reshape(B // G, G)  # (P, G): one row per prompt
    mean = xp.repeat(_nanmean(grouped, axis=1), G)  # (B,)
    adv = r - mean
    if scale == "group":
        std = xp.repeat(_nanstd(grouped, axis=1), G) if G > 1 else xp.zeros_like(r)  # (B,)
        adv = adv / (std + ADVANTAGE_EPS)
    elif scale == "batch":
        std = _nanstd(r) if B > 1 else xp.zeros((), dtype=r.dtype)
        adv = adv / (std + ADVANTAGE_EPS)
    return _out(Tensor(_nan_to_zero(adv)), as_tensor)


# ============================ §3 GRPO loss ========================================================

class _Rollout:
    """Validated per-token inputs of grpo_loss / grpo_metrics / rloo_loss (constants as arrays)."""

    def __init__(self, logps, old_logps, advantages, mask, ref_logps, adv_token_ok: bool):
        self.as_tensor = isinstance(logps, Tensor)
        self.logps = _as_float(logps, "logps")
        if self.logps.ndim != 2 or self.logps.shape[0] < 1:
            raise _err(
                "`logps` phải có dạng (B, T) với B ≥ 1",
                f"`logps` must have shape (B, T) with B >= 1 (per-token log-probs), got {tuple(self.logps.shape)}",
            )
        dt = self.logps.dtype
        self.B, self.T = (int(s) for s in self.logps.shape)
        shp = (self.B, self.T)
        _finite(self.logps.data, "logps")
        self.old = self.logps.data.copy() if old_logps is None else _const(old_logps, "old_logps", dt)
        _shape(self.old, "old_logps", shp, "(B, T)")
        _finite(self.old, "old_logps")
        a = _const(advantages, "advantages", dt)
        if not ((a.ndim == 1 and a.shape[0] == self.B) or (adv_token_ok and tuple(a.shape) == shp)):
            want = f"({self.B},)" + (f" or {shp}" if adv_token_ok else "")
            raise _err(f"`advantages` phải có dạng {want}", f"`advantages` must have shape {want}, got {tuple(a.shape)}")
        _finite(a, "advantages")
        self.adv = a[:, None] if a.ndim == 1 else a  # (B, 1) or (B, T)
        self.mask = _mask01(mask, shp, dt)
        self.ref = None
        if ref_logps is not None:
            self.ref = _const(ref_logps, "ref_logps", dt)
            _shape(self.ref, "ref_logps", shp, "(B, T)")
            _finite(self.ref, "ref_logps")


def _log_weights(ro: _Rollout, level: str) -> Tensor:
    """log r: (B, T) per token, or (B, 1) the masked mean per sequence; masked positions give log r = 0."""
    xp = get_backend().xp
    log_ratio = (ro.logps - ro.old) * ro.mask  # (B, T)
    if level == "token":
        return log_ratio
    count = xp.maximum(ro.mask.sum(axis=1, keepdims=True), 1.0)  # (B, 1)
    return ag.sum(log_ratio, axis=1, keepdims=True) / count  # (B, 1)


def _clipped_objective(ratio: Tensor, adv, lo: float, hi: float, delta) -> Tensor:
    """−min(r̃·A, clip(r, 1−lo, 1+hi)·A), r̃ = min(r, δ); gradients as torch.clamp / torch.minimum."""
    xp = get_backend().xp
    rd = ratio.data
    inside = (rd >= 1.0 - lo) & (rd <= 1.0 + hi)  # clamp passes the gradient on the closed interval
    clipped = ag.where(inside, ratio, xp.clip(rd, 1.0 - lo, 1.0 + hi))
    capped = ratio if delta is None else ag.where(rd <= delta, ratio, xp.minimum(rd, delta))
    a, b = capped * adv, clipped * adv
    tie = a * 0.5 + b * 0.5  # torch.minimum shares the gradient equally at a tie
    return -ag.where(a.data < b.data, a, ag.where(a.data > b.data, b, tie))


def _k3(ro: _Rollout) -> Tensor:
    """exp(ref − logp) − (ref − logp) − 1 per token (masked positions: 0)."""
    d = (Tensor(ro.ref) - ro.logps) * ro.mask  # (B, T)
    return ag.exp(d) - d - 1.0


def _dapo_count(num_items_in_batch, local: int) -> int:
    if num_items_in_batch is None:
        return local
    n = num_items_in_batch
    if getattr(n, "ndim", None) == 0 and hasattr(n, "item"):
        n = n.item()
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    n = _int_arg(n, "num_items_in_batch", 0)
    if n < local:
        raise _err(
            f"`num_items_in_batch` ({n}) nhỏ hơn số token của chính micro-batch này ({local})",
            f"`num_items_in_batch` must count every completion token of the optimiser step's batch, which "
            f"contains this micro-batch: expected >= {local}, got {n}",
        )
    return n


def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, beta=0.0, epsilon_low=0.2, epsilon_high=None,
              loss_type="dapo", importance_sampling_level="token", delta=None, num_items_in_batch=None,
              max_completion_length=None, num_accumulation_steps=1):
    """GRPO loss of one micro-batch (spec/rl.md §3; TRL grpo_trainer.py `_compute_loss`). Returns a scalar.

    logps (B, T): per-token log-probs of the completion tokens under the policy (logits ÷ temperature,
    §8), the only differentiable input; old_logps (B, T) or None (= logps, detached: one update per
    rollout); advantages (B,) or (B, T); mask (B, T) 0/1. Ratio r = exp(logp − old) per token, or with
    importance_sampling_level="sequence" exp of the masked mean log-ratio of the row. Per token:
    ℓ = −min(min(r, δ)·A, clip(r, 1−ε_low, 1+ε_high)·A) + β·KL3 (KL3 needs ref_logps, β > 0).
    Aggregation (M = mask, k = num_accumulation_steps; summing the k micro-batch losses of a step gives
    the step loss): grpo mean_b[Σ_t ℓM / max(Σ_t M, 1)] / k; bnpo Σ ℓM / max(Σ M, 1) / k;
    dr_grpo Σ ℓM / (B · max_completion_length) / k; dapo Σ ℓM / max(N, 1), N = num_items_in_batch
    (mask tokens of the whole step; None = this micro-batch's), no division by k.
    """
    lt = _choice(loss_type, "loss_type", GRPO_LOSS_TYPES)
    level = _choice(importance_sampling_level, "importance_sampling_level", _IS_LEVELS)
    lo, hi = _epsilons(epsilon_low, epsilon_high)
    b = _non_negative(beta, "beta")
    dl = None if delta is None else _positive(delta, "delta")
    k = _int_arg(num_accumulation_steps, "num_accumulation_steps", 1)
    ro = _Rollout(logps, old_logps, advantages, mask, ref_logps, adv_token_ok=True)
    if b > 0.0 and ro.ref is None:
        raise _err(
            "`beta` > 0 cần `ref_logps` (log-prob của mô hình tham chiếu)",
            f"`beta` = {b} > 0 needs `ref_logps` (the reference model's per-token log-probs), got None",
        )
    L = None
    if lt == "dr_grpo":
        if max_completion_length is None:
            raise _err("loss_type 'dr_grpo' cần `max_completion_length`",
                       "loss_type 'dr_grpo' needs `max_completion_length` (an integer >= 1), got None")
        L = _int_arg(max_completion_length, "max_completion_length", 1)
        longest = int(ro.mask.sum(axis=1).max())
        if longest > L:
            raise _err(
                f"một completion có {longest} token > `max_completion_length` ({L})",
                f"`max_completion_length` must bound every row's mask count: expected >= {longest}, got {L}",
            )
    N = _dapo_count(num_items_in_batch, int(ro.mask.sum())) if lt == "dapo" else None

    per_token = _clipped_objective(ag.exp(_log_weights(ro, level)), ro.adv, lo, hi, dl)  # (B, T) or (B, 1)
    if b > 0.0:
        per_token = per_token + _k3(ro) * b
    weighted = per_token * ro.mask  # (B, T)
    if lt == "grpo":
        rows = ag.sum(weighted, axis=1) / get_backend().xp.maximum(ro.mask.sum(axis=1), 1.0)  # (B,)
        loss = ag.mean(rows) / float(k)
    elif lt == "bnpo":
        loss = ag.sum(weighted) / max(float(ro.mask.sum()), 1.0) / float(k)
    elif lt == "dr_grpo":
        loss = ag.sum(weighted) / float(ro.B * L) / float(k)
    else:
        loss = ag.sum(weighted) / float(max(N, 1))
    return _out(loss, ro.as_tensor)


# ============================ §4 GRPO metrics ======================================================

def _clip_flags(ratio, adv, lo: float, hi: float) -> tuple:
    low = (ratio < 1.0 - lo) & (adv < 0)
    high = (ratio > 1.0 + hi) & (adv > 0)
    return low, high, low | high


def grpo_metrics(logps, old_logps, advantages, mask, ref_logps=None, epsilon_low=0.2, epsilon_high=None,
                 importance_sampling_level="token") -> dict:
    """Logged statistics of one GRPO micro-batch (spec/rl.md §4; TRL `_compute_loss`, "Log the metrics").

    Python floats: "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean" (share of
    mask tokens — of sequences for importance_sampling_level="sequence" — whose ratio is clipped below
    with A < 0, above with A > 0, either), "clip_ratio/low_min" and "clip_ratio/high_max" (min / max
    over the rows with a token of the per-row shares; 0 when no row has one), "kl" (mean k3 KL over the
    mask tokens; present iff ref_logps is given) and "num_tokens" (Σ mask). Means over zero tokens are 0.
    """
    level = _choice(importance_sampling_level, "importance_sampling_level", _IS_LEVELS)
    lo, hi = _epsilons(epsilon_low, epsilon_high)
    ro = _Rollout(logps, old_logps, advantages, mask, ref_logps, adv_token_ok=True)
    xp = get_backend().xp
    with ag.no_grad():
        ratio = ag.exp(_log_weights(ro, level)).data  # (B, T) or (B, 1)
    flags = _clip_flags(ratio, ro.adv, lo, hi)
    m = ro.mask
    n_tok = float(m.sum())
    row_tok = m.sum(axis=1)  # (B,)
    out = {}
    for key, f in zip(("low", "high", "region"), flags):  # f: (B, 1) per sequence or (B, T) per token
        f = f.astype(m.dtype)
        if level == "sequence" and f.shape[1] == 1:  # one value per sequence, every row counts (TRL)
            out[f"clip_ratio/{key}_mean"] = float(f.mean())
            per_row, has = f[:, 0], xp.ones((ro.B,), dtype=bool)
        else:
            f = xp.broadcast_to(f, m.shape)
            out[f"clip_ratio/{key}_mean"] = float((f * m).sum()) / n_tok if n_tok else 0.0
            per_row, has = (f * m).sum(axis=1) / xp.maximum(row_tok, 1.0), row_tok > 0
        if key == "low":
            out["clip_ratio/low_min"] = float(per_row[has].min()) if bool(has.any()) else 0.0
        if key == "high":
            out["clip_ratio/high_max"] = float(per_row[has].max()) if bool(has.any()) else 0.0
    if ro.ref is not None:
        with ag.no_grad():
            kl = _k3(ro).data
        out["kl"] = float((kl * m).sum()) / n_tok if n_tok else 0.0
    out["num_tokens"] = n_tok
    return out


# ============================ §5 RLOO advantages ==================================================

def _clip_range(value):
    if value is None:
        return None
    try:
        lo, hi = (float(_check_real_scalar(v, "reward_clip_range")) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise _err(
            "`reward_clip_range` phải là cặp (thấp, cao) hữu hạn với thấp ≤ cao",
            f"`reward_clip_range` must be None or a pair (low, high) of finite numbers with low <= high, got {value!r}",
        )
    return lo, hi


def rloo_advantages(rewards, num_generations, old_logps=None, ref_logps=None, mask=None, beta=0.0,
                    normalize_advantages=False, reward_clip_range=None):
    """RLOO advantages (spec/rl.md §5; TRL rloo_trainer.py L1517–1560). Returns (B,), no gradient.

    rewards (B,), groups of G contiguous rows as grpo_advantages, NaN = unscorable. In order: clip to
    reward_clip_range (if given); R ← R − β·Σ_t (old_logps − ref_logps)·mask (k1 KL summed per sequence;
    needs old_logps, ref_logps, mask (B, T) when β > 0); A_i = R_i − (Σ_j R_j − R_i)/(c − 1) over the
    c scorable rows of the group (G = 1: A = 0); with normalize_advantages, A ← (A − nanmean A) /
    (nanstd A + 1e-4) over the batch (Bessel std). Undefined (NaN) advantages become 0.
    """
    r, G, as_tensor = _rewards(rewards, num_generations)
    b = _non_negative(beta, "beta")
    rng = _clip_range(reward_clip_range)
    if not isinstance(normalize_advantages, bool):
        raise _err("`normalize_advantages` phải là True/False",
                   f"`normalize_advantages` must be a bool, got {normalize_advantages!r}")
    xp = get_backend().xp
    B = r.shape[0]
    kl = None
    if b > 0.0:
        if old_logps is None or ref_logps is None or mask is None:
            missing = [n for n, v in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask)) if v is None]
            raise _err(f"`beta` > 0 cần {', '.join(missing)}",
                       f"`beta` = {b} > 0 needs old_logps, ref_logps and mask of shape (B, T); missing: {missing}")
        old = _const(old_logps, "old_logps", r.dtype)
        if old.ndim != 2 or old.shape[0] != B:
            raise _err(f"`old_logps` phải có dạng ({B}, T)", f"`old_logps` must have shape ({B}, T), got {tuple(old.shape)}")
        ref = _const(ref_logps, "ref_logps", r.dtype)
        _shape(ref, "ref_logps", old.shape, "(B, T)")
        m = _mask01(mask, tuple(old.shape), r.dtype)
        _finite(old, "old_logps")
        _finite(ref, "ref_logps")
        kl = ((old - ref) * m).sum(axis=1)  # (B,) k1, summed over the completion
    if rng is not None:
        r = xp.where(xp.isnan(r), r, xp.clip(r, rng[0], rng[1]))
    if kl is not None:
        r = r - b * kl
    if G > 1:
        grouped = r.reshape(B // G, G)  # (P, G)
        count = (~xp.isnan(grouped)).sum(axis=1, keepdims=True).astype(r.dtype)  # (P, 1) scorable rows
        total = xp.where(xp.isnan(grouped), 0.0, grouped).sum(axis=1, keepdims=True)  # (P, 1)
        baseline = xp.where(count > 1, (total - grouped) / xp.maximum(count - 1, 1), xp.nan)  # (P, G)
        adv = r - baseline.reshape(B)
    else:  # no sibling: no baseline, A = 0 (TRL)
        adv = xp.zeros_like(r)
    if normalize_advantages:
        adv = (adv - _nanmean(adv)) / (_nanstd(adv) + ADVANTAGE_EPS)
    return _out(Tensor(_nan_to_zero(adv)), as_tensor)


# ============================ §6 RLOO loss =========================================================

def _sequence_ratio(ro: _Rollout) -> Tensor:
    """exp(Σ_t logp·M − Σ_t old·M): (B,)."""
    s_old = (ro.old * ro.mask).sum(axis=1)  # (B,)
    return ag.exp(ag.sum(ro.logps * ro.mask, axis=1) - s_old)


def rloo_loss(logps, old_logps, advantages, mask, epsilon_low=0.2, epsilon_high=None, num_accumulation_steps=1):
    """RLOO loss of one micro-batch (spec/rl.md §6; TRL rloo_trainer.py L1683–1692). Returns a scalar.

    logps, old_logps (or None = logps detached), mask: (B, T); advantages: (B,). r = exp(Σ_t logp·M −
    Σ_t old·M) per sequence; loss = mean_b −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) / k, k =
    num_accumulation_steps (TRL returns the mean and transformers' Trainer divides by k).
    """
    lo, hi = _epsilons(epsilon_low, epsilon_high)
    k = _int_arg(num_accumulation_steps, "num_accumulation_steps", 1)
    ro = _Rollout(logps, old_logps, advantages, mask, None, adv_token_ok=False)
    per_seq = _clipped_objective(_sequence_ratio(ro), ro.adv[:, 0], lo, hi, None)  # (B,)
    return _out(ag.mean(per_seq) / float(k), ro.as_tensor)


def rloo_metrics(logps, old_logps, advantages, mask, epsilon_low=0.2, epsilon_high=None) -> dict:
    """Clip statistics of one RLOO micro-batch as Python floats: "clip_ratio/low_mean", "clip_ratio/high_mean",
    "clip_ratio/region_mean" (shares of sequences), "clip_ratio/low_min", "clip_ratio/high_max" (over sequences)."""
    lo, hi = _epsilons(epsilon_low, epsilon_high)
    ro = _Rollout(logps, old_logps, advantages, mask, None, adv_token_ok=False)
    with ag.no_grad():
        ratio = _sequence_ratio(ro).data
    low, high, region = (f.astype(ratio.dtype) for f in _clip_flags(ratio, ro.adv[:, 0], lo, hi))
    return {"clip_ratio/low_mean": float(low.mean()), "clip_ratio/high_mean": float(high.mean()),
            "clip_ratio/region_mean": float(region.mean()), "clip_ratio/low_min": float(low.min()),
            "clip_ratio/high_max": float(high.max())}


# ============================ §7 online DPO pairs =================================================

def online_dpo_pairs(rewards, has_eos, missing_eos_penalty=None):
    """Chosen and rejected row of each prompt's two completions (spec/rl.md §7; TRL online_dpo_trainer.py L1199–1208).

    rewards (2P,) finite, has_eos (2P,) bool: rows 2p and 2p+1 are prompt p's first and second sample.
    With a penalty, R_i ← R_i − penalty where has_eos[i] is False. Chosen = the higher R; a tie goes
    to the first sample. Returns (chosen_index, rejected_index), int64 arrays (P,) of row indices.
    """
    xp = get_backend().xp
    r = _const(rewards, "rewards")
    if r.ndim != 1 or r.shape[0] < 2 or r.shape[0] % 2:
        raise _err(
            "`rewards` phải là mảng 1 chiều độ dài chẵn (2 completion mỗi prompt)",
            f"`rewards` must be 1-D with an even length >= 2 (two completions per prompt), got shape {tuple(r.shape)}",
        )
    _finite(r, "rewards")
    e = has_eos.data if isinstance(has_eos, Tensor) else xp.asarray(has_eos)
    _shape(e, "has_eos", r.shape, "(2P,)")
    if e.dtype.kind != "b" and not (e.dtype.kind in "iu" and bool(((e == 0) | (e == 1)).all())):
        raise _err("`has_eos` phải là mảng bool", f"`has_eos` must be a bool (or 0/1) array, got dtype {e.dtype}")
    if missing_eos_penalty is not None:
        p = _non_negative(missing_eos_penalty, "missing_eos_penalty")
        r = xp.where(e.astype(bool), r, r - p)
    pairs = r.reshape(-1, 2)  # (P, 2): first and second sample of each prompt
    first_wins = pairs[:, 0] >= pairs[:, 1]  # a tie goes to the first sample
    base = 2 * xp.arange(pairs.shape[0], dtype=xp.int64)  # (P,)
    chosen = base + xp.where(first_wins, 0, 1).astype(xp.int64)
    return chosen, base + 1 - (chosen - base)


# ============================ §8 log-probs and entropy of the sampling distribution ==============

def _scaled_logits(logits, temperature):
    t = _positive(temperature, "temperature")
    lg = _as_float(logits, "logits")
    if lg.ndim < 1 or lg.shape[-1] < 1:
        raise _err("`logits` phải có trục từ vựng V ≥ 1",
                   f"`logits` must have a last (vocabulary) axis of size >= 1, got shape {tuple(lg.shape)}")
    _check_finite(lg, "logits")
    return lg if t == 1.0 else lg / t


def token_logps(logits, token_ids, temperature=1.0):
    """log softmax(logits / temperature)[token_ids] over the whole vocabulary (spec/rl.md §8; TRL L1517–1521).

    logits (..., V), already aligned: logits[..., t, :] are the scores that produced token_ids[..., t].
    Returns (...) log-probs, differentiable w.r.t. logits. Top-k / top-p are NOT applied (as TRL).
    """
    as_tensor = isinstance(logits, Tensor)
    z = _scaled_logits(logits, temperature)
    xp = get_backend().xp
    ids = token_ids.data if isinstance(token_ids, Tensor) else xp.asarray(token_ids)
    if ids.dtype.kind not in "iu" or tuple(ids.shape) != tuple(z.shape[:-1]):
        raise _err(
            "`token_ids` phải là mảng số nguyên có dạng logits.shape[:-1]",
            f"`token_ids` must be an integer array of shape {tuple(z.shape[:-1])}, got {ids.dtype} {tuple(ids.shape)}",
        )
    V = z.shape[-1]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise _err(f"`token_ids` phải nằm trong [0, {V})",
                   f"`token_ids` must lie in [0, {V}), got range [{int(ids.min())}, {int(ids.max())}]")
    lp = ag.gather_last(ag.log_softmax(z, axis=-1), ids[..., None])  # (..., 1)
    return _out(lp.reshape(tuple(ids.shape)), as_tensor)


def token_entropy(logits, temperature=1.0):
    """Entropy −Σ_v p log p of softmax(logits / temperature), per position (spec/rl.md §8; TRL `entropy_from_logits`).

    logits (..., V) → (...). Differentiable; the trainers log its masked mean ("entropy").
    """
    as_tensor = isinstance(logits, Tensor)
    z = _scaled_logits(logits, temperature)
    lp = ag.log_softmax(z, axis=-1)
    return _out(0.0 - ag.sum(ag.exp(lp) * lp, axis=-1), as_tensor)
