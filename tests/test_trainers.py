"""The trainers over the shared loop: accumulation invariance, log 2 at the first DPO step,
determinism, learning on tiny data, callbacks, return keys and thong_ke() keys."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vietnamese_ai_ref import DPOTrainer, RewardModel, RLHFPipeline, SFTTrainer
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM


def tiny(seed=0, **kw):
    cfg = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=seed)
    cfg.update(kw)
    return TransformerLM(GPTConfig(**cfg))


SFT_DATA = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(4) for b in range(4)]
PREF = [
    {"prompt": f"Tính {a} + {b}", "chosen": f"Dạ, {a + b} ạ.", "rejected": "Không biết."}
    for a in range(4) for b in range(3)
]


def weights(model):
    return {k: p.numpy().copy() for k, p in model.named_parameters().items()}


# ---------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,b", [(2, 3), (3, 2), (6, 1)])
def test_sft_accumulation_invariance_through_trainer(k, b):
    """gradient_accumulation=k, kich_thuoc_batch=b ≡ 1, k·b: same weights after one step (float64)."""
    data = [
        {"instruction": "Tính 1 + 2", "output": "3."},
        {"instruction": "Thủ đô của Pháp là gì?", "output": "Paris, một thành phố lớn."},
        {"prompt": "Màu của lá", "completion": "Xanh."},
        {"input_ids": [257, 5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 7, 8, 9, 10]},
        {"messages": [{"role": "user", "content": "Chào"}, {"role": "assistant", "content": "Xin chào bạn!"}]},
        {"instruction": "Đếm", "input": "1 2", "output": "3 4 5 6 7 8 9 10."},
    ]
    with use_backend(dtype="float64"):
        common = dict(so_vong=1, toc_do_hoc=1e-2, warmup_ratio=0.0, gradient_clip=1.0, weight_decay=0.01)
        m1, m2 = tiny(), tiny()
        SFTTrainer(kich_thuoc_batch=b, gradient_accumulation=k, **common).huan_luyen(m1, data)
        r2 = SFTTrainer(kich_thuoc_batch=k * b, gradient_accumulation=1, **common).huan_luyen(m2, data)
        assert r2["global_step"] == 1
        w1, w2 = weights(m1), weights(m2)
        moved = max(np.abs(w2[n] - weights(tiny())[n]).max() for n in w2)
        assert moved > 1e-4  # the step really changed the weights
        for n in w1:
            np.testing.assert_allclose(w1[n], w2[n], rtol=1e-12, atol=1e-12, err_msg=n)


def test_sft_lowers_loss_and_reports_keys():
    m = tiny()
    r = SFTTrainer(so_vong=4, kich_thuoc_batch=4, toc_do_hoc=3e-3, gradient_accumulation=1, logging_steps=2) \
        .huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:4])
    assert set(r) == {"tong_thoi_gian", "so_epoch", "global_step", "train_loss_min", "eval_loss_min", "history"}
    assert set(r["history"]) == {"train_loss", "eval_loss", "learning_rate", "grad_norm"}
    h = r["history"]
    assert r["global_step"] == 16 and r["so_epoch"] == 4
    assert len(h["train_loss"]) == 8 and len(h["eval_loss"]) == 4
    assert h["train_loss"][-1] < h["train_loss"][0] - 0.5
    assert h["eval_loss"][-1] < h["eval_loss"][0]
    assert r["train_loss_min"] == min(h["train_loss"])
    assert r["eval_loss_min"] == min(h["eval_loss"])
    # linear warmup: W = ceil(16 * 0.1) = 2; step 0 runs at lr 0, step 1 at lr/2 (logged: lr of the last step)
    assert h["learning_rate"][0] == pytest.approx(3e-3 * 1 / 2)
    assert h["learning_rate"][-1] == pytest.approx(3e-3 * (16 - 15) / (16 - 2))
    # the loop let go of the optimiser's gradient buffer: the trained model keeps no gradient memory
    assert all(p.grad_home is None and p.grad is None for p in m.parameters())


def test_sft_without_validation_gives_none():
    r = SFTTrainer(so_vong=1, kich_thuoc_batch=8).huan_luyen(tiny(), SFT_DATA)
    assert r["eval_loss_min"] is None and r["history"]["eval_loss"] == []


def test_partial_log_window_and_logging_steps():
    # 16 records, batch 4, accum 1 -> 4 steps/epoch, 3 epochs = 12 steps; logging every 5 -> 5, 10, final 12
    tr = SFTTrainer(so_vong=3, kich_thuoc_batch=4, gradient_accumulation=1, logging_steps=5)
    tr.huan_luyen(tiny(), SFT_DATA)
    h = tr.lay_lich_su()
    assert h["step"] == [5, 10, 12]


def test_determinism_bit_identical():
    def run():
        m = tiny()
        r = SFTTrainer(so_vong=2, kich_thuoc_batch=3, toc_do_hoc=1e-3, gradient_accumulation=2,
                       logging_steps=1, seed=7).huan_luyen(m, SFT_DATA)
        return r["history"], weights(m)

    (h1, w1), (h2, w2) = run(), run()
    assert h1 == h2
    for n in w1:
        assert np.array_equal(w1[n], w2[n]), n


def test_seed_changes_order():
    def run(seed):
        tr = SFTTrainer(so_vong=1, kich_thuoc_batch=2, gradient_accumulation=1, logging_steps=1, seed=seed)
        tr.huan_luyen(tiny(), SFT_DATA)
        return tr.lay_lich_su()["train_loss"]

    assert run(1) != run(2)


def test_callback_false_stops_cleanly():
    seen = []

    def cb(info):
        seen.append(info["step"])
        return info["step"] < 3

    tr = SFTTrainer(so_vong=5, kich_thuoc_batch=2, gradient_accumulation=1, logging_steps=1)
    r = tr.huan_luyen(tiny(), SFT_DATA, callback=cb)
    assert seen == [1, 2, 3] and r["global_step"] == 3
    assert tr.thong_ke()["dung_som"] is True


def test_thong_ke_keys_exact():
    tr = SFTTrainer()
    keys = {"cau_hinh", "da_huan_luyen", "so_epoch", "global_step", "tong_so_buoc", "so_buoc_warmup",
            "tong_thoi_gian", "dung_som", "so_buoc_bo_qua", "chi_so_cuoi"}
    assert set(tr.thong_ke()) == keys
    assert tr.thong_ke()["so_buoc_bo_qua"] == 0
    assert tr.thong_ke()["da_huan_luyen"] is False and tr.lay_lich_su() == {}
    assert tr.thong_ke()["cau_hinh"] == dict(so_vong=3, kich_thuoc_batch=4, toc_do_hoc=2e-5, gradient_accumulation=4,
                                             gradient_clip=1.0, warmup_ratio=0.1, weight_decay=0.01,
                                             max_seq_length=512, logging_steps=10, seed=42)
    for t in (DPOTrainer(), RewardModel()):
        assert set(t.thong_ke()) == keys


# ---------------------------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------------------------

def test_dpo_first_step_loss_is_log2_and_margin_rises():
    with use_backend(dtype="float64"):
        m = tiny()
        r = DPOTrainer(so_vong=3, kich_thuoc_batch=2, toc_do_hoc=2e-3, gradient_accumulation=1,
                       logging_steps=1).huan_luyen(m, None, PREF)
    assert set(r) == {"tong_thoi_gian", "so_epoch", "global_step", "train_loss_min", "final_reward_margin", "history"}
    h = r["history"]
    assert set(h) == {"train_loss", "chosen_rewards", "rejected_rewards", "reward_margin", "reward_accuracy"}
    assert h["train_loss"][0] == pytest.approx(math.log(2), abs=1e-12)
    assert h["chosen_rewards"][0] == pytest.approx(0.0, abs=1e-12)
    assert h["rejected_rewards"][0] == pytest.approx(0.0, abs=1e-12)
    assert h["reward_margin"][-1] > 1.0 > h["reward_margin"][0]
    assert h["reward_accuracy"][-1] == 1.0
    assert r["final_reward_margin"] == h["reward_margin"][-1]
    assert h["train_loss"][-1] < 0.3


def test_dpo_reference_is_frozen():
    m, ref = tiny(), tiny()
    before = weights(ref)
    DPOTrainer(so_vong=1, toc_do_hoc=1e-3, gradient_accumulation=1).huan_luyen(m, ref, PREF)
    after = weights(ref)
    for n in before:
        assert np.array_equal(before[n], after[n])


def test_dpo_same_object_is_error():
    m = tiny()
    with pytest.raises(ValueError, match="ref_model"):
        DPOTrainer().huan_luyen(m, m, PREF)


def test_dpo_label_smoothing_half_has_zero_gradient_at_start():
    """ε = 0.5 makes the loss even in h, so at h = 0 (policy = reference) the gradient vanishes."""
    with use_backend(dtype="float64"):
        m = tiny()
        w0 = weights(m)
        r = DPOTrainer(so_vong=1, kich_thuoc_batch=12, toc_do_hoc=1e-2, label_smoothing=0.5,
                       gradient_accumulation=1, logging_steps=1).huan_luyen(m, None, PREF)
    assert r["history"]["train_loss"][0] == pytest.approx(math.log(2), abs=1e-12)
    assert r["global_step"] == 1
    for n, w in weights(m).items():
        np.testing.assert_allclose(w, w0[n], atol=1e-9, err_msg=n)


# ---------------------------------------------------------------------------------------------
# Reward model
# ---------------------------------------------------------------------------------------------

def test_reward_model_trains_and_scores():
    m = tiny()
    rm = RewardModel(toc_do_hoc=2e-3)
    r = rm.huan_luyen(m, [{"chosen": p["chosen"], "rejected": p["rejected"]} for p in PREF], so_vong=3)
    assert set(r) == {"tong_thoi_gian", "so_epoch", "global_step", "train_loss_min", "final_accuracy", "history"}
    assert r["final_accuracy"] == 1.0
    assert m.has_score_head
    texts = ["Dạ, 5 ạ.", "Không biết.", "Dạ, 3 ạ."]
    s = rm.diem_danh_gia(m, texts)
    assert [d["van_ban"] for d in s] == texts
    assert set(s[0]) == {"van_ban", "score", "score_normalized"}
    z = np.array([d["score_normalized"] for d in s])
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    assert s[1]["score"] < s[0]["score"] and s[1]["score"] < s[2]["score"]
    one = rm.diem_danh_gia(m, ["Dạ, 5 ạ."])
    assert one[0]["score_normalized"] == 0.0 and one[0]["score"] == pytest.approx(s[0]["score"], rel=1e-5)


def test_reward_model_margin_key_changes_loss():
    pairs = [{"chosen": "Dạ, vâng ạ.", "rejected": "Không."}]
    with use_backend(dtype="float64"):
        r0 = RewardModel(toc_do_hoc=1e-3, logging_steps=1).huan_luyen(tiny(), pairs)
        r1 = RewardModel(toc_do_hoc=1e-3, logging_steps=1).huan_luyen(tiny(), [dict(pairs[0], margin=2.0)])
    # same model and scores at step 1; -log σ(d - 2) > -log σ(d)
    assert r1["history"]["train_loss"][0] > r0["history"]["train_loss"][0]


def test_diem_danh_gia_without_head_is_error():
    with pytest.raises(ValueError, match="score head"):
        RewardModel().diem_danh_gia(tiny(), ["a"])


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------

def test_pipeline_full_run_reports_policy_reward():
    pipe = RLHFPipeline(
        sft_config={"so_vong": 2, "toc_do_hoc": 3e-3, "kich_thuoc_batch": 4, "gradient_accumulation": 1},
        dpo_config={"beta": 0.2, "so_vong": 1, "toc_do_hoc": 1e-3, "gradient_accumulation": 1},
        reward_config={"toc_do_hoc": 2e-3, "so_vong": 2},
    )
    pipe.so_token_sinh = 8
    model, reward_model = tiny(), tiny(seed=1)
    r = pipe.chay_day_du(model=model, ref_model=None, reward_model=reward_model, sft_data=SFT_DATA,
                         preference_data=PREF)
    assert {"sft", "reward", "rlhf", "policy_reward_before", "policy_reward_after", "policy_reward_delta"} <= set(r)
    assert r["policy_reward_delta"] == pytest.approx(r["policy_reward_after"] - r["policy_reward_before"])
    st = pipe.thong_ke()
    assert set(st) == {"phuong_phap", "sft_done", "reward_done", "rlhf_done", "sft_trainer", "dpo_trainer",
                       "reward_model", "rl_trainer"}
    assert st["phuong_phap"] == "dpo" and st["rl_trainer"] is None and r["phuong_phap"] == "dpo"
    assert st["sft_done"] and st["reward_done"] and st["rlhf_done"]
    assert st["dpo_trainer"]["cau_hinh"]["beta"] == 0.2
    assert set(pipe.lay_ket_qua()) >= {"sft", "reward", "rlhf"}


def test_pipeline_stepwise():
    pipe = RLHFPipeline(sft_config={"so_vong": 1}, dpo_config={"so_vong": 1})
    m = tiny()
    assert pipe.thong_ke()["sft_done"] is False
    pipe.sft(m, SFT_DATA)
    pipe.train_reward_model(tiny(seed=3), [{"chosen": "a b", "rejected": "c"}], so_vong=1)
    pipe.rlhf(m, None, PREF)
    st = pipe.thong_ke()
    assert (st["sft_done"], st["reward_done"], st["rlhf_done"]) == (True, True, True)
