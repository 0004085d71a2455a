"""GGUF files (llama.cpp, ollama, LM Studio) in and out, through the `gguf` package (extra `gguf`).

What it is for: `read_gguf(path)` turns a llama-family ("llama" architecture, e.g. SmolLM2, Llama,
Mistral; also "qwen2") or "gpt2" GGUF file into what our Hugging Face loader already understands: a
transformers-style config.json dict, tensors under transformers' parameter names (dequantised with
gguf's own `gguf.quants.dequantize`; the Q/K row permutation llama.cpp's converter applies to llama
attention undone; GPT-2's Conv1D weights transposed back), a tokenizer.json rebuilt from
`tokenizer.ggml.*` (gguf_vocab.py), the chat template and the special token ids. `write_gguf` is the
inverse for F32/F16/BF16 files with the metadata llama.cpp expects, written atomically.
`gguf_to_folder` writes a folder that `from_pretrained` loads; `model_from_gguf` / `save_gguf` go
straight between a file and our model objects.

What it is not: a quantiser (only F32, F16 and BF16 are written; 1-D tensors stay F32 as llama.cpp
keeps them), a loader of architectures other than llama/qwen2/gpt2, or a SentencePiece vocabulary
converter. GGUF lists tensor dimensions fastest-first; the gguf reader's arrays are already in NumPy
(row-major) order, which is the order used here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field


from ..backends import get_backend
from ..backends import host_np as np  # host arrays: GGUF tensors live in host memory
from ..core.autograd import Parameter
from ..core.errors import CheckpointError
from ..models.base import assign_arrays
from ..models.gpt2 import GPTConfig, TransformerLM
from ..models.llama import LlamaConfig, LlamaLM
from ..text.hf_tokenizer import HFTokenizer, _import_tokenizers
from .folders import fsync_dir as _fsync_dir
from .folders import fsync_file as _fsync_file
from .folders import write_model_folder
from .hf import (_gpt2_named, _llama_named, _to_file_key, _write_json, gpt2_config_to_hf, llama_config_to_hf,
                 refuse_adapters)
from .hf_config import interpret_gpt2_config, interpret_llama_config
from .safetensors import write_safetensors
from .gguf_vocab import SPECIAL_KEYS, GGUFVocabError, gguf_vocab_from_tokenizer_json, tokenizer_json_from_gguf

__all__ = ["GGUFModel", "read_gguf", "write_gguf", "gguf_to_folder", "model_from_gguf", "save_gguf",
           "permute_qk", "unpermute_qk", "WRITE_TYPES"]

WRITE_TYPES = ("F32", "F16", "BF16")
_FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32}  # general.file_type (gguf.LlamaFileType ALL_F32 / MOSTLY_F16 / _BF16)

# GGUF tensor names <-> transformers names, per block and at the top level
_LLAMA_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GPT2_BLOCK = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
               "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_GPT2_TOP = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
             "output": "lm_head"}
_GPT2_CONV1D = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")  # stored (out, in) in GGUF, (in, out) in HF
# architecture -> (model_type, block map, prefix of block names, top map, llama.cpp permutes Q/K rows)
_ARCHS = {"llama": ("llama", _LLAMA_BLOCK, "model.layers", _LLAMA_TOP, True),
          "qwen2": ("qwen2", _LLAMA_BLOCK, "model.layers", _LLAMA_TOP, False),
          "gpt2": ("gpt2", _GPT2_BLOCK, "transformer.h", _GPT2_TOP, False)}
_ARCH_OF = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2"}  # model_type -> architecture
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def _import_gguf():
    try:
        import gguf
        import gguf.quants  # noqa: F401
    except ImportError as e:
        raise CheckpointError("Cần gói 'gguf' (phần bổ sung 'gguf') / the 'gguf' package is needed (extra 'gguf'): "
                              "pip install 'vietnamese-ai-ref[gguf]'") from e
    return gguf


# ============================ the Q/K permutation of llama.cpp =================================

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute`: within each head, rows in transformers'
    rotate-half order (first half, second half) become interleaved pairs, as ggml's rope expects."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (H, 2, hd/2, ..) -> (H, hd/2, 2, ..)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk` (GGUF's interleaved rows back to transformers' order)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (H, hd/2, 2, ..) -> (H, 2, hd/2, ..)


# ============================ reading ==========================================================

@dataclass
class GGUFModel:
    """What a GGUF file holds, in transformers' terms (see `read_gguf`)."""

    model_type: str  # "llama", "qwen2" or "gpt2"
    config: dict  # a transformers config.json dict that hf.from_pretrained accepts for model_type
    tensors: dict  # transformers parameter name -> host NumPy array (float32 or float64)
    tokenizer_json: str | None  # tokenizer.json text, None when read with with_tokenizer=False
    chat_template: str | None  # tokenizer.chat_template
    special_ids: dict  # {"bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"} -> int | None
    metadata: dict = field(default_factory=dict)  # every key-value pair of the file (python values)
    tensor_types: dict = field(default_factory=dict)  # GGUF tensor name -> its type name ("Q4_K", "F32", ...)

    def tokenizer_config(self) -> dict:
        """tokenizer_config.json for the rebuilt tokenizer: the special tokens as text, the chat template."""
        tokens = self.metadata.get("tokenizer.ggml.tokens") or []
        out = {"tokenizer_class": "PreTrainedTokenizerFast"}
        for key, id_key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                            ("pad_token", "pad_token_id"), ("unk_token", "unk_token_id")):
            tid = self.special_ids.get(id_key)
            if tid is not None and 0 <= tid < len(tokens):
                out[key] = tokens[tid]
        if "tokenizer.ggml.add_bos_token" in self.metadata:
            out["add_bos_token"] = bool(self.metadata["tokenizer.ggml.add_bos_token"])
        if self.chat_template:
            out["chat_template"] = self.chat_template
        return out

    def hf_tokenizer(self) -> HFTokenizer:
        """The tokenizer as an `HFTokenizer` (needs the `tokenizers` package)."""
        if self.tokenizer_json is None:
            raise CheckpointError("GGUFModel không có tokenizer / no tokenizer was read (with_tokenizer=False)")
        tok = _import_tokenizers().Tokenizer.from_str(self.tokenizer_json)
        tc = self.tokenizer_config()
        return HFTokenizer(tok, bos_token=tc.get("bos_token"), eos_token=tc.get("eos_token"),
                           pad_token=tc.get("pad_token"), unk_token=tc.get("unk_token"),
                           chat_template=self.chat_template, extra_config={"add_bos_token": tc.get("add_bos_token")})


