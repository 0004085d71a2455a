"""Hugging Face folders in and out, for both model families: `tai_mo_hinh(path)` and `luu_mo_hinh(model, path)`.

What it is for: the one reader and the one writer of transformers-style folders — config.json
(through the config policy of hf_config.py: every key mapped, ignored or refused by name; unknown keys
are a warning), model.safetensors or a sharded index (float64/32/16, bfloat16; safetensors.py),
transformers' tensor names for GPT-2 (`transformer.h.0...`) and the Llama family (`model.layers.0...`),
the tokenizer (tokenizer.json via `HFTokenizer`, our tokenizer_config.json, or none: then ids in,
logits out), and generation_config.json (its end-of-turn ids stop generation). The writer produces
folders transformers loads back, atomically, replacing only the files it owns (folders.py).
The seed-style `tai_mo_hinh` / `luu_mo_hinh` (api.py) call these for folders.

What it is not: a downloader (paths are local folders; nothing is fetched at run time), a converter
for pickled `pytorch_model.bin` files, or a quantisation loader.
"""

from __future__ import annotations

import json
import os
import re

from .._version import __version__
from ..backends import get_backend, host_np
from ..core.autograd import Parameter
from ..core.errors import CheckpointError, TokenizerError
from ..models.base import assign_arrays
from ..models.gpt2 import GPTConfig, TransformerLM
from ..models.llama import MODEL_TYPES, LlamaConfig, LlamaLM
from ..text.hf_tokenizer import HFTokenizer
from ..text.jsonl import read_json_object
from ..text.loading import load_tokenizer
from ..text.tokenizer import TOKENIZER_CONFIG_NAME, NoTokenizer
from .folders import write_model_folder
from .hf_config import (GENERATION_CONFIG_NAME, generation_config_dict, interpret_gpt2_config,
                        interpret_llama_config, read_generation_config, score_head_flag)
from .safetensors import INDEX_NAME, WEIGHTS_NAME, read_weights, write_safetensors

__all__ = ["from_pretrained", "save_pretrained", "read_weights",
           "gpt2_config_to_hf", "llama_config_to_hf", "CheckpointError", "INDEX_NAME", "WEIGHTS_NAME", "CONFIG_NAME"]

CONFIG_NAME = "config.json"
TOKENIZER_JSON = "tokenizer.json"


# ============================ config.json ======================================================

def read_config(path: str, raw: dict):
    """(model class, config, score_head flag or None) from a folder's parsed config.json."""
    where = os.path.join(path, CONFIG_NAME)
    mt = raw.get("model_type")
    if mt == "gpt2" or (mt is None and "n_embd" in raw):
        cls, config_cls, kw = TransformerLM, GPTConfig, interpret_gpt2_config(raw, where)
    elif mt in MODEL_TYPES:
        cls, config_cls, kw = LlamaLM, LlamaConfig, interpret_llama_config(raw, where)
    else:
        raise CheckpointError(f"model_type {mt!r} không được hỗ trợ / unsupported model_type {mt!r} in {where} "
                              f"(supported: 'gpt2', {', '.join(repr(t) for t in MODEL_TYPES)})")
    try:
        config = config_cls(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Cấu hình không hợp lệ / invalid config in {where}: {e}") from e
    return cls, config, score_head_flag(raw)


def gpt2_config_to_hf(model, dtype: str) -> dict:
    """config.json of a `TransformerLM` for transformers' GPT2LMHeadModel (and the score head's class)."""
    c, tok = model.config, model.tokenizer
    arch = ["GPT2LMHeadModel"] + (["GPT2ForSequenceClassification"] if model.has_score_head else [])
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
        "score_head": model.has_score_head,
        "vietnamese_ai_ref_version": __version__,
    })
    if model.has_score_head:  # one label, as GPT2ForSequenceClassification(num_labels=1) expects
        out["id2label"] = {"0": "LABEL_0"}
        out["label2id"] = {"LABEL_0": 0}
    return out


