"""`vietnamese-ai-ref demo`: SFT → reward model → DPO on the bundled Vietnamese data, with proof.

What it is for: the README's main command. It trains a tiny transformer from scratch on 2 CPU cores
in a few minutes and reports, on the *held-out* preference split: the reward model's accuracy, DPO's
implicit-reward accuracy and margin, the reward model's mean score of the policy's own answers before
and after DPO, and three prompts answered before and after alignment. It writes a run directory
(config, metrics.jsonl, policy/, reward_model/, curves.png, summary.json last) as a transaction: the
output path is checked before training, the files go into `<out>.partial` and it is renamed at the end
(rundir.RunDir), so a failed or interrupted demo never leaves a folder that looks finished.
What it is not: a benchmark, or a recipe for real models (see docs/huan-luyen.md).
"""

from __future__ import annotations

import os
import time
from importlib import resources

from .. import losses
from ..core.autograd import no_grad
from ..trainers.dpo import DPOTrainer, pair_logps
from ..text.jsonl import read_jsonl, write_jsonl
from ..models.gpt2 import GPTConfig, TransformerLM
from ..text.records import format_prompt, prepare_pairs
from ..trainers.reward import RewardModel
from ..trainers.sft import SFTTrainer
from .plots import write_curves
from .rundir import Progress, RunDir, total_steps

#: The demo's settings. `quick` is the shortened run the tests use (direction of each figure only).
SETTINGS = {
    "full": {
        "model": dict(n_layer=2, n_embd=128, n_head=4, n_positions=128),
        "sft": dict(so_vong=30, kich_thuoc_batch=16, toc_do_hoc=3e-3, gradient_accumulation=1, warmup_ratio=0.05,
                    weight_decay=0.01, logging_steps=10),
        "reward": dict(toc_do_hoc=1e-3, kich_thuoc_batch=16, logging_steps=5, warmup_ratio=0.05),
        "reward_epochs": 4,
        "dpo": dict(so_vong=2, kich_thuoc_batch=16, toc_do_hoc=1e-4, beta=0.1, gradient_accumulation=1,
                    logging_steps=5),
        "max_new_tokens": 40,
    },
    "quick": {
        "model": dict(n_layer=1, n_embd=48, n_head=2, n_positions=128),
        "sft": dict(so_vong=2, kich_thuoc_batch=16, toc_do_hoc=3e-3, gradient_accumulation=1, warmup_ratio=0.05,
                    logging_steps=5),
        "reward": dict(toc_do_hoc=1e-3, kich_thuoc_batch=16, logging_steps=5),
        "reward_epochs": 1,
        "dpo": dict(so_vong=1, kich_thuoc_batch=16, toc_do_hoc=1e-3, beta=0.1, gradient_accumulation=1,
                    logging_steps=5),
        "max_new_tokens": 24,
    },
}

DATA_FILES = ("sft_train", "sft_val", "pref_train", "pref_heldout")


def load_demo_data() -> dict:
    """The bundled JSONL splits, by name."""
    root = resources.files("vietnamese_ai_ref.data")
    out = {}
    for name in DATA_FILES:
        with resources.as_file(root / f"{name}.jsonl") as p:
            out[name] = read_jsonl(p)
    return out


def heldout_dpo_metrics(policy, ref, pairs_records, beta, batch_size=16) -> dict:
    """Implicit-reward accuracy (strict) and mean margin of `policy` against `ref` on held-out pairs."""
    tok = policy.tokenizer
    pairs = prepare_pairs(pairs_records, tok, policy.config.n_positions, require_prompt=True, allow_margin=False)
    chosen, rejected = [], []
    with no_grad():
        policy.eval()
        ref.eval()
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            pc, pr = pair_logps(policy, chunk, tok.pad_token_id)
            rc, rr = pair_logps(ref, chunk, tok.pad_token_id)
            _, cr, rj = losses.dpo_loss(pc, pr, rc, rr, beta=beta)
            chosen += cr.numpy().tolist()
            rejected += rj.numpy().tolist()
    m = losses.dpo_metrics(chosen, rejected)
    return {"accuracy": m["reward_accuracy"], "margin": m["reward_margin"]}


def reward_accuracy_on(rm: RewardModel, rm_net, records) -> float:
    prompts = [r.get("prompt") for r in records]
    c = rm.cham_diem_cap(rm_net, prompts, [r["chosen"] for r in records])
    r = rm.cham_diem_cap(rm_net, prompts, [r["rejected"] for r in records])
    return float(losses.reward_accuracy(c, r))


def policy_answers(model, prompts, max_new_tokens):
    return model.sinh_van_ban([format_prompt(p) for p in prompts], max_new_tokens=max_new_tokens)


def _stage(entries, quiet, desc, stage, n, trainer, epochs, train):
    """Run one training stage under its progress bar; its log entries join `entries`."""
    accum = getattr(trainer, "gradient_accumulation", 1)
    bar = Progress(total_steps(n, trainer.kich_thuoc_batch, accum, epochs), desc, quiet, stage)
    try:
        result = train(bar)
    finally:
        bar.close()
    entries += bar.entries
    return result


