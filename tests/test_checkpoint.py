"""Checkpoints: Hugging Face layout, bit-exact round trips, atomic writes, precise errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.errors import CheckpointError
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.text.tokenizer import ByteTokenizer, TokenizerError

CFG = dict(n_positions=16, n_embd=16, n_layer=2, n_head=2)


def tiny(**kw):
    return TransformerLM(GPTConfig(**{**CFG, **kw}))


IDS = np.array([[257, 72, 105, 33, 258], [257, 97, 256, 256, 256]])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])


def file_keys(n_layer=2):
    keys = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"]
    for i in range(n_layer):
        for s in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                  "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                  "mlp.c_proj.weight", "mlp.c_proj.bias"):
            keys.append(f"transformer.h.{i}.{s}")
    return sorted(keys)


def test_round_trip_bit_exact(tmp_path, backend):
    m = tiny(seed=3)
    m.add_score_head()
    m.save(tmp_path / "ckpt")
    m2 = TransformerLM.load(tmp_path / "ckpt")
    assert not m2.training  # like transformers' from_pretrained
    assert m2.config == m.config and m2.has_score_head and isinstance(m2.tokenizer, ByteTokenizer)
    assert list(m2.named_parameters()) == list(m.named_parameters())
    np.testing.assert_array_equal(m2(IDS, MASK).numpy(), m(IDS, MASK).numpy())
    np.testing.assert_array_equal(m2.score(IDS, MASK).numpy(), m.score(IDS, MASK).numpy())
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "np") as f:
        assert f.get_tensor("transformer.wte.weight").dtype == np.float64  # float64 kept exactly


def test_round_trip_float32_and_aliases(tmp_path):
    m = tiny()
    m.luu(tmp_path / "c")
    m2 = TransformerLM.tai(tmp_path / "c")
    assert m2.parameters()[0].dtype == np.float32
    np.testing.assert_array_equal(m2(IDS, MASK).numpy(), m(IDS, MASK).numpy())
    with use_backend(dtype="float64"):  # float32 file under a float64 backend: exact upcast
        m64 = TransformerLM.load(tmp_path / "c")
        np.testing.assert_array_equal(
            m64.named_parameters()["wte.weight"].numpy(), m.named_parameters()["wte.weight"].numpy().astype(np.float64)
        )


def test_layout(tmp_path):
    m = tiny()
    m.save(tmp_path / "c")
    d = tmp_path / "c"
    assert sorted(os.listdir(d)) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["model_type"] == "gpt2"
    for k, v in GPTConfig(**CFG).to_dict().items():
        assert cfg[k] == v
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True
    assert cfg["torch_dtype"] == "float32" and "vietnamese_ai_ref_version" in cfg and cfg["score_head"] is False
    with safe_open(str(d / "model.safetensors"), "np") as f:
        assert sorted(f.keys()) == file_keys()  # no lm_head.weight: tied to wte
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("transformer.h.0.attn.c_attn.weight").shape == (16, 48)  # Conv1D (in, out)
    m.add_score_head()
    m.save(d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["score_head"] is True and cfg["id2label"] == {"0": "LABEL_0"}
    assert "score.weight" in load_file(str(d / "model.safetensors"))


def test_tampered_shape(tmp_path):
    tiny().save(tmp_path / "c")
    f = str(tmp_path / "c" / "model.safetensors")
    t = load_file(f)
    t["transformer.h.1.mlp.c_fc.weight"] = t["transformer.h.1.mlp.c_fc.weight"].T.copy()
    save_file(t, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*expected \(16, 64\), found \(64, 16\)"):
        TransformerLM.load(tmp_path / "c")


def test_missing_and_unexpected_tensors(tmp_path):
    tiny().save(tmp_path / "c")
    f = str(tmp_path / "c" / "model.safetensors")
    t = load_file(f)
    bad = dict(t)
    del bad["transformer.h.0.ln_2.bias"]
    save_file(bad, f)
    with pytest.raises(CheckpointError, match=r"missing tensor: transformer\.h\.0\.ln_2\.bias"):
        TransformerLM.load(tmp_path / "c")
    save_file(dict(t, **{"transformer.h.7.ln_1.weight": np.ones(16, np.float32)}), f)
    with pytest.raises(CheckpointError, match=r"unexpected tensor: transformer\.h\.7\.ln_1\.weight"):
        TransformerLM.load(tmp_path / "c")
    save_file(dict(t, **{"score.weight": np.ones((1, 16), np.float32)}), f)  # config says no head
    with pytest.raises(CheckpointError, match=r"unexpected tensor: score\.weight"):
        TransformerLM.load(tmp_path / "c")
    save_file(dict(t, **{"wte.weight": t["transformer.wte.weight"]}), f)  # unprefixed key in a prefixed file
    with pytest.raises(CheckpointError, match=r"unexpected tensor: wte\.weight"):
        TransformerLM.load(tmp_path / "c")


def test_transformers_style_files_accepted(tmp_path):
    m = tiny()
    m.save(tmp_path / "c")
    f = str(tmp_path / "c" / "model.safetensors")
    t = load_file(f)
    # tied lm_head.weight and old causal-mask buffers are accepted
    extra = {"lm_head.weight": t["transformer.wte.weight"], "transformer.h.0.attn.bias": np.ones((1, 1, 16, 16), np.float32)}
    save_file(dict(t, **extra), f)
    np.testing.assert_array_equal(TransformerLM.load(tmp_path / "c")(IDS).numpy(), m(IDS).numpy())
    # a GPT2Model file without the "transformer." prefix
    save_file({k[len("transformer."):]: v for k, v in t.items()}, f)
    np.testing.assert_array_equal(TransformerLM.load(tmp_path / "c")(IDS).numpy(), m(IDS).numpy())
    # an untied head is refused
    save_file(dict(t, **{"lm_head.weight": t["transformer.wte.weight"] + 1}), f)
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        TransformerLM.load(tmp_path / "c")
    # a transformers-written config with its usual extra keys loads
    save_file(t, f)
    cfgp = tmp_path / "c" / "config.json"
    cfg = json.loads(cfgp.read_text())
    cfg.update({"transformers_version": "4.46.0", "n_ctx": 16, "use_cache": True, "summary_type": "cls_index",
                "reorder_and_upcast_attn": False, "scale_attn_by_inverse_layer_idx": False})
    del cfg["score_head"]
    cfgp.write_text(json.dumps(cfg))
    TransformerLM.load(tmp_path / "c")
    cfg["activation_function"] = "relu"
    cfgp.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="activation_function"):
        TransformerLM.load(tmp_path / "c")


def test_config_errors(tmp_path):
    tiny().save(tmp_path / "c")
    cfgp = tmp_path / "c" / "config.json"
    cfg = json.loads(cfgp.read_text())
    cfgp.write_text(json.dumps(dict(cfg, hidden_sizee=3)))  # an unknown key is a warning naming it
    with pytest.warns(UserWarning, match="hidden_sizee"):
        TransformerLM.load(tmp_path / "c")
    cfgp.write_text(json.dumps(dict(cfg, n_head=3)))
    with pytest.raises(CheckpointError, match="divisible"):
        TransformerLM.load(tmp_path / "c")
    cfgp.write_text(json.dumps(dict(cfg, score_head=True)))
    with pytest.raises(CheckpointError, match="missing tensor: score.weight"):
        TransformerLM.load(tmp_path / "c")
    cfgp.write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        TransformerLM.load(tmp_path / "c")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_files(tmp_path, name):
    m = tiny()
    m.save(tmp_path / "c")
    os.remove(tmp_path / "c" / name)
    with pytest.raises(CheckpointError, match=f"missing file: .*{name}"):
        TransformerLM.load(tmp_path / "c")


def test_a_folder_without_tokenizer_files_loads_ids_in_logits_out(tmp_path):
    m = tiny()
    m.save(tmp_path / "c")
    os.remove(tmp_path / "c" / "tokenizer_config.json")
    loaded = TransformerLM.load(tmp_path / "c")
    ids = np.asarray([[257, 5, 9, 200]])
    np.testing.assert_array_equal(loaded(ids).numpy(), m.eval()(ids).numpy())
    assert loaded.generate([[257, 5, 9]], max_new_tokens=3) == m.generate([[257, 5, 9]], max_new_tokens=3)
    with pytest.raises(TokenizerError, match="pass tokenizer="):
        loaded.sinh_van_ban("Xin chào")
    assert TransformerLM.load(tmp_path / "c", tokenizer=ByteTokenizer()).sinh_van_ban("a", max_new_tokens=2) \
        == m.sinh_van_ban("a", max_new_tokens=2)


def test_missing_dir_and_corrupt_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        TransformerLM.load(tmp_path / "nope")
    tiny().save(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        TransformerLM.load(tmp_path / "c")


def test_atomic_save(tmp_path, monkeypatch):
    a, b = tiny(seed=1), tiny(seed=2)
    path = tmp_path / "ckpt"
    a.save(path)
    b.save(path)  # replaces the existing checkpoint
    np.testing.assert_array_equal(TransformerLM.load(path)(IDS).numpy(), b(IDS).numpy())
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary or backup siblings left

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(a.tokenizer, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        a.save(path)
    np.testing.assert_array_equal(TransformerLM.load(path)(IDS).numpy(), b(IDS).numpy())  # old one intact
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    with pytest.raises(OSError):
        a.save(tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # nothing half-written at a new path either


def test_save_refuses_to_clobber(tmp_path):
    m = tiny()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "important.txt").write_text("x")
    with pytest.raises(CheckpointError, match="refusing"):
        m.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "important.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        m.save(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    m.save(tmp_path / "empty")  # an empty directory is fine
    assert (tmp_path / "empty" / "config.json").exists()


def test_saving_keeps_files_it_does_not_own_and_follows_the_umask(tmp_path):
    m = tiny()
    d = tmp_path / "c"
    m.save(d)
    (d / "README.md").write_text("giữ lại / keep")
    (d / "model.safetensors.index.json").write_text("{}")  # an owned file the new save does not write
    old = os.umask(0o022)
    try:
        m.save(d)
    finally:
        os.umask(old)
    assert (d / "README.md").read_text() == "giữ lại / keep"
    assert not (d / "model.safetensors.index.json").exists()
    assert oct(os.stat(d / "model.safetensors").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(d).st_mode & 0o777) == oct(0o755)
