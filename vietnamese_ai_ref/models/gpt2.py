"""The GPT-2 language model of the reference implementation: config, forward, reward head, checkpoints.

What it is for: `TransformerLM`, a pre-LN GPT-2 (learned positions, fused qkv, GELU-tanh MLP, final
LayerNorm, LM head tied to the token embedding) over the autograd of `vietnamese_ai_ref.autograd`,
with GPT-2's parameter names and init; an optional scalar reward head `score.weight`; generation
(greedy / sampling, KV cache — the loop lives in `generation.py`); and checkpoints in the Hugging Face
layout (config.json + model.safetensors with transformers' GPT2LMHeadModel key names), written
atomically. Given the same weights, its logits are normative (spec/model.md).

What it is not: a fast or general model zoo. One architecture, float32/float64 only, no mixed
precision, no flash attention; its init RNG stream is a convenience, not part of the spec.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass

from ..core import autograd as ag
from ..core.autograd import Parameter, Tensor, no_grad
from ..backends import get_backend, host_np
from ..core.errors import TokenizerError
from ..text.loading import load_tokenizer
from ..text.tokenizer import TOKENIZER_CONFIG_NAME, ByteTokenizer
from ..core.errors import CheckpointError

__all__ = ["GPTConfig", "TransformerLM", "KVCache", "CheckpointError", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ============================ config ===========================================================

@dataclass
class GPTConfig:
    """Hyper-parameters, with Hugging Face GPT2Config field names (config.json is transformers-compatible)."""

    vocab_size: int = 259  # number of token ids; ByteTokenizer: 256 bytes + <pad> <bos> <eos>
    n_positions: int = 256  # longest sequence the model accepts (rows of the position table wpe)
    n_embd: int = 128  # model width d
    n_layer: int = 2  # number of transformer blocks h.0 .. h.{n_layer-1}
    n_head: int = 4  # attention heads; head size n_embd // n_head
    layer_norm_epsilon: float = 1e-5  # eps added to the variance inside every LayerNorm
    embd_pdrop: float = 0.0  # dropout on the input embeddings wte[ids] + wpe[pos]
    attn_pdrop: float = 0.0  # dropout on the attention probabilities
    resid_pdrop: float = 0.0  # dropout on each residual branch (after attn.c_proj and mlp.c_proj)
    initializer_range: float = 0.02  # std of the normal init of weight matrices and embeddings
    seed: int = 0  # seeds the init (host RNG) and the dropout stream (backend RNG)
    model_type: str = "gpt2"  # transformers' model_type; only "gpt2" exists here

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Cấu hình không hợp lệ / invalid config: {name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"Cấu hình không hợp lệ / invalid config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            p = getattr(self, name)
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"Cấu hình không hợp lệ / invalid config: {name} must lie in [0, 1), got {p!r}")
        if not float(self.layer_norm_epsilon) > 0.0:
            raise ValueError(f"Cấu hình không hợp lệ / invalid config: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.model_type != "gpt2":
            raise ValueError(f"Cấu hình không hợp lệ / invalid config: model_type must be 'gpt2', got {self.model_type!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a dict of field values; an unknown key raises ValueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"Khoá cấu hình không xác định / unknown config key: {k!r}")
        return cls(**d)


# ============================ parameters and init ==============================================

def _param_specs(cfg: GPTConfig):
    """(name, shape, init) for every parameter in the fixed order; init in normal|resid|zeros|ones."""
    d, V = cfg.n_embd, cfg.vocab_size
    specs = [("wte.weight", (V, d), "normal"), ("wpe.weight", (cfg.n_positions, d), "normal")]
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        specs += [
            (h + "ln_1.weight", (d,), "ones"),
            (h + "ln_1.bias", (d,), "zeros"),
            (h + "attn.c_attn.weight", (d, 3 * d), "normal"),  # Conv1D layout (in, out): x @ W + b
            (h + "attn.c_attn.bias", (3 * d,), "zeros"),
            (h + "attn.c_proj.weight", (d, d), "resid"),
            (h + "attn.c_proj.bias", (d,), "zeros"),
            (h + "ln_2.weight", (d,), "ones"),
            (h + "ln_2.bias", (d,), "zeros"),
            (h + "mlp.c_fc.weight", (d, 4 * d), "normal"),
            (h + "mlp.c_fc.bias", (4 * d,), "zeros"),
            (h + "mlp.c_proj.weight", (4 * d, d), "resid"),
            (h + "mlp.c_proj.bias", (d,), "zeros"),
        ]
    specs += [("ln_f.weight", (d,), "ones"), ("ln_f.bias", (d,), "zeros")]
    return specs


def _init_arrays(cfg: GPTConfig) -> dict:
    """GPT-2 init as backend arrays, drawn from a host RNG seeded by cfg.seed (same numbers on every backend).

    Draws go through the parameters in `_param_specs` order, one standard-normal block per weight.
    """
    be = get_backend()
    xp = be.xp
    rng = be.host_rng(cfg.seed)
    std = cfg.initializer_range
    resid_std = std / math.sqrt(2 * cfg.n_layer)  # GPT-2's scaled init of the residual projections
    out = {}
    for name, shape, kind in _param_specs(cfg):
        if kind == "normal":
            out[name] = be.asarray(rng.standard_normal(shape) * std)
        elif kind == "resid":
            out[name] = be.asarray(rng.standard_normal(shape) * resid_std)
        elif kind == "ones":
            out[name] = xp.ones(shape, dtype=be.dtype)
        else:
            out[name] = xp.zeros(shape, dtype=be.dtype)
    return out


# ============================ KV cache =========================================================

class KVCache:
    """Keys and values of every layer for a batch being generated (inference only, under no_grad).

    k[i], v[i]: (B, n_head, capacity, head_size) buffers of the backend; `lengths` (B,) counts the
    tokens already stored per row. A new token of row b is written at slot lengths[b] (= its position).
    """

    def __init__(self, cfg: GPTConfig, batch: int, capacity: int):
        be = get_backend()
        xp = be.xp
        if capacity > cfg.n_positions:
            raise ValueError(f"KV cache capacity {capacity} > n_positions={cfg.n_positions}")
        n_layer, heads, head_size = self._dims(cfg)
        shape = (batch, heads, capacity, head_size)  # (B, H, C, hd)
        self.k = [xp.zeros(shape, dtype=be.dtype) for _ in range(n_layer)]
        self.v = [xp.zeros(shape, dtype=be.dtype) for _ in range(n_layer)]
        self.lengths = xp.zeros(batch, dtype=xp.int64)
        self.capacity = capacity

    @staticmethod
    def _dims(cfg: GPTConfig):
        """(layers, cached heads, head size) of the model the cache serves."""
        return cfg.n_layer, cfg.n_head, cfg.head_size

    def keep_rows(self, rows) -> None:
        """Drop the rows not listed (rows: int indices) from every buffer (finished generations)."""
        xp = get_backend().xp
        rows = xp.asarray(rows, dtype=xp.int64)
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.lengths = self.lengths[rows]


def _blocked_keys(xp, start, n_new, S: int, Tk: int):
    """Attention mask (True = blocked) of shape (B, 1, S, Tk) for S new queries per row.

    Query s of row b sits at absolute position q = start[b] + s; it may attend to key j iff
    j <= q (causal) and (j < start[b] + n_new[b] (a real token) or j == q (itself)). With right
    padding, real queries thus see exactly their real prefix; a padded query sees the real tokens and
    itself, so no row is ever fully masked (no NaN).
    """
    q_pos = start[:, None] + xp.arange(S)[None, :]  # (B, S) absolute query positions
    j = xp.arange(Tk)[None, None, :]  # (1, 1, Tk) key positions
    causal = j <= q_pos[:, :, None]  # (B, S, Tk)
    real = j < (start + n_new)[:, None, None]  # (B, 1, Tk)
    allowed = causal & (real | (j == q_pos[:, :, None]))  # (B, S, Tk)
    return ~allowed[:, None, :, :]  # (B, 1, S, Tk)


# ============================ fused ops (performance) ===========================================
# Each is one autograd node computing exactly what the composition of basic ops it replaces computes,
# up to float rounding, with as few and as large GEMMs as possible and no zero-filled scatter buffers.

def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x (..., k) @ w (k, n) + b (n,): one 2-D GEMM over all leading axes, the bias added in place.

    Backward: dx = g @ w.T, dw = x.T @ g, db = g summed over rows, each one 2-D GEMM / reduction.
    """
    xp = get_backend().xp
    xd, wd = x.data, w.data
    k, n = wd.shape
    X = xd.reshape(-1, k)  # (N, k)
    Y = xp.matmul(X, wd)  # (N, n)
    if b is not None:
        Y += b.data

    def backward(g):
        G = g.reshape(-1, n)  # (N, n)
        gx = xp.matmul(G, wd.T).reshape(xd.shape) if x.requires_grad else None
        gw = xp.matmul(X.T, G, out=ag.grad_out(w)) if w.requires_grad else None  # into the optimiser's buffer
        gb = _column_sums(xp, G, out=ag.grad_out(b)) if (b is not None and b.requires_grad) else None
        return gx, gw, gb

    parents = (x, w) if b is None else (x, w, b)
    return ag._result(Y.reshape(xd.shape[:-1] + (n,)), parents, backward)


