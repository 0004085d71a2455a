"""`vietnamese-ai-ref demo`: SFT → reward model → DPO → GRPO on the bundled Vietnamese data, with proof.

What it is for: the README's main command. It trains a tiny transformer from scratch on 2 CPU cores
in a few minutes and reports, on the *held-out* preference split: the reward model's accuracy, DPO's
implicit-reward accuracy and margin, the reward model's mean score of the policy's own answers before
and after DPO, then (stage 3 `both`, the default, or `grpo` alone; app/demo_rl.py) GRPO with a verifiable
arithmetic reward plus the reward model and the held-out arithmetic accuracy before and after it, and
three prompts answered before and after alignment. It writes a run directory
(config, metrics.jsonl, policy/, reward_model/, curves.png, summary.json last) as a transaction: the
output path is checked before training, the files go into `<out>.partial` and it is renamed at the end
(rundir.RunDir), so a failed or interrupted demo never leaves a folder that looks finished.
What it is not: a benchmark, or a recipe for real models (see docs/huan-luyen.md).
"""

from __future__ import annotations

import copy
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
from .demo_model import check_model_path, demo_model, limit_data, merge_adapters, user_settings
from .demo_rl import run_grpo_stage
from .plots import write_curves, write_rl_curves
from .rundir import CliError, Progress, RunDir, total_steps

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
# stage 3b: GRPO on the arithmetic prompts (demo_rl.py), reward = weights · [dung_phep_tinh, reward model].
# The reward model's weight is small: its scores span ~±8 and, weighted more, it wins over correctness
# (longer, politer, wrong answers: reward hacking); lr 5e-4 collapses the answers, 1e-4 barely moves them.
SETTINGS["full"].update(
    grpo=dict(so_vong=2, kich_thuoc_batch=64, num_generations=8, toc_do_hoc=3e-4, beta=0.02, temperature=1.0,
              max_completion_length=24, logging_steps=1),
    grpo_weights=(1.0, 0.05), grpo_prompts=264)
SETTINGS["quick"].update(
    grpo=dict(so_vong=1, kich_thuoc_batch=32, num_generations=8, toc_do_hoc=1e-4, beta=0.02, temperature=1.0,
              max_completion_length=16, logging_steps=1),
    grpo_weights=(1.0, 0.05), grpo_prompts=24)

DATA_FILES = ("sft_train", "sft_val", "pref_train", "pref_heldout")


def demo_settings(quick: bool, user_model: bool, lora=None) -> dict:
    """SETTINGS of the mode; for a user's model (--model), with demo_model.USER_MODEL's changes."""
    mode = "quick" if quick else "full"
    return user_settings(SETTINGS[mode], mode, lora) if user_model else copy.deepcopy(SETTINGS[mode])


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


STAGE3 = ("both", "dpo", "grpo")


def run_demo(out=None, quiet=False, quick=False, seed=42, overwrite=False, stage3="both", model_path=None,
             lora=None) -> dict:
    """The demo; returns summary.json's dict. stage3: "both" (DPO then GRPO), "dpo" or "grpo" (alone).
    model_path: a user's model (folder or .gguf, demo_model.py) instead of the tiny one from scratch;
    lora: a LoRA rank for it (the adapters are merged before the policy is saved)."""
    t0 = time.perf_counter()
    if stage3 not in STAGE3:
        raise CliError(f"--stage3: cần một trong {list(STAGE3)}, nhận được {stage3!r} / expected one of "
                       f"{list(STAGE3)}, got {stage3!r}")
    check_model_path(model_path, lora)  # before the run folder and before any compute
    rd = RunDir.plan(out, "demo", overwrite=overwrite)
    S = demo_settings(quick, model_path is not None, lora)
    data = limit_data(load_demo_data(), S.get("limit"))
    say = (lambda *a: None) if quiet else print
    ctx = {"data": data, "entries": [], "quiet": quiet, "seed": seed, "policy_answers": policy_answers}
    model = demo_model(model_path, lora, S, seed)
    say(f"Mô hình / model: {model.num_parameters():,} tham số / parameters, "
        f"{model_path or S['model']}" + (f", LoRA r={lora}" if lora else ""))
    n = "3" if stage3 != "both" else "4"
    r_sft, rm, rm_net = _sft_and_reward(ctx, model, S, seed, n)
    summary, results = _aligned(ctx, model, rm, rm_net, S, stage3, n)
    summary = {"sft_train_loss_min": r_sft["train_loss_min"], "sft_eval_loss_min": r_sft["eval_loss_min"],
               "rm_train_accuracy": results[0]["final_accuracy"], **summary, "stage3": stage3,
               "model": model_path, "lora": lora, "n_heldout_pairs": len(data["pref_heldout"]),
               "seconds": time.perf_counter() - t0, "quick": quick}
    results = (r_sft, *results)
    config = {"command": "demo", "seed": seed, "stage3": stage3, "model_path": model_path, "lora": lora, **S}
    plots = _write_run(rd, config, ctx["entries"], summary, model, rm_net, results)
    if not quiet:
        print_summary(summary, rd.final, plots)
    return summary


