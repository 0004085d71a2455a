"""The reference adapter: this package's own implementation behind the conformance protocol.

What it is for: `reference_adapter` (`python -m vietnamese_ai_ref.conformance
vietnamese_ai_ref.conformance:reference_adapter`), the spec functions of `losses` computed in float64,
and `run_trainer_vector`, which runs an end-to-end trainer vector through `trainers`' own loop and
micro-steps — never a copy of them — with the vector's explicit step schedule.
What it is not: the runner (runner.py) or the vector codec (codec.py).
"""

from __future__ import annotations

import math

from .. import losses as L
from .._version import SPEC_VERSION
from ..backends import get_backend, host_np, to_numpy, use_backend
from ..core.autograd import Tensor, no_grad
from ..models.gpt2 import GPTConfig, TransformerLM
from ..text.records import IGNORE_INDEX
from ..trainers import dpo as _dpo
from ..trainers import reward as _reward
from ..trainers.grpo import GRPOTrainer, policy_token_logps
from ..trainers.rloo import RLOOTrainer
from ..trainers.loop import run_loop
from ..trainers.settings import LoopSettings
from .codec import PROTOCOL

__all__ = ["ReferenceAdapter", "reference_adapter", "reference_trainer_run", "ONLINE_TRAINERS"]

#: The spec 1.1 trainer vectors (spec/rl.md §11): one optimiser step after another on fixed rollouts.
ONLINE_TRAINERS = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}

_DPO_ARGS = PROTOCOL["dpo_loss"].args[:4]


