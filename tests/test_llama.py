"""LlamaLM without torch: config rules, parameter names, op and whole-model gradients (float64
gradcheck), causality with right padding, sliding window, KV-cache generation, score head, copy,
the trainers, and Hugging Face folders written and read by vietnamese_ai_ref.io.hf (errors included).
The cross-checks against transformers live in test_hf_roundtrip.py."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from vietnamese_ai_ref import DPOTrainer, RewardModel, SFTTrainer
from vietnamese_ai_ref.core import autograd as ag
from vietnamese_ai_ref.core.autograd import Parameter, Tensor
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.gradcheck import gradcheck
from vietnamese_ai_ref import luu_mo_hinh, tai_mo_hinh
from vietnamese_ai_ref.io.hf import CheckpointError, from_pretrained, save_pretrained
from vietnamese_ai_ref.io.safetensors import read_safetensors
from vietnamese_ai_ref.core.fused import apply_rotary, linear, rms_norm, silu
from vietnamese_ai_ref.models.llama import LlamaConfig, LlamaLM, rope_cos_sin

TINY = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=24)


def tiny(noise=0.3, **kw):
    """A tiny LlamaLM whose every parameter (norms and biases included) is moved off its init."""
    m = LlamaLM(LlamaConfig(**{**TINY, **kw}))
    rng = np.random.default_rng(11)
    for p in m.parameters():
        p.data += m_asarray(rng.standard_normal(p.shape) * noise)
    return m


def m_asarray(a):
    from vietnamese_ai_ref.backends import get_backend

    return get_backend().asarray(a)


def batch(B=3, T=7, seed=0, lengths=(7, 4, 1)):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(B, T))
    mask = (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return np.where(mask == 1, ids, 256), mask


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

def test_config_defaults_aliases_and_family_biases():
    c = LlamaConfig()
    assert (c.num_key_value_heads, c.head_dim, c.n_positions, c.n_layer, c.n_head, c.n_embd) == (4, 32, 256, 2, 4, 128)
    assert (c.attention_bias, c.o_proj_bias, c.mlp_bias, c.rope_scaling, c.layer_types) == (
        False, False, False, None, ["full_attention"] * 2)
    assert LlamaConfig.from_dict(c.to_dict()) == c
    q = LlamaConfig(model_type="qwen2")
    assert (q.attention_bias, q.o_proj_bias) == (True, False)
    assert (LlamaConfig(attention_bias=True).o_proj_bias, LlamaConfig(model_type="mistral").attention_bias) == (True, False)
    assert LlamaConfig(rope_scaling={"type": "linear", "factor": 2}).rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert LlamaConfig(rope_scaling={"rope_type": "default"}).rope_scaling is None
    assert LlamaConfig(sliding_window=3).layer_types == ["sliding_attention"] * 2


@pytest.mark.parametrize("kw,match", [
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "unsupported rope_scaling type 'yarn'"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "'dynamic'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0}), "rope_scaling.factor"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads=3"),
    (dict(hidden_size=12, num_attention_heads=4), "head_dim=3 must be even"),
    (dict(hidden_size=18, num_attention_heads=4), "hidden_size=18 is not divisible by num_attention_heads=4"),
    (dict(model_type="falcon"), "model_type must be one of"),
    (dict(layer_types=["full_attention"]), "layer_types must list 2"),
    (dict(layer_types=["sliding_attention", "full_attention"]), "sliding_window is None"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(attention_dropout=1.0), "attention_dropout"),
])
def test_config_errors_name_the_option(kw, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**kw)
    with pytest.raises(ValueError, match="unknown config key: 'rope_scalling'"):
        LlamaConfig.from_dict({"rope_scalling": None})
    with pytest.raises(ValueError, match="tokenizer vocab_size 259 > config.vocab_size 100"):
        LlamaLM(LlamaConfig(vocab_size=100, **TINY))


def test_parameter_names_are_transformers_names():
    m = LlamaLM(LlamaConfig(**TINY))
    names = list(m.named_parameters())
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["model.norm.weight", "lm_head.weight"]
    p = "model.layers.1."
    assert names[1 + 9:1 + 18] == [p + s for s in (
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight")]
    P = m.named_parameters()
    assert P[p + "self_attn.q_proj.weight"].shape == (16, 16)  # nn.Linear (out, in)
    assert P[p + "self_attn.k_proj.weight"].shape == (8, 16)  # 2 kv heads x head_dim 4
    assert P[p + "mlp.down_proj.weight"].shape == (16, 24)
    q = LlamaLM(LlamaConfig(model_type="qwen2", tie_word_embeddings=True, **TINY)).named_parameters()
    assert "lm_head.weight" not in q and "model.layers.0.self_attn.q_proj.bias" in q
    assert "model.layers.0.self_attn.o_proj.bias" not in q
    full = LlamaLM(LlamaConfig(attention_bias=True, mlp_bias=True, **TINY)).named_parameters()
    assert {"model.layers.0.self_attn.o_proj.bias", "model.layers.0.mlp.down_proj.bias"} <= set(full)
    assert full["model.layers.0.self_attn.k_proj.bias"].shape == (8,)


# ---------------------------------------------------------------------------------------------
# ops and gradients
# ---------------------------------------------------------------------------------------------

def test_ops_gradcheck_elementwise(backend):
    rng = np.random.default_rng(0)

    def P(*shape, scale=1.0):
        return Parameter(backend.asarray(rng.standard_normal(shape) * scale))

    x = P(2, 3, 8, scale=3.0)
    gradcheck(lambda a: silu(a), [x])
    w = P(8)
    gradcheck(lambda a, b: rms_norm(a, b, 1e-6), [P(2, 3, 8), w], max_elements=64)
    cfg = LlamaConfig(hidden_size=16, num_attention_heads=2)
    cos, sin = rope_cos_sin(cfg, backend.xp.arange(5))
    gradcheck(lambda a: apply_rotary(a, cos, sin), [P(1, 2, 5, 8)], max_elements=80)
    gradcheck(lambda a, b, c: linear(a, b, c), [P(2, 3, 4), P(5, 4), P(5)])
    gradcheck(lambda a, b: linear(a, b), [P(3, 4), P(5, 4)])
    # values: silu and rms_norm by their formulas
    xd = backend.to_numpy(x.data)
    np.testing.assert_allclose(silu(x).numpy(), xd / (1 + np.exp(-xd)), rtol=1e-13)
    a = P(4, 8)
    ad, wd = backend.to_numpy(a.data), backend.to_numpy(w.data)
    ref = ad / np.sqrt((ad ** 2).mean(-1, keepdims=True) + 1e-5) * wd
    np.testing.assert_allclose(rms_norm(a, w, 1e-5).numpy(), ref, rtol=1e-13)


def test_rope_tables_follow_rotate_half_and_linear_scaling(backend):
    cfg = LlamaConfig(hidden_size=16, num_attention_heads=2, rope_theta=500.0)  # head_dim 8
    pos = backend.xp.arange(6)
    cos, sin = (backend.to_numpy(t) for t in rope_cos_sin(cfg, pos))
    inv = 1.0 / 500.0 ** (np.arange(0, 8, 2) / 8)
    ang = np.arange(6)[:, None] * inv
    np.testing.assert_allclose(cos, np.cos(np.concatenate([ang, ang], -1)), rtol=1e-14)
    np.testing.assert_allclose(sin, np.sin(np.concatenate([ang, ang], -1)), rtol=1e-14, atol=1e-15)
    lin = LlamaConfig(hidden_size=16, num_attention_heads=2, rope_theta=500.0, rope_scaling={"type": "linear", "factor": 4})
    c4, _ = rope_cos_sin(lin, pos)
    np.testing.assert_allclose(backend.to_numpy(c4), np.cos(np.concatenate([ang, ang], -1) / 4), rtol=1e-14)
    # rotary = a rotation of each pair (x_i, x_{i+hd/2}) by its angle
    x = Tensor(backend.asarray(np.random.default_rng(1).standard_normal((6, 8))))
    y = apply_rotary(x, backend.asarray(cos), backend.asarray(sin)).numpy()
    xd = x.numpy()
    np.testing.assert_allclose(y[:, 0], xd[:, 0] * np.cos(ang[:, 0]) - xd[:, 4] * np.sin(ang[:, 0]), rtol=1e-12)
    np.testing.assert_allclose(y[:, 4], xd[:, 4] * np.cos(ang[:, 0]) + xd[:, 0] * np.sin(ang[:, 0]), rtol=1e-12)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(model_type="qwen2", tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    dict(attention_bias=True, mlp_bias=True, num_key_value_heads=1, sliding_window=3),
], ids=["llama-gqa", "qwen2-tied-linear", "bias-mqa-window"])
def test_full_model_gradcheck_with_padding(backend, kw):
    m = tiny(**kw)
    ids, mask = batch(B=3, T=6, lengths=(6, 4, 2))
    targets = np.where(mask[:, 1:] == 1, ids[:, 1:], -100)  # (B, T-1), pads ignored
    params = m.parameters()

    def loss(*_):
        logits = m(ids, mask)  # (B, T, V)
        return ag.cross_entropy(logits[:, :-1], targets)

    res = gradcheck(loss, params, max_elements=0, n_directions=2, seed=1)
    assert res["checked"] == 2 * len(params)
    loss().backward()
    assert all(p.grad is not None and np.isfinite(backend.to_numpy(p.grad)).all() for p in params)


@pytest.mark.parametrize("kw", [dict(tie_word_embeddings=True), dict(model_type="qwen2")])
def test_gradients_written_into_optimiser_buffers(backend, kw):
    """With an optimiser, every projection's (and the head's) gradient lands in its flat buffer, the
    tied embedding accumulating head + embedding in place, with exactly the values of a model without one."""
    from vietnamese_ai_ref.core.optim import AdamW

    plain = tiny(**kw)
    homed = plain.copy()
    AdamW(homed.named_parameters(), lr=1e-3, weight_decay=0.1)
    ids, mask = batch()
    targets = np.where(mask[:, 1:] == 1, ids[:, 1:], -100)
    for m in (plain, homed):
        ag.cross_entropy(m(ids, mask)[:, :-1], targets).backward()
    homes = {n for n, p in homed.named_parameters().items() if p.grad is p.grad_home}
    assert homes == {n for n in homed.named_parameters() if "layernorm" not in n and n != "model.norm.weight"}
    for n, p in homed.named_parameters().items():
        np.testing.assert_array_equal(backend.to_numpy(p.grad), backend.to_numpy(plain.named_parameters()[n].grad),
                                      err_msg=n)


def test_score_head_gradcheck(backend):
    m = tiny(num_hidden_layers=1)
    m.add_score_head(seed=3)
    assert m.named_parameters()["score.weight"].shape == (1, 16)
    ids, mask = batch(B=3, T=5, lengths=(5, 3, 1))
    u = np.array([0.3, -1.2, 0.7])
    gradcheck(lambda *_: m.score(ids, mask) * u, m.parameters(), max_elements=0, n_directions=2)
    with pytest.raises(ValueError, match="already has a score head"):
        m.add_score_head()


# ---------------------------------------------------------------------------------------------
# semantics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(sliding_window=2, layer_types=["sliding_attention", "full_attention"])])
def test_causal_and_right_padding(backend, kw):
    m = tiny(**kw).eval()
    ids, mask = batch(B=3, T=7, lengths=(7, 4, 1))
    full = m(ids, mask).numpy()
    for b, n in enumerate((7, 4, 1)):
        alone = m(ids[b:b + 1, :n]).numpy()[0]  # the real prefix alone, no padding
        np.testing.assert_allclose(full[b, :n], alone, rtol=1e-12, atol=1e-12)
    changed = ids.copy()
    changed[0, 5:] = 3  # future tokens do not change earlier logits
    np.testing.assert_allclose(m(changed, mask).numpy()[0, :5], full[0, :5], rtol=1e-12, atol=1e-12)
    assert np.isfinite(full).all()


def test_sliding_window_masks_old_keys(backend):
    """With window 2 in both layers, the logits at position 4 depend on tokens 2..4 only."""
    m = tiny(sliding_window=2).eval()
    ids, _ = batch(B=1, T=5, lengths=(5,))
    out = m(ids).numpy()
    other = ids.copy()
    other[0, :2] = [9, 8]
    # layer 0 sees 2 tokens, layer 1 sees 2 positions of layer 0: position 4 reads tokens 2..4 only
    np.testing.assert_allclose(m(other).numpy()[0, 4], out[0, 4], rtol=1e-12, atol=1e-12)
    assert not np.allclose(m(other).numpy()[0, 3], out[0, 3])


@pytest.mark.parametrize("kw", [dict(), dict(model_type="qwen2", num_key_value_heads=1, tie_word_embeddings=True),
                                dict(sliding_window=3)], ids=["gqa", "qwen2-mqa", "window"])
def test_generation_cache_equals_no_cache(backend, kw):
    m = tiny(noise=0.5, **kw)
    prompts = [[257, 72, 105], [257, 65], [257, 1, 2, 3, 4, 5]]
    a = m.generate(prompts, max_new_tokens=8, use_cache=True, eos_token_id=-1)
    b = m.generate(prompts, max_new_tokens=8, use_cache=False, eos_token_id=-1)
    assert a == b and all(len(r) == 8 for r in a)
    alone = [m.generate([p], max_new_tokens=8, eos_token_id=-1)[0] for p in prompts]
    assert a == alone
    s = m.generate(prompts, max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, seed=4)
    assert s == m.generate(prompts, max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, seed=4, use_cache=False)
    assert isinstance(m.sinh_van_ban("Xin chào", max_new_tokens=4)[0], str)
    assert m.training  # mode restored


def test_llama_kv_cache_has_kv_heads_only(backend):
    m = tiny()
    cache = m.new_kv_cache(2, 10)
    assert cache.k[0].shape == (2, 2, 10, 4)  # (B, num_key_value_heads, capacity, head_dim)
    ids = backend.xp.asarray([[257, 5, 6], [257, 9, 256]])
    with ag.no_grad():
        h = m.decode(ids, backend.xp.asarray([3, 2]), cache)
    ref = m.eval().hidden_states(np.asarray([[257, 5, 6], [257, 9, 256]]), np.asarray([[1, 1, 1], [1, 1, 0]]))
    np.testing.assert_allclose(backend.to_numpy(h.data)[:, :2], ref.numpy()[:, :2], rtol=1e-12, atol=1e-12)


def test_copy_modes_and_state_dict(backend):
    m = tiny()
    c = m.copy()
    assert c.config == m.config and c.config is not m.config and c.tokenizer is m.tokenizer
    name = "model.layers.0.mlp.up_proj.weight"
    c.named_parameters()[name].data[0, 0] += 1.0
    assert not np.allclose(c.named_parameters()[name].numpy(), m.named_parameters()[name].numpy())
    assert m.eval().training is False and m.train().training is True
    sd = m.state_dict()
    c.load_state_dict(sd)
    np.testing.assert_array_equal(c.named_parameters()[name].numpy(), sd[name])
    with pytest.raises(CheckpointError, match="missing tensor: lm_head.weight"):
        c.load_state_dict({k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert "LlamaLM(model_type='llama'" in repr(m)


def test_attention_dropout_only_in_training(backend):
    m = tiny(attention_dropout=0.5)
    ids, mask = batch(B=2, T=5, lengths=(5, 3))
    m.eval()
    a, b = m(ids, mask).numpy(), m(ids, mask).numpy()
    np.testing.assert_array_equal(a, b)
    m.train()
    assert not np.allclose(m(ids, mask).numpy(), a)


# ---------------------------------------------------------------------------------------------
# trainers
# ---------------------------------------------------------------------------------------------

SFT = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(3) for b in range(2)]
PREF = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(4)]


def test_trainers_run_unchanged_on_llama():
    with use_backend(dtype="float64"):
        m = LlamaLM(LlamaConfig(**{**TINY, "max_position_embeddings": 64}))
        before = {k: p.numpy().copy() for k, p in m.named_parameters().items()}
        r = SFTTrainer(so_vong=2, kich_thuoc_batch=3, toc_do_hoc=3e-3, gradient_accumulation=1,
                       max_seq_length=64, logging_steps=1).huan_luyen(m, SFT)
        assert r["global_step"] == 4 and np.isfinite(r["train_loss_min"])
        assert r["history"]["train_loss"][-1] < r["history"]["train_loss"][0]
        assert all(not np.array_equal(before[k], p.numpy()) for k, p in m.named_parameters().items())
        d = DPOTrainer(so_vong=1, kich_thuoc_batch=2, toc_do_hoc=1e-3, gradient_accumulation=1,
                       max_seq_length=64, logging_steps=1).huan_luyen(m, None, PREF)
        assert d["global_step"] == 2 and d["history"]["reward_margin"][0] == pytest.approx(0.0, abs=1e-12)
        rm = m.copy()
        res = RewardModel(toc_do_hoc=1e-3, kich_thuoc_batch=2, max_seq_length=64).huan_luyen(rm, PREF, so_vong=1)
        assert rm.has_score_head and 0.0 <= res["final_accuracy"] <= 1.0
        scores = RewardModel().diem_danh_gia(rm, ["Dạ, 2 ạ.", "Không biết."])
        assert len(scores) == 2


# ---------------------------------------------------------------------------------------------
# Hugging Face folders (no transformers needed)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(model_type="qwen2", tie_word_embeddings=True),
                                dict(model_type="mistral", sliding_window=3),
                                dict(attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0})],
                         ids=["llama", "qwen2", "mistral", "llama-bias-linear"])
def test_save_and_load_round_trip(tmp_path, kw):
    with use_backend(dtype="float64"):
        m = tiny(**kw)
        m.add_score_head()
        luu_mo_hinh(m, tmp_path / "ckpt")
        raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
        assert raw["model_type"] == m.config.model_type and raw["score_head"] is True
        back = tai_mo_hinh(tmp_path / "ckpt")
        assert isinstance(back, LlamaLM) and back.config == m.config and not back.training
        assert list(back.named_parameters()) == list(m.named_parameters())
        ids, mask = batch()
        np.testing.assert_array_equal(back(ids, mask).numpy(), m(ids, mask).numpy())
        np.testing.assert_array_equal(back.score(ids, mask).numpy(), m.score(ids, mask).numpy())
        assert LlamaLM.load(tmp_path / "ckpt").config == m.config
        m.save(tmp_path / "ckpt")  # replaces the previous checkpoint
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_float32_checkpoint_loads_into_float32(tmp_path):
    m = tiny()
    save_pretrained(m, tmp_path / "c")
    assert read_safetensors(tmp_path / "c" / "model.safetensors")["model.norm.weight"].dtype == np.float32
    back = from_pretrained(tmp_path / "c")
    np.testing.assert_array_equal(back.named_parameters()["lm_head.weight"].numpy(),
                                  m.named_parameters()["lm_head.weight"].numpy())


def _write_safetensors(path, tensors):
    """A safetensors file written by hand (to test BF16 without torch): name -> (dtype, shape, bytes)."""
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_reader_bf16_f16_and_corruption(tmp_path):
    vals = np.array([1.0, -2.5, 3.140625, 0.0078125], dtype=np.float32)  # exactly representable in bf16
    bf16 = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()
    _write_safetensors(tmp_path / "a.safetensors", {
        "x": ("BF16", (2, 2), bf16), "y": ("F16", (3,), np.array([0.5, 1, 2], "<f2").tobytes())})
    out = read_safetensors(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(out["x"], vals.reshape(2, 2))
    np.testing.assert_array_equal(out["y"], [0.5, 1, 2])
    _write_safetensors(tmp_path / "b.safetensors", {"z": ("F8_E4M3", (1,), b"\x00")})
    with pytest.raises(CheckpointError, match="unsupported tensor dtype F8_E4M3 for tensor z"):
        read_safetensors(tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        read_safetensors(tmp_path / "c.safetensors")


def _folder(tmp_path, **config_changes):
    """A float64 Llama folder written by us, then config.json edited; returns its path."""
    with use_backend(dtype="float64"):
        save_pretrained(tiny(), tmp_path / "f")
    p = tmp_path / "f" / "config.json"
    raw = json.loads(p.read_text())
    for k, v in config_changes.items():
        if v is KeyError:
            raw.pop(k, None)
        else:
            raw[k] = v
    p.write_text(json.dumps(raw))
    return tmp_path / "f"


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="falcon"), "unsupported model_type 'falcon'"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 8.0, "rope_theta": 5e5}), "rope_type='dynamic'"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}), "low_freq_factor must be"),
    (dict(rope_parameters=KeyError, rope_scaling={"type": "yarn", "factor": 4.0}), "rope_type='yarn'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config"),
    (dict(final_logit_softcapping=30.0), "final_logit_softcapping=30.0"),
    (dict(num_key_value_heads=3), "num_key_value_heads=3"),
    (dict(attention_bias=True), "missing tensor: model.layers.0.self_attn.q_proj.bias"),
    (dict(tie_word_embeddings=True), "differs from model.embed_tokens.weight"),
    (dict(intermediate_size=25), "wrong shape for tensor model.layers.0.mlp.gate_proj.weight: expected .25, 16."),
])
def test_load_errors_name_the_culprit(tmp_path, changes, match):
    with pytest.raises(CheckpointError, match=match):
        from_pretrained(_folder(tmp_path, **changes))


def test_missing_unexpected_and_sharded_tensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    f = _folder(tmp_path)
    arrays = load_file(str(f / "model.safetensors"))
    # sharded: two files and an index, read back identically
    names = sorted(arrays)
    save_file({k: arrays[k] for k in names[:5]}, str(f / "model-00001-of-00002.safetensors"))
    save_file({k: arrays[k] for k in names[5:]}, str(f / "model-00002-of-00002.safetensors"))
    (f / "model.safetensors").unlink()
    wmap = {k: ("model-00001-of-00002.safetensors" if i < 5 else "model-00002-of-00002.safetensors")
            for i, k in enumerate(names)}
    (f / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    with use_backend(dtype="float64"):
        m = from_pretrained(f)
    np.testing.assert_array_equal(m.named_parameters()["model.norm.weight"].numpy(), arrays["model.norm.weight"])
    (f / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard file"):
        from_pretrained(f)
    # single file with a tensor too many / too few
    g = _folder(tmp_path / "g")
    save_file({**arrays, "model.extra.weight": np.zeros(2)}, str(g / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor: model.extra.weight"):
        from_pretrained(g)
    save_file({k: v for k, v in arrays.items() if k != "model.norm.weight"}, str(g / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensor: model.norm.weight"):
        from_pretrained(g)
    (g / "model.safetensors").unlink()
    (g / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="only safetensors is read"):
        from_pretrained(g)


def test_save_refuses_what_the_family_cannot_express(tmp_path):
    m = tiny(attention_bias=True, o_proj_bias=False)
    with pytest.raises(CheckpointError, match="attention_bias=True != o_proj_bias=False"):
        save_pretrained(m, tmp_path / "x")
    m = tiny(model_type="mistral", sliding_window=2, layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(CheckpointError, match="every layer"):
        save_pretrained(m, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to write a model"):
        save_pretrained(tiny(), tmp_path / "z")
    with pytest.raises(TypeError, match="needs a TransformerLM or LlamaLM"):
        save_pretrained(object(), tmp_path / "w")
