"""The kernels layer: the hot operations, called through one namespace per backend.

What it is for: LayerNorm, GELU (tanh form), softmax / log-softmax, cross-entropy and the AdamW
update, each as a forward/backward pair of array functions. The versions here are the *reference*
kernels, written once over `xp` so they run unchanged on NumPy and CuPy; an accelerated version of a
kernel (fused CPU loops, CUDA kernels) may replace one in `KernelNamespace` and must then agree with
the reference (tests/test_kernels.py holds them to it).

What it is not: autograd. These functions take and return plain arrays; `vietnamese_ai_ref.autograd`
wraps them as differentiable ops.
"""

from __future__ import annotations

import math

GELU_C = math.sqrt(2.0 / math.pi)


class KernelNamespace:
    """The kernels of one backend. Attribute access returns functions bound to that backend's `xp`."""

    def __init__(self, backend):
        self.backend = backend
        self.xp = backend.xp
        self.accelerated: dict[str, str] = {}  # kernel name -> provider, for kernels replaced below

    # ---- LayerNorm over the last axis ------------------------------------------------------
    def layernorm_forward(self, x, w, b, eps):
        """y = (x - mean) * rstd * w + b. Returns (y, mean, rstd); mean/rstd keep a trailing axis of 1."""
        xp = self.xp
        mean = x.mean(axis=-1, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=-1, keepdims=True)  # biased variance, as torch
        rstd = 1.0 / xp.sqrt(var + eps)
        y = xc * rstd
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y, mean, rstd

    def layernorm_backward(self, dy, x, w, mean, rstd):
        """Gradients (dx, dw, db) of LayerNorm; dw/db are None when w/b were None (caller decides)."""
        xhat = (x - mean) * rstd
        red = tuple(range(dy.ndim - 1))
        dw = (dy * xhat).sum(axis=red)
        db = dy.sum(axis=red)
        g = dy * w if w is not None else dy
        n = x.shape[-1]
        dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).sum(axis=-1, keepdims=True) / n)
        return dx, dw, db

    # ---- GELU, tanh approximation (GPT-2's "gelu_new") ------------------------------------
    def gelu_forward(self, x):
        xp = self.xp
        return 0.5 * x * (1.0 + xp.tanh(GELU_C * (x + 0.044715 * x * x * x)))

    def gelu_backward(self, dy, x):
        xp = self.xp
        x2 = x * x
        t = xp.tanh(GELU_C * (x + 0.044715 * x2 * x))
        dt = GELU_C * (1.0 + 3.0 * 0.044715 * x2) * (1.0 - t * t)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * dt)

    # ---- softmax / log-softmax --------------------------------------------------------------
    def softmax_forward(self, x, axis=-1):
        xp = self.xp
        m = x.max(axis=axis, keepdims=True)
        e = xp.exp(x - m)
        return e / e.sum(axis=axis, keepdims=True)

    def softmax_backward(self, dy, y, axis=-1):
        return y * (dy - (dy * y).sum(axis=axis, keepdims=True))

    def log_softmax_forward(self, x, axis=-1):
        xp = self.xp
        m = x.max(axis=axis, keepdims=True)
        z = x - m
        return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))

    def log_softmax_backward(self, dy, y, axis=-1):
        xp = self.xp
        return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)

    # ---- cross-entropy over rows of logits ----------------------------------------------------
    def cross_entropy_forward(self, logits, targets, ignore_index=-100):
        """Per-row loss -log softmax(logits)[target] for logits (N, V), int targets (N,).

        Rows whose target is `ignore_index` get loss 0. Returns (losses (N,), logsumexp (N,), valid (N,) bool).
        """
        xp = self.xp
        valid = targets != ignore_index
        safe = xp.where(valid, targets, 0)
        m = logits.max(axis=-1)
        lse = m + xp.log(xp.exp(logits - m[:, None]).sum(axis=-1))
        picked = xp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
        losses = xp.where(valid, lse - picked, 0.0).astype(logits.dtype)
        return losses, lse, valid

    def cross_entropy_backward(self, dlosses, logits, targets, lse, valid):
        """d logits = (softmax - onehot(target)) * dloss per row; ignored rows get 0."""
        xp = self.xp
        g = xp.where(valid, dlosses, 0.0).astype(logits.dtype)
        p = xp.exp(logits - lse[:, None])
        p *= g[:, None]
        rows = xp.arange(logits.shape[0])
        safe = xp.where(valid, targets, 0)
        p[rows, safe] -= g
        return p

    # ---- AdamW over flat buffers (decoupled weight decay, as torch.optim.AdamW) ---------------
    def adamw_update(self, param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
        """In-place AdamW step on flat arrays. `weight_decay` is a scalar or an array (0 where no decay).

        param <- param * (1 - lr*wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
        param <- param - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)      (torch's formula)
        """
        xp = self.xp
        param *= 1.0 - lr * weight_decay
        m *= beta1
        m += (1.0 - beta1) * grad
        v *= beta2
        v += (1.0 - beta2) * (grad * grad)
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
        denom = xp.sqrt(v) / math.sqrt(bc2) + eps
        param -= (lr / bc1) * (m / denom)