class ReferenceAdapter:
    """`vietnamese_ai_ref.losses` behind the adapter protocol, computed in float64 on `backend`."""

    def __init__(self, backend: str = "numpy"):
        self.backend = backend
        self.name = f"vietnamese_ai_ref {SPEC_VERSION} reference ({backend}, float64)"

    def _ctx(self):
        return use_backend(self.backend, "float64")

    @staticmethod
    def _host(x):
        from ..backends import to_numpy

        return to_numpy(x.data if isinstance(x, Tensor) else x)

    def _arr(self, x, dtype=None):
        from ..backends import get_backend

        return get_backend().asarray(host_np.asarray(x), dtype=dtype)

    def _var(self, x) -> Tensor:
        return Tensor(self._arr(x, "float64"), requires_grad=True)

    # -- values --------------------------------------------------------------------------------
    def sequence_logps(self, logits, labels):
        with self._ctx():
            return self._host(L.sequence_logps(self._arr(logits, "float64"), self._arr(labels)))

    def sft_loss(self, logits, labels, num_items_in_batch=None):
        with self._ctx():
            return self._host(L.sft_loss(self._arr(logits, "float64"), self._arr(labels), num_items_in_batch))

    def dpo_loss(self, pc, pr, rc, rr, beta, label_smoothing):
        with self._ctx():
            out = L.dpo_loss(*(self._arr(x, "float64") for x in (pc, pr, rc, rr)), beta=beta, label_smoothing=label_smoothing)
            return tuple(self._host(o) for o in out)

    def reward_loss(self, rewards_chosen, rewards_rejected, margin=None):
        with self._ctx():
            m = None if margin is None else self._arr(margin, "float64")
            return self._host(L.reward_loss(self._arr(rewards_chosen, "float64"), self._arr(rewards_rejected, "float64"), m))

    def normalize_scores(self, scores):
        with self._ctx():
            return self._host(L.normalize_scores(self._arr(scores, "float64")))

    # -- gradients -----------------------------------------------------------------------------
    def sequence_logps_grad(self, logits, labels, upstream):
        with self._ctx():
            x = self._var(logits)
            L.sequence_logps(x, self._arr(labels)).backward(self._arr(upstream, "float64"))
            return {"logits": self._host(x.grad)}

    def sft_loss_grad(self, logits, labels, num_items_in_batch, upstream):
        with self._ctx():
            x = self._var(logits)
            L.sft_loss(x, self._arr(labels), num_items_in_batch).backward(self._arr(upstream, "float64"))
            return {"logits": self._host(x.grad)}

    def dpo_loss_grad(self, pc, pr, rc, rr, beta, label_smoothing, upstream):
        with self._ctx():
            xs = [self._var(v) for v in (pc, pr, rc, rr)]
            losses, _, _ = L.dpo_loss(*xs, beta=beta, label_smoothing=label_smoothing)
            losses.backward(self._arr(upstream, "float64"))
            return {n: self._host(x.grad) for n, x in zip(_DPO_ARGS, xs)}

    def reward_loss_grad(self, rewards_chosen, rewards_rejected, margin, upstream):
        with self._ctx():
            c, r = self._var(rewards_chosen), self._var(rewards_rejected)
            m = None if margin is None else self._arr(margin, "float64")
            L.reward_loss(c, r, m).backward(self._arr(upstream, "float64"))
            return {"rewards_chosen": self._host(c.grad), "rewards_rejected": self._host(r.grad)}

    # -- spec 1.1: online RL (spec/rl.md) ------------------------------------------------------------
    def _rl_value(self, fn, *args):
        with self._ctx():
            out = fn(*(self._arr(a) if hasattr(a, "shape") else a for a in args))
            return tuple(self._host(o) for o in out) if isinstance(out, tuple) else self._host(out)

    def _rl_grad(self, fn, args):
        *args, upstream = args
        with self._ctx():
            x = self._var(args[0])
            fn(x, *(self._arr(a) if hasattr(a, "shape") else a for a in args[1:])).backward(
                self._arr(upstream, "float64"))
            return {"logps": self._host(x.grad)}

    def grpo_advantages(self, rewards, num_generations, scale_rewards):
        return self._rl_value(L.grpo_advantages, rewards, num_generations, scale_rewards)

    def grpo_loss(self, *args):
        return self._rl_value(L.grpo_loss, *args)

    def grpo_loss_grad(self, *args):
        return self._rl_grad(L.grpo_loss, args)

    def rloo_advantages(self, *args):
        return self._rl_value(L.rloo_advantages, *args)

    def rloo_loss(self, *args):
        return self._rl_value(L.rloo_loss, *args)

    def rloo_loss_grad(self, *args):
        return self._rl_grad(L.rloo_loss, args)

    def online_dpo_pairs(self, rewards, has_eos, missing_eos_penalty):
        return self._rl_value(L.online_dpo_pairs, rewards, has_eos, missing_eos_penalty)

    # -- end-to-end trainer vectors (spec/vectors/README.md, "End-to-end trainer vectors") -----
    def run_trainer_vector(self, inputs: dict) -> dict:
        """Run a trainer vector's steps through the trainers' own loop (`trainers.loop.run_loop`) with
        their own micro-steps (DPO and reward model) or the spec's SFT loss, the vector's explicit
        `windows` as the loop's schedule (tests/test_trainer_vectors.py checks that the real trainers
        reproduce these numbers). Returns the dict described by the vector's `expected`."""
        with self._ctx():
            return reference_trainer_run(inputs)


def _model_of(inputs: dict) -> TransformerLM:
    be = get_backend()
    mc = inputs["model_config"]
    for key, want in (("activation", "gelu_new"), ("tie_word_embeddings", True)):
        if key in mc and mc[key] != want:
            raise ValueError(f"model_config[{key!r}] = {mc[key]!r}: only {want!r} is implemented")
    cfg = GPTConfig(vocab_size=int(mc["vocab_size"]), n_positions=int(mc["n_positions"]),
                    n_embd=int(mc["n_embd"]), n_layer=int(mc["n_layer"]), n_head=int(mc["n_head"]),
                    layer_norm_epsilon=float(mc["layer_norm_epsilon"]))
    model = TransformerLM(cfg)
    model.load_state_dict({n: be.asarray(host_np.asarray(a, dtype=host_np.float64))
                           for n, a in inputs["parameters"].items()})
    return model


def _real(a, mask) -> list:
    """Rows of a padded (B, T) array without their padding (host lists)."""
    a, mask = host_np.asarray(a), host_np.asarray(mask)
    return [a[b, : int(mask[b].sum())].tolist() for b in range(a.shape[0])]


