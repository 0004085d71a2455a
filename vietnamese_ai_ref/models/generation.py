"""Text generation for every causal LM of `models`: greedy decoding and seeded sampling, with or without a KV cache.

What it is for: `generate(model, input_ids_list, ...)` (token ids in, new token ids out) and
`sinh_van_ban(model, prompts, ...)` (text in, continuation text out), also reachable as the model's
methods. Prompts of different lengths are batched with right padding and handled per row (each row
keeps its own positions, KV-cache slots and RNG), so a batch gives exactly what each prompt gives
alone. Sampling follows transformers' warpers: temperature, then top-k, then top-p (nucleus: keep
the smallest set of most likely tokens whose probability sums to >= top_p, always at least one).

It uses only the decoder interface of models/base.py: `new_kv_cache`, `decode`, `logits_at` (and
`hidden_states` without a cache). Generation stops at any end-of-sequence id: the `eos_token_id`
argument (an int or a list), else the model's `generation_config` ids (read from a folder's
generation_config.json), else the tokenizer's eos.

What it is not: beam search, repetition penalties or streaming. Randomness comes from host RNGs
(`Backend.host_rng`): row r of a batch draws from a generator seeded with `seed + r`, one uniform
number per generated token, so row r equals generating that prompt alone with `seed + r`.
"""

from __future__ import annotations

from ..core.errors import SettingError
from ..backends import get_backend
from ..core.autograd import no_grad

__all__ = ["generate", "sinh_van_ban", "eos_ids"]


def eos_ids(model, eos_token_id=None) -> set:
    """The ids that end a row: `eos_token_id` (an int or a list) when given, else the model's
    `generation_config["eos_token_id"]` (a folder's generation_config.json), else the tokenizer's eos."""
    if eos_token_id is None:
        eos_token_id = (getattr(model, "generation_config", None) or {}).get("eos_token_id")
    if eos_token_id is None or eos_token_id == []:
        eos_token_id = model.tokenizer.eos_token_id
    ids = eos_token_id if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id]
    return {int(i) for i in ids if i is not None}


