"""TransformerLM: parameter names/shapes/init, forward semantics (causal, right padding), gradients,
dropout, copy, reward head, state dicts."""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import pytest

from vietnamese_ai_ref.core import autograd as ag
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.gradcheck import gradcheck
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

TINY = dict(n_positions=16, n_embd=16, n_layer=2, n_head=2)


def tiny(**kw):
    return TransformerLM(GPTConfig(**{**TINY, **kw}))


def batch(B=3, T=7, seed=0, lengths=(7, 4, 1)):
    """Random ids (B, T) right-padded with <pad> per `lengths`, and the mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(B, T))
    mask = (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 256)
    return ids, mask


def names_for(n_layer):
    out = ["wte.weight", "wpe.weight"]
    for i in range(n_layer):
        for s in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                  "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                  "mlp.c_proj.weight", "mlp.c_proj.bias"):
            out.append(f"h.{i}.{s}")
    return out + ["ln_f.weight", "ln_f.bias"]


# ----------------------------------------------------------------------------------------------
def test_config_defaults_and_validation():
    c = GPTConfig()
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (259, 256, 128, 2, 4)
    assert (c.layer_norm_epsilon, c.initializer_range, c.model_type) == (1e-5, 0.02, "gpt2")
    assert c.embd_pdrop == c.attn_pdrop == c.resid_pdrop == 0.0
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="attn_pdrop"):
        GPTConfig(attn_pdrop=1.0)
    with pytest.raises(ValueError, match="unknown config key: 'n_ctxx'"):
        GPTConfig.from_dict({"n_ctxx": 3})
    with pytest.raises(ValueError, match="tokenizer vocab_size"):
        TransformerLM(GPTConfig(vocab_size=100, **TINY))


def test_parameter_names_shapes_and_init():
    with use_backend(dtype="float64"):
        m = TransformerLM(GPTConfig(n_layer=3, n_embd=32, n_head=4, n_positions=64))
        d, L = 32, 3
        params = m.named_parameters()
        assert list(params) == names_for(L)
        assert all(isinstance(p, ag.Parameter) and p.requires_grad for p in params.values())
        shapes = {n: p.shape for n, p in params.items()}
        assert shapes["wte.weight"] == (259, d) and shapes["wpe.weight"] == (64, d)
        assert shapes["h.2.attn.c_attn.weight"] == (d, 3 * d) and shapes["h.2.attn.c_attn.bias"] == (3 * d,)
        assert shapes["h.0.mlp.c_fc.weight"] == (d, 4 * d) and shapes["h.0.mlp.c_proj.weight"] == (4 * d, d)
        assert m.num_parameters() == sum(int(np.prod(s)) for s in shapes.values())
        a = {n: p.numpy() for n, p in params.items()}
        assert np.all(a["h.1.ln_1.weight"] == 1) and np.all(a["ln_f.bias"] == 0) and np.all(a["h.0.attn.c_attn.bias"] == 0)
        assert abs(a["wte.weight"].std() - 0.02) < 0.002
        assert abs(a["h.0.mlp.c_fc.weight"].std() - 0.02) < 0.002
        assert abs(a["h.0.mlp.c_proj.weight"].std() - 0.02 / math.sqrt(2 * L)) < 0.001
        assert abs(a["h.0.attn.c_proj.weight"].std() - 0.02 / math.sqrt(2 * L)) < 0.002
    # seeded, host RNG: float32 init is the float64 init rounded
    with use_backend(dtype="float32"):
        m32 = TransformerLM(GPTConfig(n_layer=3, n_embd=32, n_head=4, n_positions=64))
        assert m32.parameters()[0].dtype == np.float32
        np.testing.assert_array_equal(m32.named_parameters()["wte.weight"].numpy(), a["wte.weight"].astype(np.float32))
        other = TransformerLM(GPTConfig(n_layer=3, n_embd=32, n_head=4, n_positions=64, seed=1))
        assert not np.array_equal(other.named_parameters()["wte.weight"].numpy(), m32.named_parameters()["wte.weight"].numpy())


def test_forward_shapes_and_dtypes():
    m = tiny()
    ids, mask = batch()
    out = m(ids, mask)
    assert out.shape == (3, 7, 259) and out.dtype == np.float32
    assert m.hidden_states(ids, mask).shape == (3, 7, 16)
    with use_backend(dtype="float64"):
        m = tiny()
        assert m.forward(ids).dtype == np.float64


def test_causal_padding_and_no_nan(backend):
    m = tiny()
    ids, mask = batch(lengths=(7, 4, 1))
    full = m(ids, mask).numpy()
    assert np.isfinite(full).all()
    # each row alone, unpadded, gives the same logits at its real positions
    for b, n in enumerate((7, 4, 1)):
        alone = m(ids[b:b + 1, :n]).numpy()[0]
        np.testing.assert_allclose(full[b, :n], alone, rtol=1e-12, atol=1e-12)
    # pad token ids do not matter for real positions
    ids2 = np.where(mask == 1, ids, 7)
    np.testing.assert_allclose(m(ids2, mask).numpy()[mask == 1], full[mask == 1], rtol=1e-12, atol=1e-12)
    # causal: changing a later token leaves earlier positions unchanged
    ids3 = ids.copy()
    ids3[0, 5] = (ids3[0, 5] + 1) % 256
    out3 = m(ids3, mask).numpy()
    np.testing.assert_allclose(out3[0, :5], full[0, :5], rtol=1e-12, atol=1e-12)
    assert not np.allclose(out3[0, 5:], full[0, 5:])
    # an all-padding row is finite too
    allpad = m(np.full((1, 4), 256), np.zeros((1, 4), dtype=np.int64)).numpy()
    assert np.isfinite(allpad).all()


def test_input_errors():
    m = tiny()
    with pytest.raises(ValueError, match="n_positions"):
        m(np.zeros((1, 17), dtype=np.int64))
    with pytest.raises(ValueError, match="right padding"):
        m(np.zeros((1, 4), dtype=np.int64), [[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="out of range"):
        m([[1, 2, 259]])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        m([1, 2, 3])
    with pytest.raises(ValueError, match="attention_mask"):
        m([[1, 2, 3]], [[1, 1]])
    with pytest.raises(TypeError, match="integers"):
        m([[1.0, 2.0]])


def test_full_model_gradcheck_with_padding(backend):
    m = tiny()
    ids, mask = batch(B=3, T=6, lengths=(6, 4, 2))
    targets = np.where(mask[:, 1:] == 1, ids[:, 1:], -100)  # (B, T-1), pads ignored
    params = m.parameters()

    def loss(*_):
        logits = m(ids, mask)  # (B, T, V)
        return ag.cross_entropy(logits[:, :-1], targets)

    res = gradcheck(loss, params, max_elements=0, n_directions=3, seed=1)
    assert res["checked"] == 3 * len(params)
    # every parameter received a gradient (wpe rows beyond T and unused wte rows are zero, not None)
    loss().backward()
    assert all(p.grad is not None and np.isfinite(backend.to_numpy(p.grad)).all() for p in params)


def _lm_loss(m, seed):
    ids, mask = batch(B=3, T=6, seed=seed, lengths=(6, 4, 2))
    targets = np.where(mask[:, 1:] == 1, ids[:, 1:], -100)  # (B, T-1), pads ignored
    return ag.cross_entropy(m(ids, mask)[:, :-1], targets)


@pytest.mark.parametrize("score_head", [False, True])
def test_gradients_written_into_optimiser_buffers(backend, score_head):
    """With an optimiser, the fused ops write weight gradients straight into its flat gradient buffer
    (Parameter.grad_home), the tied wte accumulating head + embedding there in place. The gradients
    are exactly those of the same model without an optimiser, also when two backward passes
    accumulate (gradient accumulation), and gather_grads leaves them in place."""
    from vietnamese_ai_ref.core.optim import AdamW

    plain = tiny()
    if score_head:
        plain.add_score_head(seed=2)
    homed = plain.copy()
    opt = AdamW(homed.named_parameters(), lr=1e-3, weight_decay=0.1)
    flat = {id(g.grad): g for g in opt.groups}
    for m in (plain, homed):
        _lm_loss(m, seed=0).backward()
    homes = {n for n, p in homed.named_parameters().items() if p.grad is p.grad_home}
    # every GEMM weight and bias of the blocks, wpe, and the tied wte (its home holds head + embedding);
    # LayerNorm parameters (small) are copied by gather_grads; the score head gets no gradient here
    assert homes == {n for n in homed.named_parameters() if "ln_" not in n and n != "score.weight"}
    for n, p in homed.named_parameters().items():
        q = plain.named_parameters()[n]
        if q.grad is None:  # the score head takes no part in the LM loss
            assert p.grad is None, n
            continue
        np.testing.assert_array_equal(backend.to_numpy(p.grad), backend.to_numpy(q.grad), err_msg=n)
        if n in homes:
            g = next(g for g in opt.groups if p in g.params)
            assert backend.xp.shares_memory(p.grad, g.grad), n
    for m in (plain, homed):  # a second micro-batch, without zero_grad: accumulates
        _lm_loss(m, seed=1).backward()
    opt.gather_grads()
    for g in opt.groups:
        for n, p, a, b in zip(g.names, g.params, g.offsets, g.offsets[1:]):
            q = plain.named_parameters()[n]
            want = np.zeros(p.shape) if q.grad is None else backend.to_numpy(q.grad)
            np.testing.assert_array_equal(backend.to_numpy(g.grad[a:b]).reshape(p.shape), want, err_msg=n)
    assert len(flat) == len(opt.groups)
    kept = {n: backend.to_numpy(p.grad).copy() for n, p in homed.named_parameters().items() if p.grad is not None}
    opt.release_grad_homes()  # what the trainers do when their loop ends: the model lets go of the buffer
    for n, p in homed.named_parameters().items():
        assert p.grad_home is None, n
        if n in kept:
            assert not any(backend.xp.shares_memory(p.grad, g.grad) for g in opt.groups), n
            np.testing.assert_array_equal(backend.to_numpy(p.grad), kept[n], err_msg=n)
    opt = AdamW(homed.named_parameters(), lr=1e-3, weight_decay=0.1)  # homes again, in a new buffer
    opt.zero_grad()
    assert all(p.grad is None for p in homed.parameters())
    _lm_loss(homed, seed=0).backward()  # after zero_grad the homes are overwritten, not added to
    plain.zero_grad()
    _lm_loss(plain, seed=0).backward()
    np.testing.assert_array_equal(backend.to_numpy(homed.named_parameters()["wte.weight"].grad),
                                  backend.to_numpy(plain.named_parameters()["wte.weight"].grad))


def test_score_head_gradcheck(backend):
    m = tiny(n_layer=1)
    m.add_score_head(seed=3)
    ids, mask = batch(B=3, T=5, lengths=(5, 3, 1))
    u = np.array([0.3, -1.2, 0.7])
    gradcheck(lambda *_: m.score(ids, mask) * u, m.parameters(), max_elements=0, n_directions=2)


def test_score_head(backend):
    m = tiny()
    assert not m.has_score_head
    with pytest.raises(ValueError, match="score head"):
        m.score([[1, 2]])
    w = m.add_score_head(seed=5)
    assert m.has_score_head and w.shape == (1, 16)
    assert list(m.named_parameters())[-1] == "score.weight"
    assert abs(float(backend.to_numpy(w.data).std()) - 1 / math.sqrt(17)) < 0.15
    with pytest.raises(ValueError, match="already"):
        m.add_score_head()
    ids, mask = batch(lengths=(7, 4, 1))
    s = m.score(ids, mask).numpy()
    assert s.shape == (3,)
    h = m.hidden_states(ids, mask).numpy()
    wn = backend.to_numpy(w.data)[0]
    for b, n in enumerate((7, 4, 1)):
        assert s[b] == pytest.approx(float(h[b, n - 1] @ wn), rel=1e-12)
        assert m.score(ids[b:b + 1, :n]).numpy()[0] == pytest.approx(s[b], rel=1e-12)
    with pytest.raises(ValueError, match="no real token"):
        m.score(ids, np.zeros_like(mask))


def test_dropout(backend):
    cfg = GPTConfig(**TINY, embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1, seed=4)
    ids, mask = batch()
    a, b = TransformerLM(cfg), TransformerLM(cfg)
    assert a.training
    a1, a2 = a(ids, mask).numpy(), a(ids, mask).numpy()
    assert not np.allclose(a1, a2)  # the dropout stream advances each call
    np.testing.assert_array_equal(b(ids, mask).numpy(), a1)  # same seed, same masks
    a.eval()
    e1, e2 = a(ids, mask).numpy(), a(ids, mask).numpy()
    np.testing.assert_array_equal(e1, e2)
    nodrop = TransformerLM(GPTConfig(**TINY, seed=4))
    np.testing.assert_array_equal(nodrop(ids, mask).numpy(), e1)
    assert a.train() is a and a.training


def test_copy_is_independent(backend):
    m = tiny()
    m.add_score_head()
    c = m.copy()
    assert c.tokenizer is m.tokenizer and list(c.named_parameters()) == list(m.named_parameters())
    ids, mask = batch()
    np.testing.assert_array_equal(c(ids, mask).numpy(), m(ids, mask).numpy())
    c.named_parameters()["wte.weight"].data[0, 0] += 1.0
    assert m.named_parameters()["wte.weight"].data[0, 0] != c.named_parameters()["wte.weight"].data[0, 0]
    assert c.named_parameters()["score.weight"] is not m.named_parameters()["score.weight"]


def test_state_dict_round_trip(backend):
    m, other = tiny(), tiny(seed=9)
    ids, mask = batch()
    sd = m.state_dict()
    assert list(sd) == names_for(2) and isinstance(sd["wte.weight"], np.ndarray)
    keep = other.named_parameters()["wte.weight"]
    other.load_state_dict(sd)
    assert other.named_parameters()["wte.weight"] is keep  # in place: optimizers keep their Parameters
    np.testing.assert_array_equal(other(ids, mask).numpy(), m(ids, mask).numpy())
    bad = dict(sd)
    bad["wpe.weight"] = bad["wpe.weight"][:3]
    with pytest.raises(ValueError, match=r"wrong shape for tensor wpe\.weight"):
        other.load_state_dict(bad)
    other.add_score_head()
    with pytest.raises(ValueError, match=r"missing tensor: score\.weight"):
        other.load_state_dict(sd)  # strict: a model with a head needs score.weight
    m.add_score_head(seed=1)
    other.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(other.score(ids, mask).numpy(), m.score(ids, mask).numpy())


def test_modules_use_backend_layer_only():
    root = pathlib.Path(__file__).resolve().parents[1] / "vietnamese_ai_ref"
    for name in ("models/gpt2.py", "text/tokenizer.py", "models/generation.py"):
        src = (root / name).read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(numpy|cupy)\b", src, re.M), name
        assert src.startswith('"""'), name


