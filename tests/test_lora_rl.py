"""The online-RL trainers (GRPO, RLOO, online DPO) on a LoRA model, with ref_model=None.

The reference is then the policy itself with its adapters switched off (no second copy of the model,
as TRL does with PEFT): the run is bit-identical (history and every weight, float64) to the same run
given an explicit frozen copy of the base as ref_model; rollouts are sampled with the adapters on and
the reference log-probs computed with them off; only the adapters train; a checkpointed LoRA GRPO run
resumes bit-identically, and the checkpoint's reference fingerprint is the frozen base's.
"""

from __future__ import annotations

import numpy as np
import pytest

import vietnamese_ai_ref.trainers.grpo as grpo_mod
import vietnamese_ai_ref.trainers.online as online_mod
from vietnamese_ai_ref import GRPOTrainer, OnlineDPOTrainer, RLOOTrainer
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.errors import CheckpointError
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.models.llama import LlamaConfig, LlamaLM
from vietnamese_ai_ref.models.lora import them_lora

ALL = {"gpt2": ["c_attn", "c_proj", "c_fc"],
       "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
PROMPTS = [f"Viết {i}" for i in range(4)]


def make(family, seed=3):
    if family == "gpt2":
        return TransformerLM(GPTConfig(n_layer=2, n_embd=16, n_head=2, n_positions=64, seed=seed))
    return LlamaLM(LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64, attention_bias=True, seed=seed))


def lora(base, dropout=0.1):
    return them_lora(base.copy(), r=2, lora_alpha=8, target_modules=ALL["gpt2" if isinstance(base, TransformerLM)
                                                                          else "llama"], lora_dropout=dropout)


def letters(prompts, completions, **kw):
    """Share of lower-case ASCII letters in the completion (random init: ~10 %)."""
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


def trainer(cls, **kw):
    common = dict(so_vong=3, toc_do_hoc=3e-2, warmup_ratio=0.0, max_completion_length=6, logging_steps=1, seed=7)
    if cls is OnlineDPOTrainer:
        return cls(**{**common, "kich_thuoc_batch": 2, "beta": 0.2, **kw})
    return cls(**{**common, "kich_thuoc_batch": 4, "num_generations": 2, "beta": 0.2, **kw})


def frozen(model):
    return {n: p.numpy().copy() for n, p in model.base_parameters().items()}


def assert_same_weights(a, b):
    pa, pb = a.named_parameters(), b.named_parameters()
    assert pa.keys() == pb.keys()
    for n, p in pa.items():
        np.testing.assert_array_equal(p.numpy(), pb[n].numpy(), err_msg=n)


def no_copy(monkeypatch, model):
    def refuse(self):
        raise AssertionError("the LoRA reference must not copy the model")
    monkeypatch.setattr(type(model), "copy", refuse)


def randomise_adapters(model, seed=1, scale=0.3):
    """Give every B (zero after init) random values, as a LoRA SFT stage would."""
    rng = np.random.default_rng(seed)
    for n, p in model.named_parameters().items():
        if ".lora_B." in n:
            p.data[...] = rng.standard_normal(p.shape) * scale
    return model


@pytest.mark.parametrize("family, trained", [("gpt2", False), ("llama", False), ("gpt2", True), ("llama", True)])
def test_lora_grpo_adapters_off_reference_equals_a_frozen_base_copy(family, trained, monkeypatch):
    """`trained`: the adapters start non-zero, so the reference (the base alone) is not the policy as
    given — a copy of the LoRA model would be the wrong reference."""
    with use_backend(dtype="float64"):
        base = make(family)
        a, b, ref = lora(base), lora(base), base.copy()
        if trained:
            randomise_adapters(a), randomise_adapters(b)
        before, adapters = frozen(a), {n: p.numpy().copy() for n, p in a.named_parameters().items() if ".lora_" in n}
        seen = []  # (what ran, adapters on?) for the sampler and the reference log-probs
        real_sample, real_logps = online_mod.sample_rollouts, grpo_mod.completion_logps
        monkeypatch.setattr(online_mod, "sample_rollouts",
                            lambda m, *x, **k: seen.append(("sample", m is a, m._adapters_on)) or real_sample(m, *x, **k))
        monkeypatch.setattr(grpo_mod, "completion_logps",
                            lambda m, *x: seen.append(("ref", m is a, m._adapters_on)) or real_logps(m, *x))
        with monkeypatch.context() as mp:
            no_copy(mp, a)
            ra = trainer(GRPOTrainer).huan_luyen(a, PROMPTS, ham_thuong=letters)
        steps = ra["global_step"]
        assert steps == 6 and seen == [("sample", True, True), ("ref", True, False)] * steps
        assert a._adapters_on  # switched back on after every reference block
        rb = trainer(GRPOTrainer).huan_luyen(b, PROMPTS, ham_thuong=letters, ref_model=ref)
        assert ra["history"] == rb["history"]
        assert_same_weights(a, b)
        h = ra["history"]
        if trained:
            assert all(k > 1e-4 for k in h["kl"]), h["kl"]  # the policy as given is not the reference
        else:
            assert h["kl"][0] == 0.0  # step 1: B = 0, the policy is the base
            # a step moves the adapters exactly when its gradient is non-zero; from then on the policy differs
            moved_at = next(i for i, g in enumerate(h["grad_norm"]) if g > 0.0)
            assert moved_at < 3 and all(k > 1e-6 for k in h["kl"][moved_at + 1:]), h["kl"]
        for n, arr in frozen(a).items():  # only the adapters train
            np.testing.assert_array_equal(arr, before[n], err_msg=n)
        moved = [n for n, p in a.named_parameters().items() if ".lora_B." in n and not np.array_equal(p.numpy(),
                                                                                                     adapters[n])]
        assert len(moved) == len(a._lora)
        assert_same_weights(ref, base)  # the explicit reference stayed frozen too


