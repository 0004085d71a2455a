"""A conformance adapter over TRL 0.28 and transformers: what a TRL user's stack computes, checked.

What it is for: running TRL's own loss code and transformers' own GPT-2 through the golden vectors, in
float64 on the CPU. Run from the repository root:

    python -m vietnamese_ai_ref.conformance examples/trl_adapter.py                   # TRL 0.28: PASS (spec 1.0)
    python -m vietnamese_ai_ref.conformance examples/trl_adapter.py:trl_0_29_sigmoid  # TRL >= 0.29: FAILs cDPO

What comes from where:
- `dpo_loss`: TRL 0.28's `DPOTrainer.dpo_loss` (loss_type "sigmoid", conservative label smoothing),
  called unbound on an object that holds exactly the attributes it reads (beta, label_smoothing,
  reference_free, f_divergence_type, ...): building a whole trainer needs a model and a data set and
  changes nothing in this function.
- `reward_loss`: TRL's `RewardTrainer.compute_loss` (−log σ(r_c − r_r − m)), called the same way, per
  pair, with a stand-in model that returns the given rewards as its logits.
- `sequence_logps`: TRL's `selective_log_softmax`, masked and summed as DPOTrainer does.
- `sft_loss`: transformers' `fixed_cross_entropy` (the reduction `ForCausalLMLoss` uses). Not
  `ForCausalLMLoss` itself: it upcasts with `logits.float()`, which turns float64 logits into float32,
  and its result then misses the 1e-12 tolerance by five orders of magnitude (1.3e-7 measured).
- `run_trainer_vector`: transformers' `GPT2LMHeadModel` / `GPT2ForSequenceClassification` (eager
  attention, float64) loaded with the vector's weights, TRL's `create_reference_model` for the DPO
  reference, the losses above, `torch.optim.AdamW` with transformers' `get_linear_schedule_with_warmup`
  and `torch.nn.utils.clip_grad_norm_` — the pieces `transformers.Trainer` uses. The window reduction
  is the spec's (losses.md §2, §10: summed losses over the window's token or pair count); TRL itself
  averages each micro-batch, which the vectors reject (spec/vectors/README.md).
- `normalize_scores` (losses.md §6): TRL has no such function; a few lines here.
Input validation (ValueError for what the spec rejects) is this adapter's; TRL does not validate.

`trl_0_29_sigmoid` is the same adapter with TRL ≥ 0.29's sigmoid DPO loss, which dropped label
smoothing: TRL 0.29.0's `DPOTrainer._compute_loss` computes, inline (there is no `dpo_loss` method any
more), `per_sequence_loss = -F.logsigmoid(self.beta * delta_score)` with `delta_score` the difference
of the policy/reference log-ratios, and rewards `beta * logratios`. That formula is reproduced here
(the inline loss cannot be called with given log-probabilities); it FAILs exactly the vectors with
label_smoothing > 0 (losses.md §3, conservative DPO; docs/conformance.md has the numbers).

The SFT half (sft_loss, run_trainer_vector on trainer_sft) needs only torch and transformers; TRL is
imported on first use. What it is not: part of the package, nor a wrapper of TRL's trainers' loops.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, get_linear_schedule_with_warmup
from transformers.loss.loss_utils import fixed_cross_entropy

IGNORE = -100
_DPO = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")


def _t(x, grad=False):
    return torch.tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def _np(t):
    return t.detach().cpu().numpy()


def _fail(vi, en):
    raise ValueError(f"{vi} / {en}")


# ---------------------------------------------------------------- TRL, imported on first use
_TRL = {}


def _trl():
    """TRL's DPOTrainer, RewardTrainer, selective_log_softmax and create_reference_model."""
    if not _TRL:
        import trl.import_utils as iu
        from transformers.utils import import_utils as tu

        if isinstance(tu._is_package_available("_no_such_package_"), tuple):
            # TRL 0.28 reads `_is_package_available(name)` as a bool; transformers 5 returns a tuple, always
            # truthy, so TRL would import optional packages that are absent (weave, ...). Read its first item.
            def available(name, return_version=False):
                return tu._is_package_available(name, return_version) if return_version else tu._is_package_available(name)[0]

            iu._is_package_available = available
        import trl
        from trl.models import create_reference_model
        from trl.trainer.dpo_trainer import DPOTrainer
        from trl.trainer.reward_trainer import RewardTrainer
        from trl.trainer.utils import selective_log_softmax

        _TRL.update(version=trl.__version__, DPOTrainer=DPOTrainer, RewardTrainer=RewardTrainer,
                    selective_log_softmax=selective_log_softmax, create_reference_model=create_reference_model)
    return _TRL


