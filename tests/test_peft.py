"""PEFT round trips (peft and transformers are test-only oracles, with torch; skipped where missing).

- an adapter we save (io/peft.py) loads with `peft.PeftModel.from_pretrained(transformers_model, dir)`
  and gives our logits (float64, <= 1e-9 relative), GPT-2 (Conv1D, fan_in_fan_out) and Llama;
- an adapter PEFT saves (random B, rsLoRA on Llama) loads into ours with PEFT's logits;
- our merge saved as a full folder loads in transformers with PEFT's merged logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_hf_roundtrip import IDS, MASK, exact_transformers, hf_logits, hf_model, rel, transformers  # noqa: F401
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.io.hf import from_pretrained, save_pretrained
from vietnamese_ai_ref.io.peft import luu_adapter, tai_adapter
from vietnamese_ai_ref.models.lora import hop_nhat_lora, them_lora

TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
           "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
REAL = MASK.astype(bool)  # padded positions are unspecified


@pytest.fixture
def peft():
    pytest.importorskip("torch")
    return pytest.importorskip("peft")


def _base(T, torch, family, tmp_path):
    """A random float64 transformers model saved as a folder (what both sides start from)."""
    ref = hf_model(T, torch, family)
    ref.save_pretrained(str(tmp_path / "base"), safe_serialization=True)
    return ref


@pytest.mark.torch
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_our_adapter_loads_in_peft(exact_transformers, torch, peft, tmp_path, family):
    T = exact_transformers
    base = _base(T, torch, family, tmp_path)
    with use_backend(dtype="float64"):
        ours = them_lora(from_pretrained(tmp_path / "base"), r=3, lora_alpha=5, target_modules=TARGETS[family],
                         use_rslora=family == "llama", seed=1)
        rng = np.random.default_rng(2)
        for n, p in ours.named_parameters().items():
            if ".lora_B." in n:
                p.data[...] = rng.standard_normal(p.shape) * 0.3
        want = ours(IDS, MASK).numpy()
        luu_adapter(ours, tmp_path / "adapter")
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    assert rel(hf_logits(pm, torch)[REAL], want[REAL]) <= 1e-9
    with pm.disable_adapter():
        assert abs(hf_logits(pm, torch) - want).max() > 1e-3  # the adapters do act
    with use_backend(dtype="float64"):  # our merged model saved as a full folder = PEFT's merge
        save_pretrained(hop_nhat_lora(ours), tmp_path / "merged")
    merged = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert rel(hf_logits(merged, torch)[REAL], hf_logits(pm.merge_and_unload(), torch)[REAL]) <= 1e-9


@pytest.mark.torch
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_peft_adapter_loads_in_ours(exact_transformers, torch, peft, tmp_path, family):
    T = exact_transformers
    base = _base(T, torch, family, tmp_path)
    cfg = peft.LoraConfig(r=2, lora_alpha=7, target_modules=TARGETS[family][:2], fan_in_fan_out=family == "gpt2",
                          use_rslora=family == "llama")
    pm = peft.get_peft_model(base, cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    pm.save_pretrained(str(tmp_path / "adapter"))
    want = hf_logits(pm.eval(), torch)
    with use_backend(dtype="float64"):
        ours = tai_adapter(from_pretrained(tmp_path / "base"), tmp_path / "adapter")
        assert ours.lora_config.r == 2 and ours.lora_config.use_rslora == (family == "llama")
        # two layers; GPT-2's "c_proj" names both attn.c_proj and mlp.c_proj
        assert len(ours._lora) == {"gpt2": 6, "llama": 4}[family]
        got = ours(IDS, MASK).numpy()
    assert rel(got[REAL], want[REAL]) <= 1e-9
