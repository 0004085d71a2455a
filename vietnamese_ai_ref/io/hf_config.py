"""What the keys of a Hugging Face config.json mean to us: mapped, ignored, or refused by name.

What it is for: reading the config.json of a transformers checkpoint folder by meaning rather than
by a list of known keys. Every key is put in one of four classes:

- mapped: it changes the computation and we implement it; its value becomes a field of our config
  (`GPTConfig` for model_type "gpt2", `LlamaConfig` for "llama", "qwen2", "mistral");
- refused: it would change the computation and we do not implement it (an unsupported rope type,
  an activation other than ours, quantised weights, partial rotary, interleaved rotary, ...):
  `CheckpointError` naming the key, its value, what is supported and the file;
- ignored: it cannot change the logits (metadata, token ids, generation defaults, run-time and
  training-time switches, heads we do not build, keys the architecture does not read); every key
  whose name starts with "_" is transformers' private bookkeeping and is ignored too;
- unknown: none of the above; a warning names it (once per key per process) and it is ignored,
  never an error, so a folder written by a newer transformers still loads.

The tables below are grouped by reason; read them to see why a key is where it is. Also
`read_generation_config` / `generation_config_dict`: the token ids of generation_config.json.

What it is not: a loader (`hf.from_pretrained` builds the model from the kwargs returned here),
nor a validator of the values of mapped keys (the config dataclasses check those), nor a reader of
tokenizer files.
"""

from __future__ import annotations

import json
import os
import warnings

from ..core.errors import CheckpointError

__all__ = [
    "interpret_gpt2_config", "interpret_llama_config", "score_head_flag", "read_generation_config",
    "generation_config_dict", "ConfigKeyWarning", "GENERATION_CONFIG_NAME",
]

GENERATION_CONFIG_NAME = "generation_config.json"
LLAMA_FAMILIES = ("llama", "qwen2", "mistral")  # = llama.MODEL_TYPES (checked by a test)


class ConfigKeyWarning(UserWarning):
    """A config.json key whose meaning we do not know; it is ignored."""


# ============================ ignored: keys that cannot change the logits ======================

_IGNORED_ANY_FAMILY = {
    "metadata: who wrote the file and how the weights are stored": {
        "architectures", "model_type", "transformers_version", "vietnamese_ai_ref_version", "torch_dtype",
        "dtype", "use_bfloat16", "tokenizer_class", "transformers.js_config", "is_llama_config", "finetuning_task",
        "prefix", "task_specific_params", "score_head",  # score_head: our own flag, read by score_head_flag
    },
    "special token ids: read from generation_config.json and the tokenizer, not by the forward pass": {
        "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "unk_token_id", "cls_token_id",
        "mask_token_id", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id",
    },
    "generation defaults: generate() takes its own arguments": {
        "max_length", "min_length", "max_new_tokens", "min_new_tokens", "do_sample", "early_stopping",
        "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
        "epsilon_cutoff", "eta_cutoff", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
        "return_dict_in_generate", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens",
    },
    "run-time and training-time switches: the same numbers either way": {
        "use_cache", "gradient_checkpointing", "output_attentions", "output_hidden_states", "return_dict",
        "torchscript", "tf_legacy_loss", "chunk_size_feed_forward", "attn_implementation", "is_decoder",
        "tie_encoder_decoder", "pruned_heads",
    },
    "task heads and labels we do not build (the reward head is score.weight, found by name)": {
        "id2label", "label2id", "num_labels", "problem_type", "cross_attention_hidden_size",
    },
}

_IGNORED_GPT2 = {
    "GPT2DoubleHeadsModel's multiple-choice head (not built)": {
        "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
        "summary_first_dropout",
    },
    "same math: n_ctx is an old alias of n_positions; the float32 upcast is a no-op in float32/float64": {
        "n_ctx", "reorder_and_upcast_attn", "output_past",
    },
    "Llama-family keys transformers' GPT-2 never reads": {
        "attention_dropout", "pretraining_tp", "rope_theta", "rope_scaling", "rope_parameters",
    },
}

_IGNORED_LLAMA = {
    "same math: tensor-parallel slicing of the same matmuls": {"pretraining_tp"},
    "read together with use_sliding_window (Qwen2), meaningless without it": {"max_window_layers"},
    "keys transformers' Llama, Qwen2 and Mistral never read": {"add_cross_attention"},
}

