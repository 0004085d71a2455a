"""spec/errors.md, row by row: every kind of bad input the API and the CLI accept gets the error type and
message fragment the catalogue gives (rows already covered by tests/test_validation.py name that test in
the table instead). Where a model or a checkpoint is involved, the test also checks that nothing was
changed: the weights, and every byte of the checkpoint directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from vietnamese_ai_ref import (DataError, DPOTrainer, NonFiniteError, RewardModel, RLHFPipeline, SFTTrainer,
                               set_backend)
from vietnamese_ai_ref.backends import BackendError, use_backend
from vietnamese_ai_ref.io.checkpoints import CheckpointError, FORMAT_VERSION
from vietnamese_ai_ref.text.jsonl import JsonlError, read_jsonl
from vietnamese_ai_ref.text.tokenizer import TokenizerError
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

CFG = dict(n_layer=1, n_embd=16, n_head=2, n_positions=64)
GOOD = {"instruction": "Tính 1 + 1", "output": "2."}
SFT_DATA = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(3) for b in range(3)]
PAIRS = [{"prompt": f"Tính {a}", "chosen": f"Dạ, {a} ạ.", "rejected": "Không."} for a in range(4)]


def tiny(**kw):
    return TransformerLM(GPTConfig(**{**CFG, **kw}))


@pytest.fixture
def model():
    return tiny()


def snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def unchanged(model, before):
    after = model.state_dict()
    return after.keys() == before.keys() and all(np.array_equal(after[k], before[k], equal_nan=True) for k in before)


def check(fn, exc, *fragments, model=None):
    """`fn()` raises exactly `exc` (or a subclass) with every fragment in its message; weights unchanged."""
    before = snapshot(model) if model is not None else None
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    for f in fragments:
        assert f in msg, (f, msg)
    if model is not None:
        assert unchanged(model, before)
    return msg


def tree_digest(root):
    """SHA-256 over every file (path and bytes) under root."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, root).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


# =============================================================================================
# Records (DataError)
# =============================================================================================

def test_attention_mask_length_mismatch(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"input_ids": [1, 2, 3], "attention_mask": [1, 1]}]), DataError,
          "bản ghi 0", "'attention_mask'", "length 3", model=model)


def test_label_id_out_of_range(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"input_ids": [1, 2, 3], "labels": [-100, 2, 999]}]), DataError,
          "labels[2]", "[0, 259)", model=model)


def test_attention_mask_not_binary(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"input_ids": [1, 2, 3], "attention_mask": [1, 2, 1]}]),
          DataError, "attention_mask[1]", "0 or 1", model=model)


def test_bool_token_id(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"input_ids": [1, True, 3]}]), DataError, "input_ids[1]",
          "an int", model=model)


def test_empty_dataset(model):
    check(lambda: SFTTrainer().huan_luyen(model, []), DataError, "du_lieu_train", "is empty", model=model)


def test_unknown_format_with_non_string_keys(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{1: "a", "cau_hoi": "b"}]), DataError, "bản ghi 0",
          "unknown format", "cau_hoi", model=model)


def test_messages_not_a_list(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"messages": "xin chào"}]), DataError, "'messages'",
          "non-empty list of messages", model=model)


def test_message_not_a_dict(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"messages": ["xin chào"]}]), DataError, "messages[0]",
          "a dict with role/content", model=model)


def test_message_role_not_hashable(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"messages": [{"role": ["user"], "content": "x"}]}]), DataError,
          "messages[0].role", model=model)


def test_messages_without_assistant_turn(model):
    check(lambda: SFTTrainer().huan_luyen(model, [{"messages": [{"role": "user", "content": "x"}]}]), DataError,
          "at least one 'assistant' turn", model=model)


def test_lone_surrogate_in_text(model):
    check(lambda: SFTTrainer().huan_luyen(model, [GOOD, {"instruction": "a\ud800b", "output": "c"}]), DataError,
          "bản ghi 1", "'instruction'", "lone surrogate", model=model)


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), 10**400, None])
def test_margin_not_finite(model, margin):
    check(lambda: RewardModel().huan_luyen(model, [{"chosen": "a", "rejected": "b", "margin": margin}]), DataError,
          "'margin'", "a finite number", model=model)


