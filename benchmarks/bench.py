"""Training-step benchmark: this project's NumPy/CuPy GPT-2 against the same model in plain torch.

What it is for: one process builds the same GPT-2 (same config, same initial weights, copied from
ours) in `vietnamese_ai_ref` and in plain torch, and times, per config,
  - an SFT training step: forward + sft_loss + backward + grad-norm clipping + AdamW, exactly the
    calls the trainers make (training.run_loop: gather_grads, grad_norm, scale_grads, step);
  - for config B also a DPO step (B = 8 pairs: policy forward on the 2·B = 16 chosen + rejected rows,
    sequence_logps, dpo_loss against cached reference log-probabilities, backward, AdamW) and greedy
    KV-cache generation (8 prompts of 16 tokens, 112 new tokens each).
Torch runs at its best on this hardware: AdamW(fused=True), F.scaled_dot_product_attention, the same
thread count and the same allocator environment (both sides share this process; the header prints
it). It prints a table (tokens/s, achieved GFLOP/s with FLOPs/token = 6·N + 12·n_layer·d·seq,
percent of the sgemm peak measured in-process, peak RSS, ratio ours/torch) and writes JSON
(`--json out.json`). Without torch it reports our side alone.

Peak memory (VmHWM, the peak resident set; ru_maxrss where /proc is missing) is measured in separate
subprocesses, one per side, so that the figures do not mix (the torch probe never builds our model,
ours never imports torch); `--no-memory` skips them. `--profile B` prints where our step's time goes.

What it is not: a test. It checks only that the two sides agree on the first loss (printed), and
its figures depend on the machine's load: repeat (`--rounds`) and keep the best; quote `uptime`.

Usage (from the repository root):
    python benchmarks/bench.py                       # configs A,B,C in float32, 2 threads
    python benchmarks/bench.py --configs A,B --dtype float64 --json out.json
    python benchmarks/bench.py --backend cupy        # our CuPy path against torch on CUDA
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

# The allocator settings of docs/benchmarks.md (see /work/shared/notes): without them every large
# temporary is mmapped fresh and returned each step (page faults, erratic step times) on both sides.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "17179869184",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_REEXEC_MARK = "VIETNAMESE_AI_BENCH_CHILD"

CONFIGS = {
    # name: (vocab, n_layer, n_head, d, seq, batch, default steps per round)
    "A": dict(vocab=512, n_layer=2, n_head=4, d=128, seq=64, batch=8, steps=20),
    "B": dict(vocab=512, n_layer=4, n_head=4, d=256, seq=128, batch=8, steps=10),
    "C": dict(vocab=50257, n_layer=12, n_head=12, d=768, seq=128, batch=2, steps=3),
}
LR, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0
DPO_BETA, DPO_PROMPT = 0.1, 32  # DPO: β, prompt tokens per row (ignored labels)
GEN_PROMPT = 16  # generation: prompt length; generates seq - GEN_PROMPT tokens per row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="A,B,C", help="comma-separated subset of A,B,C (default A,B,C)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default per config: A 20, B 10, C 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timing rounds per side, alternating; the best step is reported, and the median (default 3)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for both sides (default 2)")
    p.add_argument("--timer", default="wall", choices=("wall", "cpu"),
                   help="wall: perf_counter (default); cpu: process CPU time, robust to other load but only "
                        "meaningful with --threads 1 (idle BLAS threads spin and would be counted)")
    p.add_argument("--allocator", default="tuned", choices=("tuned", "default"),
                   help="tuned: run under the large-mmap-threshold glibc settings (default); default: leave malloc alone")
    p.add_argument("--kernels", default=None, choices=("reference", "fast", "auto"),
                   help="sets VIETNAMESE_AI_KERNELS for our side (default: the environment's, else reference); "
                        "fast/auto need numba (the `fast` extra)")
    p.add_argument("--profile", default=None, metavar="CONFIG",
                   help="instead of the comparison: cProfile our training step on this config and print where "
                        "the time goes (kernels, GEMMs, Python)")
    p.add_argument("--no-torch", action="store_true", help="report our side alone even when torch is installed")
    p.add_argument("--no-memory", action="store_true", help="skip the per-side peak-memory subprocesses")
    p.add_argument("--no-dpo", action="store_true", help="skip the DPO step (config B)")
    p.add_argument("--no-generate", action="store_true", help="skip KV-cache generation (config B)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--probe", default=None, choices=("ours", "torch"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _ensure_env(args, script=__file__, mark=_REEXEC_MARK):
    """Re-exec `script` once so that thread counts and malloc settings apply from process start (both
    sides); `mark` is the environment variable that says "already re-executed" (grpo_step.py uses this too)."""
    want = {v: str(args.threads) for v in THREAD_VARS}
    if args.kernels:
        want["VIETNAMESE_AI_KERNELS"] = args.kernels
    if args.allocator == "tuned":
        want.update(ALLOCATOR_ENV)
    if os.environ.get(mark) == "1" or all(os.environ.get(k) == v for k, v in want.items()):
        return
    env = dict(os.environ, **want, **{mark: "1"})
    os.execve(sys.executable, [sys.executable, os.path.abspath(script)] + sys.argv[1:], env)


# ============================ shared helpers ===================================================

def flops_per_token(cfg) -> int:
    """6·N + 12·n_layer·d·seq, N = parameters without the position table (the head is tied to wte)."""
    V, L, d, T = cfg["vocab"], cfg["n_layer"], cfg["d"], cfg["seq"]
    n = V * d + L * (12 * d * d + 13 * d) + 2 * d
    return 6 * n + 12 * L * d * T


def make_batch(cfg, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg["vocab"], size=(cfg["batch"], cfg["seq"]), dtype=np.int64)
    return ids, ids.copy(), np.ones_like(ids)  # ids, labels (every position a target), mask


def make_pairs(cfg, seed=1):
    """DPO batch: B chosen rows then B rejected rows (2B, T), prompt labels ignored; cached ref log-probs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    B, T = cfg["batch"], cfg["seq"]
    ids = rng.integers(0, cfg["vocab"], size=(2 * B, T), dtype=np.int64)
    ids[B:, :DPO_PROMPT] = ids[:B, :DPO_PROMPT]  # same prompt for chosen and rejected
    labels = ids.copy()
    labels[:, :DPO_PROMPT] = -100
    ref = -np.log(cfg["vocab"]) * (T - DPO_PROMPT) + rng.standard_normal(2 * B)
    return ids, labels, np.ones_like(ids), ref[:B], ref[B:]


