"""Llama 3 rotary scaling (`models/rope.rope_inv_freq`, used by `llama.rope_cos_sin`).

The inverse frequencies are checked by hand on a case that puts frequencies in each of the three
bands (kept, divided by the factor, interpolated), then against transformers' own
`ROPE_INIT_FUNCTIONS["llama3"]` / ["linear"] evaluated in float64 (transformers hard-codes
`dtype=torch.float`, i.e. float32, in those functions; the test hands them a `torch` whose `float` is
float64, so it is transformers' formula in float64, not ours). Finally a tiny random Llama with llama3
rope_scaling built and saved by transformers loads with `tai_mo_hinh` and gives transformers' logits
to <= 1e-9 (float64, RMSNorm and rotary tables patched to float64 as in test_hf_roundtrip.py), and
ours saved back loads in transformers with the same rope type and logits.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref import tai_mo_hinh
from vietnamese_ai_ref.io.hf import save_pretrained
from vietnamese_ai_ref.models.llama import LlamaConfig, normalize_rope_scaling, rope_cos_sin
from vietnamese_ai_ref.models.rope import rope_inv_freq

L3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}
LLAMA_3_2 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}


def test_llama3_bands_by_hand():
    # head_dim 16, theta 1e4: wavelengths 2π·10^(i/2) = 6.3, 19.9, 62.8, 199, ...; bands at 64/4=16 and 64/1=64
    base = 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)
    got = rope_inv_freq(16, 10000.0, L3)
    assert got.dtype == np.float64 and got.shape == (8,)
    assert got[0] == base[0]  # wavelength 6.3 < 16: kept
    np.testing.assert_array_equal(got[3:], base[3:] / 8.0)  # wavelength > 64: divided by the factor
    for i in (1, 2):  # 16 <= wavelength <= 64: interpolated
        s = (64 / (2 * math.pi / base[i]) - 1.0) / (4.0 - 1.0)
        assert 0 < s < 1
        assert abs(got[i] - ((1 - s) * base[i] / 8 + s * base[i])) <= 1e-18
        assert base[i] / 8 < got[i] < base[i]


def test_default_and_linear_are_unchanged():
    base = 1.0 / 500.0 ** (np.arange(0, 8, 2) / 8)
    np.testing.assert_array_equal(rope_inv_freq(8, 500.0, None), base)
    np.testing.assert_array_equal(rope_inv_freq(8, 500.0, {"type": "default"}), base)
    np.testing.assert_array_equal(rope_inv_freq(8, 500.0, {"rope_type": "linear", "factor": 4.0}), base / 4)
    with pytest.raises(ValueError, match="'yarn'"):
        rope_inv_freq(8, 500.0, {"rope_type": "yarn", "factor": 4.0})


def test_normalize_rope_scaling_llama3():
    assert normalize_rope_scaling(dict(LLAMA_3_2, rope_theta=5e5)) == LLAMA_3_2
    assert normalize_rope_scaling({"type": "llama3", **{k: v for k, v in L3.items() if k != "rope_type"}}) == L3
    for change, match in [({"low_freq_factor": None}, "low_freq_factor"), ({"high_freq_factor": 1.0}, "must exceed"),
                          ({"factor": -2.0}, "factor"), ({"mscale": 1.0}, "mscale"),
                          ({"original_max_position_embeddings": True}, "original_max_position_embeddings")]:
        with pytest.raises(ValueError, match=match):
            normalize_rope_scaling({**L3, **change})
    del_omp = {k: v for k, v in L3.items() if k != "original_max_position_embeddings"}
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        normalize_rope_scaling(del_omp)


def test_rope_cos_sin_uses_the_llama3_frequencies(backend):
    cfg = LlamaConfig(hidden_size=32, num_attention_heads=2, rope_theta=10000.0, rope_scaling=L3)
    cos, sin = (backend.to_numpy(t) for t in rope_cos_sin(cfg, backend.xp.arange(5)))
    ang = np.arange(5)[:, None] * rope_inv_freq(16, 10000.0, L3)
    np.testing.assert_allclose(cos, np.cos(np.concatenate([ang, ang], -1)), rtol=1e-14)
    np.testing.assert_allclose(sin, np.sin(np.concatenate([ang, ang], -1)), rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# transformers as the oracle
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def rope_utils(torch, monkeypatch):
    """transformers.modeling_rope_utils with its `torch.float` meaning float64."""
    mru = pytest.importorskip("transformers.modeling_rope_utils")
    proxy = types.ModuleType("torch_float64")
    proxy.__getattr__ = lambda name: getattr(torch, name)  # module-level __getattr__ (PEP 562)
    proxy.float = torch.float64
    monkeypatch.setattr(mru, "torch", proxy)
    return mru


@pytest.mark.torch
@pytest.mark.parametrize("head_dim,theta,rs", [(16, 10000.0, L3), (64, 500000.0, LLAMA_3_2), (128, 500000.0, {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}), (8, 500.0, {"rope_type": "linear", "factor": 2.5})],
    ids=["bands", "llama-3.2", "llama-3.1", "linear"])
def test_inv_freq_matches_transformers_in_float64(rope_utils, head_dim, theta, rs):
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                   max_position_embeddings=2 * rs.get("original_max_position_embeddings", 64),
                                   rope_parameters={**rs, "rope_theta": theta})
    want, scale = rope_utils.ROPE_INIT_FUNCTIONS[rs["rope_type"]](cfg, "cpu")
    assert str(want.dtype) == "torch.float64" and scale == 1.0
    got = rope_inv_freq(head_dim, theta, normalize_rope_scaling(rs))
    want = want.numpy()
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-9
    assert np.abs(got - want).max() <= 1e-15


def _tiny_llama3(transformers, torch):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, rope_parameters={**L3, "rope_theta": 10000.0})
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture
def exact_llama(rope_utils, torch, monkeypatch):
    """transformers' Llama with RMSNorm and the rotary tables in float64 (inv_freq from its own llama3 rule)."""
    import transformers
    from transformers.models.llama import modeling_llama as ml

    def norm_forward(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary_forward(self, x, position_ids):
        inv, scale = rope_utils.ROPE_INIT_FUNCTIONS[self.rope_type](self.config, "cpu")
        f = position_ids[..., None].double() * inv
        emb = torch.cat((f, f), dim=-1)
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

    monkeypatch.setattr(ml.LlamaRMSNorm, "forward", norm_forward)
    monkeypatch.setattr(ml.LlamaRotaryEmbedding, "forward", rotary_forward)
    return transformers


IDS = np.array([[5, 17, 200, 33, 9, 100, 42, 7, 250, 3, 60, 61], [7, 8, 9, 61, 0, 11, 12, 13, 14, 0, 0, 0]])
MASK = (np.arange(12)[None, :] < np.array([[12], [9]])).astype(np.int64)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.torch
def test_transformers_llama3_model_loads_with_the_same_logits(exact_llama, torch, tmp_path):
    T = exact_llama
    ref = _tiny_llama3(T, torch)
    assert ref.model.rotary_emb.rope_type == "llama3"
    ref.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    with torch.no_grad():
        want = ref(torch.as_tensor(IDS), attention_mask=torch.as_tensor(MASK)).logits.numpy()
    real = MASK.astype(bool)
    with use_backend(dtype="float64"):
        ours = tai_mo_hinh(tmp_path / "hf")
        assert ours.config.rope_scaling == {**L3, "original_max_position_embeddings": 64}
        got = ours(IDS, MASK).numpy()
        assert _rel(got[real], want[real]) <= 1e-9
        plain = LlamaConfig(**{**ours.config.to_dict(), "rope_scaling": None})
        ours.config = plain  # the same weights without the scaling: the test can tell them apart
        assert _rel(ours(IDS, MASK).numpy()[real], want[real]) > 1e-4
        ours = tai_mo_hinh(tmp_path / "hf")
        save_pretrained(ours, tmp_path / "ours")
    back = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours"))
    assert back.config.rope_parameters["rope_type"] == "llama3" and back.model.rotary_emb.rope_type == "llama3"
    with torch.no_grad():
        again = back(torch.as_tensor(IDS), attention_mask=torch.as_tensor(MASK)).logits.double().numpy()
    assert _rel(again[real], want[real]) <= 1e-9
