"""Generation: KV cache == no cache, batch == each prompt alone, eos / length limits, sampling filters."""

from __future__ import annotations

import numpy as np
import pytest

from vietnamese_ai_ref.backends import get_backend, use_backend
from vietnamese_ai_ref.models.generation import _choose
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

PROMPTS = ["Xin chào", "a", "Hôm nay trời đẹp quá", ""]


def model(n_positions=64, seed=0):
    return TransformerLM(GPTConfig(n_positions=n_positions, n_embd=32, n_layer=2, n_head=4, seed=seed))


def prompt_ids(m):
    return [m.tokenizer.encode(p, add_bos=True) for p in PROMPTS]


SAMPLING = [
    dict(do_sample=False),
    dict(do_sample=True, temperature=1.0),
    dict(do_sample=True, temperature=0.7, top_k=20),
    dict(do_sample=True, temperature=1.3, top_p=0.9),
    dict(do_sample=True, top_k=50, top_p=0.8),
]


@pytest.mark.parametrize("kw", SAMPLING, ids=["greedy", "sample", "top_k", "top_p", "top_k_p"])
def test_cache_equals_no_cache(backend, kw):
    m = model()
    ids = prompt_ids(m)
    a = m.generate(ids, max_new_tokens=20, seed=3, use_cache=True, **kw)
    b = m.generate(ids, max_new_tokens=20, seed=3, use_cache=False, **kw)
    assert a == b
    assert all(len(r) == 20 or (len(r) < 20 and r[-1] == 258) for r in a)  # full length unless <eos>


def test_cache_equals_no_cache_float32():
    with use_backend(dtype="float32"):
        m = model()
        ids = prompt_ids(m)
        for kw in SAMPLING[:2]:
            assert m.generate(ids, max_new_tokens=12, seed=1, **kw) == m.generate(
                ids, max_new_tokens=12, seed=1, use_cache=False, **kw
            )


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kw", SAMPLING[:2] + SAMPLING[4:], ids=["greedy", "sample", "top_k_p"])
def test_batch_equals_each_prompt_alone(backend, use_cache, kw):
    m = model()
    ids = prompt_ids(m)
    together = m.generate(ids, max_new_tokens=15, seed=10, use_cache=use_cache, **kw)
    for r, p in enumerate(ids):  # row r draws from the RNG seeded with seed + r
        assert m.generate([p], max_new_tokens=15, seed=10 + r, use_cache=use_cache, **kw)[0] == together[r]


def test_eos_stops_rows(backend):
    m = model()
    ids = prompt_ids(m)
    free = m.generate(ids, max_new_tokens=15, eos_token_id=-1)  # -1 never occurs: no stop
    stop = free[0][4]
    got = m.generate(ids, max_new_tokens=15, eos_token_id=stop)
    for r in range(len(ids)):
        if stop in free[r]:
            k = free[r].index(stop)
            assert got[r] == free[r][: k + 1]  # eos is the last returned id
        else:
            assert got[r] == free[r]
    assert got == m.generate(ids, max_new_tokens=15, eos_token_id=stop, use_cache=False)


def test_eos_excluded_from_text(backend):
    m = model()
    # make <eos> overwhelmingly likely everywhere: ln_f outputs its bias, aligned with wte[<eos>]
    p = m.named_parameters()
    xp = backend.xp
    p["ln_f.weight"].data[...] = 0.0
    v = xp.ones(32, dtype=backend.dtype)
    p["wte.weight"].data[258] = v
    p["ln_f.bias"].data[...] = v
    assert m.generate([[257, 65]], max_new_tokens=5) == [[258]]
    assert m.sinh_van_ban("chào", max_new_tokens=5) == [""]


def test_n_positions_limit(backend):
    m = model(n_positions=16)
    for use_cache in (True, False):
        out = m.generate([[257] * 10, [257] * 16, [257] * 3], max_new_tokens=20, eos_token_id=-1, use_cache=use_cache)
        assert [len(r) for r in out] == [6, 0, 13]  # prompt + generated never exceeds n_positions
    with pytest.raises(ValueError, match="n_positions"):
        m.generate([[257] * 17])


def test_text_api_and_modes(backend):
    m = model()
    m.train()
    texts = m.sinh_van_ban(PROMPTS, max_new_tokens=8, do_sample=True, seed=2)
    assert m.training  # mode restored
    assert isinstance(texts, list) and len(texts) == len(PROMPTS) and all(isinstance(t, str) for t in texts)
    ids = prompt_ids(m)
    new = m.generate(ids, max_new_tokens=8, do_sample=True, seed=2)
    assert texts == [m.tokenizer.decode([t for t in r if t != 258]) for r in new]
    assert m.sinh_van_ban("Xin chào", max_new_tokens=8) == m.sinh_van_ban(["Xin chào"], max_new_tokens=8)
    assert all(p.grad is None for p in m.parameters())  # no graph, no gradients
    assert m.generate(ids, max_new_tokens=0) == [[] for _ in ids]


def test_greedy_equivalents(backend):
    m = model()
    ids = prompt_ids(m)
    greedy = m.generate(ids, max_new_tokens=10)
    assert m.generate(ids, max_new_tokens=10, do_sample=True, temperature=0.0) == greedy
    assert m.generate(ids, max_new_tokens=10, do_sample=True, top_k=1, seed=5) == greedy
    assert m.generate(ids, max_new_tokens=10, do_sample=True, top_p=1e-9, seed=5) == greedy
    # greedy is the argmax of a full forward pass
    logits = m([ids[0]]).numpy()[0, -1]
    assert greedy[0][0] == int(np.argmax(logits))


def test_argument_errors():
    m = model()
    with pytest.raises(ValueError, match="temperature"):
        m.generate([[257]], temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        m.generate([[257]], top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        m.generate([[257]], top_p=0.0)
    with pytest.raises(TypeError, match="list of id lists"):
        m.generate([257, 65])
    with pytest.raises(ValueError, match="empty prompt"):
        m.generate([[]])
    with pytest.raises(ValueError, match="out of range"):
        m.generate([[300]])


def test_sampling_filters_distribution():
    """top-k / top-p keep the right tokens and sample them in proportion (many rows, one draw each)."""
    with use_backend(dtype="float64"):
        be = get_backend()
        probs = np.array([0.15, 0.5, 0.05, 0.3])
        n = 4000
        logits = be.asarray(np.tile(np.log(probs), (n, 1)))
        rngs = [be.host_rng(s) for s in range(n)]
        # top_p=0.75: smallest set with mass >= 0.75 is {1, 3} (0.5 + 0.3)
        toks = np.array(_choose(logits, rngs, False, 1.0, None, 0.75))
        assert set(toks) == {1, 3}
        assert abs((toks == 1).mean() - 0.5 / 0.8) < 0.03
        # top_k=3 drops token 2
        toks = np.array(_choose(logits, [be.host_rng(s) for s in range(n)], False, 1.0, 3, None))
        assert set(toks) == {0, 1, 3}
        assert abs((toks == 0).mean() - 0.15 / 0.95) < 0.03
        # plain sampling matches the probabilities
        toks = np.array(_choose(logits, [be.host_rng(s) for s in range(n)], False, 1.0, None, None))
        np.testing.assert_allclose(np.bincount(toks, minlength=4) / n, probs, atol=0.03)