def test_load_state_dict_keeps_the_optimiser_training(backend):
    """load_state_dict copies into the existing buffers: an AdamW built before the load still moves the
    weights, bit-identically to one built after (it used to rebind p.data and silently detach them)."""
    from vietnamese_ai_ref.core.optim import AdamW
    from vietnamese_ai_ref.losses import sft_loss

    ids = backend.xp.asarray([[257, 5, 9, 200, 7], [257, 3, 3, 8, 258]])

    def train(model, opt, steps=3):
        for _ in range(steps):
            opt.zero_grad()
            sft_loss(model(ids), ids).backward()
            opt.gather_grads()
            opt.step(1e-2)
        return {n: backend.to_numpy(p.data).copy() for n, p in model.named_parameters().items()}

    donor = TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, seed=3))
    before = TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, seed=7))
    opt_before = AdamW(before.named_parameters(), lr=1e-2)
    before.load_state_dict(donor.state_dict())
    after = TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, seed=7))
    after.load_state_dict(donor.state_dict())
    opt_after = AdamW(after.named_parameters(), lr=1e-2)
    start = donor.state_dict()
    a, b = train(before, opt_before), train(after, opt_after)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])
    moved = max(float(np.abs(a[n] - start[n]).max()) for n in a)
    assert moved > 1e-4  # the weights really moved
