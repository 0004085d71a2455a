"""Hugging Face folders in and out: `from_pretrained(path)` and `save_pretrained(model, path)`.

What it is for: loading a local transformers checkpoint folder (config.json + model.safetensors, or a
sharded model.safetensors.index.json; float64/float32/float16/bfloat16 tensors) into the reference
models — `TransformerLM` for model_type "gpt2", `LlamaLM` for "llama", "qwen2" and "mistral" — with
every tensor name and shape checked and every config option either mapped, ignored because it does
not change the math, or refused by name; and writing our models back as folders that
`transformers.AutoModelForCausalLM.from_pretrained` loads (atomic: a temporary sibling directory
renamed into place). The tokenizer comes from tokenizer.json (`HFTokenizer`, extra `hf`), else from
our own tokenizer_config.json, else the byte tokenizer when the vocabulary is large enough.
Seed-style aliases: `tai_mo_hinh` (load) and `luu_mo_hinh` (save).

What it is not: a downloader (paths are local folders; nothing is fetched at run time), a converter
for pickled `pytorch_model.bin` files, or a quantisation loader.
"""

from __future__ import annotations

import json
import os
import struct

from ..core.autograd import Parameter
from ..backends import get_backend, host_np
from ..models.llama import MODEL_TYPES, LlamaConfig, LlamaLM, param_specs
from ..models.gpt2 import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, TransformerLM, _assign, _from_file_keys,
                    _read_config_json, _read_json, write_checkpoint_dir)
from ..core.errors import TokenizerError
from ..text.loading import load_tokenizer
from ..text.tokenizer import TOKENIZER_CONFIG_NAME, ByteTokenizer