@pytest.mark.parametrize("cls", [RLOOTrainer, OnlineDPOTrainer])
def test_lora_rloo_and_online_dpo_adapters_off_reference_equals_a_frozen_base_copy(cls, monkeypatch):
    with use_backend(dtype="float64"):
        base = make("llama", seed=5)
        a, b = lora(base), lora(base)
        before = frozen(a)
        with monkeypatch.context() as mp:
            no_copy(mp, a)
            ra = trainer(cls).huan_luyen(a, PROMPTS, ham_thuong=letters)
        rb = trainer(cls).huan_luyen(b, PROMPTS, ham_thuong=letters, ref_model=base.copy())
        assert ra["global_step"] == 6
        assert ra["history"] == rb["history"]
        assert_same_weights(a, b)
        for n, arr in frozen(a).items():
            np.testing.assert_array_equal(arr, before[n], err_msg=n)
        if cls is OnlineDPOTrainer:
            h = ra["history"]
            assert h["train_loss"][0] == pytest.approx(np.log(2.0), abs=1e-12)  # policy = reference at step 1
            assert h["train_loss"][-1] != h["train_loss"][0]
            assert h["reward_margin"][0] == 0.0 and h["reward_margin"][-1] != 0.0
        else:
            assert ra["history"]["kl"][0] == 0.0 and abs(ra["history"]["kl"][-1]) > 1e-6  # k1: either sign


def test_non_lora_reference_is_still_a_copy(monkeypatch):
    """Without adapters, ref_model=None still means a frozen copy of the model as given (the base
    cannot be switched off): the copy is taken once, before training."""
    with use_backend(dtype="float64"):
        model = make("gpt2")
        calls = []
        real = TransformerLM.copy
        monkeypatch.setattr(TransformerLM, "copy", lambda self: calls.append(1) or real(self))
        trainer(GRPOTrainer, so_vong=1).huan_luyen(model, PROMPTS, ham_thuong=letters)
        assert len(calls) == 1


def test_lora_grpo_checkpoint_resume_is_bit_identical(tmp_path):
    with use_backend(dtype="float64"):
        base = make("gpt2", seed=8)

        def run(resume=None, ref_model=None, ckpt="ck"):
            model = lora(base)
            r = trainer(GRPOTrainer).huan_luyen(model, PROMPTS, ham_thuong=letters, ref_model=ref_model,
                                                thu_muc_checkpoint=tmp_path / ckpt, luu_moi=1, giu_lai=10,
                                                tiep_tuc_tu=resume)
            return model, r

        full, rf = run()
        first = tmp_path / "ck" / "checkpoint-00000001"
        assert (first / "adapter" / "adapter_config.json").is_file()
        resumed, rr = run(resume=first, ckpt="ck2")
        assert_same_weights(full, resumed)
        assert rr["global_step"] == rf["global_step"] == 6
        assert rr["history"] == rf["history"]
        # the fingerprint is the frozen base's: an explicit copy of the base is the same reference ...
        again, _ = run(resume=first, ref_model=base.copy(), ckpt="ck3")
        assert_same_weights(full, again)
        # ... another model is refused before any compute
        other = make("gpt2", seed=9)
        with pytest.raises(CheckpointError, match="tham chiếu|reference"):
            run(resume=first, ref_model=other, ckpt="ck4")