def llama_config_to_hf(cfg: LlamaConfig, *, dtype: str, score_head: bool, tokenizer=None) -> dict:
    """config.json for transformers (4.x and 5.x both read it); raises if the family cannot express cfg."""
    mt = cfg.model_type
    cls = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[mt]
    if mt == "llama" and cfg.attention_bias != cfg.o_proj_bias:
        raise CheckpointError("Llama: attention_bias phải bằng o_proj_bias / Llama's attention_bias covers q, k, v "
                              f"and o_proj: attention_bias={cfg.attention_bias} != o_proj_bias={cfg.o_proj_bias}")
    if mt == "qwen2" and (cfg.attention_bias, cfg.o_proj_bias, cfg.mlp_bias) != (True, False, False):
        raise CheckpointError("Qwen2 cần attention_bias=True, o_proj_bias=False, mlp_bias=False / Qwen2 needs "
                              "q/k/v biases only")
    if mt == "mistral" and (cfg.attention_bias or cfg.o_proj_bias or cfg.mlp_bias):
        raise CheckpointError("Mistral không có bias / Mistral has no biases (attention_bias, o_proj_bias, mlp_bias)")
    sliding = "sliding_attention" in cfg.layer_types
    if mt == "llama" and sliding:
        raise CheckpointError("Llama không có sliding_window / model_type 'llama' cannot express sliding_window")
    if mt == "mistral" and sliding and "full_attention" in cfg.layer_types:
        raise CheckpointError("Mistral: sliding_window áp dụng cho mọi lớp / Mistral applies sliding_window to "
                              f"every layer, got layer_types={cfg.layer_types}")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    out = {
        "architectures": [f"{cls}ForCausalLM"] + ([f"{cls}ForSequenceClassification"] if score_head else []),
        "model_type": mt,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x spelling
        "rope_scaling": None if cfg.rope_scaling is None else {"type": cfg.rope_scaling["rope_type"],
                                                               **cfg.rope_scaling},
        "rope_parameters": rope,  # transformers 5.x spelling
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": cfg.attention_dropout,
        "initializer_range": cfg.initializer_range,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
        "seed": cfg.seed,
        "score_head": score_head,
        "vietnamese_ai_ref_version": __version__,
    }
    if mt == "llama":
        out.update({"attention_bias": cfg.attention_bias, "mlp_bias": cfg.mlp_bias, "pretraining_tp": 1})
    elif mt == "qwen2":
        out.update({"use_sliding_window": sliding, "sliding_window": cfg.sliding_window if sliding else None,
                    "max_window_layers": cfg.num_hidden_layers, "layer_types": list(cfg.layer_types)})
    else:
        out["sliding_window"] = cfg.sliding_window if sliding else None
    if tokenizer is not None:
        out.update({"bos_token_id": getattr(tokenizer, "bos_token_id", None),
                    "eos_token_id": getattr(tokenizer, "eos_token_id", None),
                    "pad_token_id": getattr(tokenizer, "pad_token_id", None)})
    if score_head:  # one label, as *ForSequenceClassification(num_labels=1) expects
        out["id2label"] = {"0": "LABEL_0"}
        out["label2id"] = {"LABEL_0": 0}
    return out


# ============================ tensor names =====================================================

def _to_file_key(name: str) -> str:
    """Our parameter name -> transformers' key (GPT2LMHeadModel / GPT2ForSequenceClassification)."""
    return name if name == "score.weight" else "transformer." + name


_BUFFER_KEY = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # old GPT-2 files store the causal mask


def _gpt2_named(arrays: dict, cfg=None) -> dict:
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


def _llama_named(arrays: dict, cfg: LlamaConfig) -> dict:
    """File key -> array, mapped to {our name: (file key, array)} (our names are transformers')."""
    prefixed = any(k.startswith("model.") for k in arrays)
    named, lm_head = {}, None
    for key, arr in arrays.items():
        name = key
        if not prefixed and key not in ("lm_head.weight", "score.weight"):
            name = "model." + key  # a bare LlamaModel file (no "model." prefix)
        if name.endswith(".rotary_emb.inv_freq"):  # a buffer older transformers saved; recomputed here
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            lm_head = arr
            continue
        named[name] = (key, arr)
    if lm_head is not None:
        emb = named.get("model.embed_tokens.weight")
        if emb is None or emb[1].shape != lm_head.shape or not bool((emb[1] == lm_head).all()):
            raise CheckpointError("lm_head.weight khác embed_tokens nhưng tie_word_embeddings=true / lm_head.weight "
                                  "differs from model.embed_tokens.weight while tie_word_embeddings is true")
    return named


# ============================ tokenizers =======================================================

