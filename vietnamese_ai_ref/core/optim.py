"""AdamW over flat parameter buffers, the linear warmup/decay schedule and global-norm clipping.

What it is for: the optimiser semantics spec/losses.md fixes (torch.optim.AdamW's update,
transformers' `get_linear_schedule_with_warmup` and `clip_grad_norm_`). Parameters are re-homed into
two flat buffers (with and without weight decay) so that one kernel call updates each group; every
`Parameter.data` becomes a view into its group's buffer, so the model sees the update in place.
Likewise every parameter's `grad_home` is a view into the group's flat gradient buffer, where the
model's fused ops write weight gradients during backward (see autograd), so that `gather_grads` only
copies the gradients that did not land there. The clipping coefficient of `scale_grads` is applied
inside the update (`adamw_update(grad_scale=...)`) instead of in a pass of its own: the gradient
buffers (and `.grad`) keep the unclipped gradient, exactly as the update sees `grad * coef`.

Frozen parameters (`requires_grad` False: a base model under LoRA) are left out: no buffer, no state,
no update (`decay_groups`).

What it is not: a general optimiser zoo. One optimiser, one schedule.
"""

from __future__ import annotations

import math

from ..backends import get_backend


def no_decay(name: str, param) -> bool:
    """Biases and LayerNorm weights get no weight decay (transformers' rule); everything else does."""
    return param.ndim < 2 or name.endswith(".bias") or ".ln_" in name or name.startswith("ln_")


def decay_groups(named_params: dict) -> tuple:
    """(with decay, without decay): lists of (name, param) of the parameters that require grad, in order."""
    live = [(n, p) for n, p in named_params.items() if getattr(p, "requires_grad", True)]
    return [(n, p) for n, p in live if not no_decay(n, p)], [(n, p) for n, p in live if no_decay(n, p)]


class _Group:
    def __init__(self, names, params, weight_decay):
        be = get_backend()
        xp = be.xp
        self.names = names
        self.params = params
        self.weight_decay = weight_decay
        sizes = [p.data.size for p in params]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        n = self.offsets[-1]
        dtype = params[0].data.dtype if params else be.dtype
        self.data = xp.empty(n, dtype=dtype)
        self.grad = xp.zeros(n, dtype=dtype)
        self.m = xp.zeros(n, dtype=dtype)
        self.v = xp.zeros(n, dtype=dtype)
        self.homes = []  # the (parameter, home) pairs this group set: backward may write gradients there
        for p, a, b in zip(params, self.offsets, self.offsets[1:]):
            self.data[a:b] = p.data.reshape(-1)
            p.data = self.data[a:b].reshape(p.data.shape)  # a view: updates land in the model
            if hasattr(p, "grad_home"):  # a Parameter
                p.grad_home = self.grad[a:b].reshape(p.data.shape)
                self.homes.append((p, p.grad_home))

    def gather_grads(self):
        """Copy each parameter's .grad into the flat gradient buffer (zeros where a grad is None);
        gradients that backward wrote into their home already are there."""
        spans = [(p, a, b) for p, a, b in zip(self.params, self.offsets, self.offsets[1:])
                 if p.grad is None or p.grad is not getattr(p, "grad_home", None)]
        if not spans:
            return

        def copy(part):  # the pieces of the parameters that fall inside `part` of the flat buffer
            for p, a, b in spans:
                lo, hi = max(a, part.start), min(b, part.stop)
                if lo >= hi:
                    continue
                if p.grad is None:
                    self.grad[lo:hi] = 0
                else:
                    self.grad[lo:hi] = p.grad.reshape(-1)[lo - a:hi - a]

        get_backend().kernels.parallel_parts(copy, self.offsets[-1])  # threads for large models


class AdamW:
    """torch.optim.AdamW semantics (betas 0.9/0.999, eps 1e-8, decoupled decay) over flat buffers."""

    def __init__(self, named_params: dict, lr: float, weight_decay: float = 0.0,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.grad_scale = 1.0  # set by scale_grads, applied (and reset) by the next step
        decay, nodecay = decay_groups(named_params)
        self.groups = [
            _Group([n for n, _ in g], [p for _, p in g], wd)
            for g, wd in ((decay, weight_decay), (nodecay, 0.0))
            if g
        ]

    def zero_grad(self):
        for g in self.groups:
            for p in g.params:
                p.grad = None

    def gather_grads(self):
        for g in self.groups:
            g.gather_grads()

    def release_grad_homes(self):
        """Detach the parameters from this optimiser's gradient buffer (the trainers call it when their
        loop ends), so that a trained model does not keep the buffer alive: `grad_home` becomes None
        and a `.grad` still living in the buffer becomes a copy of its own."""
        for g in self.groups:
            for p, home in g.homes:
                if p.grad_home is not home:
                    continue  # re-homed by another optimiser since
                if p.grad is home:
                    p.grad = home.copy()
                p.grad_home = None
            g.homes = []

    def grad_norm(self) -> float:
        """Global L2 norm of all gradients (call after gather_grads)."""
        k = get_backend().kernels
        return math.sqrt(sum(k.sum_of_squares(g.grad) for g in self.groups))

    def scale_grads(self, coef: float):
        """Make the next step use the gradients times `coef` (gradient clipping). The multiplication
        happens inside the update, element by element as `grad * coef` in the gradient's dtype (what
        scaling the buffer in place would give), so the gradient buffers are not rewritten."""
        self.grad_scale *= coef

    def step(self, lr: float):
        """One update with learning rate `lr` from the gathered gradients (times `scale_grads`' coef)."""
        k = get_backend().kernels
        self.step_count += 1
        b1, b2 = self.betas
        for g in self.groups:
            k.adamw_update(g.data, g.grad, g.m, g.v, lr=lr, beta1=b1, beta2=b2, eps=self.eps,
                           weight_decay=g.weight_decay, step=self.step_count, grad_scale=self.grad_scale)
        self.grad_scale = 1.0

    def state_arrays(self) -> dict:
        """Optimiser state as named arrays (for checkpoints)."""
        out = {}
        for i, g in enumerate(self.groups):
            out[f"group{i}.m"] = g.m
            out[f"group{i}.v"] = g.v
        return out


def linear_schedule(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate for optimiser step `step` (0-based), as transformers'
    get_linear_schedule_with_warmup: step/W during warmup, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """W = ceil(T · warmup_ratio) (transformers ≥ 4.57)."""
    return int(math.ceil(total_steps * warmup_ratio))


def clip_coefficient(total_norm: float, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_: coef = max_norm / (total + 1e-6), clamped to at most 1."""
    if max_norm is None or max_norm <= 0:
        return 1.0
    return min(1.0, max_norm / (total_norm + 1e-6))
