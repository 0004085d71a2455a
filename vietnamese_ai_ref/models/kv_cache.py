"""The KV cache of generation and the attention mask both models share.

What it is for: `KVCache`, the keys and values of every layer for a batch being generated (inference
only), and `blocked_keys`, the attention mask of S new queries per row over Tk keys (causal, right
padding, optional sliding window).
What it is not: a paged or quantised cache; rows that finish are dropped with `keep_rows`.
"""

from __future__ import annotations

from ..backends import get_backend

__all__ = ["KVCache", "blocked_keys"]


class KVCache:
    """Keys and values of every layer: k[i], v[i] are (B, heads, capacity, head_size) backend buffers.

    `lengths` (B,) counts the tokens already stored per row; a new token of row b is written at slot
    lengths[b] (= its position). Models build theirs with `new_kv_cache(batch, capacity)`.
    """

    def __init__(self, n_layer: int, heads: int, head_size: int, batch: int, capacity: int, max_positions: int):
        be = get_backend()
        xp = be.xp
        if capacity > max_positions:
            raise ValueError(f"KV cache capacity {capacity} > n_positions={max_positions}")
        shape = (batch, heads, capacity, head_size)  # (B, H, C, hd)
        self.k = [xp.zeros(shape, dtype=be.dtype) for _ in range(n_layer)]
        self.v = [xp.zeros(shape, dtype=be.dtype) for _ in range(n_layer)]
        self.lengths = xp.zeros(batch, dtype=xp.int64)
        self.capacity = capacity

    def keep_rows(self, rows) -> None:
        """Drop the rows not listed (rows: int indices) from every buffer (finished generations)."""
        xp = get_backend().xp
        rows = xp.asarray(rows, dtype=xp.int64)
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.lengths = self.lengths[rows]


def blocked_keys(xp, start, n_new, S: int, Tk: int, window=None):
    """Attention mask (True = blocked) of shape (B, S, Tk) for S new queries per row.

    Query s of row b sits at absolute position q = start[b] + s; it may attend to key j iff
    j <= q (causal) and (j < start[b] + n_new[b] (a real token) or j == q (itself)). With right
    padding, real queries thus see exactly their real prefix; a padded query sees the real tokens and
    itself, so no row is ever fully masked (no NaN). With a sliding `window`, also q − j < window
    (transformers' rule). Callers add the head axes they need.
    """
    q_pos = start[:, None] + xp.arange(S)[None, :]  # (B, S) absolute query positions
    j = xp.arange(Tk)[None, None, :]  # (1, 1, Tk) key positions
    causal = j <= q_pos[:, :, None]  # (B, S, Tk)
    real = j < (start + n_new)[:, None, None]  # (B, 1, Tk)
    allowed = causal & (real | (j == q_pos[:, :, None]))  # (B, S, Tk)
    if window is not None:
        allowed = allowed & (q_pos[:, :, None] - j < window)  # (B, S, Tk)
    return ~allowed  # (B, S, Tk)