def run_demo(out=None, quiet=False, quick=False, seed=42, overwrite=False) -> dict:
    t0 = time.perf_counter()
    S = SETTINGS["quick" if quick else "full"]
    rd = RunDir.plan(out, "demo", overwrite=overwrite)  # before any compute
    data = load_demo_data()
    say = (lambda *a: None) if quiet else print
    heldout = data["pref_heldout"]
    held_prompts = list(dict.fromkeys(r["prompt"] for r in heldout))
    show = held_prompts[:3]
    entries = []

    model = TransformerLM(GPTConfig(seed=seed, **S["model"]))
    say(f"Mô hình / model: {model.num_parameters():,} tham số / parameters, {S['model']}")

    # 1. SFT
    sft = SFTTrainer(seed=seed, **S["sft"])
    r_sft = _stage(entries, quiet, "1/3 SFT", "sft", len(data["sft_train"]), sft, sft.so_vong,
                   lambda b: sft.huan_luyen(model, data["sft_train"], du_lieu_val=data["sft_val"], callback=b))

    # 2. Reward model, initialised from the SFT model (as in InstructGPT)
    rm_net = model.copy()
    rm = RewardModel(seed=seed, **S["reward"])
    r_rm = _stage(entries, quiet, "2/3 Reward", "reward", len(data["pref_train"]), rm, S["reward_epochs"],
                  lambda b: rm.huan_luyen(rm_net, data["pref_train"], so_vong=S["reward_epochs"], callback=b))
    rm_heldout_acc = reward_accuracy_on(rm, rm_net, heldout)

    # the policy's answers and their reward before DPO
    answers_before = policy_answers(model, held_prompts, S["max_new_tokens"])
    score_before = rm.cham_diem_cap(rm_net, held_prompts, answers_before)

    # 3. DPO against a frozen copy of the SFT model
    ref = model.copy()
    dpo = DPOTrainer(seed=seed, **S["dpo"])
    r_dpo = _stage(entries, quiet, "3/3 DPO", "dpo", len(data["pref_train"]), dpo, dpo.so_vong,
                   lambda b: dpo.huan_luyen(model, ref, data["pref_train"], callback=b))
    dpo_held = heldout_dpo_metrics(model, ref, heldout, dpo.beta)
    answers_after = policy_answers(model, held_prompts, S["max_new_tokens"])
    score_after = rm.cham_diem_cap(rm_net, held_prompts, answers_after)

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    summary = {
        "sft_train_loss_min": r_sft["train_loss_min"],
        "sft_eval_loss_min": r_sft["eval_loss_min"],
        "rm_train_accuracy": r_rm["final_accuracy"],
        "rm_heldout_accuracy": rm_heldout_acc,
        "dpo_heldout_accuracy": dpo_held["accuracy"],
        "dpo_heldout_margin": dpo_held["margin"],
        "policy_reward_before": mean(score_before),
        "policy_reward_after": mean(score_after),
        "policy_reward_delta": mean(score_after) - mean(score_before),
        "examples": [
            {"prompt": p, "before": answers_before[held_prompts.index(p)], "after": answers_after[held_prompts.index(p)]}
            for p in show
        ],
        "n_heldout_pairs": len(heldout),
        "seconds": time.perf_counter() - t0,
        "quick": quick,
    }
    plot = _write_run(rd, {"command": "demo", "seed": seed, **{k: v for k, v in S.items()}}, entries, summary,
                      model, rm_net, (r_sft, r_rm, r_dpo))
    if not quiet:
        print_summary(summary, rd.final, plot)
    return summary


def _write_run(rd, config, entries, summary, policy, rm_net, results):
    """The run folder, all at once at the end (summary.json last, then the rename). Returns whether
    curves.png was drawn."""
    drawn = []

    def write(folder):
        write_jsonl(os.path.join(folder, "metrics.jsonl"), entries)
        policy.save(os.path.join(folder, "policy"))
        rm_net.save(os.path.join(folder, "reward_model"))
        drawn.append(write_curves(os.path.join(folder, "curves.png"), *results))

    rd.begin(config)
    try:
        rd.commit(write, summary)
    except BaseException:
        rd.abandon()
        raise
    return drawn[0]


def print_summary(s, run_dir, plot):
    rows = [
        ("Reward model: độ chính xác (held-out) / accuracy", f"{s['rm_heldout_accuracy']:.3f}", "≥ 0.85"),
        ("DPO: độ chính xác reward ngầm (held-out) / implicit-reward accuracy", f"{s['dpo_heldout_accuracy']:.3f}",
         "≥ 0.80"),
        ("DPO: biên reward (held-out) / reward margin", f"{s['dpo_heldout_margin']:+.3f}", "> 0"),
        ("RM chấm câu trả lời của policy, trước DPO / RM score of policy answers, before",
         f"{s['policy_reward_before']:+.3f}", ""),
        ("… sau DPO / after", f"{s['policy_reward_after']:+.3f}", "> before"),
    ]
    w = max(len(r[0]) for r in rows)
    print()
    print("=" * (w + 24))
    print(f"{'Kết quả trên tập giữ lại / held-out results':<{w}}  {'giá trị':>9}  {'mục tiêu':>9}")
    print("-" * (w + 24))
    for name, val, target in rows:
        print(f"{name:<{w}}  {val:>9}  {target:>9}")
    print("=" * (w + 24))
    for e in s["examples"]:
        print(f"\nCâu hỏi / prompt: {e['prompt']}")
        print(f"  trước / before: {e['before']!r}")
        print(f"  sau / after:    {e['after']!r}")
    print(f"\nThời gian / time: {s['seconds']:.0f} s")
    print(f"Thư mục kết quả / run directory: {run_dir}")
    print("  summary.json, metrics.jsonl, config.json, policy/, reward_model/"
          + (", curves.png" if plot else " (cài matplotlib để có curves.png / install matplotlib for curves.png)"))
