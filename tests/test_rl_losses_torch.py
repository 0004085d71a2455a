"""rl_losses against a plain-torch transcription of TRL v1.9.0's formulas (values and gradients, float64).

What it is for: an independent oracle for spec/rl.md. The torch functions below are written from
TRL's code paths as the notes (shared/notes/rl-semantics.md) and spec/rl.md cite them: grpo_trainer.py
`_generate_and_score_completions` (advantages) and `_compute_loss` (clipped surrogate, k3 KL, the four
aggregations), rloo_trainer.py (k1 KL in the reward, leave-one-out baseline, sequence ratio),
online_dpo_trainer.py (`first >= second`), trainer/utils.py `nanstd`, `entropy_from_logits`. They use
torch.clamp / torch.min / torch.exp exactly as TRL does, so their autograd is TRL's gradient.
What it is not: a test of TRL itself (TRL is not installed); nor of masked-position robustness, where
rl_losses deliberately masks the log-ratio first (spec/rl.md §3.2), which gives the same numbers here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vietnamese_ai_ref.losses import rl as R  # noqa: E402
from vietnamese_ai_ref.core.autograd import Tensor  # noqa: E402
from vietnamese_ai_ref.backends import use_backend  # noqa: E402

pytestmark = pytest.mark.torch
TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def float64_numpy():
    with use_backend("numpy", "float64"):
        yield


# ------------------------------------------------------------------ TRL's formulas in plain torch
def t_nanstd(x, dim=None):
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True).to(torch.float64)
    # TRL divides the integer counts, which torch does in the default float32 dtype (4/3 -> 1.3333334);
    # spec/rl.md §2 uses the exact n/(n-1), so the oracle divides in float64.
    corr = torch.where(count > 1, count / (count - 1), torch.full_like(count, float("nan")))
    std = torch.sqrt(var * corr)
    return std.squeeze() if dim is None else std.squeeze(dim)


def t_grpo_advantages(rewards, G, scale):
    r = torch.tensor(rewards, dtype=torch.float64)
    mean = torch.nanmean(r.view(-1, G), dim=1).repeat_interleave(G)
    if scale in ("group", "none"):
        std = t_nanstd(r.view(-1, G), dim=1).repeat_interleave(G) if G > 1 else torch.zeros_like(r)
    else:
        std = t_nanstd(r).expand_as(r) if r.numel() > 1 else torch.zeros_like(r)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def t_grpo_loss(lp, old, adv, mask, ref, beta, el, eh, loss_type, level, delta, n_items, max_len, k):
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    log_ratio = lp - old
    if level == "token":
        liw = log_ratio
    else:
        liw = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(liw)
    if beta != 0.0:
        kl = torch.exp(ref - lp) - (ref - lp) - 1
    coef_2 = torch.clamp(coef_1, 1 - el, 1 + eh)
    if delta is not None:
        coef_1 = torch.clamp(coef_1, max=delta)
    ptl = -torch.min(coef_1 * adv, coef_2 * adv)
    if beta != 0.0:
        ptl = ptl + beta * kl
    if loss_type == "grpo":
        return ((ptl * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / k
    if loss_type == "bnpo":
        return (ptl * mask).sum() / mask.sum().clamp(min=1.0) / k
    if loss_type == "dr_grpo":
        return (ptl * mask).sum() / (ptl.size(0) * max_len) / k
    return (ptl * mask).sum() / torch.tensor(float(n_items)).clamp(min=1.0)


def t_rloo_advantages(rewards, G, old, ref, mask, beta, normalize, clip):
    r = torch.tensor(rewards, dtype=torch.float64)
    if clip:
        r = r.clamp(min=clip[0], max=clip[1])
    if beta != 0.0:
        r = r - beta * ((old - ref) * mask).sum(-1)
    g = r.view(-1, G)
    counts = (~torch.isnan(g)).sum(dim=1, keepdim=True)
    total = torch.nansum(g, dim=1, keepdim=True)
    adv = r - ((total - g) / (counts - 1)).view(-1) if G > 1 else torch.zeros_like(r)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (t_nanstd(adv) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def t_rloo_loss(lp, old, adv, mask, el, eh, k):
    coef_1 = torch.exp((lp * mask).sum(1) - (old * mask).sum(1))
    coef_2 = torch.clamp(coef_1, 1 - el, 1 + eh)
    return (-torch.min(coef_1 * adv, coef_2 * adv)).mean() / k


# ------------------------------------------------------------------ inputs
def _rollout(seed, B=6, T=7, spread=0.3):
    rng = np.random.default_rng(seed)
    lp = rng.normal(-2.0, 1.0, (B, T))
    old = lp + rng.normal(0.0, spread, (B, T))  # ratios from ~0.4 to ~2.5: every clip branch occurs
    ref = lp + rng.normal(0.0, 0.5, (B, T))
    adv = rng.normal(0.0, 1.0, B)
    lengths = rng.integers(0, T + 1, B)
    lengths[0], lengths[1] = T, 0  # a full row and an all-masked row
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    return lp, old, ref, adv, mask, rng


def _ours_and_torch(ours_fn, torch_fn, lp, up):
    x = Tensor(lp.copy(), requires_grad=True)
    out = ours_fn(x)
    out.backward(np.asarray(up))
    tx = torch.tensor(lp, requires_grad=True)
    tout = torch_fn(tx)
    tout.backward(torch.tensor(up, dtype=torch.float64))
    return out.data, x.grad, tout.detach().numpy(), tx.grad.numpy()


GRPO_CASES = list(itertools.product(R.GRPO_LOSS_TYPES, ("token", "sequence"), (0.0, 0.04), (None, 1.6), (None, 0.28)))


@pytest.mark.parametrize("loss_type,level,beta,delta,eps_high", GRPO_CASES)
def test_grpo_loss_matches_trl_formulas(loss_type, level, beta, delta, eps_high):
    lp, old, ref, adv, mask, rng = _rollout(sum(map(ord, loss_type + level)))
    up = float(rng.normal())
    n_items, k = int(mask.sum()) + 5, 3  # a window larger than this micro-batch; 3 accumulation steps
    kw = dict(ref_logps=ref, beta=beta, epsilon_low=0.2, epsilon_high=eps_high, loss_type=loss_type,
              importance_sampling_level=level, delta=delta, num_items_in_batch=n_items,
              max_completion_length=9, num_accumulation_steps=k)
    eh = 0.2 if eps_high is None else eps_high
    tm, tref, tadv, told = (torch.tensor(a, dtype=torch.float64) for a in (mask, ref, adv, old))
    v, g, tv, tg = _ours_and_torch(
        lambda x: R.grpo_loss(x, old, adv, mask, **kw),
        lambda tx: t_grpo_loss(tx, told, tadv, tm, tref, beta, 0.2, eh, loss_type, level, delta, n_items, 9, k),
        lp, up)
    np.testing.assert_allclose(v, tv, **TOL)
    np.testing.assert_allclose(g, tg, **TOL)
    assert np.abs(g).max() > 1e-3  # a real gradient was compared


@pytest.mark.parametrize("loss_type", R.GRPO_LOSS_TYPES)
def test_grpo_loss_on_policy_ratio_one_matches_trl(loss_type):
    """num_iterations = 1: old = logp.detach(), r = 1 exactly; TRL's torch.min tie gives the full −A gradient."""
    lp, _, ref, adv, mask, rng = _rollout(7)
    adv_tok = rng.normal(size=lp.shape)  # (B, T) advantages too
    for a in (adv, adv_tok):
        up = float(rng.normal())
        v, g, tv, tg = _ours_and_torch(
            lambda x: R.grpo_loss(x, None, a, mask, ref, 0.1, loss_type=loss_type, num_items_in_batch=None,
                                  max_completion_length=7),
            lambda tx: t_grpo_loss(tx, tx.detach(), torch.tensor(a), torch.tensor(mask, dtype=torch.float64),
                                   torch.tensor(ref), 0.1, 0.2, 0.2, loss_type, "token", None, int(mask.sum()), 7, 1),
            lp, up)
        np.testing.assert_allclose(v, tv, **TOL)
        np.testing.assert_allclose(g, tg, **TOL)


