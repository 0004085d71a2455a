"""Training curves of the demo as a PNG (matplotlib, the `plots` extra).

What it is for: one figure of SFT loss, reward-model loss/accuracy and DPO loss/rewards, written
atomically next to the run's metrics.
What it is not: required: without matplotlib nothing is drawn and the caller is told so.
"""

from __future__ import annotations

import os


def write_curves(path, r_sft, r_rm, r_dpo):
    """Loss, margin and accuracy curves; skipped (returns False) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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
    hd = r_dpo["history"]
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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return True