@pytest.mark.parametrize("margin", [1e308, -3.5e38])
def test_margin_beyond_the_training_dtype(model, margin):
    """A margin finite as a Python float but not in float32 (it would overflow in the loss) is refused
    before any compute, naming the dtype's limit; in float64 the same margin is a valid number."""
    data = [{"chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": "b", "margin": margin}]
    check(lambda: RewardModel().huan_luyen(model, data), DataError, "bản ghi 1", "'margin'",
          "a finite number in float32 (|margin| <= 3.402823e+38)", model=model)
    from vietnamese_ai_ref.text.records import prepare_pairs
    from vietnamese_ai_ref.text.tokenizer import ByteTokenizer

    with use_backend("numpy", dtype="float64"):
        assert prepare_pairs(data, ByteTokenizer(), 64, require_prompt=False, allow_margin=True)[1]["margin"] == margin


def test_margin_in_dpo(model):
    check(lambda: DPOTrainer().huan_luyen(model, None, [dict(PAIRS[0], margin=1.0)]), DataError, "'margin'",
          "no such key for DPO", model=model)


def test_dpo_pair_without_prompt(model):
    check(lambda: DPOTrainer().huan_luyen(model, None, [{"chosen": "a", "rejected": "b"}]), DataError,
          "'prompt'", "key missing", model=model)


def test_unknown_extra_keys_are_ignored(model):
    r = SFTTrainer(so_vong=1, kich_thuoc_batch=2).huan_luyen(model, [dict(GOOD, nguon="web", id=7)])
    assert r["global_step"] == 1


def test_pipeline_preference_data_without_prompts(model):
    pipe = RLHFPipeline()
    check(lambda: pipe.chay_day_du(model, None, tiny(seed=1), [GOOD], [{"chosen": "a", "rejected": "b"}]),
          DataError, "'prompt'", model=model)


@pytest.mark.parametrize("texts,fragment", [("một chuỗi", "non-empty list of strings"), ([], "non-empty list"),
                                            (["a", "  "], "cac_van_ban[1]")])
def test_diem_danh_gia_bad_texts(texts, fragment):
    m = tiny()
    m.add_score_head()
    check(lambda: RewardModel().diem_danh_gia(m, texts), DataError, fragment)


# =============================================================================================
# Arguments (ValueError)
# =============================================================================================

@pytest.mark.parametrize("kw,name", [({"gradient_clip": -1.0}, "gradient_clip"), ({"weight_decay": -0.1}, "weight_decay"),
                                     ({"warmup_ratio": 1.5}, "warmup_ratio"), ({"max_seq_length": 1}, "max_seq_length"),
                                     ({"seed": -1}, "seed"), ({"logging_steps": 0}, "logging_steps"),
                                     ({"toc_do_hoc": float("nan")}, "toc_do_hoc")])
def test_other_constructor_values(kw, name):
    check(lambda: SFTTrainer(**kw), ValueError, f"'{name}'", "không hợp lệ")


def test_pipeline_config_not_a_dict():
    check(lambda: RLHFPipeline(sft_config=[("so_vong", 1)]), ValueError, "'sft_config'", "must be a dict")


def test_ref_model_is_model(model):
    check(lambda: DPOTrainer().huan_luyen(model, model, PAIRS), ValueError, "'ref_model'", "same object", model=model)


def test_ref_model_vocab_differs(model):
    check(lambda: DPOTrainer().huan_luyen(model, tiny(vocab_size=300), PAIRS), ValueError, "vocab sizes differ",
          model=model)


def test_reward_model_is_policy(model):
    check(lambda: RLHFPipeline().chay_day_du(model, None, model, [GOOD], PAIRS), ValueError, "'reward_model'",
          model=model)


