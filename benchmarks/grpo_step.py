"""GRPO benchmark: rollout tokens/s and a whole GRPO step of this project against the same in plain torch.

What it is for: one process builds config B's GPT-2 (vocab 512, 4 layers, 4 heads, d 256,
n_positions 128; bench.py's config B) in `vietnamese_ai_ref` and in plain torch (the same weights,
float32, the same thread count) and times, in interleaved rounds (median reported):
  - rollout: P prompts × G generations, `max_completion_length` new tokens each (no EOS, so both sides
    produce exactly P·G·L tokens) at temperature 1: our `models.sampling.sample_rollouts` (spec/rl.md
    §9: float64 host draws from one generator per row) against a plain-torch KV-cache loop (prompts
    prefilled once, cache rows repeated G times, softmax + torch.multinomial per step);
  - a whole GRPO step, β = 0 and β > 0: rollout (EOS 258 stops a row), decoding, a cheap Python reward
    function, group advantages, for β > 0 the reference's log-probs, the policy forward, the GRPO loss
    (TRL's formulas, "dapo" aggregation, ε = 0.2), TRL's metrics (entropy, clip ratios, KL), backward,
    gradient clipping at 1.0 and AdamW — ours is the real `GRPOTrainer.huan_luyen` (one optimiser
    step per window, `logging_steps=1`; a step's time is the gap between two consecutive callbacks),
    torch's the same step written here after TRL v1.9.0's `GRPOTrainer` (its generation loop keeps
    finished rows, as transformers' `generate` does).
It prints the CPU model (lscpu's "Model name"), the thread settings, the load average and a table
(ours, torch, ratio ours/torch: tokens/s for the rollout, steps/s for the GRPO steps), and writes
JSON with `--json`.

What it is not: a test (tests/test_benchmarks.py only checks that it runs on a tiny config), nor a
check that the two sides sample the same tokens (they draw from different generators; the step's
formulas are held to torch by tests/test_rl_trainers.py). Figures depend on the machine's load.

Usage (from the repository root):
    python benchmarks/grpo_step.py                       # config B, 2 threads, reference kernels
    python benchmarks/grpo_step.py --kernels fast        # the numba kernels (pip install numba)
    python benchmarks/grpo_step.py --profile             # cProfile of our β = 0 step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import THREAD_VARS, _ensure_env, torch_side  # noqa: E402  (benchmarks/bench.py, same folder)

_REEXEC_MARK = "VIETNAMESE_AI_GRPO_BENCH_CHILD"
CONFIGS = {
    # vocab, layers, heads, d, positions; prompts P, generations G, completion length L, prompt length
    "B": dict(vocab=512, n_layer=4, n_head=4, d=256, seq=128, prompts=4, G=8, L=64, prompt_len=24),
    "tiny": dict(vocab=300, n_layer=1, n_head=2, d=32, seq=48, prompts=2, G=2, L=8, prompt_len=12),
}
LR, EPS, BETA_ON, EOS = 1e-6, 0.2, 0.04, 258


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="B", choices=sorted(CONFIGS))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (default 3)")
    p.add_argument("--steps", type=int, default=3, help="timed GRPO steps per side and round (default 3)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/numba threads and torch.set_num_threads (default 2)")
    p.add_argument("--kernels", default=None, choices=("reference", "fast", "auto"),
                   help="sets VIETNAMESE_AI_KERNELS (default: the environment's, else reference)")
    p.add_argument("--allocator", default="tuned", choices=("tuned", "default"))
    p.add_argument("--parts", default="rollout,beta0,beta", help="comma-separated subset of rollout,beta0,beta")
    p.add_argument("--profile", action="store_true", help="cProfile our β = 0 GRPO steps instead of comparing")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def cpu_model() -> str:
    """lscpu's "Model name" (else /proc/cpuinfo's "model name", else platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ============================ shared setup ======================================================

def wide_tokenizer(vocab):
    """A ByteTokenizer that also decodes ids 259 … vocab − 1 (as printable ASCII), so that a model with
    config B's vocab of 512 can be trained by the RL trainers, which decode every completion."""
    from vietnamese_ai_ref.text.tokenizer import ByteTokenizer

    class WideByteTokenizer(ByteTokenizer):
        vocab_size = vocab

        def decode(self, ids, skip_special_tokens=True):
            return super().decode([t if t < 259 else 32 + (t - 259) % 95 for t in ids], skip_special_tokens)

    return WideByteTokenizer()


