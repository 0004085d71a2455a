"""DPOTrainer: Direct Preference Optimization with the seeds' constructor, over the shared loop.

What it is for: the sigmoid DPO loss with conservative label smoothing (spec/losses.md "DPO"), the
reference model frozen and evaluated once per record before training, implicit rewards, margins
and accuracies in the history.
What it is not: the loss formula itself (losses.dpo_loss) or a loop of its own (training.py).
"""

from __future__ import annotations

from ..core.errors import SettingError
from .. import losses
from ..core.autograd import no_grad
from ..backends import get_backend
from ..text.records import pad_batch, prepare_pairs
from ..trainers.sft import effective_max_len, resolve_tokenizer
from .base import TrainerBase, reference_policy
from .loop import run_loop
from .settings import LoopSettings, check_callback, check_model, checked


def pair_batch(examples, pad_id):
    """Chosen rows then rejected rows, one padded batch of 2·B sequences (as TRL concatenates)."""
    xp = get_backend().xp
    seqs = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    labs = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
    ids, mask, labels = pad_batch(seqs, pad_id, labs)
    return xp.asarray(ids, dtype=xp.int64), xp.asarray(mask, dtype=xp.int64), xp.asarray(labels, dtype=xp.int64)


def pair_logps(model, examples, pad_id):
    """(chosen log-probs, rejected log-probs) of a batch of pairs, each (B,)."""
    ids, mask, labels = pair_batch(examples, pad_id)
    logps = losses.sequence_logps(model(ids, attention_mask=mask), labels)  # (2B,)
    B = len(examples)
    return logps[:B], logps[B:]


def pair_stats(metrics: dict, n: int) -> dict:
    """Batch means of a spec statistics function as the loop's (sum, count) pairs over n pairs."""
    return {k: (v * n, n) for k, v in metrics.items()}


def dpo_micro_step(model, batch, pad_id, beta, label_smoothing, denominator):
    """One DPO micro-batch: the loss of spec/losses.md §3 reduced over the effective batch (§10) and the
    statistics of §4, each computed by the spec's own function. `batch` holds pair examples with their
    reference log-probabilities ("ref_chosen", "ref_rejected"); returns (loss Tensor, stats)."""
    be = get_backend()
    pc, pr = pair_logps(model, batch, pad_id)
    rc = be.asarray([e["ref_chosen"] for e in batch])
    rr = be.asarray([e["ref_rejected"] for e in batch])
    per_pair, cr, rj = losses.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)
    return losses.reduce_pair_losses(per_pair, denominator), pair_stats(losses.dpo_metrics(cr, rj), len(batch))


