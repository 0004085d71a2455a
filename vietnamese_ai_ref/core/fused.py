"""Fused ops of the models, each one autograd node with its backward beside its forward.

What it is for: the layers' hot paths as single nodes — GPT-2's Conv1D linear (`linear_in_out`), the
nn.Linear layout (`linear`, also the LM head), a projection with its LoRA adapter (`lora_linear`), causal self-attention over a fused qkv
(`causal_attention`), and the Llama family's `silu`, `rms_norm` and rotary embedding (`apply_rotary`).
Each computes exactly what the composition of primitive ops it replaces computes, up to float rounding
(tests/test_model.py holds the fused attention equal to the composition; docs/doc-ma.md shows both),
with as few and as large GEMMs as possible, no zero-filled scatter buffers, and weight gradients
written straight into the optimiser's flat buffer when it has one (`grad_out`).
What it is not: a model (models/ composes these) or a place for new maths without a test against the
primitive-op form.
"""

from __future__ import annotations

import math

from ..backends import get_backend
from ..core import autograd as ag
from ..core.autograd import Tensor, _result, grad_out

__all__ = ["linear_in_out", "linear", "lora_linear", "column_sums", "causal_attention", "silu", "rms_norm", "apply_rotary",
           "rotate_half"]


def linear_in_out(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """GPT-2's Conv1D: x (..., k) @ w (k, n) + b (n,): one 2-D GEMM over all leading axes, the bias added in place.

    Backward: dx = g @ w.T, dw = x.T @ g, db = g summed over rows, each one 2-D GEMM / reduction.
    """
    xp = get_backend().xp
    xd, wd = x.data, w.data
    k, n = wd.shape
    X = xd.reshape(-1, k)  # (N, k)
    Y = xp.matmul(X, wd)  # (N, n)
    if b is not None:
        Y += b.data

    def backward(g):
        G = g.reshape(-1, n)  # (N, n)
        gx = xp.matmul(G, wd.T).reshape(xd.shape) if x.requires_grad else None
        gw = xp.matmul(X.T, G, out=grad_out(w)) if w.requires_grad else None  # into the optimiser's buffer
        gb = column_sums(xp, G, out=grad_out(b)) if (b is not None and b.requires_grad) else None
        return gx, gw, gb

    parents = (x, w) if b is None else (x, w, b)
    return _result(Y.reshape(xd.shape[:-1] + (n,)), parents, backward)


def column_sums(xp, G, out=None):
    """G (N, n) summed over its rows, as the matrix-vector product ones(N) @ G: BLAS' multi-threaded
    GEMV is 2-4x faster than a reduction over axis 0 (the bias gradient of a linear layer)."""
    return xp.matmul(xp.ones(G.shape[0], dtype=G.dtype), G, out=out)


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """nn.Linear: x (..., k) @ w.T + b for w (n, k) (the Llama projections and every LM head): 2-D GEMMs,
    dw = g.T @ x laid out like w, db = g summed over rows."""
    xp = get_backend().xp
    xd, wd = x.data, w.data
    n, k = wd.shape
    X = xd.reshape(-1, k)  # (N, k)
    Y = xp.matmul(X, wd.T)  # (N, n)
    if b is not None:
        Y += b.data

    def backward(g):
        G = g.reshape(-1, n)  # (N, n)
        gx = xp.matmul(G, wd).reshape(xd.shape) if x.requires_grad else None
        gw = xp.matmul(G.T, X, out=grad_out(w)) if w.requires_grad else None  # (n, k), laid out like w
        gb = column_sums(xp, G, out=grad_out(b)) if (b is not None and b.requires_grad) else None
        return gx, gw, gb

    parents = (x, w) if b is None else (x, w, b)
    return _result(Y.reshape(xd.shape[:-1] + (n,)), parents, backward)


def lora_linear(x: Tensor, w: Tensor, b: Tensor | None, A: Tensor, B: Tensor, scale: float, *,
                dropped: Tensor | None = None, in_out: bool = False) -> Tensor:
    """A projection with its LoRA adapter as one node: x @ W.T + b + ((xd @ A.T) · scale) @ B.T, where
    xd = `dropped` (the adapter's input after its dropout; x itself when None), A (r, k), B (n, r), and W is
    nn.Linear's (n, k) or, with `in_out`, GPT-2's Conv1D (k, n) (x @ W). The same values as the composition
    linear(x, W, b) + linear(linear(xd, A) * scale, B), but only the output and the narrow (N, r) activation
    are kept, not three (N, n) arrays (the base output, the adapter's output and their sum).

    Backward with G = g (N, n), H' = (G @ B) · scale (N, r): dA = H'.T @ xd, dB = G.T @ H (H = xd @ A.T · scale),
    dxd = H' @ A, dx = G @ W (+ dxd when xd is x); dW, db as `linear` / `linear_in_out` when they require grad.
    """
    xp = get_backend().xp
    xd, wd, Ad, Bd = x.data, w.data, A.data, B.data
    k, n = (wd.shape if in_out else wd.shape[::-1])
    X = xd.reshape(-1, k)  # (N, k)
    Xd = X if dropped is None else dropped.data.reshape(-1, k)  # (N, k)
    Y = xp.matmul(X, wd if in_out else wd.T)  # (N, n)
    if b is not None:
        Y += b.data
    H = xp.matmul(Xd, Ad.T)  # (N, r)
    H *= scale
    Y += xp.matmul(H, Bd.T)  # (N, n)

    def backward(g):
        G = g.reshape(-1, n)  # (N, n)
        Hg = xp.matmul(G, Bd)  # (N, r)
        Hg *= scale
        gA = xp.matmul(Hg.T, Xd, out=grad_out(A)) if A.requires_grad else None  # (r, k)
        gB = xp.matmul(G.T, H, out=grad_out(B)) if B.requires_grad else None  # (n, r)
        gxd = xp.matmul(Hg, Ad) if (dropped if dropped is not None else x).requires_grad else None  # (N, k)
        gx = None
        if x.requires_grad:
            gx = xp.matmul(G, wd.T if in_out else wd)  # (N, k)
            if dropped is None:
                gx += gxd
            gx = gx.reshape(xd.shape)
        gw = None
        if w.requires_grad:
            gw = xp.matmul(X.T, G, out=grad_out(w)) if in_out else xp.matmul(G.T, X, out=grad_out(w))
        gb = column_sums(xp, G, out=grad_out(b)) if (b is not None and b.requires_grad) else None
        grads = [gx, gw] + ([gb] if b is not None else []) + [gA, gB]
        if dropped is not None:
            grads.append(None if gxd is None else gxd.reshape(xd.shape))
        return tuple(grads)

    parents = [x, w] + ([b] if b is not None else []) + [A, B] + ([dropped] if dropped is not None else [])
    return _result(Y.reshape(xd.shape[:-1] + (n,)), tuple(parents), backward)


def causal_attention(qkv: Tensor, blocked, n_head: int) -> Tensor:
    """softmax(mask(q k^T / sqrt(hd))) v for the fused qkv (B, T, 3d) -> (B, T, d), heads side by side.

    The same computation as split + reshape/transpose + matmul + scale + masked_fill + softmax +
    matmul + transpose/reshape, as one node: q, k, v are strided views of qkv (no copies), the scores
    are scaled, masked and normalised in place, att @ v is written straight into the (B, T, H, hd)
    layout, and the backward writes dq, dk, dv into one (B, T, 3d) gradient (no zero-filled slices).
    Blocked positions have probability exactly 0, so their gradient is 0 without a mask pass.
    """
    be = get_backend()
    xp, kern = be.xp, be.kernels
    Q = qkv.data
    B, T, d3 = Q.shape
    d = d3 // 3
    hd = d // n_head
    heads = Q.reshape(B, T, 3, n_head, hd)
    q = heads[:, :, 0].transpose(0, 2, 1, 3)  # (B, H, T, hd) views
    k = heads[:, :, 1].transpose(0, 2, 1, 3)
    v = heads[:, :, 2].transpose(0, 2, 1, 3)
    scale = 1.0 / math.sqrt(hd)
    att = xp.matmul(q, k.transpose(0, 1, 3, 2))  # (B, H, T, T)
    att *= scale
    xp.copyto(att, float(xp.finfo(att.dtype).min), where=blocked)
    kern.softmax_forward(att, axis=-1, out=att)
    y = xp.empty((B, T, d), dtype=Q.dtype)
    xp.matmul(att, v, out=y.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3))

    def backward(g):
        gy = g.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        dqkv = xp.empty((B, T, 3, n_head, hd), dtype=g.dtype)
        dq, dk, dv = (dqkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        xp.matmul(att.transpose(0, 1, 3, 2), gy, out=dv)
        datt = xp.matmul(gy, v.transpose(0, 1, 3, 2))  # (B, H, T, T)
        kern.softmax_backward(datt, att, axis=-1, out=datt)
        datt *= scale
        xp.matmul(datt, k, out=dq)
        xp.matmul(datt.transpose(0, 1, 3, 2), q, out=dk)
        return (dqkv.reshape(B, T, d3),)

    return _result(y, (qkv,), backward)


def silu(a: Tensor) -> Tensor:
    """SiLU (swish): x · σ(x). d/dx = σ(x) · (1 + x · (1 − σ(x)))."""
    xp = get_backend().xp
    ad = a.data
    s = ag._sigmoid_array(xp, ad)  # σ(x), stable

    def backward(g):
        return (g * s * (1.0 + ad * (1.0 - s)),)

    return _result(ad * s, (a,), backward)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis: x / sqrt(mean(x²) + eps) * weight (transformers' LlamaRMSNorm).

    With x̂ = x·r, r = (mean(x²)+eps)^(-1/2) and ĝ = g·w: dx = r (ĝ − x̂ · mean(ĝ x̂)), dw = Σ g x̂.
    """
    xp = get_backend().xp
    xd, w = x.data, weight.data
    rstd = 1.0 / xp.sqrt((xd * xd).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xd * rstd  # (..., d)

    def backward(g):
        gh = g * w  # (..., d)
        dx = rstd * (gh - xhat * (gh * xhat).mean(axis=-1, keepdims=True)) if x.requires_grad else None
        dw = (g * xhat).reshape(-1, w.shape[-1]).sum(axis=0) if weight.requires_grad else None  # (N, d) -> (d,)
        return dx, dw

    return _result(xhat * w, (x, weight), backward)


def rotate_half(xp, a):
    """transformers' rotate_half: (x1, x2) -> (−x2, x1) over the two halves of the last axis."""
    h = a.shape[-1] // 2
    return xp.concatenate([-a[..., h:], a[..., :h]], axis=-1)


def apply_rotary(x: Tensor, cos, sin) -> Tensor:
    """Rotary embedding x·cos + rotate_half(x)·sin; cos/sin are constant arrays broadcastable to x.

    rotate_half is linear with transpose −rotate_half, so dx = g·cos − rotate_half(g·sin).
    """
    xp = get_backend().xp
    xd = x.data

    def backward(g):
        return (g * cos - rotate_half(xp, g * sin),)

    return _result(xd * cos + rotate_half(xp, xd) * sin, (x,), backward)