def sgemm_peak(xp, dtype, sync, n=1024, reps=10):
    """Best GFLOP/s of an n×n matmul on this side's library."""
    a = xp.ones((n, n), dtype=dtype) * 0.5
    b = xp.ones((n, n), dtype=dtype) * 0.25
    c = xp.matmul(a, b)
    best = math.inf
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        xp.matmul(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ============================ our side ==========================================================

class Ours:
    def __init__(self, cfg, dtype, backend):
        from vietnamese_ai_ref import backends
        from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

        self.be = backends.set_backend(backend, dtype=dtype)
        self.cfg = cfg
        self.model = TransformerLM(GPTConfig(vocab_size=cfg["vocab"], n_positions=cfg["seq"], n_embd=cfg["d"],
                                             n_layer=cfg["n_layer"], n_head=cfg["n_head"], seed=0))
        self.model.train()
        self.opt = None

    def state_dict(self):
        return self.model.state_dict()

    def _optimizer(self):
        from vietnamese_ai_ref.core.optim import AdamW

        if self.opt is None:
            self.opt = AdamW(self.model.named_parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        return self.opt

    def _update(self):
        """What training.run_loop does after the micro-batches: gather, clip, step."""
        from vietnamese_ai_ref.core.optim import clip_coefficient

        opt = self.opt
        opt.gather_grads()
        norm = opt.grad_norm()
        opt.scale_grads(clip_coefficient(norm, CLIP))
        opt.step(LR)

    def sft_setup(self, batch):
        xp = self.be.xp
        self.ids, self.labels, self.mask = (xp.asarray(a) for a in batch)
        self.n_items = int((batch[1][:, 1:] != -100).sum())
        self._optimizer()

    def sft_loss(self):
        from vietnamese_ai_ref import losses

        logits = self.model(self.ids, attention_mask=self.mask)
        return losses.sft_loss(logits, self.labels, num_items_in_batch=self.n_items)

    def _step(self, loss_fn):
        """One optimiser step as the trainers take it: zero grads, loss, backward, update."""
        self.opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        value = loss.item()
        self._update()
        return value

    def sft_step(self):
        return self._step(self.sft_loss)

    def dpo_setup(self, pairs):
        xp = self.be.xp
        ids, labels, mask, rc, rr = pairs
        self.p_ids, self.p_labels, self.p_mask = xp.asarray(ids), xp.asarray(labels), xp.asarray(mask)
        self.rc, self.rr = self.be.asarray(rc), self.be.asarray(rr)
        self.B = ids.shape[0] // 2
        self._optimizer()

    def dpo_loss(self):
        from vietnamese_ai_ref import losses

        logps = losses.sequence_logps(self.model(self.p_ids, attention_mask=self.p_mask), self.p_labels)  # (2B,)
        pc, pr = logps[:self.B], logps[self.B:]
        per_pair, cr, rj = losses.dpo_loss(pc, pr, self.rc, self.rr, beta=DPO_BETA)
        self.be.to_numpy(cr.data), self.be.to_numpy(rj.data)  # the trainer's statistics
        return per_pair.sum() / self.B

    def dpo_step(self):
        return self._step(self.dpo_loss)

    def generate(self, prompts, new_tokens):
        out = self.model.generate(prompts, max_new_tokens=new_tokens, use_cache=True, eos_token_id=-1)
        self.model.train()
        return out

    def sync(self):
        self.be.synchronize()


# ============================ torch side =======================================================

def torch_side(cfg, dtype, device, state, torch):
    """A plain-torch GPT-2 (pre-LN, fused qkv, GELU-tanh, tied head) with weights from `state` (ours)."""
    import torch.nn.functional as F
    from torch import nn

    tdtype = getattr(torch, dtype)
    L, H, d = cfg["n_layer"], cfg["n_head"], cfg["d"]

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.ParameterDict()

            def put(name, arr, transpose=False):
                t = torch.as_tensor(arr.T.copy() if transpose else arr).to(device=device, dtype=tdtype)
                self.p[name.replace(".", "_")] = nn.Parameter(t.contiguous())

            for name, arr in state.items():
                # Conv1D (in, out) -> Linear (out, in), torch's native layout for F.linear
                put(name, arr, transpose=name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")))

        def w(self, name):
            return self.p[name.replace(".", "_")]

        def block(self, i, x, cache=None, pos=None):
            h = f"h.{i}."
            B, T, _ = x.shape
            a = F.layer_norm(x, (d,), self.w(h + "ln_1.weight"), self.w(h + "ln_1.bias"), 1e-5)
            qkv = F.linear(a, self.w(h + "attn.c_attn.weight"), self.w(h + "attn.c_attn.bias"))
            q, k, v = qkv.view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
            if cache is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                ck, cv = cache[i]
                ck[:, :, pos:pos + T] = k
                cv[:, :, pos:pos + T] = v
                y = F.scaled_dot_product_attention(q, ck[:, :, :pos + T], cv[:, :, :pos + T], is_causal=(T > 1))
            y = y.transpose(1, 2).reshape(B, T, d)
            x = x + F.linear(y, self.w(h + "attn.c_proj.weight"), self.w(h + "attn.c_proj.bias"))
            m = F.layer_norm(x, (d,), self.w(h + "ln_2.weight"), self.w(h + "ln_2.bias"), 1e-5)
            m = F.gelu(F.linear(m, self.w(h + "mlp.c_fc.weight"), self.w(h + "mlp.c_fc.bias")), approximate="tanh")
            return x + F.linear(m, self.w(h + "mlp.c_proj.weight"), self.w(h + "mlp.c_proj.bias"))

        def forward(self, ids, cache=None, pos=0):
            T = ids.shape[1]
            x = F.embedding(ids, self.w("wte.weight")) + self.w("wpe.weight")[pos:pos + T]
            for i in range(L):
                x = self.block(i, x, cache, pos)
            x = F.layer_norm(x, (d,), self.w("ln_f.weight"), self.w("ln_f.bias"), 1e-5)
            return F.linear(x, self.w("wte.weight"))

    return GPT()


class Torch:
    def __init__(self, cfg, dtype, device, state, torch):
        self.torch, self.cfg, self.device = torch, cfg, device
        self.model = torch_side(cfg, dtype, device, state, torch)
        decay = [p for n, p in self.model.p.items() if p.ndim >= 2 and not n.endswith("_bias") and "_ln_" not in n
                 and not n.startswith("ln_")]
        nodecay = [p for n, p in self.model.p.items() if not any(p is q for q in decay)]
        self.params = decay + nodecay
        kw = {"fused": True}
        try:
            self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                          {"params": nodecay, "weight_decay": 0.0}], lr=LR, **kw)
            self.fused = True
        except (RuntimeError, TypeError):  # an old torch without fused AdamW on this device
            self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                          {"params": nodecay, "weight_decay": 0.0}], lr=LR)
            self.fused = False

    def _t(self, a):
        return self.torch.as_tensor(a).to(self.device)

    def sft_setup(self, batch):
        self.ids, self.labels, _ = (self._t(a) for a in batch)
        self.n_items = int((batch[1][:, 1:] != -100).sum())

    def sft_loss(self):
        import torch.nn.functional as F

        logits = self.model(self.ids)
        V = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, V), self.labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / self.n_items

    def _update(self):
        self.torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()

    def _step(self, loss_fn):
        self.opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        value = loss.item()
        self._update()
        return value

    def sft_step(self):
        return self._step(self.sft_loss)

    def dpo_setup(self, pairs):
        ids, labels, _, rc, rr = pairs
        self.p_ids, self.p_labels = self._t(ids), self._t(labels)
        dt = self.model.p["wte_weight"].dtype
        self.rc, self.rr = self._t(rc).to(dt), self._t(rr).to(dt)
        self.B = ids.shape[0] // 2

    def dpo_loss(self):
        import torch.nn.functional as F

        logits = self.model(self.p_ids)
        R, T, V = logits.shape
        tok = F.cross_entropy(logits[:, :-1].reshape(-1, V), self.p_labels[:, 1:].reshape(-1),
                              ignore_index=-100, reduction="none").view(R, T - 1)
        logps = -tok.sum(dim=1)
        pc, pr = logps[:self.B], logps[self.B:]
        h = (pc - pr) - (self.rc - self.rr)
        losses = -F.logsigmoid(DPO_BETA * h)
        (DPO_BETA * (pc.detach() - self.rc)).cpu(), (DPO_BETA * (pr.detach() - self.rr)).cpu()
        return losses.sum() / self.B

    def dpo_step(self):
        return self._step(self.dpo_loss)

    def generate(self, prompts, new_tokens):
        torch = self.torch
        cfg = self.cfg
        ids = self._t(prompts)
        B, P = ids.shape
        hd = cfg["d"] // cfg["n_head"]
        dt = self.model.p["wte_weight"].dtype
        cache = [(torch.zeros(B, cfg["n_head"], P + new_tokens, hd, dtype=dt, device=self.device),
                  torch.zeros(B, cfg["n_head"], P + new_tokens, hd, dtype=dt, device=self.device))
                 for _ in range(cfg["n_layer"])]
        out = []
        with torch.inference_mode():
            logits = self.model(ids, cache, 0)[:, -1]
            pos = P
            for t in range(new_tokens):
                nxt = logits.argmax(dim=-1)
                out.append(nxt)
                if t + 1 == new_tokens:
                    break
                logits = self.model(nxt[:, None], cache, pos)[:, -1]
                pos += 1
        return torch.stack(out, dim=1).tolist()

    def sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()