def _sft_and_reward(ctx, model, S, seed, n):
    """Stages 1 and 2: SFT on the policy, then a reward model initialised from it (as in InstructGPT).
    Returns (the SFT result, the RewardModel trainer, the reward network); the reward result is kept
    in ctx["r_rm"]."""
    data, entries, quiet = ctx["data"], ctx["entries"], ctx["quiet"]
    sft = SFTTrainer(seed=seed, **S["sft"])
    r_sft = _stage(entries, quiet, f"1/{n} SFT", "sft", len(data["sft_train"]), sft, sft.so_vong,
                   lambda b: sft.huan_luyen(model, data["sft_train"], du_lieu_val=data["sft_val"], callback=b))
    rm_net = model.copy()
    rm = RewardModel(seed=seed, **S["reward"])
    ctx["r_rm"] = _stage(entries, quiet, f"2/{n} Reward", "reward", len(data["pref_train"]), rm, S["reward_epochs"],
                         lambda b: rm.huan_luyen(rm_net, data["pref_train"], so_vong=S["reward_epochs"], callback=b))
    return r_sft, rm, rm_net


def _aligned(ctx, model, rm, rm_net, S, stage3, n):
    """Stage 3 (DPO against a frozen copy of the SFT model and/or GRPO, demo_rl.py) and the held-out figures.
    Returns (summary figures, (reward result, DPO result or None, GRPO result or None))."""
    data, entries, quiet, seed = ctx["data"], ctx["entries"], ctx["quiet"], ctx["seed"]
    heldout = data["pref_heldout"]
    held_prompts = list(dict.fromkeys(r["prompt"] for r in heldout))
    out = {"rm_heldout_accuracy": reward_accuracy_on(rm, rm_net, heldout)}
    answers_before = policy_answers(model, held_prompts, S["max_new_tokens"])
    score_before = rm.cham_diem_cap(rm_net, held_prompts, answers_before)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    r_dpo = r_grpo = None
    if stage3 in ("both", "dpo"):
        ref = model.copy()
        dpo = DPOTrainer(seed=seed, **S["dpo"])
        r_dpo = _stage(entries, quiet, f"3/{n} DPO", "dpo", len(data["pref_train"]), dpo, dpo.so_vong,
                       lambda b: dpo.huan_luyen(model, ref, data["pref_train"], callback=b))
        dpo_held = heldout_dpo_metrics(model, ref, heldout, dpo.beta)
        out.update(dpo_heldout_accuracy=dpo_held["accuracy"], dpo_heldout_margin=dpo_held["margin"])
        out["policy_reward_after_dpo"] = mean(rm.cham_diem_cap(  # the RM's view of the policy after DPO
            rm_net, held_prompts, policy_answers(model, held_prompts, S["max_new_tokens"])))
    if stage3 in ("both", "grpo"):
        ctx["desc"] = f"{n}/{n} GRPO"
        r_grpo, figures = run_grpo_stage(ctx, model, rm, rm_net, S)
        out.update(figures)
    answers_after = policy_answers(model, held_prompts, S["max_new_tokens"])
    score_after = rm.cham_diem_cap(rm_net, held_prompts, answers_after)
    out.update(policy_reward_before=mean(score_before), policy_reward_after=mean(score_after),
               policy_reward_delta=mean(score_after) - mean(score_before))
    out["examples"] = [{"prompt": p, "before": a, "after": b}
                       for p, a, b in list(zip(held_prompts, answers_before, answers_after))[:3]]
    return out, (ctx["r_rm"], r_dpo, r_grpo)


