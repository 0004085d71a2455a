"""RewardModel: a Bradley–Terry reward model on a transformer with a scalar head, and its scoring.

What it is for: `huan_luyen` attaches a `score` head to the given TransformerLM (saved and loaded
with it), trains the whole model on preference pairs (spec/losses.md "Reward model") over the
shared loop; `diem_danh_gia` scores texts, raw and z-score normalised.
What it is not: a separate network. The reward model *is* the transformer plus `score.weight`.
"""

from __future__ import annotations

from ..core.errors import SettingError
from .. import losses
from ..core.autograd import no_grad
from ..backends import get_backend
from ..text.records import DataError, encode_for_scoring, pad_batch, prepare_pairs
from ..trainers.sft import effective_max_len, resolve_tokenizer
from .base import TrainerBase
from .loop import run_loop
from .settings import LoopSettings, check_callback, check_int, check_model, checked


def score_ids(model, id_lists, batch_size, pad_id):
    """Scores (host list of floats) of token-id lists, read at each row's last non-padding token.

    Runs in eval mode without a graph; the model's mode is restored afterwards."""
    xp = get_backend().xp
    out = []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for i in range(0, len(id_lists), batch_size):
                ids, mask = pad_batch(id_lists[i:i + batch_size], pad_id)
                s = model.score(xp.asarray(ids, dtype=xp.int64), xp.asarray(mask, dtype=xp.int64))
                out.extend(float(v) for v in s.numpy().reshape(-1).tolist())
    finally:
        model.train(was_training)
    return out


def _pair_scores(model, examples, pad_id):
    xp = get_backend().xp
    seqs = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    ids, mask = pad_batch(seqs, pad_id)
    s = model.score(xp.asarray(ids, dtype=xp.int64), xp.asarray(mask, dtype=xp.int64))  # (2B,)
    B = len(examples)
    return s[:B], s[B:]


def reward_micro_step(model, batch, pad_id, denominator):
    """One reward-model micro-batch: the Bradley–Terry loss of spec/losses.md §5 reduced over the
    effective batch (§10), the accuracy of §5 and the mean score margin; returns (loss Tensor, stats)."""
    be = get_backend()
    rc, rr = _pair_scores(model, batch, pad_id)
    per_pair = losses.reward_loss(rc, rr, margin=be.asarray([e["margin"] for e in batch]))
    n = len(batch)
    c, r = rc.numpy(), rr.numpy()
    stats = {"accuracy": (losses.reward_accuracy(c, r) * n, n), "reward_margin": (float((c - r).sum()), n)}
    return losses.reduce_pair_losses(per_pair, denominator), stats


