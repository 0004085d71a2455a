"""Hugging Face round trips against transformers (a test-only oracle, with torch): small random GPT-2,
Llama, Qwen2 and Mistral models built with transformers' own classes load into ours with the same
logits (padded batch, float64, <= 1e-9 relative) and the same greedy generations; ours saved load back
into transformers with the same logits; a DPO run on a Llama loaded from a transformers folder saves
a folder transformers loads. Also the tokenizer.json wrapper (HFTokenizer) and chat templates,
compared with transformers' tokenizer where it is installed.

transformers computes RMSNorm and the rotary tables in float32 even in a float64 model (an upcast that
is a downcast here), so the exact comparisons patch those two forwards with the same formulas in
float64 (`exact_transformers`); `test_stock_transformers_agree_to_float32_rounding` checks the
unpatched classes at float32 precision. Nothing is downloaded: every model and tokenizer is built here.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from vietnamese_ai_ref import DPOTrainer, SFTTrainer
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.io.hf import from_pretrained, save_pretrained
from vietnamese_ai_ref.models.llama import LlamaConfig, LlamaLM
from vietnamese_ai_ref.models.gpt2 import TransformerLM
from vietnamese_ai_ref.text.tokenizer import TokenizerError

IDS = np.array([[5, 17, 200, 33, 9, 100, 42], [7, 8, 9, 61, 0, 0, 0], [250, 3, 0, 0, 0, 0, 0]])
MASK = (np.arange(7)[None, :] < np.array([[7], [4], [2]])).astype(np.int64)
PROMPTS = [[5, 17, 200], [7, 8], [299, 1, 2, 3, 4]]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>\\n' }}"
    "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = ["Xin chào, tôi là trợ lý tiếng Việt.", "Hà Nội là thủ đô của Việt Nam.", "Tính 2 + 3 bằng 5.",
          "### Câu hỏi:\nThủ đô của Việt Nam là gì?\n### Trả lời:\nDạ, là Hà Nội ạ."]
CHAT = [{"role": "system", "content": "Bạn là trợ lý."}, {"role": "user", "content": "Tính 2 + 3"},
        {"role": "assistant", "content": "Bằng 5."}, {"role": "user", "content": "Thủ đô?"},
        {"role": "assistant", "content": "Hà Nội."}]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def write_tokenizer(directory, with_template=True):
    """A byte-level BPE (vocab 300, lossless on Vietnamese) trained here, saved as tokenizer.json +
    tokenizer_config.json (eos <|im_end|>, pad <|endoftext|>, no bos, ChatML template)."""
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    if with_template:
        cfg["chat_template"] = CHATML
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    return directory


# ---------------------------------------------------------------------------------------------
# transformers side
# ---------------------------------------------------------------------------------------------

def _families(T):
    small = dict(vocab_size=300, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=32, rms_norm_eps=1e-5)
    return {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=2, n_head=2)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**small, num_key_value_heads=2, rope_theta=500.0,
                                                          attention_bias=True, mlp_bias=True)),
        "llama-tied-linear": lambda: T.LlamaForCausalLM(T.LlamaConfig(
            **small, num_key_value_heads=1, tie_word_embeddings=True,
            rope_scaling={"rope_type": "linear", "factor": 2.0})),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**small, num_key_value_heads=2, rope_theta=1e6)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**small, num_key_value_heads=2, head_dim=8,
                                                                sliding_window=3)),
    }


FAMILIES = ["gpt2", "llama", "llama-tied-linear", "qwen2", "mistral"]


def hf_model(transformers, torch, family, seed=0):
    """A float64 transformers model with every parameter (norms, biases) moved off its init."""
    torch.manual_seed(seed)
    model = _families(transformers)[family]().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def hf_logits(model, torch, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.double().numpy()


def hf_greedy(model, torch, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture
def transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.fixture
def exact_transformers(transformers, torch, monkeypatch):
    """transformers with its float32 RMSNorm and rotary tables computed in the model's dtype (float64)."""

    def norm_forward(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary_forward(self, x, position_ids):
        cfg = self.config
        rp = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        inv = 1.0 / (rp["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        if rp.get("rope_type", rp.get("type", "default")) == "linear":
            inv = inv / rp["factor"]
        f = position_ids[..., None].double() * inv
        emb = torch.cat((f, f), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    for mod, prefix in (("llama", "Llama"), ("qwen2", "Qwen2"), ("mistral", "Mistral")):
        m = importlib.import_module(f"transformers.models.{mod}.modeling_{mod}")
        monkeypatch.setattr(getattr(m, prefix + "RMSNorm"), "forward", norm_forward)
        monkeypatch.setattr(getattr(m, prefix + "RotaryEmbedding"), "forward", rotary_forward)
    return transformers


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_folder_to_ours_and_back(exact_transformers, torch, tmp_path, family):
    T = exact_transformers
    ref = hf_model(T, torch, family)
    ref.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    want = hf_logits(ref, torch)
    real = MASK.astype(bool)  # padded positions are unspecified (both sides mask them out of every loss)
    with use_backend(dtype="float64"):
        ours = from_pretrained(tmp_path / "hf")
        assert isinstance(ours, TransformerLM if family == "gpt2" else LlamaLM) and not ours.training
        got = ours(IDS, MASK).numpy()
        assert rel(got[real], want[real]) <= 1e-9
        gen = ours.generate(PROMPTS, max_new_tokens=6, eos_token_id=-1)
        assert gen == ours.generate(PROMPTS, max_new_tokens=6, eos_token_id=-1, use_cache=False)
        assert gen == [hf_greedy(ref, torch, p, 6) for p in PROMPTS]
        save_pretrained(ours, tmp_path / "ours")
    back = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours"))
    assert back.dtype == torch.float64 and type(back) is type(ref)
    assert rel(hf_logits(back, torch)[real], want[real]) <= 1e-9
    for name, p in ref.state_dict().items():
        if not name.endswith("attn.bias") and not name.endswith("masked_bias"):
            np.testing.assert_array_equal(back.state_dict()[name].numpy(), p.numpy(), err_msg=name)


@pytest.mark.torch
def test_stock_transformers_agree_to_float32_rounding(transformers, torch, tmp_path):
    for family in ("llama", "qwen2"):
        ref = hf_model(transformers, torch, family)
        ref.save_pretrained(str(tmp_path / family), safe_serialization=True)
        with use_backend(dtype="float64"):
            got = from_pretrained(tmp_path / family)(IDS, MASK).numpy()
        real = MASK.astype(bool)
        assert rel(got[real], hf_logits(ref, torch)[real]) <= 1e-5


@pytest.mark.torch
def test_sharded_and_bfloat16_folders(exact_transformers, torch, tmp_path):
    ref = hf_model(exact_transformers, torch, "qwen2")
    ref.save_pretrained(str(tmp_path / "sharded"), safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    with use_backend(dtype="float64"):
        got = from_pretrained(tmp_path / "sharded")(IDS, MASK).numpy()
    real = MASK.astype(bool)
    assert rel(got[real], hf_logits(ref, torch)[real]) <= 1e-9
    bf = hf_model(exact_transformers, torch, "llama").to(torch.bfloat16)
    bf.save_pretrained(str(tmp_path / "bf16"), safe_serialization=True)
    with use_backend(dtype="float64"):
        ours = from_pretrained(tmp_path / "bf16")
        for name, p in bf.state_dict().items():
            np.testing.assert_array_equal(ours.named_parameters()[name].numpy(), p.double().numpy(), err_msg=name)


@pytest.mark.torch
def test_score_head_loads_as_sequence_classification(exact_transformers, torch, tmp_path):
    with use_backend(dtype="float64"):
        m = LlamaLM(LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=16, seed=3))
        m.add_score_head()
        ids = np.where(MASK == 1, IDS, m.tokenizer.pad_token_id)  # pad id 256 marks the last real token for HF
        want = m.score(ids, MASK).numpy()
        save_pretrained(m, tmp_path / "rm")
    cls = exact_transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    with torch.no_grad():
        got = cls(torch.as_tensor(ids), attention_mask=torch.as_tensor(MASK)).logits[:, 0].numpy()
    assert rel(got, want) <= 1e-9


# ---------------------------------------------------------------------------------------------
# DPO end to end
# ---------------------------------------------------------------------------------------------

PREF = [{"prompt": "Thủ đô của Việt Nam là gì?", "chosen": "Dạ, là Hà Nội ạ.", "rejected": "Không biết."},
        {"prompt": "Tính 2 + 3", "chosen": "Bằng 5.", "rejected": "Bằng 7."},
        {"prompt": "Xin chào", "chosen": "Xin chào, tôi là trợ lý.", "rejected": "Ừ."},
        {"prompt": "Hà Nội ở đâu?", "chosen": "Ở Việt Nam.", "rejected": "Ở đâu đó."}]


@pytest.mark.torch
def test_dpo_on_a_transformers_llama_saves_what_transformers_loads(exact_transformers, torch, tmp_path):
    T = exact_transformers
    torch.manual_seed(0)
    ref = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=320, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
                                           bos_token_id=None, eos_token_id=2, pad_token_id=0)).double()
    ref.save_pretrained(str(tmp_path / "init"), safe_serialization=True)
    write_tokenizer(tmp_path / "init")
    with use_backend(dtype="float64"):
        policy = from_pretrained(tmp_path / "init")
        assert type(policy.tokenizer).__name__ == "HFTokenizer" and policy.tokenizer.eos_token_id == 2
        before = {k: p.numpy().copy() for k, p in policy.named_parameters().items()}
        res = DPOTrainer(so_vong=1, kich_thuoc_batch=2, toc_do_hoc=1e-2, gradient_accumulation=1, max_seq_length=64,
                         logging_steps=1).huan_luyen(policy, None, PREF)
        assert res["global_step"] == 2 and res["history"]["reward_margin"][0] == pytest.approx(0.0, abs=1e-12)
        assert all(not np.array_equal(before[k], p.numpy()) for k, p in policy.named_parameters().items())
        text = "Thủ đô của Việt Nam là Hà Nội."
        n = len(policy.tokenizer.encode(text))
        batch = np.zeros((2, n + 2), dtype=np.int64)  # right padding with pad id 0
        batch[0, :n] = policy.tokenizer.encode(text)
        batch[1, :3] = policy.tokenizer.encode("Xin chào")[:3]
        mask = np.zeros_like(batch)
        mask[0, :n], mask[1, :3] = 1, 1
        want = policy(batch, mask).numpy()
        save_pretrained(policy, tmp_path / "dpo")
        again = from_pretrained(tmp_path / "dpo")
        assert again.tokenizer.encode(text) == policy.tokenizer.encode(text)
        assert again.tokenizer.chat_template == CHATML
    back = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "dpo"))
    assert rel(hf_logits(back, torch, batch, mask)[mask == 1], want[mask == 1]) <= 1e-9
    auto_tok = T.AutoTokenizer.from_pretrained(str(tmp_path / "dpo"))
    assert auto_tok.encode(text, add_special_tokens=False) == policy.tokenizer.encode(text)
    assert auto_tok.eos_token == "<|im_end|>" and auto_tok.pad_token == "<|endoftext|>"


