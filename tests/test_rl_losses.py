"""Tests of vietnamese_ai_ref.losses.rl: hand-computed cases, Hypothesis properties, gradients, validation.

What it is for: the numbers spec/rl.md states (GRPO/RLOO advantages, the GRPO loss with its four
aggregations and accumulation rules, the RLOO loss, the online-DPO pair choice, token log-probs and
entropy), checked on small cases worked out by hand, on generated inputs (group means, clipping
bounds, aggregation identities, micro-batch sums), by finite differences in float64 with a random
upstream gradient, and on bad inputs (bilingual ValueErrors naming the argument).
What it is not: the torch oracle (tests/test_rl_losses_torch.py) or the golden vectors (tests/test_rl_vectors.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vietnamese_ai_ref.losses import rl as R
from vietnamese_ai_ref.core.autograd import Tensor
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.gradcheck import gradcheck

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAN = float("nan")


@pytest.fixture(autouse=True)
def float64_numpy():
    with use_backend("numpy", "float64"):
        yield


def _close(a, b, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=atol)


def _grad(fn, lp, up=1.0):
    x = Tensor(np.array(lp, dtype=float), requires_grad=True)
    out = fn(x)
    out.backward(np.asarray(up, dtype=float))
    return float(out.data), x.grad


# ------------------------------------------------------------------ §2 grpo_advantages, by hand
def test_grpo_advantages_group_scaling_by_hand():
    got = R.grpo_advantages([1.0, 2.0, 3.0, 5.0, 5.0, NAN], 3)
    # group 1: mean 2, Bessel std 1; group 2: [5, 5] scorable, std 0 -> 0; the NaN row -> 0
    _close(got, [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0], rtol=1e-15)


def test_grpo_advantages_batch_and_none_by_hand():
    r = [1.0, 2.0, 3.0, 4.0]
    std = math.sqrt(5.0 / 3.0)  # Bessel std of 1, 2, 3, 4
    _close(R.grpo_advantages(r, 2, "batch"), np.array([-0.5, 0.5, -0.5, 0.5]) / (std + 1e-4), rtol=1e-15)
    _close(R.grpo_advantages(r, 2, "none"), [-0.5, 0.5, -0.5, 0.5], rtol=0, atol=0)


def test_grpo_advantages_edge_cases():
    for scale in ("group", "batch", "none"):
        np.testing.assert_array_equal(R.grpo_advantages([1.0, -2.0, 7.0], 1, scale), np.zeros(3))  # G = 1
    # a group with one scorable reward has no std (NaN): all its advantages are 0
    _close(R.grpo_advantages([NAN, NAN, 4.0, 1.0, 2.0, 3.0], 3), [0, 0, 0, -1 / 1.0001, 0, 1 / 1.0001], rtol=1e-15)
    np.testing.assert_array_equal(R.grpo_advantages([NAN] * 4, 2), np.zeros(4))  # nothing scorable
    np.testing.assert_array_equal(R.grpo_advantages([NAN, 1.0, NAN, NAN], 2, "batch"), np.zeros(4))  # batch std NaN
    a = R.grpo_advantages(Tensor(np.array([0.0, 1.0])), 2)
    assert isinstance(a, Tensor) and not a.requires_grad


# ------------------------------------------------------------------ §3 grpo_loss, by hand
MASK = np.array([[1, 1, 0], [1, 0, 0]])
LP = np.array([[-1.0, -2.0, -9.0], [-0.5, -3.0, -4.0]])


@pytest.mark.parametrize("loss_type,kw,value,grad", [
    # r = 1 everywhere, A = [1, -3]: per-token loss -A on the 3 mask tokens
    ("grpo", {}, (-1.0 + 3.0) / 2, [[-0.25, -0.25, 0.0], [1.5, 0.0, 0.0]]),
    ("grpo", {"num_accumulation_steps": 2}, 0.5, [[-0.125, -0.125, 0.0], [0.75, 0.0, 0.0]]),
    ("bnpo", {}, (-2.0 + 3.0) / 3, [[-1 / 3, -1 / 3, 0.0], [1.0, 0.0, 0.0]]),
    ("dr_grpo", {"max_completion_length": 4}, 1.0 / 8, [[-1 / 8, -1 / 8, 0.0], [3 / 8, 0.0, 0.0]]),
    ("dapo", {"num_items_in_batch": 10}, 1.0 / 10, [[-0.1, -0.1, 0.0], [0.3, 0.0, 0.0]]),
    ("dapo", {"num_items_in_batch": 10, "num_accumulation_steps": 5}, 1.0 / 10, [[-0.1, -0.1, 0.0], [0.3, 0.0, 0.0]]),
    ("dapo", {}, 1.0 / 3, [[-1 / 3, -1 / 3, 0.0], [1.0, 0.0, 0.0]]),
])
def test_grpo_loss_aggregations_by_hand(loss_type, kw, value, grad):
    v, g = _grad(lambda x: R.grpo_loss(x, LP, [1.0, -3.0], MASK, loss_type=loss_type, **kw), LP)
    assert v == pytest.approx(value, rel=1e-15)
    _close(g, grad, rtol=1e-15)


@pytest.mark.parametrize("ratio,adv,loss,grad", [
    (1.5, 1.0, -1.2, 0.0),    # A > 0, r above 1 + ε: clipped, no gradient
    (0.5, 1.0, -0.5, -0.5),   # A > 0, r below 1 − ε: unclipped branch is the minimum, gradient −A·r
    (0.5, -1.0, 0.8, 0.0),    # A < 0, r below 1 − ε: clipped
    (1.5, -1.0, 1.5, 1.5),    # A < 0, r above 1 + ε: unclipped (−A·r = 1.5)
    (1.1, 2.0, -2.2, -2.2),   # inside the interval
])
def test_grpo_clipping_by_hand(ratio, adv, loss, grad):
    v, g = _grad(lambda x: R.grpo_loss(x, [[0.0]], [adv], [[1]], loss_type="bnpo"), [[math.log(ratio)]])
    assert v == pytest.approx(loss, rel=1e-14)
    assert float(g[0, 0]) == pytest.approx(grad, rel=1e-14, abs=1e-300)


def test_grpo_clipping_asymmetric_and_delta_by_hand():
    f = lambda lp, **kw: _grad(lambda x: R.grpo_loss(x, [[0.0]], [kw.pop("adv")], [[1]], loss_type="bnpo", **kw), [[lp]])
    v, g = f(math.log(1.25), adv=1.0, epsilon_high=0.28)  # DAPO's clip-higher: 1.25 < 1.28 is not clipped
    assert (v, float(g[0, 0])) == pytest.approx((-1.25, -1.25), rel=1e-14)
    v, g = f(math.log(1.5), adv=-1.0, delta=1.4)  # δ caps the unclipped ratio for A < 0
    assert (v, float(g[0, 0])) == pytest.approx((1.4, 0.0), rel=1e-14)
    v, g = f(math.log(1.3), adv=-1.0, delta=1.4)  # below δ: unchanged
    assert (v, float(g[0, 0])) == pytest.approx((1.3, 1.3), rel=1e-14)


def test_grpo_k3_kl_and_sequence_level_by_hand():
    # logp = ref + log 2 at r = 1, A = 0: loss = β·k3 = β(e^{−log 2} + log 2 − 1); ∂/∂logp = β(1 − e^{ref−logp})
    ref = [[-1.0]]
    v, g = _grad(lambda x: R.grpo_loss(x, None, [0.0], [[1]], ref, beta=0.1, loss_type="bnpo"), [[-1.0 + math.log(2)]])
    assert v == pytest.approx(0.1 * (0.5 + math.log(2) - 1), rel=1e-14)
    assert float(g[0, 0]) == pytest.approx(0.1 * 0.5, rel=1e-14)
    # sequence level: log-ratios 0.2, −0.1 and a masked 5.0 → r = e^{0.05} on both tokens
    old = [[0.0, 0.0, 0.0]]
    v, g = _grad(lambda x: R.grpo_loss(x, old, [1.0], [[1, 1, 0]], loss_type="bnpo", importance_sampling_level="sequence"),
                 [[0.2, -0.1, 5.0]])
    r = math.exp(0.05)
    assert v == pytest.approx(-r, rel=1e-14)
    _close(g, [[-r / 2, -r / 2, 0.0]], rtol=1e-14)


def test_grpo_all_masked_rows_and_batches():
    lp = np.array([[-1.0, -2.0], [-3.0, -4.0]])
    v, g = _grad(lambda x: R.grpo_loss(x, lp + 0.3, [1.0, 2.0], [[0, 0], [1, 0]], loss_type="grpo"), lp)
    assert v == pytest.approx(-2.0 * math.exp(-0.3) / 2, rel=1e-14)  # the empty row counts as 0 in the mean
    assert np.all(g[0] == 0.0) and g[1, 1] == 0.0
    for lt in R.GRPO_LOSS_TYPES:
        v, g = _grad(lambda x: R.grpo_loss(x, None, [1.0, 2.0], np.zeros((2, 2)), loss_type=lt,
                                            max_completion_length=2, num_items_in_batch=0), lp)
        assert v == 0.0 and np.all(g == 0.0)


def test_grpo_metrics_by_hand():
    lp = np.log([[1.5, 0.5, 1.0, 9.0], [0.7, 1.3, 1.0, 1.0]])
    old = np.zeros((2, 4))
    mask = [[1, 1, 1, 0], [1, 1, 0, 0]]
    m = R.grpo_metrics(lp, old, [1.0, -1.0], mask, ref_logps=lp)
    # row 0 (A > 0): 1.5 is high-clipped; row 1 (A < 0): 0.7 is low-clipped; 9.0 is masked
    assert m["clip_ratio/high_mean"] == pytest.approx(1 / 5) and m["clip_ratio/low_mean"] == pytest.approx(1 / 5)
    assert m["clip_ratio/region_mean"] == pytest.approx(2 / 5)
    assert m["clip_ratio/high_max"] == pytest.approx(1 / 3) and m["clip_ratio/low_min"] == 0.0
    assert m["kl"] == 0.0 and m["num_tokens"] == 5.0
    assert "kl" not in R.grpo_metrics(lp, old, [1.0, -1.0], mask)
    s = R.grpo_metrics(lp, old, [1.0, -1.0], mask, importance_sampling_level="sequence")
    # sequence ratios: exp(mean(log 1.5, log 0.5, 0)) = 0.9086 (not clipped), exp(mean(log .7, log 1.3)) = 0.954
    assert s["clip_ratio/region_mean"] == 0.0


# ------------------------------------------------------------------ §5–6 RLOO, by hand
def test_rloo_advantages_by_hand():
    _close(R.rloo_advantages([1.0, 2.0, 6.0], 3), [1 - 4.0, 2 - 3.5, 6 - 1.5], rtol=1e-15)
    # KL folded: old − ref summed over the mask = [1.0, −0.5, 0]; β = 0.5 → R = [0.5, 2.25, 6]
    old = np.array([[0.5, 0.5, 7.0], [0.0, -0.5, 7.0], [0.0, 0.0, 0.0]])
    ref = np.zeros((3, 3))
    mask = [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    R2 = np.array([0.5, 2.25, 6.0])
    want = R2 - (R2.sum() - R2) / 2
    _close(R.rloo_advantages([1.0, 2.0, 6.0], 3, old, ref, mask, 0.5), want, rtol=1e-15)
    # clip before the KL: [−5, 2, 9] clipped to [−1, 3] → [−1, 2, 3]
    _close(R.rloo_advantages([-5.0, 2.0, 9.0], 3, reward_clip_range=(-1.0, 3.0)), [-1 - 2.5, 2 - 1.0, 3 - 0.5])
    # NaN: the baseline uses scorable siblings only; a lone scorable row gets 0
    _close(R.rloo_advantages([1.0, NAN, 3.0, NAN, NAN, 5.0], 3), [-2.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(R.rloo_advantages([1.0, 2.0], 1), [0.0, 0.0])
    a = R.rloo_advantages([1.0, 2.0, 6.0, 0.0], 2, normalize_advantages=True)
    raw = np.array([-1.0, 1.0, 6.0, -6.0])
    _close(a, (raw - raw.mean()) / (raw.std(ddof=1) + 1e-4), rtol=1e-14)


def test_rloo_loss_by_hand():
    lp = np.array([[-1.0, -2.0, -5.0], [-1.0, -1.0, -1.0]])
    mask = [[1, 1, 0], [1, 0, 0]]
    v, g = _grad(lambda x: R.rloo_loss(x, None, [2.0, -1.0], mask, num_accumulation_steps=2), lp)
    assert v == pytest.approx(-(2.0 - 1.0) / 2 / 2, rel=1e-15)
    _close(g, [[-0.5, -0.5, 0.0], [0.25, 0.0, 0.0]], rtol=1e-15)
    # sequence ratio exp(0.1 + 0.2) = 1.35 > 1.2 with A > 0: clipped
    v, g = _grad(lambda x: R.rloo_loss(x, [[0.0, 0.0]], [1.0], [[1, 1]]), [[0.1, 0.2]])
    assert v == pytest.approx(-1.2, rel=1e-15) and np.all(g == 0.0)
    m = R.rloo_metrics([[0.1, 0.2], [0.0, 0.0]], np.zeros((2, 2)), [1.0, 1.0], [[1, 1], [1, 1]])
    assert m["clip_ratio/high_mean"] == 0.5 and m["clip_ratio/region_mean"] == 0.5 and m["clip_ratio/low_mean"] == 0.0


# ------------------------------------------------------------------ §7 online DPO pairs, §8 log-probs and entropy
def test_online_dpo_pairs_by_hand():
    c, r = R.online_dpo_pairs([1.0, 1.0, 0.0, 2.0, 3.0, -1.0], [True, False, True, True, False, True])
    np.testing.assert_array_equal(c, [0, 3, 4])  # tie -> first sample
    np.testing.assert_array_equal(r, [1, 2, 5])
    c, r = R.online_dpo_pairs([1.0, 1.0, 0.0, 2.0, 3.0, -1.0], [False, True, True, True, False, True], 0.5)
    np.testing.assert_array_equal(c, [1, 3, 4])  # the penalty breaks the tie: 0.5 < 1.0
    assert c.dtype == np.int64 and r.dtype == np.int64


def test_token_logps_and_entropy_by_hand():
    logits = np.array([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]])
    z = math.e ** 2 + 3  # partition function of [2, 0, 0, 0]; H = log Z − Σ p·logit
    _close(R.token_entropy(logits), [[math.log(4), math.log(z) - 2 * math.e ** 2 / z]])
    _close(R.token_logps(logits, [[1, 0]]), [[-math.log(4), 2 - math.log(math.e ** 2 + 3)]])
    _close(R.token_logps(logits, [[1, 0]], temperature=2.0), [[-math.log(4), 1 - math.log(math.e + 3)]])


# ------------------------------------------------------------------ properties (Hypothesis)
rewards_st = st.floats(-50.0, 50.0)


@FAST
@given(st.integers(1, 5), st.integers(1, 4), st.data(), st.sampled_from(["group", "batch", "none"]))
def test_grpo_advantages_have_group_mean_zero(P, G, data, scale):
    r = np.array(data.draw(st.lists(rewards_st, min_size=P * G, max_size=P * G)))
    a = R.grpo_advantages(r, G, scale).reshape(P, G)
    _close(a.sum(axis=1), np.zeros(P), atol=1e-9 * max(1.0, np.abs(a).max()))
    shift = R.grpo_advantages(r + 7.0, G, scale).reshape(P, G)  # a constant shift changes nothing
    _close(shift, a, rtol=1e-6, atol=1e-6)


@FAST
@given(st.integers(1, 5), st.integers(2, 4), st.data())
def test_rloo_advantages_group_sum_zero_and_loo_identity(P, G, data):
    r = np.array(data.draw(st.lists(rewards_st, min_size=P * G, max_size=P * G)))
    a = R.rloo_advantages(r, G).reshape(P, G)
    g = r.reshape(P, G)
    _close(a, G / (G - 1) * (g - g.mean(axis=1, keepdims=True)), rtol=1e-10, atol=1e-10)
    _close(a.sum(axis=1), np.zeros(P), atol=1e-9 * max(1.0, np.abs(r).max()))


@st.composite
def rollouts(draw, B_max=5, T_max=6, spread=0.5):
    B, T = draw(st.integers(1, B_max)), draw(st.integers(1, T_max))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lp = rng.uniform(-6.0, -0.01, (B, T))
    old = lp + rng.uniform(-spread, spread, (B, T))
    ref = lp + rng.uniform(-1.0, 1.0, (B, T))
    adv = rng.normal(0.0, 2.0, B)
    mask = (rng.random((B, T)) < 0.75).astype(np.int64)
    return lp, old, ref, adv, mask


@FAST
@given(rollouts(), st.sampled_from(R.GRPO_LOSS_TYPES))
def test_ratio_one_positive_advantage_gives_minus_weighted_mean(ro, loss_type):
    lp, _, _, adv, mask = ro
    adv = np.abs(adv) + 0.1
    n = mask.sum(axis=1)
    v = float(R.grpo_loss(lp, None, adv, mask, loss_type=loss_type, max_completion_length=lp.shape[1]))
    want = {"grpo": -np.mean(np.where(n > 0, adv, 0.0)),
            "bnpo": -(adv * n).sum() / max(n.sum(), 1), "dapo": -(adv * n).sum() / max(n.sum(), 1),
            "dr_grpo": -(adv * n).sum() / (lp.shape[0] * lp.shape[1])}[loss_type]
    assert v == pytest.approx(want, rel=1e-12, abs=1e-12)


@FAST
@given(rollouts(B_max=8, T_max=1, spread=1.0), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_clipping_bounds_and_zero_gradient_when_clipped(ro, el, eh):
    lp, old, _, adv, _ = ro
    B = lp.shape[0]
    mask = np.ones((B, 1), dtype=np.int64)
    v, g = _grad(lambda x: R.grpo_loss(x, old, adv, mask, epsilon_low=el, epsilon_high=eh, loss_type="dapo"), lp)
    r = np.exp(lp - old)[:, 0]
    per = -np.minimum(r * adv, np.clip(r, 1 - el, 1 + eh) * adv)
    assert v == pytest.approx(per.sum() / B, rel=1e-12, abs=1e-12)
    assert np.all(per >= np.where(adv > 0, -(1 + eh) * adv, (1 - el) * -adv) - 1e-12)  # the gain is capped
    clipped = ((adv > 0) & (r > 1 + eh)) | ((adv < 0) & (r < 1 - el))
    assert np.all(g[clipped, 0] == 0.0)
    _close(g[~clipped, 0], (-adv * r / B)[~clipped], rtol=1e-12)


@FAST
@given(rollouts(), st.sampled_from(R.GRPO_LOSS_TYPES), st.sampled_from(["token", "sequence"]))
def test_beta_zero_equals_no_reference(ro, loss_type, level):
    lp, old, ref, adv, mask = ro
    kw = dict(loss_type=loss_type, importance_sampling_level=level, max_completion_length=lp.shape[1])
    assert float(R.grpo_loss(lp, old, adv, mask, ref, 0.0, **kw)) == float(R.grpo_loss(lp, old, adv, mask, None, 0.0, **kw))


@FAST
@given(rollouts(), st.sampled_from(["token", "sequence"]), st.floats(0.0, 0.2))
def test_grpo_is_the_mean_of_per_sequence_bnpo(ro, level, beta):
    lp, old, ref, adv, mask = ro
    kw = dict(importance_sampling_level=level)
    whole = float(R.grpo_loss(lp, old, adv, mask, ref, beta, loss_type="grpo", **kw))
    rows = [float(R.grpo_loss(lp[b:b + 1], old[b:b + 1], adv[b:b + 1], mask[b:b + 1], ref[b:b + 1], beta,
                              loss_type="bnpo", **kw)) for b in range(lp.shape[0])]
    assert whole == pytest.approx(np.mean(rows), rel=1e-12, abs=1e-13)


@FAST
@given(rollouts(B_max=6), st.integers(1, 5), st.sampled_from(["token", "sequence"]), st.floats(0.0, 0.2))
def test_dapo_micro_batches_sum_to_the_big_batch(ro, cut, level, beta):
    lp, old, ref, adv, mask = ro
    B = lp.shape[0]
    cut = min(cut, B)
    kw = dict(loss_type="dapo", importance_sampling_level=level)
    N = int(mask.sum())
    big_v, big_g = _grad(lambda x: R.grpo_loss(x, old, adv, mask, ref, beta, num_items_in_batch=N, **kw), lp)
    parts_v, parts_g = 0.0, []
    for s in (slice(0, cut), slice(cut, B)):
        if s.start == s.stop:
            continue
        v, g = _grad(lambda x: R.grpo_loss(x, old[s], adv[s], mask[s], ref[s], beta, num_items_in_batch=N, **kw), lp[s])
        parts_v += v
        parts_g.append(g)
    assert parts_v == pytest.approx(big_v, rel=1e-12, abs=1e-13)
    _close(np.concatenate(parts_g), big_g, rtol=1e-12, atol=1e-14)


@FAST
@given(rollouts(B_max=3), st.integers(2, 3), st.sampled_from(["grpo", "dr_grpo"]))
def test_equal_micro_batches_over_k_sum_to_the_big_batch(ro, k, loss_type):
    lp, old, ref, adv, mask = ro
    big = [np.concatenate([a] * k) for a in (lp, old, ref, adv, mask)]  # k equal-size micro-batches
    kw = dict(loss_type=loss_type, max_completion_length=lp.shape[1])
    whole = float(R.grpo_loss(big[0], big[1], big[3], big[4], big[2], 0.05, **kw))
    part = float(R.grpo_loss(lp, old, adv, mask, ref, 0.05, num_accumulation_steps=k, **kw))
    assert k * part == pytest.approx(whole, rel=1e-12, abs=1e-13)


@FAST
@given(rollouts(), st.sampled_from(R.GRPO_LOSS_TYPES), st.sampled_from(["token", "sequence"]))
def test_masked_positions_never_matter(ro, loss_type, level):
    lp, old, ref, adv, mask = ro
    junk = np.where(mask == 1, 0.0, 800.0)  # huge values at masked positions (exp would overflow)
    kw = dict(loss_type=loss_type, importance_sampling_level=level, max_completion_length=lp.shape[1])
    v1, g1 = _grad(lambda x: R.grpo_loss(x, old, adv, mask, ref, 0.1, **kw), lp)
    v2, g2 = _grad(lambda x: R.grpo_loss(x, old - junk, adv, mask, ref + junk, 0.1, **kw), lp + junk)
    assert v1 == pytest.approx(v2, rel=1e-12, abs=1e-13)
    _close(g1, g2, rtol=1e-12, atol=1e-14)
    assert np.all(g2[mask == 0] == 0.0)


@FAST
@given(rollouts(T_max=1), st.sampled_from(R.GRPO_LOSS_TYPES))
def test_sequence_level_equals_token_level_for_one_token(ro, loss_type):
    lp, old, ref, adv, mask = ro
    kw = dict(loss_type=loss_type, max_completion_length=1)
    a = float(R.grpo_loss(lp, old, adv, mask, ref, 0.1, importance_sampling_level="token", **kw))
    b = float(R.grpo_loss(lp, old, adv, mask, ref, 0.1, importance_sampling_level="sequence", **kw))
    assert a == pytest.approx(b, rel=1e-13, abs=1e-14)


@FAST
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.booleans(), st.booleans()), min_size=1, max_size=6),
       st.one_of(st.none(), st.floats(0.0, 3.0)))
def test_online_dpo_chosen_has_the_higher_penalised_reward(pairs, pen):
    r = np.array([x for p in pairs for x in p[:2]])
    e = np.array([x for p in pairs for x in p[2:]])
    c, j = R.online_dpo_pairs(r, e, pen)
    rp = r - (0.0 if pen is None else pen) * (~e)
    assert np.all(rp[c] >= rp[j]) and np.all(c // 2 == np.arange(len(pairs))) and np.all(c + j == 4 * np.arange(len(pairs)) + 1)
    tie = rp[0::2] == rp[1::2]
    assert np.all(c[tie] % 2 == 0)


# ------------------------------------------------------------------ gradients by finite differences (float64)
@pytest.mark.parametrize("loss_type", R.GRPO_LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta,delta", [(0.0, None), (0.2, None), (0.1, 1.3)])
def test_grpo_loss_gradcheck(loss_type, level, beta, delta):
    rng = np.random.default_rng(len(loss_type) * 7 + len(level) + int(beta * 10))
    lp0 = rng.uniform(-3, -0.1, (3, 4))
    old = lp0 + rng.uniform(-0.6, 0.6, (3, 4))  # ratios on both sides of the clip range, away from kinks
    ref = lp0 + rng.uniform(-1, 1, (3, 4))
    adv, mask = rng.normal(size=3), np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    x = Tensor(lp0.copy(), requires_grad=True)
    gradcheck(lambda t: R.grpo_loss(t, old, adv, mask, ref, beta, 0.2, 0.28, loss_type, level, delta,
                                    num_items_in_batch=20, max_completion_length=5, num_accumulation_steps=2), [x])


def test_rloo_loss_and_token_functions_gradcheck():
    rng = np.random.default_rng(3)
    lp0 = rng.uniform(-2, -0.1, (4, 3))
    old = lp0 + rng.uniform(-0.1, 0.1, (4, 3))
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    gradcheck(lambda t: R.rloo_loss(t, old, np.array([1.0, -2.0, 0.5, 3.0]), mask, 0.2, 0.3),
              [Tensor(lp0.copy(), requires_grad=True)])
    logits = Tensor(rng.normal(size=(2, 3, 5)), requires_grad=True)
    ids = rng.integers(0, 5, (2, 3))
    gradcheck(lambda t: R.token_logps(t, ids, 0.7), [logits])
    gradcheck(lambda t: R.token_entropy(t, 1.3), [logits])


# ------------------------------------------------------------------ validation
OK = dict(logps=np.zeros((2, 3)), old_logps=np.zeros((2, 3)), advantages=np.zeros(2), mask=np.ones((2, 3), dtype=int))


@pytest.mark.parametrize("patch,pattern", [
    ({"loss_type": "ppo"}, r"`loss_type` must be one of \('grpo', 'bnpo', 'dr_grpo', 'dapo'\), got 'ppo'"),
    ({"importance_sampling_level": "seq"}, r"`importance_sampling_level` must be one of"),
    ({"epsilon_low": 0.0}, r"`epsilon_low` must be a finite number > 0, got 0.0"),
    ({"epsilon_high": -0.1}, r"`epsilon_high` must be a finite number > 0"),
    ({"beta": -0.01}, r"`beta` must be a finite number >= 0, got -0.01"),
    ({"beta": 0.1}, r"`beta` = 0.1 > 0 needs `ref_logps`"),
    ({"delta": float("inf")}, r"`delta` must be a finite number > 0"),
    ({"num_accumulation_steps": 0}, r"`num_accumulation_steps` must be an integer >= 1, got 0"),
    ({"loss_type": "dr_grpo"}, r"loss_type 'dr_grpo' needs `max_completion_length`"),
    ({"loss_type": "dr_grpo", "max_completion_length": 2}, r"expected >= 3, got 2"),
    ({"num_items_in_batch": 5}, r"`num_items_in_batch` must count every completion token.*expected >= 6, got 5"),
    ({"num_items_in_batch": -1}, r"`num_items_in_batch` must be an integer >= 0"),
    ({"old_logps": np.zeros((2, 4))}, r"`old_logps` must have shape \(B, T\) = \(2, 3\), got \(2, 4\)"),
    ({"advantages": np.zeros(3)}, r"`advantages` must have shape \(2,\) or \(2, 3\), got \(3,\)"),
    ({"mask": np.full((2, 3), 2)}, r"`mask` must hold only 0 and 1, got 6 other"),
    ({"logps": np.full((2, 3), np.nan)}, r"`logps` must be finite, got 6 NaN"),
    ({"advantages": np.array([np.nan, 0.0])}, r"`advantages` must be finite"),
    ({"logps": np.zeros(3)}, r"`logps` must have shape \(B, T\)"),
])
def test_grpo_loss_rejects_bad_input(patch, pattern):
    args = dict(OK)
    args.update(patch)
    with pytest.raises(ValueError, match=pattern) as e:
        R.grpo_loss(**args)
    assert " / " in str(e.value)


@pytest.mark.parametrize("call,pattern", [
    (lambda: R.grpo_advantages([1.0, 2.0, 3.0], 2), r"B = 3 must be divisible by `num_generations` = 2"),
    (lambda: R.grpo_advantages([1.0, 2.0], 0), r"`num_generations` must be an integer >= 1, got 0"),
    (lambda: R.grpo_advantages([1.0, 2.0], True), r"`num_generations` must be an integer"),
    (lambda: R.grpo_advantages([1.0, float("inf")], 2), r"finite or NaN.*1 infinite"),
    (lambda: R.grpo_advantages([[1.0, 2.0]], 2), r"`rewards` must be 1-D"),
    (lambda: R.grpo_advantages([1.0, 2.0], 2, scale_rewards=True), r"`scale_rewards` must be one of"),
    (lambda: R.rloo_advantages([1.0, 2.0], 2, beta=0.1), r"needs old_logps, ref_logps and mask.*missing"),
    (lambda: R.rloo_advantages([1.0, 2.0], 2, reward_clip_range=(2.0, 1.0)), r"`reward_clip_range` must be None or a pair"),
    (lambda: R.rloo_advantages([1.0, 2.0], 2, normalize_advantages=1), r"`normalize_advantages` must be a bool"),
    (lambda: R.rloo_advantages([1.0, 2.0], 2, np.zeros((3, 2)), np.zeros((3, 2)), np.ones((3, 2)), 0.1),
     r"`old_logps` must have shape \(2, T\)"),
    (lambda: R.rloo_loss(np.zeros((2, 2)), None, np.zeros((2, 2)), np.ones((2, 2))), r"`advantages` must have shape \(2,\), got"),
    (lambda: R.rloo_loss(np.zeros((2, 2)), None, np.zeros(2), np.ones((2, 2)), epsilon_low=-1), r"`epsilon_low` must be"),
    (lambda: R.online_dpo_pairs([1.0, 2.0, 3.0], [True] * 3), r"even length"),
    (lambda: R.online_dpo_pairs([1.0, NAN], [True, True]), r"`rewards` must be finite"),
    (lambda: R.online_dpo_pairs([1.0, 2.0], [True]), r"`has_eos` must have shape"),
    (lambda: R.online_dpo_pairs([1.0, 2.0], [0.5, 1.0]), r"`has_eos` must be a bool"),
    (lambda: R.online_dpo_pairs([1.0, 2.0], [True, True], -1.0), r"`missing_eos_penalty` must be a finite number >= 0"),
    (lambda: R.token_logps(np.zeros((2, 3)), [0, 3]), r"`token_ids` must lie in \[0, 3\)"),
    (lambda: R.token_logps(np.zeros((2, 3)), [0.0, 1.0]), r"`token_ids` must be an integer array"),
    (lambda: R.token_entropy(np.zeros((2, 3)), 0.0), r"`temperature` must be a finite number > 0"),
])
def test_other_functions_reject_bad_input(call, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        call()
    assert " / " in str(e.value)


def test_tensor_in_tensor_out_and_arrays_in_arrays_out():
    lp = Tensor(np.zeros((1, 2)), requires_grad=True)
    out = R.grpo_loss(lp, None, [1.0], [[1, 1]])
    assert isinstance(out, Tensor) and out.requires_grad
    arr = R.grpo_loss(np.zeros((1, 2)), None, [1.0], [[1, 1]])
    assert isinstance(arr, np.ndarray) and arr.shape == () and float(arr) == -1.0


def test_float32_inputs_stay_float32():
    with use_backend("numpy", "float32"):
        z = np.zeros((4, 3), dtype=np.float32)
        for scale in ("group", "batch", "none"):
            assert R.grpo_advantages([1.0, 2.0, 4.0, NAN], 2, scale).dtype == np.float32
        r = np.array([1.0, 2.0, 3.0, 5.0], dtype=np.float32)
        assert R.rloo_advantages(r, 2, z, z, np.ones((4, 3)), 0.1, True).dtype == np.float32
        lp = Tensor(z - 1.0, requires_grad=True)
        for lt in R.GRPO_LOSS_TYPES:
            out = R.grpo_loss(lp, z - 1.1, r, np.ones((4, 3)), z, 0.1, loss_type=lt, max_completion_length=3)
            assert out.dtype == np.float32
        assert R.rloo_loss(lp, None, r, np.ones((4, 3))).dtype == np.float32
