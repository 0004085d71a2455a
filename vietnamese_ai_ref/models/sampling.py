"""Batched sampling of rollouts for the online-RL trainers: the normative rule of spec/rl.md §9.

What it is for: `sample_rollouts(model, prompt_ids, num_generations=G, ...)` draws G completions of
each of many prompts of different lengths in ONE batched KV-cache loop (the prompts are prefilled
once, then their cache rows are repeated G times), with temperature, top-k (0 = off), top-p, any EOS
id stopping its row, `max_completion_length` and the model's `n_positions`. Row r of the batch (the
§1 layout: prompt p's completions in rows p·G … p·G + G − 1) draws its uniforms from its own host
generator `numpy.random.default_rng([seed, rollout_index, r])` (§9.3), so a row's tokens depend only
on that seed, its prompt and the weights: not on the batch, the other rows or the padding, and a
resumed trainer (which recomputes `rollout_index` from its step counter) draws the same tokens.
`next_token_probs` is the distribution of §9.1 and `draw_tokens` the inverse-CDF draw of §9.2, both
in float64 on the host (so CPU and GPU rollouts agree).

It uses only the decoder interface of models/base.py: `new_kv_cache`, `decode`, `logits_at`.

What it is not: `generate()` (models/generation.py, spec 1.0: row seeds `seed + r`, `top_k=None`
for off), beam search, or the log-probabilities the losses use (those come from the trainer's own
forward pass, losses.token_logps, spec/rl.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends import get_backend, host_np
from ..core.autograd import no_grad
from ..core.errors import DataError, SettingError
from .generation import eos_ids

__all__ = ["Rollout", "next_token_probs", "draw_tokens", "sample_rollouts", "row_generators"]


@dataclass
class Rollout:
    """The sampled completions of one rollout (host NumPy arrays; B = prompts × num_generations).

    completion_ids (B, T) int64, right-padded with `pad_id` (T = the longest completion, ≥ 1);
    completion_mask (B, T) int64: 1 up to and including the first EOS (every generated token when
    there is none), 0 after and on padding (all 0 for a row without EOS with mask_truncated_completions);
    has_eos (B,) bool; lengths (B,) int64, the generated tokens per row (EOS included)."""

    completion_ids: object
    completion_mask: object
    has_eos: object
    lengths: object

    def completions(self) -> list:
        """The generated ids of each row as int lists (padding dropped, EOS kept)."""
        return [row[:n].tolist() for row, n in zip(self.completion_ids, self.lengths.tolist())]


def _check_float(name, v, low, high=None, low_open=False):
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
    if ok:
        ok = (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = f"{high}]" if high is not None else "∞)"
        raise SettingError(f"'{name}' phải thuộc {lo}{low}, {hi}, nhận được {v!r} "
                         f"/ '{name}' must lie in {lo}{low}, {hi}, got {v!r}")
    return float(v)


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise SettingError(f"'{name}' phải là số nguyên ≥ {low}, nhận được {v!r} / '{name}' must be an int ≥ {low}, "
                         f"got {v!r}")
    return v


def check_sampling(temperature, top_k, top_p):
    """(temperature, top_k, top_p) after the rules of §9.1: T ≥ 0, K ≥ 0 or None (0/None off), 0 < P ≤ 1 or None."""
    t = _check_float("temperature", temperature, 0.0)
    k = 0 if top_k is None else _check_int("top_k", top_k, 0)
    p = 1.0 if top_p is None else _check_float("top_p", top_p, 0.0, 1.0, low_open=True)
    return t, k, p


def next_token_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
    """The sampling distribution of spec/rl.md §9.1 for host logits (B, V): p (B, V) float64 in id order.

    z = logits / T; top-k keeps every z ≥ the K-th largest (ties kept; 0 or ≥ V: off); top-p orders z
    ascending with ties by id descending, removes the positions whose cumulative softmax is ≤ 1 − P
    (never the last, the most likely); p = softmax(z) with removed tokens at 0. T must be > 0 here."""
    np = host_np
    z = np.asarray(logits, dtype=np.float64) / float(temperature)  # (B, V)
    B, V = z.shape
    if top_k and top_k < V:
        kth = -np.sort(-z, axis=-1)[:, top_k - 1:top_k]  # (B, 1): the K-th largest, repeats counted
        z = np.where(z < kth, -np.inf, z)
    if top_p < 1.0:
        order = V - 1 - np.argsort(z[:, ::-1], axis=-1, kind="stable")  # (B, V) ascending, ties by id descending
        zs = np.take_along_axis(z, order, axis=-1)  # (B, V) z in that order
        q = np.exp(zs - zs[:, -1:])  # (B, V); the last entry is the maximum, finite
        c = np.cumsum(q / q.sum(axis=-1, keepdims=True), axis=-1)  # (B, V)
        drop_sorted = c <= 1.0 - top_p
        drop_sorted[:, -1] = False  # the most likely token always stays
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)  # back to id order
        z = np.where(drop, -np.inf, z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # (B, V); −∞ → 0
    return e / e.sum(axis=-1, keepdims=True)


def draw_tokens(probs, uniforms):
    """The inverse-CDF draw of §9.2: for each row the smallest v with C_v > u·C_{V−1}, C the cumulative
    sum of p in id order (float64); the largest v with p_v > 0 if rounding leaves none. Returns (B,) int64."""
    np = host_np
    p = np.asarray(probs, dtype=np.float64)  # (B, V)
    c = np.cumsum(p, axis=-1)  # (B, V)
    u = np.asarray(uniforms, dtype=np.float64) * c[:, -1]  # (B,)
    tok = (c <= u[:, None]).sum(axis=-1)  # (B,) = min{v : C_v > u·C}
    V = p.shape[1]
    last_pos = V - 1 - np.argmax(p[:, ::-1] > 0, axis=-1)  # (B,) the largest v with p_v > 0
    return np.where(tok >= V, last_pos, tok).astype(np.int64)


def row_generators(seed: int, rollout_index: int, n_rows: int) -> list:
    """The host generators of §9.3 for the rows of one rollout: default_rng([seed, rollout_index, r])."""
    be = get_backend()
    return [be.host_rng([int(seed), int(rollout_index), r]) for r in range(n_rows)]


def _choose(logits, rngs, temperature, top_k, top_p):
    """One token per row of device logits (b, V): greedy at T = 0 (no draw), else §9.1–9.2."""
    np = host_np
    lg = get_backend().to_numpy(logits).astype(np.float64)  # (b, V) host float64
    if temperature == 0.0:
        return np.argmax(lg, axis=-1).astype(np.int64)  # smallest index of the maximum
    probs = next_token_probs(lg, temperature, top_k, top_p)
    return draw_tokens(probs, [r.random() for r in rngs])


def _check_prompts(model, prompt_ids):
    cfg = model.config
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
        raise TypeError("prompt_ids phải là danh sách không rỗng các danh sách id / prompt_ids must be a "
                        "non-empty list of token-id lists")
    seqs = []
    for i, p in enumerate(prompt_ids):
        if isinstance(p, (int, str, bytes)) or not hasattr(p, "__len__") or len(p) == 0:
            raise DataError(f"prompt_ids[{i}] phải là list id không rỗng / prompt_ids[{i}] must be a non-empty "
                             f"list of token ids, got {p!r}")
        s = [int(t) for t in p]
        if min(s) < 0 or max(s) >= cfg.vocab_size:
            raise DataError(f"prompt_ids[{i}]: id ngoài [0, {cfg.vocab_size}) / token id out of range")
        if len(s) >= cfg.n_positions:
            raise DataError(f"prompt_ids[{i}] dài {len(s)} ≥ n_positions={cfg.n_positions}: không còn chỗ sinh "
                             f"/ prompt {i} leaves no position to generate ({len(s)} ≥ n_positions)")
        seqs.append(s)
    return seqs


def _loop(model, seqs, G, max_len, eos, rngs, temperature, top_k, top_p):
    """The batched KV-cache loop; returns the generated ids per row (B = len(seqs) · G)."""
    xp = get_backend().xp
    n_pos = model.config.n_positions
    rows = [seqs[r // G] for r in range(len(seqs) * G)]  # prompt of each row, §1 layout
    out = [[] for _ in rows]
    capacity = min(n_pos, max(len(s) for s in seqs) + max_len)
    cache = model.new_kv_cache(len(seqs), capacity)
    P = max(len(s) for s in seqs)
    ids = xp.asarray([s + [0] * (P - len(s)) for s in seqs], dtype=xp.int64)  # (p, P) right padding
    lens = xp.asarray([len(s) for s in seqs], dtype=xp.int64)  # (p,)
    h = model.decode(ids, lens, cache)  # (p, P, d): each prompt prefilled once
    expand = [r // G for r in range(len(rows))]
    logits = model.logits_at(h, lens - 1)[xp.asarray(expand, dtype=xp.int64)]  # (B, V)
    cache.keep_rows(expand)  # each prompt's cache rows repeated G times
    active = list(range(len(rows)))
    while active:
        toks = _choose(logits, [rngs[r] for r in active], temperature, top_k, top_p).tolist()
        keep = []
        for j, r in enumerate(active):
            out[r].append(toks[j])
            if toks[j] not in eos and len(out[r]) < max_len and len(rows[r]) + len(out[r]) < n_pos:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            cache.keep_rows(keep)
        active = [active[j] for j in keep]
        new = xp.asarray([[out[r][-1]] for r in active], dtype=xp.int64)  # (b, 1)
        h = model.decode(new, xp.ones(len(active), dtype=xp.int64), cache)  # (b, 1, d)
        logits = model.logits_at(h, xp.zeros(len(active), dtype=xp.int64))  # (b, V)
    return out


def _pack(out, eos, pad_id, mask_truncated):
    np = host_np
    B, T = len(out), max(1, max(len(o) for o in out))
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    has_eos = np.zeros(B, dtype=bool)
    for r, o in enumerate(out):
        ids[r, :len(o)] = o
        first = next((t for t, tok in enumerate(o) if tok in eos), None)
        has_eos[r] = first is not None
        n = len(o) if first is None else first + 1
        if not (mask_truncated and first is None):
            mask[r, :n] = 1
    return Rollout(ids, mask, has_eos, np.asarray([len(o) for o in out], dtype=np.int64))


def sample_rollouts(model, prompt_ids, *, num_generations=1, max_completion_length=256, temperature=1.0,
                    top_k=0, top_p=1.0, eos_token_id=None, seed=0, rollout_index=0, row_seeds=None,
                    mask_truncated_completions=False) -> Rollout:
    """Sample `num_generations` completions of each prompt (token-id lists) by spec/rl.md §9. Returns a Rollout.

    Rows follow §1: prompt p's completions are rows p·G … p·G + G − 1. Row r draws from
    default_rng([seed, rollout_index, r]) (or default_rng(row_seeds[r]) when `row_seeds` is given),
    one uniform per sampled token; temperature 0 is greedy (no draw). A row stops after any id of
    `eos_ids(model, eos_token_id)`, after `max_completion_length` tokens, or when prompt + completion
    reaches `n_positions`. Runs under no_grad in eval mode; the model's mode is restored.
    """
    G = _check_int("num_generations", num_generations, 1)
    L = _check_int("max_completion_length", max_completion_length, 1)
    t, k, p = check_sampling(temperature, top_k, top_p)
    seqs = _check_prompts(model, prompt_ids)
    B = len(seqs) * G
    if row_seeds is not None:
        if len(row_seeds) != B:
            raise SettingError(f"row_seeds cần {B} phần tử (số prompt × num_generations), nhận được {len(row_seeds)} "
                             f"/ row_seeds needs {B} entries (prompts × num_generations), got {len(row_seeds)}")
        rngs = [get_backend().host_rng(s) for s in row_seeds]
    else:
        rngs = row_generators(seed, rollout_index, B)
    eos = eos_ids(model, eos_token_id)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out = _loop(model, seqs, G, L, eos, rngs, t, k, p)
    finally:
        model.train(was_training)
    return _pack(out, eos, pad, bool(mask_truncated_completions))
