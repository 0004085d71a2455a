"""The Llama family (Llama, Qwen2, Mistral): config, parameters and forward of the second model family.

What it is for: `LlamaLM`, a pre-norm decoder with RMSNorm, rotary position embeddings (transformers'
`rotate_half` convention; linear or Llama 3 scaling, models/rope.py), grouped-query attention (optional
sliding window), a SwiGLU MLP and an LM head tied to the embedding or not, with transformers' parameter
names (`model.layers.0.self_attn.q_proj.weight`, ...) and nn.Linear's (out, in) weight layout (every
projection computes x @ W.T + b), on the shared causal-LM base (models/base.py), so every trainer and
generation use it unchanged. Its ops (`silu`, `rms_norm`, `apply_rotary`, `linear`) live in core/fused.py.

What it is not: a general model zoo. No other rope scaling, no mixture of experts, no quantised
weights, no mixed precision, no flash attention; float32/float64 only. Its init RNG stream is a
convenience (real use loads weights with `tai_mo_hinh`). Folder I/O is io/hf.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..backends import get_backend
from ..core import autograd as ag
from ..core.autograd import Tensor, no_grad
from ..core.errors import SettingError
from ..core.fused import apply_rotary, rms_norm, silu
from .base import CausalLM, ConfigDict
from .kv_cache import KVCache, blocked_keys
from .rope import rope_inv_freq

__all__ = ["LlamaConfig", "LlamaLM", "MODEL_TYPES", "rope_cos_sin", "param_specs", "normalize_rope_scaling"]

#: transformers' model_type values this architecture covers.
MODEL_TYPES = ("llama", "qwen2", "mistral")
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _invalid(msg: str) -> SettingError:
    return SettingError(f"Cấu hình không hợp lệ / invalid config: {msg}")


# ============================ config ===========================================================

@dataclass
class LlamaConfig(ConfigDict):
    """Hyper-parameters with transformers' LlamaConfig / Qwen2Config / MistralConfig field names."""

    vocab_size: int = 259  # number of token ids (rows of embed_tokens); ByteTokenizer needs 259
    hidden_size: int = 128  # model width d
    intermediate_size: int = 352  # width of the SwiGLU MLP (gate_proj/up_proj outputs)
    num_hidden_layers: int = 2  # decoder layers model.layers.0 .. model.layers.{L-1}
    num_attention_heads: int = 4  # query heads H
    num_key_value_heads: int | None = None  # key/value heads (grouped-query attention); None = H
    head_dim: int | None = None  # size of one head (even, for rotary); None = hidden_size // H
    max_position_embeddings: int = 256  # longest sequence the model accepts (= n_positions)
    rms_norm_eps: float = 1e-6  # eps added to mean(x²) inside every RMSNorm
    rope_theta: float = 10000.0  # base of the rotary frequencies theta^(-2i/head_dim)
    rope_scaling: dict | None = None  # None, {"rope_type": "linear", "factor": f} or "llama3" (normalize_rope_scaling)
    attention_bias: bool | None = None  # biases on q_proj/k_proj/v_proj; None = the model_type's default
    o_proj_bias: bool | None = None  # bias on o_proj; None = llama: attention_bias, qwen2/mistral: False
    mlp_bias: bool = False  # biases on gate_proj/up_proj/down_proj (Llama's mlp_bias)
    tie_word_embeddings: bool = False  # LM head = embed_tokens (no lm_head.weight) when True
    sliding_window: int | None = None  # keys older than this many positions are masked in sliding layers
    layer_types: list | None = None  # per layer "full_attention" | "sliding_attention"; None = derived
    attention_dropout: float = 0.0  # dropout on the attention probabilities (training only)
    initializer_range: float = 0.02  # std of the normal init of projections and embeddings
    seed: int = 0  # seeds the init (host RNG) and the dropout stream (backend RNG)
    model_type: str = "llama"  # transformers' model_type: "llama", "qwen2" or "mistral"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise _invalid(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            if isinstance(self.hidden_size, int) and self.hidden_size % self.num_attention_heads:
                raise _invalid(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads} (or set head_dim)"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _invalid(f"{name} must be a positive int, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise _invalid(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise _invalid(f"head_dim={self.head_dim} must be even (rotary embeddings rotate pairs)")
        if not float(self.rms_norm_eps) > 0.0:
            raise _invalid(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not float(self.rope_theta) > 0.0:
            raise _invalid(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not 0.0 <= float(self.attention_dropout) < 1.0:
            raise _invalid(f"attention_dropout must lie in [0, 1), got {self.attention_dropout!r}")
        self.rope_scaling = normalize_rope_scaling(self.rope_scaling)
        defaults = {"llama": (False, None), "qwen2": (True, False), "mistral": (False, False)}[self.model_type]
        if self.attention_bias is None:
            self.attention_bias = defaults[0]
        if self.o_proj_bias is None:
            self.o_proj_bias = self.attention_bias if self.model_type == "llama" else defaults[1]
        for name in ("attention_bias", "o_proj_bias", "mlp_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or isinstance(self.sliding_window, bool) or self.sliding_window < 1
        ):
            raise _invalid(f"sliding_window must be None or a positive int, got {self.sliding_window!r}")
        if self.layer_types is None:
            kind = "full_attention" if self.sliding_window is None else "sliding_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers or any(t not in _LAYER_TYPES for t in self.layer_types):
            raise _invalid(
                f"layer_types must list {self.num_hidden_layers} entries among {_LAYER_TYPES}, got {self.layer_types!r}"
            )
        if "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise _invalid("layer_types has 'sliding_attention' but sliding_window is None")

    # GPT-2 style aliases read by the shared code (trainers, generation, model.KVCache)
    @property
    def n_positions(self) -> int:
        return self.max_position_embeddings

    @property
    def n_layer(self) -> int:
        return self.num_hidden_layers

    @property
    def n_head(self) -> int:
        return self.num_attention_heads

    @property
    def n_embd(self) -> int:
        return self.hidden_size

    @property
    def head_size(self) -> int:
        return self.head_dim

    @property
    def n_kv_head(self) -> int:
        return self.num_key_value_heads


def normalize_rope_scaling(rs):
    """None (plain rotary), {"rope_type": "linear", "factor": f} or {"rope_type": "llama3", "factor": f,
    "low_freq_factor": lo, "high_freq_factor": hi, "original_max_position_embeddings": n}; any other
    rope type raises naming it.

    Accepts transformers' spellings: {"type": ...} (old), {"rope_type": ...} (new), "default" = None.
    """
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise _invalid(f"rope_scaling must be None or a dict, got {rs!r}")
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind in (None, "default"):
        return None
    if kind not in _ROPE_KEYS:
        raise _invalid(
            f"rope_scaling loại {kind!r} không được hỗ trợ / unsupported rope_scaling type {kind!r} "
            f"(supported: None/'default', 'linear', 'llama3')"
        )
    known = {"rope_type", "type", "rope_theta", "original_max_position_embeddings", *_ROPE_KEYS[kind]}
    extra = sorted(set(rs) - known)
    if extra:
        raise _invalid(f"rope_scaling has unsupported keys {extra} for type {kind!r}")
    out = {"rope_type": kind}
    for key in _ROPE_KEYS[kind]:
        v = rs.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise _invalid(f"rope_scaling.{key} must be a number > 0, got {v!r}")
        out[key] = int(v) if key == "original_max_position_embeddings" else float(v)
    if kind == "llama3" and not out["high_freq_factor"] > out["low_freq_factor"]:
        raise _invalid(f"rope_scaling.high_freq_factor={out['high_freq_factor']} must exceed "
                       f"low_freq_factor={out['low_freq_factor']}")
    return out


# rope type -> the numbers it needs (all > 0)
_ROPE_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def rope_cos_sin(cfg: LlamaConfig, positions):
    """cos, sin tables (*positions.shape, head_dim) in the backend dtype, computed in float64.

    inv_freq from `models.rope.rope_inv_freq` (theta^(-2i/head_dim), linear or llama3 scaled); angles are
    position · inv_freq, repeated over both halves as transformers does (cat(freqs, freqs)).
    """
    be = get_backend()
    xp = be.xp
    hd = cfg.head_dim
    inv = xp.asarray(rope_inv_freq(hd, cfg.rope_theta, cfg.rope_scaling))  # (hd/2,) float64
    f = positions.astype(xp.float64)[..., None] * inv  # (..., hd/2)
    emb = xp.concatenate([f, f], axis=-1)  # (..., hd)
    return xp.cos(emb).astype(be.dtype), xp.sin(emb).astype(be.dtype)


# ============================ parameters =======================================================

def param_specs(cfg: LlamaConfig, with_score: bool = False):
    """(name, shape, init) for every parameter in the fixed order; init in normal|zeros|ones."""
    d, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    q_out, kv_out, m = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.intermediate_size
    specs = [("model.embed_tokens.weight", (V, d), "normal")]
    for i in range(L):
        p = f"model.layers.{i}."
        specs.append((p + "input_layernorm.weight", (d,), "ones"))
        for proj, out in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            specs.append((p + f"self_attn.{proj}.weight", (out, d), "normal"))  # nn.Linear layout (out, in)
            if cfg.attention_bias:
                specs.append((p + f"self_attn.{proj}.bias", (out,), "zeros"))
        specs.append((p + "self_attn.o_proj.weight", (d, q_out), "normal"))
        if cfg.o_proj_bias:
            specs.append((p + "self_attn.o_proj.bias", (d,), "zeros"))
        specs.append((p + "post_attention_layernorm.weight", (d,), "ones"))
        for proj, shape in (("gate_proj", (m, d)), ("up_proj", (m, d)), ("down_proj", (d, m))):
            specs.append((p + f"mlp.{proj}.weight", shape, "normal"))
            if cfg.mlp_bias:
                specs.append((p + f"mlp.{proj}.bias", (shape[0],), "zeros"))
    specs.append(("model.norm.weight", (d,), "ones"))
    if not cfg.tie_word_embeddings:
        specs.append(("lm_head.weight", (V, d), "normal"))
    if with_score:
        specs.append(("score.weight", (1, d), "normal"))
    return specs


def _init_arrays(cfg: LlamaConfig) -> dict:
    """Normal(0, initializer_range) projections/embeddings, zero biases, unit norms, from a host RNG."""
    be = get_backend()
    xp = be.xp
    rng = be.host_rng(cfg.seed)
    out = {}
    for name, shape, kind in param_specs(cfg):
        if kind == "normal":
            out[name] = be.asarray(rng.standard_normal(shape) * cfg.initializer_range)
        elif kind == "ones":
            out[name] = xp.ones(shape, dtype=be.dtype)
        else:
            out[name] = xp.zeros(shape, dtype=be.dtype)
    return out


# ============================ the model ========================================================

class LlamaLM(CausalLM):
    """Llama-family decoder: embed_tokens, pre-RMSNorm layers (GQA attention with rotary, SwiGLU MLP),
    final RMSNorm, LM head (lm_head or tied to embed_tokens)."""

    config_class = LlamaConfig

    def param_specs(self, with_score: bool = False):
        return param_specs(self.config, with_score)

    def _init_arrays(self) -> dict:
        return _init_arrays(self.config)

    def head_weight(self):
        p = self._params
        return p["model.embed_tokens.weight"] if self.config.tie_word_embeddings else p["lm_head.weight"]

    def new_kv_cache(self, batch: int, capacity: int) -> KVCache:
        """A KV cache of num_key_value_heads heads per layer (only the KV heads are cached)."""
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, batch, capacity, c.n_positions)

    def _describe(self) -> str:
        c = self.config
        return (f"model_type={c.model_type!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}kv, vocab_size={c.vocab_size}, "
                f"n_positions={c.n_positions}, tied={c.tie_word_embeddings}")

    def _masks(self, xp, start, n_new, S: int, Tk: int) -> dict:
        """Blocked-key masks (B, 1, 1, S, Tk) per layer type present in config.layer_types."""
        cfg = self.config
        out = {}
        for kind in set(cfg.layer_types):
            window = cfg.sliding_window if kind == "sliding_attention" else None
            out[kind] = blocked_keys(xp, start, n_new, S, Tk, window)[:, None, None]  # over kv heads and groups
        return out

    def _hidden(self, ids, n_real) -> Tensor:
        xp = get_backend().xp
        p, cfg = self._params, self.config
        B, T = ids.shape
        cos, sin = rope_cos_sin(cfg, xp.arange(T))  # (T, hd): right padding keeps true positions
        masks = self._masks(xp, xp.zeros(B, dtype=xp.int64), n_real, T, T)
        x = ag.embedding(p["model.embed_tokens.weight"], ids)  # (B, T, d)
        x = self._blocks(x, lambda i, t: self._layer(i, t, masks[cfg.layer_types[i]], cos, sin))
        return rms_norm(x, p["model.norm.weight"], cfg.rms_norm_eps)

    def decode(self, ids, n_new, cache: KVCache) -> Tensor:
        """Hidden states (B, S, d) of S new tokens per row appended after cache.lengths; updates the cache.

        ids (B, S) int array; n_new (B,) how many of the S are real (right padding). Inference only.
        """
        xp = get_backend().xp
        p, cfg = self._params, self.config
        B, S = ids.shape
        start, Tk, pos = self._positions_ready(cache, S)
        cos, sin = rope_cos_sin(cfg, pos)  # (B, S, hd)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, S, hd): broadcast over heads
        with no_grad():
            x = ag.embedding(p["model.embed_tokens.weight"], ids)  # (B, S, d)
            masks = self._masks(xp, start, n_new, S, Tk)
            for i in range(cfg.num_hidden_layers):
                x = self._layer(i, x, masks[cfg.layer_types[i]], cos, sin, cache, pos)
            x = rms_norm(x, p["model.norm.weight"], cfg.rms_norm_eps)
        cache.lengths = start + n_new
        return x

    def _layer(self, i: int, x: Tensor, blocked, cos, sin, cache: KVCache | None = None, slots=None) -> Tensor:
        p, eps = self._params, self.config.rms_norm_eps
        pre = f"model.layers.{i}."
        x = x + self._attn(i, rms_norm(x, p[pre + "input_layernorm.weight"], eps), blocked, cos, sin, cache, slots)
        x = x + self._mlp(i, rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps))
        return x

    def _proj(self, name: str, x: Tensor) -> Tensor:
        """nn.Linear projection `name` (x @ W.T + b), plus its LoRA adapter when it has one (base._projection)."""
        return self._projection(name, x, in_out=False)

    def _attn(self, i: int, x: Tensor, blocked, cos, sin, cache: KVCache | None = None, slots=None) -> Tensor:
        """Grouped-query causal self-attention: H query heads share KV heads in groups of H // KV.

        Queries are viewed as (B, KV, G, T, hd) and keys as (B, KV, 1, Tk, hd), so one broadcast matmul
        attends every group without copying the keys (query head h uses kv head h // G, as repeat_kv).
        """
        xp = get_backend().xp
        cfg = self.config
        a = f"model.layers.{i}.self_attn."
        B, T, _ = x.shape
        H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        G = H // KV
        q = self._proj(a + "q_proj", x).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        k = self._proj(a + "k_proj", x).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)  # (B, KV, T, hd)
        v = self._proj(a + "v_proj", x).reshape(B, T, KV, hd)  # (B, T, KV, hd)
        q = apply_rotary(q, cos, sin)  # cos/sin (T, hd) or (B, 1, T, hd)
        k = apply_rotary(k, cos, sin)
        if cache is None:
            v = v.transpose(0, 2, 1, 3)  # (B, KV, T, hd)
        else:  # generation: store the new keys/values at their slots, attend over the filled prefix
            rows = xp.arange(B)[:, None]  # (B, 1)
            kb, vb = cache.k[i], cache.v[i]  # (B, KV, C, hd)
            kb[rows, :, slots] = xp.swapaxes(k.data, 1, 2)  # (B, T, KV, hd) into slots (B, T)
            vb[rows, :, slots] = v.data
            Tk = blocked.shape[-1]
            k = Tensor(kb[:, :, :Tk])  # (B, KV, Tk, hd)
            v = Tensor(vb[:, :, :Tk])  # (B, KV, Tk, hd)
        Tk = k.shape[2]
        q = q.reshape(B, KV, G, T, hd)  # (B, KV, G, T, hd): query head h = kv * G + g
        k = k.reshape(B, KV, 1, Tk, hd)  # (B, KV, 1, Tk, hd)
        v = v.reshape(B, KV, 1, Tk, hd)  # (B, KV, 1, Tk, hd)
        att = (q @ k.transpose(0, 1, 2, 4, 3)) * (1.0 / math.sqrt(hd))  # (B, KV, G, T, Tk)
        att = ag.masked_fill(att, blocked, float(xp.finfo(att.dtype).min))
        att = ag.softmax(att, axis=-1)
        att = self._dropout(att, cfg.attention_dropout)
        y = (att @ v).reshape(B, H, T, hd)  # (B, KV, G, T, hd) -> (B, H, T, hd)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, H * hd)  # (B, T, H*hd): heads side by side
        return self._proj(a + "o_proj", y)  # (B, T, d)

    def _mlp(self, i: int, x: Tensor) -> Tensor:
        m = f"model.layers.{i}.mlp."
        h = silu(self._proj(m + "gate_proj", x)) * self._proj(m + "up_proj", x)  # (B, T, intermediate)
        return self._proj(m + "down_proj", h)  # (B, T, d)