def prompt_texts(cfg, n):
    """n ASCII prompts whose templated ids all have the same length (torch's loop needs no padding)."""
    words = "abcdefghijklmnopqrstuvwxyz"
    return [("Câu " + "".join(words[(7 * i + j) % 26] for j in range(cfg["prompt_len"])))[:cfg["prompt_len"]]
            for i in range(n)]


def reward_fn(prompts, completions, **_):
    """The cheap Python reward: the share of distinct characters, plus a bonus for vowels."""
    return [len(set(c)) / (1.0 + len(c)) + 0.01 * sum(ch in "aeiou" for ch in c) for c in completions]


def build(cfg, torch):
    """(our model, the torch model with the same weights)."""
    from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

    ours = TransformerLM(GPTConfig(vocab_size=cfg["vocab"], n_positions=cfg["seq"], n_embd=cfg["d"],
                                   n_layer=cfg["n_layer"], n_head=cfg["n_head"], seed=0),
                         tokenizer=wide_tokenizer(cfg["vocab"]))
    tm = torch_side(cfg, "float32", "cpu", ours.state_dict(), torch)
    return ours, tm


def prompt_ids(model, texts, cfg):
    from vietnamese_ai_ref.trainers.online import prepare_prompts

    ex, _ = prepare_prompts(texts, model.tokenizer, cfg["seq"] - cfg["L"])
    ids = [e["prompt_ids"] for e in ex]
    assert len({len(i) for i in ids}) == 1, "prompts must share one length"
    return ids


# ============================ the torch side ====================================================

def torch_rollout(tm, torch, prompts, G, L, cfg, gen, eos=None, temperature=1.0):
    """Plain-torch batched sampling: (P·G, L') completion ids (L' ≤ L) and their mask (1 up to the first EOS)."""
    p_ids = torch.as_tensor(prompts, dtype=torch.int64)  # (P, Tp)
    P, Tp = p_ids.shape
    H, hd = cfg["n_head"], cfg["d"] // cfg["n_head"]
    cap = Tp + L
    with torch.inference_mode():
        cache = [(torch.zeros(P, H, cap, hd), torch.zeros(P, H, cap, hd)) for _ in range(cfg["n_layer"])]
        logits = tm(p_ids, cache, 0)[:, -1].repeat_interleave(G, dim=0)  # (P·G, V)
        cache = [(k.repeat_interleave(G, dim=0), v.repeat_interleave(G, dim=0)) for k, v in cache]  # (P·G, H, cap, hd)
        out, done = [], torch.zeros(P * G, dtype=torch.bool)
        for t in range(L):
            probs = torch.softmax(logits / temperature, dim=-1)  # (P·G, V)
            nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]  # (P·G,)
            out.append(nxt)
            if eos is not None:
                done |= nxt == eos
            if t + 1 == L or bool(done.all()):
                break
            logits = tm(nxt[:, None], cache, Tp + t)[:, -1]  # (P·G, V)
        ids = torch.stack(out, dim=1)  # (P·G, L')
    mask = torch.ones_like(ids)
    if eos is not None:
        hit = (ids == eos).int()
        mask = (hit.cumsum(dim=1) - hit == 0).long()  # 1 up to and including the first EOS
    return ids, mask


def torch_token_logps(tm, ids, Tp, temperature=1.0):
    """(per-token log-probs (B, C) of the completion tokens, their logits (B, C, V)), TRL-style (logits_to_keep)."""
    logits = tm(ids)[:, Tp - 1:-1] / temperature  # (B, C, V): position Tp − 1 + t predicts completion token t
    lp = logits.log_softmax(dim=-1).gather(-1, ids[:, Tp:, None])[..., 0]  # (B, C)
    return lp, logits


