"""The online-RL subcommands of the command-line tool: `grpo`, `rloo`, `online-dpo`.

What it is for: train a policy folder (`--model`) on a JSONL file of prompt records (`--data`, records
with a non-empty "prompt") with GRPOTrainer, RLOOTrainer or OnlineDPOTrainer, rewarded by a reward-model
folder (`--reward-model`, trained by `vietnamese-ai-ref reward`), with an optional frozen reference
(`--ref`; default a copy of `--model`). Everything is checked before the first step — the run folder, the
files, the settings (the trainer's own checks), the reward model's score head, every prompt record — and
the run is the same `RunDir` transaction as `sft` / `dpo` (commands.py helpers): `--out`, `--overwrite`,
`--resume`, `--checkpoint-every`, `--keep`, `--skip-nonfinite`, the same exit codes and messages.
What it is not: the parser (cli.py) or the trainers (trainers/grpo.py, rloo.py, online_dpo.py).
"""

from __future__ import annotations


from .commands import (check_records, checkpoint_kwargs, load_model, load_records, run_training, start, with_bar,
                       with_skipped)
from .rundir import CliError, history_entries, total_steps

#: the command's name -> the trainer kind (trainers.pipeline.ONLINE_TRAINERS key, checkpoint kind)
COMMANDS = {"grpo": "grpo", "rloo": "rloo", "online-dpo": "online_dpo"}

#: the options every online command passes to its trainer (argparse dest = the trainer's parameter)
COMMON_SETTINGS = ("so_vong", "kich_thuoc_batch", "toc_do_hoc", "beta", "gradient_accumulation", "logging_steps",
                   "seed", "max_seq_length", "max_completion_length", "temperature", "top_k", "top_p")
#: and the options of one trainer only
OWN_SETTINGS = {"grpo": ("num_generations", "epsilon", "loss_type", "scale_rewards"),
                "rloo": ("num_generations", "epsilon"),
                "online_dpo": ("missing_eos_penalty",)}


def online_config(a, kind) -> dict:
    """The trainer's keyword arguments from the parsed options."""
    return {k: getattr(a, k) for k in COMMON_SETTINGS + OWN_SETTINGS[kind]}


def load_reward_model(path):
    """The reward-model folder: it must exist and carry a score head (trained by `reward`)."""
    model = load_model(path, option="--reward-model")
    if not getattr(model, "has_score_head", False):
        raise CliError(f"--reward-model {path}: mô hình không có đầu reward (score head) / the model has no score "
                       f"head: train it with `vietnamese-ai-ref reward` first")
    return model


def cmd_online(a):
    """grpo | rloo | online-dpo --model DIR --reward-model DIR --data PROMPTS.jsonl [--ref DIR] ..."""
    from ..trainers.online import prepare_prompts
    from ..trainers.pipeline import ONLINE_TRAINERS
    from ..trainers.sft import effective_max_len

    kind = COMMANDS[a.command]
    rd = start(a, a.command)
    data = load_records(a.data, "--data")
    model = load_model(a.model)
    reward_model = load_reward_model(a.reward_model)
    ref = load_model(a.ref, option="--ref") if a.ref else None
    cfg = online_config(a, kind)
    trainer = ONLINE_TRAINERS[kind](**cfg)
    if ref is not None and ref.config.vocab_size != model.config.vocab_size:
        raise CliError(f"--ref: vocab_size {ref.config.vocab_size} khác --model ({model.config.vocab_size}) "
                       f"/ vocab sizes differ")
    n = effective_max_len(trainer.max_seq_length, model)
    if n - trainer.max_completion_length < 2:
        raise CliError(f"--max-completion-length {trainer.max_completion_length}: phải để lại ít nhất 2 token cho "
                       f"prompt trong min(--max-seq-length, n_positions) = {n} / must leave at least 2 prompt "
                       f"tokens within min(--max-seq-length, n_positions) = {n}")
    check_records(lambda recs: prepare_prompts(recs, model.tokenizer, n - trainer.max_completion_length,
                                                  name="record"),
                  data, "--data", a.data)
    per_batch = a.kich_thuoc_batch // getattr(a, "num_generations", 1)  # prompts per micro-batch (spec/api.md)
    total = total_steps(len(data), per_batch, a.gradient_accumulation, a.so_vong)
    ck = checkpoint_kwargs(a, rd)

    def train():
        r = with_bar(total, kind.upper(), a.quiet, kind,
                     lambda bar: trainer.huan_luyen(model, data, reward_model=reward_model, ref_model=ref,
                                                    callback=bar, **ck))
        return with_skipped(r, trainer), history_entries(trainer.lay_lich_su(), kind)

    run_training(a, rd, {"command": a.command, "data": a.data, "reward_model": a.reward_model, "ref": a.ref,
                         kind: cfg}, train, {"model": model}, a.quiet)
