"""The shortened demo (`run_demo(quick=True)`): every held-out figure moves the right way, and the run
directory holds what the demo promises. The full demo's thresholds are checked by CI (.ci/run)."""

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
    assert s["policy_reward_after"] > s["policy_reward_before"]  # the RM likes the aligned policy better
    assert len(s["examples"]) == 3 and all(isinstance(e["after"], str) for e in s["examples"])
    for f in ("config.json", "metrics.jsonl", "summary.json", "policy/model.safetensors",
              "reward_model/model.safetensors"):
        assert (tmp_path / "run" / f).exists(), f
    stages = {json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"sft", "reward", "dpo"}