def test_score_without_head(model):
    check(lambda: RewardModel().diem_danh_gia(model, ["a"]), ValueError, "no score head")


@pytest.mark.parametrize("kw,fragment", [
    ({"luu_moi": 0, "thu_muc_checkpoint": "x"}, "'luu_moi'"),
    ({"luu_moi": 2.5, "thu_muc_checkpoint": "x"}, "'luu_moi'"),
    ({"luu_moi": 5}, "'luu_moi' needs 'thu_muc_checkpoint'"),
    ({"giu_lai": 0}, "'giu_lai'"),
    ({"bo_qua_batch_loi": "yes"}, "'bo_qua_batch_loi'"),
    ({"thu_muc_checkpoint": 3}, "'thu_muc_checkpoint'"),
    ({"tiep_tuc_tu": ["a"]}, "'tiep_tuc_tu'"),
])
def test_checkpoint_arguments(model, kw, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(lambda: SFTTrainer().huan_luyen(model, [GOOD], **kw), ValueError, fragment, model=model)
    assert os.listdir(tmp_path) == []  # nothing written


@pytest.mark.parametrize("kw,fragment", [({"luu_moi": 3}, "'luu_moi' needs"), ({"giu_lai": -1}, "'giu_lai'"),
                                         ({"thu_muc_checkpoint": 1.5}, "'thu_muc_checkpoint'")])
def test_pipeline_checkpoint_arguments(kw, fragment):
    check(lambda: RLHFPipeline(**kw), ValueError, fragment)


def test_pipeline_tiep_tuc_without_directory(model):
    check(lambda: RLHFPipeline().chay_day_du(model, None, tiny(seed=1), [GOOD], PAIRS, tiep_tuc=True), ValueError,
          "'tiep_tuc=True' needs 'thu_muc_checkpoint'", model=model)


@pytest.mark.parametrize("kw,fragment", [({"n_embd": 15}, "not divisible"), ({"n_layer": 0}, "n_layer"),
                                         ({"attn_pdrop": 1.0}, "attn_pdrop"), ({"model_type": "llama"}, "model_type")])
def test_model_config_values(kw, fragment):
    check(lambda: GPTConfig(**{**CFG, **kw}), ValueError, "invalid config", fragment)


def test_backend_and_dtype_names():
    with use_backend():
        check(lambda: set_backend("tensorflow"), BackendError, "invalid backend", "tensorflow")
        check(lambda: set_backend(dtype="float16"), BackendError, "invalid dtype")


# =============================================================================================
# Training
# =============================================================================================

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_step(model):
    sd = model.state_dict()
    sd["ln_f.bias"][0] = np.inf
    model.load_state_dict(sd)
    msg = check(lambda: SFTTrainer(kich_thuoc_batch=16, gradient_accumulation=1).huan_luyen(model, SFT_DATA),
                NonFiniteError, "bước 1", "step 1", "weights unchanged", model=model)
    assert str(list(range(9))) in msg  # all nine records were in that step


# =============================================================================================
# Files
# =============================================================================================

@pytest.mark.parametrize("content,fragments", [
    (None, ["file not found"]),
    (b'{"a": 1}\n\xff\xfe\n', [":2:", "invalid UTF-8"]),
    (b'{"a": 1}\n{"a": \n', [":2:", "invalid JSON"]),
    (b'[1, 2]\n', [":1:", "must be a JSON object", "list"]),
    (b"\n  \n", ["empty file"]),
    (b'{"a": ' + b"7" * 5000 + b"}\n", [":1:", "unreadable JSON"]),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", [":1:", "nested too deeply"]),
])
def test_jsonl_files(tmp_path, content, fragments):
    path = tmp_path / "d.jsonl"
    if content is not None:
        path.write_bytes(content)
    check(lambda: read_jsonl(path), JsonlError, str(path), *fragments)


def test_model_directory_errors(tmp_path):
    check(lambda: TransformerLM.load(tmp_path / "none"), CheckpointError, "not found")
    tiny().save(tmp_path / "m")
    os.remove(tmp_path / "m" / "tokenizer_config.json")  # no tokenizer files: ids in, logits out; text asks for one
    check(lambda: TransformerLM.load(tmp_path / "m").sinh_van_ban("a"), TokenizerError, "without a tokenizer",
          "tokenizer=...")
    tiny().save(tmp_path / "m2")
    (tmp_path / "m2" / "model.safetensors").write_bytes(b"garbage")
    check(lambda: TransformerLM.load(tmp_path / "m2"), CheckpointError, "cannot read", "model.safetensors")
    tiny().save(tmp_path / "m3")
    cfg = json.loads((tmp_path / "m3" / "config.json").read_text())
    (tmp_path / "m3" / "config.json").write_text(json.dumps(dict(cfg, hidden_sizee=1)))
    (tmp_path / "m3" / "config.json").write_text(json.dumps(dict(cfg, activation_function="relu")))
    check(lambda: TransformerLM.load(tmp_path / "m3"), CheckpointError, "unsupported config option",
          "activation_function='relu'")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("giữ lại")
    check(lambda: tiny().save(tmp_path / "other"), CheckpointError, "refusing")
    assert os.listdir(tmp_path / "other") == ["notes.txt"]


# =============================================================================================
# CLI: one line "lỗi / error: ...", exit code 2
# =============================================================================================

def cli(capsys, *argv):
    from vietnamese_ai_ref.app.cli import main

    rc = main([*argv, "--quiet"] if argv[0] not in ("pipeline",) else [*argv])
    err = capsys.readouterr().err
    return rc, err


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT_DATA), encoding="utf-8")
    return p