class TorchGRPO:
    """The GRPO step of TRL v1.9.0 (one update per rollout, "dapo", group scaling) in plain torch."""

    def __init__(self, tm, torch, cfg, texts, prompts, beta, tokenizer, seed=0):
        self.tm, self.torch, self.cfg, self.beta, self.tok = tm, torch, cfg, beta, tokenizer
        self.texts, self.prompts = texts, prompts
        self.opt = torch.optim.AdamW(tm.parameters(), lr=LR, weight_decay=0.0, fused=True)
        self.gen = torch.Generator().manual_seed(seed)
        self.ref = _frozen_copy(tm) if beta > 0.0 else None

    def step(self):
        torch, F_G, cfg = self.torch, self.cfg["G"], self.cfg
        ids, mask = torch_rollout(self.tm, torch, self.prompts, F_G, cfg["L"], cfg, self.gen, eos=EOS)
        rows = [r[:int(m.sum())] for r, m in zip(ids.tolist(), mask)]
        comps = [self.tok.decode([t for t in r if t != EOS]) for r in rows]
        R = torch.tensor(reward_fn([t for t in self.texts for _ in range(F_G)], comps), dtype=torch.float32)
        g = R.view(-1, F_G)  # (P, G)
        adv = ((g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True) + 1e-4)).view(-1)  # (B,)
        Tp = len(self.prompts[0])
        full = torch.cat([torch.as_tensor(self.prompts, dtype=torch.int64).repeat_interleave(F_G, dim=0), ids], 1)
        m = mask.float()
        ref_lp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_lp, _ = torch_token_logps(self.ref, full, Tp)
        self.opt.zero_grad(set_to_none=True)
        lp, logits = torch_token_logps(self.tm, full, Tp)
        ratio = torch.exp(lp - lp.detach())  # (B, C); the old log-probs are this forward's, detached
        a = adv[:, None]
        per_tok = -torch.min(ratio * a, torch.clamp(ratio, 1 - EPS, 1 + EPS) * a)
        if ref_lp is not None:
            d = ref_lp - lp
            kl = torch.exp(d) - d - 1
            per_tok = per_tok + self.beta * kl
        n_tok = m.sum().clamp(min=1.0)
        loss = (per_tok * m).sum() / n_tok
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.tm.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():  # TRL's logged metrics
            ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
            stats = [loss.item(), ((ent * m).sum() / n_tok).item()]
            lo, hi = (ratio < 1 - EPS) & (a < 0), (ratio > 1 + EPS) & (a > 0)
            stats += [((lo.float() * m).sum() / n_tok).item(), ((hi.float() * m).sum() / n_tok).item(),
                      (((lo | hi).float() * m).sum() / n_tok).item(), R.mean().item(), g.std(dim=1).mean().item()]
            if ref_lp is not None:
                stats.append(((kl * m).sum() / n_tok).item())
        return float(mask.sum(dim=1).float().mean())


def _frozen_copy(tm):
    import copy

    ref = copy.deepcopy(tm)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()


# ============================ our side ==========================================================

def ours_rollout(model, prompts, cfg, k):
    from vietnamese_ai_ref.models.sampling import sample_rollouts

    return sample_rollouts(model, prompts, num_generations=cfg["G"], max_completion_length=cfg["L"], temperature=1.0,
                           eos_token_id=-1, seed=0, rollout_index=k)


def ours_grpo_steps(model, texts, cfg, beta, n_steps, seed):
    """Run GRPOTrainer.huan_luyen for 1 + n_steps optimiser steps; returns the n_steps gaps between
    consecutive step callbacks (the first step, which follows the trainer's setup, is not timed) and
    the mean completion length."""
    from vietnamese_ai_ref import GRPOTrainer

    B = cfg["prompts"] * cfg["G"]
    tr = GRPOTrainer(so_vong=1, kich_thuoc_batch=B, toc_do_hoc=LR, num_generations=cfg["G"], beta=beta, epsilon=EPS,
                     max_seq_length=cfg["seq"], logging_steps=1, seed=seed, max_completion_length=cfg["L"])
    stamps, lengths = [], []

    def callback(entry):
        stamps.append(time.perf_counter())
        lengths.append(entry["completions/mean_length"])

    tr.huan_luyen(model, texts * (1 + n_steps), ham_thuong=reward_fn, callback=callback)
    assert len(stamps) == 1 + n_steps, len(stamps)
    return [b - a for a, b in zip(stamps, stamps[1:])], statistics.mean(lengths[1:])


# ============================ measurements ======================================================

