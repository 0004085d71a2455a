"""The spec 1.1 end-to-end trainer vectors spec/vectors/trainer_{grpo,rloo}.json (spec/rl.md §11).

What it is for: one GRPO and one RLOO run of two optimiser steps on **fixed rollouts** — prompts,
completions and rewards given, not sampled — from explicit initial weights of the tiny float64 GPT-2
of the spec 1.0 trainer vectors: the first per-token log-probabilities, each step's advantages, the
first loss, every gradient of step 1, the losses, norms, rates and KL of both steps and the weights
after them. The inputs come from Python's `random.Random(f"{seed}:trainer_{grpo|rloo}")` and the tables
below; the expected numbers from `conformance.reference.reference_trainer_run` (the trainers' own
`_prepare` and `_micro_step` driven by `run_loop`). The rollouts are laid out exactly as the real
trainers would see them for `trainer_config.seed` (their prompt order, G completions per prompt), so
that tests/test_trainer_vectors_rl.py can run GRPOTrainer / RLOOTrainer.huan_luyen with the sampler
replaced by the vector's completions and get the same numbers.

scripts/make_vectors.py calls `build()` and lists the two files in manifest.json ("trainer_vectors");
run that script to write or check them. What it is not: the RL function vectors
(scripts/make_rl_vectors.py) nor a test.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np  # scripts/ is outside the package: the host-NumPy rule applies to vietnamese_ai_ref/ only

sys.path.insert(0, str(Path(__file__).resolve().parent))

RL_SPEC_VERSION = "1.1"
SECTIONS = {"grpo": "rl.md#11-end-to-end-trainer-vectors", "rloo": "rl.md#11-end-to-end-trainer-vectors"}
RL_TRAINER_SECTIONS = (
    "rl.md#2-grpo-advantages", "rl.md#3-grpo-loss", "rl.md#5-rloo-advantages", "rl.md#6-rloo-loss",
    "rl.md#8-log-probabilities-and-entropy-of-the-sampling-distribution", "api.md#the-shared-training-loop",
    "model.md#2-architecture-gpt-2-pre-ln", "losses.md#7-adamw-and-weight-decay-groups",
    "losses.md#8-learning-rate-schedule", "losses.md#9-gradient-clipping-and-the-logged-values",
)

#: Eight prompts; each has three completions (G = 3). A completion longer than max_completion_length
#: (12 byte tokens) is cut there and has no EOS — the rollout's "truncated" rows.
PROMPTS = ["2 + 3 = ?", "Thủ đô Việt Nam?", "7 - 4 = ?", "Màu của lá?", "3 x 3 = ?", "Chào bạn", "10 - 8 = ?",
           "Mèo kêu thế nào?"]
COMPLETIONS = [
    ["5", "Bằng 5 nhé.", "Là sáu thì phải, hay là bảy"],
    ["Hà Nội.", "Huế", "Thủ đô là Hà Nội, bạn ạ"],
    ["3", "Ba.", "4"],
    ["Xanh.", "Xanh lá cây đậm đà lắm", "Đỏ"],
    ["9", "Chín.", "6"],
    ["Chào!", "Xin chào bạn nhé, rất vui", "Ừ"],
    ["2", "Hai", "Mười tám chứ còn gì nữa"],
    ["Meo meo.", "Gâu gâu", "Kêu meo meo suốt cả ngày"],
]

_COMMON = {"so_vong": 1, "kich_thuoc_batch": 6, "num_generations": 3, "gradient_accumulation": 2,
           "toc_do_hoc": 1e-2, "gradient_clip": 1.0, "warmup_ratio": 0.0, "weight_decay": 0.1, "max_seq_length": 64,
           "logging_steps": 1, "seed": 42, "epsilon": 0.2, "epsilon_high": None, "max_completion_length": 12,
           "top_k": 0, "top_p": 1.0}
CONFIGS = {
    # TRL's GRPO defaults except β > 0 (so that the reference and the k3 KL are exercised), a temperature
    # ≠ 1 (the log-probs are of logits ÷ T) and masked truncated completions (a row with no token)
    "grpo": dict(_COMMON, beta=0.04, loss_type="dapo", scale_rewards="group", importance_sampling_level="token",
                 delta=None, temperature=0.7, mask_truncated_completions=True),
    # TRL's RLOO defaults (β 0.05, no normalisation) with G = 3 and temperature 0.9
    "rloo": dict(_COMMON, beta=0.05, normalize_advantages=False, reward_clip_range=None, temperature=0.9,
                 mask_truncated_completions=False),
}
#: The reward of each (prompt, completion): drawn from the file's random stream, then a group of equal
#: rewards (zero std: advantages 0) and an unscorable completion (None = NaN: advantage 0, left out of
#: its group's statistics) planted.
ZERO_STD_PROMPT, NAN_ROW = 5, (2, 1)


def _rewards(rng: random.Random) -> list:
    table = [[round(rng.uniform(-1.0, 2.0), 6) for _ in c] for c in COMPLETIONS]
    table[ZERO_STD_PROMPT] = [0.5, 0.5, 0.5]
    table[NAN_ROW[0]][NAN_ROW[1]] = math.nan
    return table


def _completion_ids(text: str, tok, L: int) -> tuple:
    """(ids, has_eos): the text's byte tokens + EOS, cut to L tokens (then without EOS)."""
    ids = tok.encode(text) + [tok.eos_token_id]
    return (ids, True) if len(ids) <= L else (ids[:L], False)


