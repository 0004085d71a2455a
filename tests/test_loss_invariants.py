"""Hypothesis property tests of the loss invariants stated in spec/losses.md.

What it is for: checking, over generated inputs, the algebraic facts the spec promises — DPO label
smoothing (ε = 0 is plain DPO, the mixture identity, evenness at ε = 0.5, the minimum at
βh = log((1−ε)/ε) of value H(ε), chosen/rejected swap, policy = reference ⇒ log 2, finiteness up to
|βh| = 1e4), normalised-score statistics and symmetries, the reward-loss identity and monotonicity, SFT
masking and accumulation invariance, and every loss's gradient against finite differences (float64).
What it is not: a check of fixed numbers (tests/test_losses.py and the golden vectors do that).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vietnamese_ai_ref import losses as L
from vietnamese_ai_ref.core.autograd import Tensor
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.gradcheck import gradcheck

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def float64_numpy():
    with use_backend("numpy", "float64"):
        yield


def _logsig(x: float) -> float:
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


def _close(a, b, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=atol)


# ------------------------------------------------------------------ strategies
betas = st.floats(1e-3, 10.0)
epsilons = st.floats(0.0, 0.5)
inner_eps = st.floats(1e-3, 0.499)
logp = st.floats(-200.0, 0.0)


@st.composite
def dpo_batches(draw, n_max=6, elements=logp):
    n = draw(st.integers(1, n_max))
    vec = hnp.arrays(np.float64, n, elements=elements)
    return tuple(draw(vec) for _ in range(4))


def _h(pc, pr, rc, rr):
    return (pc - pr) - (rc - rr)


# ------------------------------------------------------------------ DPO label smoothing
@FAST
@given(dpo_batches(), betas)
def test_eps0_is_plain_dpo(batch, beta):
    losses, _, _ = L.dpo_loss(*batch, beta=beta, label_smoothing=0.0)
    want = [-_logsig(beta * h) for h in _h(*batch)]
    _close(losses, want)


@FAST
@given(dpo_batches(), betas, epsilons)
def test_mixture_identity(batch, beta, eps):
    pc, pr, rc, rr = batch
    l_eps, _, _ = L.dpo_loss(pc, pr, rc, rr, beta, eps)
    l0, _, _ = L.dpo_loss(pc, pr, rc, rr, beta, 0.0)
    l0_neg, _, _ = L.dpo_loss(pr, pc, rr, rc, beta, 0.0)  # h -> -h
    _close(l_eps, (1 - eps) * l0 + eps * l0_neg, rtol=1e-11, atol=1e-11)
    # and the equivalent linear form: L_eps = -log σ(βh) + ε βh
    _close(l_eps, l0 + eps * beta * _h(pc, pr, rc, rr), rtol=1e-10, atol=1e-10)


@FAST
@given(dpo_batches(), betas)
def test_eps_half_is_even_in_h(batch, beta):
    pc, pr, rc, rr = batch
    a, _, _ = L.dpo_loss(pc, pr, rc, rr, beta, 0.5)
    b, _, _ = L.dpo_loss(pr, pc, rr, rc, beta, 0.5)
    _close(a, b)


@FAST
@given(inner_eps, betas, st.floats(-100.0, 0.0), st.floats(-100.0, 0.0))
def test_minimum_at_log_odds_with_binary_entropy(eps, beta, rc, rr):
    z_star = math.log((1 - eps) / eps)
    entropy = -(eps * math.log(eps) + (1 - eps) * math.log(1 - eps))
    h_star = z_star / beta

    def loss_at(z):
        pc = np.array([rc + z / beta])  # with π_r = ρ_r = rr: h = (pc − rr) − (rc − rr) = z/β
        out, _, _ = L.dpo_loss(pc, np.array([rr]), np.array([rc]), np.array([rr]), beta, eps)
        return float(out[0])

    at = loss_at(z_star)
    assert at == pytest.approx(entropy, rel=1e-9, abs=1e-12)
    for dz in (0.05, -0.05, 0.5, -0.5):
        assert loss_at(z_star + dz) > at
    # the gradient vanishes at the minimum: ∂L/∂π_c = β(ε − σ(−z*)) = 0
    pc = Tensor(np.array([rc + h_star]), requires_grad=True)
    out, _, _ = L.dpo_loss(pc, np.array([rr]), np.array([rc]), np.array([rr]), beta, eps)
    out.backward(np.ones(1))
    assert abs(float(pc.grad[0])) <= 1e-9 * beta


@FAST
@given(dpo_batches(), betas, epsilons)
def test_swap_chosen_rejected_maps_h_to_minus_h(batch, beta, eps):
    pc, pr, rc, rr = batch
    losses, c, r = L.dpo_loss(pr, pc, rr, rc, beta, eps)
    want = [-(1 - eps) * _logsig(-beta * h) - eps * _logsig(beta * h) for h in _h(pc, pr, rc, rr)]
    _close(losses, want, rtol=1e-11, atol=1e-11)
    _, c0, r0 = L.dpo_loss(pc, pr, rc, rr, beta, eps)
    _close(c, r0, 0, 0)
    _close(r, c0, 0, 0)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 8), elements=logp),
       hnp.arrays(np.float64, 8, elements=logp), betas, epsilons)
def test_policy_equals_reference_gives_log2_and_zero_rewards(chosen, rejected_full, beta, eps):
    rejected = rejected_full[: chosen.shape[0]]
    losses, c, r = L.dpo_loss(chosen, rejected, chosen.copy(), rejected.copy(), beta, eps)
    _close(losses, np.full(chosen.shape, math.log(2)), rtol=1e-15, atol=0)
    assert np.all(c == 0) and np.all(r == 0)
    assert L.dpo_metrics(c, r)["reward_accuracy"] == 0.0


@FAST
@given(st.floats(-1e4, 1e4), betas, epsilons, st.floats(-50.0, 0.0))
def test_finite_up_to_1e4(z, beta, eps, base):
    pc = Tensor(np.array([base + z / beta]), requires_grad=True)
    pr = Tensor(np.array([base]), requires_grad=True)
    losses, c, r = L.dpo_loss(pc, pr, np.array([base]), np.array([base]), beta, eps)
    losses.backward(np.ones(1))
    assert np.all(np.isfinite(losses.data)) and np.all(np.isfinite(c.data)) and np.all(np.isfinite(r.data))
    assert float(losses.data[0]) >= 0.0
    assert np.isfinite(pc.grad).all() and abs(float(pc.grad[0])) <= beta * (1 + 1e-12)
    # the saturated branches: ε·z for z ≫ 0, (1−ε)·|z| for z ≪ 0
    zz = float(z / beta * beta)
    if abs(zz) > 50:
        want = eps * zz if zz > 0 else (1 - eps) * -zz
        assert float(losses.data[0]) == pytest.approx(want, rel=1e-9, abs=1e-12)


@SLOW
@given(dpo_batches(n_max=4, elements=st.floats(-10.0, 0.0)), st.floats(1e-3, 1.5), epsilons, st.integers(0, 2**31 - 1))
def test_dpo_gradcheck(batch, beta, eps, seed):
    # |βh| <= 30: away from saturation, where finite differences resolve the gradient
    xs = [Tensor(x.copy(), requires_grad=True) for x in batch]
    gradcheck(lambda a, b, c, d: L.dpo_loss(a, b, c, d, beta=beta, label_smoothing=eps)[0], xs, seed=seed,
              atol=1e-8, rtol=1e-6)


# ------------------------------------------------------------------ normalised scores
well_conditioned = hnp.arrays(np.float64, st.integers(2, 30), elements=st.floats(-1e6, 1e6)).filter(
    lambda s: s.max() - s.min() >= 1e-6 * max(1.0, np.abs(s).max())
)


@FAST
@given(well_conditioned)
def test_normalized_mean0_std1(s):
    z = L.normalize_scores(s)
    assert abs(float(z.mean())) <= 1e-9
    assert float(z.std()) == pytest.approx(1.0, abs=1e-9)


@FAST
@given(st.lists(st.floats(-1e300, 1e300), min_size=2, max_size=10))
def test_normalized_always_finite_and_zero_rule(values):
    z = L.normalize_scores(values)
    assert isinstance(z, list) and len(z) == len(values)
    assert all(math.isfinite(v) for v in z)
    if len(set(values)) == 1:
        assert z == [0.0] * len(values)
    else:
        assert any(v != 0.0 for v in z)


@FAST
@given(st.integers(0, 20), st.floats(-1e300, 1e300))
def test_normalized_zeros_for_n1_or_equal(n, v):
    z = L.normalize_scores(np.full(n, v))
    assert z.shape == (n,) and np.all(z == 0.0) and not np.isnan(z).any()
    assert L.normalize_scores([v]) == [0.0]


@FAST
@given(well_conditioned, st.floats(1e-3, 1e3), st.booleans(), st.floats(-1e3, 1e3))
def test_normalized_affine_invariance(s, a, negative, c):
    a = -a if negative else a
    t = a * s + c
    assume(t.max() - t.min() >= 1e-6 * max(1.0, np.abs(t).max()))
    z, zt = L.normalize_scores(s), L.normalize_scores(t)
    _close(zt, np.sign(a) * z, rtol=0, atol=1e-6)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 25), elements=st.floats(-1e6, 1e6)))
def test_normalized_keeps_order(s):
    z = L.normalize_scores(s)
    order = np.argsort(s, kind="stable")
    assert np.all(np.diff(z[order]) >= 0)  # non-decreasing along increasing scores (rounding may tie)
    for i in range(len(s)):
        for j in range(len(s)):
            if s[i] == s[j]:
                assert z[i] == z[j]


@FAST
@given(well_conditioned, st.randoms(use_true_random=False))
def test_normalized_permutation_equivariant(s, rnd):
    perm = list(range(len(s)))
    rnd.shuffle(perm)
    _close(L.normalize_scores(s[perm]), L.normalize_scores(s)[perm], rtol=0, atol=1e-9)


# ------------------------------------------------------------------ reward loss
@FAST
@given(hnp.arrays(np.float64, st.integers(1, 10), elements=st.floats(-5e3, 5e3)), st.data())
def test_reward_loss_antisymmetry(c, data):
    r = data.draw(hnp.arrays(np.float64, c.shape, elements=st.floats(-5e3, 5e3)))
    m = data.draw(st.one_of(st.none(), st.floats(-10, 10), hnp.arrays(np.float64, c.shape, elements=st.floats(-10, 10))))
    neg_m = None if m is None else -np.asarray(m)
    d = (c - r) - (0.0 if m is None else m)  # swapping the pair and negating the margin gives exactly −d
    # L(d) − L(−d) = −d
    _close(L.reward_loss(c, r, m) - L.reward_loss(r, c, neg_m), -d, rtol=1e-12, atol=1e-12)


@FAST
@given(hnp.arrays(np.float64, st.integers(2, 20), elements=st.floats(-1e4, 1e4)))
def test_reward_loss_monotone_decreasing(d):
    d = np.sort(d)
    losses = L.reward_loss(d, np.zeros_like(d))
    assert np.all(np.isfinite(losses)) and np.all(losses >= 0)
    assert np.all(np.diff(losses) <= 0)
    # strictly where the differences are resolvable
    strict = (np.diff(d) > 1e-6) & (d[1:] < 30)
    assert np.all(np.diff(losses)[strict] < 0)


@SLOW
@given(hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-20, 20)), st.data())
def test_reward_loss_gradcheck(c, data):
    r = data.draw(hnp.arrays(np.float64, c.shape, elements=st.floats(-20, 20)))
    m = data.draw(st.one_of(st.none(), st.floats(-3, 3), hnp.arrays(np.float64, c.shape, elements=st.floats(-3, 3))))
    gradcheck(lambda a, b: L.reward_loss(a, b, m), [Tensor(c.copy(), requires_grad=True), Tensor(r.copy(), requires_grad=True)],
              seed=data.draw(st.integers(0, 1000)))


# ------------------------------------------------------------------ SFT
@st.composite
def lm_batches(draw, b_max=5, t_max=6, v_max=5):
    B, T, V = draw(st.integers(1, b_max)), draw(st.integers(2, t_max)), draw(st.integers(1, v_max))
    logits = draw(hnp.arrays(np.float64, (B, T, V), elements=st.floats(-6, 6)))
    raw = draw(hnp.arrays(np.int64, (B, T), elements=st.integers(-1, V - 1)))
    labels = np.where(raw < 0, -100, raw)
    return logits, labels


@FAST
@given(lm_batches(), st.integers(1, 3), st.data())
def test_ignored_positions_change_nothing(batch, k, data):
    logits, labels = batch
    assume(L.count_target_tokens(labels) > 0)
    B, T, V = logits.shape
    extra = data.draw(hnp.arrays(np.float64, (B, k, V), elements=st.floats(-6, 6)))
    logits2 = np.concatenate([logits, extra], axis=1)
    labels2 = np.concatenate([labels, np.full((B, k), -100)], axis=1)
    # plus one extra row with no target at all
    logits2 = np.concatenate([logits2, data.draw(hnp.arrays(np.float64, (1, T + k, V), elements=st.floats(-6, 6)))])
    labels2 = np.concatenate([labels2, np.full((1, T + k), -100)])
    for n in (None, L.count_target_tokens(labels) + 3):
        x1, x2 = Tensor(logits.copy(), requires_grad=True), Tensor(logits2.copy(), requires_grad=True)
        l1, l2 = L.sft_loss(x1, labels, n), L.sft_loss(x2, labels2, n)
        _close(l1.data, l2.data, rtol=1e-14, atol=0)
        l1.backward()
        l2.backward()
        _close(x2.grad[:B, :T], x1.grad, rtol=1e-14, atol=0)
        assert np.all(x2.grad[:B, T:] == 0) and np.all(x2.grad[B:] == 0)
    _close(L.sequence_logps(logits2, labels2)[:B], L.sequence_logps(logits, labels), rtol=1e-14, atol=0)


@FAST
@given(lm_batches(b_max=7), st.data())
def test_accumulation_invariance(batch, data):
    logits, labels = batch
    N = L.count_target_tokens(labels)
    assume(N > 0)
    B = logits.shape[0]
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, B - 1)), max_size=3, unique=True))) if B > 1 else []
    bounds = [0] + cuts + [B]
    x_full = Tensor(logits.copy(), requires_grad=True)
    full = L.sft_loss(x_full, labels)  # own count == N
    full.backward()
    total, grads = 0.0, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        x = Tensor(logits[a:b].copy(), requires_grad=True)
        mb = L.sft_loss(x, labels[a:b], num_items_in_batch=N)
        mb.backward()
        total += float(mb.data)
        grads.append(x.grad)
    assert L.count_target_tokens([labels[a:b] for a, b in zip(bounds[:-1], bounds[1:])]) == N
    assert total == pytest.approx(float(full.data), rel=1e-12, abs=1e-15)
    _close(np.concatenate(grads), x_full.grad, rtol=1e-12, atol=1e-15)


@FAST
@given(lm_batches())
def test_no_targets_is_value_error(batch):
    logits, labels = batch
    labels = np.full_like(labels, -100)
    labels[:, 0] = 0  # position 0 is never a target, even when labelled
    with pytest.raises(ValueError, match="no target token"):
        L.sft_loss(logits, labels)
    assert L.count_target_tokens(labels) == 0


@SLOW
@given(lm_batches(b_max=3, t_max=5, v_max=4), st.integers(0, 5), st.integers(0, 1000))
def test_sft_and_sequence_logps_gradcheck(batch, extra, seed):
    logits, labels = batch
    n = L.count_target_tokens(labels)
    assume(n > 0)
    gradcheck(lambda t: L.sft_loss(t, labels, n + extra), [Tensor(logits.copy(), requires_grad=True)], seed=seed)
    gradcheck(lambda t: L.sequence_logps(t, labels), [Tensor(logits.copy(), requires_grad=True)], seed=seed)


@SLOW
@given(hnp.arrays(np.float64, st.integers(2, 8), elements=st.floats(-50, 50)), st.integers(0, 1000))
def test_normalize_scores_gradcheck(s, seed):
    assume(s.max() - s.min() > 1e-2)
    gradcheck(lambda t: L.normalize_scores(t), [Tensor(s.copy(), requires_grad=True)], seed=seed, atol=1e-6, rtol=1e-5)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 10), elements=st.floats(0, 50)), st.integers(0, 5))
def test_pair_accumulation_mean_over_all_pairs(losses, extra):
    # §10: micro-batches summed with num_pairs_in_batch = window size give the mean over all pairs
    n = losses.shape[0]
    k = max(1, n // 2)
    parts = [losses[:k], losses[k:]] if n > 1 else [losses]
    total = sum(float(L.reduce_pair_losses(p, n)) for p in parts if p.size)
    assert total == pytest.approx(float(losses.mean()), rel=1e-12, abs=1e-15)
    assert float(L.reduce_pair_losses(losses, n + extra)) == pytest.approx(float(losses.sum()) / (n + extra), rel=1e-15)