def test_cli_missing_data_file(tmp_path, capsys):
    rc, err = cli(capsys, "sft", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"))
    assert rc == 2 and err.startswith("lỗi / error: --data") and "file not found" in err


def test_cli_bad_record(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a"}\n', encoding="utf-8")
    rc, err = cli(capsys, "sft", "--data", str(p), "--out", str(tmp_path / "o"), "--n-embd", "16", "--n-head", "2")
    assert rc == 2 and "record 0" in err and "'output'" in err


def test_cli_missing_model_dir(tmp_path, capsys, data_file):
    rc, err = cli(capsys, "reward", "--data", str(data_file), "--model", str(tmp_path / "none"))
    assert rc == 2 and "--model" in err and "directory not found" in err


def test_cli_bad_argument_value(tmp_path, capsys, data_file):
    rc, err = cli(capsys, "sft", "--data", str(data_file), "--so-vong", "0", "--out", str(tmp_path / "o"),
                  "--n-embd", "16", "--n-head", "2")
    assert rc == 2 and "'so_vong'" in err


def test_cli_missing_required_option(capsys):
    from vietnamese_ai_ref.app.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["reward", "--data", "x.jsonl"])
    assert ei.value.code == 2 and "--model" in capsys.readouterr().err


@pytest.mark.parametrize("toml,fragment", [
    (None, "file not found"),
    ("[sft\nx=1", "invalid TOML"),
    ('[data]\nsft="a"\npreference="b"\n[trainer]\nx=1\n', "unknown keys ['trainer']"),
    ('[data]\npreference="b.jsonl"\n', "missing [data].sft"),
])
def test_cli_pipeline_config(tmp_path, capsys, toml, fragment):
    cfg = tmp_path / "p.toml"
    if toml is not None:
        cfg.write_text(toml, encoding="utf-8")
    rc, err = cli(capsys, "pipeline", "--config", str(cfg), "--quiet")
    assert rc == 2 and fragment in err, err


def test_cli_pipeline_bad_model_key(tmp_path, capsys, data_file):
    pref = tmp_path / "p.jsonl"
    pref.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PAIRS), encoding="utf-8")
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[model]\nn_embdd=16\n[data]\nsft="{data_file.name}"\npreference="p.jsonl"\n', encoding="utf-8")
    rc, err = cli(capsys, "pipeline", "--config", str(cfg), "--quiet")
    assert rc == 2 and "[model]" in err and "n_embdd" in err


