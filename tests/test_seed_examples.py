"""Every example of the seeds (../shared/seeds/000_*.txt), pasted with only the import changed and
tiny models/data substituted for the placeholders (`model`, `val_data`, `[...]`, `"..."`)."""

from __future__ import annotations

import pytest

from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM


def make_model(seed=0):
    return TransformerLM(GPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=96, seed=seed))


@pytest.fixture
def model():
    return make_model(0)


@pytest.fixture
def ref_model():
    return make_model(1)


@pytest.fixture
def reward_model():
    return make_model(2)


def test_seed_sft_example(model, capsys):
    val_data = [{"input_ids": [9, 10, 11, 12], "labels": [-100, 10, 11, 12]}]
    # --- pasted from the seed ---
    from vietnamese_ai_ref import SFTTrainer
    trainer = SFTTrainer(
        so_vong=3,
        kich_thuoc_batch=4,
        toc_do_hoc=2e-5,
        gradient_accumulation=4,
    )
    # Dữ liệu dạng list of dicts
    du_lieu = [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]},
        {"input_ids": [6, 7, 8], "labels": [-100, 7, 8]},
    ]
    ket_qua = trainer.huan_luyen(model, du_lieu, du_lieu_val=val_data)
    print(f"Train loss: {ket_qua['train_loss_min']:.4f}")
    print(f"Eval loss: {ket_qua['eval_loss_min']:.4f}")
    # --- end ---
    out = capsys.readouterr().out
    assert out.startswith("Train loss: ") and "Eval loss: " in out
    assert ket_qua["global_step"] == 3  # 2 records, batch 4 -> 1 micro-batch -> 1 step per epoch


def test_seed_dpo_example(model, ref_model, capsys):
    # --- pasted from the seed ---
    from vietnamese_ai_ref import DPOTrainer
    trainer = DPOTrainer(
        so_vong=1,
        beta=0.1,
        toc_do_hoc=5e-7,
        label_smoothing=0.0,
    )
    # Dữ liệu preference
    preference_data = [
        {
            "prompt": "Giải thích AI là gì?",
            "chosen": "AI là trí tuệ nhân tạo, giúp máy tính học và ra quyết định.",
            "rejected": "AI là robot biết suy nghĩ như con người.",
        },
        {
            "prompt": "Viết code Python in Hello World",
            "chosen": "print('Hello World')",
            "rejected": "Bạn cần cài Python trước, sau đó mở terminal...",
        },
    ]
    ket_qua = trainer.huan_luyen(model, ref_model, preference_data)
    print(f"Loss: {ket_qua['train_loss_min']:.4f}")
    print(f"Reward margin: {ket_qua['final_reward_margin']:.4f}")
    # --- end ---
    out = capsys.readouterr().out
    assert "Loss: " in out and "Reward margin: " in out


def test_seed_reward_model_example(model, capsys):
    # --- pasted from the seed ---
    from vietnamese_ai_ref import RewardModel
    rm = RewardModel(toc_do_hoc=1e-5)
    # Train từ preference pairs
    preference_data = [
        {"chosen": "Trả lời chính xác và đầy đủ", "rejected": "Trả lời sai"},
        {"chosen": "Giải thích rõ ràng", "rejected": "Mơ hồ không rõ"},
    ]
    ket_qua = rm.huan_luyen(model, preference_data, so_vong=3)
    print(f"Accuracy: {ket_qua['final_accuracy']:.4f}")
    # Đánh giá scores
    scores = rm.diem_danh_gia(model, ["văn bản 1", "văn bản 2"])
    for s in scores:
        print(f"{s['van_ban']}: score={s['score']:.4f}")
    # --- end ---
    out = capsys.readouterr().out
    assert "Accuracy: " in out and "văn bản 1: score=" in out and "văn bản 2: score=" in out


SFT_DATA = [{"input_ids": [257, 5, 6, 7, 8], "labels": [-100, -100, 6, 7, 8]}]
PREF_NO_PROMPT = [{"chosen": "Dạ, đúng ạ.", "rejected": "Sai."}]
DPO_DATA = [{"prompt": "Câu hỏi?", "chosen": "Dạ, đúng ạ.", "rejected": "Sai."}]


def test_seed_pipeline_stepwise(model, ref_model, reward_model):
    sft_data, preference_data, dpo_data = SFT_DATA, PREF_NO_PROMPT, DPO_DATA
    # --- pasted from the seed (Cách 1) ---
    from vietnamese_ai_ref import RLHFPipeline
    pipeline = RLHFPipeline()
    # Bước 1: SFT
    pipeline.sft(model, sft_data)
    # Bước 2: Train Reward Model
    pipeline.train_reward_model(reward_model, preference_data)
    # Bước 3: DPO
    pipeline.rlhf(model, ref_model, dpo_data)
    # --- end ---
    st = pipeline.thong_ke()
    assert st["sft_done"] and st["reward_done"] and st["rlhf_done"]


def test_seed_pipeline_full_and_custom_config(model, ref_model, reward_model, capsys):
    sft_data, preference_data = SFT_DATA, DPO_DATA
    from vietnamese_ai_ref import RLHFPipeline
    # --- pasted from the seed (Cách 2) ---
    pipeline = RLHFPipeline()
    ket_qua = pipeline.chay_day_du(
        model=model,
        ref_model=ref_model,
        reward_model=reward_model,
        sft_data=sft_data,
        preference_data=preference_data,
    )
    # Xem kết quả
    print(pipeline.thong_ke())
    # Custom config
    pipeline = RLHFPipeline(
        sft_config={"so_vong": 3, "toc_do_hoc": 2e-5},
        dpo_config={"beta": 0.2, "so_vong": 1},
        reward_config={"toc_do_hoc": 1e-5},
    )
    # --- end ---
    assert "sft_done" in capsys.readouterr().out
    assert "policy_reward_delta" in ket_qua
    assert pipeline.dpo_trainer.beta == 0.2 and pipeline.sft_trainer.so_vong == 3
