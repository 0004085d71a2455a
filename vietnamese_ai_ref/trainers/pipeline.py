"""RLHFPipeline: SFT → reward model → stage 3 (offline DPO, or GRPO / RLOO / online DPO with the reward
model in the loop), with the reward model's signal measured on the policy.

What it is for: the seeds' pipeline API (`sft`, `train_reward_model`, `rlhf`, `chay_day_du`,
`lay_ket_qua`, `thong_ke`) over the trainers, with config dicts checked for unknown keys before anything
runs. Stage 3 is `phuong_phap`: "dpo" (the default, the seeds' pipeline: DPOTrainer on the preference
pairs) or "grpo" / "rloo" / "online_dpo" (the online trainer of `rl_config` on the distinct prompts of the
preference data, rewarded by the reward model trained in stage 2, optionally with reward functions).
`chay_day_du` scores the policy's own greedy answers to the preference prompts with the trained reward
model before and after stage 3 and reports both and their difference. With `thu_muc_checkpoint` each
stage checkpoints into its own subdirectory (sft/, reward/, and dpo/ or grpo/, rloo/, online_dpo/), and
`chay_day_du(..., tiep_tuc=True)` resumes every stage from there. Everything is checked before the first
stage computes: the method and the stage configs at construction (`SettingError`), every model and every
record of every stage in `chay_day_du` with that stage's own truncation length and tokenizer (and the
reward functions, probed), and the policy's prompts are truncated for its answers by the same rule as in
training (records.generation_prompt_ids).
What it is not: a new trainer; every stage is SFTTrainer, RewardModel, DPOTrainer or an online trainer
as configured.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os

from ..core.errors import SettingError
from ..models.generation import generate
from ..text.records import DataError, generation_prompt_ids, prepare_pairs, prepare_sft
from .dpo import DPOTrainer
from .grpo import GRPOTrainer
from .online import RewardSources, prepare_prompts
from .online_dpo import OnlineDPOTrainer
from .reward import RewardModel
from .rloo import RLOOTrainer
from .settings import check_bool, check_int, check_model, check_path
from .sft import SFTTrainer, effective_max_len

#: stage 3's methods (phuong_phap=): "dpo" is offline DPOTrainer; the others are these online trainers
ONLINE_TRAINERS = {"grpo": GRPOTrainer, "rloo": RLOOTrainer, "online_dpo": OnlineDPOTrainer}
METHODS = ("dpo", *ONLINE_TRAINERS)


def check_method(v):
    """phuong_phap, one of METHODS (SettingError naming it and the options otherwise)."""
    if not isinstance(v, str) or v not in METHODS:
        raise SettingError(f"Tham số 'phuong_phap' không hợp lệ: cần một trong {', '.join(METHODS)}, nhận được "
                           f"{v!r} / invalid 'phuong_phap': expected one of {METHODS}, got {v!r}")
    return v


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

    #: the subdirectory of `thu_muc_checkpoint` each stage checkpoints into (stage 3: the method's name,
    #: "dpo", "grpo", "rloo" or "online_dpo"; this is the default method's)
    thu_muc_giai_doan = {"sft": "sft", "reward": "reward", "rlhf": "dpo"}

    def __init__(self, sft_config=None, dpo_config=None, reward_config=None, *, phuong_phap="dpo", rl_config=None,
                 thu_muc_checkpoint=None, luu_moi=None, giu_lai=2, bo_qua_batch_loi=False):
        self.phuong_phap = check_method(phuong_phap)
        check_path("thu_muc_checkpoint", thu_muc_checkpoint)
        if luu_moi is not None:
            check_int("luu_moi", luu_moi)
            if thu_muc_checkpoint is None:
                raise SettingError("'luu_moi' cần 'thu_muc_checkpoint' / 'luu_moi' needs 'thu_muc_checkpoint'")
        check_int("giu_lai", giu_lai)
        self.thu_muc_checkpoint = thu_muc_checkpoint
        self._ck = {"luu_moi": luu_moi, "giu_lai": giu_lai, "bo_qua_batch_loi": check_bool("bo_qua_batch_loi",
                                                                                            bo_qua_batch_loi)}
        online = ONLINE_TRAINERS.get(self.phuong_phap)
        _unused_config("dpo_config", dpo_config, online is not None, "'dpo'")
        _unused_config("rl_config", rl_config, online is None, "'grpo', 'rloo', 'online_dpo'")
        self.sft_config = _check_config("sft_config", sft_config, SFTTrainer)
        self.dpo_config = _check_config("dpo_config", dpo_config, DPOTrainer)
        self.reward_config = _check_config("reward_config", reward_config, RewardModel, extra=("so_vong",))
        self.rl_config = _check_config("rl_config", rl_config, online) if online is not None else {}
        rc = dict(self.reward_config)
        self._reward_epochs = check_int("so_vong", rc.pop("so_vong", 1))  # reward_config's so_vong
        # the trainers validate their values now, before any compute
        self.sft_trainer = SFTTrainer(**self.sft_config)
        self.dpo_trainer = DPOTrainer(**self.dpo_config)
        self.reward_model = RewardModel(**rc)
        #: stage 3's online trainer (None with phuong_phap="dpo")
        self.rl_trainer = online(**self.rl_config) if online is not None else None
        self.thu_muc_giai_doan = dict(RLHFPipeline.thu_muc_giai_doan, rlhf=self.phuong_phap)
        self._results: dict = {}
        self._done = {"sft": False, "reward": False, "rlhf": False}
        self._reward_net = None

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

    def rlhf(self, model, ref_model, preference_data, *, tiep_tuc_tu=None, reward_model=None, ham_thuong=None,
             trong_so_thuong=None) -> dict:
        """Bước 3: phuong_phap. "dpo": DPOTrainer on the pairs (`ref_model=None`: a frozen copy of `model` as
        it is now — with its LoRA adapters, if it has any: the SFT policy, not the base that DPOTrainer's
        adapters-off reference would be). "grpo" / "rloo" / "online_dpo": the online trainer on the distinct
        prompts of `preference_data` (records with "prompt", or prompt strings), rewarded by `reward_model`
        (default: the model train_reward_model trained) and the reward functions `ham_thuong` weighted by
        `trong_so_thuong` (functions first, then the reward model); `ref_model=None`: a frozen copy of
        `model` as it is now, adapters included (taken only when the method needs a reference)."""
        ck = self._stage_ck("rlhf", tiep_tuc_tu)
        needs_ref = self.rl_trainer is None or self.rl_trainer._needs_ref()
        if ref_model is None and needs_ref and getattr(model, "has_adapters", False):
            ref_model = model.copy()  # the SFT policy; the trainers' adapters-off rule would give the pre-SFT base
        if self.rl_trainer is None:
            _dpo_takes_no_rewards(ham_thuong, trong_so_thuong, reward_model)
            r = self.dpo_trainer.huan_luyen(model, ref_model, preference_data, **ck)
        else:
            rm = reward_model if reward_model is not None else self._reward_net
            r = self.rl_trainer.huan_luyen(model, _prompts_of(preference_data), ham_thuong=ham_thuong,
                                           reward_model=rm, trong_so_thuong=trong_so_thuong, ref_model=ref_model,
                                           **ck)
        self._results["rlhf"] = r
        self._results["phuong_phap"] = self.phuong_phap
        self._done["rlhf"] = True
        return r

    # -- the full run ----------------------------------------------------------------------------
    def chay_day_du(self, model, ref_model, reward_model, sft_data, preference_data, *, tiep_tuc=False,
                    ham_thuong=None, trong_so_thuong=None) -> dict:
        """SFT → reward model → stage 3 (phuong_phap). `ref_model=None` means a frozen copy of the policy
        *after* SFT (the usual choice: the reference is the SFT model). Returns the three stage results,
        phuong_phap, and policy_reward_before / policy_reward_after / policy_reward_delta: the trained reward
        model's mean score of the policy's greedy answers to the preference prompts, before and after
        stage 3. `ham_thuong` / `trong_so_thuong` (online methods only): extra reward functions and the
        weights of every source, the reward model last.

        `tiep_tuc=True` (needs thu_muc_checkpoint): each stage resumes from the newest checkpoint in its
        subdirectory when there is one (a finished stage restores its weights and result without training)."""
        if tiep_tuc and self.thu_muc_checkpoint is None:
            raise SettingError("'tiep_tuc=True' cần 'thu_muc_checkpoint' / 'tiep_tuc=True' needs "
                               "'thu_muc_checkpoint'")
        prompts, stage3_data = self.check_run(model, ref_model, reward_model, sft_data, preference_data,
                                              ham_thuong=ham_thuong, trong_so_thuong=trong_so_thuong)
        self.sft(model, sft_data, tiep_tuc_tu=self._resume_point("sft", tiep_tuc))
        self.train_reward_model(reward_model, preference_data, tiep_tuc_tu=self._resume_point("reward", tiep_tuc))
        before = self._policy_reward(model, reward_model, prompts)
        self.rlhf(model, ref_model, stage3_data, tiep_tuc_tu=self._resume_point("rlhf", tiep_tuc),
                  **({} if self.rl_trainer is None else
                     dict(reward_model=reward_model, ham_thuong=ham_thuong, trong_so_thuong=trong_so_thuong)))
        after = self._policy_reward(model, reward_model, prompts)
        result = {
            "sft": self._results["sft"],
            "reward": self._results["reward"],
            "rlhf": self._results["rlhf"],
            "phuong_phap": self.phuong_phap,
            "policy_reward_before": before,
            "policy_reward_after": after,
            "policy_reward_delta": after - before,
        }
        self._results.update({k: v for k, v in result.items() if k.startswith("policy_")})
        return result

    def check_run(self, model, ref_model, reward_model, sft_data, preference_data, *, ham_thuong=None,
                  trong_so_thuong=None):
        """Everything chay_day_du will need, checked before any compute: the models, and every record of
        every stage with that stage's tokenizer and truncation length (min(max_seq_length, n_positions));
        for an online method also the prompts' room for max_completion_length and the reward functions
        (probed once) and weights. Returns (the distinct prompts, stage 3's data: the DPO pairs, or the
        distinct prompts)."""
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
        if self.rl_trainer is not None:
            self._check_online(model, prompts, ham_thuong, trong_so_thuong)
            return prompts, prompts
        _dpo_takes_no_rewards(ham_thuong, trong_so_thuong)
        dpo_pairs = [{k: v for k, v in r.items() if k != "margin"} for r in preference_data if "prompt" in r]
        prepare_pairs(dpo_pairs, model.tokenizer, self._stage3_max_len(model, ref_model), require_prompt=True,
                      allow_margin=False)
        return prompts, dpo_pairs

    def _check_online(self, model, prompts, ham_thuong, trong_so_thuong):
        """Stage 3's online checks: prompt room (as the trainer's huan_luyen), the functions, the weights."""
        tr = self.rl_trainer
        room = effective_max_len(tr.max_seq_length, model) - tr.max_completion_length
        if room < 2:
            raise SettingError(f"rl_config: 'max_completion_length' ({tr.max_completion_length}) phải nhỏ hơn "
                               f"min(max_seq_length, n_positions) = {room + tr.max_completion_length} ít nhất 2 "
                               f"/ 'max_completion_length' must leave at least 2 prompt tokens within "
                               f"min(max_seq_length, n_positions) = {room + tr.max_completion_length}")
        prepare_prompts(prompts, model.tokenizer, room, name="preference_data (prompt)")
        n = 1
        if ham_thuong is not None:
            sources = RewardSources(ham_thuong, None, None, max_seq_length=tr.max_seq_length, batch_size=1)
            sources.probe(prompts, [{} for _ in prompts])
            n += len(sources.funcs)
        if trong_so_thuong is not None:
            ok = isinstance(trong_so_thuong, (list, tuple)) and len(trong_so_thuong) == n and all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in trong_so_thuong)
            if not ok:
                raise SettingError(f"'trong_so_thuong' phải là list {n} số hữu hạn (các hàm thưởng, rồi reward model), "
                                   f"nhận được {trong_so_thuong!r} / 'trong_so_thuong' must be a list of {n} finite "
                                   f"numbers (the reward functions, then the reward model), got {trong_so_thuong!r}")

    def _stage3_max_len(self, model, ref_model=None):
        tr = self.rl_trainer or self.dpo_trainer
        n = effective_max_len(tr.max_seq_length, model)
        return n if ref_model is None else min(n, ref_model.config.n_positions)

    def _resume_point(self, stage, tiep_tuc):
        if not tiep_tuc:
            return None
        from ..io.checkpoints import tim_checkpoint

        return tim_checkpoint(self._stage_ck(stage, None)["thu_muc_checkpoint"])

    def _policy_reward(self, model, reward_model, prompts) -> float:
        """The reward model's mean score of the policy's greedy answers; each prompt is templated and
        truncated as in stage 3's training data (a prompt longer than the model never reaches generation)."""
        tok = model.tokenizer
        max_len = self._stage3_max_len(model)
        ids = [generation_prompt_ids(p, tok, max_len, self.so_token_sinh) for p in prompts]
        answers = []
        for row in generate(model, ids, max_new_tokens=self.so_token_sinh):
            if row and row[-1] == tok.eos_token_id:
                row = row[:-1]
            answers.append(tok.decode(row, skip_special_tokens=True))
        scores = self.reward_model.cham_diem_cap(reward_model, prompts, answers)
        return sum(scores) / len(scores)

    def lay_ket_qua(self) -> dict:
        """Kết quả từng bước / the result dict of each stage run so far (keys sft, reward, rlhf, …; phuong_phap
        once stage 3 ran)."""
        return dict(self._results)

    def thong_ke(self) -> dict:
        return {
            "phuong_phap": self.phuong_phap,
            "sft_done": self._done["sft"],
            "reward_done": self._done["reward"],
            "rlhf_done": self._done["rlhf"],
            "sft_trainer": self.sft_trainer.thong_ke(),
            "dpo_trainer": self.dpo_trainer.thong_ke(),
            "reward_model": self.reward_model.thong_ke(),
            "rl_trainer": None if self.rl_trainer is None else self.rl_trainer.thong_ke(),
        }