def _check_args(max_new_tokens, temperature, top_k, top_p):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise SettingError(f"max_new_tokens phải là số nguyên >= 0 / must be an int >= 0, got {max_new_tokens!r}")
    if temperature is None or float(temperature) < 0.0:
        raise SettingError(f"temperature phải >= 0 / temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise SettingError(f"top_k phải là số nguyên >= 1 / top_k must be an int >= 1, got {top_k!r}")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise SettingError(f"top_p phải thuộc (0, 1] / top_p must lie in (0, 1], got {top_p!r}")


def _pad_right(xp, seqs, pad_id):
    """(ids (B, P) int64, lengths (B,) int64) with each row right-padded by pad_id."""
    P = max(len(s) for s in seqs)
    ids = xp.asarray([list(s) + [pad_id] * (P - len(s)) for s in seqs], dtype=xp.int64)  # (B, P)
    return ids, xp.asarray([len(s) for s in seqs], dtype=xp.int64)


def _choose(logits, rngs, greedy, temperature, top_k, top_p) -> list:
    """One next token per row of logits (B, V): argmax, or a sample after temperature/top-k/top-p."""
    be = get_backend()
    xp, k = be.xp, be.kernels
    if greedy:
        return [int(t) for t in xp.argmax(logits, axis=-1).tolist()]  # first maximum on ties
    z = logits.astype(xp.float64) / float(temperature)  # (B, V)
    B, V = z.shape
    if top_k is not None and top_k < V:
        kth = xp.sort(z, axis=-1)[:, V - top_k][:, None]  # (B, 1): the k-th largest logit
        z = xp.where(z < kth, -xp.inf, z)  # ties with the k-th are kept (as transformers)
    if top_p is not None and top_p < 1.0:
        order = xp.argsort(z, axis=-1)  # (B, V) ascending
        zs = xp.take_along_axis(z, order, axis=-1)  # (B, V) sorted logits
        cum = xp.cumsum(k.softmax_forward(zs, axis=-1), axis=-1)  # (B, V)
        drop_sorted = cum <= 1.0 - float(top_p)
        drop_sorted[:, -1] = False  # always keep the most likely token
        drop = xp.zeros_like(drop_sorted)
        drop[xp.arange(B)[:, None], order] = drop_sorted  # back to vocabulary order
        z = xp.where(drop, -xp.inf, z)
    c = xp.cumsum(k.softmax_forward(z, axis=-1), axis=-1)  # (B, V) cumulative probabilities
    u = xp.asarray([r.random() for r in rngs], dtype=xp.float64) * c[:, -1]  # (B,) one draw per row
    tok = xp.minimum((c <= u[:, None]).sum(axis=-1), V - 1)  # first index with c > u (inverse CDF)
    return [int(t) for t in tok.tolist()]


def generate(model, input_ids_list, max_new_tokens: int = 32, temperature: float = 1.0, top_k=None,
             top_p=None, do_sample: bool = False, seed: int = 0, use_cache: bool = True,
             eos_token_id=None) -> list:
    """New token ids for each prompt (a list of int lists). Returns list[list[int]].

    Greedy when do_sample is False or temperature == 0. A row stops after any id of `eos_ids(model,
    eos_token_id)` (the eos id is the last returned id), after max_new_tokens, or when prompt +
    generated reaches config.n_positions (the model has no further positions). A prompt longer than
    n_positions raises. Runs under no_grad in eval mode; the model's mode is restored afterwards.
    """
    be = get_backend()
    xp = be.xp
    cfg = model.config
    _check_args(max_new_tokens, temperature, top_k, top_p)
    if isinstance(input_ids_list, (str, bytes)) or not hasattr(input_ids_list, "__len__"):
        raise TypeError("input_ids_list phải là danh sách các danh sách id / must be a list of id lists")
    if len(input_ids_list) and isinstance(input_ids_list[0], int):
        raise TypeError(
            "input_ids_list phải là danh sách các danh sách id / must be a list of id lists, "
            "e.g. [[257, 88, 105]] for one prompt"
        )
    seqs = [[int(t) for t in p] for p in input_ids_list]
    for r, s in enumerate(seqs):
        if not s:
            raise ValueError(f"Lời nhắc rỗng / empty prompt at index {r}: add a <bos> token")
        if len(s) > cfg.n_positions:
            raise ValueError(
                f"Lời nhắc dài hơn n_positions / prompt {r} longer than n_positions: {len(s)} > {cfg.n_positions}"
            )
        if min(s) < 0 or max(s) >= cfg.vocab_size:
            raise ValueError(f"Mã token ngoài phạm vi / token id out of range in prompt {r}: [0, {cfg.vocab_size})")
    eos = eos_ids(model, eos_token_id)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0  # ids-only models
    greedy = (not do_sample) or float(temperature) == 0.0
    rngs = [be.host_rng(seed + r) for r in range(len(seqs))]
    out = [[] for _ in seqs]
    active = [r for r, s in enumerate(seqs) if len(s) < cfg.n_positions] if max_new_tokens > 0 else []
    if not active:
        return out

    was_training = model.training
    model.eval()
    try:
        with no_grad():
            cache = None
            if use_cache:  # prefill: all prompt tokens at once, then one position per new token
                capacity = min(cfg.n_positions, max(len(seqs[r]) for r in active) + max_new_tokens)
                cache = model.new_kv_cache(len(active), capacity)
                ids, lens = _pad_right(xp, [seqs[r] for r in active], pad)  # (b, P), (b,)
                h = model.decode(ids, lens, cache)  # (b, P, d)
                logits = model.logits_at(h, lens - 1)  # (b, V)
            while True:
                if not use_cache:  # recompute the whole (right-padded) batch every step
                    ids, lens = _pad_right(xp, [seqs[r] for r in active], pad)  # (b, P), (b,)
                    mask = xp.arange(ids.shape[1])[None, :] < lens[:, None]  # (b, P) right padding
                    h = model.hidden_states(ids, mask)  # (b, P, d)
                    logits = model.logits_at(h, lens - 1)  # (b, V)
                toks = _choose(logits, [rngs[r] for r in active], greedy, temperature, top_k, top_p)
                keep = []
                for j, r in enumerate(active):
                    seqs[r].append(toks[j])
                    out[r].append(toks[j])
                    if toks[j] not in eos and len(out[r]) < max_new_tokens and len(seqs[r]) < cfg.n_positions:
                        keep.append(j)
                if not keep:
                    break
                if use_cache:
                    if len(keep) < len(active):
                        cache.keep_rows(keep)
                    active = [active[j] for j in keep]
                    new = xp.asarray([[seqs[r][-1]] for r in active], dtype=xp.int64)  # (b, 1)
                    h = model.decode(new, xp.ones(len(active), dtype=xp.int64), cache)  # (b, 1, d)
                    logits = model.logits_at(h, xp.zeros(len(active), dtype=xp.int64))  # (b, V)
                else:
                    active = [active[j] for j in keep]
    finally:
        model.train(was_training)
    return out


def sinh_van_ban(model, prompts, max_new_tokens: int = 32, temperature: float = 1.0, top_k=None, top_p=None,
                 do_sample: bool = False, seed: int = 0, use_cache: bool = True, add_bos: bool = True) -> list:
    """Sinh văn bản / generate text. prompts: str or list[str]; returns list[str], the continuations only.

    Each prompt is encoded with `model.tokenizer.encode(prompt, add_bos=add_bos)`; generation stops at
    <eos>, which is not part of the returned text (special tokens are skipped when decoding).
    """
    tok = model.tokenizer
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = [tok.encode(p, add_bos=add_bos) for p in prompts]
    new = generate(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   do_sample=do_sample, seed=seed, use_cache=use_cache)
    texts, stops = [], eos_ids(model)
    for row in new:
        if row and row[-1] in stops:
            row = row[:-1]
        texts.append(tok.decode(row, skip_special_tokens=True))
    return texts