def _load_tokenizer(path: str, raw_config: dict, vocab_size: int):
    """tokenizer.json -> HFTokenizer; else our tokenizer_config.json; else a NoTokenizer (ids in, logits out)."""
    if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        return HFTokenizer.from_pretrained(path, model_config=raw_config)
    tc = os.path.join(path, TOKENIZER_CONFIG_NAME)
    if os.path.isfile(tc):
        cls = read_json_object(tc, error=CheckpointError).get("tokenizer_class")
        try:
            return load_tokenizer(path)
        except TokenizerError as e:
            if cls not in (None, "ByteTokenizer"):
                raise CheckpointError(
                    f"Không đọc được tokenizer / cannot load tokenizer class {cls!r} from {path}: this folder has "
                    f"no {TOKENIZER_JSON} (save it with transformers' AutoTokenizer.save_pretrained, which writes "
                    f"{TOKENIZER_JSON}), or pass tokenizer=..."
                ) from e
            raise CheckpointError(str(e)) from e
    ids = {k: raw_config.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    return NoTokenizer(**{k: (v if isinstance(v, int) and not isinstance(v, bool) else None) for k, v in ids.items()})


# ============================ public API =======================================================

def from_pretrained(path, tokenizer=None):
    """Load a local Hugging Face folder as a `TransformerLM` (gpt2) or `LlamaLM` (llama, qwen2, mistral).

    path: a folder with config.json and model.safetensors (or model.safetensors.index.json + shards).
    tokenizer: overrides the folder's tokenizer (tokenizer.json via HFTokenizer, our own
    tokenizer_config.json, else none: a `NoTokenizer`, ids in, logits out). generation_config.json's
    ids become `model.generation_config`. Parameters are cast to the backend's dtype; eval mode.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"Không tìm thấy thư mục checkpoint / checkpoint directory not found: {path}")
    raw = read_json_object(os.path.join(path, CONFIG_NAME), error=CheckpointError)
    cls, config, score_head = read_config(path, raw)
    tok = tokenizer if tokenizer is not None else _load_tokenizer(path, raw, config.vocab_size)
    arrays = read_weights(path)
    try:
        model = cls._blank(config, tok)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if score_head is None:
        score_head = "score.weight" in arrays
    named = _gpt2_named(arrays) if cls is TransformerLM else _llama_named(arrays, config)
    display = _to_file_key if cls is TransformerLM else str
    model._params = {n: Parameter(a, name=n)
                     for n, a in assign_arrays(model._expected_shapes(score_head), named, display).items()}
    model.generation_config = read_generation_config(path)
    return model.eval()


def save_pretrained(model, path) -> None:
    """Write `model` as a transformers-loadable folder at `path`: config.json, model.safetensors, the
    tokenizer's files (when it has `save`) and generation_config.json. Atomic for a new folder; into an
    existing model folder only these files are replaced (README.md, LICENSE, ... stay)."""
    if not isinstance(model, (TransformerLM, LlamaLM)):
        raise TypeError(f"save_pretrained cần TransformerLM hoặc LlamaLM / needs a TransformerLM or LlamaLM, "
                        f"got {type(model).__name__}")
    refuse_adapters(model)
    be = get_backend()
    gpt2 = isinstance(model, TransformerLM)
    tensors = {(_to_file_key(n) if gpt2 else n): host_np.ascontiguousarray(be.to_numpy(p.data))
               for n, p in model.base_parameters().items()}
    dtype = str(next(iter(tensors.values())).dtype)
    if gpt2:
        config_json = gpt2_config_to_hf(model, dtype)
    else:
        config_json = llama_config_to_hf(model.config, dtype=dtype, score_head=model.has_score_head,
                                         tokenizer=model.tokenizer)
    tok = model.tokenizer
    gen = model.generation_config or {}
    generation = generation_config_dict(gen.get("eos_token_id") or [i for i in [tok.eos_token_id] if i is not None],
                                        gen.get("bos_token_id", tok.bos_token_id),
                                        gen.get("pad_token_id", tok.pad_token_id))

    def write(tmp):
        _write_json(os.path.join(tmp, CONFIG_NAME), config_json)
        write_safetensors(os.path.join(tmp, WEIGHTS_NAME), tensors)
        if hasattr(tok, "save"):
            tok.save(tmp)
        _write_json(os.path.join(tmp, GENERATION_CONFIG_NAME), generation)

    write_model_folder(path, write)


def refuse_adapters(model) -> None:
    """A model with LoRA adapters is not saved as a full model (the adapters would be lost silently)."""
    if getattr(model, "has_adapters", False):
        raise ValueError(
            "Mô hình có adapter LoRA: lưu adapter bằng luu_adapter(model, thu_muc), hoặc hợp nhất trước bằng "
            "hop_nhat_lora(model), hoặc lưu riêng mô hình gốc bằng model.base_model() / the model has LoRA "
            "adapters: save them with luu_adapter(model, dir), merge them first with hop_nhat_lora(model), "
            "or save the base alone via model.base_model()")


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