def _column_sums(xp, G, out=None):
    """G (N, n) summed over its rows, as the matrix-vector product ones(N) @ G: BLAS' multi-threaded
    GEMV is 2-4x faster than a reduction over axis 0 (the bias gradient of a linear layer)."""
    return xp.matmul(xp.ones(G.shape[0], dtype=G.dtype), G, out=out)


def _linear_t(x: Tensor, w: Tensor) -> Tensor:
    """x (..., k) @ w.T for w (n, k) (the tied LM head): 2-D GEMMs, dw = g.T @ x laid out like w."""
    xp = get_backend().xp
    xd, wd = x.data, w.data
    n, k = wd.shape
    X = xd.reshape(-1, k)  # (N, k)
    Y = xp.matmul(X, wd.T)  # (N, n)

    def backward(g):
        G = g.reshape(-1, n)  # (N, n)
        gx = xp.matmul(G, wd).reshape(xd.shape) if x.requires_grad else None
        gw = xp.matmul(G.T, X, out=ag.grad_out(w)) if w.requires_grad else None  # (n, k), laid out like w
        return gx, gw

    return ag._result(Y.reshape(xd.shape[:-1] + (n,)), (x, w), backward)


def _causal_attention(qkv: Tensor, blocked, n_head: int) -> Tensor:
    """softmax(mask(q k^T / sqrt(hd))) v for the fused qkv (B, T, 3d) -> (B, T, d), heads side by side.

    The same computation as split + reshape/transpose + matmul + scale + masked_fill + softmax +
    matmul + transpose/reshape, as one node: q, k, v are strided views of qkv (no copies), the scores
    are scaled, masked and normalised in place, att @ v is written straight into the (B, T, H, hd)
    layout, and the backward writes dq, dk, dv into one (B, T, 3d) gradient (no zero-filled slices).
    Blocked positions have probability exactly 0, so their gradient is 0 without a mask pass.
    """
    be = get_backend()
    xp, kern = be.xp, be.kernels
    Q = qkv.data
    B, T, d3 = Q.shape
    d = d3 // 3
    hd = d // n_head
    heads = Q.reshape(B, T, 3, n_head, hd)
    q = heads[:, :, 0].transpose(0, 2, 1, 3)  # (B, H, T, hd) views
    k = heads[:, :, 1].transpose(0, 2, 1, 3)
    v = heads[:, :, 2].transpose(0, 2, 1, 3)
    scale = 1.0 / math.sqrt(hd)
    att = xp.matmul(q, k.transpose(0, 1, 3, 2))  # (B, H, T, T)
    att *= scale
    xp.copyto(att, float(xp.finfo(att.dtype).min), where=blocked)
    kern.softmax_forward(att, axis=-1, out=att)
    y = xp.empty((B, T, d), dtype=Q.dtype)
    xp.matmul(att, v, out=y.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3))

    def backward(g):
        gy = g.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        dqkv = xp.empty((B, T, 3, n_head, hd), dtype=g.dtype)
        dq, dk, dv = (dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        xp.matmul(att.transpose(0, 1, 3, 2), gy, out=dv)
        datt = xp.matmul(gy, v.transpose(0, 1, 3, 2))  # (B, H, T, T)
        kern.softmax_backward(datt, att, axis=-1, out=datt)
        datt *= scale
        xp.matmul(datt, k, out=dq)
        xp.matmul(datt.transpose(0, 1, 3, 2), q, out=dk)
        return (dqkv.reshape(B, T, d3),)

    return ag._result(y, (qkv,), backward)


# ============================ the model ========================================================

class TransformerLM:
    """GPT-2: token + position embeddings, n_layer pre-LN blocks, final LayerNorm, head tied to wte."""

    def __init__(self, config: GPTConfig | None = None, tokenizer=None):
        self.config = config if config is not None else GPTConfig()
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        _check_tokenizer(self.config, self.tokenizer)
        self.training = True  # like torch modules; load() returns eval mode like transformers
        self._dropout_rng = None  # backend RNG seeded by config.seed, created on first use
        self._params = {
            name: Parameter(arr, name=name) for name, arr in _init_arrays(self.config).items()
        }

    @classmethod
    def _blank(cls, config: GPTConfig, tokenizer) -> "TransformerLM":
        """A model object without initialised parameters (copy/load fill them in)."""
        m = cls.__new__(cls)
        m.config = config
        m.tokenizer = tokenizer
        _check_tokenizer(config, tokenizer)
        m.training = True
        m._dropout_rng = None
        m._params = {}
        return m

    # -- parameters ------------------------------------------------------------------------
    def named_parameters(self) -> dict:
        """name -> Parameter in the fixed order of spec/model.md (score.weight last when attached)."""
        return dict(self._params)

    def parameters(self) -> list:
        return list(self._params.values())

    def num_parameters(self) -> int:
        return sum(int(p.size) for p in self._params.values())

    def zero_grad(self) -> None:
        for p in self._params.values():
            p.grad = None

    def state_dict(self) -> dict:
        """name -> host NumPy copy of every parameter (our names, not the checkpoint's)."""
        be = get_backend()
        return {n: be.to_numpy(p.data.copy()) for n, p in self._params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Set every parameter from `state` (name -> array), in place: the Parameter objects stay the
        same (optimizers keep working). Names and shapes must match exactly; `score.weight` in
        `state` attaches a score head if there is none."""
        expected = self._expected_shapes(self.has_score_head or "score.weight" in state)
        arrays = _assign(expected, {n: (n, a) for n, a in state.items()}, display=str)
        for n, arr in arrays.items():
            if n in self._params:
                self._params[n].data = arr
            else:
                self._params[n] = Parameter(arr, name=n)

    def _expected_shapes(self, with_score: bool) -> dict:
        shapes = {name: shape for name, shape, _ in _param_specs(self.config)}
        if with_score:
            shapes["score.weight"] = (1, self.config.n_embd)
        return shapes

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "TransformerLM":
        self.training = bool(mode)
        return self

    def eval(self) -> "TransformerLM":
        return self.train(False)

    def copy(self) -> "TransformerLM":
        """A deep copy: same config values, independent parameters, the same tokenizer object."""
        m = TransformerLM._blank(dataclasses.replace(self.config), self.tokenizer)
        m.training = self.training
        m._params = {n: Parameter(p.data.copy(), name=n) for n, p in self._params.items()}
        return m

    def __repr__(self) -> str:
        c = self.config
        head = ", score_head" if self.has_score_head else ""
        return (
            f"TransformerLM(n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, vocab_size={c.vocab_size}, "
            f"n_positions={c.n_positions}, params={self.num_parameters()}{head})"
        )

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None) -> Tensor:
        return self.forward(input_ids, attention_mask)

    def forward(self, input_ids, attention_mask=None) -> Tensor:
        """Logits (B, T, vocab_size) for input_ids (B, T); attention_mask (B, T) is right padding (1 real, 0 pad)."""
        h = self.hidden_states(input_ids, attention_mask)  # (B, T, d)
        return _linear_t(h, self._params["wte.weight"])  # (B, T, V) = h @ wte.T: head tied to wte

    def hidden_states(self, input_ids, attention_mask=None) -> Tensor:
        """Final hidden states (B, T, n_embd), after ln_f (what the LM head and the reward head read)."""
        ids, n_real = self._prepare(input_ids, attention_mask)
        return self._hidden(ids, n_real)

    def _hidden(self, ids, n_real) -> Tensor:
        xp = get_backend().xp
        p, cfg = self._params, self.config
        B, T = ids.shape
        pos = xp.arange(T)  # positions 0..T-1 (right padding keeps real tokens at their true positions)
        x = ag.embedding(p["wte.weight"], ids) + ag.embedding(p["wpe.weight"], pos)  # (B,T,d) + (T,d)
        x = self._dropout(x, cfg.embd_pdrop)
        blocked = _blocked_keys(xp, xp.zeros(B, dtype=xp.int64), n_real, T, T)  # (B,1,T,T)
        for i in range(cfg.n_layer):
            x = self._block(i, x, blocked)
        return ag.layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], cfg.layer_norm_epsilon)

    def _block(self, i: int, x: Tensor, blocked, cache: KVCache | None = None, slots=None) -> Tensor:
        p, eps = self._params, self.config.layer_norm_epsilon
        h = f"h.{i}."
        x = x + self._attn(i, ag.layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps), blocked, cache, slots)
        x = x + self._mlp(i, ag.layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps))
        return x

    def _attn(self, i: int, x: Tensor, blocked, cache: KVCache | None = None, slots=None) -> Tensor:
        """Causal multi-head self-attention as two batched matmuls over (B, H, T, hd)."""
        xp = get_backend().xp
        p, cfg = self._params, self.config
        a = f"h.{i}.attn."
        B, T, d = x.shape
        H, hd = cfg.n_head, cfg.head_size
        qkv = _linear(x, p[a + "c_attn.weight"], p[a + "c_attn.bias"])  # (B, T, 3d)
        if cache is None and not (self.training and cfg.attn_pdrop > 0.0):
            y = _causal_attention(qkv, blocked, H)  # (B, T, d): the fused form of the lines below
        else:
            q, k, v = ag.split(qkv, 3, axis=-1)  # 3 x (B, T, d)
            q = q.reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
            k = k.reshape(B, T, H, hd)  # (B, T, H, hd)
            v = v.reshape(B, T, H, hd)  # (B, T, H, hd)
            if cache is None:
                k = k.transpose(0, 2, 1, 3)  # (B, H, T, hd)
                v = v.transpose(0, 2, 1, 3)  # (B, H, T, hd)
            else:  # generation: store the new keys/values at their slots, attend over the filled prefix
                rows = xp.arange(B)[:, None]  # (B, 1)
                cache.k[i][rows, :, slots] = k.data  # (B, T, H, hd) into slots (B, T) of (B, H, C, hd)
                cache.v[i][rows, :, slots] = v.data
                Tk = blocked.shape[-1]
                k = Tensor(cache.k[i][:, :, :Tk])  # (B, H, Tk, hd)
                v = Tensor(cache.v[i][:, :, :Tk])  # (B, H, Tk, hd)
            att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))  # (B, H, T, Tk)
            att = ag.masked_fill(att, blocked, float(xp.finfo(att.dtype).min))
            att = ag.softmax(att, axis=-1)
            att = self._dropout(att, cfg.attn_pdrop)
            y = att @ v  # (B, H, T, hd)
            y = y.transpose(0, 2, 1, 3).reshape(B, T, d)  # (B, T, d): heads side by side
        y = _linear(y, p[a + "c_proj.weight"], p[a + "c_proj.bias"])  # (B, T, d)
        return self._dropout(y, cfg.resid_pdrop)

    def _mlp(self, i: int, x: Tensor) -> Tensor:
        p = self._params
        m = f"h.{i}.mlp."
        x = ag.gelu(_linear(x, p[m + "c_fc.weight"], p[m + "c_fc.bias"]))  # (B, T, 4d)
        x = _linear(x, p[m + "c_proj.weight"], p[m + "c_proj.bias"])  # (B, T, d)
        return self._dropout(x, self.config.resid_pdrop)

    def _dropout(self, x: Tensor, prob: float) -> Tensor:
        if not self.training or prob == 0.0:
            return x
        if self._dropout_rng is None:
            self._dropout_rng = get_backend().rng(self.config.seed)
        return ag.dropout(x, prob, self._dropout_rng, training=True)

    def _prepare(self, input_ids, attention_mask):
        """Validate inputs; returns (ids (B,T) int array, n_real (B,) real-token count per row)."""
        be = get_backend()
        xp = be.xp
        ids = input_ids.data if isinstance(input_ids, Tensor) else be.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids phải có dạng (B, T) / input_ids must have shape (B, T), got {tuple(ids.shape)}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids phải là số nguyên / input_ids must be integers, got dtype {ids.dtype}")
        B, T = ids.shape
        if B == 0 or T == 0:
            raise ValueError(f"input_ids rỗng / empty input_ids of shape {(B, T)}")
        if T > self.config.n_positions:
            raise ValueError(
                f"Chuỗi dài hơn n_positions / sequence longer than n_positions: T={T} > {self.config.n_positions}"
            )
        if bool(((ids < 0) | (ids >= self.config.vocab_size)).any()):
            raise ValueError(
                f"Mã token ngoài phạm vi / token id out of range: ids must lie in [0, {self.config.vocab_size})"
            )
        if attention_mask is None:
            return ids, xp.full(B, T, dtype=xp.int64)
        m = attention_mask.data if isinstance(attention_mask, Tensor) else be.asarray(attention_mask)
        if tuple(m.shape) != (B, T):
            raise ValueError(
                f"attention_mask sai kích thước / attention_mask shape {tuple(m.shape)} != input_ids shape {(B, T)}"
            )
        m = m != 0  # (B, T) bool
        if bool((m[:, 1:] & ~m[:, :-1]).any()):
            raise ValueError(
                "attention_mask phải là đệm bên phải / attention_mask must be right padding: "
                "each row 1...1 0...0 (real tokens first)"
            )
        return ids, m.sum(axis=1).astype(xp.int64)

    # -- reward head -----------------------------------------------------------------------
    @property
    def has_score_head(self) -> bool:
        return "score.weight" in self._params

    def add_score_head(self, seed: int | None = None) -> Parameter:
        """Attach `score.weight` (1, n_embd), init normal with std 1/sqrt(n_embd+1) from a host RNG.

        seed defaults to config.seed + 1. Returns the new Parameter. Raises if a head is attached.
        """
        if self.has_score_head:
            raise ValueError("Mô hình đã có đầu điểm / the model already has a score head (score.weight)")
        d = self.config.n_embd
        rng = get_backend().host_rng(self.config.seed + 1 if seed is None else seed)
        w = Parameter(get_backend().asarray(rng.standard_normal((1, d)) / math.sqrt(d + 1)), name="score.weight")
        self._params["score.weight"] = w
        return w

    def score(self, input_ids, attention_mask=None) -> Tensor:
        """Scalar score per row (B,): hidden state of the last real token (index sum(mask)-1) @ score.weight."""
        if not self.has_score_head:
            raise ValueError("Chưa có đầu điểm / no score head: call add_score_head() first")
        xp = get_backend().xp
        ids, n_real = self._prepare(input_ids, attention_mask)
        if bool((n_real == 0).any()):
            raise ValueError("Hàng không có token thật / a row has no real token (attention_mask all 0)")
        h = self._hidden(ids, n_real)  # (B, T, d)
        B = ids.shape[0]
        last = h[(xp.arange(B), n_real - 1)]  # (B, d)
        return (last @ self._params["score.weight"].T).reshape(B)  # (B, 1) -> (B,)

    # -- generation (loop and sampling in generation.py) -------------------------------------
    def _hidden_cached(self, ids, n_new, cache: KVCache) -> Tensor:
        """Hidden states (B, S, d) of S new tokens per row appended after cache.lengths; updates the cache.

        ids (B, S) int array; n_new (B,) how many of the S are real (right padding). Inference only.
        """
        xp = get_backend().xp
        p, cfg = self._params, self.config
        B, S = ids.shape
        start = cache.lengths  # (B,)
        Tk = int((start + S).max())
        if Tk > cache.capacity:
            raise ValueError(f"KV cache đầy / KV cache full: needs {Tk} slots, capacity {cache.capacity}")
        pos = start[:, None] + xp.arange(S)[None, :]  # (B, S) absolute positions = cache slots
        with no_grad():
            x = ag.embedding(p["wte.weight"], ids) + ag.embedding(p["wpe.weight"], pos)  # (B, S, d)
            blocked = _blocked_keys(xp, start, n_new, S, Tk)  # (B, 1, S, Tk)
            for i in range(cfg.n_layer):
                x = self._block(i, x, blocked, cache, pos)
            x = ag.layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], cfg.layer_norm_epsilon)
        cache.lengths = start + n_new
        return x

    def _logits_at(self, h: Tensor, index):
        """LM logits (B, V) array of h (B, T, d) at one position per row (index (B,) ints)."""
        xp = get_backend().xp
        rows = h.data[xp.arange(h.shape[0]), index]  # (B, d)
        return rows @ self._params["wte.weight"].data.T  # (B, V)

    def generate(self, input_ids_list, max_new_tokens: int = 32, temperature: float = 1.0, top_k=None,
                 top_p=None, do_sample: bool = False, seed: int = 0, use_cache: bool = True,
                 eos_token_id=None) -> list:
        """New token ids per prompt (eos included when produced). See generation.generate."""
        from ..models.generation import generate

        return generate(self, input_ids_list, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, do_sample=do_sample, seed=seed, use_cache=use_cache, eos_token_id=eos_token_id)

    def sinh_van_ban(self, prompts, max_new_tokens: int = 32, temperature: float = 1.0, top_k=None, top_p=None,
                     do_sample: bool = False, seed: int = 0, use_cache: bool = True, add_bos: bool = True) -> list:
        """Sinh văn bản / generate text: the continuation (str) of each prompt. See generation.sinh_van_ban."""
        from ..models.generation import sinh_van_ban

        return sinh_van_ban(self, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, do_sample=do_sample, seed=seed, use_cache=use_cache, add_bos=add_bos)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write a Hugging Face style checkpoint directory at `path`, atomically.

        Files: config.json, model.safetensors (transformers' GPT2LMHeadModel key names, no lm_head.weight:
        it is tied), tokenizer_config.json. Everything is written into a temporary sibling directory,
        fsynced, then renamed into place; an existing checkpoint at `path` is replaced only once the
        new one is complete. An existing non-empty directory without config.json is never replaced.
        """
        be = get_backend()
        tensors = {
            _to_file_key(n): host_np.ascontiguousarray(be.to_numpy(p.data)) for n, p in self._params.items()
        }
        dtype = str(next(iter(tensors.values())).dtype)
        write_checkpoint_dir(path, self._config_json(dtype), tensors, self.tokenizer)

    luu = save  # lưu: save

    def _config_json(self, dtype: str) -> dict:
        from .._version import __version__

        c, tok = self.config, self.tokenizer
        arch = ["GPT2LMHeadModel"] + (["GPT2ForSequenceClassification"] if self.has_score_head else [])
        out = {"architectures": arch}
        out.update(c.to_dict())
        out.update({
            "activation_function": "gelu_new",
            "n_inner": None,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "torch_dtype": dtype,
            "score_head": self.has_score_head,
            "vietnamese_ai_ref_version": __version__,
        })
        if self.has_score_head:  # one label, as GPT2ForSequenceClassification(num_labels=1) expects
            out["id2label"] = {"0": "LABEL_0"}
            out["label2id"] = {"LABEL_0": 0}
        return out

    @classmethod
    def load(cls, path, tokenizer=None) -> "TransformerLM":
        """Read a checkpoint written by `save` (or a transformers GPT-2 folder); the model is in eval mode.

        Parameters are cast to the backend's dtype (a float64 checkpoint under a float64 backend is
        exact). `tokenizer` overrides the saved tokenizer (then tokenizer_config.json may be absent).
        """
        from safetensors.numpy import load_file

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise CheckpointError(f"Không tìm thấy thư mục checkpoint / checkpoint directory not found: {path}")
        for fname in (CONFIG_NAME, WEIGHTS_NAME) + (() if tokenizer is not None else (TOKENIZER_CONFIG_NAME,)):
            if not os.path.isfile(os.path.join(path, fname)):
                raise CheckpointError(f"Thiếu tệp / missing file: {os.path.join(path, fname)}")
        config, score_head = _read_config_json(os.path.join(path, CONFIG_NAME))
        if tokenizer is None:
            try:
                tokenizer = load_tokenizer(path)
            except TokenizerError as e:
                raise CheckpointError(str(e)) from e
        try:
            arrays = load_file(os.path.join(path, WEIGHTS_NAME))
        except Exception as e:  # safetensors raises its own error types on a corrupt file
            raise CheckpointError(f"Không đọc được / cannot read {os.path.join(path, WEIGHTS_NAME)}: {e}") from e
        model = cls._blank(config, tokenizer)
        if score_head is None:
            score_head = "score.weight" in arrays
        named = _from_file_keys(arrays)
        arrays = _assign(model._expected_shapes(score_head), named)
        model._params = {n: Parameter(a, name=n) for n, a in arrays.items()}
        model.eval()
        return model

    tai = load  # tải: load


# ============================ checkpoint helpers ===============================================

def _check_tokenizer(cfg: GPTConfig, tok) -> None:
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"Tokenizer lớn hơn mô hình / tokenizer vocab_size {tok.vocab_size} > config.vocab_size {cfg.vocab_size}"
        )


def _to_file_key(name: str) -> str:
    """Our parameter name -> transformers' key (GPT2LMHeadModel / GPT2ForSequenceClassification)."""
    return name if name == "score.weight" else "transformer." + name


_BUFFER_KEY = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # old GPT-2 files store the causal mask


def _from_file_keys(arrays: dict) -> dict:
    """File key -> array, mapped to {our name: (file key, array)}; ignores mask buffers, checks lm_head."""
    prefixed = any(k.startswith("transformer.") for k in arrays)
    named = {}
    lm_head = None
    for key, arr in arrays.items():
        if key == "lm_head.weight":
            lm_head = arr
            continue
        if key == "score.weight":
            name = key
        elif prefixed:  # "!" + key: never an expected name, so reported as unexpected
            name = key[len("transformer."):] if key.startswith("transformer.") else "!" + key
        else:  # a GPT2Model file (no prefix)
            name = key
        if _BUFFER_KEY.match(name):
            continue
        named[name] = (key, arr)
    if lm_head is not None:
        wte = named.get("wte.weight")
        if wte is None or wte[1].shape != lm_head.shape or not bool((wte[1] == lm_head).all()):
            raise CheckpointError(
                "lm_head.weight khác wte / lm_head.weight differs from transformer.wte.weight: untied heads are not supported"
            )
    return named


def _assign(expected: dict, named: dict, display=_to_file_key) -> dict:
    """Backend arrays in `expected` order from {name: (display key, array)}; strict names and shapes.

    `display` names a missing parameter in the error (the checkpoint key by default)."""
    be = get_backend()
    missing = [n for n in expected if n not in named]
    if missing:
        raise CheckpointError("Thiếu tensor / missing tensor: " + ", ".join(display(n) for n in missing))
    unexpected = [named[n][0] for n in named if n not in expected]
    if unexpected:
        raise CheckpointError("Tensor không mong đợi / unexpected tensor: " + ", ".join(unexpected))
    out = {}
    for n, shape in expected.items():
        key, arr = named[n]
        arr_shape = tuple(getattr(arr, "shape", ()))
        if arr_shape != tuple(shape):
            raise CheckpointError(
                f"Sai kích thước tensor / wrong shape for tensor {key}: expected {tuple(shape)}, found {arr_shape}"
            )
        host = be.to_numpy(arr.data if isinstance(arr, Tensor) else arr)
        if host.dtype.kind != "f":
            raise CheckpointError(f"Tensor {key} phải là số thực / must be floating point, found dtype {host.dtype}")
        out[n] = be.asarray(host.astype(be.dtype, copy=True))
    return out


# HF GPT2Config keys we accept besides our dataclass fields: value None = ignored (informational);
# otherwise a tuple of the values compatible with this architecture.
_IGNORED_KEYS = {
    "architectures", "torch_dtype", "dtype", "transformers_version", "vietnamese_ai_ref_version",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "n_ctx", "_name_or_path",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "id2label", "label2id", "task_specific_params", "problem_type",
    "reorder_and_upcast_attn", "output_past",
}
_CHECKED_KEYS = {
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "tie_word_embeddings": (True,),
    "add_cross_attention": (False,),
}


def _read_json(path) -> dict:
    """The JSON object in `path` (a config file); CheckpointError if it is not valid JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"JSON hỏng / invalid JSON in {path}: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} phải là một đối tượng JSON / must hold a JSON object")
    return raw


def _read_config_json(path: str):
    """(GPTConfig, score_head flag or None) from config.json; unknown keys raise CheckpointError."""
    raw = _read_json(path)
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    kwargs = {}
    score_head = None
    for key, value in raw.items():
        if key in fields:
            kwargs[key] = value
        elif key == "score_head":
            score_head = bool(value)
        elif key == "n_inner":
            if value is not None and value != 4 * raw.get("n_embd", GPTConfig.n_embd):
                raise CheckpointError(f"Không hỗ trợ / unsupported config value: n_inner={value!r} (only 4*n_embd)")
        elif key in _CHECKED_KEYS:
            if value not in _CHECKED_KEYS[key]:
                raise CheckpointError(f"Không hỗ trợ / unsupported config value: {key}={value!r} in {path}")
        elif key not in _IGNORED_KEYS:
            raise CheckpointError(f"Khoá cấu hình không xác định / unknown config key: {key!r} in {path}")
    try:
        return GPTConfig(**kwargs), score_head
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Cấu hình không hợp lệ / invalid config in {path}: {e}") from e


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint_dir(path, config_json: dict, tensors: dict, tokenizer) -> None:
    """Write config.json, model.safetensors (host arrays) and the tokenizer's files (when it can save)
    into a directory at `path`, atomically: a temporary sibling directory, fsync, then rename.

    An existing checkpoint at `path` is replaced only once the new one is complete; an existing
    non-empty directory without config.json, or a plain file, is never replaced."""
    from safetensors.numpy import save_file

    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointError(f"Đường dẫn đã tồn tại và không phải thư mục / path exists and is not a directory: {path}")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise CheckpointError(
            f"Không ghi đè thư mục không phải checkpoint / refusing to replace a non-empty directory "
            f"without {CONFIG_NAME}: {path}"
        )
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config_json, f, ensure_ascii=False, indent=2)
            f.write("\n")
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        if hasattr(tokenizer, "save"):
            tokenizer.save(tmp)
        for fname in os.listdir(tmp):
            _fsync_file(os.path.join(tmp, fname))
        _fsync_dir(tmp)
        _replace_dir(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(src: str, dst: str) -> None:
    """Rename the complete directory `src` to `dst`; an existing `dst` is moved aside first, then removed."""
    if not os.path.lexists(dst):
        os.rename(src, dst)
        return
    parent, name = os.path.split(dst)
    old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)