# ============================ refused unless they hold a harmless value =========================
# key -> (values that leave our computation unchanged, what we support, in words)

_REQUIRED_ANY_FAMILY = {
    "quantization_config": ((None, False), "unquantised weights"),
    "is_encoder_decoder": ((False,), "decoder-only models"),
}

_REQUIRED_GPT2 = {
    "activation_function": (("gelu_new", "gelu_pytorch_tanh"), "'gelu_new' / 'gelu_pytorch_tanh' (GELU, tanh form)"),
    "scale_attn_weights": ((True,), "true (scores / sqrt(head size))"),
    "scale_attn_by_inverse_layer_idx": ((False,), "false"),
    "tie_word_embeddings": ((True,), "true (LM head = wte)"),
    "add_cross_attention": ((False,), "false (GPT-2 adds cross-attention weights when true)"),
}

_REQUIRED_LLAMA = {
    "hidden_act": (("silu", "swish"), "'silu' / 'swish'"),
    "partial_rotary_factor": ((1, 1.0), "1.0 (rotary on the whole head)"),
    "rope_interleaved": ((False, None), "false (transformers' rotate_half pairs)"),
    "use_mrope": ((False,), "false (one position axis)"),
    "attn_logit_softcapping": ((None,), "null"),
    "final_logit_softcapping": ((None,), "null"),
    "moe_intermediate_size": ((None, 0, False), "null (no mixture of experts)"),
    "num_experts": ((None, 0, False), "null (no mixture of experts)"),
}

# ============================ mapped: fields of our configs ====================================

_MAPPED_GPT2 = {
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon", "embd_pdrop", "attn_pdrop",
    "resid_pdrop", "initializer_range", "seed",  # dropouts act in training only, as in transformers
}
_HANDLED_GPT2 = {"n_inner"}  # checked in interpret_gpt2_config

_MAPPED_LLAMA = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "attention_dropout",
    "initializer_range", "tie_word_embeddings", "seed",
}
# read by the rotary and per-family functions below
_HANDLED_LLAMA = {"rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias", "sliding_window",
                  "use_sliding_window", "layer_types"}

# numbers each rope type reads (transformers' modeling_rope_utils); other keys in the dict are unknown
_ROPE_PARAMS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
_ROPE_BOOKKEEPING = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def _union(groups: dict) -> set:
    return set().union(*groups.values())


# ============================ classification ===================================================

_warned_keys: set = set()


def _warn_unknown(key: str, where: str) -> None:
    """Warn once per key per process that `key` is unknown and ignored."""
    if key in _warned_keys:
        return
    _warned_keys.add(key)
    warnings.warn(
        f"Khoá cấu hình không xác định, đã bỏ qua / unknown config key {key!r} in {where} ignored: it is not "
        f"known to change the computation (compare the logits with transformers if it does)",
        ConfigKeyWarning, stacklevel=4,
    )


def _refuse(key: str, value, supported: str, where: str) -> CheckpointError:
    return CheckpointError(
        f"Tuỳ chọn cấu hình không được hỗ trợ / unsupported config option {key}={value!r} in {where} "
        f"(supported: {supported})"
    )


def _classify(raw: dict, where: str, mapped: set, ignored: set, required: dict) -> None:
    """Refuse a key whose value we cannot compute; warn about unknown keys; mapped keys pass through."""
    for key, value in raw.items():
        if key in mapped or key in ignored or key.startswith("_"):
            continue
        if key in required:
            allowed, supported = required[key]
            if not any(_same(value, a) for a in allowed):
                raise _refuse(key, value, supported, where)
            continue
        _warn_unknown(key, where)


def _same(value, allowed) -> bool:
    return value is allowed or (type(value) is type(allowed) and value == allowed)


# ============================ GPT-2 ============================================================