# ---------------------------------------------------------------- the loss functions
def _check_labels(logits, labels):
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    B, T, V = logits.shape
    if lab.shape != (B, T):
        _fail("labels sai dạng", f"labels must have shape {(B, T)}, got {tuple(lab.shape)}")
    tgt = lab[:, 1:]
    if bool(((tgt != IGNORE) & ((tgt < 0) | (tgt >= V))).any()):
        _fail("token id ngoài phạm vi", f"target ids must lie in [0, {V}) or be {IGNORE}")
    return lab


def _seq_logps(logits, labels):
    """losses.md §1 as DPOTrainer computes it: selective_log_softmax of the shifted logits, masked, summed."""
    tgt = labels[:, 1:]
    mask = tgt != IGNORE
    per_token = _trl()["selective_log_softmax"](logits[:, :-1], tgt.clamp(min=0))
    return (per_token * mask).sum(dim=-1)


def _sft(logits, labels, num_items_in_batch):
    lab = _check_labels(logits, labels)
    local = int((lab[:, 1:] != IGNORE).sum())
    if num_items_in_batch is None:
        if local == 0:
            _fail("không có token đích", "no target token and num_items_in_batch is None")
    elif int(num_items_in_batch) != num_items_in_batch or num_items_in_batch < max(1, local):
        _fail("num_items_in_batch không hợp lệ", f"num_items_in_batch must be an integer >= max(1, {local})")
    V = logits.shape[-1]
    return fixed_cross_entropy(logits[:, :-1].reshape(-1, V), lab[:, 1:].reshape(-1), num_items_in_batch, IGNORE)


def _check_dpo(pc, pr, rc, rr, beta, label_smoothing):
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        _fail("beta không hợp lệ", f"beta must be finite and > 0, got {beta!r}")
    if not (0.0 <= label_smoothing <= 0.5):
        _fail("label_smoothing không hợp lệ", f"label_smoothing must lie in [0, 0.5], got {label_smoothing!r}")
    if len({tuple(t.shape) for t in (pc, pr, rc, rr)}) != 1:
        _fail("dạng không khớp", "the four log-prob inputs must have equal shapes")
    if not all(bool(torch.isfinite(t).all()) for t in (pc, pr, rc, rr)):
        _fail("đầu vào không hữu hạn", "inputs must be finite")


def trl_028_dpo(pc, pr, rc, rr, beta, label_smoothing):
    """(losses, chosen_rewards, rejected_rewards) from TRL 0.28's DPOTrainer.dpo_loss, loss_type "sigmoid"."""
    from trl.trainer.dpo_config import FDivergenceType

    owner = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), beta=float(beta),
                            label_smoothing=float(label_smoothing), reference_free=False, loss_type="sigmoid",
                            f_divergence_type=FDivergenceType.REVERSE_KL, f_divergence_params=None)
    return _trl()["DPOTrainer"].dpo_loss(owner, pc, pr, rc, rr, loss_type="sigmoid")


