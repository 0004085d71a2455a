"""GRPOTrainer: Group Relative Policy Optimization with a reward in the loop, over the shared loop.

What it is for: each optimiser step samples `num_generations` completions of each prompt of its window
(spec/rl.md §9), scores them (reward functions and/or a trained reward model), computes group-relative
advantages (§2 `grpo_advantages`) and minimises the clipped surrogate with the optional k3 KL to a
frozen reference (§3 `grpo_loss`, one update per rollout: old log-probs = the training forward,
detached), logging TRL's metrics (§4 `grpo_metrics`, §8 `token_entropy`, rewards, completion lengths).
Defaults are TRL v1.9.0's (`grpo_config.py`): β 0, ε 0.2, loss "dapo", scale_rewards "group".
What it is not: the formulas (losses/rl.py), the sampler (models/sampling.py) or the rollout and
reward plumbing (online.py).
"""

from __future__ import annotations

from .. import losses
from ..backends import get_backend
from .online import OnlineTrainerBase, completion_batch, completion_logps, reward_stat_keys, scatter_tokens
from .settings import check_divisible, checked

__all__ = ["GRPOTrainer", "policy_token_logps", "entropy_stat"]

CLIP_KEYS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


def policy_token_logps(model, batch, pad_id, temperature):
    """(logps (B, L−1) Tensor, logits (B, L−1, V) Tensor, cmask (B, L−1)) of a micro-batch of completion
    items under the policy, with the graph (spec/rl.md §8: logits ÷ temperature, whole vocabulary)."""
    ids, att, targets, cmask = completion_batch(batch, pad_id)
    logits = model(ids, attention_mask=att)[:, :-1]  # (B, L−1, V): position j predicts targets[:, j]
    return losses.token_logps(logits, targets, temperature), logits, cmask


def entropy_stat(logits, cmask, temperature):
    """("entropy" sum over the mask tokens, their count): token_entropy at the completion positions only."""
    xp = get_backend().xp
    rows, cols = xp.nonzero(cmask)
    if rows.size == 0:
        return 0.0, 0
    ent = losses.token_entropy(logits.data[rows, cols], temperature)  # (n_tokens,)
    return float(ent.sum()), int(rows.size)