def interpret_gpt2_config(raw: dict, where: str) -> dict:
    """Keyword arguments for `GPTConfig(**kw)` from a transformers GPT-2 config.json dict.

    raw: the parsed JSON object; where: the file, for messages. Raises CheckpointError for a
    model_type other than "gpt2" or a key that would change the computation and is not supported;
    warns (ConfigKeyWarning, once per key) about unknown keys. The values of mapped keys are not
    checked here: GPTConfig does that.
    """
    mt = raw.get("model_type", "gpt2")
    if mt != "gpt2":
        raise _refuse("model_type", mt, "'gpt2' here; 'llama', 'qwen2', 'mistral' via interpret_llama_config", where)
    required = {**_REQUIRED_ANY_FAMILY, **_REQUIRED_GPT2}
    ignored = _union(_IGNORED_ANY_FAMILY) | _union(_IGNORED_GPT2)
    _classify(raw, where, _MAPPED_GPT2 | _HANDLED_GPT2, ignored, required)
    n_embd = raw.get("n_embd", 128)
    if raw.get("n_inner") is not None and raw["n_inner"] != 4 * n_embd:
        raise _refuse("n_inner", raw["n_inner"], f"null or 4 * n_embd = {4 * n_embd}", where)
    kw = {k: v for k, v in raw.items() if k in _MAPPED_GPT2}
    kw["model_type"] = "gpt2"
    return kw


def score_head_flag(raw: dict):
    """Our own config.json flag "score_head" as a bool, or None when absent (decide by the weights)."""
    value = raw.get("score_head")
    return None if value is None else bool(value)


# ============================ Llama family =====================================================

def _rope_kwargs(raw: dict, where: str) -> dict:
    """rope_theta and rope_scaling from either spelling: rope_theta + rope_scaling (transformers 4),
    rope_parameters (transformers 5, wins when both are present)."""
    name = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
    rp = raw.get(name)
    if rp is not None and not isinstance(rp, dict):
        raise _refuse(name, rp, "null or an object", where)
    if rp and any(isinstance(v, dict) for v in rp.values()):
        raise _refuse(name, rp, "one set of rope parameters for every layer (not per layer type)", where)
    rp = rp or {}
    theta = rp.get("rope_theta", raw.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise _refuse("rope_theta", theta, "a number > 0", where)
    if not any(_same(rp.get("partial_rotary_factor", 1.0), a) for a in (1, 1.0)):
        raise _refuse(f"{name}.partial_rotary_factor", rp["partial_rotary_factor"], "1.0 (rotary on the whole head)",
                      where)
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in _ROPE_PARAMS:
        raise _refuse(f"{name}.rope_type", kind, ", ".join(repr(k) for k in _ROPE_PARAMS), where)
    for key in rp:
        if key not in _ROPE_PARAMS[kind] | _ROPE_BOOKKEEPING:
            _warn_unknown(f"{name}.{key}", where)
    if kind == "default":
        return {"rope_theta": float(theta), "rope_scaling": None}
    rs = {"rope_type": kind, **{k: rp[k] for k in sorted(_ROPE_PARAMS[kind]) if k in rp}}
    if kind == "llama3":  # transformers' default for the pre-training context length
        rs.setdefault("original_max_position_embeddings", raw.get("max_position_embeddings"))
    return {"rope_theta": float(theta), "rope_scaling": rs}


def _qwen2_layers(raw: dict, where: str) -> dict:
    """Qwen2: sliding_window applies only with use_sliding_window, to layers >= max_window_layers."""
    if raw.get("attention_bias", True) is not True:
        raise _refuse("attention_bias", raw["attention_bias"], "true (Qwen2 always has q/k/v biases)", where)
    window = raw.get("sliding_window") if raw.get("use_sliding_window", False) else None
    kw = {"sliding_window": window}
    if raw.get("layer_types") is None:
        n = raw.get("num_hidden_layers", 0)
        first = raw.get("max_window_layers", 0)
        kw["layer_types"] = ["sliding_attention" if window is not None and i >= first else "full_attention"
                             for i in range(n if isinstance(n, int) else 0)]
    else:
        kw["layer_types"] = raw["layer_types"]
        if window is None and "sliding_attention" in raw["layer_types"]:
            raise _refuse("layer_types", raw["layer_types"], "no 'sliding_attention' while use_sliding_window is "
                          "false", where)
    return kw


def _family_kwargs(raw: dict, mt: str, where: str) -> dict:
    """Biases, sliding window and layer types, whose defaults and meaning differ per model_type."""
    if mt == "llama":
        if raw.get("sliding_window") is not None:
            raise _refuse("sliding_window", raw["sliding_window"], "null for model_type 'llama'", where)
        bias = raw.get("attention_bias", False)
        kw = {"attention_bias": bias, "o_proj_bias": bias}  # Llama's attention_bias covers o_proj too
        if "mlp_bias" in raw:
            kw["mlp_bias"] = raw["mlp_bias"]
        return kw
    if raw.get("mlp_bias", False) is not False:
        raise _refuse("mlp_bias", raw["mlp_bias"], "false (only Llama has MLP biases)", where)
    if mt == "qwen2":
        kw = _qwen2_layers(raw, where)
    else:  # mistral: one window for every layer, no biases
        if "layer_types" in raw:
            raise _refuse("layer_types", raw["layer_types"], "absent for model_type 'mistral'", where)
        if raw.get("attention_bias", False) is not False:
            raise _refuse("attention_bias", raw["attention_bias"], "false (Mistral has no biases)", where)
        kw = {"sliding_window": raw.get("sliding_window")}
    if kw["sliding_window"] is not None and kw["sliding_window"] >= raw.get("max_position_embeddings", 0):
        kw["sliding_window"] = None  # a window longer than any sequence masks nothing
        kw["layer_types"] = None
    return kw


def interpret_llama_config(raw: dict, where: str) -> dict:
    """Keyword arguments for `LlamaConfig(**kw)` from a transformers config.json dict of model_type
    "llama", "qwen2" or "mistral" (transformers 4.x and 5.x spellings).

    raw: the parsed JSON object; where: the file, for messages. Raises CheckpointError for another
    model_type or a key that would change the computation and is not supported (naming key, value,
    what is supported and `where`); warns (ConfigKeyWarning, once per key) about unknown keys,
    including unknown keys inside rope_scaling / rope_parameters. rope_scaling in the result is None
    or {"rope_type": "linear" | "llama3", <the numbers that type reads>}. The values of mapped keys
    are not checked here: LlamaConfig does that (wrap its ValueError as CheckpointError).
    """
    mt = raw.get("model_type")
    if mt not in LLAMA_FAMILIES:
        raise _refuse("model_type", mt, ", ".join(repr(t) for t in ("gpt2",) + LLAMA_FAMILIES), where)
    required = {**_REQUIRED_ANY_FAMILY, **_REQUIRED_LLAMA}
    ignored = _union(_IGNORED_ANY_FAMILY) | _union(_IGNORED_LLAMA)
    _classify(raw, where, _MAPPED_LLAMA | _HANDLED_LLAMA, ignored, required)
    kw = {k: v for k, v in raw.items() if k in _MAPPED_LLAMA}
    if not isinstance(kw.get("seed", 0), int):
        del kw["seed"]
    kw["model_type"] = mt
    kw.update(_rope_kwargs(raw, where))
    kw.update(_family_kwargs(raw, mt, where))
    return kw


# ============================ generation_config.json ===========================================

def _token_id(value, key: str, path: str, nullable: bool = True):
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{key} trong {path} phải là số nguyên >= 0 / {key} in {path} must be an integer "
                              f">= 0 or null, got {value!r}")
    return value


