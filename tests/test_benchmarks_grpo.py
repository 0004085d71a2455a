"""benchmarks/grpo_step.py runs: its tiny config, one round, in a few seconds, and writes sound JSON.

What it is for: keeping the GRPO benchmark (docs/benchmarks.md) runnable as the trainers change.
What it is not: a speed test — no timing is asserted, only that both sides ran and produced the
tokens and completion lengths the benchmark promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch


def test_grpo_benchmark_smoke(tmp_path):
    pytest.importorskip("torch")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_step.py"
    out = tmp_path / "grpo.json"
    proc = subprocess.run([sys.executable, str(script), "--config", "tiny", "--rounds", "1", "--steps", "1",
                           "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["threads"] == 1 and got["cpu"]
    rows = {r["part"]: r for r in got["results"]}
    assert sorted(rows) == ["grpo β=0", "grpo β=0.04", "rollout"]
    assert rows["rollout"]["tokens"] == 2 * 2 * 8  # prompts × G × max_completion_length, no EOS
    for r in rows.values():
        assert r["ours"]["median_s"] > 0 and r["torch"]["median_s"] > 0 and r["ratio"] > 0
    for part in ("grpo β=0", "grpo β=0.04"):
        for side in ("ours", "torch"):
            assert 1 <= rows[part][side]["mean_completion_length"] <= 8
    assert "| rollout |" in proc.stdout and "cpu: " in proc.stdout
