"""The Llama family (Llama, Qwen2, Mistral) as a second model of the reference implementation.

What it is for: `LlamaLM`, a pre-norm decoder with RMSNorm, rotary position embeddings (transformers'
`rotate_half` convention, optional linear or Llama 3 scaling), grouped-query attention (optional sliding window),
a SwiGLU MLP and an LM head tied to the embedding or not, over the autograd of
`vietnamese_ai_ref.autograd`, with transformers' parameter names (`model.layers.0.self_attn.q_proj.weight`,
...) and nn.Linear's (out, in) weight layout (every projection computes x @ W.T + b). It offers the
same API as `TransformerLM` (forward, hidden_states, score head, copy, train/eval, generate with a KV
cache, save/load), so SFTTrainer, DPOTrainer, RewardModel and generation use it unchanged. The ops it
needs beyond autograd.py (`silu`, `rms_norm`, `apply_rotary`, `linear`) live here, each with its
backward beside its forward. Hugging Face folders are read and written by `vietnamese_ai_ref.hf`.

What it is not: a general model zoo. No rope scaling other than "linear" and "llama3", no mixture of experts, no
quantised weights, no mixed precision, no flash attention; float32/float64 only. Its init RNG stream is
a convenience (real use loads weights with `hf.from_pretrained`).
"""

from __future__ import annotations

import copy as _copy
import math
from dataclasses import dataclass

from ..core import autograd as ag
from ..core.autograd import Parameter, Tensor, _result, grad_out, no_grad
from ..backends import get_backend
from ..models.gpt2 import GPTConfig, KVCache, TransformerLM, _check_tokenizer, _column_sums
from ..text.tokenizer import ByteTokenizer
from .rope import rope_inv_freq

__all__ = [
    "LlamaConfig", "LlamaLM", "LlamaKVCache", "MODEL_TYPES",
    "silu", "rms_norm", "apply_rotary", "linear", "rope_cos_sin",
]

#: transformers' model_type values this architecture covers.
MODEL_TYPES = ("llama", "qwen2", "mistral")
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _invalid(msg: str) -> ValueError:
    return ValueError(f"Cấu hình không hợp lệ / invalid config: {msg}")


# ============================ config ===========================================================

@dataclass
class LlamaConfig:
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

    to_dict = GPTConfig.to_dict
    from_dict = classmethod(GPTConfig.from_dict.__func__)  # unknown key -> ValueError naming it


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


# ============================ ops (backward beside forward) ====================================