def _pairs_of(mb) -> list:
    """The trainers' pair examples of one DPO/RM micro-batch (they re-pad chosen + rejected jointly)."""
    ci, ri = _real(mb["chosen_input_ids"], mb["chosen_attention_mask"]), _real(mb["rejected_input_ids"], mb["rejected_attention_mask"])
    cl = _real(mb["chosen_labels"], mb["chosen_attention_mask"]) if "chosen_labels" in mb else [None] * len(ci)
    rl = _real(mb["rejected_labels"], mb["rejected_attention_mask"]) if "rejected_labels" in mb else [None] * len(ri)
    margins = host_np.asarray(mb["margin"], dtype=host_np.float64).tolist() if "margin" in mb else [0.0] * len(ci)
    return [{"chosen_ids": ci[b], "chosen_labels": cl[b], "rejected_ids": ri[b], "rejected_labels": rl[b],
             "margin": margins[b]} for b in range(len(ci))]


def _micro_batches(kind, mbs, windows, model, tc, pad):
    """The loop's micro-batches: SFT keeps the vector's padded arrays as one example per micro-batch;
    DPO and RM get the trainers' pair examples (DPO with reference log-probs of a frozen copy, once)."""
    if kind == "sft":
        return [[mb] for mb in mbs]
    out = [_pairs_of(mb) for mb in mbs]
    if kind == "dpo":
        ref = model.copy().eval()
        with no_grad():
            for i in sorted({i for w in windows for i in w}):
                rc, rr = _dpo.pair_logps(ref, out[i], pad)
                for e, c, r in zip(out[i], to_numpy(rc.numpy()).tolist(), to_numpy(rr.numpy()).tolist()):
                    e["ref_chosen"], e["ref_rejected"] = c, r
    return out


def _gradients(opt, model) -> dict:
    """{parameter name: host copy of its gathered gradient}, in the model's parameter order."""
    grads = {}
    for g in opt.groups:
        for name, p, a, b in zip(g.names, g.params, g.offsets, g.offsets[1:]):
            grads[name] = to_numpy(g.grad[a:b]).reshape(p.data.shape).copy()
    return {n: grads[n] for n in model.named_parameters()}