__all__ = [
    "from_pretrained", "save_pretrained", "tai_mo_hinh", "luu_mo_hinh", "read_safetensors", "read_weights",
    "llama_config_from_hf", "llama_config_to_hf", "assign_arrays", "CheckpointError", "INDEX_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"

# safetensors dtype -> host NumPy dtype (BF16 is widened to float32 by bit shifting)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "BOOL": "?"}


# ============================ safetensors files ================================================

def read_safetensors(path) -> dict:
    """Every tensor of one .safetensors file as a host NumPy array (memory-mapped; BF16 -> float32).

    Parsed directly (8-byte little-endian header size, JSON header, raw data), so bfloat16 files load
    without torch. A truncated or malformed file raises CheckpointError naming it.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                raise ValueError(f"header size {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"Không đọc được / cannot read safetensors file {path}: {e}") from e
    base = 8 + n
    raw = host_np.memmap(path, dtype=host_np.uint8, mode="r") if size > base else host_np.zeros(0, host_np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if base + b > size or a > b:
            raise CheckpointError(f"Tệp hỏng / corrupt safetensors file {path}: tensor {name} lies outside the file")
        chunk = raw[base + a: base + b]
        if dtype == "BF16":  # bfloat16 = the high 16 bits of a float32
            arr = (chunk.view("<u2").astype(host_np.uint32) << 16).view(host_np.float32)
        elif dtype in _ST_DTYPES:
            arr = chunk.view(_ST_DTYPES[dtype])
        else:
            raise CheckpointError(
                f"Kiểu dữ liệu không hỗ trợ / unsupported tensor dtype {dtype} for tensor {name} in {path}"
            )
        count = 1
        for s in shape:
            count *= s
        if arr.size != count:
            raise CheckpointError(f"Tệp hỏng / corrupt safetensors file {path}: tensor {name} has {arr.size} "
                                  f"values for shape {shape}")
        out[name] = arr.reshape(shape)
    return out


def read_weights(path) -> dict:
    """All tensors of a checkpoint folder: model.safetensors, or the shards listed by the index file."""
    path = os.fspath(path)
    single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, INDEX_NAME)
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.isfile(index):
        idx = _read_json(index)
        wmap = idx.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise CheckpointError(f"{index}: thiếu 'weight_map' / missing or empty 'weight_map'")
        out = {}
        for shard in sorted(set(wmap.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"Thiếu tệp / missing shard file: {shard_path} (listed in {index})")
            for k, arr in read_safetensors(shard_path).items():
                if wmap.get(k) != shard:
                    raise CheckpointError(
                        f"Tensor {k} trong {shard} không khớp index / tensor {k} found in shard {shard}, "
                        f"but {INDEX_NAME} maps it to {wmap.get(k)!r}"
                    )
                out[k] = arr
        missing = sorted(k for k in wmap if k not in out)
        if missing:
            raise CheckpointError("Thiếu tensor trong các shard / tensors listed in the index but absent: "
                                  + ", ".join(missing))
        return out
    extra = ""
    if any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(path)):
        extra = (" (only safetensors is read: re-save with transformers' "
                 "save_pretrained(path, safe_serialization=True))")
    raise CheckpointError(f"Thiếu tệp / missing file: {single} or {index}{extra}")


def assign_arrays(expected: dict, named: dict) -> dict:
    """Backend arrays in `expected` order from {name: (file key, array)}; strict names and shapes.

    Missing tensors, unexpected tensors and wrong shapes raise CheckpointError naming every one
    (model._assign, with our names shown as they are: Llama names are already transformers' names).
    """
    return _assign(expected, named, display=str)


# ============================ config.json of the Llama family ==================================

# Keys that never change the math of a forward pass (generation defaults, bookkeeping, labels).
_IGNORED_KEYS = {
    "architectures", "torch_dtype", "dtype", "transformers_version", "vietnamese_ai_ref_version", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache",
    "id2label", "label2id", "num_labels", "problem_type", "tokenizer_class", "task_specific_params",
    "finetuning_task", "prefix", "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder",
    "cross_attention_hidden_size", "pruned_heads", "use_bfloat16", "tf_legacy_loss", "output_scores",
    "return_dict_in_generate", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "_attn_implementation_autoset",
    "pretraining_tp",  # tensor-parallel slicing of the same matmuls: identical math
    "max_window_layers",  # Qwen2: only decides layer_types when use_sliding_window is true (read there)
    "use_sliding_window", "score_head", "seed", "model_type",
}
# Keys whose value must be one of these (anything else changes the math and is refused by name).
_CHECKED_KEYS = {
    "hidden_act": ("silu", "swish"),
    "partial_rotary_factor": (1, 1.0),
    "use_mrope": (False,),
    "attn_logit_softcapping": (None,),
    "final_logit_softcapping": (None,),
}
_FIELD_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "attention_dropout",
    "initializer_range", "tie_word_embeddings", "sliding_window", "layer_types", "attention_bias", "mlp_bias",
}


def llama_config_from_hf(raw: dict, where: str = CONFIG_NAME) -> tuple:
    """(LlamaConfig, score_head flag or None) from a transformers config.json dict of a Llama-family model.

    Reads both rope spellings (transformers 4: rope_theta + rope_scaling; transformers 5: rope_parameters).
    A key that would change the computation and is not supported raises CheckpointError naming it.
    """
    mt = raw.get("model_type")
    if mt not in MODEL_TYPES:
        raise CheckpointError(
            f"model_type {mt!r} không được hỗ trợ / unsupported model_type {mt!r} in {where} "
            f"(supported: 'gpt2', {', '.join(repr(t) for t in MODEL_TYPES)})"
        )
    for key in ("quantization_config", "rope_interleaved", "moe_intermediate_size", "num_experts"):
        if raw.get(key) not in (None, False):
            raise CheckpointError(f"Không hỗ trợ / unsupported config option {key}={raw[key]!r} in {where}")
    kw = {"model_type": mt}
    if isinstance(raw.get("seed"), int):
        kw["seed"] = raw["seed"]
    for key, value in raw.items():
        if key in _FIELD_KEYS:
            kw[key] = value
        elif key in _CHECKED_KEYS:
            if value not in _CHECKED_KEYS[key]:
                raise CheckpointError(f"Không hỗ trợ / unsupported config value {key}={value!r} in {where}")
        elif key in ("rope_theta", "rope_scaling", "rope_parameters"):
            pass  # below
        elif key not in _IGNORED_KEYS:
            raise CheckpointError(f"Khoá cấu hình không xác định / unknown config key {key!r} in {where} "
                                  f"(model_type {mt!r})")
    # rotary: rope_parameters (new) wins over rope_scaling (old); theta from either, else the top-level key
    rp = raw.get("rope_parameters") or raw.get("rope_scaling")
    if rp is not None and not isinstance(rp, dict):
        raise CheckpointError(f"Không hỗ trợ / unsupported rope_parameters={rp!r} in {where}")
    if rp is not None and any(isinstance(v, dict) for v in rp.values()):
        raise CheckpointError(f"Không hỗ trợ / unsupported per-layer-type rope_parameters in {where}")
    theta = (rp or {}).get("rope_theta", raw.get("rope_theta", 10000.0))
    kw["rope_theta"] = float(theta)
    if rp is not None and rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"Không hỗ trợ / unsupported partial_rotary_factor="
                              f"{rp['partial_rotary_factor']!r} in {where}")
    rs = None if rp is None else {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if rs is not None:
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind not in (None, "default", "linear", "llama3"):
            raise CheckpointError(
                f"rope_scaling loại {kind!r} không được hỗ trợ / unsupported rope_scaling/rope_parameters type "
                f"{kind!r} in {where} (supported: 'default', 'linear', 'llama3')"
            )
        if kind == "llama3":  # transformers' default for the pre-training context length
            rs.setdefault("original_max_position_embeddings", raw.get("max_position_embeddings"))
    kw["rope_scaling"] = rs
    # per-family attention details
    if mt != "llama":
        kw.pop("attention_bias", None)
        if raw.get("mlp_bias", False) is not False:
            raise CheckpointError(f"Không hỗ trợ / unsupported mlp_bias={raw['mlp_bias']!r} in {where} "
                                  f"(only Llama has MLP biases)")
        kw.pop("mlp_bias", None)
    if mt == "llama":
        bias = raw.get("attention_bias", False)
        kw["attention_bias"], kw["o_proj_bias"] = bias, bias
        kw.pop("sliding_window", None)
        if raw.get("sliding_window") is not None:
            raise CheckpointError(f"Không hỗ trợ / unsupported sliding_window for model_type 'llama' in {where}")
    elif mt == "qwen2":
        if raw.get("attention_bias", True) is not True:
            raise CheckpointError(f"Không hỗ trợ / unsupported attention_bias={raw['attention_bias']!r} in {where} "
                                  f"(Qwen2 always has q/k/v biases)")
        window = raw.get("sliding_window") if raw.get("use_sliding_window", False) else None
        kw["sliding_window"] = window
        if raw.get("layer_types") is None:
            n = raw.get("num_hidden_layers", 0)
            first = raw.get("max_window_layers", 0)
            kw["layer_types"] = ["sliding_attention" if window is not None and i >= first else "full_attention"
                                 for i in range(n if isinstance(n, int) else 0)]
        elif window is None:
            if "sliding_attention" in raw["layer_types"]:
                raise CheckpointError(f"layer_types has 'sliding_attention' but use_sliding_window is false in {where}")
    else:  # mistral: one window for every layer
        if "layer_types" in raw:
            raise CheckpointError(f"Không hỗ trợ / unsupported key 'layer_types' for model_type 'mistral' in {where}")
        if raw.get("attention_bias", False) is not False:
            raise CheckpointError(f"Không hỗ trợ / unsupported attention_bias={raw['attention_bias']!r} in {where} "
                                  f"(Mistral has no biases)")
    if kw.get("sliding_window") is not None and kw["sliding_window"] >= raw.get("max_position_embeddings", 0):
        kw["sliding_window"] = None  # a window longer than any sequence masks nothing
        kw["layer_types"] = None
    try:
        cfg = LlamaConfig(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Cấu hình không hợp lệ / invalid config in {where}: {e}") from e
    score = raw.get("score_head")
    return cfg, (bool(score) if score is not None else None)


def llama_config_to_hf(cfg: LlamaConfig, *, dtype: str, score_head: bool, tokenizer=None) -> dict:
    """config.json for transformers (4.x and 5.x both read it); raises if the family cannot express cfg."""
    from .._version import __version__

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
    """tokenizer.json -> HFTokenizer; else our tokenizer_config.json; else ByteTokenizer when it fits."""
    if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
        from ..text.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_pretrained(path, model_config=raw_config)
    tc = os.path.join(path, TOKENIZER_CONFIG_NAME)
    if os.path.isfile(tc):
        cls = _read_json(tc).get("tokenizer_class")
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
    if vocab_size >= ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise CheckpointError(
        f"Không có tokenizer / no tokenizer in {path} ({TOKENIZER_JSON} or {TOKENIZER_CONFIG_NAME}) and "
        f"vocab_size={vocab_size} < 259 (the byte tokenizer's): pass tokenizer=..."
    )


# ============================ public API =======================================================

def from_pretrained(path, tokenizer=None):
    """Load a local Hugging Face folder as a `TransformerLM` (gpt2) or `LlamaLM` (llama, qwen2, mistral).

    path: a folder with config.json and model.safetensors (or model.safetensors.index.json + shards).
    tokenizer: overrides the folder's tokenizer (tokenizer.json via HFTokenizer, our own
    tokenizer_config.json, else ByteTokenizer when vocab_size >= 259). Parameters are cast to the
    backend's dtype; the model is returned in eval mode.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"Không tìm thấy thư mục checkpoint / checkpoint directory not found: {path}")
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"Thiếu tệp / missing file: {cfg_path}")
    raw = _read_json(cfg_path)
    mt = raw.get("model_type")
    if mt == "gpt2":
        config, score_head = _read_config_json(cfg_path)
        tok = tokenizer if tokenizer is not None else _load_tokenizer(path, raw, config.vocab_size)
        arrays = read_weights(path)
        try:
            model = TransformerLM._blank(config, tok)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        if score_head is None:
            score_head = "score.weight" in arrays
        model._params = {n: Parameter(a, name=n)
                         for n, a in _assign(model._expected_shapes(score_head), _from_file_keys(arrays)).items()}
        return model.eval()
    config, score_head = llama_config_from_hf(raw, cfg_path)
    tok = tokenizer if tokenizer is not None else _load_tokenizer(path, raw, config.vocab_size)
    arrays = read_weights(path)
    if score_head is None:
        score_head = "score.weight" in arrays
    try:
        model = LlamaLM._blank(config, tok)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    expected = {name: shape for name, shape, _ in param_specs(config, score_head)}
    model._params = {n: Parameter(a, name=n) for n, a in assign_arrays(expected, _llama_named(arrays, config)).items()}
    return model.eval()