def _write_run(rd, config, entries, summary, policy, rm_net, results):
    """The run folder, all at once at the end (summary.json last, then the rename); LoRA adapters are
    merged first. Returns which figures were drawn {"curves.png": bool, "grpo_curves.png": bool}."""
    drawn = {}
    merge_adapters(policy, rm_net)

    def write(folder):
        write_jsonl(os.path.join(folder, "metrics.jsonl"), entries)
        policy.save(os.path.join(folder, "policy"))
        rm_net.save(os.path.join(folder, "reward_model"))
        drawn["curves.png"] = write_curves(os.path.join(folder, "curves.png"), *results[:3])
        if results[3] is not None:
            drawn["grpo_curves.png"] = write_rl_curves(os.path.join(folder, "grpo_curves.png"), results[3])

    rd.begin(config)
    try:
        rd.commit(write, summary)
    except BaseException:
        rd.abandon()
        raise
    return drawn


def summary_rows(s) -> list:
    """(name, value, target) rows of the printed table, for the stages that ran."""
    rows = [("Reward model: độ chính xác (held-out) / accuracy", f"{s['rm_heldout_accuracy']:.3f}", "≥ 0.85")]
    if "dpo_heldout_accuracy" in s:
        rows += [("DPO: độ chính xác reward ngầm (held-out) / implicit-reward accuracy",
                  f"{s['dpo_heldout_accuracy']:.3f}", "≥ 0.80"),
                 ("DPO: biên reward (held-out) / reward margin", f"{s['dpo_heldout_margin']:+.3f}", "> 0")]
    if "grpo_accuracy_before" in s:
        rows += [("GRPO: phép tính đúng (held-out, greedy), trước / arithmetic accuracy, before",
                  f"{s['grpo_accuracy_before']:.3f}", ""),
                 ("… sau GRPO / after", f"{s['grpo_accuracy_after']:.3f}", "> before"),
                 ("GRPO: RM chấm câu trả lời phép tính, trước / RM score of arithmetic answers, before",
                  f"{s['grpo_rm_score_before']:+.3f}", ""),
                 ("… sau GRPO / after", f"{s['grpo_rm_score_after']:+.3f}", "no collapse")]
    rows += [("RM chấm câu trả lời của policy, sau SFT / RM score of policy answers, after SFT",
              f"{s['policy_reward_before']:+.3f}", ""),
             (f"… sau giai đoạn 3 / after stage 3 ({s['stage3']})", f"{s['policy_reward_after']:+.3f}", "> before")]
    return rows


def print_summary(s, run_dir, plots):
    rows = summary_rows(s)
    w = max(len(r[0]) for r in rows)
    print()
    print("=" * (w + 24))
    print(f"{'Kết quả trên tập giữ lại / held-out results':<{w}}  {'giá trị':>9}  {'mục tiêu':>9}")
    print("-" * (w + 24))
    for name, val, target in rows:
        print(f"{name:<{w}}  {val:>9}  {target:>9}")
    print("=" * (w + 24))
    groups = [("Câu trả lời mẫu: sau SFT → sau giai đoạn 3 / sample answers: after SFT → after stage 3",
               s["examples"]),
              ("Phép tính: trước → sau GRPO / arithmetic: before → after GRPO", s.get("grpo_examples", []))]
    for title, examples in groups:
        if examples:
            print(f"\n{title}")
        for e in examples:
            print(f"\nCâu hỏi / prompt: {e['prompt']!r}")
            print(f"  trước / before: {e['before']!r}")
            print(f"  sau / after:    {e['after']!r}")
    print(f"\nThời gian / time: {s['seconds']:.0f} s")
    print(f"Thư mục kết quả / run directory: {run_dir}")
    drawn = [k for k, ok in plots.items() if ok]
    print("  summary.json, metrics.jsonl, config.json, policy/, reward_model/"
          + (", " + ", ".join(drawn) if drawn else " (cài matplotlib để có hình / install matplotlib for the plots)"))
