"""The causal-LM base class both model families share (GPT-2 and the Llama family).

What it is for: everything about a model that does not depend on its architecture — parameters in a
fixed order, train/eval, copy, the state dict (loaded *into* the existing buffers, so an optimiser
built before the load keeps training the model), input validation (right padding), dropout, the
scalar reward head `score.weight`, the LM head, and generation. A family subclass supplies:

    config_class            its config dataclass
    param_specs(with_score) [(name, shape, init kind)] in the fixed order (spec/model.md)
    _init_arrays()          {name: backend array}: the family's init
    _hidden(ids, n_real)    final hidden states (B, T, d) of a right-padded batch
    decode(ids, n_new, cache)   the decoder interface of generation (below)
    head_weight()           the LM head's (V, d) weight Parameter
    new_kv_cache(batch, capacity)

The decoder interface (what generation.py calls, nothing private): `new_kv_cache(batch, capacity)`
allocates a cache; `decode(ids (B, S), n_new (B,), cache) -> h (B, S, d)` runs S new tokens per row
after `cache.lengths` and advances the cache; `logits_at(h, index (B,)) -> (B, V)` reads the LM logits
at one position per row. `prefill` is `decode` on an empty cache.

Adapters and recompute (the hooks the families call): `_projection(name, x, in_out)` computes projection
`name` with its LoRA adapter (models/lora.py) in one fused node, the plain ops when there is none or adapters are
switched off (`disable_adapters()`); `_blocks(x, block)` runs the transformer blocks, each through
activation recompute (core/recompute.py) after `gradient_checkpointing_enable()` in training mode.
`named_parameters()` lists the base parameters then the adapters'; frozen ones have requires_grad False.

What it is not: file I/O. Hugging Face folders are read and written by `io/` (a layer above), which
registers its reader and writer here (`register_folder_io`) so that `model.save_pretrained(path)` and
`Model.from_pretrained(path)` work without this layer importing `io`.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import dataclasses
import math

from ..backends import get_backend
from ..core import autograd as ag
from ..core.autograd import Parameter, Tensor
from ..core.errors import CheckpointError
from ..core.fused import linear, linear_in_out, lora_linear
from ..core.recompute import recompute
from ..text.tokenizer import ByteTokenizer
from .lora import LoraPair

__all__ = ["CausalLM", "ConfigDict", "assign_arrays", "register_folder_io"]

#: io/ registers {"save": f(model, path), "load": f(path, tokenizer) -> model} here on import.
_FOLDER_IO: dict = {}


def register_folder_io(*, save, load) -> None:
    """Called by io/hf.py: the functions behind `save_pretrained` and `from_pretrained`."""
    _FOLDER_IO["save"], _FOLDER_IO["load"] = save, load


def assign_arrays(expected: dict, named: dict, display=str) -> dict:
    """Backend arrays in `expected` order from {name: (display key, array)}; strict names and shapes.

    expected: {name: shape}. Missing tensors, unexpected tensors, wrong shapes and non-float arrays
    raise CheckpointError naming every one (`display(name)` names a missing one, as its file spells it).
    """
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


class CausalLM:
    """A decoder-only language model: parameters, modes, state dict, heads, generation (see module doc)."""

    config_class: type = None  # set by each family
    #: {"eos_token_id": [ids], "bos_token_id", "pad_token_id"} from a folder's generation_config.json, or None
    generation_config: dict | None = None

    def __init__(self, config=None, tokenizer=None):
        self.config = config if config is not None else self.config_class()
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self._check_tokenizer()
        self.training = True  # like torch modules; loading returns eval mode like transformers
        self._dropout_rng = None  # backend RNG seeded by config.seed, created on first use
        self._params = {name: Parameter(arr, name=name) for name, arr in self._init_arrays().items()}
        self._no_extras()

    def _no_extras(self) -> None:
        """No adapters, no recompute (the state every constructor starts from)."""
        self._lora = {}  # projection name -> LoraPair (models/lora.py)
        self.lora_config = None  # the LoraConfig of the attached adapters
        self._adapters_on = True  # False inside disable_adapters()
        self.gradient_checkpointing = False  # activation recompute per block (training mode only)

    @classmethod
    def _blank(cls, config, tokenizer) -> "CausalLM":
        """A model object without parameters (copy and the folder reader fill them in)."""
        m = cls.__new__(cls)
        m.config = config
        m.tokenizer = tokenizer
        m._check_tokenizer()
        m.training = True
        m._dropout_rng = None
        m._params = {}
        m._no_extras()
        return m

    @classmethod
    def from_arrays(cls, config, tokenizer, arrays: dict) -> "CausalLM":
        """A model in eval mode from {name: array} of exactly `param_specs` (a score head when present)."""
        m = cls._blank(config, tokenizer)
        expected = m._expected_shapes("score.weight" in arrays)
        m._params = {n: Parameter(a, name=n) for n, a in
                     assign_arrays(expected, {n: (n, a) for n, a in arrays.items()}).items()}
        return m.eval()

    def _check_tokenizer(self) -> None:
        if self.tokenizer is not None and self.tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(f"Tokenizer lớn hơn mô hình / tokenizer vocab_size {self.tokenizer.vocab_size} > "
                             f"config.vocab_size {self.config.vocab_size}")

    # -- parameters ------------------------------------------------------------------------
    def named_parameters(self) -> dict:
        """name -> Parameter: the base in the fixed order of spec/model.md (score.weight last when
        attached), then each adapter's `<projection>.lora_A.weight`, `.lora_B.weight`. Frozen parameters
        (requires_grad False: the base under LoRA) are listed too; optimisers skip them."""
        out = dict(self._params)
        for pair in self._lora.values():
            out[pair.A.name], out[pair.B.name] = pair.A, pair.B
        return out

    def base_parameters(self) -> dict:
        """name -> Parameter of the base model only (what a model folder or GGUF file holds)."""
        return dict(self._params)

    def parameters(self) -> list:
        return list(self.named_parameters().values())

    def num_parameters(self) -> int:
        return sum(int(p.size) for p in self.parameters())

    def num_trainable_parameters(self) -> int:
        """Số tham số được huấn luyện / parameters that require grad (the adapters and score head under LoRA)."""
        return sum(int(p.size) for p in self.parameters() if p.requires_grad)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def _expected_shapes(self, with_score: bool) -> dict:
        """name -> shape of the base parameters (spec order), then the adapters' (their current shapes)."""
        out = {name: shape for name, shape, _ in self.param_specs(with_score)}
        for pair in self._lora.values():
            out[pair.A.name], out[pair.B.name] = tuple(pair.A.shape), tuple(pair.B.shape)
        return out

    def state_dict(self) -> dict:
        """name -> host NumPy copy of every parameter (the model's own names, adapters included)."""
        be = get_backend()
        return {n: be.to_numpy(p.data.copy()) for n, p in self.named_parameters().items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy every parameter of `state` (name -> array) INTO the existing buffers: the Parameter
        objects and their arrays stay the same, so an optimiser built before the load (whose flat buffer
        the arrays are views of) keeps training this model. Names and shapes must match exactly;
        `score.weight` in `state` attaches a score head if there is none."""
        expected = self._expected_shapes(self.has_score_head or "score.weight" in state)
        arrays = assign_arrays(expected, {n: (n, a) for n, a in state.items()})
        current = self.named_parameters()
        for n, arr in arrays.items():
            if n in current:
                current[n].data[...] = arr
            else:
                self._params[n] = Parameter(arr, name=n)

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "CausalLM":
        self.training = bool(mode)
        return self

    def eval(self) -> "CausalLM":
        return self.train(False)

    def copy(self) -> "CausalLM":
        """A deep copy: same config values, independent parameters, the same tokenizer object."""
        m = type(self)._blank(_copy.deepcopy(self.config), self.tokenizer)
        m.training = self.training
        m.generation_config = _copy.deepcopy(self.generation_config)
        m._params = {n: _copied(p) for n, p in self._params.items()}
        m._lora = {k: LoraPair(_copied(v.A), _copied(v.B)) for k, v in self._lora.items()}
        m.lora_config = _copy.deepcopy(self.lora_config)
        m._adapters_on = self._adapters_on
        m.gradient_checkpointing = self.gradient_checkpointing
        return m

    def base_model(self) -> "CausalLM":
        """The base alone: a model object sharing this one's base Parameter objects (no copy), without
        adapters. Saving it writes the base weights; training it trains the shared weights."""
        m = type(self)._blank(self.config, self.tokenizer)
        m.training = self.training
        m.generation_config = self.generation_config
        m._params = dict(self._params)
        m._dropout_rng = self._dropout_rng
        return m

    # -- adapters (models/lora.py attaches and merges them) ------------------------------------
    @property
    def has_adapters(self) -> bool:
        return bool(self._lora)

    @contextlib.contextmanager
    def disable_adapters(self):
        """Inside this block the model computes as its base alone (PEFT's `disable_adapter()`): the
        reference of DPO and the online trainers without a second copy in memory. Re-entrant."""
        prev = self._adapters_on
        self._adapters_on = False
        try:
            yield self
        finally:
            self._adapters_on = prev

    def _projection(self, name: str, x: Tensor, in_out: bool) -> Tensor:
        """Projection `name` of x: nn.Linear's x @ W.T + b, or GPT-2's Conv1D x @ W + b (`in_out`), plus its
        LoRA adapter (one fused node, core/fused.lora_linear) when it has one and adapters are on; the
        plain model's ops otherwise (unchanged)."""
        p = self._params
        w, b = p[name + ".weight"], p.get(name + ".bias")
        pair = self._lora.get(name) if self._adapters_on else None
        if pair is None:
            return linear_in_out(x, w, b) if in_out else linear(x, w, b)
        cfg = self.lora_config
        dropped = self._dropout(x, cfg.lora_dropout) if self.training and cfg.lora_dropout > 0 else None
        return lora_linear(x, w, b, pair.A, pair.B, cfg.scale, dropped=dropped, in_out=in_out)

    # -- activation recompute ----------------------------------------------------------------
    def gradient_checkpointing_enable(self) -> "CausalLM":
        """Recompute each block's activations in backward instead of keeping them (transformers' name):
        same gradients, less memory, one more forward per block. Training mode only."""
        self.gradient_checkpointing = True
        return self

    def gradient_checkpointing_disable(self) -> "CausalLM":
        self.gradient_checkpointing = False
        return self

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    def _blocks(self, x: Tensor, block) -> Tensor:
        """x through block(i, x) for every layer i; with gradient checkpointing on (and training), each
        block is one recompute node that replays its dropout masks from the model's RNG."""
        if not (self.gradient_checkpointing and self.training):
            for i in range(self.config.n_layer):
                x = block(i, x)
            return x
        trainable = {n for n, p in self.named_parameters().items() if p.requires_grad}
        for i in range(self.config.n_layer):
            needs = any(_in_layer(n, i) for n in trainable)
            x = recompute(lambda t, i=i: block(i, t), x, needs_grad=needs,
                          get_state=self._rng_snapshot, set_state=self._rng_restore)
        return x

    def _rng_snapshot(self):
        rng = self._dropout_rng
        if rng is None:
            return None
        state = get_backend().rng_state(rng)
        if state is None:
            raise NotImplementedError(
                "gradient checkpointing cần lưu được trạng thái RNG của dropout / gradient checkpointing with "
                "dropout needs a backend whose RNG state can be saved (NumPy)")
        return state

    def _rng_restore(self, state) -> None:
        if state is None:
            self._dropout_rng = None
            return
        if self._dropout_rng is None:
            self._dropout_rng = get_backend().rng(self.config.seed)
        get_backend().set_rng_state(self._dropout_rng, state)

    def __repr__(self) -> str:
        head = ", score_head" if self.has_score_head else ""
        return f"{type(self).__name__}({self._describe()}, params={self.num_parameters()}{head})"

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None) -> Tensor:
        return self.forward(input_ids, attention_mask)

    def forward(self, input_ids, attention_mask=None) -> Tensor:
        """Logits (B, T, vocab_size) for input_ids (B, T); attention_mask (B, T) is right padding (1 real, 0 pad)."""
        h = self.hidden_states(input_ids, attention_mask)  # (B, T, d)
        return linear(h, self.head_weight())  # (B, T, V) = h @ W_head.T

    def hidden_states(self, input_ids, attention_mask=None) -> Tensor:
        """Final hidden states (B, T, d), after the final norm (what the LM head and the reward head read)."""
        ids, n_real = self._prepare(input_ids, attention_mask)
        return self._hidden(ids, n_real)

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

    def _positions_ready(self, cache, S: int):
        """(start (B,), Tk, pos (B, S)) for S new tokens per row after cache.lengths; raises when full."""
        xp = get_backend().xp
        start = cache.lengths  # (B,)
        Tk = int((start + S).max())
        if Tk > cache.capacity:
            raise ValueError(f"KV cache đầy / KV cache full: needs {Tk} slots, capacity {cache.capacity}")
        return start, Tk, start[:, None] + xp.arange(S)[None, :]  # (B, S) absolute positions = cache slots

    # -- reward head -----------------------------------------------------------------------
    @property
    def has_score_head(self) -> bool:
        return "score.weight" in self._params

    def add_score_head(self, seed: int | None = None) -> Parameter:
        """Attach `score.weight` (1, d), init normal with std 1/sqrt(d+1) from a host RNG.

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

    # -- generation (the loop and sampling live in generation.py) -----------------------------
    def logits_at(self, h: Tensor, index):
        """LM logits (B, V) array of h (B, T, d) at one position per row (index (B,) ints)."""
        xp = get_backend().xp
        rows = h.data[xp.arange(h.shape[0]), index]  # (B, d)
        return rows @ self.head_weight().data.T  # (B, V)

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

    # -- folders (written and read by io/hf.py, registered at import) -------------------------
    def save_pretrained(self, path) -> None:
        """Write a transformers-loadable folder (config.json, model.safetensors, tokenizer and generation
        config) at `path`. Only the files it writes are replaced; other files in the folder stay."""
        _FOLDER_IO["save"](self, path)

    save = save_pretrained
    luu = save_pretrained  # lưu: save

    @classmethod
    def from_pretrained(cls, path, tokenizer=None) -> "CausalLM":
        """Read a Hugging Face folder of this family; the model is in eval mode."""
        model = _FOLDER_IO["load"](path, tokenizer=tokenizer)
        if not isinstance(model, cls):
            raise CheckpointError(f"Thư mục không chứa mô hình {cls.__name__} / {path} holds a "
                                  f"{type(model).__name__}, not a {cls.__name__}")
        return model

    load = from_pretrained
    tai = from_pretrained  # tải: load


class ConfigDict:
    """`to_dict` / `from_dict`, shared by the config dataclass of every family."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict of field values; an unknown key raises ValueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in names:
                raise ValueError(f"Khoá cấu hình không xác định / unknown config key: {k!r}")
        return cls(**d)


def _copied(p: Parameter) -> Parameter:
    """An independent Parameter with p's values, name and requires_grad."""
    q = Parameter(p.data.copy(), name=p.name)
    q.requires_grad = p.requires_grad
    return q


def _in_layer(name: str, i: int) -> bool:
    """Whether parameter `name` belongs to transformer block i (GPT-2's h.i., Llama's model.layers.i.)."""
    return name.startswith((f"h.{i}.", f"model.layers.{i}."))
