"""Memory of one training step on SmolLM2-135M: full fine-tuning, LoRA, and LoRA + activation recompute.

What it is for: the table of docs/mo-hinh-hf.md. Each mode runs in a fresh process: a LlamaLM with
SmolLM2-135M-Instruct's configuration (random weights: the values do not change the memory; no GGUF
needed), float32, then two SFT optimiser steps, each on a batch of 4 sequences of 256 tokens (every token
a target). Two, because the first step's gradient buffer and AdamW moments are zero pages the kernel
has not yet backed with memory: from the second step on they are resident, as in any real run.
Reported per mode:

  state B/param   bytes of weights + gradients + AdamW moments, counted from the arrays, per model
                  parameter (full fine-tuning: 4 + 4 + 4 + 4 = 16; LoRA: 4 for the frozen base plus 16 per
                  adapter parameter, ≈ 4.3)
  RSS model       resident memory once the model is built (the process's peak is reset there)
  peak RSS steps  the process's peak resident memory during the two steps (Linux VmHWM after a reset through
                  /proc/self/clear_refs, so the model's construction does not count)
  s/step          wall time per step (informational: the machine is shared)

    python benchmarks/lora_memory.py              # the three modes, a Markdown table
    python benchmarks/lora_memory.py --mode lora  # one mode, one JSON line (what the table runs)

What it is not: a timed test; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("full", "lora", "lora+recompute")
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    rope_theta=100000.0, tie_word_embeddings=True)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def one(mode: str, seq: int, batch: int) -> dict:
    """Build the model, reset the peak, take two SFT steps; the figures of one mode."""
    import numpy as np

    from vietnamese_ai_ref import LlamaConfig, LlamaLM, SFTTrainer, them_lora
    from vietnamese_ai_ref.core import optim

    model = LlamaLM(LlamaConfig(**SMOLLM2_135M))
    if mode != "full":
        them_lora(model, r=8, lora_alpha=16, target_modules=PROJECTIONS)
    if mode == "lora+recompute":
        model.gradient_checkpointing_enable()
    rng = np.random.default_rng(0)
    records = [{"input_ids": rng.integers(3, SMOLLM2_135M["vocab_size"], seq).tolist()} for _ in range(2 * batch)]
    seen = {}
    original = optim.AdamW.step

    def spy(self, lr):  # the optimiser's buffers, counted when they all exist
        seen["state_bytes"] = sum(g.data.nbytes + g.grad.nbytes + g.m.nbytes + g.v.nbytes for g in self.groups)
        return original(self, lr)

    optim.AdamW.step = spy
    rss_model = _status_mb("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    SFTTrainer(so_vong=1, kich_thuoc_batch=batch, gradient_accumulation=1, max_seq_length=seq,
               warmup_ratio=0.0).huan_luyen(model, records)
    seconds = time.perf_counter() - t
    frozen = sum(p.data.nbytes for p in model.parameters() if not p.requires_grad)
    n = model.num_parameters()
    return {"mode": mode, "parameters": n, "trainable": model.num_trainable_parameters(),
            "state_bytes_per_param": (seen["state_bytes"] + frozen) / n, "rss_model_mb": rss_model,
            "peak_rss_step_mb": _status_mb("VmHWM"), "step_seconds": seconds / 2}


def table(rows: list, seq: int, batch: int) -> str:
    out = [f"SmolLM2-135M (float32), seq {seq}, batch {batch}, two SFT steps",
           "",
           "| mode | trainable params | state B/param | RSS model (MB) | peak RSS steps (MB) | s/step |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['mode']} | {r['trainable']:,} | {r['state_bytes_per_param']:.2f} | "
                   f"{r['rss_model_mb']:.0f} | {r['peak_rss_step_mb']:.0f} | {r['step_seconds']:.1f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=MODES, default=None, help="run one mode in this process (JSON line)")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args(argv)
    if a.mode is not None:
        print(json.dumps(one(a.mode, a.seq, a.batch)))
        return
    rows = []
    for mode in MODES:  # a fresh process each: peaks do not carry over
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--seq", str(a.seq), "--batch", str(a.batch)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    print(table(rows, a.seq, a.batch))


if __name__ == "__main__":
    main()
