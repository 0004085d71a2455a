"""Subprocess worker of tests/test_resume_kill.py (not a test module): one tiny training run that may
kill itself with SIGKILL at a chosen point, and resumes from the newest checkpoint when there is one.

    python tests/_resume_worker.py KIND OUT [--ckpt DIR] [--kill-after-step N] [--kill-phase PHASE:STEP]
                                            [--announce] [--slow SECONDS]

KIND: sft | dpo | reward | grpo. OUT: where the finished run writes weights.npz and result.json.
--kill-after-step N: SIGKILL right after AdamW's N-th update, before the loop records the step.
--kill-phase PHASE:STEP: SIGKILL inside the checkpoint write of STEP at PHASE (model, optimizer,
state, renamed, pruned; see checkpointing._write_hook).
--announce: print "step N" (flushed) after each update, for a parent that kills at random times;
--slow: sleep that long after each update.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from vietnamese_ai_ref import DPOTrainer, GRPOTrainer, RewardModel, SFTTrainer
from vietnamese_ai_ref.core import optim
from vietnamese_ai_ref.io import checkpoints as checkpointing
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

SFT_DATA = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(4) for b in range(4)]
PREF = [{"prompt": f"Tính {a} + {b}", "chosen": f"Dạ, {a + b} ạ.", "rejected": "Không biết."}
        for a in range(4) for b in range(3)]
PROMPTS = [f"Tính {a} + {b}" for a in range(4) for b in range(3)]


def letters(prompts, completions, **kw):
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


RM_DATA = [{"chosen": p["chosen"], "rejected": p["rejected"], "margin": 0.5 * (i % 3)} for i, p in enumerate(PREF)]


def tiny():
    # dropout on, so the dropout RNG state is part of what a resume must restore
    return TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=3, embd_pdrop=0.1,
                                   attn_pdrop=0.1, resid_pdrop=0.1))


def kill():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["sft", "dpo", "reward", "grpo"])
    p.add_argument("out")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--kill-after-step", type=int, default=None)
    p.add_argument("--kill-phase", default=None)
    p.add_argument("--announce", action="store_true")
    p.add_argument("--slow", type=float, default=0.0)
    a = p.parse_args(argv)

    original_step = optim.AdamW.step

    def step(self, lr):
        original_step(self, lr)
        if a.kill_after_step is not None and self.step_count == a.kill_after_step:
            kill()
        if a.announce:
            print(f"step {self.step_count}", flush=True)
        if a.slow:
            time.sleep(a.slow)

    optim.AdamW.step = step
    if a.kill_phase:
        phase, at = a.kill_phase.split(":")

        def hook(ph, st):
            if ph == phase and st == int(at):
                kill()

        checkpointing._write_hook = hook

    ck = {}
    if a.ckpt:
        ck = dict(thu_muc_checkpoint=a.ckpt, tiep_tuc_tu=checkpointing.tim_checkpoint(a.ckpt), giu_lai=2)
    model = tiny()
    if a.kind == "sft":
        tr = SFTTrainer(so_vong=3, kich_thuoc_batch=2, gradient_accumulation=2, toc_do_hoc=1e-3, logging_steps=3,
                        seed=5)
        r = tr.huan_luyen(model, SFT_DATA, du_lieu_val=SFT_DATA[:3], luu_moi=2 if ck else None, **ck)
    elif a.kind == "dpo":
        tr = DPOTrainer(so_vong=2, kich_thuoc_batch=2, toc_do_hoc=1e-3, gradient_accumulation=1, logging_steps=1,
                        warmup_ratio=0.1)
        r = tr.huan_luyen(model, None, PREF, luu_moi=4 if ck else None, **ck)
    elif a.kind == "grpo":  # sampling RNG, the reference (a copy of the initial model) and dropout
        tr = GRPOTrainer(so_vong=2, kich_thuoc_batch=4, num_generations=2, toc_do_hoc=1e-2, beta=0.05,
                         max_completion_length=6, logging_steps=2, seed=7, warmup_ratio=0.1)
        r = tr.huan_luyen(model, PROMPTS, ham_thuong=letters, luu_moi=3 if ck else None, **ck)
    else:
        tr = RewardModel(toc_do_hoc=1e-3, kich_thuoc_batch=3, logging_steps=2, warmup_ratio=0.2)
        r = tr.huan_luyen(model, RM_DATA, so_vong=2, luu_moi=3 if ck else None, **ck)
    os.makedirs(a.out, exist_ok=True)
    np.savez(os.path.join(a.out, "weights.npz"), **model.state_dict())
    r = {k: v for k, v in r.items() if k != "tong_thoi_gian"}
    st = {k: v for k, v in tr.thong_ke().items() if k != "tong_thoi_gian"}
    with open(os.path.join(a.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump({"result": r, "lich_su": tr.lay_lich_su(), "thong_ke": st}, f)
    print("done", flush=True)


if __name__ == "__main__":
    main()
