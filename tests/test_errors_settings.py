"""The library side of "everything is validated before the first step" (spec/errors.md rows A17–A19,
R27–R28, F10–F13): numpy scalars accepted wherever the Python type is, bad settings as `SettingError`,
the pipeline's stage configs and data all checked first with each stage's own rules, `chosen == rejected`
refused, JSONL files with a BOM read, directories/pipes/unreadable files told apart.
"""

from __future__ import annotations

import builtins
import errno
import os

import numpy as np
import pytest

from vietnamese_ai_ref.core.errors import DataError, JsonlError, SettingError
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.text import jsonl
from vietnamese_ai_ref.text.records import generation_prompt_ids, prepare_pairs
from vietnamese_ai_ref.trainers.dpo import DPOTrainer
from vietnamese_ai_ref.trainers.pipeline import RLHFPipeline
from vietnamese_ai_ref.trainers.reward import RewardModel
from vietnamese_ai_ref.trainers.settings import check_bool, check_float, check_int
from vietnamese_ai_ref.trainers.sft import SFTTrainer

SFT = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(3) for b in range(3)]
PREF = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(4)]


def tiny():
    return TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=1))


def weights(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


# -- settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.int64(3), np.int32(3), np.uint8(3), 3])
def test_numpy_integers_accepted_as_ints(value):
    tr = SFTTrainer(so_vong=value, kich_thuoc_batch=value, logging_steps=value)
    assert tr.so_vong == 3 and type(tr.so_vong) is int and type(tr.kich_thuoc_batch) is int


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.float16(0.25), 0.25])
def test_numpy_floats_accepted_as_floats(value):
    tr = DPOTrainer(toc_do_hoc=value, beta=value, label_smoothing=value)
    assert tr.beta == 0.25 and type(tr.beta) is float and type(tr.toc_do_hoc) is float


def test_numpy_bools_accepted_where_bools_are_and_refused_as_numbers():
    assert check_bool("bo_qua_batch_loi", np.bool_(True)) is True
    for bad in (np.bool_(True), True):
        with pytest.raises(SettingError, match="'so_vong'"):
            check_int("so_vong", bad)
        with pytest.raises(SettingError, match="'beta'"):
            check_float("beta", bad)


@pytest.mark.parametrize("kw,name", [({"so_vong": np.int64(0)}, "so_vong"), ({"toc_do_hoc": np.float32("nan")},
                                     "toc_do_hoc"), ({"warmup_ratio": 10 ** 400}, "warmup_ratio"),
                                     ({"kich_thuoc_batch": 2.0}, "kich_thuoc_batch")])
def test_bad_settings_are_setting_errors(kw, name):
    with pytest.raises(SettingError, match=f"'{name}'") as ei:
        SFTTrainer(**kw)
    assert isinstance(ei.value, DataError) and isinstance(ei.value, ValueError)


def test_reward_training_accepts_numpy_epochs():
    m = tiny()
    r = RewardModel(toc_do_hoc=np.float32(1e-3), kich_thuoc_batch=np.int64(2)).huan_luyen(m, PREF,
                                                                                          so_vong=np.int64(1))
    assert r["global_step"] == 2


# -- the pipeline checks everything first -------------------------------------------------------------------

@pytest.mark.parametrize("cfg,name", [({"so_vong": 0}, "so_vong"), ({"so_vong": "1"}, "so_vong"),
                                      ({"toc_do_hoc": -1.0}, "toc_do_hoc")])
def test_pipeline_reward_config_checked_at_construction(cfg, name):
    with pytest.raises(SettingError, match=f"'{name}'"):
        RLHFPipeline(reward_config=cfg)


def test_pipeline_checks_every_stage_before_sft_changes_a_weight():
    m = tiny()
    before = weights(m)
    bad = PREF + [{"prompt": "Hỏi", "chosen": "Như nhau.", "rejected": "Như nhau."}]
    with pytest.raises(DataError, match="record 4, key 'rejected'"):
        RLHFPipeline(sft_config={"so_vong": 1}).chay_day_du(m, None, m.copy(), SFT, bad)
    assert all(np.array_equal(before[k], v) for k, v in weights(m).items())


def test_pipeline_validates_with_each_stages_truncation():
    """SFT's max_seq_length=8 (not the model's 64) leaves a record no target token: refused before any
    stage runs."""
    m = tiny()
    before = weights(m)
    ids = list(range(60, 80))
    late_target = [{"input_ids": ids, "labels": [-100] * 10 + ids[10:]}]
    with pytest.raises(DataError, match="record 9: no target token"):
        RLHFPipeline(sft_config={"max_seq_length": 8}).chay_day_du(m, None, m.copy(), SFT + late_target, PREF)
    assert all(np.array_equal(before[k], v) for k, v in weights(m).items())


def test_pipeline_with_a_prompt_longer_than_the_model_runs_to_the_end():
    m = tiny()
    pref = PREF + [{"prompt": "Dài quá " * 20, "chosen": "Dạ.", "rejected": "Không."}]
    r = RLHFPipeline(sft_config={"so_vong": 1}).chay_day_du(m, None, m.copy(), SFT, pref)
    assert r["rlhf"]["global_step"] == 1 and np.isfinite(r["policy_reward_after"])