class GRPOTrainer(OnlineTrainerBase):
    """Group Relative Policy Optimization Trainer (spec/rl.md §2–§4, §8–§9)."""

    KIND = "grpo"
    #: the constructor's settings, in the order they are checked (thong_ke()['cau_hinh'])
    SETTINGS = ("so_vong", "kich_thuoc_batch", "toc_do_hoc", "num_generations", "beta", "epsilon",
                "gradient_accumulation", "gradient_clip", "max_seq_length", "logging_steps", "seed",
                "epsilon_high", "delta", "loss_type", "scale_rewards", "importance_sampling_level",
                "max_completion_length", "temperature", "top_k", "top_p", "mask_truncated_completions",
                "warmup_ratio", "weight_decay")

    def __init__(self, so_vong=1, kich_thuoc_batch=8, toc_do_hoc=1e-6, num_generations=8, beta=0.0, epsilon=0.2,
                 gradient_accumulation=1, gradient_clip=1.0, max_seq_length=512, logging_steps=10, seed=42, *,
                 epsilon_high=None, delta=None, loss_type="dapo", scale_rewards="group",
                 importance_sampling_level="token", max_completion_length=256, temperature=1.0, top_k=0, top_p=1.0,
                 mask_truncated_completions=False, warmup_ratio=0.0, weight_decay=0.0):
        self.so_vong = checked("so_vong", so_vong)
        self.kich_thuoc_batch = checked("kich_thuoc_batch", kich_thuoc_batch)
        self.toc_do_hoc = checked("toc_do_hoc", toc_do_hoc)
        self.num_generations = checked("num_generations", num_generations)
        check_divisible("kich_thuoc_batch", self.kich_thuoc_batch, "num_generations", self.num_generations)
        self.beta = checked("beta", beta, "beta_kl")
        self.epsilon = checked("epsilon", epsilon)
        self.gradient_accumulation = checked("gradient_accumulation", gradient_accumulation)
        self.gradient_clip = checked("gradient_clip", gradient_clip)
        self.max_seq_length = checked("max_seq_length", max_seq_length)
        self.logging_steps = checked("logging_steps", logging_steps)
        self.seed = checked("seed", seed)
        self.epsilon_high = checked("epsilon_high", epsilon_high, "optional_positive")
        self.delta = checked("delta", delta, "optional_positive")
        self.loss_type = checked("loss_type", loss_type)
        self.scale_rewards = checked("scale_rewards", scale_rewards)
        self.importance_sampling_level = checked("importance_sampling_level", importance_sampling_level)
        self.max_completion_length = checked("max_completion_length", max_completion_length)
        self.temperature = checked("temperature", temperature)
        self.top_k = checked("top_k", top_k)
        self.top_p = checked("top_p", top_p)
        self.mask_truncated_completions = checked("mask_truncated_completions", mask_truncated_completions, "flag")
        self.warmup_ratio = checked("warmup_ratio", warmup_ratio)
        self.weight_decay = checked("weight_decay", weight_decay)
        self._init_common(self.SETTINGS)
        self._group = self.num_generations

    def _needs_ref(self) -> bool:
        return self.beta > 0.0

    def _stat_keys(self, names) -> tuple:
        return (*reward_stat_keys(names), "entropy", *CLIP_KEYS, *(("kl",) if self.beta > 0.0 else ()))

    def _history_keys(self, names) -> tuple:
        return ("train_loss", "learning_rate", "grad_norm", *self._stat_keys(names))

    @staticmethod
    def _weight_of(item) -> int:
        return sum(item["mask"])  # dapo: the step's loss is normalised by its completion tokens

    def _prepare(self, items, R, k):
        """Advantages over the whole rollout (§2) and, with β > 0, the reference's per-token log-probs."""
        adv = get_backend().to_numpy(losses.grpo_advantages(R, self.num_generations, self.scale_rewards))
        for e, a in zip(items, adv.tolist()):
            e["advantage"] = a
        if self.beta > 0.0:
            with self._reference_policy() as ref:
                lps = completion_logps(ref, items, self._ctx["pad"], self.temperature, self.kich_thuoc_batch)
            for e, lp in zip(items, lps):
                e["ref_logps"] = lp
        return items, {}

    def _micro_step(self, model, batch, denominator):
        """One micro-batch: grpo_loss with the step's token count (dapo) and micro-batch count (the others)."""
        be = get_backend()
        logps, logits, cmask = policy_token_logps(model, batch, self._ctx["pad"], self.temperature)
        adv = be.asarray([e["advantage"] for e in batch])  # (B,)
        ref = scatter_tokens(batch, "ref_logps", cmask.shape[1]) if self.beta > 0.0 else None
        kw = dict(epsilon_low=self.epsilon, epsilon_high=self.epsilon_high,
                  importance_sampling_level=self.importance_sampling_level)
        loss = losses.grpo_loss(logps, None, adv, cmask, ref_logps=ref, beta=self.beta, loss_type=self.loss_type,
                                delta=self.delta, num_items_in_batch=denominator,
                                max_completion_length=self.max_completion_length,
                                num_accumulation_steps=batch[0]["k_micro"], **kw)
        m = losses.grpo_metrics(logps.detach(), None, adv, cmask, ref_logps=ref, **kw)
        n_tok = m["num_tokens"]
        w = n_tok if self.importance_sampling_level == "token" else float(len(batch))
        stats = {key: (m[key] * w, w) for key in CLIP_KEYS}
        if self.beta > 0.0:
            stats["kl"] = (m["kl"] * n_tok, n_tok)
        stats["entropy"] = entropy_stat(logits, cmask, self.temperature)
        return loss, stats
