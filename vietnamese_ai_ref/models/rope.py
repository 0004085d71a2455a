"""Rotary position embeddings: the inverse frequencies of every supported rope type, in float64 NumPy.

What it is for: `rope_inv_freq(head_dim, theta, rope_scaling)`, the vector inv_freq (head_dim/2,)
from which the rotary angles position · inv_freq are built (`llama.rope_cos_sin`), for the rope types
the Llama family supports: plain rotary (None / "default"), "linear" (positions divided by a factor)
and "llama3" (Llama 3.1/3.2: long wavelengths divided by the factor, short ones kept, a smooth ramp
between), each exactly as transformers' `modeling_rope_utils` computes it, but in float64.

What it is not: a config parser (`rope_scaling` arrives normalised by `llama.normalize_rope_scaling`;
the raw config.json spellings are read by `io/hf_config.py`), nor a cos/sin table builder. Rope types
that also scale the attention (yarn, longrope) or depend on the sequence length (dynamic) are refused.
"""

from __future__ import annotations

import math

from ..backends import host_np as np  # the host NumPy the backend layer exposes

__all__ = ["rope_inv_freq", "ROPE_TYPES"]

#: rope types with an inverse-frequency rule here ("default" = plain rotary).
ROPE_TYPES = ("default", "linear", "llama3")


def _base_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2i/head_dim) for i = 0 .. head_dim/2 - 1, float64."""
    return 1.0 / (float(theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # (hd/2,)


def _llama3(inv: np.ndarray, rs: dict) -> np.ndarray:
    """Llama 3 scaling (transformers' `_compute_llama3_parameters`): wavelength 2π/inv_freq.

    wavelength < L/high_freq_factor: kept; wavelength > L/low_freq_factor: divided by factor; between:
    (1 - s) · inv/factor + s · inv with s = (L/wavelength - low) / (high - low), L the original context.
    """
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_len = float(rs["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_freq_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled)


def rope_inv_freq(head_dim: int, theta: float, rope_scaling: dict | None) -> np.ndarray:
    """inv_freq (head_dim/2,) float64 for rope_scaling None, {"rope_type": "linear", "factor"} or
    {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} ("type" is read when "rope_type" is absent).

    Any other rope type raises ValueError naming it.
    """
    inv = _base_inv_freq(head_dim, theta)
    if rope_scaling is None:
        return inv
    kind = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return inv / float(rope_scaling["factor"])
    if kind == "llama3":
        return _llama3(inv, rope_scaling)
    raise ValueError(f"rope_scaling loại {kind!r} không được hỗ trợ / unsupported rope type {kind!r} "
                     f"(supported: {', '.join(repr(t) for t in ROPE_TYPES)})")