def read_generation_config(folder) -> dict | None:
    """{"eos_token_id": [ids], "bos_token_id": id | None, "pad_token_id": id | None} from
    folder/generation_config.json, or None when the file is absent.

    eos_token_id may be an int, a list of ints or null in the file (-> [id], the list, []). Invalid
    JSON, a non-object or a non-integer id raises CheckpointError naming the file and key. Other keys
    (sampling defaults, transformers_version, ...) are not read.
    """
    path = os.path.join(os.fspath(folder), GENERATION_CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"JSON hỏng / cannot read {path}: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} phải là một đối tượng JSON / must hold a JSON object")
    eos = raw.get("eos_token_id")
    eos_list = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    return {
        "eos_token_id": [_token_id(e, "eos_token_id", path, nullable=False) for e in eos_list],
        "bos_token_id": _token_id(raw.get("bos_token_id"), "bos_token_id", path),
        "pad_token_id": _token_id(raw.get("pad_token_id"), "pad_token_id", path),
    }


def generation_config_dict(eos_ids, bos, pad) -> dict:
    """generation_config.json contents for these ids, as transformers writes them: eos_token_id an int
    when there is one id, a list when several; null ids left out. Loads with
    `transformers.GenerationConfig.from_pretrained`; write it with json.dump(..., indent=2)."""
    out = {}
    if bos is not None:
        out["bos_token_id"] = int(bos)
    eos = [int(e) for e in (eos_ids or [])]
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if pad is not None:
        out["pad_token_id"] = int(pad)
    return out