@pytest.mark.parametrize("scale", ("group", "batch", "none"))
@pytest.mark.parametrize("G", (1, 2, 4))
def test_grpo_advantages_match_trl(scale, G):
    rng = np.random.default_rng(G)
    r = rng.normal(size=4 * G)
    r[1] = np.nan  # an unscorable completion
    if G > 1:
        r[G:2 * G] = 3.0  # a zero-std group
    if G >= 4:
        r[2 * G:3 * G - 1] = np.nan  # a group with one scorable reward (std NaN)
    np.testing.assert_allclose(R.grpo_advantages(r, G, scale), t_grpo_advantages(r, G, scale).numpy(), **TOL)


@pytest.mark.parametrize("normalize", (False, True))
@pytest.mark.parametrize("beta,clip", ((0.0, None), (0.05, None), (0.05, (-1.0, 1.5))))
@pytest.mark.parametrize("G", (1, 2, 3))
def test_rloo_advantages_match_trl(normalize, beta, clip, G):
    B = 4 * G
    lp, old, ref, _, mask, rng = _rollout(10 + G, B=B)
    r = rng.normal(0.0, 2.0, B)
    r[0] = np.nan
    if G == 3:
        r[3:5] = np.nan  # one scorable row in the second group
    want = t_rloo_advantages(r, G, torch.tensor(old), torch.tensor(ref), torch.tensor(mask, dtype=torch.float64),
                             beta, normalize, clip).numpy()
    got = R.rloo_advantages(r, G, old, ref, mask, beta, normalize, clip)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("eps_high,k", ((None, 1), (0.3, 1), (None, 4)))