class DPOTrainer(TrainerBase):
    """Direct Preference Optimization Trainer."""

    #: the constructor's settings, in the order they are checked (thong_ke()['cau_hinh'])
    SETTINGS = ("so_vong", "kich_thuoc_batch", "toc_do_hoc", "beta", "label_smoothing",
                "gradient_accumulation", "gradient_clip", "max_seq_length", "logging_steps", "seed",
                "warmup_ratio", "weight_decay")

    def __init__(self, so_vong=1, kich_thuoc_batch=2, toc_do_hoc=5e-7, beta=0.1, label_smoothing=0.0,
                 gradient_accumulation=4, gradient_clip=1.0, max_seq_length=512, logging_steps=10, seed=42,
                 *, warmup_ratio=0.0, weight_decay=0.0):
        self.so_vong = checked("so_vong", so_vong)
        self.kich_thuoc_batch = checked("kich_thuoc_batch", kich_thuoc_batch)
        self.toc_do_hoc = checked("toc_do_hoc", toc_do_hoc)
        self.beta = checked("beta", beta)
        self.label_smoothing = checked("label_smoothing", label_smoothing)
        self.gradient_accumulation = checked("gradient_accumulation", gradient_accumulation)
        self.gradient_clip = checked("gradient_clip", gradient_clip)
        self.max_seq_length = checked("max_seq_length", max_seq_length)
        self.logging_steps = checked("logging_steps", logging_steps)
        self.seed = checked("seed", seed)
        self.warmup_ratio = checked("warmup_ratio", warmup_ratio)
        self.weight_decay = checked("weight_decay", weight_decay)
        self._init_common(self.SETTINGS)

    def huan_luyen(self, model, ref_model, preference_data, tokenizer=None, callback=None, *,
                   thu_muc_checkpoint=None, luu_moi=None, giu_lai=2, tiep_tuc_tu=None,
                   bo_qua_batch_loi=False) -> dict:
        """Huấn luyện DPO / run DPO. `ref_model=None`: for a model with LoRA adapters, the model itself
        with its adapters switched off (`model.disable_adapters()`, no copy); otherwise a frozen copy of
        `model` taken now.

        Returns tong_thoi_gian, so_epoch, global_step, train_loss_min, final_reward_margin and history
        (train_loss, chosen_rewards, rejected_rewards, reward_margin, reward_accuracy).

        Keyword-only (spec/api.md "Checkpoints and resume"): thu_muc_checkpoint, luu_moi, giu_lai,
        tiep_tuc_tu, bo_qua_batch_loi. Checkpoints store the reference log-probabilities, so a resumed
        run reuses them and never re-evaluates `ref_model` (with ref_model=None the copy it came from is gone)."""
        check_model(model)
        if ref_model is model:
            raise SettingError(
                "'ref_model' không được là cùng một đối tượng với 'model' (mô hình tham chiếu phải đóng băng); "
                "truyền None để dùng bản sao / 'ref_model' must not be the same object as 'model'; "
                "pass None for a frozen copy"
            )
        if ref_model is not None:
            check_model(ref_model, "ref_model")
            if ref_model.config.vocab_size != model.config.vocab_size:
                raise SettingError(
                    f"'ref_model' có vocab_size {ref_model.config.vocab_size} khác 'model' "
                    f"({model.config.vocab_size}) / vocab sizes differ"
                )
        check_callback(callback)
        ck, skip = self._checkpoint_options("dpo", thu_muc_checkpoint=thu_muc_checkpoint, luu_moi=luu_moi,
                                            giu_lai=giu_lai, tiep_tuc_tu=tiep_tuc_tu,
                                            bo_qua_batch_loi=bo_qua_batch_loi)
        tok = resolve_tokenizer(tokenizer, model)
        max_len = effective_max_len(self.max_seq_length, model)
        if ref_model is not None:
            max_len = min(max_len, ref_model.config.n_positions)
        pairs = prepare_pairs(preference_data, tok, max_len, require_prompt=True, allow_margin=False)
        pad = tok.pad_token_id
        stored = ck.resume.extra.get("ref_logps") if ck.resume is not None else None
        if stored is not None:
            # resumed: the reference log-probs saved with the checkpoint (same data checked first)
            ck.resume.check_examples(pairs)
            for e, (c, r) in zip(pairs, stored):
                e["ref_chosen"], e["ref_rejected"] = c, r
        else:
            # Reference log-probs: once per record, frozen, no graph (spec/losses.md "DPO").
            with reference_policy(model, ref_model) as ref, no_grad():
                for i in range(0, len(pairs), self.kich_thuoc_batch):
                    chunk = pairs[i:i + self.kich_thuoc_batch]
                    rc, rr = pair_logps(ref, chunk, pad)
                    for e, c, r in zip(chunk, rc.numpy().tolist(), rr.numpy().tolist()):
                        e["ref_chosen"], e["ref_rejected"] = c, r
        beta, eps = self.beta, self.label_smoothing

        def micro_step(batch, denominator):
            return dpo_micro_step(model, batch, pad, beta, eps, denominator)

        run = run_loop(model=model, examples=pairs, settings=LoopSettings(
            epochs=self.so_vong, batch_size=self.kich_thuoc_batch, accumulation=self.gradient_accumulation,
            lr=self.toc_do_hoc, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
            clip=self.gradient_clip, logging_steps=self.logging_steps, seed=self.seed),
            micro_step=micro_step, weight_of=lambda e: 1,
            stat_keys=("chosen_rewards", "rejected_rewards", "reward_margin", "reward_accuracy"),
            callback=callback, checkpoint=ck, skip_nonfinite=skip,
            extra_state={"ref_logps": [[e["ref_chosen"], e["ref_rejected"]] for e in pairs]})
        margins = run["history"]["reward_margin"]
        return self._finish(run, ("train_loss", "chosen_rewards", "rejected_rewards", "reward_margin",
                                  "reward_accuracy"),
                            final_reward_margin=margins[-1] if margins else None)