def save_pretrained(model, path) -> None:
    """Write `model` as a transformers-loadable folder at `path`: config.json, model.safetensors and the
    tokenizer's files (when it has `save`), atomically (temporary sibling directory, fsync, rename).

    An existing checkpoint at `path` is replaced only once the new one is complete; an existing
    non-empty directory without config.json is never replaced.
    """
    if isinstance(model, TransformerLM):
        model.save(path)  # GPT-2: already written in transformers' GPT2LMHeadModel layout, atomically
        return
    if not isinstance(model, LlamaLM):
        raise TypeError(f"save_pretrained cần TransformerLM hoặc LlamaLM / needs a TransformerLM or LlamaLM, "
                        f"got {type(model).__name__}")
    be = get_backend()
    tensors = {n: host_np.ascontiguousarray(be.to_numpy(p.data)) for n, p in model.named_parameters().items()}
    dtype = str(next(iter(tensors.values())).dtype)
    config_json = llama_config_to_hf(model.config, dtype=dtype, score_head=model.has_score_head,
                                     tokenizer=model.tokenizer)
    write_checkpoint_dir(path, config_json, tensors, model.tokenizer)


tai_mo_hinh = from_pretrained  # tải mô hình: load a model
luu_mo_hinh = save_pretrained  # lưu mô hình: save a model