# =============================================================================================
# Checkpoints (CheckpointError; nothing overwritten)
# =============================================================================================

def sft_trainer(**kw):
    return SFTTrainer(**{**dict(so_vong=2, kich_thuoc_batch=3, gradient_accumulation=1, toc_do_hoc=1e-3), **kw})


@pytest.fixture(scope="module")
def sft_ckpt(tmp_path_factory):
    """A finished SFT run's checkpoint directory (steps 4 and 6)."""
    root = tmp_path_factory.mktemp("ck") / "run"
    sft_trainer().huan_luyen(tiny(), SFT_DATA, thu_muc_checkpoint=root, luu_moi=2)
    return root


@pytest.fixture
def ck(sft_ckpt, tmp_path):
    """A private copy of the checkpoint directory."""
    dst = tmp_path / "run"
    shutil.copytree(sft_ckpt, dst)
    return dst


def check_resume(ck, fn, exc, *fragments, model):
    digest = tree_digest(ck)
    msg = check(fn, exc, *fragments, model=model)
    assert tree_digest(ck) == digest  # nothing overwritten, nothing pruned
    return msg


def newest(ck):
    return ck / "checkpoint-00000006"


def test_ckpt_resume_path_missing(tmp_path, model):
    check(lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=tmp_path / "none"), CheckpointError,
          "checkpoint not found", model=model)


def test_ckpt_directory_without_checkpoint(tmp_path, model):
    (tmp_path / "empty").mkdir()
    check(lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=tmp_path / "empty"), CheckpointError,
          "no complete checkpoint", model=model)


def test_ckpt_different_model_config(ck):
    m = tiny(n_embd=32)
    msg = check_resume(ck, lambda: sft_trainer().huan_luyen(m, SFT_DATA, tiep_tuc_tu=ck, thu_muc_checkpoint=ck),
                       CheckpointError, "model config differs", "n_embd: checkpoint=16", "now=32", model=m)
    assert "n_head" not in msg  # only what differs is named


def test_ckpt_different_trainer_config(ck, model):
    check_resume(ck, lambda: sft_trainer(toc_do_hoc=2e-3).huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck),
                 CheckpointError, "trainer config differs", "toc_do_hoc: checkpoint=0.001", "now=0.002", model=model)


def test_ckpt_different_reward_epochs(tmp_path, model):
    data = [{"chosen": "a", "rejected": "b"}] * 4
    RewardModel().huan_luyen(tiny(), data, so_vong=1, thu_muc_checkpoint=tmp_path / "r")
    model.add_score_head()  # (without one, huan_luyen attaches the head before it reads the checkpoint)
    check_resume(tmp_path / "r", lambda: RewardModel().huan_luyen(model, data, so_vong=2, tiep_tuc_tu=tmp_path / "r"),
                 CheckpointError, "so_vong: checkpoint=1", model=model)


def test_ckpt_different_data(ck, model):
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA[:-1], tiep_tuc_tu=ck), CheckpointError,
                 "training data differs", "9 vs 8", model=model)
    changed = SFT_DATA[:-1] + [{"instruction": "Tính 2 + 2", "output": "5."}]
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, changed, tiep_tuc_tu=ck), CheckpointError,
                 "training data differs", model=model)


def test_ckpt_different_kind(ck, model):
    check_resume(ck, lambda: DPOTrainer().huan_luyen(model, None, PAIRS, tiep_tuc_tu=ck), CheckpointError,
                 "from a 'sft' run, not 'dpo'", model=model)


def test_ckpt_different_dtype(ck):
    with use_backend(dtype="float64"):
        m = tiny()
        check_resume(ck, lambda: sft_trainer().huan_luyen(m, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                     "dtype differs", "checkpoint=float32", "now=float64", model=m)


def test_ckpt_validation_data_presence_differs(ck, model):
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, du_lieu_val=[GOOD], tiep_tuc_tu=ck),
                 CheckpointError, "validation data presence differs", model=model)