def reference_trainer_run(inputs: dict, diagnostics: dict | None = None) -> dict:
    """The body of `ReferenceAdapter.run_trainer_vector` (backend already selected, float64).
    `diagnostics`, when given, receives `min_abs_pair_difference` per step (reward model: min |r_c − r_r|,
    DPO: min |chosen reward − rejected reward|), which scripts/make_vectors.py uses to keep the discrete
    accuracies away from ties."""
    be = get_backend()
    kind, tc = inputs["trainer"], inputs["trainer_config"]
    if kind in ONLINE_TRAINERS:
        return _online_run(inputs)
    if kind not in ("sft", "dpo", "reward"):
        raise ValueError(f"trainer không rõ / unknown trainer {kind!r}: expected one of sft, dpo, reward, grpo, rloo")
    model = _model_of(inputs)
    pad = int(inputs["model_config"].get("pad_token_id", 0))
    windows = [[int(i) for i in w] for w in inputs["windows"]]
    if len(windows) != int(tc["total_steps"]):
        raise ValueError(f"windows has {len(windows)} steps, trainer_config.total_steps is {tc['total_steps']}")
    micro = _micro_batches(kind, inputs["micro_batches"], windows, model, tc, pad)
    first, gaps, out = {}, [], {}
    beta = float(tc.get("beta", 0.0))
    stat_keys = {"sft": (), "dpo": ("chosen_rewards", "rejected_rewards", "reward_margin", "reward_accuracy"),
                 "reward": ("accuracy", "reward_margin")}[kind]

    def micro_step(batch, denominator):
        if kind == "sft":
            mb = batch[0]
            logits = model(be.asarray(mb["input_ids"]), attention_mask=be.asarray(mb["attention_mask"]))
            if "logits" not in first:
                first["logits"] = to_numpy(logits.numpy()).copy()
            return L.sft_loss(logits, be.asarray(mb["labels"]), num_items_in_batch=denominator), {}
        if kind == "dpo":
            loss, stats = _dpo.dpo_micro_step(model, batch, pad, beta, float(tc["label_smoothing"]), denominator)
            if "logps" in first and diagnostics is None:
                return loss, stats
            with no_grad():  # the step's log-probs again, only for the record of step 1 and the tie diagnostic
                pc, pr = (to_numpy(x.numpy()) for x in _dpo.pair_logps(model, batch, pad))
            rc, rr = (host_np.asarray([e[k] for e in batch]) for k in ("ref_chosen", "ref_rejected"))
            if "logps" not in first:
                first["logps"] = {"policy_chosen": pc.copy(), "policy_rejected": pr.copy(),
                                  "reference_chosen": rc, "reference_rejected": rr}
            gaps.append(float(host_np.abs(beta * (pc - rc) - beta * (pr - rr)).min()))
            return loss, stats
        loss, stats = _reward.reward_micro_step(model, batch, pad, denominator)
        if "scores" in first and diagnostics is None:
            return loss, stats
        with no_grad():  # the scores again, only for the record of step 1 and the tie diagnostic
            c, r = (to_numpy(x.numpy()) for x in _reward._pair_scores(model, batch, pad))
        if "scores" not in first:
            first["scores"] = {"chosen": c.copy(), "rejected": r.copy()}
        gaps.append(float(host_np.abs(c - r).min()))
        return loss, stats

    def weight_of(e) -> int:
        return int((host_np.asarray(e["labels"])[:, 1:] != IGNORE_INDEX).sum()) if kind == "sft" else 1

    def on_step(step, opt, norm):
        if diagnostics is not None and kind != "sft":
            diagnostics.setdefault("min_abs_pair_difference", []).append(min(gaps) if gaps else math.inf)
        gaps.clear()
        if step == 0:
            out.update(grad_norm=norm, grads=_gradients(opt, model))

    settings = LoopSettings(epochs=1, batch_size=1, accumulation=1, lr=float(tc["toc_do_hoc"]),
                            weight_decay=float(tc["weight_decay"]), warmup_ratio=0.0,
                            clip=float(tc["gradient_clip"]), logging_steps=1, seed=0)
    schedule = [[micro[i] for i in w] for w in windows]
    run = run_loop(model=model, examples=[], settings=settings, micro_step=micro_step, weight_of=weight_of,
                   stat_keys=stat_keys, schedule=schedule, on_step=on_step, warmup_steps=int(tc["warmup_steps"]))
    h = run["history"]
    result = dict(first)
    result.update({"loss": h["train_loss"][0], "grad_norm": out["grad_norm"], "grads": out["grads"]})
    traj = {"loss_trajectory": h["train_loss"], "learning_rates": h["learning_rate"], "grad_norms": h["grad_norm"]}
    # the spec 1.0 DPO vector records the reward means and margin, not the accuracy the trainer also logs
    traj.update({k: h[k] for k in stat_keys if k != "reward_accuracy"})
    result.update({k: host_np.asarray(v, dtype=host_np.float64) for k, v in traj.items()})
    result["parameters_after"] = {n: to_numpy(p.data).copy() for n, p in model.named_parameters().items()}
    return result


# ============================ spec 1.1: GRPO and RLOO steps on fixed rollouts =======================

def rollout_items(mb) -> list:
    """The trainers' completion items of one rollout micro-batch of a trainer vector: row b is
    input_ids[b, :prompt_lengths[b]] (the prompt) + the rest of its real tokens (the completion), and
    its mask is completion_mask[b] at the positions that predict the completion (spec/rl.md §11)."""
    ids, att = host_np.asarray(mb["input_ids"]), host_np.asarray(mb["attention_mask"])
    plen, cm = host_np.asarray(mb["prompt_lengths"]), host_np.asarray(mb["completion_mask"])
    items = []
    for b in range(ids.shape[0]):
        n, p = int(att[b].sum()), int(plen[b])
        if not 1 <= p < n or cm[b, :p - 1].any() or cm[b, n - 1:].any():
            raise ValueError(f"micro-batch row {b}: completion_mask must be 0 outside the completion "
                             f"(prompt_lengths {p}, real length {n})")
        items.append({"index": int(mb["example_indices"][b]), "prompt_ids": ids[b, :p].tolist(),
                      "completion_ids": ids[b, p:n].tolist(), "mask": cm[b, p - 1:n - 1].tolist()})
    return items