def _scalar(part, vtype, T):
    if vtype == T.STRING:
        return bytes(part).decode("utf-8")
    v = part[0]
    if vtype == T.BOOL:
        return bool(v)
    if vtype == T.FLOAT32:  # the shortest decimal that is this float32 (1e-05, not 9.99999974e-06)
        return float(np.format_float_scientific(np.float32(v), unique=True))
    if vtype == T.FLOAT64:
        return float(v)
    return int(v)


def _metadata(reader, gguf) -> dict:
    """{key: python value} of every key-value pair (arrays as lists; nested arrays as None)."""
    T = gguf.GGUFValueType
    out = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or not f.types:
            continue
        if f.types[0] == T.ARRAY:
            sub = f.types[1] if len(f.types) == 2 else None
            out[key] = None if sub is None else [_scalar(f.parts[i], sub, T) for i in f.data]
        else:
            out[key] = _scalar(f.parts[f.data[0]], f.types[0], T)
    return out


def _dequantize(t, gguf, dtype) -> np.ndarray:
    """One tensor as a host array of `dtype`, in NumPy order (GGUF's dims reversed), copied out of the map."""
    kind = gguf.GGMLQuantizationType(int(t.tensor_type))
    shape = tuple(int(n) for n in reversed([int(x) for x in t.shape]))
    data = np.asarray(t.data)
    if kind == gguf.GGMLQuantizationType.F64:
        arr = data.view(np.float64)
    else:
        try:
            arr = gguf.quants.dequantize(data, kind)
        except NotImplementedError as e:
            raise CheckpointError(f"Kiểu lượng tử hoá không hỗ trợ / unsupported GGUF tensor type {kind.name} "
                                  f"for tensor {t.name}") from e
    if arr.size != int(np.prod(shape)):
        raise CheckpointError(f"Tệp GGUF hỏng / corrupt GGUF tensor {t.name}: {arr.size} values for shape {shape}")
    return np.array(arr, dtype=dtype).reshape(shape)  # float32 -> float64 widening is exact


