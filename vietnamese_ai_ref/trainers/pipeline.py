"""RLHFPipeline: SFT → reward model → DPO, with the reward model's signal measured on the policy.

What it is for: the seeds' pipeline API (`sft`, `train_reward_model`, `rlhf`, `chay_day_du`,
`lay_ket_qua`, `thong_ke`) over the three trainers, with config dicts checked for unknown keys
before anything runs. `chay_day_du` scores the policy's own greedy answers to the preference prompts
with the trained reward model before and after DPO and reports both and their difference. With
`thu_muc_checkpoint` each stage checkpoints into its own subdirectory (sft/, reward/, dpo/), and
`chay_day_du(..., tiep_tuc=True)` resumes every stage from there. Everything is checked before the first
stage computes: the three stage configs at construction (`SettingError`), every model and every record of
every stage in `chay_day_du` with that stage's own truncation length and tokenizer, and the policy's
prompts are truncated for its answers by the same rule as in training (records.generation_prompt_ids).
What it is not: a new trainer; every stage is SFTTrainer, RewardModel or DPOTrainer as configured.
"""

from __future__ import annotations

import inspect
import os

from ..core.errors import SettingError
from ..models.generation import generate
from ..text.records import DataError, generation_prompt_ids, prepare_pairs, prepare_sft
from .dpo import DPOTrainer
from .reward import RewardModel
from .settings import check_bool, check_int, check_model, check_path
from .sft import SFTTrainer, effective_max_len


def _check_config(name, cfg, cls, extra=()):
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise SettingError(f"'{name}' phải là dict hoặc None, nhận được {type(cfg).__name__} "
                           f"/ '{name}' must be a dict or None")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} | set(extra)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise SettingError(
            f"'{name}' có khóa không hợp lệ {unknown}; các khóa hợp lệ: {sorted(allowed)} "
            f"/ '{name}' has unknown keys {unknown}; valid keys: {sorted(allowed)}"
        )
    return dict(cfg)


