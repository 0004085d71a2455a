"""Unit tests of vietnamese_ai_ref.losses: values, input kinds, validation and the spec's worked example.

What it is for: fixed, readable examples of every function of losses.py (hand-computed numbers, a
torch cross-check, the error messages, Tensor-vs-array behaviour, gradients by finite differences).
What it is not: the property tests (tests/test_loss_invariants.py) or the golden-vector checks
(tests/test_vectors.py, tests/test_conformance.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from vietnamese_ai_ref import losses as L
from vietnamese_ai_ref.core.autograd import Tensor
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.gradcheck import gradcheck

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def float64_numpy():
    with use_backend("numpy", "float64"):
        yield


def _logsig(x):
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


def _logsoftmax(row):
    m = max(row)
    return [v - m - math.log(sum(math.exp(u - m) for u in row)) for v in row]


# ------------------------------------------------------------------ §1 sequence_logps
def test_sequence_logps_hand_computed():
    logits = np.array([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]],
                       [[0.3, 0.1, -0.2], [1.0, 1.0, 0.0], [5.0, 0.0, 0.0]]])
    labels = np.array([[-100, 2, 0], [-100, -100, 1]])
    # row 0: position 0 predicts label 2, position 1 predicts label 0; row 1: position 1 predicts 1
    want0 = _logsoftmax([1.0, 2.0, 0.5])[2] + _logsoftmax([0.0, -1.0, 3.0])[0]
    want1 = _logsoftmax([1.0, 1.0, 0.0])[1]
    got = L.sequence_logps(logits, labels)
    np.testing.assert_allclose(got, [want0, want1], rtol=1e-14)


def test_sequence_logps_all_ignored_row_is_plus_zero_with_zero_grad():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4, 3)), requires_grad=True)
    labels = np.array([[-100] * 4, [-100, 1, 2, -100]])
    out = L.sequence_logps(x, labels)
    assert out.data[0] == 0.0 and math.copysign(1.0, float(out.data[0])) == 1.0
    out.backward(np.ones(2))
    assert np.all(x.grad[0] == 0.0)
    assert np.all(x.grad[1, 3] == 0.0)  # the last position never predicts


def test_sequence_logps_t1_gives_zeros():
    x = Tensor(np.ones((3, 1, 4)), requires_grad=True)
    out = L.sequence_logps(x, np.zeros((3, 1), dtype=np.int64))
    np.testing.assert_array_equal(out.data, np.zeros(3))
    out.backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, np.zeros((3, 1, 4)))


def test_sequence_logps_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 6, 5)) * 4
    labels = rng.integers(0, 5, (3, 6))
    labels[0, :3] = -100
    labels[2, 4:] = -100
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.tensor(labels)[:, 1:]
    lp = torch.log_softmax(t[:, :-1], -1).gather(-1, tl.clamp(min=0)[..., None])[..., 0]
    want = (lp * (tl != -100)).sum(-1)
    up = rng.standard_normal(3)
    (want * torch.tensor(up)).sum().backward()
    x = Tensor(logits.copy(), requires_grad=True)
    got = L.sequence_logps(x, labels)
    got.backward(up)
    np.testing.assert_allclose(got.data, want.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_sequence_logps_input_kinds():
    logits = np.zeros((1, 3, 2))
    labels = [[-100, 0, 1]]
    out = L.sequence_logps(logits, labels)
    assert isinstance(out, np.ndarray) and out.shape == (1,)
    np.testing.assert_allclose(out, [2 * math.log(0.5)])
    out_list = L.sequence_logps(logits.tolist(), labels)
    np.testing.assert_allclose(out_list, out)
    out_t = L.sequence_logps(Tensor(logits), labels)
    assert isinstance(out_t, Tensor) and not out_t.requires_grad


@pytest.mark.parametrize(
    "logits, labels, pattern",
    [
        (np.zeros((2, 3)), np.zeros((2, 3), dtype=np.int64), r"`logits`.*\(B, T, V\)"),
        (np.zeros((2, 3, 4)), np.zeros((2, 4), dtype=np.int64), r"`labels`.*\(2, 3\)"),
        (np.zeros((1, 3, 4)), np.array([[0, 4, 1]]), r"`labels`.*\[0, 4\)"),
        (np.zeros((1, 3, 4)), np.array([[0, -5, 1]]), r"`labels`.*\[0, 4\)"),
        (np.zeros((1, 3, 4)), np.zeros((1, 3)), r"`labels`.*integer"),
    ],
)
def test_sequence_logps_validation(logits, labels, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        L.sequence_logps(logits, labels)
    assert " / " in str(e.value)  # Vietnamese first, English after the slash


def test_sequence_logps_gradcheck():
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((2, 4, 5)) * 2, requires_grad=True)
    labels = np.array([[-100, 3, 0, 4], [-100, -100, 2, -100]])
    gradcheck(lambda t: L.sequence_logps(t, labels), [x])


# ------------------------------------------------------------------ §2 sft_loss
def _sft_torch(logits, labels, n=None):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = torch.tensor(logits, requires_grad=True)
    tg = torch.tensor(labels)[:, 1:].reshape(-1)
    s = F.cross_entropy(t[:, :-1].reshape(-1, logits.shape[-1]), tg, ignore_index=-100, reduction="sum")
    n = int((tg != -100).sum()) if n is None else n
    return t, s / n


def test_sft_loss_matches_torch_mean_and_override():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 5, 7))
    labels = rng.integers(0, 7, (2, 5))
    labels[0, :2] = -100
    for n in (None, 11):
        t, want = _sft_torch(logits, labels, n)
        want.backward()
        x = Tensor(logits.copy(), requires_grad=True)
        got = L.sft_loss(x, labels, n)
        got.backward()
        assert got.shape == ()
        np.testing.assert_allclose(float(got.data), float(want.detach()), rtol=1e-14)
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_sft_loss_is_sum_over_num_items():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 4, 3))
    labels = np.array([[-100, 1, 2, 0], [-100, -100, 1, -100]])
    own = float(L.sft_loss(logits, labels))
    assert L.count_target_tokens(labels) == 4
    np.testing.assert_allclose(float(L.sft_loss(logits, labels, 10)), own * 4 / 10, rtol=1e-14)
    assert isinstance(L.sft_loss(logits, labels), np.ndarray)


def test_sft_loss_micro_batch_without_targets_inside_window_is_zero():
    x = Tensor(np.ones((2, 3, 4)), requires_grad=True)
    out = L.sft_loss(x, np.full((2, 3), -100), num_items_in_batch=5)
    assert float(out.data) == 0.0
    out.backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3, 4)))


@pytest.mark.parametrize(
    "labels, n, pattern",
    [
        (np.full((2, 3), -100), None, r"no target token"),
        (np.array([[-100, 1, 1]]), 0, r"`num_items_in_batch`.*positive integer"),
        (np.array([[-100, 1, 1]]), -3, r"`num_items_in_batch`.*positive integer"),
        (np.array([[-100, 1, 1]]), 1.5, r"`num_items_in_batch`.*positive integer"),
        (np.array([[-100, 1, 1]]), True, r"`num_items_in_batch`.*positive integer"),
        (np.array([[-100, 1, 1]]), float("nan"), r"`num_items_in_batch`.*positive integer"),
        (np.array([[-100, 1, 1]]), 1, r"expected >= 2, got 1"),
    ],
)
def test_sft_loss_validation(labels, n, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        L.sft_loss(np.zeros(labels.shape + (3,)), labels, n)
    assert " / " in str(e.value)


def test_sft_loss_accepts_integer_like_num_items():
    logits, labels = np.zeros((1, 3, 2)), np.array([[-100, 0, 1]])
    a = L.sft_loss(logits, labels, 4)
    for n in (np.int64(4), 4.0, np.array(4)):
        assert float(L.sft_loss(logits, labels, n)) == float(a)


def test_count_target_tokens_kinds():
    lab = np.array([[-100, 1, 2], [3, -100, 4]])  # labels[:, 0] is never a target
    assert L.count_target_tokens(lab) == 3
    assert L.count_target_tokens([lab, lab[:1]]) == 5  # micro-batches of one window
    assert L.count_target_tokens([[-100, 5, 6, 7], [1, 2]]) == 4  # ragged rows
    assert L.count_target_tokens([-100, 5, 6]) == 2  # one row
    assert L.count_target_tokens([]) == 0


def test_sft_loss_gradcheck():
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((2, 4, 4)), requires_grad=True)
    labels = np.array([[-100, 3, 0, 1], [-100, -100, 2, -100]])
    gradcheck(lambda t: L.sft_loss(t, labels, 9), [x])


# ------------------------------------------------------------------ §3-4 dpo_loss
def test_dpo_worked_example_matches_spec_text():
    losses, cr, rr = L.dpo_loss([-10.0], [-12.0], [-11.0], [-11.5], beta=0.1, label_smoothing=0.1)
    assert float(losses[0]) == pytest.approx(0.6359570477895321, rel=1e-15)
    assert float(cr[0]) == pytest.approx(0.1, rel=1e-15) and float(rr[0]) == pytest.approx(-0.05, rel=1e-14)
    l0, _, _ = L.dpo_loss([-10.0], [-12.0], [-11.0], [-11.5], beta=0.1)
    assert float(l0[0]) == pytest.approx(0.6209570477895321, rel=1e-15)
    pc = Tensor(np.array([-10.0]), requires_grad=True)
    out, _, _ = L.dpo_loss(pc, [-12.0], [-11.0], [-11.5], beta=0.1, label_smoothing=0.1)
    out.backward(np.ones(1))
    assert float(pc.grad[0]) == pytest.approx(-0.036257015465625045, rel=1e-13)
    text = (ROOT / "spec" / "losses.md").read_text(encoding="utf-8")
    for number in ("0.6359570477895321", "0.6209570477895321", "−0.036257015465625045"):
        assert number in text


def test_dpo_matches_trl_formula_in_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    pc, pr, rc, rr = (rng.uniform(-60, -5, 8) for _ in range(4))
    for beta, eps in ((0.1, 0.0), (0.5, 0.2), (2.0, 0.5)):
        logits = (torch.tensor(pc) - torch.tensor(pr)) - (torch.tensor(rc) - torch.tensor(rr))
        want = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
        got, c, r = L.dpo_loss(pc, pr, rc, rr, beta, eps)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(c, beta * (pc - rc), rtol=1e-14)
        np.testing.assert_allclose(r, beta * (pr - rr), rtol=1e-14)


def test_dpo_rewards_are_detached_and_loss_has_grad():
    pc = Tensor(np.array([-1.0, -2.0]), requires_grad=True)
    rc = Tensor(np.array([-1.5, -2.0]), requires_grad=True)
    losses, cr, rr = L.dpo_loss(pc, [-3.0, -1.0], rc, [-2.0, -1.5])
    assert losses.requires_grad and not cr.requires_grad and not rr.requires_grad
    losses.backward(np.ones(2))
    np.testing.assert_allclose(rc.grad, -pc.grad, rtol=1e-15)


def test_dpo_extreme_values_finite():
    h = np.array([1e3, -1e3, 1e4, -1e4])
    for eps in (0.0, 0.1, 0.5):
        pc = Tensor(h.copy(), requires_grad=True)
        losses, _, _ = L.dpo_loss(pc, np.zeros(4), np.zeros(4), np.zeros(4), beta=1.0, label_smoothing=eps)
        losses.backward(np.ones(4))
        assert np.all(np.isfinite(losses.data)) and np.all(np.isfinite(pc.grad))
        np.testing.assert_allclose(losses.data, np.where(h > 0, eps * h, (1 - eps) * -h), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"beta": 0.0}, r"`beta`.*> 0, got 0.0"),
        ({"beta": -1}, r"`beta`.*> 0"),
        ({"beta": float("inf")}, r"`beta`.*finite"),
        ({"beta": float("nan")}, r"`beta`"),
        ({"beta": "0.1"}, r"`beta`.*real number"),
        ({"beta": True}, r"`beta`.*real number"),
        ({"label_smoothing": 0.51}, r"`label_smoothing`.*\[0, 0.5\], got 0.51"),
        ({"label_smoothing": -1e-9}, r"`label_smoothing`"),
        ({"label_smoothing": float("nan")}, r"`label_smoothing`"),
    ],
)
def test_dpo_validation_scalars(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        L.dpo_loss([-1.0], [-2.0], [-1.0], [-2.0], **kwargs)
    assert " / " in str(e.value)


def test_dpo_validation_arrays():
    with pytest.raises(ValueError, match=r"equal shapes.*policy_rejected_logps=\(3,\)"):
        L.dpo_loss([-1.0, -2.0], [-1.0, -2.0, -3.0], [-1.0, -2.0], [-1.0, -2.0])
    with pytest.raises(ValueError, match=r"`reference_chosen_logps` must be finite"):
        L.dpo_loss([-1.0], [-2.0], [float("nan")], [-2.0])
    with pytest.raises(ValueError, match=r"`policy_chosen_logps` must be finite"):
        L.dpo_loss([-float("inf")], [-2.0], [-1.0], [-2.0])


def test_dpo_gradcheck():
    rng = np.random.default_rng(7)
    xs = [Tensor(rng.uniform(-30, -1, 5), requires_grad=True) for _ in range(4)]
    gradcheck(lambda a, b, c, d: L.dpo_loss(a, b, c, d, beta=0.3, label_smoothing=0.2)[0], xs)


def test_dpo_metrics_strict_accuracy():
    m = L.dpo_metrics(np.array([1.0, 0.5, 0.0, -1.0]), np.array([0.0, 0.5, 0.1, -2.0]))
    assert m == {"chosen_rewards": 0.125, "rejected_rewards": -0.35, "reward_margin": 0.475, "reward_accuracy": 0.5}
    _, cr, rr = L.dpo_loss([-1.0, -2.0], [-1.0, -2.0], [-1.0, -2.0], [-1.0, -2.0])
    assert L.dpo_metrics(cr, rr)["reward_accuracy"] == 0.0  # policy == reference: ties count 0
    with pytest.raises(ValueError, match="empty batch"):
        L.dpo_metrics(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="equal shapes"):
        L.dpo_metrics(np.zeros(2), np.zeros(3))


# ------------------------------------------------------------------ §5 reward_loss
def test_reward_loss_values_and_margins():
    c, r = np.array([1.0, -0.5, 3.0]), np.array([0.0, 0.5, 3.0])
    np.testing.assert_allclose(L.reward_loss(c, r), [-_logsig(1.0), -_logsig(-1.0), math.log(2)], rtol=1e-15)
    np.testing.assert_allclose(L.reward_loss(c, r, 0.5), [-_logsig(0.5), -_logsig(-1.5), -_logsig(-0.5)], rtol=1e-15)
    m = np.array([0.0, 1.0, -2.0])
    np.testing.assert_allclose(L.reward_loss(c, r, m), [-_logsig(1.0), -_logsig(-2.0), -_logsig(2.0)], rtol=1e-15)
    assert np.all(np.isfinite(L.reward_loss([1e4, -1e4], [0.0, 0.0])))


def test_reward_loss_validation():
    with pytest.raises(ValueError, match="`rewards_chosen` and `rewards_rejected` must have equal shapes"):
        L.reward_loss([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="`margin`.*shape"):
        L.reward_loss([1.0, 2.0], [1.0, 0.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="`rewards_rejected` must be finite"):
        L.reward_loss([1.0], [float("nan")])
    with pytest.raises(ValueError, match="`margin` must be finite"):
        L.reward_loss([1.0], [0.0], float("inf"))


def test_reward_accuracy_strict():
    assert L.reward_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == 0.5
    assert L.reward_accuracy(Tensor(np.array([1.0]), requires_grad=True), [1.0]) == 0.0


def test_reward_loss_gradcheck():
    rng = np.random.default_rng(8)
    c = Tensor(rng.standard_normal(6) * 3, requires_grad=True)
    r = Tensor(rng.standard_normal(6) * 3, requires_grad=True)
    m = rng.uniform(0, 1, 6)
    gradcheck(lambda a, b: L.reward_loss(a, b, m), [c, r])


# ------------------------------------------------------------------ §6 normalize_scores
def test_normalize_scores_kinds_and_values():
    out = L.normalize_scores([1, 2, 3])
    assert isinstance(out, list) and all(isinstance(v, float) for v in out)
    np.testing.assert_allclose(out, [-math.sqrt(1.5), 0.0, math.sqrt(1.5)], rtol=1e-15)
    arr = L.normalize_scores(np.array([3.0, -1.0]))
    assert isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(arr, [1.0, -1.0])
    assert L.normalize_scores([]) == []
    assert L.normalize_scores([7.0]) == [0.0]
    assert L.normalize_scores((2.0, 2.0, 2.0)) == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(L.normalize_scores(np.array([1e-300, 2e-300, 3e-300])), [-math.sqrt(1.5), 0, math.sqrt(1.5)], atol=1e-15)
    np.testing.assert_allclose(L.normalize_scores(np.array([1e308, -1e308, 1e308])), [math.sqrt(0.5), -math.sqrt(2), math.sqrt(0.5)], rtol=1e-15)
    assert L.normalize_scores([1.0, 1.0 + 2**-52]) == [-1.0, 1.0]  # tolerance-free: a 1-ulp spread is normalised


def test_normalize_scores_validation():
    with pytest.raises(ValueError, match="`scores` must be finite"):
        L.normalize_scores([1.0, float("nan")])
    with pytest.raises(ValueError, match="`scores` must be 1-D"):
        L.normalize_scores(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="`scores` must hold real numbers"):
        L.normalize_scores([1.0, "a"])


def test_normalize_scores_tensor_gradcheck():
    rng = np.random.default_rng(9)
    s = Tensor(rng.standard_normal(6) * 5, requires_grad=True)
    gradcheck(lambda t: L.normalize_scores(t), [s])
    z = Tensor(np.full(3, 2.0), requires_grad=True)
    out = L.normalize_scores(z)
    out.backward(np.ones(3))
    np.testing.assert_array_equal(z.grad, np.zeros(3))


# ------------------------------------------------------------------ §10 reduce_pair_losses
def test_reduce_pair_losses():
    losses = np.array([1.0, 2.0, 3.0])
    assert float(L.reduce_pair_losses(losses)) == 2.0
    assert float(L.reduce_pair_losses(losses, 6)) == 1.0
    with pytest.raises(ValueError, match="num_pairs_in_batch"):
        L.reduce_pair_losses(losses, 2)
    with pytest.raises(ValueError, match="zero pairs"):
        L.reduce_pair_losses(np.zeros(0))
    x = Tensor(losses.copy(), requires_grad=True)
    L.reduce_pair_losses(x, 6).backward()
    np.testing.assert_allclose(x.grad, np.full(3, 1 / 6))


# ------------------------------------------------------------------ dtypes and project rules
def test_float32_inputs_stay_float32():
    with use_backend("numpy", "float32"):
        logits = np.zeros((1, 3, 2), dtype=np.float32)
        assert L.sequence_logps(logits, [[-100, 0, 1]]).dtype == np.float32
        assert L.sft_loss(logits, [[-100, 0, 1]]).dtype == np.float32
        losses, c, r = L.dpo_loss(*(np.zeros(2, dtype=np.float32) for _ in range(4)))
        assert losses.dtype == c.dtype == np.float32
        np.testing.assert_allclose(losses, math.log(2), rtol=1e-6)
        # float64 arrays keep float64 under the float32 policy: the caller's dtype wins
        assert L.reward_loss(np.zeros(2), np.zeros(2)).dtype == np.float64


@pytest.mark.parametrize("module", ["losses/offline.py", "losses/rl.py", "conformance/runner.py"])
def test_module_rules(module):
    src = (ROOT / "vietnamese_ai_ref" / module).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(numpy|cupy)\b", src, re.M)
    assert "import torch" not in src
    doc = src.split('"""')[1]
    assert "What it is for" in doc and "What it is not" in doc
