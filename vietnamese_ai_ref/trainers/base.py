"""What every trainer shares: the constructor's settings, the result dict, history and statistics.

What it is for: `TrainerBase`, the parent of SFTTrainer, DPOTrainer, RewardModel (and the pipeline's
stages): the checkpoint/resume keywords of `huan_luyen` checked before any compute, the result dict
with the seeds' common keys, `lay_lich_su()` and `thong_ke()`.
`reference_policy`: the frozen reference of DPO (and the online trainers): an explicit model, the
model itself with its LoRA adapters switched off, or a copy.
What it is not: the loop (loop.py) or the setting rules (settings.py).
"""

from __future__ import annotations

import contextlib
import os

from ..core.errors import SettingError
from ..core.errors import CheckpointError
from ..io.checkpoints import CheckpointOptions, list_checkpoints, load_checkpoint
from .settings import check_bool, check_int, check_path

__all__ = ["TrainerBase", "min_or_none", "reference_policy"]


@contextlib.contextmanager
def reference_policy(model, ref_model=None):
    """The reference policy, in eval mode for the block (its mode restored after); evaluate it under
    `no_grad`. `ref_model` when given; else, when `model` has LoRA adapters, `model` itself inside
    `model.disable_adapters()` — the base without a second copy in memory, as TRL does with PEFT; else a
    copy of `model` taken now (the model's weights at the start of training)."""
    if ref_model is not None:
        ref, adapters_off = ref_model, contextlib.nullcontext()
    elif getattr(model, "has_adapters", False):
        ref, adapters_off = model, model.disable_adapters()
    else:
        ref, adapters_off = model.copy(), contextlib.nullcontext()
    was_training = getattr(ref, "training", False)
    ref.eval()
    try:
        with adapters_off:
            yield ref
    finally:
        if was_training:
            ref.train()


def min_or_none(values):
    vals = [v for v in values if v == v]
    return min(vals) if vals else None


class TrainerBase:
    """What every trainer shares: history, thong_ke() and the loop settings."""

    _result: dict | None

    def _init_common(self, names):
        """Record the (already checked) constructor settings `names` and start with no run."""
        self._config = {k: getattr(self, k) for k in names}
        self._result = None
        self._history: dict = {}
        self._run: dict | None = None

    def _finish(self, run: dict, history_keys, **extra) -> dict:
        """Record a finished run and build the result every trainer returns: the seeds' common keys,
        the trainer's own (`extra`), and `history` restricted to `history_keys`."""
        self._run = run
        self._history = run["history"]
        h = run["history"]
        self._result = {
            "tong_thoi_gian": run["time"],
            "so_epoch": run["epochs_done"],
            "global_step": run["global_step"],
            "train_loss_min": min_or_none(h["train_loss"]),
            **extra,
            "history": {k: list(h.get(k, [])) for k in history_keys},
        }
        return self._result

    def _checkpoint_options(self, kind, *, thu_muc_checkpoint=None, luu_moi=None, giu_lai=2, tiep_tuc_tu=None,
                            bo_qua_batch_loi=False):
        """Check the checkpoint/resume keywords of huan_luyen (before any compute) and read the checkpoint
        to resume from. Returns (CheckpointOptions, skip_nonfinite)."""
        check_path("thu_muc_checkpoint", thu_muc_checkpoint)
        check_path("tiep_tuc_tu", tiep_tuc_tu)
        if luu_moi is not None:
            check_int("luu_moi", luu_moi)
            if thu_muc_checkpoint is None:
                raise SettingError(
                    "'luu_moi' cần 'thu_muc_checkpoint' (nơi lưu checkpoint) / 'luu_moi' needs "
                    "'thu_muc_checkpoint' (where to write the checkpoints)"
                )
        check_int("giu_lai", giu_lai)
        check_bool("bo_qua_batch_loi", bo_qua_batch_loi)
        if thu_muc_checkpoint is not None:
            d = os.fspath(thu_muc_checkpoint)
            if os.path.lexists(d) and not os.path.isdir(d):
                raise CheckpointError(
                    f"'thu_muc_checkpoint' không phải thư mục / 'thu_muc_checkpoint' is not a directory: {d}"
                )
            if tiep_tuc_tu is None and list_checkpoints(d):
                raise CheckpointError(
                    f"Thư mục checkpoint đã có checkpoint: {d}; hãy truyền tiep_tuc_tu để chạy tiếp hoặc dùng thư "
                    f"mục trống / the checkpoint directory already holds checkpoints: {d}; pass tiep_tuc_tu to "
                    f"resume or use an empty directory"
                )
        resume = load_checkpoint(tiep_tuc_tu) if tiep_tuc_tu is not None else None
        opts = CheckpointOptions(kind=kind, trainer_config=self._config, directory=thu_muc_checkpoint,
                                 every=luu_moi, keep=giu_lai, resume=resume)
        return opts, bo_qua_batch_loi

    def lay_lich_su(self) -> dict:
        """Lịch sử huấn luyện / the training history (lists per log entry), {} before training."""
        return {k: list(v) for k, v in self._history.items()}

    def thong_ke(self) -> dict:
        """Cấu hình, số bước, thời gian, chỉ số cuối / configuration, step counts, time, last metrics,
        non-finite steps skipped (so_buoc_bo_qua)."""
        run = self._run or {}
        last = None
        if self._history.get("step"):
            last = {k: v[-1] for k, v in self._history.items() if v}
        return {
            "cau_hinh": dict(self._config),
            "da_huan_luyen": self._run is not None,
            "so_epoch": run.get("epochs_done", 0),
            "global_step": run.get("global_step", 0),
            "tong_so_buoc": run.get("total_steps", 0),
            "so_buoc_warmup": run.get("warmup_steps", 0),
            "tong_thoi_gian": run.get("time", 0.0),
            "dung_som": run.get("stopped", False),
            "so_buoc_bo_qua": run.get("skipped", 0),
            "chi_so_cuoi": last,
        }
