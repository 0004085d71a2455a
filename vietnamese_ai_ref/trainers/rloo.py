"""RLOOTrainer: REINFORCE Leave-One-Out with a reward in the loop, over the shared loop.

What it is for: each optimiser step samples `num_generations` completions per prompt (spec/rl.md §9),
scores them, folds the k1 KL to a frozen reference into the reward and takes the leave-one-out
baseline (§5 `rloo_advantages`), then minimises the sequence-level clipped surrogate (§6 `rloo_loss`),
logging rewards, the KL, clip ratios (`rloo_metrics`), entropy and completion lengths. Defaults are
TRL v1.9.0's (`rloo_config.py`): G 2, β 0.05, ε 0.2, no advantage normalisation.
What it is not: the formulas (losses/rl.py) or the rollout and reward plumbing (online.py).
"""

from __future__ import annotations

from .. import losses
from ..backends import get_backend, host_np
from .grpo import CLIP_KEYS, entropy_stat, policy_token_logps
from .online import OnlineTrainerBase, completion_logps, reward_stat_keys
from .settings import check_divisible, checked

__all__ = ["RLOOTrainer"]


def _padded(rows, T):
    """Host (B, T) float64 array of per-token lists, zero-padded."""
    out = host_np.zeros((len(rows), T), dtype=host_np.float64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


class RLOOTrainer(OnlineTrainerBase):
    """REINFORCE Leave-One-Out Trainer (spec/rl.md §5–§6, §8–§9)."""

    KIND = "rloo"
    #: the constructor's settings, in the order they are checked (thong_ke()['cau_hinh'])
    SETTINGS = ("so_vong", "kich_thuoc_batch", "toc_do_hoc", "num_generations", "beta", "epsilon",
                "gradient_accumulation", "gradient_clip", "max_seq_length", "logging_steps", "seed",
                "epsilon_high", "normalize_advantages", "reward_clip_range", "max_completion_length",
                "temperature", "top_k", "top_p", "mask_truncated_completions", "warmup_ratio", "weight_decay")

    def __init__(self, so_vong=1, kich_thuoc_batch=8, toc_do_hoc=1e-6, num_generations=2, beta=0.05, epsilon=0.2,
                 gradient_accumulation=1, gradient_clip=1.0, max_seq_length=512, logging_steps=10, seed=42, *,
                 epsilon_high=None, normalize_advantages=False, reward_clip_range=None, max_completion_length=256,
                 temperature=1.0, top_k=0, top_p=1.0, mask_truncated_completions=False, warmup_ratio=0.0,
                 weight_decay=0.0):
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
        self.normalize_advantages = checked("normalize_advantages", normalize_advantages, "flag")
        self.reward_clip_range = checked("reward_clip_range", reward_clip_range)
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
        return 1  # rloo_loss averages over sequences and divides by the micro-batch count itself (§6.2)

    def _prepare(self, items, R, k):
        """Leave-one-out advantages over the rollout (§5); with β > 0 the k1 KL of the sampling policy
        (the current weights, eval mode) to the reference is folded into the reward first."""
        c, stats = self._ctx, {}
        kw = dict(beta=self.beta, normalize_advantages=self.normalize_advantages,
                  reward_clip_range=self.reward_clip_range)
        if self.beta > 0.0:
            T = max(len(e["completion_ids"]) for e in items)
            bs = self.kich_thuoc_batch
            old = _padded(completion_logps(c["model"], items, c["pad"], self.temperature, bs), T)  # (B, T)
            with self._reference_policy() as ref_model:
                ref = _padded(completion_logps(ref_model, items, c["pad"], self.temperature, bs), T)  # (B, T)
            mask = _padded([e["mask"] for e in items], T)  # (B, T)
            kw.update(old_logps=old, ref_logps=ref, mask=mask)
            stats["kl"] = (float(((old - ref) * mask).sum(axis=1).mean()), 1)  # k1 summed per sequence
        adv = get_backend().to_numpy(losses.rloo_advantages(R, self.num_generations, **kw))
        for e, a in zip(items, adv.tolist()):
            e["advantage"] = a
        return items, stats

    def _micro_step(self, model, batch, denominator):
        be = get_backend()
        logps, logits, cmask = policy_token_logps(model, batch, self._ctx["pad"], self.temperature)
        adv = be.asarray([e["advantage"] for e in batch])  # (B,)
        loss = losses.rloo_loss(logps, None, adv, cmask, epsilon_low=self.epsilon, epsilon_high=self.epsilon_high,
                                num_accumulation_steps=batch[0]["k_micro"])
        m = losses.rloo_metrics(logps.detach(), None, adv, cmask, epsilon_low=self.epsilon,
                                epsilon_high=self.epsilon_high)
        n = float(len(batch))
        stats = {key: (m[key] * n, n) for key in CLIP_KEYS}
        stats["entropy"] = entropy_stat(logits, cmask, self.temperature)
        return loss, stats