def _hf_name(gname: str, arch: str) -> tuple:
    """(transformers name, block map key) of a GGUF tensor name; (None, None) when unknown."""
    _, block, prefix, top, _ = _ARCHS[arch]
    m = _BLOCK_NAME.match(gname)
    if m:
        i, part, kind = m.groups()
        return (f"{prefix}.{i}.{block[part]}.{kind}", part) if part in block else (None, None)
    stem, _, kind = gname.rpartition(".")
    if stem in top and kind in ("weight", "bias"):
        return f"{top[stem]}.{kind}", stem
    return None, None


def _need(meta: dict, key: str, where: str, kind=int, default=None):
    """meta[key] (or `default` when absent), checked to be of `kind`; CheckpointError naming the key."""
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, kind):
        raise CheckpointError(f"Thiếu hoặc sai khoá / missing or invalid metadata key {key} in {where}: "
                              f"expected {kind.__name__ if isinstance(kind, type) else 'a number'}, got {v!r}")
    return v


def _llama_config(meta: dict, arch: str, names: set, vocab: int, where: str) -> dict:
    """transformers config.json of a llama / qwen2 GGUF file (hyper-parameters from `<arch>.*`)."""
    p = arch + "."
    heads = _need(meta, p + "attention.head_count", where)
    kv = _need(meta, p + "attention.head_count_kv", where, default=heads)  # a per-layer list is refused here
    hidden = _need(meta, p + "embedding_length", where)
    head_dim = meta.get(p + "attention.key_length") or meta.get(p + "rope.dimension_count") or hidden // heads
    for key in ("attention.value_length", "rope.dimension_count"):
        if meta.get(p + key, head_dim) != head_dim:
            raise CheckpointError(f"Không hỗ trợ / unsupported {p + key}={meta[p + key]} != head size {head_dim} in "
                                  f"{where} (partial rotary or unequal key/value heads)")
    cfg = {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]],
        "model_type": arch, "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": _need(meta, p + "feed_forward_length", where),
        "num_hidden_layers": _need(meta, p + "block_count", where),
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
        "max_position_embeddings": _need(meta, p + "context_length", where),
        "rms_norm_eps": _need(meta, p + "attention.layer_norm_rms_epsilon", where, (int, float)),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "hidden_act": "silu", "tie_word_embeddings": "output.weight" not in names,
    }
    scaling = meta.get(p + "rope.scaling.type")
    if scaling == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": float(meta[p + "rope.scaling.factor"])}
    elif scaling not in (None, "none"):
        raise CheckpointError(f"Không hỗ trợ / unsupported {p}rope.scaling.type={scaling!r} in {where}")
    if arch == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in names
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in names
    else:
        cfg["use_sliding_window"] = False
    return cfg


def _gpt2_config(meta: dict, names: set, vocab: int, where: str) -> dict:
    d = _need(meta, "gpt2.embedding_length", where)
    ff = meta.get("gpt2.feed_forward_length", 4 * d)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab,
            "n_positions": _need(meta, "gpt2.context_length", where), "n_embd": d,
            "n_layer": _need(meta, "gpt2.block_count", where), "n_head": _need(meta, "gpt2.attention.head_count", where),
            "n_inner": None if ff == 4 * d else ff,
            "layer_norm_epsilon": _need(meta, "gpt2.attention.layer_norm_epsilon", where, (int, float)),
            "activation_function": "gelu_new", "scale_attn_weights": True,
            "tie_word_embeddings": "output.weight" not in names}