def _online_run(inputs: dict) -> dict:
    """A GRPO or RLOO trainer vector through the trainers' own code: `scored_window` (their `_prepare`:
    advantages, reference log-probs, RLOO's KL in the reward) and `_micro_step` (their loss), driven by
    `run_loop` with the vector's windows, each window's rollout and rewards given instead of sampled."""
    kind, tc = inputs["trainer"], inputs["trainer_config"]
    cls = ONLINE_TRAINERS[kind]
    trainer = cls(**{k: tc[k] for k in cls.SETTINGS if k in tc})
    model = _model_of(inputs)
    G = trainer.num_generations
    windows = [[int(i) for i in w] for w in inputs["windows"]]
    if len(windows) != int(tc["total_steps"]) or len(inputs["rewards"]) != len(windows):
        raise ValueError(f"windows ({len(windows)}) and rewards ({len(inputs['rewards'])}) need one entry per "
                         f"step, trainer_config.total_steps is {tc['total_steps']}")
    micro = [rollout_items(mb) for mb in inputs["micro_batches"]]
    ref = model.copy().eval() if trainer._needs_ref() else None
    trainer._ctx = {"model": model, "ref": ref, "pad": int(inputs["model_config"].get("pad_token_id", 0))}
    out, advantages = {}, []
    with no_grad():  # step 1's per-token log-probs of micro-batch 0, for the record (spec/rl.md §8)
        lp, _, _ = policy_token_logps(model, micro[windows[0][0]], trainer._ctx["pad"], trainer.temperature)
        out["token_logps"] = to_numpy(lp.numpy()).copy()

    def prepare(window, k):
        flat = [dict(e) for mb in window for e in mb]
        rewards = host_np.asarray(inputs["rewards"][k], dtype=host_np.float64)
        scored, stats = trainer.scored_window(flat, rewards, k, [len(mb) // G for mb in window])
        advantages.append([e["advantage"] for mb in scored for e in mb])
        return scored, stats

    def on_step(step, opt, norm):
        if step == 0:
            out.update(grad_norm=norm, grads=_gradients(opt, model))

    settings = LoopSettings(epochs=1, batch_size=1, accumulation=1, lr=float(tc["toc_do_hoc"]),
                            weight_decay=float(tc["weight_decay"]), warmup_ratio=0.0,
                            clip=float(tc["gradient_clip"]), logging_steps=1, seed=0)
    try:
        run = run_loop(model=model, examples=[], settings=settings,
                       micro_step=lambda batch, d: trainer._micro_step(model, batch, d),
                       weight_of=trainer._weight_of, stat_keys=trainer._stat_keys([]),
                       schedule=[[micro[i] for i in w] for w in windows], on_step=on_step,
                       warmup_steps=int(tc["warmup_steps"]), prepare_window=prepare)
    finally:
        trainer._ctx = None
    h = run["history"]
    result = {"token_logps": out["token_logps"], "advantages": host_np.asarray(advantages, dtype=host_np.float64),
              "loss": h["train_loss"][0], "grad_norm": out["grad_norm"], "grads": out["grads"]}
    for key, name in (("train_loss", "loss_trajectory"), ("learning_rate", "learning_rates"),
                      ("grad_norm", "grad_norms"), ("kl", "kl")):
        if key in h:
            result[name] = host_np.asarray(h[key], dtype=host_np.float64)
    result["parameters_after"] = {n: to_numpy(p.data).copy() for n, p in model.named_parameters().items()}
    return result


#: This package's own implementation: `python -m vietnamese_ai_ref.conformance vietnamese_ai_ref.conformance:reference_adapter`.
reference_adapter = ReferenceAdapter()