def test_ckpt_parameters_differ(ck, model):
    model.add_score_head()
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "model parameters differ", "score.weight", model=model)


def test_ckpt_corrupted_state(ck, model):
    (newest(ck) / "trainer_state.json").write_text('{"format_version": 1, "loop": ', encoding="utf-8")
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "corrupted checkpoint file", "trainer_state.json", model=model)


def test_ckpt_state_missing_keys(ck, model):
    (newest(ck) / "trainer_state.json").write_text(json.dumps({"format_version": FORMAT_VERSION}), encoding="utf-8")
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "corrupted checkpoint file", "missing", "'loop'", model=model)


def test_ckpt_wrong_format_version(ck, model):
    p = newest(ck) / "trainer_state.json"
    state = json.loads(p.read_text(encoding="utf-8"))
    p.write_text(json.dumps(dict(state, format_version=99)), encoding="utf-8")
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "format_version", "found 99, expected 1", model=model)


def test_ckpt_corrupted_optimizer(ck, model):
    (newest(ck) / "optimizer.safetensors").write_bytes(b"\x00" * 64)
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "corrupted checkpoint file", "optimizer.safetensors", model=model)


def test_ckpt_optimizer_tensor_wrong_shape(ck, model):
    from safetensors.numpy import load_file, save_file

    p = newest(ck) / "optimizer.safetensors"
    arrays = load_file(str(p))
    arrays["group0.m"] = arrays["group0.m"][:-1].copy()
    save_file(arrays, str(p))
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "corrupted checkpoint file", "group0.m has shape", model=model)


def test_ckpt_missing_optimizer(ck, model):
    os.remove(newest(ck) / "optimizer.safetensors")
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "missing file", "optimizer.safetensors", model=model)


def test_ckpt_corrupted_model_weights(ck, model):
    p = newest(ck) / "model" / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck), CheckpointError,
                 "cannot read", "model.safetensors", model=model)


def test_ckpt_fresh_run_into_used_directory(ck, model):
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, thu_muc_checkpoint=ck), CheckpointError,
                 "already holds checkpoints", "tiep_tuc_tu", model=model)


def test_ckpt_resume_into_directory_of_another_run(ck, tmp_path, model):
    other = tmp_path / "other"
    sft_trainer(seed=7).huan_luyen(tiny(), SFT_DATA, thu_muc_checkpoint=other)
    digest = tree_digest(other)
    check_resume(ck, lambda: sft_trainer().huan_luyen(model, SFT_DATA, tiep_tuc_tu=ck, thu_muc_checkpoint=other),
                 CheckpointError, "different run", model=model)
    assert tree_digest(other) == digest


def test_ckpt_directory_is_a_file(tmp_path, model):
    f = tmp_path / "f"
    f.write_text("x")
    check(lambda: sft_trainer().huan_luyen(model, SFT_DATA, thu_muc_checkpoint=f), CheckpointError,
          "not a directory", model=model)


@pytest.mark.parametrize("command,option", [("dpo", "--ref"), ("grpo", "--ref"), ("grpo", "--reward-model")])
def test_cli_missing_second_model_names_its_option(tmp_path, capsys, data_file, command, option):
    """A missing --ref / --reward-model folder is reported under its own option, not --model's."""
    model, rm = tmp_path / "m", tmp_path / "rm"
    m = TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64))
    m.save_pretrained(str(model))
    m.add_score_head()
    m.save_pretrained(str(rm))
    args = [command, "--data", str(data_file), "--model", str(model), "--out", str(tmp_path / "o")]
    if command == "grpo":
        args += ["--reward-model", str(rm) if option == "--ref" else str(tmp_path / "none")]
    if option == "--ref":
        args += ["--ref", str(tmp_path / "none")]
    rc, err = cli(capsys, *args)
    assert rc == 2 and err.startswith(f"lỗi / error: {option}:") and "directory not found" in err, err
    assert not (tmp_path / "o").exists()
