"""Rollout sampling (models/sampling.py) against spec/rl.md §9: the tokens a seed gives (by hand), batched ==
one prompt at a time, masks and EOS per row, the temperature / top-k / top-p edge cases, transformers'
warpers as an oracle of the distribution, and a chi-square check of the sampled frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.models.llama import LlamaConfig, LlamaLM
from vietnamese_ai_ref.models.sampling import draw_tokens, next_token_probs, sample_rollouts


class _Cache:
    def __init__(self, batch):
        self.lengths = np.zeros(batch, dtype=np.int64)

    def keep_rows(self, rows):
        self.lengths = self.lengths[np.asarray(rows, dtype=np.int64)]


class _Tok:
    pad_token_id, eos_token_id = 0, 3


class StubLM:
    """A decoder with fixed next-token logits (the decoder interface of models/base.py, nothing else):
    logits = table[last token], so a row's distribution depends on its own prefix only."""

    generation_config = None

    def __init__(self, table, n_positions=64):
        self.table = np.asarray(table, dtype=np.float64)  # (V, V): row = previous token
        V = self.table.shape[0]
        self.config = type("C", (), {"n_positions": n_positions, "vocab_size": V})()
        self.tokenizer = _Tok()
        self.training = True

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def new_kv_cache(self, batch, capacity):
        return _Cache(batch)

    def decode(self, ids, n_new, cache):
        cache.lengths = cache.lengths + np.asarray(n_new)
        return np.asarray(ids)  # "hidden states": the ids themselves, (B, S)

    def logits_at(self, h, index):
        return self.table[h[np.arange(h.shape[0]), np.asarray(index)]]  # (B, V)


def constant(logits, V=None):
    row = np.asarray(logits, dtype=np.float64)
    return StubLM(np.tile(row, (len(row), 1)))


# ------------------------------------------------------------------------------ the tokens a seed gives

def test_tokens_of_a_seed_by_hand():
    """p = (0.4, 0.3, 0.2, 0.1), C = (0.4, 0.7, 0.9, 1.0), EOS = 3; token = #{v : C_v <= u}.
    The uniforms of default_rng([7, 0, r]) (PCG64, printed to 4 places):
      r = 0: 0.6251 0.8972 0.7757 0.2252 0.3002 -> 1 2 2 0 0 (5 tokens, no EOS)
      r = 1: 0.8332 0.4843 0.7257 0.9809        -> 2 1 2 3  (EOS)
      r = 2: 0.0301 0.2360 0.9607               -> 0 0 3    (EOS)"""
    m = constant(np.log([0.4, 0.3, 0.2, 0.1]))
    ro = sample_rollouts(m, [[1, 2]], num_generations=3, max_completion_length=5, seed=7, rollout_index=0)
    assert ro.completions() == [[1, 2, 2, 0, 0], [2, 1, 2, 3], [0, 0, 3]]
    np.testing.assert_array_equal(ro.completion_ids, [[1, 2, 2, 0, 0], [2, 1, 2, 3, 0], [0, 0, 3, 0, 0]])
    np.testing.assert_array_equal(ro.completion_mask, [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(ro.has_eos, [False, True, True])
    np.testing.assert_array_equal(ro.lengths, [5, 4, 3])
    assert m.training  # the mode is restored
    # the rollout index is part of the seed: rollout 1 draws other numbers
    other = sample_rollouts(m, [[1, 2]], num_generations=3, max_completion_length=5, seed=7, rollout_index=1)
    assert other.completions() != ro.completions()
    u = np.random.default_rng([7, 1, 0]).random()
    assert other.completions()[0][0] == int(np.sum(np.cumsum([0.4, 0.3, 0.2, 0.1]) <= u))


def test_mask_truncated_and_eos_sets():
    m = constant(np.log([0.4, 0.3, 0.2, 0.1]))
    ro = sample_rollouts(m, [[1, 2]], num_generations=3, max_completion_length=5, seed=7,
                         mask_truncated_completions=True)
    np.testing.assert_array_equal(ro.completion_mask[0], [0, 0, 0, 0, 0])  # no EOS: all masked
    np.testing.assert_array_equal(ro.completion_mask[1], [1, 1, 1, 1, 0])
    # any id of the EOS set stops its row: with {2, 3} row 0 stops at its first 2
    ro2 = sample_rollouts(m, [[1, 2]], num_generations=3, max_completion_length=5, seed=7, eos_token_id=[2, 3])
    assert ro2.completions() == [[1, 2], [2], [0, 0, 3]]
    np.testing.assert_array_equal(ro2.has_eos, [True, True, True])


def test_n_positions_stops_rows():
    m = StubLM(np.tile(np.log([0.4, 0.3, 0.2, 0.1]), (4, 1)), n_positions=5)
    ro = sample_rollouts(m, [[1, 2, 1], [1]], num_generations=2, max_completion_length=10, seed=7)
    for r, c in enumerate(ro.completions()):
        room = 5 - (3 if r < 2 else 1)  # prompt + completion stops at n_positions
        assert len(c) == room or (len(c) < room and c[-1] == 3), (r, c)
        assert ro.has_eos[r] == (3 in c)


# ------------------------------------------------------------------------------ batched == one at a time

def _models():
    return [TransformerLM(GPTConfig(n_positions=48, n_embd=32, n_layer=2, n_head=4, seed=1)),
            LlamaLM(LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48))]


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=20), dict(temperature=1.3, top_p=0.9),
                                dict(top_k=50, top_p=0.8), dict(temperature=0.0)],
                         ids=["plain", "top_k", "top_p", "top_k_p", "greedy"])