# ---------------------------------------------------------------------------------------------
# tokenizer.json and chat templates
# ---------------------------------------------------------------------------------------------

def test_hf_tokenizer_protocol_and_chat_mask(tmp_path):
    pytest.importorskip("jinja2")
    from vietnamese_ai_ref.text.hf_tokenizer import IGNORE_INDEX, HFTokenizer

    tok = HFTokenizer.from_pretrained(write_tokenizer(tmp_path / "t"))
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (300, None, 2, 0)
    s = "Tiếng Việt có dấu: ệ ữ ỗ — 😀"
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode(s, add_bos=True, add_eos=True) == tok.encode(s) + [2]  # no bos token: nothing added
    assert tok.encode("a<|im_end|>")[-1] == 2  # special-token text becomes its id
    assert tok.decode([2, tok.encode("a")[0]]) == "a" and tok.decode([2], skip_special_tokens=False) == "<|im_end|>"
    text = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nTính 2 + 3<|im_end|>\n<|im_start|>assistant\n")
    ids, labels = tok.encode_chat(CHAT)
    assert ids == tok.encode(tok.apply_chat_template(CHAT))
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(trained, skip_special_tokens=False) == "Bằng 5.<|im_end|>\nHà Nội.<|im_end|>\n"
    short_ids, short_labels = tok.encode_chat(CHAT, max_length=10)
    assert short_ids == ids[:10] and short_labels == labels[:10]
    # the mask feeds SFTTrainer today as a pre-tokenised record
    with use_backend(dtype="float64"):
        m = LlamaLM(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=64), tokenizer=tok)
        r = SFTTrainer(so_vong=1, kich_thuoc_batch=1, gradient_accumulation=1, max_seq_length=64).huan_luyen(
            m, [{"input_ids": ids, "labels": labels}])
        assert np.isfinite(r["train_loss_min"])
        assert isinstance(m.sinh_van_ban("Xin chào", max_new_tokens=3)[0], str)
    # save/load keeps tokens and template; errors name what is wrong
    tok.save(tmp_path / "saved")
    again = HFTokenizer.from_pretrained(tmp_path / "saved")
    assert again.encode(s) == tok.encode(s) and again.chat_template == CHATML and again.pad_token_id == 0
    with pytest.raises(TokenizerError, match="no assistant turn"):
        tok.encode_chat(CHAT[:2])
    with pytest.raises(TokenizerError, match="special token pad_token='<pad>' is not in the vocabulary"):
        HFTokenizer.from_pretrained(tmp_path / "t", pad_token="<pad>")
    plain = HFTokenizer.from_pretrained(write_tokenizer(tmp_path / "p", with_template=False))
    with pytest.raises(TokenizerError, match="no chat_template"):
        plain.apply_chat_template(CHAT)
    with pytest.raises(TokenizerError, match="out of range: 300"):
        tok.decode([300])