def test_rloo_loss_matches_trl(eps_high, k):
    lp, old, _, adv, mask, rng = _rollout(3, spread=0.15)
    up = float(rng.normal())
    eh = 0.2 if eps_high is None else eps_high
    v, g, tv, tg = _ours_and_torch(
        lambda x: R.rloo_loss(x, old, adv, mask, 0.2, eps_high, k),
        lambda tx: t_rloo_loss(tx, torch.tensor(old), torch.tensor(adv), torch.tensor(mask, dtype=torch.float64), 0.2, eh, k),
        lp, up)
    np.testing.assert_allclose(v, tv, **TOL)
    np.testing.assert_allclose(g, tg, **TOL)


def test_online_dpo_pairs_match_trl_choice():
    rng = np.random.default_rng(5)
    P = 6
    r = rng.integers(-2, 3, 2 * P).astype(float)  # small integers: ties occur
    eos = rng.random(2 * P) < 0.6
    for pen in (None, 1.0):
        # TRL's layout is [first samples; second samples]; ours interleaves (2p, 2p+1)
        tr = torch.tensor(r.reshape(P, 2).T.reshape(-1))
        te = torch.tensor(eos.reshape(P, 2).T.reshape(-1))
        if pen is not None:
            tr[~te] -= pen
        first, second = tr.split(P)
        m = first >= second
        chosen_col = (~m).long().numpy()  # 0 = first sample
        c, rej = R.online_dpo_pairs(r, eos, pen)
        np.testing.assert_array_equal(c, 2 * np.arange(P) + chosen_col)
        np.testing.assert_array_equal(rej, 2 * np.arange(P) + 1 - chosen_col)


def test_token_logps_and_entropy_match_trl():
    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 3.0, (2, 5, 9))
    ids = rng.integers(0, 9, (2, 5))
    for T in (1.0, 0.7):
        tl = torch.tensor(logits, requires_grad=True)
        z = tl / T
        want_lp = torch.gather(torch.log_softmax(z, -1), -1, torch.tensor(ids)[..., None])[..., 0]
        lps = torch.log_softmax(z, -1)
        want_h = -(torch.exp(lps) * lps).sum(-1)
        up = rng.normal(size=(2, 5))
        (want_lp * torch.tensor(up)).sum().backward()
        x = Tensor(logits.copy(), requires_grad=True)
        got = R.token_logps(x, ids, T)
        got.backward(up)
        np.testing.assert_allclose(got.data, want_lp.detach().numpy(), **TOL)
        np.testing.assert_allclose(x.grad, tl.grad.numpy(), **TOL)
        np.testing.assert_allclose(R.token_entropy(logits, T), want_h.detach().numpy(), **TOL)