def _unused_config(name, cfg, unused, methods):
    """A stage config the chosen method would ignore is an error, not silence."""
    if unused and cfg:
        raise SettingError(f"'{name}' chỉ dùng với phuong_phap {methods}; bỏ nó hoặc đổi 'phuong_phap' "
                           f"/ '{name}' is only for phuong_phap {methods}: drop it or change 'phuong_phap'")


def _dpo_takes_no_rewards(ham_thuong, trong_so_thuong, reward_model=None):
    given = [k for k, v in (("ham_thuong", ham_thuong), ("trong_so_thuong", trong_so_thuong),
                            ("reward_model", reward_model)) if v is not None]
    if given:
        raise SettingError(f"{given} chỉ dùng với phuong_phap 'grpo', 'rloo', 'online_dpo' (DPO học từ các cặp) "
                           f"/ {given} only apply to phuong_phap 'grpo', 'rloo', 'online_dpo' (DPO learns from pairs)")


def _prompts_of(preference_data):
    """The distinct prompts, in order, of preference records (or of prompt strings)."""
    if not isinstance(preference_data, (list, tuple)):
        raise DataError("'preference_data' phải là list / 'preference_data' must be a list")
    prompts = []
    for r in preference_data:
        p = r.get("prompt") if isinstance(r, dict) else r
        if isinstance(p, str) and p.strip() and p not in prompts:
            prompts.append(p)
    if not prompts:
        raise DataError(
            "chay_day_du cần các cặp có khóa 'prompt' cho bước 3 / chay_day_du needs pairs with a 'prompt' key "
            "for stage 3"
        )
    return prompts
