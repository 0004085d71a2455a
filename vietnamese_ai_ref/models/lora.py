"""LoRA: low-rank adapters on the projections of both model families, the base weights frozen.

What it is for: `LoraConfig` (PEFT's `LoraConfig` field names: r, lora_alpha, lora_dropout,
target_modules, use_rslora), `them_lora` / `add_lora` (PEFT's `get_peft_model`: attach adapters in
place, freeze every base parameter), `hop_nhat_lora` / `merge_lora` (PEFT's `merge_and_unload`). A projection named `name` (its Hugging Face
module name: `model.layers.0.self_attn.q_proj`, `h.0.attn.c_attn`, ...) with an adapter computes

    y = base(x) + (dropout(x) @ A.T @ B.T) · scale,     A (r, in), B (out, r), scale = alpha / r
                                                        (alpha / sqrt(r) with use_rslora)

exactly PEFT's `lora_B(lora_A(dropout(x))) * scaling`. A is drawn as PEFT's default init
(`kaiming_uniform_(a=sqrt(5))`: uniform in ±1/sqrt(in)), B is zero, so a fresh adapter changes nothing.
The adapter parameters are named `<projection>.lora_A.weight` / `.lora_B.weight`, PEFT's names without
its `base_model.model.` prefix and adapter name; their layout is nn.Linear's for both families (GPT-2's
Conv1D keeps its (in, out) weight: PEFT's `fan_in_fan_out=True`, which only transposes the merged delta).

The base model is frozen by `requires_grad = False` on its parameters: autograd computes no gradient for
them and AdamW (core/optim.py) gives them no state. A score head (`score.weight`) stays trainable, as
PEFT's `modules_to_save` for sequence classification. `model.disable_adapters()` (models/base.py) runs
the base alone: DPO's reference without a second copy of the model.

What it is not: file I/O (the PEFT folder `adapter_config.json` + `adapter_model.safetensors` is
io/peft.py's), the fused forward (core/fused.lora_linear), several named adapters at once, or LoRA on embeddings, heads or norms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..backends import get_backend
from ..core.autograd import Parameter

__all__ = ["LoraConfig", "LoraPair", "them_lora", "add_lora", "attach", "hop_nhat_lora", "merge_lora", "projection_names",
           "pair_shapes", "PROJECTIONS", "DEFAULT_TARGETS"]

#: the projections an adapter may sit on, per family (Hugging Face module names, last component)
PROJECTIONS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
#: PEFT's defaults when target_modules is None (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
DEFAULT_TARGETS = {"gpt2": ("c_attn",), "llama": ("q_proj", "v_proj")}


def _invalid(msg: str) -> ValueError:
    return ValueError(f"Cấu hình LoRA không hợp lệ / invalid LoRA config: {msg}")


@dataclass
class LoraConfig:
    """Adapter hyper-parameters with PEFT's field names (adapter_config.json)."""

    r: int = 8  # rank of the update B @ A
    lora_alpha: float = 8.0  # scale = lora_alpha / r (or / sqrt(r) with use_rslora)
    lora_dropout: float = 0.0  # dropout on the adapter's input (training only)
    target_modules: list | None = None  # projection names (last component); None = PEFT's per-family default
    use_rslora: bool = False  # rank-stabilised scale alpha / sqrt(r)
    seed: int = 0  # seeds the init of every A (host RNG, same numbers on every backend)

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise _invalid(f"r must be a positive int, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not self.lora_alpha > 0:
            raise _invalid(f"lora_alpha must be a number > 0, got {self.lora_alpha!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise _invalid(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        if not isinstance(self.use_rslora, bool):
            raise _invalid(f"use_rslora must be true or false, got {self.use_rslora!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if self.target_modules is not None:
            if not isinstance(self.target_modules, (list, tuple)) or not self.target_modules \
                    or not all(isinstance(t, str) for t in self.target_modules):
                raise _invalid(f"target_modules must be None or a non-empty list of names, got {self.target_modules!r}")
            self.target_modules = list(self.target_modules)

    @property
    def scale(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LoraPair:
    """One projection's adapter: A (r, in), B (out, r) Parameters."""

    __slots__ = ("A", "B")

    def __init__(self, A: Parameter, B: Parameter):
        self.A, self.B = A, B


def family(model) -> str:
    return "gpt2" if model.config.model_type == "gpt2" else "llama"


def projection_names(model) -> list:
    """Every projection of `model` that can take an adapter, in parameter order (module names)."""
    known = PROJECTIONS[family(model)]
    return [n[: -len(".weight")] for n in model._params
            if n.endswith(".weight") and n[: -len(".weight")].rsplit(".", 1)[-1] in known]


def _in_out(model, name: str) -> tuple:
    """(in, out) features of projection `name`: Conv1D (GPT-2) stores (in, out), nn.Linear (out, in)."""
    shape = model._params[name + ".weight"].shape
    return (shape[0], shape[1]) if family(model) == "gpt2" else (shape[1], shape[0])


def pair_shapes(model, names, r: int) -> dict:
    """{adapter parameter name: shape} of rank-r adapters on projections `names`; unknown names raise."""
    known = set(projection_names(model))
    bad = [n for n in names if n not in known]
    if bad:
        raise _invalid(f"{bad} are not projections of this model")
    out = {}
    for name in names:
        n_in, n_out = _in_out(model, name)
        out[name + ".lora_A.weight"], out[name + ".lora_B.weight"] = (r, n_in), (n_out, r)
    return out


def _targets(model, config: LoraConfig) -> list:
    fam = family(model)
    wanted = config.target_modules if config.target_modules is not None else list(DEFAULT_TARGETS[fam])
    unknown = [t for t in wanted if t not in PROJECTIONS[fam]]
    if unknown:
        raise _invalid(f"target_modules {unknown} are not projections of a {fam} model "
                       f"(choose among {list(PROJECTIONS[fam])})")
    return [n for n in projection_names(model) if n.rsplit(".", 1)[-1] in wanted]


def them_lora(model, config: LoraConfig | None = None, **kwargs):
    """Gắn adapter LoRA / attach LoRA adapters to `model` in place (PEFT's get_peft_model) and return it.

    `config` or LoraConfig keywords (r, lora_alpha, lora_dropout, target_modules, use_rslora, seed).
    Every base parameter is frozen (requires_grad False); a score head stays trainable. Raises if the
    model already has adapters (merge them first) or a target is not a projection of its family.
    """
    if config is None:
        config = LoraConfig(**kwargs)
    elif kwargs:
        raise TypeError("them_lora: pass a LoraConfig or keywords, not both")
    if not isinstance(config, LoraConfig):
        raise TypeError(f"them_lora cần LoraConfig / needs a LoraConfig, got {type(config).__name__}")
    return attach(model, config, _targets(model, config))


def attach(model, config: LoraConfig, names) -> "object":
    """Adapters on exactly the projections `names` (module names), A drawn as PEFT's init, B zero; the
    base frozen. them_lora picks the names from target_modules; io/peft.py from an adapter file."""
    if model.has_adapters:
        raise ValueError("Mô hình đã có adapter LoRA; hãy hợp nhất trước (hop_nhat_lora) / the model already has "
                         "LoRA adapters; merge them first (hop_nhat_lora)")
    shapes = pair_shapes(model, names, config.r)
    be = get_backend()
    rng = be.host_rng(config.seed)
    pairs = {}
    for name in names:
        a_shape, b_shape = shapes[name + ".lora_A.weight"], shapes[name + ".lora_B.weight"]
        bound = 1.0 / math.sqrt(a_shape[1])  # kaiming_uniform_(a=sqrt(5)) on a (r, in) weight
        A = Parameter(be.asarray(rng.uniform(-bound, bound, size=a_shape)), name=name + ".lora_A.weight")
        B = Parameter(be.xp.zeros(b_shape, dtype=be.dtype), name=name + ".lora_B.weight")
        pairs[name] = LoraPair(A, B)
    for n, p in model._params.items():
        p.requires_grad = n == "score.weight"
    model._lora = pairs
    model.lora_config = config
    model._adapters_on = True
    return model


add_lora = them_lora


def merged_delta(model, name: str):
    """scale · B @ A laid out like projection `name`'s weight (transposed for GPT-2's Conv1D)."""
    pair = model._lora[name]
    delta = (pair.B.data @ pair.A.data) * model.lora_config.scale  # (out, in)
    return delta.T if family(model) == "gpt2" else delta


def hop_nhat_lora(model):
    """Hợp nhất adapter vào mô hình gốc / merge the adapters into the base weights (PEFT's
    merge_and_unload): W += scale · B @ A, the adapters removed, every parameter trainable again.
    Returns the model (in place); a plain model that saves as a full folder or GGUF."""
    if not model.has_adapters:
        raise ValueError("Mô hình không có adapter LoRA / the model has no LoRA adapters to merge")
    for name in model._lora:
        w = model._params[name + ".weight"]
        w.data[...] = w.data + merged_delta(model, name)
    model._lora = {}
    model.lora_config = None
    model._adapters_on = True
    for p in model._params.values():
        p.requires_grad = True
    return model


merge_lora = hop_nhat_lora
