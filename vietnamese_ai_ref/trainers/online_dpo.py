"""OnlineDPOTrainer: DPO on pairs the policy samples and a reward ranks, over the shared loop.

What it is for: each optimiser step samples two completions per prompt (spec/rl.md §9), scores them
(reward functions and/or a trained reward model), picks chosen / rejected (§7 `online_dpo_pairs`: the
higher reward, a tie to the first, `missing_eos_penalty`) and minimises spec 1.0's `dpo_loss` with
summed completion log-probs (temperature 1) of the policy and a frozen reference — the micro-step is
DPOTrainer's own (dpo.py `dpo_micro_step`). Defaults are TRL v1.9.0's experimental online DPO
(β 0.1, learning rate 5e-7, 64 new tokens, temperature 0.9).
What it is not: the formulas (losses/) or the rollout and reward plumbing (online.py).
"""

from __future__ import annotations

import math

from .. import losses
from ..backends import get_backend, host_np
from ..core.autograd import no_grad
from ..core.errors import DataError
from ..text.records import IGNORE_INDEX
from .dpo import dpo_micro_step, pair_logps
from .online import OnlineTrainerBase, reward_stat_keys
from .settings import checked

__all__ = ["OnlineDPOTrainer"]

DPO_KEYS = ("chosen_rewards", "rejected_rewards", "reward_margin", "reward_accuracy")
OBJECTIVE_KEYS = ("objective/scores", "objective/scores_margin", "val/contain_eos_token")


class OnlineDPOTrainer(OnlineTrainerBase):
    """Online Direct Preference Optimization Trainer (spec/rl.md §7, spec/losses.md §3)."""

    KIND = "online_dpo"
    #: the constructor's settings, in the order they are checked (thong_ke()['cau_hinh'])
    SETTINGS = ("so_vong", "kich_thuoc_batch", "toc_do_hoc", "beta", "gradient_accumulation", "gradient_clip",
                "max_seq_length", "logging_steps", "seed", "missing_eos_penalty", "max_completion_length",
                "temperature", "top_k", "top_p", "warmup_ratio", "weight_decay")

    def __init__(self, so_vong=1, kich_thuoc_batch=2, toc_do_hoc=5e-7, beta=0.1, gradient_accumulation=1,
                 gradient_clip=1.0, max_seq_length=512, logging_steps=10, seed=42, *, missing_eos_penalty=None,
                 max_completion_length=64, temperature=0.9, top_k=0, top_p=1.0, warmup_ratio=0.0, weight_decay=0.0):
        self.so_vong = checked("so_vong", so_vong)
        self.kich_thuoc_batch = checked("kich_thuoc_batch", kich_thuoc_batch)
        self.toc_do_hoc = checked("toc_do_hoc", toc_do_hoc)
        self.beta = checked("beta", beta)
        self.gradient_accumulation = checked("gradient_accumulation", gradient_accumulation)
        self.gradient_clip = checked("gradient_clip", gradient_clip)
        self.max_seq_length = checked("max_seq_length", max_seq_length)
        self.logging_steps = checked("logging_steps", logging_steps)
        self.seed = checked("seed", seed)
        self.missing_eos_penalty = checked("missing_eos_penalty", missing_eos_penalty, "optional_non_negative")
        self.max_completion_length = checked("max_completion_length", max_completion_length)
        self.temperature = checked("temperature", temperature)
        self.top_k = checked("top_k", top_k)
        self.top_p = checked("top_p", top_p)
        self.warmup_ratio = checked("warmup_ratio", warmup_ratio)
        self.weight_decay = checked("weight_decay", weight_decay)
        self._init_common(self.SETTINGS)
        self._group = 2

    def _prompts_per_batch(self) -> int:
        return self.kich_thuoc_batch  # a batch counts prompts (= pairs), as DPOTrainer

    def _needs_ref(self) -> bool:
        return True

    def _stat_keys(self, names) -> tuple:
        return (*DPO_KEYS, *OBJECTIVE_KEYS, *reward_stat_keys(names))

    def _history_keys(self, names) -> tuple:
        return ("train_loss", "learning_rate", "grad_norm", *self._stat_keys(names))

    @staticmethod
    def _weight_of(item) -> int:
        return 1  # the step's loss is the mean over its pairs (spec/losses.md §10)

    def _prepare(self, items, R, k):
        """Pairs (chosen, rejected) of each prompt's two completions, with the reference's summed log-probs."""
        if host_np.isnan(R).any():
            bad = [i for i, r in enumerate(R.tolist()) if math.isnan(r)]
            raise DataError(f"DPO trực tuyến cần phần thưởng cho mọi completion; không có ở hàng {bad} (bước {k + 1}) "
                             f"/ online DPO needs a reward for every completion; none for rows {bad} (step {k + 1})")
        has_eos = host_np.asarray([e["has_eos"] for e in items])
        chosen, rejected = (get_backend().to_numpy(a).tolist()
                            for a in losses.online_dpo_pairs(R, has_eos, self.missing_eos_penalty))
        pairs = []
        for c, r in zip(chosen, rejected):
            p = items[c]["prompt_ids"]
            pair = {"index": items[c]["index"], "score_chosen": float(R[c]), "score_rejected": float(R[r])}
            for side, row in (("chosen", items[c]), ("rejected", items[r])):
                pair[f"{side}_ids"] = list(p) + list(row["completion_ids"])
                pair[f"{side}_labels"] = [IGNORE_INDEX] * len(p) + list(row["completion_ids"])
            pairs.append(pair)
        pad = self._ctx["pad"]
        with self._reference_policy() as ref, no_grad():
            for i in range(0, len(pairs), self.kich_thuoc_batch):
                chunk = pairs[i:i + self.kich_thuoc_batch]
                rc, rr = pair_logps(ref, chunk, pad)
                for e, a, b in zip(chunk, rc.numpy().tolist(), rr.numpy().tolist()):
                    e["ref_chosen"], e["ref_rejected"] = a, b
        margin = [e["score_chosen"] - e["score_rejected"] for e in pairs]
        stats = {"objective/scores": (float(R.mean()), 1), "objective/scores_margin": (sum(margin) / len(margin), 1),
                 "val/contain_eos_token": (float(has_eos.mean()), 1)}
        return pairs, stats

    def _micro_step(self, model, batch, denominator):
        return dpo_micro_step(model, batch, self._ctx["pad"], self.beta, 0.0, denominator)
