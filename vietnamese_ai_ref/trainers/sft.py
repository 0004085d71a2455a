"""SFTTrainer: supervised fine-tuning with the seeds' constructor, over the shared training loop.

What it is for: causal-LM cross-entropy on completion tokens (spec/losses.md "SFT loss"), the
token count of the whole effective batch as denominator, validation loss after each epoch.
What it is not: a data pipeline (records.py) or a loop of its own (training.py).
"""

from __future__ import annotations

from .. import losses
from ..core.autograd import no_grad
from ..backends import get_backend
from ..text.records import IGNORE_INDEX, pad_batch, prepare_sft
from .base import TrainerBase, min_or_none
from .loop import run_loop
from .settings import LoopSettings, check_callback, check_model, checked


def resolve_tokenizer(tokenizer, model):
    """The tokenizer argument, else the model's, else the built-in byte tokenizer."""
    if tokenizer is not None:
        return tokenizer
    if getattr(model, "tokenizer", None) is not None:
        return model.tokenizer
    from ..text.tokenizer import ByteTokenizer

    return ByteTokenizer()


def effective_max_len(max_seq_length, model):
    """Records are truncated to min(max_seq_length, the model's n_positions)."""
    return min(max_seq_length, model.config.n_positions)


def n_targets(example) -> int:
    """Target tokens of one example after the one-token shift."""
    return sum(1 for lab in example["labels"][1:] if lab != IGNORE_INDEX)


def lm_batch(examples, pad_id):
    be = get_backend()
    ids, mask, labels = pad_batch([e["input_ids"] for e in examples], pad_id, [e["labels"] for e in examples])
    xp = be.xp
    return xp.asarray(ids, dtype=xp.int64), xp.asarray(mask, dtype=xp.int64), xp.asarray(labels, dtype=xp.int64)


class SFTTrainer(TrainerBase):
    """Supervised Fine-Tuning Trainer."""

    #: the constructor's settings, in the order they are checked (thong_ke()['cau_hinh'])
    SETTINGS = ("so_vong", "kich_thuoc_batch", "toc_do_hoc", "gradient_accumulation",
                "gradient_clip", "warmup_ratio", "weight_decay", "max_seq_length", "logging_steps",
                "seed")

    def __init__(self, so_vong=3, kich_thuoc_batch=4, toc_do_hoc=2e-5, gradient_accumulation=4,
                 gradient_clip=1.0, warmup_ratio=0.1, weight_decay=0.01, max_seq_length=512,
                 logging_steps=10, seed=42):
        self.so_vong = checked("so_vong", so_vong)
        self.kich_thuoc_batch = checked("kich_thuoc_batch", kich_thuoc_batch)
        self.toc_do_hoc = checked("toc_do_hoc", toc_do_hoc)
        self.gradient_accumulation = checked("gradient_accumulation", gradient_accumulation)
        self.gradient_clip = checked("gradient_clip", gradient_clip)
        self.warmup_ratio = checked("warmup_ratio", warmup_ratio)
        self.weight_decay = checked("weight_decay", weight_decay)
        self.max_seq_length = checked("max_seq_length", max_seq_length)
        self.logging_steps = checked("logging_steps", logging_steps)
        self.seed = checked("seed", seed)
        self._init_common(self.SETTINGS)

    def _settings(self):
        return LoopSettings(epochs=self.so_vong, batch_size=self.kich_thuoc_batch,
                            accumulation=self.gradient_accumulation, lr=self.toc_do_hoc,
                            weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                            clip=self.gradient_clip, logging_steps=self.logging_steps, seed=self.seed)

    def huan_luyen(self, model, du_lieu_train, du_lieu_val=None, tokenizer=None, callback=None, *,
                   thu_muc_checkpoint=None, luu_moi=None, giu_lai=2, tiep_tuc_tu=None,
                   bo_qua_batch_loi=False) -> dict:
        """Huấn luyện SFT / run SFT. Returns tong_thoi_gian, so_epoch, global_step, train_loss_min,
        eval_loss_min (None without du_lieu_val) and history (train_loss, eval_loss, learning_rate, grad_norm).

        Keyword-only (spec/api.md "Checkpoints and resume"): thu_muc_checkpoint, luu_moi, giu_lai,
        tiep_tuc_tu, bo_qua_batch_loi."""
        check_model(model)
        check_callback(callback)
        ck, skip = self._checkpoint_options("sft", thu_muc_checkpoint=thu_muc_checkpoint, luu_moi=luu_moi,
                                            giu_lai=giu_lai, tiep_tuc_tu=tiep_tuc_tu,
                                            bo_qua_batch_loi=bo_qua_batch_loi)
        tok = resolve_tokenizer(tokenizer, model)
        max_len = effective_max_len(self.max_seq_length, model)
        vocab = model.config.vocab_size
        train = prepare_sft(du_lieu_train, tok, max_len, vocab, name="du_lieu_train")
        val = prepare_sft(du_lieu_val, tok, max_len, vocab, name="du_lieu_val") if du_lieu_val is not None else None
        pad = tok.pad_token_id

        def micro_step(batch, denominator):
            ids, mask, labels = lm_batch(batch, pad)
            logits = model(ids, attention_mask=mask)  # (B, T, V)
            return losses.sft_loss(logits, labels, num_items_in_batch=denominator), {}

        def evaluate():
            total = sum(n_targets(e) for e in val)
            acc = 0.0
            with no_grad():
                for i in range(0, len(val), self.kich_thuoc_batch):
                    ids, mask, labels = lm_batch(val[i:i + self.kich_thuoc_batch], pad)
                    acc += losses.sft_loss(model(ids, attention_mask=mask), labels,
                                           num_items_in_batch=total).item()
            return {"eval_loss": acc}

        run = run_loop(model=model, examples=train, settings=self._settings(), micro_step=micro_step,
                       weight_of=n_targets, callback=callback, evaluate=evaluate if val is not None else None,
                       checkpoint=ck, skip_nonfinite=skip)
        h = run["history"]
        return self._finish(run, ("train_loss", "eval_loss", "learning_rate", "grad_norm"),
                            eval_loss_min=min_or_none(h["eval_loss"]) if val is not None else None)