class RewardModel(TrainerBase):
    """Mô hình phần thưởng cho RLHF / the reward model of RLHF."""

    #: the constructor's settings, in the order they are checked (thong_ke()['cau_hinh'])
    SETTINGS = ("toc_do_hoc", "seed", "kich_thuoc_batch", "gradient_accumulation", "gradient_clip",
                "warmup_ratio", "weight_decay", "max_seq_length", "logging_steps")

    def __init__(self, toc_do_hoc=1e-5, seed=42, *, kich_thuoc_batch=4, gradient_accumulation=1,
                 gradient_clip=1.0, warmup_ratio=0.0, weight_decay=0.0, max_seq_length=512, logging_steps=10):
        self.toc_do_hoc = checked("toc_do_hoc", toc_do_hoc)
        self.seed = checked("seed", seed)
        self.kich_thuoc_batch = checked("kich_thuoc_batch", kich_thuoc_batch)
        self.gradient_accumulation = checked("gradient_accumulation", gradient_accumulation)
        self.gradient_clip = checked("gradient_clip", gradient_clip)
        self.warmup_ratio = checked("warmup_ratio", warmup_ratio)
        self.weight_decay = checked("weight_decay", weight_decay)
        self.max_seq_length = checked("max_seq_length", max_seq_length)
        self.logging_steps = checked("logging_steps", logging_steps)
        self._init_common(self.SETTINGS)
        self.tokenizer = None

    def huan_luyen(self, model, preference_data, so_vong=1, callback=None, *, thu_muc_checkpoint=None,
                   luu_moi=None, giu_lai=2, tiep_tuc_tu=None, bo_qua_batch_loi=False) -> dict:
        """Huấn luyện reward model / train it. Records: chosen, rejected, optional prompt and margin.

        Returns tong_thoi_gian, so_epoch, global_step, train_loss_min, final_accuracy (accuracy of the
        trained model over `preference_data`, strict >, in eval mode) and history
        (train_loss, accuracy, reward_margin, learning_rate, grad_norm).

        Keyword-only (spec/api.md "Checkpoints and resume"): thu_muc_checkpoint, luu_moi, giu_lai,
        tiep_tuc_tu, bo_qua_batch_loi."""
        check_model(model)
        so_vong = check_int("so_vong", so_vong)
        check_callback(callback)
        ck, skip = self._checkpoint_options("reward", thu_muc_checkpoint=thu_muc_checkpoint, luu_moi=luu_moi,
                                            giu_lai=giu_lai, tiep_tuc_tu=tiep_tuc_tu,
                                            bo_qua_batch_loi=bo_qua_batch_loi)
        tok = resolve_tokenizer(None, model)
        max_len = effective_max_len(self.max_seq_length, model)
        pairs = prepare_pairs(preference_data, tok, max_len, require_prompt=False, allow_margin=True)
        pad = tok.pad_token_id
        if not model.has_score_head:
            model.add_score_head(seed=self.seed)

        def micro_step(batch, denominator):
            return reward_micro_step(model, batch, pad, denominator)

        run = run_loop(model=model, examples=pairs, settings=LoopSettings(
            epochs=so_vong, batch_size=self.kich_thuoc_batch, accumulation=self.gradient_accumulation,
            lr=self.toc_do_hoc, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
            clip=self.gradient_clip, logging_steps=self.logging_steps, seed=self.seed),
            micro_step=micro_step, weight_of=lambda e: 1, stat_keys=("accuracy", "reward_margin"),
            callback=callback, checkpoint=ck, skip_nonfinite=skip)
        chosen = score_ids(model, [e["chosen_ids"] for e in pairs], self.kich_thuoc_batch, pad)
        rejected = score_ids(model, [e["rejected_ids"] for e in pairs], self.kich_thuoc_batch, pad)
        return self._finish(run, ("train_loss", "accuracy", "reward_margin", "learning_rate", "grad_norm"),
                            final_accuracy=losses.reward_accuracy(chosen, rejected))

    def diem_danh_gia(self, model, cac_van_ban) -> list:
        """Chấm điểm văn bản / score texts. Returns, in input order, dicts with van_ban, score
        (raw) and score_normalized (z-score over this call, population std; 0 when n < 2 or all equal)."""
        check_model(model)
        if not getattr(model, "has_score_head", False):
            raise SettingError(
                "Mô hình chưa có đầu reward (score head): hãy gọi RewardModel.huan_luyen trước "
                "/ the model has no score head: train it with RewardModel.huan_luyen first"
            )
        if isinstance(cac_van_ban, str) or not isinstance(cac_van_ban, (list, tuple)) or not cac_van_ban:
            raise DataError(
                f"'cac_van_ban' phải là list chuỗi không rỗng, nhận được {type(cac_van_ban).__name__} "
                f"/ 'cac_van_ban' must be a non-empty list of strings"
            )
        for i, t in enumerate(cac_van_ban):
            if not isinstance(t, str) or not t.strip():
                raise DataError(
                    f"cac_van_ban[{i}]: cần một chuỗi không rỗng, nhận được {t!r} "
                    f"/ cac_van_ban[{i}]: expected a non-empty string, got {t!r}"
                )
        tok = resolve_tokenizer(None, model)
        max_len = effective_max_len(self.max_seq_length, model)
        ids = [encode_for_scoring(t, tok, max_len) for t in cac_van_ban]
        scores = score_ids(model, ids, self.kich_thuoc_batch, tok.pad_token_id)
        normalized = losses.normalize_scores(scores)
        return [{"van_ban": t, "score": s, "score_normalized": float(z)}
                for t, s, z in zip(cac_van_ban, scores, normalized)]

    def cham_diem_cap(self, model, prompts, responses) -> list:
        """Scores of responses to (templated) prompts, as the pairs were scored in training."""
        tok = resolve_tokenizer(None, model)
        max_len = effective_max_len(self.max_seq_length, model)
        ids = [encode_for_scoring(r, tok, max_len, prompt=p) for p, r in zip(prompts, responses)]
        return score_ids(model, ids, self.kich_thuoc_batch, tok.pad_token_id)