def _case(kind: str, seed: int) -> dict:
    from make_vectors import TRAINER_MODEL_CONFIG, _initial_parameters, _quantity_tolerances, TRAINER_TOLERANCE

    from vietnamese_ai_ref.backends import use_backend
    from vietnamese_ai_ref.conformance import decode, encode_value
    from vietnamese_ai_ref.conformance.reference import reference_trainer_run
    from vietnamese_ai_ref.core.optim import no_decay
    from vietnamese_ai_ref.text.records import pad_batch
    from vietnamese_ai_ref.text.tokenizer import ByteTokenizer
    from vietnamese_ai_ref.trainers.online import prepare_prompts
    from vietnamese_ai_ref.trainers.settings import epoch_order

    rng = random.Random(f"{seed}:trainer_{kind}")
    tc = dict(CONFIGS[kind])
    mc = TRAINER_MODEL_CONFIG
    params = _initial_parameters(rng, kind)
    rewards = _rewards(rng)
    tok = ByteTokenizer()
    G, L = tc["num_generations"], tc["max_completion_length"]
    per_mb = tc["kich_thuoc_batch"] // G  # prompts per micro-batch
    with use_backend("numpy", "float64"):
        examples, _ = prepare_prompts(PROMPTS, tok, min(tc["max_seq_length"], mc["n_positions"]) - L)
        order = epoch_order(len(PROMPTS), tc["seed"], 0)  # the trainers' prompt order (the shared loop)
    batches = [order[i:i + per_mb] for i in range(0, len(order), per_mb)]
    micro_batches, windows, step_rewards = [], [], []
    for w in range(0, len(batches), tc["gradient_accumulation"]):
        window, r = [], []
        for prompts in batches[w:w + tc["gradient_accumulation"]]:
            window.append(len(micro_batches))
            micro_batches.append(_collate(prompts, G, examples, tok, L, tc["mask_truncated_completions"], pad_batch))
            r += [rewards[p][g] for p in prompts for g in range(G)]
        windows.append(window)
        step_rewards.append(np.array(r, dtype=np.float64))
    tc.update({"total_steps": len(windows), "warmup_steps": 0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
               "clip_eps": 1e-6, "no_decay_parameters": [n for n, a in params.items() if no_decay(n, a)]})
    inputs = {"trainer": kind, "model_config": dict(mc), "parameters": params, "trainer_config": tc,
              "records": [{"prompt": p} for p in PROMPTS], "micro_batches": micro_batches, "windows": windows,
              "rewards": step_rewards}
    with use_backend("numpy", "float64"):
        expected = reference_trainer_run(decode(encode_value(inputs)))
    _check(kind, inputs, expected)
    title = {"grpo": "GRPOTrainer (β 0.04, dapo, scale_rewards 'group', temperature 0.7)",
             "rloo": "RLOOTrainer (β 0.05: k1 KL in the reward, leave-one-out baseline, temperature 0.9)"}[kind]
    return {
        "name": f"{kind}/tiny_gpt2_{len(windows)}_steps_fixed_rollouts",
        "description": (f"{title}: GPT-2 n_layer 2, n_embd 16, n_head 2, byte vocabulary 259, float64; "
                        f"{len(PROMPTS)} prompts × G = {G} fixed completions (max_completion_length {L}: "
                        f"truncated rows without EOS), fixed rewards with a zero-std group and an unscorable "
                        f"(NaN) completion; kich_thuoc_batch {tc['kich_thuoc_batch']} completions, "
                        f"gradient_accumulation {tc['gradient_accumulation']} (micro-batches of unequal token "
                        f"counts), {len(windows)} optimiser steps at full rate then half (warmup 0), "
                        f"one update per rollout (old log-probs = the training forward), reference = the "
                        f"initial weights, clipping and weight decay as spec 1.0"),
        "inputs": encode_value(inputs),
        "expected": encode_value(expected),
        "tolerances": dict(TRAINER_TOLERANCE),
        "quantity_tolerances": _quantity_tolerances(kind),
    }