def trl_029_sigmoid_dpo(pc, pr, rc, rr, beta, label_smoothing):
    """TRL >= 0.29's sigmoid loss (reproduced, see the module docstring): label_smoothing is not read."""
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    delta_score = chosen_logratios - rejected_logratios  # f_divergence_type "reverse_kl"
    per_sequence_loss = -F.logsigmoid(beta * delta_score)
    return per_sequence_loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def _trl_reward_losses(c, r, margin):
    """Per-pair losses from TRL's RewardTrainer.compute_loss, one pair per call (it returns the mean)."""
    RT = _trl()["RewardTrainer"]
    owner = SimpleNamespace(model=SimpleNamespace(training=False), args=SimpleNamespace(center_rewards_coefficient=None),
                            accelerator=SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x),
                            _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0)
    m = None if margin is None else torch.broadcast_to(torch.as_tensor(margin, dtype=torch.float64), c.shape)
    out = []
    for b in range(c.shape[0]):
        logits = torch.stack([c[b], r[b]])[:, None]  # (2, 1): chosen then rejected, as TRL's collator stacks them

        def model(**kw):
            return SimpleNamespace(logits=logits)

        inputs = {} if m is None else {"margin": m[b]}
        out.append(RT.compute_loss(owner, model, inputs))
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def _check_rm(c, r):
    if c.shape != r.shape:
        _fail("dạng không khớp", "rewards_chosen and rewards_rejected must have equal shapes")
    if not (bool(torch.isfinite(c).all()) and bool(torch.isfinite(r).all())):
        _fail("đầu vào không hữu hạn", "rewards must be finite")


