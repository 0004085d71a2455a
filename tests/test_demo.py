"""The shortened demo (`run_demo(quick=True)`): every held-out figure of SFT → RM → DPO moves the right
way, the GRPO stage reports its figures, and the run directory holds what the demo promises. The full
demo's thresholds (GRPO's accuracy rise included) are checked by CI (.ci/run): the quick run's tiny model
cannot do arithmetic, so its GRPO figures are checked for range and consistency, not direction."""

from __future__ import annotations

import json

from vietnamese_ai_ref.app.demo import load_demo_data, run_demo


def test_bundled_data_loads():
    d = load_demo_data()
    assert len(d["sft_train"]) >= 300 and len(d["pref_heldout"]) >= 50


def test_quick_demo_figures_move_the_right_way(tmp_path):
    s = run_demo(out=tmp_path / "run", quiet=True, quick=True)
    assert s["rm_heldout_accuracy"] > 0.6          # better than chance on unseen pairs
    assert s["dpo_heldout_accuracy"] > 0.6
    assert s["dpo_heldout_margin"] > 0
    assert s["policy_reward_after_dpo"] > s["policy_reward_before"]  # the RM likes the DPO policy better
    assert len(s["examples"]) == 3 and all(isinstance(e["after"], str) for e in s["examples"])
    # GRPO (stage3 "both" by default): 54 held-out arithmetic prompts (34 distinct in pref_heldout, 20 in sft_val)
    assert s["stage3"] == "both" and s["grpo_n_heldout"] == 54 and s["grpo_n_train_prompts"] == 24
    assert s["grpo_steps"] == 24 // (32 // 8)  # 24 prompts, 4 per step (32 completions, 8 per prompt)
    for k in ("grpo_accuracy_before", "grpo_accuracy_after"):
        assert 0.0 <= s[k] <= 1.0 and (s[k] * 54) == round(s[k] * 54)  # a fraction of the 54 prompts
    assert s["grpo_rm_score_after"] > s["grpo_rm_score_before"] - 2.0  # small steps: the RM score holds
    assert s["grpo_kl_last"] >= 0.0 and s["grpo_reward_first"] is not None
    assert [e["prompt"] for e in s["grpo_examples"]] == ["Tính 6 - 2.", "5 trừ 3 là mấy?", "4 trừ 2 là mấy?"]
    run = tmp_path / "run"
    for f in ("config.json", "metrics.jsonl", "summary.json", "policy/model.safetensors",
              "reward_model/model.safetensors"):
        assert (run / f).exists(), f
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in entries} == {"sft", "reward", "dpo", "grpo"}
    grpo = [e for e in entries if e["stage"] == "grpo"]
    assert len(grpo) == s["grpo_steps"] and all("rewards/dung_phep_tinh/mean" in e and "kl" in e for e in grpo)
    assert json.loads((run / "summary.json").read_text())["grpo_accuracy_after"] == s["grpo_accuracy_after"]


def test_quick_demo_grpo_alone(tmp_path):
    """--stage3 grpo: no DPO figures, GRPO from the SFT model."""
    s = run_demo(out=tmp_path / "run", quiet=True, quick=True, stage3="grpo")
    assert "dpo_heldout_accuracy" not in s and "policy_reward_after_dpo" not in s
    assert s["stage3"] == "grpo" and s["grpo_steps"] == 6
    stages = {json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"sft", "reward", "grpo"}