def _tensors(reader, gguf, arch: str, config: dict, dtype, where: str) -> tuple:
    """({transformers name: array}, {GGUF name: type name}); Q/K rows un-permuted, Conv1D transposed back."""
    permute = _ARCHS[arch][4]
    out, types, unknown = {}, {}, []
    for t in reader.tensors:
        name, part = _hf_name(t.name, arch)
        if name is None:
            unknown.append(t.name)
            continue
        types[t.name] = gguf.GGMLQuantizationType(int(t.tensor_type)).name
        arr = _dequantize(t, gguf, dtype)
        if permute and part == "attn_q":
            arr = unpermute_qk(arr, config["num_attention_heads"])
        elif permute and part == "attn_k":
            arr = unpermute_qk(arr, config["num_key_value_heads"])
        elif arch == "gpt2" and part in _GPT2_CONV1D and arr.ndim == 2:
            arr = np.ascontiguousarray(arr.T)  # (out, in) -> Conv1D (in, out)
        out[name] = arr
    if unknown:
        raise CheckpointError(f"Tensor GGUF không xác định / unknown GGUF tensors for architecture {arch!r} in "
                              f"{where}: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if arch == "gpt2" and "lm_head.weight" in out:  # old converters stored GPT-2's tied head a second time
        wte = out.get("transformer.wte.weight")
        if wte is not None and wte.shape == out["lm_head.weight"].shape and bool((wte == out["lm_head.weight"]).all()):
            del out["lm_head.weight"]
            config["tie_word_embeddings"] = True
    return out, types


def read_gguf(path, dtype="float32", with_tokenizer: bool = True) -> GGUFModel:
    """Read a llama / qwen2 / gpt2 GGUF file into a `GGUFModel` (every tensor dequantised to `dtype`).

    dtype: "float32" or "float64" (gguf's dequantisers compute in float32; float64 widens exactly).
    with_tokenizer: rebuild tokenizer.json from `tokenizer.ggml.*` (a file whose vocabulary cannot be
    rebuilt raises unless this is False). Bad files raise CheckpointError naming the key or tensor.
    """
    gguf = _import_gguf()
    path = os.fspath(path)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype phải là float32 hoặc float64 / dtype must be float32 or float64, got {dtype}")
    if not os.path.isfile(path):
        raise CheckpointError(f"Không tìm thấy tệp / GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError/struct errors of its own on a bad file
        raise CheckpointError(f"Không đọc được / cannot read GGUF file {path}: {e}") from e
    meta = _metadata(reader, gguf)
    arch = meta.get("general.architecture")
    if arch not in _ARCHS:
        raise CheckpointError(f"Kiến trúc không hỗ trợ / unsupported general.architecture={arch!r} in {path} "
                              f"(supported: {', '.join(sorted(_ARCHS))})")
    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise CheckpointError(f"Thiếu tensor / missing tensor token_embd.weight in {path}")
    rows = int(embd.shape[-1])  # GGUF dims are fastest-first: (n_embd, n_vocab)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if isinstance(tokens, list) and tokens else meta.get(f"{arch}.vocab_size", rows)
    if vocab != rows:
        raise CheckpointError(f"Kích thước từ vựng không khớp / vocabulary size {vocab} (token list) != "
                              f"{rows} rows of token_embd.weight in {path}")
    config = (_gpt2_config(meta, names, vocab, path) if arch == "gpt2"
              else _llama_config(meta, arch, names, vocab, path))
    special = {key: meta.get(f"tokenizer.ggml.{k}_token_id") for k, key in SPECIAL_KEYS.items()}
    config.update({k: v for k, v in special.items() if k != "unk_token_id" and v is not None})
    tensors, types = _tensors(reader, gguf, arch, config, dtype, path)
    tok_json = None
    if with_tokenizer:
        try:
            tok_json = tokenizer_json_from_gguf(meta, path)
        except GGUFVocabError as e:
            raise CheckpointError(f"{e} (read_gguf(..., with_tokenizer=False) loads the weights alone)") from e
    return GGUFModel(model_type=arch, config=config, tensors=tensors, tokenizer_json=tok_json,
                     chat_template=meta.get("tokenizer.chat_template"), special_ids=special, metadata=meta,
                     tensor_types=types)


# ============================ writing ==========================================================

def _arch_metadata(model_type: str, config: dict) -> tuple:
    """(architecture, vocab_size, [(key, value, kind)]) for a transformers config; unsupported options raise."""
    if model_type == "gpt2":
        missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in config]
        if missing:
            raise CheckpointError(f"Thiếu khoá cấu hình GPT-2 / missing GPT-2 config keys: {', '.join(missing)}")
        try:
            c = GPTConfig(**{k: config[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                                    "layer_norm_epsilon") if k in config})
        except (TypeError, ValueError) as e:
            raise CheckpointError(str(e)) from e
        if config.get("n_inner") not in (None, 4 * c.n_embd):
            raise CheckpointError(f"Không hỗ trợ / unsupported n_inner={config['n_inner']!r} (only 4*n_embd)")
        return "gpt2", c.vocab_size, [
            ("gpt2.context_length", c.n_positions, "u32"), ("gpt2.embedding_length", c.n_embd, "u32"),
            ("gpt2.feed_forward_length", 4 * c.n_embd, "u32"), ("gpt2.block_count", c.n_layer, "u32"),
            ("gpt2.attention.head_count", c.n_head, "u32"),
            ("gpt2.attention.layer_norm_epsilon", c.layer_norm_epsilon, "f32")]
    if model_type not in _ARCH_OF:
        raise CheckpointError(f"model_type {model_type!r} không ghi được ra GGUF / cannot be written as GGUF "
                              f"(supported: {', '.join(sorted(_ARCH_OF))})")
    cfg = LlamaConfig(**interpret_llama_config({**config, "model_type": model_type}, "GGUF"))
    arch = _ARCH_OF[model_type]
    if "sliding_attention" in (cfg.layer_types or []):
        raise CheckpointError("Không hỗ trợ / sliding-window attention cannot be written as GGUF here")
    p = arch + "."
    out = [(p + "context_length", cfg.max_position_embeddings, "u32"), (p + "embedding_length", cfg.hidden_size, "u32"),
           (p + "feed_forward_length", cfg.intermediate_size, "u32"), (p + "block_count", cfg.num_hidden_layers, "u32"),
           (p + "attention.head_count", cfg.num_attention_heads, "u32"),
           (p + "attention.head_count_kv", cfg.num_key_value_heads, "u32"),
           (p + "attention.key_length", cfg.head_dim, "u32"), (p + "attention.value_length", cfg.head_dim, "u32"),
           (p + "rope.dimension_count", cfg.head_dim, "u32"), (p + "rope.freq_base", cfg.rope_theta, "f32"),
           (p + "attention.layer_norm_rms_epsilon", cfg.rms_norm_eps, "f32"), (p + "vocab_size", cfg.vocab_size, "u32")]
    if cfg.rope_scaling is not None:
        out += [(p + "rope.scaling.type", "linear", "str"), (p + "rope.scaling.factor", cfg.rope_scaling["factor"], "f32")]
    return arch, cfg.vocab_size, out


def _gguf_tensors(model_type: str, arch: str, config: dict, tensors: dict) -> dict:
    """{GGUF name: host array} from transformers-named tensors (permuted / transposed as llama.cpp stores them)."""
    _, block, prefix, top, permute = _ARCHS[arch]
    inv_top = {v: k for k, v in top.items()}
    inv_block = {v: k for k, v in block.items()}
    heads = config.get("num_attention_heads", config.get("n_head"))
    kv_heads = config.get("num_key_value_heads") or heads
    out = {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        stem, _, kind = name.rpartition(".")
        m = re.match(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$", stem)
        part = inv_block.get(m.group(2)) if m else inv_top.get(stem)
        if part is None or kind not in ("weight", "bias"):
            raise CheckpointError(f"Tensor không ghi được ra GGUF / tensor {name!r} has no GGUF name for "
                                  f"model_type {model_type!r}")
        gname = f"blk.{m.group(1)}.{part}.{kind}" if m else f"{part}.{kind}"
        if permute and part == "attn_q":
            arr = permute_qk(arr, heads)
        elif permute and part == "attn_k":
            arr = permute_qk(arr, kv_heads)
        elif arch == "gpt2" and part in _GPT2_CONV1D and arr.ndim == 2:
            arr = arr.T  # Conv1D (in, out) -> (out, in)
        if arch == "gpt2" and part == "output":
            continue  # GPT-2's head is tied to token_embd
        out[gname] = arr
    return out


def _encode(arr: np.ndarray, dtype: str, gguf) -> tuple:
    """(array to write, raw GGML type or None): 2-D tensors in `dtype`, 1-D ones in F32 (as llama.cpp keeps them)."""
    if arr.ndim < 2 or dtype == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32), None
    if dtype == "F16":
        return np.ascontiguousarray(arr.astype(np.float16)), None
    bf16 = gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), gguf.GGMLQuantizationType.BF16)
    return bf16, gguf.GGMLQuantizationType.BF16


