"""A deliberately WRONG conformance adapter: the conformance runner must reject it.

What it is for: demonstrating (and testing, tests/test_conformance.py) that the golden vectors catch
a plausible bug. It is the reference implementation except for `dpo_loss`, where the label-smoothing
term has the wrong sign — losses = −(1−ε)·log σ(βh) **+** ε·log σ(−βh) — a slip easily made when
copying the *robust* DPO loss. Vectors with ε = 0 still pass; every vector with ε > 0 must FAIL. It
also omits `dpo_loss_grad`, so the DPO gradient checks are reported SKIP.

    python -m vietnamese_ai_ref.conformance examples.wrong_adapter     # exits 1

What it is not: an example to copy.
"""

from __future__ import annotations

import numpy as np

from vietnamese_ai_ref.conformance import reference_adapter as _ref

name = "wrong adapter (label-smoothing sign flipped; no dpo_loss_grad)"

sequence_logps = _ref.sequence_logps
sequence_logps_grad = _ref.sequence_logps_grad
sft_loss = _ref.sft_loss
sft_loss_grad = _ref.sft_loss_grad
reward_loss = _ref.reward_loss
reward_loss_grad = _ref.reward_loss_grad
normalize_scores = _ref.normalize_scores


def _logsigmoid(x):
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def dpo_loss(pc, pr, rc, rr, beta, label_smoothing):
    # validation and rewards from the reference; only the loss formula is wrong
    _, chosen_rewards, rejected_rewards = _ref.dpo_loss(pc, pr, rc, rr, beta, label_smoothing)
    z = beta * ((np.asarray(pc) - np.asarray(pr)) - (np.asarray(rc) - np.asarray(rr)))
    losses = -(1.0 - label_smoothing) * _logsigmoid(z) + label_smoothing * _logsigmoid(-z)  # BUG: + instead of -
    return losses, chosen_rewards, rejected_rewards