def test_batched_equals_one_by_one(backend, kw):
    for m in _models():
        prompts = [m.tokenizer.encode(t, add_bos=True) for t in ("Xin chào", "a", "Hôm nay trời đẹp")]
        ro = sample_rollouts(m, prompts, num_generations=3, max_completion_length=10, seed=11, rollout_index=4, **kw)
        for r, got in enumerate(ro.completions()):
            alone = sample_rollouts(m, [prompts[r // 3]], num_generations=1, max_completion_length=10,
                                    row_seeds=[[11, 4, r]], **kw)
            assert alone.completions()[0] == got, (type(m).__name__, r)
        if kw.get("temperature") == 0.0:  # greedy: every generation of a prompt is the same
            c = ro.completions()
            assert c[0] == c[1] == c[2] and c[3] == c[4] == c[5]
        else:
            assert len({tuple(c) for c in ro.completions()}) > 3


# ------------------------------------------------------------------------------ the distribution, edge cases

def test_top_k_keeps_ties_and_off_values():
    z = np.array([[1.0, 3.0, 3.0, 0.0, 2.0]])
    p = next_token_probs(z, 1.0, top_k=1)
    np.testing.assert_allclose(p, [[0, 0.5, 0.5, 0, 0]])  # both maxima survive K = 1
    p2 = next_token_probs(z, 1.0, top_k=3)  # the 3rd largest is 2: ids 1, 2, 4
    e = np.exp([3.0, 3.0, 2.0])
    np.testing.assert_allclose(p2[0, [1, 2, 4]], e / e.sum(), rtol=1e-15)
    assert p2[0, 0] == p2[0, 3] == 0.0
    full = np.exp(z[0]) / np.exp(z[0]).sum()
    for k in (0, 5, 9):  # 0 = off, K >= V = off
        np.testing.assert_allclose(next_token_probs(z, 1.0, top_k=k)[0], full, rtol=1e-15)


def test_top_p_order_ties_by_id_and_always_one_token():
    # equal logits: read from the most likely end, ties come in increasing id order, so with
    # p = (1/4)·4 and P = 0.5 the cumulative sums (ascending z, ties by id descending) are at ids 3,2,1,0:
    # 0.25, 0.5, 0.75, 1 -> ids 3 and 2 (c <= 0.5) removed, ids 0 and 1 kept
    p = next_token_probs(np.zeros((1, 4)), 1.0, top_p=0.5)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0, 0.0]])
    tiny = next_token_probs(np.array([[0.0, 2.0, 1.0, 2.0]]), 1.0, top_p=1e-9)
    np.testing.assert_array_equal(tiny, [[0.0, 1.0, 0.0, 0.0]])  # the most likely, smallest id on a tie
    z = np.log([[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(next_token_probs(z, 1.0, top_p=0.75), [[0.5 / 0.8, 0.3 / 0.8, 0, 0]], rtol=1e-12)
    np.testing.assert_allclose(next_token_probs(z, 1.0, top_p=1.0), np.exp(z), rtol=1e-12)


def test_temperature_and_greedy():
    z = np.array([[0.0, 1.0, 2.0]])
    e = np.exp(z[0] / 0.5)
    np.testing.assert_allclose(next_token_probs(z, 0.5)[0], e / e.sum(), rtol=1e-14)
    m = constant([0.0, 2.0, 2.0, 1.0])
    ro = sample_rollouts(m, [[0]], num_generations=2, max_completion_length=3, temperature=0.0, seed=1)
    assert ro.completions() == [[1, 1, 1], [1, 1, 1]]  # the smallest index of the maximum, no draw


def test_draw_rounding_fallback_and_zero_probability():
    p = np.array([[0.2, 0.3, 0.0, 0.5, 0.0]])
    assert draw_tokens(p, [0.0]).tolist() == [0]
    assert draw_tokens(p, [0.2 / 1.0 - 1e-12]).tolist() == [0]
    assert draw_tokens(p, [0.5]).tolist() == [3]  # C = .2 .5 .5 1 1: C_1 = 0.5 <= 0.5, id 2 has p 0
    assert draw_tokens(p, [1.0]).tolist() == [3]  # none with C > u·C: the largest id with p > 0


def test_argument_errors():
    m = constant([0.0, 1.0, 2.0, 3.0])
    for kw, name in ((dict(temperature=-1.0), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"),
                     (dict(top_p=1.5), "top_p"), (dict(num_generations=0), "num_generations"),
                     (dict(max_completion_length=0), "max_completion_length")):
        with pytest.raises(ValueError, match=name):
            sample_rollouts(m, [[0]], **kw)
    with pytest.raises(ValueError, match="row_seeds"):
        sample_rollouts(m, [[0]], num_generations=2, row_seeds=[1])
    with pytest.raises(ValueError, match=r"prompt_ids\[1\]"):
        sample_rollouts(m, [[0], []])


def test_warpers_of_transformers_agree():
    """transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (spec/rl.md [HF-warpers]) on
    logits without ties. (At a tie on the top-p boundary they differ: torch's ascending sort keeps equal
    logits in id order, so transformers removes the *smaller* id first; §9 removes the larger id first,
    as test_top_p_order_ties_by_id_and_always_one_token pins.)"""
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(0)
    for T, K, P in ((1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 7, 0.6), (1.0, 3, 0.3)):
        z = rng.standard_normal((6, 12)) * 2
        s = torch.tensor(z)
        s = lp.TemperatureLogitsWarper(T)(None, s)
        if K:
            s = lp.TopKLogitsWarper(K)(None, s)
        if P < 1.0:
            s = lp.TopPLogitsWarper(P)(None, s)
        want = torch.softmax(s, dim=-1).numpy()
        np.testing.assert_allclose(next_token_probs(z, T, top_k=K, top_p=P), want, rtol=1e-12, atol=1e-15)


def test_sampled_frequencies_chi_square():
    """4000 rows, one token each, T = 0.8, top-k 4, top-p 0.9 on fixed logits: the counts follow p by a
    chi-square test (df = support − 1) at the 0.1 % level; tokens outside the support never appear."""
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    m = constant(logits)
    n = 4000
    ro = sample_rollouts(m, [[5]], num_generations=n, max_completion_length=1, temperature=0.8, top_k=4,
                         top_p=0.9, seed=2024)
    counts = np.bincount(ro.completion_ids[:, 0], minlength=6)
    # expected, by the rule: z = l/0.8; top-4 keeps ids 0..3; softmax; top-p 0.9 (ascending cumulative
    # sums 0.0585.., …) removes id 3 (its share ≈ 0.077 <= 0.1); renormalise
    z = logits[:4] / 0.8
    q = np.exp(z) / np.exp(z).sum()
    assert q[3] <= 0.1 < q[3] + q[2]
    p = np.zeros(6)
    p[:3] = q[:3] / q[:3].sum()
    assert counts[3:].sum() == 0
    chi2 = float((((counts[:3] - n * p[:3]) ** 2) / (n * p[:3])).sum())
    assert chi2 < 13.82, (counts, n * p)  # chi-square, df = 2, p = 0.001
    # and the check can fail: the same counts against the distribution without top-p are far off
    wrong = q / q.sum()
    chi2_wrong = float((((counts[:4] - n * wrong) ** 2) / (n * wrong)).sum())
    assert chi2_wrong > 100
