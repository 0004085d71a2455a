"""The config.json policy of `io/hf_config.py` on the full published configs of real checkpoints
(tests/fixtures/hf_configs, sources in its README): every key is mapped, ignored or refused by name,
an unknown key is a warning (once), and the mapped numbers are the published ones. Also
generation_config.json reading and writing (checked against transformers' GenerationConfig where
transformers is installed). No weights: the model-level check of llama3 rotary is test_rope_llama3.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
import warnings

import pytest

from vietnamese_ai_ref.models import llama
from vietnamese_ai_ref.io import hf_config
from vietnamese_ai_ref.io.hf_config import (ConfigKeyWarning, generation_config_dict, interpret_gpt2_config,
                                            interpret_llama_config, read_generation_config, score_head_flag)
from vietnamese_ai_ref.models.llama import LlamaConfig
from vietnamese_ai_ref.core.errors import CheckpointError
from vietnamese_ai_ref.models.gpt2 import GPTConfig

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf_configs"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())


def load(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def interpret(raw: dict, where: str = "config.json") -> dict:
    fn = interpret_gpt2_config if raw.get("model_type") == "gpt2" else interpret_llama_config
    return fn(raw, where)


def build(raw: dict, where: str = "config.json"):
    kw = interpret(raw, where)
    return (GPTConfig if raw.get("model_type") == "gpt2" else LlamaConfig)(**kw)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test sees the once-per-process warnings afresh."""
    hf_config._warned_keys.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    hf_config._warned_keys.clear()


def key_warnings(caught) -> list:
    return [str(w.message) for w in caught if issubclass(w.category, ConfigKeyWarning)]


# ---------------------------------------------------------------------------------------------
# published configs
# ---------------------------------------------------------------------------------------------

