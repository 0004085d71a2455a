"""The validation table of spec/api.md ("Validation"): one test per row. Every error is raised before
any compute (the model's weights are untouched) and names the record index, the key, what was
expected and what came."""

from __future__ import annotations

import numpy as np
import pytest

from vietnamese_ai_ref import DataError, DPOTrainer, RewardModel, RLHFPipeline, SFTTrainer
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM


@pytest.fixture
def model():
    return TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32))




def check(model, fn, exc, *fragments):
    before = {k: p.numpy().copy() for k, p in model.named_parameters().items()}
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    for f in fragments:
        assert f in msg, (f, msg)
    for k, p in model.named_parameters().items():
        assert np.array_equal(p.numpy(), before[k]), k
    return msg


GOOD = {"instruction": "Tính 1 + 1", "output": "2."}


def test_missing_key(model):
    data = [GOOD, {"instruction": "Tính 2 + 2"}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "bản ghi 1", "'output'", "record 1")


def test_missing_key_dpo(model):
    data = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]
    check(model, lambda: DPOTrainer().huan_luyen(model, None, data), DataError, "bản ghi 1", "'rejected'")


def test_wrong_type(model):
    data = [GOOD, GOOD, {"instruction": "x", "output": 5}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "bản ghi 2", "'output'", "int 5")


def test_wrong_type_ids(model):
    data = [{"input_ids": [1, 2, "3"]}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "bản ghi 0", "input_ids[2]", "str '3'")


def test_empty_text(model):
    data = [{"prompt": "a", "chosen": "   ", "rejected": "c"}]
    check(model, lambda: DPOTrainer().huan_luyen(model, None, data), DataError, "bản ghi 0", "'chosen'",
          "non-empty string")


def test_labels_length_mismatch(model):
    data = [{"input_ids": [1, 2, 3], "labels": [-100, 2]}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "bản ghi 0", "'labels'", "length 3")


def test_token_id_out_of_vocabulary(model):
    data = [GOOD, {"input_ids": [1, 2, 259]}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "bản ghi 1", "input_ids[2]", "[0, 259)")


def test_no_target_tokens(model):
    data = [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "bản ghi 0", "no target token")


def test_not_a_list(model):
    check(model, lambda: SFTTrainer().huan_luyen(model, GOOD), DataError, "du_lieu_train", "list")


def test_record_not_a_dict(model):
    check(model, lambda: SFTTrainer().huan_luyen(model, [GOOD, "text"]), DataError, "bản ghi 1", "dict")


def test_unknown_record_format(model):
    check(model, lambda: SFTTrainer().huan_luyen(model, [{"cau_hoi": "a"}]), DataError, "bản ghi 0", "cau_hoi")


def test_bad_validation_data_checked_before_training(model):
    check(model, lambda: SFTTrainer().huan_luyen(model, [GOOD], du_lieu_val=[{"output": ""}]), DataError,
          "bản ghi 0")


@pytest.mark.parametrize("value", [-0.1, 0.51, float("nan"), "0.1"])
def test_label_smoothing_outside_range(value):
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOTrainer(label_smoothing=value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf")])
def test_beta_not_positive(value):
    with pytest.raises(ValueError, match="beta"):
        DPOTrainer(beta=value)


@pytest.mark.parametrize("cls", [SFTTrainer, DPOTrainer])
@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_batch_size(cls, value):
    with pytest.raises(ValueError, match="kich_thuoc_batch"):
        cls(kich_thuoc_batch=value)


@pytest.mark.parametrize("cls", [SFTTrainer, DPOTrainer])
def test_epochs(cls):
    with pytest.raises(ValueError, match="so_vong"):
        cls(so_vong=0)


def test_epochs_reward_model(model):
    check(model, lambda: RewardModel().huan_luyen(model, [{"chosen": "a", "rejected": "b"}], so_vong=0),
          ValueError, "so_vong")


@pytest.mark.parametrize("cls", [SFTTrainer, DPOTrainer, RewardModel])
@pytest.mark.parametrize("value", [0.0, -1e-5])
def test_learning_rate(cls, value):
    with pytest.raises(ValueError, match="toc_do_hoc"):
        cls(toc_do_hoc=value)


@pytest.mark.parametrize("which", ["sft_config", "dpo_config", "reward_config"])
def test_unknown_pipeline_config_key(which):
    with pytest.raises(ValueError, match="so_vongg"):
        RLHFPipeline(**{which: {"so_vongg": 3}})


def test_pipeline_config_bad_value():
    with pytest.raises(ValueError, match="beta"):
        RLHFPipeline(dpo_config={"beta": -1})


def test_reward_margin_not_a_number(model):
    data = [{"chosen": "a", "rejected": "b", "margin": "1"}]
    check(model, lambda: RewardModel().huan_luyen(model, data), DataError, "bản ghi 0", "'margin'")


def test_messages_bad_role(model):
    data = [{"messages": [{"role": "robot", "content": "x"}]}]
    check(model, lambda: SFTTrainer().huan_luyen(model, data), DataError, "messages[0].role")


def test_pipeline_full_run_validates_everything_first(model):
    pipe = RLHFPipeline()
    rm = TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32))
    bad_pref = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "", "rejected": "c"}]
    check(model, lambda: pipe.chay_day_du(model, None, rm, [GOOD], bad_pref), DataError, "bản ghi 1", "'chosen'")
    assert pipe.thong_ke()["sft_done"] is False


def test_callback_not_callable(model):
    check(model, lambda: SFTTrainer().huan_luyen(model, [GOOD], callback=3), ValueError, "callback")


def test_model_wrong_type():
    with pytest.raises(ValueError, match="TransformerLM"):
        SFTTrainer().huan_luyen("gpt2", [GOOD])