# ------------------------------------------------------------------ the committed golden vectors, re-derived in torch
def _vector_cases(fn):
    import json
    from pathlib import Path

    from vietnamese_ai_ref.conformance import decode

    path = Path(__file__).resolve().parent.parent / "spec" / "vectors" / f"{fn}.json"
    return [(c["name"], decode(c["args"]), decode(c["expected"]), decode(c["grad"]) if "grad" in c else None)
            for c in json.loads(path.read_text(encoding="utf-8"))["cases"] if "expected" in c]


def _t(a):
    return None if a is None else torch.tensor(np.asarray(a, dtype=np.float64))


def test_golden_grpo_loss_vectors_match_trl_formulas():
    cases = _vector_cases("grpo_loss")
    assert len(cases) >= 20
    for name, a, exp, grad in cases:
        eh = a["epsilon_low"] if a["epsilon_high"] is None else a["epsilon_high"]
        n = int(a["mask"].sum()) if a["num_items_in_batch"] is None else a["num_items_in_batch"]
        tx = torch.tensor(a["logps"], requires_grad=True)
        out = t_grpo_loss(tx, _t(a["old_logps"]), _t(a["advantages"]), _t(a["mask"]), _t(a["ref_logps"]), a["beta"],
                          a["epsilon_low"], eh, a["loss_type"], a["importance_sampling_level"], a["delta"], n,
                          a["max_completion_length"], a["num_accumulation_steps"])
        out.backward(_t(grad["upstream"]))
        np.testing.assert_allclose(out.detach().numpy(), exp["loss"], **TOL, err_msg=name)
        np.testing.assert_allclose(tx.grad.numpy(), grad["expected"]["logps"], **TOL, err_msg=name)


def test_golden_rloo_and_advantage_vectors_match_trl_formulas():
    for name, a, exp, grad in _vector_cases("rloo_loss"):
        eh = a["epsilon_low"] if a["epsilon_high"] is None else a["epsilon_high"]
        tx = torch.tensor(a["logps"], requires_grad=True)
        out = t_rloo_loss(tx, _t(a["old_logps"]), _t(a["advantages"]), _t(a["mask"]), a["epsilon_low"], eh,
                          a["num_accumulation_steps"])
        out.backward(_t(grad["upstream"]))
        np.testing.assert_allclose(out.detach().numpy(), exp["loss"], **TOL, err_msg=name)
        np.testing.assert_allclose(tx.grad.numpy(), grad["expected"]["logps"], **TOL, err_msg=name)
    for name, a, exp, _ in _vector_cases("grpo_advantages"):
        want = t_grpo_advantages(a["rewards"], a["num_generations"], a["scale_rewards"]).numpy()
        np.testing.assert_allclose(exp["advantages"], want, **TOL, err_msg=name)
    for name, a, exp, _ in _vector_cases("rloo_advantages"):
        want = t_rloo_advantages(a["rewards"], a["num_generations"], _t(a["old_logps"]), _t(a["ref_logps"]),
                                 _t(a["mask"]), a["beta"], a["normalize_advantages"], a["reward_clip_range"]).numpy()
        np.testing.assert_allclose(exp["advantages"], want, **TOL, err_msg=name)
    for name, a, exp, _ in _vector_cases("online_dpo_pairs"):
        r = torch.tensor(a["rewards"])
        if a["missing_eos_penalty"] is not None:
            r[~torch.tensor(a["has_eos"])] -= a["missing_eos_penalty"]
        first_wins = (r[0::2] >= r[1::2]).numpy()
        np.testing.assert_array_equal(exp["chosen_index"], 2 * np.arange(len(first_wins)) + (~first_wins), err_msg=name)