def measure_rollout(args, cfg, ours, tm, torch, prompts):
    """Interleaved rounds of one rollout per side: median seconds and tokens/s of each."""
    n_tok = cfg["prompts"] * cfg["G"] * cfg["L"]
    gen = torch.Generator().manual_seed(0)
    ours_rollout(ours, prompts, cfg, 0)  # warm-up (and numba compilation)
    torch_rollout(tm, torch, prompts, cfg["G"], cfg["L"], cfg, gen)
    t = {"ours": [], "torch": []}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        ro = ours_rollout(ours, prompts, cfg, r + 1)
        t["ours"].append(time.perf_counter() - t0)
        assert int(ro.lengths.sum()) == n_tok
        t0 = time.perf_counter()
        ids, _ = torch_rollout(tm, torch, prompts, cfg["G"], cfg["L"], cfg, gen)
        t["torch"].append(time.perf_counter() - t0)
        assert ids.numel() == n_tok
    row = {"part": "rollout", "tokens": n_tok}
    for side, ts in t.items():
        med = statistics.median(ts)
        row[side] = {"median_s": med, "tokens_per_s": n_tok / med, "all_s": ts}
    row["ratio"] = row["ours"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
    return row


def measure_grpo(args, cfg, ours, tm, torch, texts, prompts, beta):
    """Interleaved rounds of `steps` GRPO steps per side: median seconds per step of each."""
    tg = TorchGRPO(tm, torch, cfg, texts, prompts, beta, ours.tokenizer, seed=1)
    tg.step()  # warm-up
    t = {"ours": [], "torch": []}
    lens = {"ours": [], "torch": []}
    for r in range(args.rounds):
        ts, mean_len = ours_grpo_steps(ours, texts, cfg, beta, args.steps, seed=100 + r)
        t["ours"] += ts
        lens["ours"].append(mean_len)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            lens["torch"].append(tg.step())
            t["torch"].append(time.perf_counter() - t0)
    row = {"part": f"grpo β={beta:g}", "beta": beta}
    for side, ts in t.items():
        row[side] = {"median_s": statistics.median(ts), "mean_completion_length": statistics.mean(lens[side]),
                     "all_s": ts}
    row["ratio"] = row["torch"]["median_s"] / row["ours"]["median_s"]
    return row


def profile(args, cfg, ours, texts):
    import cProfile
    import pstats

    ours_grpo_steps(ours, texts, cfg, 0.0, 1, seed=5)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    ts, _ = ours_grpo_steps(ours, texts, cfg, 0.0, args.steps, seed=6)
    prof.disable()
    print(f"median step {statistics.median(ts) * 1e3:.0f} ms under cProfile")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


def header(args, torch, be):
    return [f"cpu: {cpu_model()} ({os.cpu_count()} cpus)  load average: "
            + " ".join(f"{x:.2f}" for x in os.getloadavg()),
            f"python {platform.python_version()}  torch {torch.__version__}  threads {args.threads} "
            f"(torch.set_num_threads = {torch.get_num_threads()}, "
            + ", ".join(f"{v}={os.environ.get(v, '-')}" for v in THREAD_VARS) + ")",
            f"kernels: {be.kernels.accelerated or 'reference'} "
            f"(VIETNAMESE_AI_KERNELS={os.environ.get('VIETNAMESE_AI_KERNELS', 'unset')})  float32",
            f"config {args.config}: {CONFIGS[args.config]}; rounds {args.rounds}, GRPO steps per round {args.steps}"]


def main(argv=None):
    args = parse_args(argv)
    _ensure_env(args, __file__, _REEXEC_MARK)
    import torch

    torch.set_num_threads(args.threads)
    from vietnamese_ai_ref import backends

    be = backends.set_backend("numpy", dtype="float32")
    cfg = CONFIGS[args.config]
    torch.manual_seed(0)
    ours, tm = build(cfg, torch)
    texts = prompt_texts(cfg, cfg["prompts"])
    prompts = prompt_ids(ours, texts, cfg)
    if args.profile:
        return profile(args, cfg, ours, texts)
    head = header(args, torch, be)
    print("\n".join(head), flush=True)
    rows = []
    parts = args.parts.split(",")
    if "rollout" in parts:
        rows.append(measure_rollout(args, cfg, ours, tm, torch, prompts))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    for beta, part in ((0.0, "beta0"), (BETA_ON, "beta")):
        if part in parts:
            rows.append(measure_grpo(args, cfg, ours, tm, torch, texts, prompts, beta))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"header": head, "cpu": cpu_model(), "threads": args.threads, "results": rows}, f, indent=2)


def format_table(rows):
    lines = ["| part | ours | torch | ours/torch |", "|---|---|---|---|"]
    for r in rows:
        o, t = r["ours"], r["torch"]
        if r["part"] == "rollout":
            cells = [f"{o['tokens_per_s']:.0f} tok/s", f"{t['tokens_per_s']:.0f} tok/s"]
        else:
            cells = [f"{o['median_s'] * 1e3:.0f} ms/step (len {o['mean_completion_length']:.1f})",
                     f"{t['median_s'] * 1e3:.0f} ms/step (len {t['mean_completion_length']:.1f})"]
        lines.append(f"| {r['part']} | {cells[0]} | {cells[1]} | **{r['ratio']:.2f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
