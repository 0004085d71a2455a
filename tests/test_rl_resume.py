"""GRPO killed (SIGKILL) mid-run and resumed ends bit-identical to an uninterrupted run: the sampling
RNG (spec/rl.md §9.3: rows seeded by [seed, rollout index, row], the index recomputed from the step),
the reference model (a copy of the initial model, checked by fingerprint), dropout and AdamW included.
The worker is tests/_resume_worker.py (kind "grpo"); helpers from tests/test_resume_kill.py."""

from __future__ import annotations

import pytest

from test_resume_kill import KILLED, assert_same_run, run, steps
from vietnamese_ai_ref import GRPOTrainer
from vietnamese_ai_ref.core.errors import CheckpointError
from vietnamese_ai_ref.io.checkpoints import tim_checkpoint
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM


def test_grpo_killed_and_resumed_is_bit_identical(tmp_path):
    ckpt, ref, out = tmp_path / "ck", tmp_path / "ref", tmp_path / "out"
    assert run("grpo", ref) == 0  # uninterrupted, no checkpointing
    # mid-step: after AdamW's 5th update, before the loop records it (checkpoint 3 exists)
    assert run("grpo", out, "--ckpt", str(ckpt), "--kill-after-step", "5") == KILLED
    assert steps(ckpt) == [3]
    # inside the write of checkpoint 9, after the model and optimizer files
    assert run("grpo", out, "--ckpt", str(ckpt), "--kill-phase", "optimizer:9") == KILLED
    assert steps(ckpt) == [3, 6]
    assert run("grpo", out, "--ckpt", str(ckpt)) == 0
    r = assert_same_run(ref, out)
    assert r["result"]["global_step"] == 12 and r["lich_su"]["step"] == [2, 4, 6, 8, 10, 12]
    assert len(set(r["lich_su"]["reward"])) > 1 and all(k > 0 for k in r["lich_su"]["kl"][1:])


def letters(prompts, completions, **kw):
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


def test_resume_with_another_reference_is_refused(tmp_path):
    def model(seed):
        return TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=seed))

    def trainer():
        return GRPOTrainer(kich_thuoc_batch=4, num_generations=2, beta=0.1, max_completion_length=4, logging_steps=1)

    prompts = ["a", "b", "c", "d"]
    trainer().huan_luyen(model(1), prompts, ham_thuong=letters, thu_muc_checkpoint=tmp_path, luu_moi=1,
                         callback=lambda e: e["step"] < 1)
    found = tim_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="tham chiếu|reference"):
        trainer().huan_luyen(model(1), prompts, ham_thuong=letters, ref_model=model(2), thu_muc_checkpoint=tmp_path,
                             tiep_tuc_tu=found)
    r = trainer().huan_luyen(model(1), prompts, ham_thuong=letters, thu_muc_checkpoint=tmp_path, tiep_tuc_tu=found)
    assert r["global_step"] == 1  # the same (copied) reference is accepted; the stopped run stays done
