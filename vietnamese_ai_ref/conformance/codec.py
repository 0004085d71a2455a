"""The golden-vector codec and the adapter protocol of spec/vectors/README.md.

What it is for: the JSON encoding of arrays and non-finite floats in vector files (`encode_array`,
`encode_value`, `decode`), the manifest reader, and the table of protocol functions (`PROTOCOL`: each
function's positional arguments, outputs and optional gradient) that the runner and the reference
adapter share; scripts/make_vectors.py writes vectors with it.
What it is not: the runner (runner.py) or an implementation (reference.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..backends import host_np

__all__ = ["FORMAT", "TRAINER_FORMAT", "PROTOCOL", "Fn", "encode_array", "encode_value", "decode",
           "load_manifest", "default_vectors_dir"]

#: Format tag of the per-function vector files (spec/vectors/README.md).
FORMAT = "vietnamese_ai_ref.vectors/1"
#: Format tag reserved for end-to-end trainer vectors.
TRAINER_FORMAT = "vietnamese_ai_ref.trainer-vectors/1"

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# ============================ the protocol ====================================================

@dataclass(frozen=True)
class Fn:
    """One function of the adapter protocol."""

    name: str
    args: tuple  # positional argument names, in order
    outputs: tuple  # output names; one name = a single returned array
    wrt: tuple = ()  # float arguments the optional gradient function differentiates
    grad_of: str | None = None  # the output whose upstream gradient is given
    since: str = "1.0"  # the spec version that added it; functions added after 1.0 are optional (SKIP)

    @property
    def grad_name(self) -> str | None:
        return f"{self.name}_grad" if self.wrt else None


_GRPO_ARGS = ("logps", "old_logps", "advantages", "mask", "ref_logps", "beta", "epsilon_low", "epsilon_high",
              "loss_type", "importance_sampling_level", "delta", "num_items_in_batch", "max_completion_length",
              "num_accumulation_steps")
_DPO_ARGS = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")

PROTOCOL: dict[str, Fn] = {
    f.name: f
    for f in (
        Fn("sequence_logps", ("logits", "labels"), ("logps",), ("logits",), "logps"),
        Fn("sft_loss", ("logits", "labels", "num_items_in_batch"), ("loss",), ("logits",), "loss"),
        Fn("dpo_loss", _DPO_ARGS + ("beta", "label_smoothing"), ("losses", "chosen_rewards", "rejected_rewards"),
           _DPO_ARGS, "losses"),
        Fn("reward_loss", ("rewards_chosen", "rewards_rejected", "margin"), ("losses",),
           ("rewards_chosen", "rewards_rejected"), "losses"),
        Fn("normalize_scores", ("scores",), ("normalized",)),
        # spec 1.1 (spec/rl.md): optional, so an adapter written for 1.0 still conforms
        Fn("grpo_advantages", ("rewards", "num_generations", "scale_rewards"), ("advantages",), since="1.1"),
        Fn("grpo_loss", _GRPO_ARGS, ("loss",), ("logps",), "loss", since="1.1"),
        Fn("rloo_advantages", ("rewards", "num_generations", "old_logps", "ref_logps", "mask", "beta",
                               "normalize_advantages", "reward_clip_range"), ("advantages",), since="1.1"),
        Fn("rloo_loss", ("logps", "old_logps", "advantages", "mask", "epsilon_low", "epsilon_high",
                         "num_accumulation_steps"), ("loss",), ("logps",), "loss", since="1.1"),
        Fn("online_dpo_pairs", ("rewards", "has_eos", "missing_eos_penalty"), ("chosen_index", "rejected_index"),
           since="1.1"),
    )
}


def _enc_float(x: float):
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x  # json writes repr(x): the shortest string that round-trips (<= 17 significant digits)


def encode_array(a) -> dict:
    """{"dtype", "shape", "data"}: a row-major flat list; non-finite floats as "NaN"/"Infinity"/"-Infinity"."""
    a = host_np.asarray(a)
    if a.dtype.kind == "f":
        return {"dtype": "float64", "shape": list(a.shape), "data": [_enc_float(v) for v in a.astype(host_np.float64).reshape(-1).tolist()]}
    if a.dtype.kind in "iu":
        return {"dtype": "int64", "shape": list(a.shape), "data": [int(v) for v in a.reshape(-1).tolist()]}
    if a.dtype.kind == "b":
        return {"dtype": "bool", "shape": list(a.shape), "data": [bool(v) for v in a.reshape(-1).tolist()]}
    raise TypeError(f"cannot encode dtype {a.dtype}")


def encode_value(v):
    """Encode an argument or expected value: arrays tagged, floats/ints/None/str/dicts/lists as JSON."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return _enc_float(v)
    if isinstance(v, dict):
        return {k: encode_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [encode_value(x) for x in v]
    if hasattr(v, "dtype") and hasattr(v, "shape"):
        return encode_array(v)
    raise TypeError(f"cannot encode {type(v).__name__}")


def _is_array_record(v) -> bool:
    return isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}


def decode(v):
    """Inverse of `encode_value`: array records become NumPy arrays, "NaN"/"Infinity" strings floats."""
    if _is_array_record(v):
        dt = {"float64": host_np.float64, "int64": host_np.int64, "bool": host_np.bool_}[v["dtype"]]
        data = [(_NONFINITE[x] if isinstance(x, str) else x) for x in v["data"]]
        return host_np.asarray(data, dtype=dt).reshape(tuple(v["shape"]))
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if isinstance(v, dict):
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def default_vectors_dir() -> Path:
    """spec/vectors of the source tree this package was imported from."""
    return Path(__file__).resolve().parents[2] / "spec" / "vectors"


def load_manifest(vectors_dir) -> dict:
    with open(Path(vectors_dir) / "manifest.json", encoding="utf-8") as f:
        return json.load(f)
