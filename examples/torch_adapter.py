"""A conformance adapter written in plain PyTorch: an independent implementation of spec/losses.md
and of the GRPO and RLOO trainer vectors of spec/rl.md §11 (the spec 1.1 RL functions are left out).

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


# ---------------------------------------------------------------- end-to-end trainer vectors
# An independent trainer: its own GPT-2 forward in torch (spec/model.md §2–§5), torch autograd,
# torch.optim.AdamW (foreach=False) with a decay and a no-decay parameter group, torch.optim.lr_scheduler.LambdaLR
# with transformers' linear warmup/decay, torch.nn.utils.clip_grad_norm_, and losses summed over each
# micro-batch and divided by the window's token (SFT) or pair (DPO, reward model) count. It follows the
# vector's explicit `windows` (the order is an input) and shares no code with vietnamese_ai_ref.

def _gpt2_hidden(P, cfg, ids, mask):
    """Final hidden states (B, T, d) of GPT-2 (pre-LN, gelu_new, right padding per spec/model.md §4)."""
    B, T = ids.shape
    d, H, eps = int(cfg["n_embd"]), int(cfg["n_head"]), float(cfg["layer_norm_epsilon"])
    hd = d // H
    n_real = mask.sum(dim=1)  # (B,)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (j <= i)[None] & ((j[None] < n_real[:, None, None]) | (j == i)[None])  # (B, T, T)
    x = P["wte.weight"][ids] + P["wpe.weight"][:T][None]
    for layer in range(int(cfg["n_layer"])):
        h = f"h.{layer}."
        a = F.layer_norm(x, (d,), P[h + "ln_1.weight"], P[h + "ln_1.bias"], eps)
        q, k, v = (a @ P[h + "attn.c_attn.weight"] + P[h + "attn.c_attn.bias"]).split(d, dim=-1)
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed[:, None], torch.finfo(s.dtype).min)
        y = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + y @ P[h + "attn.c_proj.weight"] + P[h + "attn.c_proj.bias"]
        m = F.layer_norm(x, (d,), P[h + "ln_2.weight"], P[h + "ln_2.bias"], eps)
        m = F.gelu(m @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"], approximate="tanh")
        x = x + m @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"]
    return F.layer_norm(x, (d,), P["ln_f.weight"], P["ln_f.bias"], eps)


def _long(a):
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _seq_logps_t(logits, labels):
    tgt = labels[:, 1:]
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = torch.gather(logp, 2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (tgt != IGNORE)).sum(dim=-1)


def run_trainer_vector(inputs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from threads (and loses a lot on a busy machine)
    try:
        return _run_trainer_vector(inputs)
    finally:
        torch.set_num_threads(threads)


def _optimizer(inputs):
    """(parameters, AdamW with a decay and a no-decay group, LambdaLR: linear warm-up then decay)."""
    tc = inputs["trainer_config"]
    P = {n: torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=True)
         for n, a in inputs["parameters"].items()}
    no_decay = set(tc["no_decay_parameters"])
    groups = [{"params": [p for n, p in P.items() if n not in no_decay], "weight_decay": float(tc["weight_decay"])},
              {"params": [p for n, p in P.items() if n in no_decay], "weight_decay": 0.0}]
    b1, b2 = tc["adam_betas"]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(tc["toc_do_hoc"]), betas=(b1, b2),
                            eps=float(tc["adam_eps"]), foreach=False)
    T_, W = int(tc["total_steps"]), int(tc["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, W) if s < W else max(0.0, (T_ - s) / max(1, T_ - W)))
    return P, opt, sched


def _update(P, opt, sched, tc, out, step, step_loss):
    """The end of an optimiser step: record step 1's loss and (pre-clip) gradients, clip (gradient_clip
    = 0 disables clipping, spec/api.md; the norm is still reported), the AdamW step at this step's rate,
    the schedule's step; append the step's rate, loss and pre-clip norm to `out`."""
    if step == 0:
        out["loss"] = step_loss
        out["grads"] = {n: _np(p.grad).copy() for n, p in P.items()}
    clip = float(tc["gradient_clip"])
    if clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(list(P.values()), clip, foreach=False))
    else:
        norm = float(torch.sqrt(sum((p.grad * p.grad).sum() for p in P.values())))
    if step == 0:
        out["grad_norm"] = norm
    out["learning_rates"].append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
    out["loss_trajectory"].append(step_loss)
    out["grad_norms"].append(norm)


def _run_trainer_vector(inputs):
    kind, cfg, tc = inputs["trainer"], inputs["model_config"], inputs["trainer_config"]
    if kind in ("grpo", "rloo"):
        return _run_online(inputs)
    if kind not in ("sft", "dpo", "reward"):
        raise NotImplementedError(f"trainer {kind!r}")
    P, opt, sched = _optimizer(inputs)
    mbs, windows = inputs["micro_batches"], inputs["windows"]
    beta, eps = float(tc.get("beta", 0.1)), float(tc.get("label_smoothing", 0.0))

    def logits_of(ids, mask):
        return _gpt2_hidden(P, cfg, ids, mask) @ P["wte.weight"].T

    def scores_of(ids, mask):
        h = _gpt2_hidden(P, cfg, ids, mask)
        last = h[torch.arange(ids.shape[0]), mask.sum(dim=1) - 1]
        return (last @ P["score.weight"].T).reshape(-1)

    def side(mb, s):
        return _long(mb[f"{s}_input_ids"]), _long(mb[f"{s}_attention_mask"])

    ref = {}
    if kind == "dpo":  # the reference model = the initial parameters, evaluated once, without a graph
        with torch.no_grad():
            for w in windows:
                for i in w:
                    ref[i] = tuple(_seq_logps_t(logits_of(*side(mbs[i], s)), _long(mbs[i][f"{s}_labels"]))
                                   for s in ("chosen", "rejected"))

    out = {"loss_trajectory": [], "learning_rates": [], "grad_norms": []}
    stat_names = {"sft": (), "dpo": ("chosen_rewards", "rejected_rewards", "reward_margin"),
                  "reward": ("accuracy", "reward_margin")}[kind]
    for k in stat_names:
        out[k] = []
    for step, window in enumerate(windows):
        if kind == "sft":
            denom = sum(int((_long(mbs[i]["labels"])[:, 1:] != IGNORE).sum()) for i in window)
        else:
            denom = sum(int(np.asarray(mbs[i]["chosen_input_ids"]).shape[0]) for i in window)
        opt.zero_grad(set_to_none=False)
        step_loss, sums = 0.0, {k: 0.0 for k in stat_names}
        for i in window:
            mb = mbs[i]
            if kind == "sft":
                ids, mask, labels = _long(mb["input_ids"]), _long(mb["attention_mask"]), _long(mb["labels"])
                logits = logits_of(ids, mask)
                V = logits.shape[-1]
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1),
                                       ignore_index=IGNORE, reduction="sum") / denom
                if step == 0 and "logits" not in out:
                    out["logits"] = _np(logits)
            elif kind == "dpo":
                pc = _seq_logps_t(logits_of(*side(mb, "chosen")), _long(mb["chosen_labels"]))
                pr = _seq_logps_t(logits_of(*side(mb, "rejected")), _long(mb["rejected_labels"]))
                rc, rr = ref[i]
                z = beta * ((pc - pr) - (rc - rr))
                per_pair = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
                loss = per_pair.sum() / denom
                cr, rj = beta * (pc - rc).detach(), beta * (pr - rr).detach()
                sums["chosen_rewards"] += float(cr.sum())
                sums["rejected_rewards"] += float(rj.sum())
                sums["reward_margin"] += float((cr - rj).sum())
                if step == 0 and "logps" not in out:
                    out["logps"] = {"policy_chosen": _np(pc), "policy_rejected": _np(pr),
                                    "reference_chosen": _np(rc), "reference_rejected": _np(rr)}
            else:
                c, r = scores_of(*side(mb, "chosen")), scores_of(*side(mb, "rejected"))
                m = torch.as_tensor(np.asarray(mb["margin"], dtype=np.float64))
                loss = -F.logsigmoid(c - r - m).sum() / denom
                sums["accuracy"] += float((c > r).sum())
                sums["reward_margin"] += float((c - r).detach().sum())
                if step == 0 and "scores" not in out:
                    out["scores"] = {"chosen": _np(c), "rejected": _np(r)}
            loss.backward()
            step_loss += loss.item()
        _update(P, opt, sched, tc, out, step, step_loss)
        n_pairs = denom if kind != "sft" else 1
        for k in stat_names:
            out[k].append(sums[k] / n_pairs)
    for k in ("loss_trajectory", "learning_rates", "grad_norms") + stat_names:
        out[k] = np.asarray(out[k], dtype=np.float64)
    out["parameters_after"] = {n: _np(p) for n, p in P.items()}
    return out


# ---------------------------------------------------------------- spec 1.1: GRPO and RLOO on fixed rollouts
# TRL v1.9.0's formulas (spec/rl.md §2, §3, §5, §6, §8), written again here: per-token log-probs of
# logits ÷ temperature, group advantages (nanmean, Bessel nanstd, + 1e-4) or RLOO's k1 KL in the reward
# and leave-one-out baseline, one update per rollout (old log-probs = this forward, detached), GRPO's
# clipped surrogate + β·k3 KL summed over the window's mask tokens ÷ their count (dapo), RLOO's
# sequence-level clipped surrogate, mean over rows ÷ micro-batch count. Reference = initial weights.

def _run_online(inputs):
    kind, cfg, tc = inputs["trainer"], inputs["model_config"], inputs["trainer_config"]
    if tc.get("loss_type", "dapo") != "dapo" or tc.get("importance_sampling_level", "token") != "token":
        raise NotImplementedError("only loss_type 'dapo' at token level")
    P, opt, sched = _optimizer(inputs)
    P0 = {n: p.detach().clone() for n, p in P.items()}
    G, temp, beta = int(tc["num_generations"]), float(tc["temperature"]), float(tc["beta"])
    lo, hi = 1 - float(tc["epsilon"]), 1 + float(tc["epsilon_high"] if tc["epsilon_high"] is not None else tc["epsilon"])
    mbs, windows = inputs["micro_batches"], inputs["windows"]

    def token_logps(params, mb):  # (B, T−1): log softmax(logits ÷ temperature) at the next token
        ids, att = _long(mb["input_ids"]), _long(mb["attention_mask"])
        z = (_gpt2_hidden(params, cfg, ids, att) @ params["wte.weight"].T)[:, :-1] / temp
        return torch.gather(torch.log_softmax(z, dim=-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)

    def mask(mb):
        return torch.as_tensor(np.asarray(mb["completion_mask"], dtype=np.float64))

    out = {"loss_trajectory": [], "learning_rates": [], "grad_norms": [], "kl": [], "advantages": []}
    for step, window in enumerate(windows):
        with torch.no_grad():
            old = {i: token_logps(P, mbs[i]) for i in window}
            ref = {i: token_logps(P0, mbs[i]) for i in window}
        if step == 0:
            out["token_logps"] = _np(old[window[0]])
        R = torch.as_tensor(np.asarray(inputs["rewards"][step], dtype=np.float64))
        if kind == "grpo":
            A, kl_num, kl_den = _grpo_advantages(R, G), 0.0, 0.0
        else:
            kl_seq = torch.cat([((old[i] - ref[i]) * mask(mbs[i])).sum(dim=1) for i in window])
            A = _rloo_advantages(R - beta * kl_seq, G)
            out["kl"].append(float(kl_seq.mean()))
        out["advantages"].append(_np(A))
        N = sum(float(mask(mbs[i]).sum()) for i in window)
        opt.zero_grad(set_to_none=False)
        step_loss, row = 0.0, 0
        for i in window:
            lp, m = token_logps(P, mbs[i]), mask(mbs[i])
            a = A[row:row + lp.shape[0]]
            row += lp.shape[0]
            if kind == "grpo":
                ratio = torch.exp(lp - lp.detach())
                a2 = a[:, None]
                per_token = -torch.min(ratio * a2, torch.clamp(ratio, lo, hi) * a2)
                d = ref[i] - lp
                k3 = torch.exp(d) - d - 1
                loss = ((per_token + beta * k3) * m).sum() / max(N, 1.0)
                kl_num, kl_den = kl_num + float((k3.detach() * m).sum()), kl_den + float(m.sum())
            else:
                s = (lp * m).sum(dim=1)
                ratio = torch.exp(s - s.detach())
                loss = -torch.min(ratio * a, torch.clamp(ratio, lo, hi) * a).mean() / len(window)
            loss.backward()
            step_loss += loss.item()
        if kind == "grpo":
            out["kl"].append(kl_num / kl_den)
        _update(P, opt, sched, tc, out, step, step_loss)
    for k in ("loss_trajectory", "learning_rates", "grad_norms", "kl", "advantages"):
        out[k] = np.asarray(out[k], dtype=np.float64)
    out["parameters_after"] = {n: _np(p) for n, p in P.items()}
    return out


def _nanstd(x):  # Bessel-corrected over the non-NaN entries; NaN with fewer than 2
    x = x[~torch.isnan(x)]
    return x.std(unbiased=True) if x.numel() > 1 else torch.tensor(float("nan"), dtype=torch.float64)


def _grpo_advantages(R, G):
    groups = R.view(-1, G)
    mean = torch.nanmean(groups, dim=1, keepdim=True)
    std = torch.stack([_nanstd(g) for g in groups])[:, None]
    return torch.nan_to_num((groups - mean) / (std + 1e-4), nan=0.0).reshape(-1)


def _rloo_advantages(R, G):
    groups = R.view(-1, G)
    ok = ~torch.isnan(groups)
    total, count = torch.where(ok, groups, 0.0).sum(dim=1, keepdim=True), ok.sum(dim=1, keepdim=True)
    baseline = (total - groups) / (count - 1)  # the other scorable rows' mean
    return torch.nan_to_num(groups - baseline, nan=0.0, posinf=0.0, neginf=0.0).reshape(-1)
