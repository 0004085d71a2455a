"""A conformance adapter written in plain PyTorch: an independent implementation of spec/losses.md.

What it is for: showing how another implementation plugs into the conformance runner, and checking
that the golden vectors are not an artefact of `vietnamese_ai_ref`'s own code (this file shares no
code with it; gradients come from torch autograd). Run from the repository root:

    python -m vietnamese_ai_ref.conformance examples.torch_adapter
    python -m vietnamese_ai_ref.conformance examples/torch_adapter.py

What it is not: part of the package (torch is never a run-time dependency of vietnamese_ai_ref), nor a
trainer. It computes in float64 on the CPU, as the vectors require at their default tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

name = f"plain torch {torch.__version__} (float64, CPU)"
IGNORE = -100
_DPO = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")


def _t(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def _np(t):
    return t.detach().cpu().numpy()


def _fail(vi, en):
    raise ValueError(f"{vi} / {en}")


# ---------------------------------------------------------------- sequence log-probability (§1)
def _labels(logits, labels):
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    B, T, V = logits.shape
    if lab.shape != (B, T):
        _fail("labels sai dạng", f"labels must have shape {(B, T)}, got {tuple(lab.shape)}")
    tgt = lab[:, 1:]
    if bool(((tgt != IGNORE) & ((tgt < 0) | (tgt >= V))).any()):
        _fail("token id ngoài phạm vi", f"target ids must lie in [0, {V}) or be {IGNORE}")
    return tgt


def _seq_logps(logits, labels):
    tgt = _labels(logits, labels)
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
    mask = tgt != IGNORE
    picked = torch.gather(logp, 2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=-1)


def sequence_logps(logits, labels):
    return _np(_seq_logps(_t(logits), labels))


def sequence_logps_grad(logits, labels, upstream):
    x = _t(logits, grad=True)
    (_seq_logps(x, labels) * _t(upstream)).sum().backward()
    return {"logits": _np(x.grad)}


# ---------------------------------------------------------------- SFT loss (§2)
def _sft(logits, labels, num_items_in_batch):
    tgt = _labels(logits, labels)
    local = int((tgt != IGNORE).sum())
    if num_items_in_batch is None:
        if local == 0:
            _fail("không có token đích", "no target token and num_items_in_batch is None")
        n = local
    else:
        n = int(num_items_in_batch)
        if n != num_items_in_batch or n < 1 or n < local:
            _fail("num_items_in_batch không hợp lệ", f"num_items_in_batch must be an integer >= max(1, {local})")
    V = logits.shape[-1]
    total = F.cross_entropy(logits[:, :-1, :].reshape(-1, V), tgt.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total / n


def sft_loss(logits, labels, num_items_in_batch):
    return _np(_sft(_t(logits), labels, num_items_in_batch))


def sft_loss_grad(logits, labels, num_items_in_batch, upstream):
    x = _t(logits, grad=True)
    (_sft(x, labels, num_items_in_batch) * _t(upstream)).sum().backward()
    return {"logits": _np(x.grad)}


# ---------------------------------------------------------------- DPO (§3, §4)
def _dpo(pc, pr, rc, rr, beta, label_smoothing):
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        _fail("beta không hợp lệ", f"beta must be finite and > 0, got {beta!r}")
    if not (0.0 <= label_smoothing <= 0.5):
        _fail("label_smoothing không hợp lệ", f"label_smoothing must lie in [0, 0.5], got {label_smoothing!r}")
    if len({tuple(t.shape) for t in (pc, pr, rc, rr)}) != 1:
        _fail("dạng không khớp", "the four log-prob inputs must have equal shapes")
    if not all(bool(torch.isfinite(t).all()) for t in (pc, pr, rc, rr)):
        _fail("đầu vào không hữu hạn", "inputs must be finite")
    logits = (pc - pr) - (rc - rr)
    losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
              - F.logsigmoid(-beta * logits) * label_smoothing)
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def dpo_loss(pc, pr, rc, rr, beta, label_smoothing):
    return tuple(_np(o) for o in _dpo(*(_t(v) for v in (pc, pr, rc, rr)), beta, label_smoothing))


def dpo_loss_grad(pc, pr, rc, rr, beta, label_smoothing, upstream):
    xs = [_t(v, grad=True) for v in (pc, pr, rc, rr)]
    losses, _, _ = _dpo(*xs, beta, label_smoothing)
    (losses * _t(upstream)).sum().backward()
    return {n: _np(x.grad) for n, x in zip(_DPO, xs)}


# ---------------------------------------------------------------- reward model (§5)
def _rm(c, r, margin):
    if c.shape != r.shape:
        _fail("dạng không khớp", "rewards_chosen and rewards_rejected must have equal shapes")
    if not (bool(torch.isfinite(c).all()) and bool(torch.isfinite(r).all())):
        _fail("đầu vào không hữu hạn", "rewards must be finite")
    d = c - r
    if margin is not None:
        d = d - _t(margin)
    return -F.logsigmoid(d)


def reward_loss(rewards_chosen, rewards_rejected, margin):
    return _np(_rm(_t(rewards_chosen), _t(rewards_rejected), margin))


def reward_loss_grad(rewards_chosen, rewards_rejected, margin, upstream):
    c, r = _t(rewards_chosen, grad=True), _t(rewards_rejected, grad=True)
    (_rm(c, r, margin) * _t(upstream)).sum().backward()
    return {"rewards_chosen": _np(c.grad), "rewards_rejected": _np(r.grad)}


# ---------------------------------------------------------------- normalised score (§6)
def normalize_scores(scores):
    s = _t(scores)
    if not bool(torch.isfinite(s).all()):
        _fail("điểm không hữu hạn", "scores must be finite")
    if s.numel() < 2 or bool((s == s[0]).all()):
        return np.zeros(s.shape)
    s = s / s.abs().max()  # scale-invariant; keeps squares away from overflow/underflow
    d = s - s.mean()
    return _np(d / d.pow(2).mean().sqrt())