# ============================ measurements =====================================================

CLOCK = time.perf_counter


def time_side(side, step, warmup):
    """(first loss, function running `n` steps and returning each step's seconds)."""
    first = step()
    for _ in range(max(0, warmup - 1)):
        step()
    side.sync()

    def run(n):
        times = []
        for _ in range(n):
            side.sync()
            t0 = CLOCK()
            step()
            side.sync()
            times.append(CLOCK() - t0)
        return times

    return first, run


def compare(sides, kind, steps, warmup, rounds):
    """Rounds of `steps` steps, alternating between the sides. Per side: the best step time (the figure
    reported: on a shared machine the fastest step is the one least disturbed) and the median."""
    runs, first, times = {}, {}, {}
    for name, side in sides.items():
        step = side.sft_step if kind == "sft" else side.dpo_step
        first[name], runs[name] = time_side(side, step, warmup)
        times[name] = []
    for _ in range(rounds):
        for name in sides:
            times[name] += runs[name](steps)
    best = {name: min(t) for name, t in times.items()}
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return best, median, first


def _rss_mib() -> float:
    """Peak resident set size of this process in MiB: VmHWM (Linux), else ru_maxrss. (ru_maxrss is kept
    across exec on Linux, so a probe started from this big process would report the parent's peak.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def probe(args):
    """Subprocess body: build one side, run a few steps of each measured kind, print peak RSS (MiB)."""
    out = {}
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        if args.probe == "ours":
            side = Ours(cfg, args.dtype, args.backend)
        else:
            import torch

            torch.set_num_threads(args.threads)
            device = "cuda" if (args.backend == "cupy" and torch.cuda.is_available()) else "cpu"
            import numpy as np

            from_state = {n: np.asarray(a) for n, a in _torch_init_state(cfg, args.dtype).items()}
            side = Torch(cfg, args.dtype, device, from_state, torch)
        side.sft_setup(make_batch(cfg))
        for _ in range(2):
            side.sft_step()
        out[name] = _rss_mib()
    print(json.dumps(out))


def profile(args, top=25):
    """cProfile of our SFT step (the --profile mode): the functions where the time goes, plus a per-kernel
    breakdown (each kernel call timed) and the GEMM share (the fused linear/attention ops of model.py)."""
    import cProfile
    import pstats

    cfg = CONFIGS[args.profile]
    ours = Ours(cfg, args.dtype, args.backend)
    ours.sft_setup(make_batch(cfg))
    k = ours.be.kernels
    spent = {}

    def timed(name, fn):
        def call(*a, **kw):
            t0 = CLOCK()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + CLOCK() - t0
        return call

    names = [n for n in dir(k) if n.endswith(("_forward", "_backward", "_update")) and callable(getattr(k, n))]
    for name in names:
        setattr(k, name, timed(name, getattr(k, name)))
    steps = args.steps or cfg["steps"]
    for _ in range(args.warmup):
        ours.sft_step()
    spent.clear()
    prof = cProfile.Profile(CLOCK)
    t0 = CLOCK()
    prof.enable()
    for _ in range(steps):
        ours.sft_step()
    prof.disable()
    per_step = (CLOCK() - t0) / steps
    print(f"config {args.profile}, {args.dtype}, kernels {k.accelerated and 'fast' or 'reference'}: "
          f"{per_step * 1e3:.1f} ms per step ({args.timer} clock, {steps} steps, under cProfile)")
    print("kernels (ms per step):")
    for name, t in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<26} {t / steps * 1e3:8.2f}")
    print(f"  {'all kernels':<26} {sum(spent.values()) / steps * 1e3:8.2f}")
    st = pstats.Stats(prof)
    fused = 0.0  # model.py's fused ops: their own time is their GEMMs (xp.matmul is not a profiled call)
    for (path, _line, func), (_cc, _nc, tottime, _ct, _callers) in st.stats.items():
        if path.endswith("fused.py") and func in ("linear_in_out", "linear", "causal_attention", "backward"):
            fused += tottime
    print(f"GEMMs (+ bias adds, masks) in model.py's fused linear/attention ops: {fused / steps * 1e3:.1f} ms per "
          f"step ({100 * fused / steps / per_step:.0f} %); kernels {100 * sum(spent.values()) / steps / per_step:.0f} %")
    st.sort_stats("tottime").print_stats(top)


def _torch_init_state(cfg, dtype):
    """Random weights with our shapes, without building our model (the torch probe must not)."""
    import numpy as np

    rng = np.random.default_rng(0)
    d, V, L = cfg["d"], cfg["vocab"], cfg["n_layer"]
    st = {"wte.weight": (V, d), "wpe.weight": (cfg["seq"], d)}
    for i in range(L):
        h = f"h.{i}."
        st.update({h + "ln_1.weight": (d,), h + "ln_1.bias": (d,), h + "attn.c_attn.weight": (d, 3 * d),
                   h + "attn.c_attn.bias": (3 * d,), h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,),
                   h + "ln_2.weight": (d,), h + "ln_2.bias": (d,), h + "mlp.c_fc.weight": (d, 4 * d),
                   h + "mlp.c_fc.bias": (4 * d,), h + "mlp.c_proj.weight": (4 * d, d), h + "mlp.c_proj.bias": (d,)})
    st.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return {n: (rng.standard_normal(s) * 0.02).astype(dtype) for n, s in st.items()}


def memory_probe(args, name, side):
    """Peak RSS (MiB) of one side on config `name`, from a fresh subprocess (None on failure)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", side, "--configs", name, "--dtype", args.dtype,
           "--backend", args.backend, "--threads", str(args.threads), "--allocator", args.allocator]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
        return json.loads(res.stdout.strip().splitlines()[-1])[name]
    except Exception as e:  # report, do not fail the benchmark
        print(f"  (memory probe {side}/{name} failed: {e})", file=sys.stderr)
        return None