def _collate(prompts, G, examples, tok, L, mask_truncated, pad_batch) -> dict:
    """One micro-batch: the G completions of each prompt in turn, rows prompt + completion right-padded
    with <pad>; completion_mask[b, j] = 1 where position j predicts a completion token of mask 1."""
    rows, plens, masks, idx = [], [], [], []
    for p in prompts:
        for g in range(G):
            ids, has_eos = _completion_ids(COMPLETIONS[p][g], tok, L)
            prompt = examples[p]["prompt_ids"]
            rows.append(prompt + ids)
            plens.append(len(prompt))
            masks.append([0 if (mask_truncated and not has_eos) else 1] * len(ids))
            idx.append(p)
    ids, att = pad_batch(rows, tok.pad_token_id)
    T = len(ids[0])
    cm = np.zeros((len(rows), T - 1), dtype=np.int64)
    for b, (n, m) in enumerate(zip(plens, masks)):
        cm[b, n - 1:n - 1 + len(m)] = m
    return {"example_indices": np.array(idx, dtype=np.int64), "input_ids": np.array(ids, dtype=np.int64),
            "attention_mask": np.array(att, dtype=np.int64), "prompt_lengths": np.array(plens, dtype=np.int64),
            "completion_mask": cm}


def _check(kind, inputs, expected) -> None:
    """The vector exercises what it claims: unequal token counts in a window, a masked truncated row
    (GRPO), the zero-std group and the NaN reward (advantage 0), clipping at step 1, a KL that is 0 at
    step 1 and not at step 2."""
    mbs, windows = inputs["micro_batches"], inputs["windows"]
    counts = [int(mbs[i]["completion_mask"].sum()) for i in windows[0]]
    assert counts[0] != counts[1], counts
    assert any(not m.any() for mb in mbs for m in mb["completion_mask"]) == (kind == "grpo")
    adv = expected["advantages"]
    # GRPO: the zero-std group and the NaN row get 0; RLOO: the NaN row (the zero-std group's rewards
    # differ by their KL once the policy has moved, at step 2)
    rows = len(inputs["rewards"][0])
    assert adv.shape == (len(windows), rows) and (adv == 0.0).sum() >= (4 if kind == "grpo" else 1), adv
    assert expected["grad_norms"][0] > inputs["trainer_config"]["gradient_clip"], expected["grad_norms"]
    kl = expected["kl"]
    assert kl[0] == 0.0 and abs(kl[1]) > 1e-6, kl
    assert all(math.isfinite(x) for x in expected["loss_trajectory"])


def build(seed: int) -> dict:
    """{file name: vector object} of the two files, format vietnamese_ai_ref.trainer-vectors/1."""
    from vietnamese_ai_ref.conformance import TRAINER_FORMAT

    out = {}
    for kind in ("grpo", "rloo"):
        out[f"trainer_{kind}.json"] = {
            "format": TRAINER_FORMAT, "spec_version": RL_SPEC_VERSION, "trainer": kind, "section": SECTIONS[kind],
            "sections": list(RL_TRAINER_SECTIONS), "cases": [_case(kind, seed)],
        }
    return out