class TRLAdapter:
    """The adapter protocol (spec 1.0) over TRL and transformers; `dpo` computes the DPO losses."""

    def __init__(self, name, dpo):
        self.name, self._dpo = name, dpo

    def sequence_logps(self, logits, labels):
        x = _t(logits)
        return _np(_seq_logps(x, _check_labels(x, labels)))

    def sequence_logps_grad(self, logits, labels, upstream):
        x = _t(logits, grad=True)
        (_seq_logps(x, _check_labels(x, labels)) * _t(upstream)).sum().backward()
        return {"logits": _np(x.grad)}

    def sft_loss(self, logits, labels, num_items_in_batch):
        return _np(_sft(_t(logits), labels, num_items_in_batch))

    def sft_loss_grad(self, logits, labels, num_items_in_batch, upstream):
        x = _t(logits, grad=True)
        (_sft(x, labels, num_items_in_batch) * _t(upstream)).sum().backward()
        return {"logits": _np(x.grad)}

    def dpo_loss(self, pc, pr, rc, rr, beta, label_smoothing):
        xs = [_t(v) for v in (pc, pr, rc, rr)]
        _check_dpo(*xs, beta, label_smoothing)
        return tuple(_np(o) for o in self._dpo(*xs, beta, label_smoothing))

    def dpo_loss_grad(self, pc, pr, rc, rr, beta, label_smoothing, upstream):
        xs = [_t(v, grad=True) for v in (pc, pr, rc, rr)]
        _check_dpo(*xs, beta, label_smoothing)
        losses, _, _ = self._dpo(*xs, beta, label_smoothing)
        (losses * _t(upstream)).sum().backward()
        return {n: _np(x.grad) for n, x in zip(_DPO, xs)}

    def reward_loss(self, rewards_chosen, rewards_rejected, margin):
        c, r = _t(rewards_chosen), _t(rewards_rejected)
        _check_rm(c, r)
        return _np(_trl_reward_losses(c, r, margin))

    def reward_loss_grad(self, rewards_chosen, rewards_rejected, margin, upstream):
        c, r = _t(rewards_chosen, grad=True), _t(rewards_rejected, grad=True)
        _check_rm(c, r)
        (_trl_reward_losses(c, r, margin) * _t(upstream)).sum().backward()
        return {"rewards_chosen": _np(c.grad), "rewards_rejected": _np(r.grad)}

    def normalize_scores(self, scores):
        s = _t(scores)
        if not bool(torch.isfinite(s).all()):
            _fail("điểm không hữu hạn", "scores must be finite")
        if s.numel() < 2 or bool((s == s[0]).all()):
            return np.zeros(s.shape)
        s = s / s.abs().max()  # scale-invariant; keeps squares away from overflow/underflow
        d = s - s.mean()
        return _np(d / d.pow(2).mean().sqrt())

    def run_trainer_vector(self, inputs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a model this small gains nothing from threads
        try:
            return _run_trainer_vector(inputs, self._dpo)
        finally:
            torch.set_num_threads(threads)


# ---------------------------------------------------------------- end-to-end trainer vectors
def _hf_model(inputs):
    """transformers' GPT-2 (LM head tied to wte; a score head for the reward model), float64, eager
    attention, loaded with the vector's parameters (Hugging Face names under `transformer.`)."""
    mc = inputs["model_config"]
    reward = inputs["trainer"] == "reward"
    cfg = GPT2Config(vocab_size=int(mc["vocab_size"]), n_positions=int(mc["n_positions"]), n_embd=int(mc["n_embd"]),
                     n_layer=int(mc["n_layer"]), n_head=int(mc["n_head"]), layer_norm_epsilon=float(mc["layer_norm_epsilon"]),
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     summary_first_dropout=0.0, tie_word_embeddings=True, num_labels=1,
                     pad_token_id=int(mc["pad_token_id"]), bos_token_id=int(mc["bos_token_id"]),
                     eos_token_id=int(mc["eos_token_id"]))
    cfg._attn_implementation = "eager"
    model = (GPT2ForSequenceClassification if reward else GPT2LMHeadModel)(cfg).to(torch.float64)
    names = {n: (n if n == "score.weight" else "transformer." + n) for n in inputs["parameters"]}
    state = {names[n]: torch.tensor(np.asarray(a, dtype=np.float64)) for n, a in inputs["parameters"].items()}
    res = model.load_state_dict(state, strict=False)
    if res.unexpected_keys or set(res.missing_keys) - {"lm_head.weight"}:
        raise ValueError(f"parameters do not fit transformers' GPT-2: {res}")
    model.train()  # dropout is 0: train mode changes nothing but is what a trainer runs
    return model, {hf: n for n, hf in names.items()}


def _long(a):
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _run_trainer_vector(inputs, dpo):
    """The vector's steps with transformers' model and schedule, torch's AdamW and clipping, TRL's losses."""
    kind, tc, mbs, windows = inputs["trainer"], inputs["trainer_config"], inputs["micro_batches"], inputs["windows"]
    if kind not in ("sft", "dpo", "reward"):  # the spec 1.1 GRPO/RLOO vectors are optional: SKIP
        raise NotImplementedError(f"trainer {kind!r}: this adapter covers TRL's offline losses only")
    model, vec_name = _hf_model(inputs)
    params = {vec_name[n]: p for n, p in model.named_parameters()}
    no_decay = set(tc["no_decay_parameters"])
    groups = [{"params": [p for n, p in params.items() if n not in no_decay], "weight_decay": float(tc["weight_decay"])},
              {"params": [p for n, p in params.items() if n in no_decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(tc["toc_do_hoc"]), betas=tuple(tc["adam_betas"]),
                            eps=float(tc["adam_eps"]), foreach=False)
    sched = get_linear_schedule_with_warmup(opt, int(tc["warmup_steps"]), int(tc["total_steps"]))
    step_fn = {"sft": _sft_micro, "dpo": _dpo_micro, "reward": _reward_micro}[kind]
    ctx = {"model": model, "tc": tc, "dpo": dpo, "ref": {}, "first": {}}
    if kind == "dpo":  # the frozen initial model, evaluated once per micro-batch, without a graph
        ref = _trl()["create_reference_model"](model)
        with torch.no_grad():
            for i in sorted({i for w in windows for i in w}):
                ctx["ref"][i] = tuple(_side_logps(ref, mbs[i], s) for s in ("chosen", "rejected"))
    stat_names = {"sft": (), "dpo": ("chosen_rewards", "rejected_rewards", "reward_margin"),
                  "reward": ("accuracy", "reward_margin")}[kind]
    out = {k: [] for k in ("loss_trajectory", "learning_rates", "grad_norms") + stat_names}
    for step, window in enumerate(windows):
        denom = (sum(int((_long(mbs[i]["labels"])[:, 1:] != IGNORE).sum()) for i in window) if kind == "sft"
                 else sum(int(np.asarray(mbs[i]["chosen_input_ids"]).shape[0]) for i in window))
        opt.zero_grad(set_to_none=False)
        step_loss, sums = 0.0, defaultdict(float)
        for i in window:
            loss = step_fn(ctx, i, mbs[i], denom, sums)
            loss.backward()
            step_loss += loss.item()
        if step == 0:
            out.update(ctx["first"], loss=step_loss, grads={n: _np(p.grad).copy() for n, p in params.items()})
        norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), float(tc["gradient_clip"]), foreach=False))
        if step == 0:
            out["grad_norm"] = norm
        out["learning_rates"].append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        out["loss_trajectory"].append(step_loss)
        out["grad_norms"].append(norm)
        for k in stat_names:
            out[k].append(sums[k] / denom)
    for k in ("loss_trajectory", "learning_rates", "grad_norms") + stat_names:
        out[k] = np.asarray(out[k], dtype=np.float64)
    out["parameters_after"] = {n: _np(p).copy() for n, p in params.items()}
    return out


