"""The demo's GRPO stage: a verifiable arithmetic reward plus the trained reward model, with proof.

What it is for: `vietnamese-ai-ref demo` (demo.py) runs, after DPO or instead of it (`--stage3`), a short
`GRPOTrainer` stage on the arithmetic prompts of the training splits ("Tính 6 - 2.", "5 trừ 3 là mấy?").
Each sampled answer is rewarded by `dung_phep_tinh` (1 when the last number of the answer is the
prompt's result, else 0; None for a prompt that is not arithmetic) and by the reward model of stage 2
(politeness and form), weighted. Here too: the parser of the prompts (`phep_tinh`), the held-out
arithmetic accuracy of greedy answers (`arithmetic_accuracy`) and the figures the demo reports before
and after GRPO (accuracy, the reward model's mean score of the policy's answers).
What it is not: GRPO itself (trainers/grpo.py), a maths benchmark, or a parser of general expressions:
one binary operation between two integers, as the bundled data writes them.
"""

from __future__ import annotations

import operator
import re

from ..trainers.grpo import GRPOTrainer
from .rundir import Progress, total_steps

__all__ = ["phep_tinh", "so_cuoi", "dung_phep_tinh", "arithmetic_prompts", "arithmetic_accuracy", "run_grpo_stage"]

#: operator words and signs → function (integer division only when exact)
_OPS = {"+": operator.add, "cộng": operator.add, "-": operator.sub, "−": operator.sub, "–": operator.sub,
        "trừ": operator.sub, "nhân": operator.mul, "×": operator.mul, "x": operator.mul, "*": operator.mul,
        "chia": "div", ":": "div", "/": "div"}
_EXPR = re.compile(r"(?<![\d.,])(\d+)\s*(\+|−|–|-|cộng|trừ|nhân|×|x|\*|chia|:|/)\s*(\d+)(?![\d.,]\d)",
                   re.IGNORECASE)
_NUMBER = re.compile(r"(?<!\d)-?\d+")


def phep_tinh(prompt: str):
    """The integer result of the first "a op b" of `prompt` (op: + cộng, - trừ, × x * nhân, : / chia),
    or None when it has none (or a division that is not exact, or by zero)."""
    m = _EXPR.search(prompt)
    if m is None:
        return None
    a, op, b = int(m.group(1)), _OPS[m.group(2).lower()], int(m.group(3))
    if op == "div":
        return a // b if b != 0 and a % b == 0 else None
    return op(a, b)


def so_cuoi(text: str):
    """The last integer written in `text` (a leading minus counts when no digit precedes it), or None."""
    found = _NUMBER.findall(text)
    return int(found[-1]) if found else None


def dung_phep_tinh(prompts, completions, **cot):
    """Reward function (GRPOTrainer's ham_thuong): 1.0 when the completion's last number is the prompt's
    arithmetic result, 0.0 when it is not (or there is no number), None for a non-arithmetic prompt."""
    out = []
    for p, c in zip(prompts, completions):
        want = phep_tinh(p)
        out.append(None if want is None else float(so_cuoi(c) == want))
    return out


def prompt_text(record: dict) -> str:
    """The user prompt of a preference record ("prompt") or an instruction record (instruction + input,
    as format_instruction joins them)."""
    if "prompt" in record:
        return record["prompt"]
    inp = record.get("input") or ""
    return f"{record['instruction']}\n{inp}" if inp.strip() else record["instruction"]


def arithmetic_prompts(*splits) -> list:
    """The distinct arithmetic prompts of the given record lists, in first-seen order."""
    return list(dict.fromkeys(p for recs in splits for p in map(prompt_text, recs) if phep_tinh(p) is not None))


def arithmetic_accuracy(policy_answers, model, prompts, max_new_tokens):
    """(fraction of `prompts` whose greedy answer ends with the right number, the answers)."""
    answers = policy_answers(model, prompts, max_new_tokens)
    right = dung_phep_tinh(prompts, answers)
    return sum(right) / len(right), answers


def run_grpo_stage(ctx, model, rm, rm_net, S) -> tuple:
    """Figures before, GRPO (its reference: a frozen copy of the policy as the stage starts, i.e. after
    DPO when DPO ran), figures after. `ctx`: the demo's {"data", "entries", "quiet", "seed",
    "policy_answers", "desc"}; S: the demo's settings (S["grpo"] the trainer's, S["grpo_weights"] the
    weights [arithmetic, reward model], S["grpo_prompts"] how many training prompts). Returns (the
    trainer's result, summary figures)."""
    data, answers_of = ctx["data"], ctx["policy_answers"]
    train = arithmetic_prompts(data["pref_train"], data["sft_train"])[:S["grpo_prompts"]]
    held = arithmetic_prompts(data["pref_heldout"], data["sft_val"])
    leak = set(train) & set(held)
    assert not leak, f"held-out arithmetic prompts seen in training: {sorted(leak)[:3]}"
    n_new = S["max_new_tokens"]
    acc0, ans0 = arithmetic_accuracy(answers_of, model, held, n_new)
    rm0 = rm.cham_diem_cap(rm_net, held, ans0)

    cfg = dict(S["grpo"], seed=ctx["seed"])
    grpo = GRPOTrainer(**cfg)
    per_step = grpo.kich_thuoc_batch // grpo.num_generations
    bar = Progress(total_steps(len(train), per_step, grpo.gradient_accumulation, grpo.so_vong), ctx["desc"],
                   ctx["quiet"], "grpo")
    try:
        result = grpo.huan_luyen(model, train, ham_thuong=[dung_phep_tinh], reward_model=rm_net,
                                 trong_so_thuong=list(S["grpo_weights"]), ref_model=model.copy(), callback=bar)
    finally:
        bar.close()
    ctx["entries"] += bar.entries

    acc1, ans1 = arithmetic_accuracy(answers_of, model, held, n_new)
    rm1 = rm.cham_diem_cap(rm_net, held, ans1)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    h = result["history"]
    figures = {
        "grpo_accuracy_before": acc0,
        "grpo_accuracy_after": acc1,
        "grpo_rm_score_before": mean(rm0),
        "grpo_rm_score_after": mean(rm1),
        "grpo_reward_first": h["reward"][0] if h["reward"] else None,
        "grpo_reward_last": h["reward"][-1] if h["reward"] else None,
        "grpo_kl_last": h["kl"][-1] if h.get("kl") else None,
        "grpo_steps": result["global_step"],
        "grpo_n_train_prompts": len(train),
        "grpo_n_heldout": len(held),
        "grpo_examples": [{"prompt": p, "before": a, "after": b} for p, a, b in list(zip(held, ans0, ans1))[:3]],
    }
    return result, figures