# ============================ main =============================================================

def header(args, torch, np, peaks, be):
    lines = [
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}  "
        f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"python {platform.python_version()}  numpy {np.__version__}  torch {torch.__version__ if torch else '-'}",
        f"backend {args.backend}  dtype {args.dtype}  timer {args.timer}  threads {args.threads} (torch.set_num_threads, "
        + ", ".join(f"{v}={os.environ.get(v, '-')}" for v in THREAD_VARS) + ")",
        "allocator: " + (", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ALLOCATOR_ENV)),
        f"kernels: {be.kernels.accelerated or 'reference'}  "
        f"(VIETNAMESE_AI_KERNELS={os.environ.get('VIETNAMESE_AI_KERNELS', 'unset')})",
        "matmul peak (1024×1024, GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()),
    ]
    return lines


def main(argv=None):
    global CLOCK
    args = parse_args(argv)
    _ensure_env(args)
    if args.timer == "cpu":
        CLOCK = time.process_time
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.probe:
        return probe(args)
    if args.profile:
        return profile(args)
    import numpy as np

    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            torch = None
    from vietnamese_ai_ref import backends

    be = backends.set_backend(args.backend, dtype=args.dtype)
    device = "cpu"
    if torch is not None and args.backend == "cupy":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    def measure_peaks():
        out = {"ours": sgemm_peak(be.xp, be.dtype, be.synchronize)}
        if torch is not None:
            sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
            tdt = getattr(torch, args.dtype)

            class _TX:  # the two calls sgemm_peak needs, on torch
                @staticmethod
                def ones(shape, dtype):
                    return torch.ones(shape, dtype=tdt, device=device)

                @staticmethod
                def matmul(a, b, out=None):
                    return torch.matmul(a, b, out=out)

            out["torch"] = sgemm_peak(_TX, tdt, sync)
        return out

    peaks = measure_peaks()  # measured again at the end; the best of both is the reference
    peak = max(peaks.values())
    head = header(args, torch, np, peaks, be)
    for line in head:
        print(line)
    print()

    results = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        steps = args.steps or cfg["steps"]
        ours = Ours(cfg, args.dtype, args.backend)
        sides = {"ours": ours}
        if torch is not None:
            sides["torch"] = Torch(cfg, args.dtype, device, ours.state_dict(), torch)
        batch = make_batch(cfg)
        for s in sides.values():
            s.sft_setup(batch)
        kinds = [("train", "sft", cfg["batch"] * cfg["seq"])]
        if name == "B" and not args.no_dpo:
            kinds.append(("dpo", "dpo", 2 * cfg["batch"] * cfg["seq"]))
        for label, kind, tokens in kinds:
            if kind == "dpo":
                # fresh weights and optimiser state, so that the DPO step starts where SFT started
                ours = Ours(cfg, args.dtype, args.backend)
                sides = {"ours": ours}
                if torch is not None:
                    sides["torch"] = Torch(cfg, args.dtype, device, ours.state_dict(), torch)
                pairs = make_pairs(cfg)
                for s in sides.values():
                    s.dpo_setup(pairs)
            best, median, first = compare(sides, kind, steps, args.warmup, args.rounds)
            row = {"config": name, "kind": label, "dtype": args.dtype, "tokens_per_step": tokens,
                   "flops_per_token": flops_per_token(cfg), **{k: v for k, v in cfg.items() if k != "steps"}}
            for side, t in best.items():
                tps = tokens / t
                gf = tps * flops_per_token(cfg) / 1e9
                row[side] = {"step_s": t, "median_step_s": median[side], "tokens_per_s": tps, "gflops": gf,
                             "pct_peak": 100 * gf / peak, "first_loss": first[side]}
            if "torch" in row:
                row["ratio"] = row["ours"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
                row["first_loss_rel_diff"] = abs(first["ours"] - first["torch"]) / max(1e-30, abs(first["torch"]))
            results.append(row)
            _print_row(row)
        if name == "B" and not args.no_generate:
            results.append(_generation(cfg, args, ours, sides, np))
            _print_row(results[-1])
        if not args.no_memory and args.backend == "numpy":
            mem = {"ours": memory_probe(args, name, "ours")}
            if torch is not None:
                mem["torch"] = memory_probe(args, name, "torch")
            for r in results:
                if r["config"] == name and r["kind"] == "train":
                    for side, mib in mem.items():
                        r[side]["peak_rss_mib"] = mib
            print(f"  {name} peak RSS (MiB, separate processes, train step): "
                  + ", ".join(f"{k} {v if v is None else round(v)}" for k, v in mem.items()))
        del ours, sides
    for side, gf in measure_peaks().items():
        peaks[side] = max(peaks[side], gf)
    peak = max(peaks.values())
    for r in results:
        for side in ("ours", "torch"):
            if side in r and "gflops" in r[side]:
                r[side]["pct_peak"] = 100 * r[side]["gflops"] / peak
    print("\nmatmul peak, best of start and end (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + f"; % peak below is of {peak:.0f}")
    table = format_table(results, torch is not None)
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"header": head, "peak_gflops": peaks, "peak_reference_gflops": peak, "results": results,
                       "load_average_end": os.getloadavg()}, f, indent=2)
        print(f"\nwrote {args.json}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _generation(cfg, args, ours, sides, np):
    """Greedy KV-cache generation, batch rows × (seq - GEN_PROMPT) new tokens; tokens/s."""
    rng = np.random.default_rng(2)
    prompts = rng.integers(0, cfg["vocab"], size=(cfg["batch"], GEN_PROMPT)).tolist()
    new = cfg["seq"] - GEN_PROMPT
    row = {"config": "B", "kind": "generate", "dtype": args.dtype, "tokens_per_step": cfg["batch"] * new}
    outs = {}
    for side_name, side in sides.items():
        side.generate(prompts, 4)  # warm-up
        best = math.inf
        for _ in range(args.rounds):
            side.sync()
            t0 = CLOCK()
            outs[side_name] = side.generate(prompts, new)
            side.sync()
            best = min(best, CLOCK() - t0)
        row[side_name] = {"step_s": best, "tokens_per_s": cfg["batch"] * new / best}
    if "torch" in row:
        row["ratio"] = row["ours"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
        a, b = np.asarray(outs["ours"]), np.asarray(outs["torch"])
        row["same_tokens_fraction"] = float((a == b).mean())
    return row


def _print_row(r):
    o = r["ours"]
    msg = f"  {r['config']} {r['kind']:<8} ours {o['tokens_per_s']:9.1f} tok/s"
    if "median_step_s" in o:
        msg += f" (median step {o['median_step_s'] * 1e3:.0f} ms)"
    if "torch" in r:
        msg += f"  torch {r['torch']['tokens_per_s']:9.1f} tok/s"
        if "median_step_s" in r["torch"]:
            msg += f" (median step {r['torch']['median_step_s'] * 1e3:.0f} ms)"
        msg += f"  ratio {r['ratio']:.2f}"
    if "first_loss_rel_diff" in r:
        msg += f"  (first loss ours {o['first_loss']:.6f}, rel. diff {r['first_loss_rel_diff']:.1e})"
    if "same_tokens_fraction" in r:
        msg += f"  (same greedy tokens: {100 * r['same_tokens_fraction']:.0f} %)"
    print(msg, flush=True)


def format_table(results, with_torch):
    cols = ["config", "step", "ours tok/s", "ours GFLOP/s", "ours % peak", "ours RSS MiB"]
    if with_torch:
        cols += ["torch tok/s", "torch GFLOP/s", "torch % peak", "torch RSS MiB", "ours/torch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def f(side, key, fmt):
        v = side.get(key) if side else None
        return "–" if v is None else format(v, fmt)

    for r in results:
        o, t = r["ours"], r.get("torch")
        cells = [r["config"], r["kind"], f(o, "tokens_per_s", ".0f"), f(o, "gflops", ".1f"), f(o, "pct_peak", ".0f"),
                 f(o, "peak_rss_mib", ".0f")]
        if with_torch:
            cells += [f(t, "tokens_per_s", ".0f"), f(t, "gflops", ".1f"), f(t, "pct_peak", ".0f"),
                      f(t, "peak_rss_mib", ".0f"), f(r, "ratio", ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