def test_special_tokens_fall_back_to_model_config_ids(tmp_path):
    from vietnamese_ai_ref.text.hf_tokenizer import HFTokenizer

    d = write_tokenizer(tmp_path / "t", with_template=False)
    (d / "tokenizer_config.json").unlink()
    tok = HFTokenizer.from_pretrained(d, model_config={"bos_token_id": 1, "eos_token_id": [2, 0]})
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)  # pad falls back to eos
    assert tok.encode("a", add_bos=True)[0] == 1
    with pytest.raises(TokenizerError, match="has no eos_token"):
        HFTokenizer.from_pretrained(d, model_config={})


@pytest.mark.torch
def test_chat_template_and_assistant_mask_match_transformers(transformers, tmp_path):
    from vietnamese_ai_ref.text.hf_tokenizer import HFTokenizer

    d = write_tokenizer(tmp_path / "t")
    ours = HFTokenizer.from_pretrained(d)
    theirs = transformers.AutoTokenizer.from_pretrained(str(d))
    for add in (False, True):
        assert ours.apply_chat_template(CHAT[:4], add_generation_prompt=add) == theirs.apply_chat_template(
            CHAT[:4], tokenize=False, add_generation_prompt=add)
    out = theirs.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, labels = ours.encode_chat(CHAT)
    assert ids == list(out["input_ids"])
    assert [int(t != -100) for t in labels] == list(out["assistant_masks"])
    for s in CORPUS + ["ỗ ữ ệ 😀 <|im_start|>x"]:
        assert ours.encode(s) == theirs.encode(s, add_special_tokens=False)


@pytest.mark.torch
def test_gpt2_folder_with_tokenizer_json(transformers, torch, tmp_path):
    ref = hf_model(transformers, torch, "gpt2")
    ref.save_pretrained(str(tmp_path / "g"), safe_serialization=True)
    write_tokenizer(tmp_path / "g")
    with use_backend(dtype="float64"):
        m = from_pretrained(tmp_path / "g")
        assert isinstance(m, TransformerLM) and type(m.tokenizer).__name__ == "HFTokenizer"
        assert len(m.sinh_van_ban(["Xin chào", "Hà Nội"], max_new_tokens=4)) == 2