class RLHFPipeline:
    """Complete RLHF Pipeline."""

    #: greedy answer length used to measure the reward model's signal on the policy
    so_token_sinh = 48

    #: the subdirectory of `thu_muc_checkpoint` each stage checkpoints into
    thu_muc_giai_doan = {"sft": "sft", "reward": "reward", "rlhf": "dpo"}

    def __init__(self, sft_config=None, dpo_config=None, reward_config=None, *, thu_muc_checkpoint=None,
                 luu_moi=None, giu_lai=2, bo_qua_batch_loi=False):
        check_path("thu_muc_checkpoint", thu_muc_checkpoint)
        if luu_moi is not None:
            check_int("luu_moi", luu_moi)
            if thu_muc_checkpoint is None:
                raise SettingError("'luu_moi' cần 'thu_muc_checkpoint' / 'luu_moi' needs 'thu_muc_checkpoint'")
        check_int("giu_lai", giu_lai)
        self.thu_muc_checkpoint = thu_muc_checkpoint
        self._ck = {"luu_moi": luu_moi, "giu_lai": giu_lai, "bo_qua_batch_loi": check_bool("bo_qua_batch_loi",
                                                                                            bo_qua_batch_loi)}
        self.sft_config = _check_config("sft_config", sft_config, SFTTrainer)
        self.dpo_config = _check_config("dpo_config", dpo_config, DPOTrainer)
        self.reward_config = _check_config("reward_config", reward_config, RewardModel, extra=("so_vong",))
        rc = dict(self.reward_config)
        self._reward_epochs = check_int("so_vong", rc.pop("so_vong", 1))  # reward_config's so_vong
        # the trainers validate their values now, before any compute
        self.sft_trainer = SFTTrainer(**self.sft_config)
        self.dpo_trainer = DPOTrainer(**self.dpo_config)
        self.reward_model = RewardModel(**rc)
        self._results: dict = {}
        self._done = {"sft": False, "reward": False, "rlhf": False}

    # -- the three stages -------------------------------------------------------------------------
    def _stage_ck(self, stage, tiep_tuc_tu):
        """Checkpoint keywords of one stage: its subdirectory of thu_muc_checkpoint, luu_moi, giu_lai."""
        d = None if self.thu_muc_checkpoint is None else os.path.join(os.fspath(self.thu_muc_checkpoint),
                                                                      self.thu_muc_giai_doan[stage])
        return dict(thu_muc_checkpoint=d, tiep_tuc_tu=tiep_tuc_tu, **self._ck)

    def sft(self, model, du_lieu, du_lieu_val=None, *, tiep_tuc_tu=None) -> dict:
        """Bước 1: SFT."""
        r = self.sft_trainer.huan_luyen(model, du_lieu, du_lieu_val=du_lieu_val,
                                        **self._stage_ck("sft", tiep_tuc_tu))
        self._results["sft"] = r
        self._done["sft"] = True
        return r

    def train_reward_model(self, reward_model, preference_data, so_vong=None, *, tiep_tuc_tu=None) -> dict:
        """Bước 2: reward model (so_vong defaults to reward_config's, else 1)."""
        r = self.reward_model.huan_luyen(reward_model, preference_data,
                                         so_vong=self._reward_epochs if so_vong is None else so_vong,
                                         **self._stage_ck("reward", tiep_tuc_tu))
        self._results["reward"] = r
        self._done["reward"] = True
        self._reward_net = reward_model
        return r

    def rlhf(self, model, ref_model, preference_data, *, tiep_tuc_tu=None) -> dict:
        """Bước 3: DPO (`ref_model=None`: a frozen copy of `model` as it is now — with its LoRA adapters,
        if it has any: the SFT policy, not the base that DPOTrainer's adapters-off reference would be)."""
        if ref_model is None and getattr(model, "has_adapters", False):
            ref_model = model.copy()
        r = self.dpo_trainer.huan_luyen(model, ref_model, preference_data, **self._stage_ck("rlhf", tiep_tuc_tu))
        self._results["rlhf"] = r
        self._done["rlhf"] = True
        return r

    # -- the full run ----------------------------------------------------------------------------
    def chay_day_du(self, model, ref_model, reward_model, sft_data, preference_data, *, tiep_tuc=False) -> dict:
        """SFT → reward model → DPO. `ref_model=None` means a frozen copy of the policy *after* SFT
        (the usual choice: DPO's reference is the SFT model). Returns the three stage results plus
        policy_reward_before / policy_reward_after / policy_reward_delta: the trained reward model's
        mean score of the policy's greedy answers to the preference prompts, before and after DPO.

        `tiep_tuc=True` (needs thu_muc_checkpoint): each stage resumes from the newest checkpoint in its
        subdirectory when there is one (a finished stage restores its weights and result without training)."""
        if tiep_tuc and self.thu_muc_checkpoint is None:
            raise SettingError("'tiep_tuc=True' cần 'thu_muc_checkpoint' / 'tiep_tuc=True' needs "
                               "'thu_muc_checkpoint'")
        prompts, dpo_pairs = self.check_run(model, ref_model, reward_model, sft_data, preference_data)
        self.sft(model, sft_data, tiep_tuc_tu=self._resume_point("sft", tiep_tuc))
        self.train_reward_model(reward_model, preference_data, tiep_tuc_tu=self._resume_point("reward", tiep_tuc))
        before = self._policy_reward(model, reward_model, prompts)
        self.rlhf(model, ref_model, dpo_pairs, tiep_tuc_tu=self._resume_point("rlhf", tiep_tuc))
        after = self._policy_reward(model, reward_model, prompts)
        result = {
            "sft": self._results["sft"],
            "reward": self._results["reward"],
            "rlhf": self._results["rlhf"],
            "policy_reward_before": before,
            "policy_reward_after": after,
            "policy_reward_delta": after - before,
        }
        self._results.update({k: v for k, v in result.items() if k.startswith("policy_")})
        return result

    def check_run(self, model, ref_model, reward_model, sft_data, preference_data):
        """Everything chay_day_du will need, checked before any compute: the models, and every record of
        every stage with that stage's tokenizer and truncation length (min(max_seq_length, n_positions)).
        Returns (the distinct prompts, the DPO pairs)."""
        check_model(model)
        check_model(reward_model, "reward_model")
        if ref_model is not None:
            check_model(ref_model, "ref_model")
        if reward_model is model or (ref_model is not None and reward_model is ref_model):
            raise SettingError("'reward_model' phải là một mô hình riêng / 'reward_model' must be a separate model")
        if ref_model is model:
            raise SettingError("'ref_model' không được là 'model' (same object); truyền None / pass None for a copy")
        prompts = _prompts_of(preference_data)
        prepare_sft(sft_data, model.tokenizer, effective_max_len(self.sft_trainer.max_seq_length, model),
                    model.config.vocab_size, name="sft_data")
        prepare_pairs(preference_data, reward_model.tokenizer,
                      effective_max_len(self.reward_model.max_seq_length, reward_model), require_prompt=False,
                      allow_margin=True)
        dpo_pairs = [{k: v for k, v in r.items() if k != "margin"} for r in preference_data if "prompt" in r]
        prepare_pairs(dpo_pairs, model.tokenizer, self._dpo_max_len(model, ref_model), require_prompt=True,
                      allow_margin=False)
        return prompts, dpo_pairs

    def _dpo_max_len(self, model, ref_model=None):
        n = effective_max_len(self.dpo_trainer.max_seq_length, model)
        return n if ref_model is None else min(n, ref_model.config.n_positions)

    def _resume_point(self, stage, tiep_tuc):
        if not tiep_tuc:
            return None
        from ..io.checkpoints import tim_checkpoint

        return tim_checkpoint(self._stage_ck(stage, None)["thu_muc_checkpoint"])

    def _policy_reward(self, model, reward_model, prompts) -> float:
        """The reward model's mean score of the policy's greedy answers; each prompt is templated and
        truncated as in DPO's training pairs (a prompt longer than the model never reaches generation)."""
        tok = model.tokenizer
        max_len = self._dpo_max_len(model)
        ids = [generation_prompt_ids(p, tok, max_len, self.so_token_sinh) for p in prompts]
        answers = []
        for row in generate(model, ids, max_new_tokens=self.so_token_sinh):
            if row and row[-1] == tok.eos_token_id:
                row = row[:-1]
            answers.append(tok.decode(row, skip_special_tokens=True))
        scores = self.reward_model.cham_diem_cap(reward_model, prompts, answers)
        return sum(scores) / len(scores)

    def lay_ket_qua(self) -> dict:
        """Kết quả từng bước / the result dict of each stage run so far (keys sft, reward, rlhf, …)."""
        return dict(self._results)

    def thong_ke(self) -> dict:
        return {
            "sft_done": self._done["sft"],
            "reward_done": self._done["reward"],
            "rlhf_done": self._done["rlhf"],
            "sft_trainer": self.sft_trainer.thong_ke(),
            "dpo_trainer": self.dpo_trainer.thong_ke(),
            "reward_model": self.reward_model.thong_ke(),
        }


def _prompts_of(preference_data):
    if not isinstance(preference_data, (list, tuple)):
        raise DataError("'preference_data' phải là list / 'preference_data' must be a list")
    prompts = []
    for r in preference_data:
        p = r.get("prompt") if isinstance(r, dict) else None
        if isinstance(p, str) and p.strip() and p not in prompts:
            prompts.append(p)
    if not prompts:
        raise DataError(
            "chay_day_du cần các cặp có khóa 'prompt' cho bước DPO / chay_day_du needs pairs with a 'prompt' key "
            "for the DPO stage"
        )
    return prompts
