"""LoRA adapters (models/lora.py, io/peft.py) and activation recompute (core/recompute.py), without torch.

- a fresh adapter (B = 0) leaves the logits bit-identical; an adapter equals its merge into the base
  (float64, both families); the adapters' gradients pass finite differences with a random upstream grad;
- training with adapters changes only the adapters (and a reward model's score head); AdamW holds no
  state for frozen parameters; LoRA DPO with the disabled-adapter reference is bit-identical to DPO with
  an explicit frozen copy; a LoRA run resumed from a checkpoint ends bit-identical;
- adapters saved and loaded back give the same logits; saving a model with adapters as a full model is
  refused; bad configs are refused before anything changes;
- recompute gives bit-identical gradients (float64, dropout on), both families, with and without LoRA.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vietnamese_ai_ref import DPOTrainer, RewardModel, SFTTrainer
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.autograd import Tensor
from vietnamese_ai_ref.core.errors import CheckpointError
from vietnamese_ai_ref.core.gradcheck import gradcheck
from vietnamese_ai_ref.core.optim import AdamW
from vietnamese_ai_ref.io.hf import save_pretrained
from vietnamese_ai_ref.io.peft import luu_adapter, tai_adapter
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.models.llama import LlamaConfig, LlamaLM
from vietnamese_ai_ref.core.fused import linear, linear_in_out, lora_linear
from vietnamese_ai_ref.models.lora import hop_nhat_lora, them_lora

IDS = np.array([[5, 17, 200, 33, 9, 100], [7, 8, 9, 61, 0, 0]])
MASK = (np.arange(6)[None, :] < np.array([[6], [4]])).astype(np.int64)
ALL = {"gpt2": ["c_attn", "c_proj", "c_fc"],
       "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
SFT_DATA = [{"instruction": f"Tính {i} + 1", "output": f"Bằng {i + 1}."} for i in range(6)]
PAIRS = [{"prompt": f"Tính {i} + 2", "chosen": f"Dạ, bằng {i + 2} ạ.", "rejected": "Không biết."} for i in range(6)]


def make(family, seed=0, **extra):
    if family == "gpt2":
        return TransformerLM(GPTConfig(**{**dict(n_layer=2, n_embd=16, n_head=2, n_positions=64, seed=seed), **extra}))
    return LlamaLM(LlamaConfig(**{**dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         attention_bias=True, seed=seed), **extra}))


def randomise_adapters(model, seed=1, scale=0.3):
    """Give every B (zero after init) random values, so that the adapters do something."""
    rng = np.random.default_rng(seed)
    for n, p in model.named_parameters().items():
        if ".lora_B." in n:
            p.data[...] = rng.standard_normal(p.shape) * scale


def frozen_snapshot(model):
    return {n: p.numpy().copy() for n, p in model.base_parameters().items() if n != "score.weight"}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fresh_adapter_changes_nothing_and_merge_equals_adapter(family):
    with use_backend(dtype="float64"):
        model = make(family)
        base = model(IDS, MASK).numpy()
        them_lora(model, r=4, lora_alpha=8, target_modules=ALL[family], seed=3)
        np.testing.assert_array_equal(model(IDS, MASK).numpy(), base)  # B = 0: bit-identical
        randomise_adapters(model)
        adapted = model(IDS, MASK).numpy()
        assert np.abs(adapted - base).max() > 1e-3
        with model.disable_adapters():
            np.testing.assert_array_equal(model(IDS, MASK).numpy(), base)
        np.testing.assert_array_equal(model(IDS, MASK).numpy(), adapted)
        assert model.num_trainable_parameters() == sum(
            p.size for n, p in model.named_parameters().items() if ".lora_" in n)
        merged = hop_nhat_lora(model.copy())
        assert not merged.has_adapters and all(p.requires_grad for p in merged.parameters())
        np.testing.assert_allclose(merged(IDS, MASK).numpy(), adapted, rtol=1e-12, atol=1e-12)


def test_scale_init_and_rslora():
    with use_backend(dtype="float64"):
        model = them_lora(make("llama"), r=4, lora_alpha=8, target_modules=["q_proj"])
        assert model.lora_config.scale == 2.0
        assert them_lora(make("llama"), r=4, lora_alpha=8, use_rslora=True).lora_config.scale == 4.0
        A = model.named_parameters()["model.layers.0.self_attn.q_proj.lora_A.weight"].numpy()
        assert A.shape == (4, 16) and np.abs(A).max() <= 1 / 4 and np.abs(A).max() > 0.2  # U(±1/sqrt(in))
        assert sorted(model._lora) == [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
        g = them_lora(make("gpt2"), r=2)  # PEFT's default target for gpt2: c_attn
        shapes = {n: p.shape for n, p in g.named_parameters().items() if ".lora_" in n}
        assert shapes == {"h.0.attn.c_attn.lora_A.weight": (2, 16), "h.0.attn.c_attn.lora_B.weight": (48, 2),
                          "h.1.attn.c_attn.lora_A.weight": (2, 16), "h.1.attn.c_attn.lora_B.weight": (48, 2)}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapter_gradients_by_finite_differences(family):
    with use_backend(dtype="float64"):
        model = them_lora(make(family), r=2, lora_alpha=4, target_modules=ALL[family][:2])
        randomise_adapters(model)
        slots = [(pair, side) for pair in list(model._lora.values())[:2] for side in ("A", "B")]
        upstream = Tensor(np.random.default_rng(7).standard_normal((2, 6, model.config.vocab_size)))

        def logits_times_upstream(*tensors):  # the checked tensors stand in for the adapters' A and B
            saved = [getattr(pair, side) for pair, side in slots]
            for (pair, side), t in zip(slots, tensors):
                setattr(pair, side, t)
            try:
                return model(IDS, MASK) * upstream
            finally:
                for (pair, side), p in zip(slots, saved):
                    setattr(pair, side, p)

        inputs = [Tensor(getattr(pair, side).data.copy(), requires_grad=True) for pair, side in slots]
        assert gradcheck(logits_times_upstream, inputs)["checked"] > 0


@pytest.mark.parametrize("in_out", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("separate", [False, True])
def test_fused_lora_linear_equals_the_composition_and_gradchecks(in_out, bias, separate):
    with use_backend(dtype="float64"):
        rng = np.random.default_rng(11)
        t = lambda *shape: Tensor(rng.standard_normal(shape), requires_grad=True)  # noqa: E731
        x, A, B = t(2, 3, 5), t(2, 5), t(4, 2)
        w = t(5, 4) if in_out else t(4, 5)
        b = t(4) if bias else None
        xd = t(2, 3, 5) if separate else None
        up = Tensor(rng.standard_normal((2, 3, 4)))
        base = (linear_in_out if in_out else linear)(x, w, b)
        composed = base + linear(linear(xd if separate else x, A) * 0.7, B)
        fused = lora_linear(x, w, b, A, B, 0.7, dropped=xd, in_out=in_out)
        np.testing.assert_allclose(fused.numpy(), composed.numpy(), rtol=1e-13, atol=1e-13)
        inputs = [x, w, A, B] + ([b] if bias else []) + ([xd] if separate else [])

        def fn(x, w, A, B, *rest):
            rest = list(rest)
            bb = rest.pop(0) if bias else None
            return lora_linear(x, w, bb, A, B, 0.7, dropped=rest.pop(0) if separate else None, in_out=in_out) * up

        assert gradcheck(fn, inputs)["checked"] > 0


def _trained(model, kind):
    if kind == "sft":
        SFTTrainer(so_vong=1, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=1,
                   warmup_ratio=0.0).huan_luyen(model, SFT_DATA)
    elif kind == "reward":
        RewardModel(toc_do_hoc=1e-2, kich_thuoc_batch=2).huan_luyen(model, PAIRS)
    else:
        DPOTrainer(so_vong=1, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=1).huan_luyen(
            model, None, PAIRS)
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["sft", "reward", "dpo"])
def test_training_changes_only_the_adapters(family, kind):
    with use_backend(dtype="float64"):
        model = them_lora(make(family), r=2, lora_alpha=4, target_modules=ALL[family])
        before = frozen_snapshot(model)
        adapters = {n: p.numpy().copy() for n, p in model.named_parameters().items() if ".lora_" in n}
        _trained(model, kind)
        for n, a in frozen_snapshot(model).items():
            np.testing.assert_array_equal(a, before[n], err_msg=n)
            assert model.named_parameters()[n].grad is None
        changed = [n for n, p in model.named_parameters().items() if ".lora_B." in n
                   and not np.array_equal(p.numpy(), adapters[n])]
        assert len(changed) == len(model._lora)  # every B moved off zero
        if kind == "reward":
            assert model.has_score_head and model.named_parameters()["score.weight"].requires_grad
        opt = AdamW(model.named_parameters(), lr=1e-3)
        names = {n for g in opt.groups for n in g.names}
        assert names == {n for n, p in model.named_parameters().items() if p.requires_grad}
        assert sum(g.m.size for g in opt.groups) == model.num_trainable_parameters()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_dpo_disabled_adapter_reference_equals_a_frozen_copy(family):
    with use_backend(dtype="float64"):
        start = make(family, seed=4)
        _trained(start, "sft")  # the reference is not the random init
        a = them_lora(start.copy(), r=2, lora_alpha=4, target_modules=ALL[family], lora_dropout=0.1)
        b = them_lora(start.copy(), r=2, lora_alpha=4, target_modules=ALL[family], lora_dropout=0.1)
        ref = start.copy()
        trainer = dict(so_vong=2, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=2)
        ra = DPOTrainer(**trainer).huan_luyen(a, None, PAIRS)
        rb = DPOTrainer(**trainer).huan_luyen(b, ref, PAIRS)
        assert ra["history"] == rb["history"]
        assert ra["history"]["reward_margin"][-1] != 0.0
        for n, p in a.named_parameters().items():
            np.testing.assert_array_equal(p.numpy(), b.named_parameters()[n].numpy(), err_msg=n)


def test_pipeline_with_lora_uses_the_sft_policy_as_reference():
    from vietnamese_ai_ref import RLHFPipeline

    with use_backend(dtype="float64"):
        cfg = dict(sft_config=dict(so_vong=1, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=1),
                   dpo_config=dict(so_vong=1, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=1),
                   reward_config=dict(toc_do_hoc=1e-2, kich_thuoc_batch=2))
        a = them_lora(make("llama", seed=5), r=2, lora_alpha=4, target_modules=ALL["llama"])
        b = a.copy()
        RLHFPipeline(**cfg).chay_day_du(a, None, make("llama", seed=6), SFT_DATA, PAIRS)
        pipe = RLHFPipeline(**cfg)  # the same stages by hand, the reference an explicit copy after SFT
        pipe.sft(b, SFT_DATA)
        pipe.train_reward_model(make("llama", seed=6), PAIRS)
        pipe.rlhf(b, b.copy(), PAIRS)
        for n, p in a.named_parameters().items():
            np.testing.assert_array_equal(p.numpy(), b.named_parameters()[n].numpy(), err_msg=n)


def test_lora_checkpoint_resume_is_bit_identical(tmp_path):
    with use_backend(dtype="float64"):
        def run(resume=None, r=2):
            model = them_lora(make("llama", seed=2), r=r, lora_alpha=4, target_modules=["q_proj", "down_proj"])
            SFTTrainer(so_vong=2, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=1, logging_steps=1,
                       warmup_ratio=0.0).huan_luyen(model, SFT_DATA, thu_muc_checkpoint=tmp_path / "ck", luu_moi=2,
                                                    giu_lai=10, tiep_tuc_tu=resume)
            return model

        full = run()
        ckpt = tmp_path / "ck" / "checkpoint-00000002"
        assert (ckpt / "adapter" / "adapter_config.json").is_file()
        assert not (ckpt / "model" / "adapter_config.json").exists()
        resumed = run(resume=ckpt)
        for n, p in full.named_parameters().items():
            np.testing.assert_array_equal(p.numpy(), resumed.named_parameters()[n].numpy(), err_msg=n)
        with pytest.raises(Exception, match="LoRA"):
            run(resume=ckpt, r=4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapters_save_and_load_back(family, tmp_path):
    with use_backend(dtype="float64"):
        model = them_lora(make(family), r=3, lora_alpha=6, target_modules=ALL[family][1:])
        randomise_adapters(model)
        want = model(IDS, MASK).numpy()
        luu_adapter(model, tmp_path / "ad")
        cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
        assert cfg["r"] == 3 and cfg["lora_alpha"] == 6 and cfg["fan_in_fan_out"] == (family == "gpt2")
        assert cfg["target_modules"] == sorted(ALL[family][1:]) and cfg["task_type"] == "CAUSAL_LM"
        back = tai_adapter(make(family), tmp_path / "ad")
        np.testing.assert_array_equal(back(IDS, MASK).numpy(), want)
        assert not any(p.requires_grad for p in back.base_parameters().values())
        with pytest.raises(ValueError, match="luu_adapter"):
            save_pretrained(model, tmp_path / "full")
        save_pretrained(model.base_model(), tmp_path / "base")  # the base alone is fine
        wider = make(family, n_embd=32) if family == "gpt2" else make(family, hidden_size=32)
        with pytest.raises(CheckpointError, match="wrong shape"):
            tai_adapter(wider, tmp_path / "ad")
        assert not wider.has_adapters and all(p.requires_grad for p in wider.parameters())


def test_bad_configs_are_refused_before_anything_changes(tmp_path):
    with use_backend(dtype="float64"):
        model = make("llama")
        for bad, match in ((dict(r=0), "r must"), (dict(lora_alpha=-1), "lora_alpha"),
                           (dict(lora_dropout=1.0), "lora_dropout"), (dict(target_modules=["c_attn"]), "c_attn"),
                           (dict(target_modules=[]), "target_modules")):
            with pytest.raises(ValueError, match=match):
                them_lora(model, **bad)
        assert not model.has_adapters and all(p.requires_grad for p in model.parameters())
        them_lora(model, r=2)
        with pytest.raises(ValueError, match="already|đã có"):
            them_lora(model, r=2)
        luu_adapter(model, tmp_path / "ad")
        raw = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
        (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({**raw, "use_dora": True}))
        fresh = make("llama")
        with pytest.raises(Exception, match="use_dora"):
            tai_adapter(fresh, tmp_path / "ad")
        assert not fresh.has_adapters and all(p.requires_grad for p in fresh.parameters())


def _grads(model, upstream):
    model.zero_grad()
    (model(IDS, MASK) * Tensor(upstream)).sum().backward()
    return {n: (None if p.grad is None else np.array(p.grad)) for n, p in model.named_parameters().items()}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_recompute_gives_identical_gradients(family, lora, dtype):
    drop = dict(resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1) if family == "gpt2" else dict(attention_dropout=0.1)
    with use_backend(dtype=dtype):
        model = make(family, **drop).train()
        if lora:
            them_lora(model, r=2, lora_alpha=4, target_modules=ALL[family], lora_dropout=0.2)
            randomise_adapters(model)
        upstream = np.random.default_rng(5).standard_normal((2, 6, model.config.vocab_size))
        other = model.copy()
        plain = _grads(model, upstream)
        other.gradient_checkpointing_enable()
        assert other.is_gradient_checkpointing
        again = _grads(other, upstream)
        for n, g in plain.items():
            if g is None:
                assert again[n] is None, n
            else:
                np.testing.assert_array_equal(again[n], g, err_msg=n)
        assert sum(g is not None for g in plain.values()) > 0
        other.eval()  # eval mode: recompute is off, and the dropout streams stayed in step
        np.testing.assert_array_equal(other(IDS, MASK).numpy(), model.eval()(IDS, MASK).numpy())
