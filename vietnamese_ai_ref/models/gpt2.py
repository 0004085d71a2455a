"""GPT-2: config, parameters and forward of the first model family.

What it is for: `TransformerLM`, a pre-LN GPT-2 (learned positions, fused qkv, GELU-tanh MLP, final
LayerNorm, LM head tied to the token embedding) over `core`, with GPT-2's parameter names and init, on
the shared causal-LM base (models/base.py: state dict, score head, generation, folders). Given the same
weights, its logits are normative (spec/model.md).

What it is not: a fast or general model zoo. float32/float64 only, no mixed precision, no flash
attention; its init RNG stream is a convenience, not part of the spec. Folder I/O is io/hf.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.errors import SettingError
from ..backends import get_backend
from ..core import autograd as ag
from ..core.autograd import Tensor, no_grad
from ..core.fused import causal_attention
from .base import CausalLM, ConfigDict
from .kv_cache import KVCache, blocked_keys

__all__ = ["GPTConfig", "TransformerLM", "param_specs"]


# ============================ config ===========================================================

@dataclass
class GPTConfig(ConfigDict):
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
                raise SettingError(f"Cấu hình không hợp lệ / invalid config: {name} must be a positive int, got {v!r}")
        if self.n_embd % self.n_head:
            raise SettingError(
                f"Cấu hình không hợp lệ / invalid config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            p = getattr(self, name)
            if not 0.0 <= float(p) < 1.0:
                raise SettingError(f"Cấu hình không hợp lệ / invalid config: {name} must lie in [0, 1), got {p!r}")
        if not float(self.layer_norm_epsilon) > 0.0:
            raise SettingError(f"Cấu hình không hợp lệ / invalid config: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.model_type != "gpt2":
            raise SettingError(f"Cấu hình không hợp lệ / invalid config: model_type must be 'gpt2', got {self.model_type!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


# ============================ parameters and init ==============================================

def param_specs(cfg: GPTConfig, with_score: bool = False):
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
    if with_score:
        specs.append(("score.weight", (1, d), "normal"))
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
    for name, shape, kind in param_specs(cfg):
        if kind == "normal":
            out[name] = be.asarray(rng.standard_normal(shape) * std)
        elif kind == "resid":
            out[name] = be.asarray(rng.standard_normal(shape) * resid_std)
        elif kind == "ones":
            out[name] = xp.ones(shape, dtype=be.dtype)
        else:
            out[name] = xp.zeros(shape, dtype=be.dtype)
    return out


# ============================ the model ========================================================

class TransformerLM(CausalLM):
    """GPT-2: token + position embeddings, n_layer pre-LN blocks, final LayerNorm, head tied to wte."""

    config_class = GPTConfig

    def param_specs(self, with_score: bool = False):
        return param_specs(self.config, with_score)

    def _init_arrays(self) -> dict:
        return _init_arrays(self.config)

    def head_weight(self):
        return self._params["wte.weight"]  # the LM head is tied to the token embedding

    def new_kv_cache(self, batch: int, capacity: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, c.n_head, c.head_size, batch, capacity, c.n_positions)

    def _describe(self) -> str:
        c = self.config
        return (f"n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, vocab_size={c.vocab_size}, "
                f"n_positions={c.n_positions}")

    def _embed(self, ids, pos) -> Tensor:
        p = self._params
        return ag.embedding(p["wte.weight"], ids) + ag.embedding(p["wpe.weight"], pos)  # (B,T,d) + (T,d) or (B,T,d)

    def _final_norm(self, x: Tensor) -> Tensor:
        p = self._params
        return ag.layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], self.config.layer_norm_epsilon)

    def _hidden(self, ids, n_real) -> Tensor:
        xp = get_backend().xp
        B, T = ids.shape
        x = self._embed(ids, xp.arange(T))  # positions 0..T-1: right padding keeps true positions
        x = self._dropout(x, self.config.embd_pdrop)
        blocked = blocked_keys(xp, xp.zeros(B, dtype=xp.int64), n_real, T, T)[:, None]  # (B, 1, T, T)
        x = self._blocks(x, lambda i, t: self._block(i, t, blocked))
        return self._final_norm(x)

    def decode(self, ids, n_new, cache: KVCache) -> Tensor:
        """Hidden states (B, S, d) of S new tokens per row appended after cache.lengths; updates the cache.

        ids (B, S) int array; n_new (B,) how many of the S are real (right padding). Inference only.
        """
        xp = get_backend().xp
        B, S = ids.shape
        start, Tk, pos = self._positions_ready(cache, S)
        with no_grad():
            x = self._embed(ids, pos)  # (B, S, d)
            blocked = blocked_keys(xp, start, n_new, S, Tk)[:, None]  # (B, 1, S, Tk)
            for i in range(self.config.n_layer):
                x = self._block(i, x, blocked, cache, pos)
            x = self._final_norm(x)
        cache.lengths = start + n_new
        return x

    def _block(self, i: int, x: Tensor, blocked, cache: KVCache | None = None, slots=None) -> Tensor:
        p, eps = self._params, self.config.layer_norm_epsilon
        h = f"h.{i}."
        x = x + self._attn(i, ag.layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps), blocked, cache, slots)
        x = x + self._mlp(i, ag.layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps))
        return x

    def _attn(self, i: int, x: Tensor, blocked, cache: KVCache | None = None, slots=None) -> Tensor:
        """Causal multi-head self-attention as two batched matmuls over (B, H, T, hd)."""
        xp = get_backend().xp
        cfg = self.config
        a = f"h.{i}.attn."
        B, T, d = x.shape
        H, hd = cfg.n_head, cfg.head_size
        qkv = self._proj(a + "c_attn", x)  # (B, T, 3d)
        if cache is None and not (self.training and cfg.attn_pdrop > 0.0):
            y = causal_attention(qkv, blocked, H)  # (B, T, d): the fused form of the lines below
        elif cache is not None and not (self.training and cfg.attn_pdrop > 0.0):
            y = Tensor(_cached_attention(qkv.data, blocked, cache, slots, i, H))  # (B, T, d): the lines below, bare
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
        y = self._proj(a + "c_proj", y)  # (B, T, d)
        return self._dropout(y, cfg.resid_pdrop)

    def _mlp(self, i: int, x: Tensor) -> Tensor:
        m = f"h.{i}.mlp."
        x = ag.gelu(self._proj(m + "c_fc", x))  # (B, T, 4d)
        x = self._proj(m + "c_proj", x)  # (B, T, d)
        return self._dropout(x, self.config.resid_pdrop)

    def _proj(self, name: str, x: Tensor) -> Tensor:
        """Conv1D projection `name` (x @ W + b), plus its LoRA adapter when it has one (base._projection)."""
        return self._projection(name, x, in_out=True)


def _cached_attention(qkv, blocked, cache: KVCache, slots, i: int, H: int):
    """The KV-cache branch of `_attn` on bare arrays (decoding: no graph, no dropout): the same array
    operations on the same views, in the same order, as the Tensor lines, so the same bits, without the
    ~12 autograd nodes per layer and token. qkv (B, T, 3d) → y (B, T, d)."""
    be = get_backend()
    xp = be.xp
    B, T, d3 = qkv.shape
    d = d3 // 3
    hd = d // H
    q = qkv[:, :, :d].reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
    rows = xp.arange(B)[:, None]  # (B, 1)
    cache.k[i][rows, :, slots] = qkv[:, :, d:2 * d].reshape(B, T, H, hd)  # (B, T, H, hd) into slots (B, T)
    cache.v[i][rows, :, slots] = qkv[:, :, 2 * d:].reshape(B, T, H, hd)
    Tk = blocked.shape[-1]
    k = cache.k[i][:, :, :Tk]  # (B, H, Tk, hd)
    att = xp.matmul(q, k.transpose(0, 1, 3, 2))  # (B, H, T, Tk)
    att = att * be.asarray(1.0 / math.sqrt(hd), dtype=att.dtype)
    att = xp.where(blocked, be.asarray(float(xp.finfo(att.dtype).min), dtype=att.dtype), att)
    att = be.kernels.softmax_forward(att, axis=-1)
    y = xp.matmul(att, cache.v[i][:, :, :Tk])  # (B, H, T, hd)
    return y.transpose(0, 2, 1, 3).reshape(B, T, d)  # (B, T, d): heads side by side