def test_fixtures_cover_the_issue_list():
    assert {"gpt2", "distilgpt2", "SmolLM2-135M", "SmolLM2-135M-Instruct", "SmolLM2-360M", "Qwen2.5-0.5B",
            "TinyLlama-1.1B-Chat-v1.0", "Llama-3.2-1B", "Mistral-7B-v0.1",
            "SmolLM2-135M-Instruct-transformers5-saved", "gpt2-transformers5-saved"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_published_key_is_classified(name, fresh_warnings):
    raw = load(name)
    cfg = build(raw, str(FIXTURES / name / "config.json"))
    assert key_warnings(fresh_warnings) == []
    assert cfg.vocab_size == raw["vocab_size"]


PUBLISHED = {  # name: (width, layers, heads, kv heads, head size, theta, tied, vocab)
    "SmolLM2-135M": (576, 30, 9, 3, 64, 100000.0, True, 49152),
    "SmolLM2-135M-Instruct": (576, 30, 9, 3, 64, 100000.0, True, 49152),
    "SmolLM2-135M-Instruct-transformers5-saved": (576, 30, 9, 3, 64, 100000.0, True, 49152),
    "SmolLM2-360M": (960, 32, 15, 5, 64, 100000.0, True, 49152),
    "Qwen2.5-0.5B": (896, 24, 14, 2, 64, 1000000.0, True, 151936),
    "TinyLlama-1.1B-Chat-v1.0": (2048, 22, 32, 4, 64, 10000.0, False, 32000),
    "Llama-3.2-1B": (2048, 16, 32, 8, 64, 500000.0, True, 128256),
    "Llama-3.2-1B-Instruct": (2048, 16, 32, 8, 64, 500000.0, True, 128256),
    "Mistral-7B-v0.1": (4096, 32, 32, 8, 128, 10000.0, False, 32000),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_llama_family_numbers_are_the_published_ones(name):
    cfg = build(load(name))
    d, L, H, kv, hd, theta, tied, V = PUBLISHED[name]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (d, L, H, kv)
    assert (cfg.head_dim, cfg.rope_theta, cfg.tie_word_embeddings, cfg.vocab_size) == (hd, theta, tied, V)


def test_family_details_of_published_configs():
    smol = build(load("SmolLM2-135M"))
    assert (smol.intermediate_size, smol.rms_norm_eps, smol.max_position_embeddings) == (1536, 1e-5, 8192)
    assert (smol.attention_bias, smol.o_proj_bias, smol.mlp_bias, smol.rope_scaling) == (False, False, False, None)
    qwen = build(load("Qwen2.5-0.5B"))  # use_sliding_window false: the 32768 window is off
    assert (qwen.attention_bias, qwen.o_proj_bias, qwen.sliding_window) == (True, False, None)
    assert qwen.layer_types == ["full_attention"] * 24 and qwen.rms_norm_eps == 1e-6
    mistral = build(load("Mistral-7B-v0.1"))
    assert mistral.sliding_window == 4096 and mistral.layer_types == ["sliding_attention"] * 32
    assert (mistral.intermediate_size, mistral.max_position_embeddings) == (14336, 32768)
    assert build(load("TinyLlama-1.1B-Chat-v1.0")).intermediate_size == 5632


def test_llama_3_2_rope_scaling_is_mapped():
    for name in ("Llama-3.2-1B", "Llama-3.2-1B-Instruct"):
        cfg = build(load(name))
        assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    raw = load("Llama-3.2-1B")  # transformers 5 spelling, pre-training length left to its default
    rp = dict(raw.pop("rope_scaling"), rope_theta=raw.pop("rope_theta"))
    del rp["original_max_position_embeddings"]
    cfg = build(dict(raw, rope_parameters=rp))
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["original_max_position_embeddings"] == 131072


@pytest.mark.parametrize("name,n_layer", [("gpt2", 12), ("distilgpt2", 6), ("gpt2-transformers5-saved", 12)])
def test_gpt2_numbers_are_the_published_ones(name, n_layer):
    cfg = build(load(name))
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions, cfg.vocab_size) == (768, n_layer, 12, 1024, 50257)
    assert (cfg.embd_pdrop, cfg.attn_pdrop, cfg.resid_pdrop, cfg.layer_norm_epsilon) == (0.1, 0.1, 0.1, 1e-5)


# ---------------------------------------------------------------------------------------------
# the same result as the current loaders on the keys they accept
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# ignored, refused, unknown
# ---------------------------------------------------------------------------------------------

ISSUE_GPT2_KEYS = {"unk_token_id": None, "attention_dropout": 0.1, "pretraining_tp": 1, "max_length": 20,
                   "do_sample": False, "tokenizer_class": "GPT2Tokenizer", "gradient_checkpointing": False,
                   "_attn_implementation_autoset": True, "_name_or_path": "gpt2", "output_past": True}
ISSUE_LLAMA_KEYS = {"_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "_model_name_or_path": "x",
                    "unk_token_id": None, "is_llama_config": True, "rope_interleaved": False, "dtype": "float32",
                    "transformers_version": "5.23.0", "_commit_hash": "0" * 40, "use_cache": False}


@pytest.mark.parametrize("name,extra", [("gpt2", ISSUE_GPT2_KEYS), ("SmolLM2-135M-Instruct", ISSUE_LLAMA_KEYS)])
def test_keys_the_issue_saw_refused_are_ignored_silently(name, extra, fresh_warnings):
    raw = load(name)
    assert interpret({**raw, **extra}) == interpret(raw)
    assert key_warnings(fresh_warnings) == []


REFUSED = [
    ("SmolLM2-135M", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}},
     "rope_scaling.rope_type='yarn'"),
    ("SmolLM2-135M", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e5}},
     "rope_parameters.rope_type='dynamic'"),
    ("SmolLM2-135M", {"rope_scaling": "linear"}, "rope_scaling='linear'"),
    ("SmolLM2-135M", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "rope_parameters="),
    ("SmolLM2-135M", {"hidden_act": "relu"}, "hidden_act='relu'"),
    ("SmolLM2-135M", {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
     "quantization_config={'quant_method'"),
    ("SmolLM2-135M", {"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ("SmolLM2-135M", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e5, "partial_rotary_factor": 0.25}},
     "rope_parameters.partial_rotary_factor=0.25"),
    ("SmolLM2-135M", {"rope_interleaved": True}, "rope_interleaved=True"),
    ("SmolLM2-135M", {"sliding_window": 4096}, "sliding_window=4096"),
    ("SmolLM2-135M", {"model_type": "gemma"}, "model_type='gemma'"),
    ("SmolLM2-135M", {"num_experts": 8}, "num_experts=8"),
    ("SmolLM2-135M", {"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ("SmolLM2-135M", {"is_encoder_decoder": True}, "is_encoder_decoder=True"),
    ("Qwen2.5-0.5B", {"use_mrope": True}, "use_mrope=True"),
    ("Qwen2.5-0.5B", {"mlp_bias": True}, "mlp_bias=True"),
    ("Qwen2.5-0.5B", {"attention_bias": False}, "attention_bias=False"),
    ("Qwen2.5-0.5B", {"layer_types": ["sliding_attention"] * 24}, "layer_types=['sliding_attention'"),
    ("Mistral-7B-v0.1", {"attention_bias": True}, "attention_bias=True"),
    ("Mistral-7B-v0.1", {"layer_types": ["full_attention"] * 32}, "layer_types="),
    ("gpt2", {"activation_function": "relu"}, "activation_function='relu'"),
    ("gpt2", {"activation_function": "gelu"}, "activation_function='gelu'"),
    ("gpt2", {"n_inner": 1000}, "n_inner=1000"),
    ("gpt2", {"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention=True"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2", {"scale_attn_weights": False}, "scale_attn_weights=False"),
    ("gpt2", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config="),
]


@pytest.mark.parametrize("name,change,named", REFUSED, ids=[r[2].split("=")[0] + "-" + r[0] for r in REFUSED])
def test_refused_keys_are_named_with_value_support_and_file(name, change, named):
    raw = {**load(name), **change}
    if "rope_parameters" in change:
        raw.pop("rope_scaling", None)
    fn = interpret_gpt2_config if load(name)["model_type"] == "gpt2" else interpret_llama_config
    with pytest.raises(CheckpointError) as e:
        fn(raw, "/x/config.json")
    msg = str(e.value)
    assert named in msg and "/x/config.json" in msg and "supported: " in msg
    assert "không được hỗ trợ" in msg  # Vietnamese first, English alongside


def test_harmless_values_of_checked_keys_pass():
    raw = load("SmolLM2-135M")
    same = {"hidden_act": "swish", "partial_rotary_factor": 1, "quantization_config": None, "num_experts": 0,
            "rope_interleaved": None, "use_mrope": False, "rope_scaling": {"type": "default"}}
    assert interpret({**raw, **same}) == interpret(raw)
    gpt2 = load("gpt2")
    assert interpret({**gpt2, "activation_function": "gelu_pytorch_tanh", "n_inner": 3072}) == interpret(gpt2)


def test_unknown_key_warns_once_and_is_ignored(fresh_warnings):
    raw = load("SmolLM2-135M")
    want = interpret(raw)
    assert interpret({**raw, "new_flag_from_the_future": 1}, "/a/config.json") == want
    assert interpret({**raw, "new_flag_from_the_future": 2}, "/b/config.json") == want
    assert interpret_gpt2_config({**load("gpt2"), "new_flag_from_the_future": 3}, "/c/config.json")
    got = key_warnings(fresh_warnings)
    assert len(got) == 1 and "'new_flag_from_the_future'" in got[0] and "/a/config.json" in got[0]
    assert got[0].startswith("Khoá cấu hình không xác định") and "unknown config key" in got[0]
    interpret({**raw, "another_key": True})
    assert len(key_warnings(fresh_warnings)) == 2


def test_unknown_key_inside_rope_parameters_warns(fresh_warnings):
    raw = load("Llama-3.2-1B")
    rs = dict(raw["rope_scaling"], mscale=0.7)
    assert interpret(dict(raw, rope_scaling=rs)) == interpret(raw)
    assert [w for w in key_warnings(fresh_warnings) if "'rope_scaling.mscale'" in w]


def test_tables_are_disjoint_and_families_agree():
    assert hf_config.LLAMA_FAMILIES == llama.MODEL_TYPES
    for mapped, ignored, required in [
        (hf_config._MAPPED_GPT2 | hf_config._HANDLED_GPT2, hf_config._union(hf_config._IGNORED_ANY_FAMILY)
         | hf_config._union(hf_config._IGNORED_GPT2), {**hf_config._REQUIRED_ANY_FAMILY, **hf_config._REQUIRED_GPT2}),
        (hf_config._MAPPED_LLAMA | hf_config._HANDLED_LLAMA, hf_config._union(hf_config._IGNORED_ANY_FAMILY)
         | hf_config._union(hf_config._IGNORED_LLAMA), {**hf_config._REQUIRED_ANY_FAMILY, **hf_config._REQUIRED_LLAMA}),
    ]:
        assert not mapped & ignored and not mapped & set(required) and not ignored & set(required)


def test_score_head_flag():
    assert score_head_flag({}) is None
    assert score_head_flag({"score_head": True}) is True and score_head_flag({"score_head": False}) is False


def test_input_dict_is_not_modified():
    raw = load("Llama-3.2-1B")
    before = copy.deepcopy(raw)
    interpret(raw)
    assert raw == before


# ---------------------------------------------------------------------------------------------
# generation_config.json
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,want", [
    ("SmolLM2-135M-Instruct", {"eos_token_id": [2], "bos_token_id": 1, "pad_token_id": 2}),
    ("Llama-3.2-1B-Instruct", {"eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000, "pad_token_id": None}),
    ("TinyLlama-1.1B-Chat-v1.0", {"eos_token_id": [2], "bos_token_id": 1, "pad_token_id": 0}),
    ("gpt2", {"eos_token_id": [50256], "bos_token_id": 50256, "pad_token_id": None}),
])
def test_read_generation_config_of_published_files(name, want):
    assert read_generation_config(FIXTURES / name) == want


def test_read_generation_config_absent_null_and_bad(tmp_path):
    assert read_generation_config(tmp_path) is None
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"eos_token_id": None, "do_sample": True}))
    assert read_generation_config(tmp_path) == {"eos_token_id": [], "bos_token_id": None, "pad_token_id": None}
    for bad, key in [({"eos_token_id": "2"}, "eos_token_id"), ({"eos_token_id": [2, None]}, "eos_token_id"),
                     ({"bos_token_id": True}, "bos_token_id"), ({"pad_token_id": -1}, "pad_token_id")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=key):
            read_generation_config(tmp_path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json"):
        read_generation_config(tmp_path)
    path.write_text("[2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        read_generation_config(tmp_path)


@pytest.mark.parametrize("eos,bos,pad", [([2], 1, 2), ([128001, 128008, 128009], 128000, None), ([], None, None)])
def test_generation_config_dict_round_trips(tmp_path, eos, bos, pad):
    d = generation_config_dict(eos, bos, pad)
    (tmp_path / "generation_config.json").write_text(json.dumps(d, indent=2))
    assert read_generation_config(tmp_path) == {"eos_token_id": eos, "bos_token_id": bos, "pad_token_id": pad}
    assert None not in d.values()


@pytest.mark.parametrize("eos,bos,pad", [([2], 1, 2), ([128001, 128008, 128009], 128000, None)])
def test_generation_config_dict_loads_in_transformers(tmp_path, eos, bos, pad):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "generation_config.json").write_text(json.dumps(generation_config_dict(eos, bos, pad), indent=2))
    g = transformers.GenerationConfig.from_pretrained(str(tmp_path))
    assert g.eos_token_id == (eos[0] if len(eos) == 1 else eos)
    assert (g.bos_token_id, g.pad_token_id) == (bos, pad)


@pytest.mark.torch
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
def test_configs_transformers_writes_today_are_classified(family, tmp_path, fresh_warnings):
    """config.json as the installed transformers writes it for each family: no unknown key, and the
    same config as the current loader."""
    T = pytest.importorskip("transformers")
    small = dict(vocab_size=300, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32)
    cfg = {"gpt2": lambda: T.GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=2, n_head=2),
           "llama": lambda: T.LlamaConfig(**small, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5,
                                                                    "factor": 8.0, "low_freq_factor": 1.0,
                                                                    "high_freq_factor": 4.0,
                                                                    "original_max_position_embeddings": 16}),
           "qwen2": lambda: T.Qwen2Config(**small, use_sliding_window=True, sliding_window=4, max_window_layers=1),
           "mistral": lambda: T.MistralConfig(**small, sliding_window=3)}[family]()
    cfg.save_pretrained(str(tmp_path))
    raw = json.loads((tmp_path / "config.json").read_text())
    ours = build(raw)
    assert key_warnings(fresh_warnings) == []
    assert ours.vocab_size == 300 and ours.n_positions == 32 and ours.n_layer == 2
    if family == "llama":
        assert ours.rope_scaling["rope_type"] == "llama3" and ours.rope_theta == 5e5
    if family == "qwen2":
        assert ours.layer_types == ["full_attention", "sliding_attention"] and ours.sliding_window == 4