def test_generation_prompt_is_truncated_as_training_pairs_are():
    tok = tiny().tokenizer
    prompt = "Dài quá " * 20
    ids = generation_prompt_ids(prompt, tok, 64, 48)
    pair = prepare_pairs([{"prompt": prompt, "chosen": "x" * 60, "rejected": "y" * 60}], tok, 64,
                         require_prompt=True, allow_margin=False)[0]
    n_prompt = sum(1 for lab in pair["chosen_labels"] if lab == -100)
    assert len(ids) == 32 == n_prompt and ids == pair["chosen_ids"][:32]
    short = generation_prompt_ids("Hi", tok, 64, 16)  # 33 prompt tokens + 16 fit in 64: untouched
    assert short == [tok.bos_token_id] + tok.encode("### Câu hỏi:\nHi\n### Trả lời:\n")
    assert len(generation_prompt_ids("Hi", tok, 64, 48)) == 32  # 33 + 48 do not: the last 32 are kept


def test_chosen_equal_to_rejected_is_refused():
    tok = tiny().tokenizer
    recs = PREF[:1] + [{"chosen": "Cùng một câu.", "rejected": "Cùng một câu."}]
    with pytest.raises(DataError, match=r"record 1, key 'rejected'.*different from 'chosen'"):
        prepare_pairs(recs, tok, 64, require_prompt=False, allow_margin=True)


# -- files ------------------------------------------------------------------------------------------------

def test_jsonl_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"b": 2}\n')
    assert jsonl.read_jsonl(p) == [{"a": 1}, {"b": 2}]
    p.write_bytes(b'{"a": 1}\n\xef\xbb\xbf{"b": 2}\n')  # a BOM in the middle is still an error
    with pytest.raises(JsonlError, match=":2: "):
        jsonl.read_jsonl(p)


def test_jsonl_directory_pipe_device_and_unreadable_each_say_so(tmp_path, monkeypatch):
    with pytest.raises(JsonlError, match="is a directory, not a file"):
        jsonl.read_jsonl(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(JsonlError, match="is a pipe, not a regular file"):
            jsonl.read_jsonl(tmp_path / "pipe")
    if os.path.exists("/dev/null"):
        with pytest.raises(JsonlError, match="not a regular file"):
            jsonl.read_jsonl("/dev/null")
    with pytest.raises(JsonlError, match="file not found"):
        jsonl.read_jsonl(tmp_path / "none.jsonl")
    p = tmp_path / "locked.jsonl"
    p.write_text('{"a": 1}\n')

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(jsonl, "open", denied, raising=False)  # root ignores file modes: simulate them
    with pytest.raises(JsonlError, match="cannot read the file .*Permission denied"):
        jsonl.read_jsonl(p)
    monkeypatch.setattr(jsonl, "open", builtins.open, raising=False)
    assert jsonl.read_jsonl(p) == [{"a": 1}]


@pytest.mark.parametrize("which", ["reward_model", "ref_model"])
def test_pipeline_checks_the_other_models_before_sft(which):
    m = tiny()
    before = weights(m)
    models = {"ref_model": None, "reward_model": m.copy(), which: "not a model"}
    with pytest.raises(SettingError, match=f"'{which}' must be a TransformerLM"):
        RLHFPipeline(sft_config={"so_vong": 1}).chay_day_du(m, models["ref_model"], models["reward_model"], SFT, PREF)
    assert all(np.array_equal(before[k], v) for k, v in weights(m).items())


def test_every_test_the_catalogue_names_exists():
    """spec/errors.md names a test per row (E::, V::, S::, CE::, CR::, file.py::name): each one exists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = {"E": "test_errors.py", "V": "test_validation.py", "S": "test_errors_settings.py",
             "CE": "test_cli_errors.py", "CR": "test_cli_runs.py"}
    text = (root / "spec" / "errors.md").read_text(encoding="utf-8")
    named = re.findall(r"\b(E|V|S|CE|CR)::(\w+)", text)
    named += [(f, n) for f, n in re.findall(r"\b(test_\w+\.py)::(\w+)", text)]
    assert len(named) > 60
    missing = []
    for prefix, name in [(p, n) for p, n in named if n != "name"]:  # "E::name" in the header: the pattern
        src = (root / "tests" / files.get(prefix, prefix)).read_text(encoding="utf-8")
        if not re.search(rf"^def {name}\(", src, re.M):
            missing.append(f"{prefix}::{name}")
    assert not missing, missing


def test_numpy_settings_with_checkpoints(tmp_path):
    """numpy scalar settings are stored as Python numbers: a checkpointed run works and equals the run
    with Python ints (the run identity in trainer_state.json is JSON)."""
    tr = SFTTrainer(so_vong=np.int64(2), kich_thuoc_batch=np.int32(2), toc_do_hoc=np.float32(1e-3))
    a = tr.huan_luyen(tiny(), SFT, thu_muc_checkpoint=tmp_path / "ck")
    b = SFTTrainer(so_vong=2, kich_thuoc_batch=2, toc_do_hoc=float(np.float32(1e-3))).huan_luyen(tiny(), SFT)
    assert a["global_step"] == b["global_step"] > 0 and a["history"]["train_loss"] == b["history"]["train_loss"]
    assert type(tr.thong_ke()["cau_hinh"]["so_vong"]) is int