def _write_kv(w, key: str, value, kind: str) -> None:
    """One key-value pair with its GGUF type (lists: gguf picks the element type, str or int)."""
    {"u32": w.add_uint32, "f32": w.add_float32, "str": w.add_string, "bool": w.add_bool,
     "list": w.add_array}[kind](key, value)


def write_gguf(path, *, model_type: str, config: dict, tensors: dict, tokenizer_json: str | None = None,
               chat_template: str | None = None, special_ids: dict | None = None, dtype: str = "F32",
               add_bos_token: bool | None = None) -> None:
    """Write a GGUF file llama.cpp reads: hyper-parameters, tensors, vocabulary, chat template, special ids.

    model_type: "llama" (and "mistral", written as llama.cpp's "llama"), "qwen2" or "gpt2"; config: the
    transformers config.json dict; tensors: transformers names -> arrays (as read_gguf returns them);
    tokenizer_json: a byte-level BPE tokenizer.json (None: no vocabulary is written); special_ids:
    {"bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"} -> int | None; dtype: "F32", "F16"
    or "BF16" for 2-D tensors; add_bos_token: tokenizer.ggml.add_bos_token (whether llama.cpp adds bos;
    None: not written). Atomic: a temporary file in the same folder, fsync, then rename.
    """
    gguf = _import_gguf()
    if dtype not in WRITE_TYPES:
        raise ValueError(f"dtype phải là một trong / dtype must be one of {WRITE_TYPES}, got {dtype!r}")
    if "score.weight" in tensors:
        raise CheckpointError("Mô hình có score head không ghi được ra GGUF / a model with a score head "
                              "(reward model) cannot be written as GGUF")
    arch, vocab_size, kvs = _arch_metadata(model_type, config)
    gt = _gguf_tensors(model_type, arch, config, tensors)
    kvs += [("general.file_type", _FILE_TYPE[dtype], "u32"),
            ("general.quantization_version", gguf.GGML_QUANT_VERSION, "u32")]
    try:
        vocab = gguf_vocab_from_tokenizer_json(tokenizer_json) if tokenizer_json is not None else None
    except GGUFVocabError as e:
        raise CheckpointError(str(e)) from e
    if vocab is not None:
        n = len(vocab["tokenizer.ggml.tokens"])
        if n > vocab_size:
            raise CheckpointError(f"Tokenizer lớn hơn mô hình / the tokenizer has {n} tokens > vocab_size {vocab_size}")
        vocab["tokenizer.ggml.tokens"] += [f"[PAD{i}]" for i in range(n, vocab_size)]  # as llama.cpp pads
        vocab["tokenizer.ggml.token_type"] += [5] * (vocab_size - n)  # UNUSED
    special = {k: v for k, v in (special_ids or {}).items() if v is not None}
    for key, tid in special.items():
        if key not in SPECIAL_KEYS.values() or isinstance(tid, bool) or not isinstance(tid, int) \
                or not 0 <= tid < vocab_size:
            raise CheckpointError(f"special_ids[{key!r}]={tid!r} không hợp lệ / is invalid: expected one of "
                                  f"{sorted(SPECIAL_KEYS.values())} with an id in [0, {vocab_size})")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"Đường dẫn là thư mục / path is a directory, expected a .gguf file path: {path}")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=parent)
    os.close(fd)
    if vocab is not None:
        kvs += [(key, value, "list" if isinstance(value, list) else "str") for key, value in vocab.items()]
        kvs += [(f"tokenizer.ggml.{k}_token_id", special[key], "u32") for k, key in SPECIAL_KEYS.items() if key in special]
        if add_bos_token is not None:
            kvs.append(("tokenizer.ggml.add_bos_token", bool(add_bos_token), "bool"))
    if chat_template:
        kvs.append(("tokenizer.chat_template", chat_template, "str"))
    try:
        w = gguf.GGUFWriter(tmp, arch)
        for key, value, kind in kvs:
            _write_kv(w, key, value, kind)
        for gname, arr in gt.items():
            data, raw = _encode(arr, dtype, gguf)
            w.add_tensor(gname, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ============================ folders and model objects ========================================

class _TokenizerFiles:
    """Writes tokenizer.json + tokenizer_config.json into a folder (what write_checkpoint_dir calls)."""

    def __init__(self, gm: GGUFModel):
        self._gm = gm

    def save(self, directory) -> None:
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(self._gm.tokenizer_json)
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(self._gm.tokenizer_config(), f, ensure_ascii=False, indent=2)
            f.write("\n")


def gguf_to_folder(gguf_path, out_dir, dtype="float32") -> GGUFModel:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json (with the chat
    template) into `out_dir` (atomically) so that hf.from_pretrained(out_dir) loads the GGUF model."""
    gm = read_gguf(gguf_path, dtype=dtype)
    config = dict(gm.config, torch_dtype=str(np.dtype(dtype)))
    tensors = {k: np.ascontiguousarray(v) for k, v in gm.tensors.items()}

    def write(tmp):
        _write_json(os.path.join(tmp, "config.json"), config)
        write_safetensors(os.path.join(tmp, "model.safetensors"), tensors)
        _TokenizerFiles(gm).save(tmp)

    write_model_folder(out_dir, write)
    return gm


def model_from_gguf(source, tokenizer=None):
    """A `LlamaLM` (llama, qwen2) or `TransformerLM` (gpt2) from a GGUF file path or a `GGUFModel`, in eval mode.

    Parameters in the backend's dtype; the tokenizer is the file's (HFTokenizer) unless given.
    """
    if isinstance(source, GGUFModel):
        gm, where = source, "GGUFModel"
    else:
        wide = np.dtype(get_backend().dtype) == np.float64
        gm = read_gguf(source, dtype="float64" if wide else "float32", with_tokenizer=tokenizer is None)
        where = os.fspath(source)
    tok = tokenizer if tokenizer is not None else gm.hf_tokenizer()
    try:
        if gm.model_type == "gpt2":
            cfg = GPTConfig(**interpret_gpt2_config(gm.config, where))
            model = TransformerLM._blank(cfg, tok)
            arrays = assign_arrays(model._expected_shapes(False), _gpt2_named(gm.tensors), _to_file_key)
        else:
            cfg = LlamaConfig(**interpret_llama_config(gm.config, where))
            model = LlamaLM._blank(cfg, tok)
            arrays = assign_arrays(model._expected_shapes(False), _llama_named(gm.tensors, cfg))
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: {e}") from e
    model._params = {n: Parameter(a, name=n) for n, a in arrays.items()}
    model.generation_config = {"eos_token_id": [gm.special_ids["eos_token_id"]]} if gm.special_ids.get("eos_token_id") is not None else None
    return model.eval()


def save_gguf(model, path, dtype: str = "F32") -> None:
    """Write our `LlamaLM` / `TransformerLM` as a GGUF file (see write_gguf); its HFTokenizer's
    vocabulary, chat template and special ids go with it (another tokenizer writes no vocabulary)."""
    refuse_adapters(model)
    be = get_backend()
    host = {n: be.to_numpy(p.data) for n, p in model.base_parameters().items()}
    if isinstance(model, TransformerLM):
        config, tensors = gpt2_config_to_hf(model, "float32"), {_to_file_key(n): a for n, a in host.items()}
    elif isinstance(model, LlamaLM):
        config = llama_config_to_hf(model.config, dtype="float32", score_head=False, tokenizer=model.tokenizer)
        tensors = host
    else:
        raise TypeError(f"save_gguf cần TransformerLM hoặc LlamaLM / needs a TransformerLM or LlamaLM, "
                        f"got {type(model).__name__}")
    tok = model.tokenizer
    tok_json = tok._tok.to_str() if isinstance(tok, HFTokenizer) else None
    special = {"bos_token_id": getattr(tok, "bos_token_id", None), "eos_token_id": getattr(tok, "eos_token_id", None),
               "pad_token_id": getattr(tok, "pad_token_id", None)}
    if isinstance(tok, HFTokenizer) and "unk_token" in tok.special_tokens:
        special["unk_token_id"] = tok.token_to_id(tok.special_tokens["unk_token"])
    add_bos = getattr(tok, "_extra", {}).get("add_bos_token") if isinstance(tok, HFTokenizer) else None
    write_gguf(path, model_type=config["model_type"], config=config, tensors=tensors, tokenizer_json=tok_json,
               chat_template=getattr(tok, "chat_template", None), special_ids=special, dtype=dtype,
               add_bos_token=add_bos)
