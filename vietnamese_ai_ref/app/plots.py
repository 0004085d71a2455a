"""Training curves of the demo as PNGs (matplotlib, the `plots` extra).

What it is for: one figure of SFT loss, reward-model loss/accuracy and DPO loss/rewards (curves.png),
and one of the GRPO stage's reward (total and per source), KL and completion length per logged step
(grpo_curves.png), written atomically next to the run's metrics.
What it is not: required: without matplotlib nothing is drawn and the caller is told so.
"""

from __future__ import annotations

import os


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_curves(path, r_sft, r_rm, r_dpo=None):
    """Loss, margin and accuracy curves (the DPO panels empty without a DPO result); skipped (returns
    False) when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    h = r_sft["history"]
    ax[0, 0].plot(h["train_loss"], label="train")
    if h["eval_loss"]:
        n = len(h["train_loss"])
        xs = [round((i + 1) * n / len(h["eval_loss"])) - 1 for i in range(len(h["eval_loss"]))]
        ax[0, 0].plot(xs, h["eval_loss"], "o-", label="eval (mỗi epoch)")
    ax[0, 0].set_title("SFT loss")
    ax[0, 0].legend()
    ax[0, 1].plot(r_rm["history"]["train_loss"], label="loss")
    ax[0, 1].plot(r_rm["history"]["accuracy"], label="accuracy")
    ax[0, 1].set_title("Reward model")
    ax[0, 1].legend()
    hd = r_dpo["history"] if r_dpo is not None else {k: [] for k in (
        "train_loss", "reward_accuracy", "chosen_rewards", "rejected_rewards", "reward_margin")}
    ax[1, 0].plot(hd["train_loss"], label="loss")
    ax[1, 0].plot(hd["reward_accuracy"], label="reward accuracy")
    ax[1, 0].set_title("DPO")
    ax[1, 0].legend()
    ax[1, 1].plot(hd["chosen_rewards"], label="chosen")
    ax[1, 1].plot(hd["rejected_rewards"], label="rejected")
    ax[1, 1].plot(hd["reward_margin"], label="margin")
    ax[1, 1].set_title("DPO rewards")
    ax[1, 1].legend()
    for a in ax.flat:
        a.set_xlabel("log entry")
    fig.tight_layout()
    _save(plt, fig, path)
    return True


def write_rl_curves(path, r_grpo):
    """GRPO per logged step: reward (total and per source), KL to the reference, completion length;
    skipped (returns False) when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return False
    h = r_grpo["history"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    x = h.get("step") or list(range(1, len(h["reward"]) + 1))
    ax[0].plot(x, h["reward"], label="reward (tổng / total)")
    for k in sorted(k for k in h if k.startswith("rewards/") and k.endswith("/mean")):
        ax[0].plot(x, h[k], label=k[len("rewards/"):-len("/mean")])
    ax[0].set_title("GRPO reward")
    ax[0].legend()
    if h.get("kl"):
        ax[1].plot(x, h["kl"])
    ax[1].set_title("KL (policy ‖ ref)")
    ax[2].plot(x, h["completions/mean_length"], label="mean")
    ax[2].plot(x, h["completions/max_length"], label="max")
    ax[2].set_title("completion length (token)")
    ax[2].legend()
    for a in ax:
        a.set_xlabel("step")
    fig.tight_layout()
    _save(plt, fig, path)
    return True