def silu(a: Tensor) -> Tensor:
    """SiLU (swish): x · σ(x). d/dx = σ(x) · (1 + x · (1 − σ(x)))."""
    xp = get_backend().xp
    ad = a.data
    s = ag._sigmoid_array(xp, ad)  # σ(x), stable

    def backward(g):
        return (g * s * (1.0 + ad * (1.0 - s)),)

    return _result(ad * s, (a,), backward)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis: x / sqrt(mean(x²) + eps) * weight (transformers' LlamaRMSNorm).

    With x̂ = x·r, r = (mean(x²)+eps)^(-1/2) and ĝ = g·w: dx = r (ĝ − x̂ · mean(ĝ x̂)), dw = Σ g x̂.
    """
    xp = get_backend().xp
    xd, w = x.data, weight.data
    rstd = 1.0 / xp.sqrt((xd * xd).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xd * rstd  # (..., d)

    def backward(g):
        gh = g * w  # (..., d)
        dx = rstd * (gh - xhat * (gh * xhat).mean(axis=-1, keepdims=True)) if x.requires_grad else None
        dw = (g * xhat).reshape(-1, w.shape[-1]).sum(axis=0) if weight.requires_grad else None  # (N, d) -> (d,)
        return dx, dw

    return _result(xhat * w, (x, weight), backward)


def _rotate_half(xp, a):
    """transformers' rotate_half: (x1, x2) -> (−x2, x1) over the two halves of the last axis."""
    h = a.shape[-1] // 2
    return xp.concatenate([-a[..., h:], a[..., :h]], axis=-1)


def apply_rotary(x: Tensor, cos, sin) -> Tensor:
    """Rotary embedding x·cos + rotate_half(x)·sin; cos/sin are constant arrays broadcastable to x.

    rotate_half is linear with transpose −rotate_half, so dx = g·cos − rotate_half(g·sin).
    """
    xp = get_backend().xp
    xd = x.data

    def backward(g):
        return (g * cos - _rotate_half(xp, g * sin),)

    return _result(xd * cos + _rotate_half(xp, xd) * sin, (x,), backward)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """nn.Linear: x (..., in) @ weight (out, in).T + bias (out,) -> (..., out)."""
    xp = get_backend().xp
    xd, w = x.data, weight.data
    out = xp.matmul(xd, w.T)  # (..., out)
    if bias is not None:
        out = out + bias.data

    def backward(g):
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        gx = xp.matmul(g, w) if x.requires_grad else None  # (..., in)
        gw = xp.matmul(g2.T, xd.reshape(-1, xd.shape[-1]), out=grad_out(weight)) \
            if weight.requires_grad else None  # (out, in), into the optimiser's buffer when it has one
        gb = _column_sums(xp, g2, out=grad_out(bias)) if bias is not None and bias.requires_grad else None  # (out,)
        return gx, gw, gb

    return _result(out, (x, weight) + ((bias,) if bias is not None else ()), backward)


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


# ============================ parameters, masks, cache =========================================

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


def _blocked_keys(xp, start, n_new, S: int, Tk: int, window):
    """Attention mask (True = blocked) of shape (B, 1, 1, S, Tk) for S new queries per row.

    As model._blocked_keys (causal, right padding, a padded query sees the real tokens and itself),
    plus the sliding window: query q may only see keys j with q − j < window (transformers' rule).
    """
    q_pos = start[:, None] + xp.arange(S)[None, :]  # (B, S) absolute query positions
    j = xp.arange(Tk)[None, None, :]  # (1, 1, Tk) key positions
    causal = j <= q_pos[:, :, None]  # (B, S, Tk)
    real = j < (start + n_new)[:, None, None]  # (B, 1, Tk)
    allowed = causal & (real | (j == q_pos[:, :, None]))  # (B, S, Tk)
    if window is not None:
        allowed = allowed & (q_pos[:, :, None] - j < window)  # (B, S, Tk)
    return ~allowed[:, None, None, :, :]  # (B, 1, 1, S, Tk): broadcasts over kv heads and groups


class LlamaKVCache(KVCache):
    """KVCache sized for grouped-query attention: k[i], v[i] are (B, n_kv_head, capacity, head_dim)."""

    @staticmethod
    def _dims(cfg: LlamaConfig):
        return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim  # only the KV heads are cached


# ============================ the model ========================================================

class LlamaLM:
    """Llama-family decoder: embed_tokens, pre-RMSNorm layers (GQA attention with rotary, SwiGLU MLP),
    final RMSNorm, LM head (lm_head or tied to embed_tokens)."""

    def __init__(self, config: LlamaConfig | None = None, tokenizer=None):
        self.config = config if config is not None else LlamaConfig()
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        _check_tokenizer(self.config, self.tokenizer)
        self.training = True  # like torch modules; loading returns eval mode like transformers
        self._dropout_rng = None  # backend RNG seeded by config.seed, created on first use
        self._params = {name: Parameter(arr, name=name) for name, arr in _init_arrays(self.config).items()}

    # -- shared with TransformerLM (these methods only read config.n_positions/vocab_size/seed and _params)
    _blank = classmethod(TransformerLM._blank.__func__)  # a parameterless model (copy, from_pretrained)
    parameters = TransformerLM.parameters
    num_parameters = TransformerLM.num_parameters
    zero_grad = TransformerLM.zero_grad
    state_dict = TransformerLM.state_dict
    train = TransformerLM.train
    eval = TransformerLM.eval
    __call__ = TransformerLM.__call__
    has_score_head = TransformerLM.has_score_head
    add_score_head = TransformerLM.add_score_head  # score.weight (1, hidden_size): config.n_embd aliases it
    score = TransformerLM.score  # last real token's hidden state @ score.weight.T
    generate = TransformerLM.generate
    sinh_van_ban = TransformerLM.sinh_van_ban
    _dropout = TransformerLM._dropout
    _prepare = TransformerLM._prepare

    def named_parameters(self) -> dict:
        """name -> Parameter, transformers' names, in `param_specs` order (score.weight last when attached)."""
        return dict(self._params)

    def _expected_shapes(self, with_score: bool) -> dict:
        return {name: shape for name, shape, _ in param_specs(self.config, with_score)}

    def load_state_dict(self, state: dict) -> None:
        """Set every parameter from `state` (name -> array) in place (optimizers keep working).

        Names and shapes must match exactly; `score.weight` in `state` attaches a score head."""
        from ..io.hf import assign_arrays

        arrays = assign_arrays(self._expected_shapes("score.weight" in state), {n: (n, a) for n, a in state.items()})
        for n, arr in arrays.items():
            if n in self._params:
                self._params[n].data = arr
            else:
                self._params[n] = Parameter(arr, name=n)

    def copy(self) -> "LlamaLM":
        """A deep copy: same config values, independent parameters, the same tokenizer object."""
        m = LlamaLM._blank(_copy.deepcopy(self.config), self.tokenizer)
        m.training = self.training
        m._params = {n: Parameter(p.data.copy(), name=n) for n, p in self._params.items()}
        return m

    def new_kv_cache(self, batch: int, capacity: int) -> LlamaKVCache:
        """A KV cache of num_key_value_heads heads per layer (what generation should allocate)."""
        return LlamaKVCache(self.config, batch, capacity)

    def __repr__(self) -> str:
        c = self.config
        head = ", score_head" if self.has_score_head else ""
        return (
            f"LlamaLM(model_type={c.model_type!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
            f"heads={c.num_attention_heads}/{c.num_key_value_heads}kv, vocab_size={c.vocab_size}, "
            f"n_positions={c.n_positions}, tied={c.tie_word_embeddings}, params={self.num_parameters()}{head})"
        )

    # -- forward ---------------------------------------------------------------------------
    def _head_weight(self) -> Parameter:
        p = self._params
        return p["model.embed_tokens.weight"] if self.config.tie_word_embeddings else p["lm_head.weight"]

    def forward(self, input_ids, attention_mask=None) -> Tensor:
        """Logits (B, T, vocab_size) for input_ids (B, T); attention_mask (B, T) is right padding (1 real, 0 pad)."""
        h = self.hidden_states(input_ids, attention_mask)  # (B, T, d)
        return linear(h, self._head_weight())  # (B, T, V)

    def hidden_states(self, input_ids, attention_mask=None) -> Tensor:
        """Final hidden states (B, T, hidden_size), after model.norm (what both heads read)."""
        ids, n_real = self._prepare(input_ids, attention_mask)
        return self._hidden(ids, n_real)

    def _masks(self, xp, start, n_new, S: int, Tk: int) -> dict:
        """Blocked-key masks per layer type present in config.layer_types."""
        cfg = self.config
        out = {}
        for kind in set(cfg.layer_types):
            window = cfg.sliding_window if kind == "sliding_attention" else None
            out[kind] = _blocked_keys(xp, start, n_new, S, Tk, window)
        return out

    def _hidden(self, ids, n_real) -> Tensor:
        xp = get_backend().xp
        p, cfg = self._params, self.config
        B, T = ids.shape
        cos, sin = rope_cos_sin(cfg, xp.arange(T))  # (T, hd): right padding keeps true positions
        masks = self._masks(xp, xp.zeros(B, dtype=xp.int64), n_real, T, T)
        x = ag.embedding(p["model.embed_tokens.weight"], ids)  # (B, T, d)
        for i in range(cfg.num_hidden_layers):
            x = self._layer(i, x, masks[cfg.layer_types[i]], cos, sin)
        return rms_norm(x, p["model.norm.weight"], cfg.rms_norm_eps)

    def _layer(self, i: int, x: Tensor, blocked, cos, sin, cache: KVCache | None = None, slots=None) -> Tensor:
        p, eps = self._params, self.config.rms_norm_eps
        pre = f"model.layers.{i}."
        x = x + self._attn(i, rms_norm(x, p[pre + "input_layernorm.weight"], eps), blocked, cos, sin, cache, slots)
        x = x + self._mlp(i, rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps))
        return x

    def _proj(self, name: str, x: Tensor) -> Tensor:
        p = self._params
        return linear(x, p[name + ".weight"], p.get(name + ".bias"))

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
            kb, vb = cache.k[i][:, :KV], cache.v[i][:, :KV]  # (B, KV, C, hd) views (a GPT-2 KVCache has H >= KV heads)
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

    # -- reward head -----------------------------------------------------------------------
    # -- generation (loop and sampling in generation.py) -------------------------------------
    def _hidden_cached(self, ids, n_new, cache: KVCache) -> Tensor:
        """Hidden states (B, S, d) of S new tokens per row appended after cache.lengths; updates the cache.

        ids (B, S) int array; n_new (B,) how many of the S are real (right padding). Inference only.
        Accepts a `LlamaKVCache` or a GPT-2 `KVCache` built from this config (its first KV heads are used).
        """
        xp = get_backend().xp
        p, cfg = self._params, self.config
        B, S = ids.shape
        start = cache.lengths  # (B,)
        Tk = int((start + S).max())
        if Tk > cache.capacity:
            raise ValueError(f"KV cache đầy / KV cache full: needs {Tk} slots, capacity {cache.capacity}")
        pos = start[:, None] + xp.arange(S)[None, :]  # (B, S) absolute positions = cache slots
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

    def _logits_at(self, h: Tensor, index):
        """LM logits (B, V) array of h (B, T, d) at one position per row (index (B,) ints)."""
        xp = get_backend().xp
        rows = h.data[xp.arange(h.shape[0]), index]  # (B, d)
        return rows @ self._head_weight().data.T  # (B, V)

    # -- checkpoints (Hugging Face folders, see hf.py) ---------------------------------------
    def save(self, path) -> None:
        """Write a transformers-loadable folder (config.json, model.safetensors, tokenizer files), atomically."""
        from ..io.hf import save_pretrained

        save_pretrained(self, path)

    luu = save  # lưu: save

    @classmethod
    def load(cls, path, tokenizer=None) -> "LlamaLM":
        """Read a Llama/Qwen2/Mistral folder (see hf.from_pretrained); the model is in eval mode."""
        from ..io.hf import CheckpointError, from_pretrained

        model = from_pretrained(path, tokenizer=tokenizer)
        if not isinstance(model, cls):
            raise CheckpointError(
                f"Thư mục không chứa mô hình Llama / {path} holds a {type(model).__name__}, not a LlamaLM"
            )
        return model

    tai = load  # tải: load