def _side_logps(model, mb, side):
    logits = model(input_ids=_long(mb[f"{side}_input_ids"]), attention_mask=_long(mb[f"{side}_attention_mask"])).logits
    return _seq_logps(logits, _long(mb[f"{side}_labels"]))


def _sft_micro(ctx, i, mb, denom, sums):
    logits = ctx["model"](input_ids=_long(mb["input_ids"]), attention_mask=_long(mb["attention_mask"])).logits
    ctx["first"].setdefault("logits", _np(logits).copy())
    V = logits.shape[-1]  # the token sum over the window's target count (losses.md §2)
    return fixed_cross_entropy(logits[:, :-1].reshape(-1, V), _long(mb["labels"])[:, 1:].reshape(-1), denom, IGNORE)


def _dpo_micro(ctx, i, mb, denom, sums):
    pc, pr = (_side_logps(ctx["model"], mb, s) for s in ("chosen", "rejected"))
    rc, rr = ctx["ref"][i]
    tc = ctx["tc"]
    losses, cr, rj = ctx["dpo"](pc, pr, rc, rr, float(tc["beta"]), float(tc["label_smoothing"]))
    sums["chosen_rewards"] += float(cr.sum())
    sums["rejected_rewards"] += float(rj.sum())
    sums["reward_margin"] += float((cr - rj).sum())
    ctx["first"].setdefault("logps", {"policy_chosen": _np(pc), "policy_rejected": _np(pr),
                                      "reference_chosen": _np(rc), "reference_rejected": _np(rr)})
    return losses.sum() / denom  # pair losses over the window's pair count (losses.md §10)


def _reward_micro(ctx, i, mb, denom, sums):
    c, r = (ctx["model"](input_ids=_long(mb[f"{s}_input_ids"]), attention_mask=_long(mb[f"{s}_attention_mask"]))
            .logits.reshape(-1) for s in ("chosen", "rejected"))
    m = torch.as_tensor(np.asarray(mb["margin"], dtype=np.float64))
    sums["accuracy"] += float((c > r).sum())
    sums["reward_margin"] += float((c - r).detach().sum())
    ctx["first"].setdefault("scores", {"chosen": _np(c), "rejected": _np(r)})
    return _trl_reward_losses(c, r, m).sum() / denom  # over the window's pair count (losses.md §10)


def _version():
    try:
        return f"TRL {_trl()['version']}"
    except ImportError:
        return "TRL not installed"


_STACK = f"transformers {transformers.__version__}, torch {torch.__version__}, float64"
#: TRL 0.28: DPOTrainer.dpo_loss with conservative label smoothing.
trl_0_28 = TRLAdapter(f"DPOTrainer.dpo_loss + RewardTrainer loss of {_version()}, {_STACK}", trl_028_dpo)
#: TRL >= 0.29's sigmoid DPO loss (label smoothing dropped), reproduced; the rest as trl_0_28.
trl_0_29_sigmoid = TRLAdapter(f"TRL >= 0.29 sigmoid DPO loss (reproduced; label_smoothing dropped), {_STACK}",
                              trl_029_sigmoid_dpo)

# the module itself is the TRL 0.28 adapter (`python -m vietnamese_ai_ref.conformance examples/trl_adapter.py`)
name = trl_0_28.name
sequence_logps, sequence_logps_grad = trl_0_28.sequence_logps, trl_0_28.sequence_logps_grad
sft_loss, sft_loss_grad = trl_0_28.sft_loss, trl_0_28.sft_loss_grad
dpo_loss, dpo_loss_grad = trl_0_28.dpo_loss, trl_0_28.dpo_loss_grad
reward_loss, reward_loss_grad = trl_0_28.reward_loss, trl_0_28.reward_loss_grad
normalize_scores, run_trainer_vector = trl_0_28.normalize_scores, trl_0_28.run_trainer_vector
