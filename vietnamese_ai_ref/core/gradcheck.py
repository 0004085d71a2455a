"""Gradient checker: backprop against central finite differences in float64.

What it is for: proving an op, a model or a loss differentiates correctly. The scalar that is
differentiated is s(x) = Σ u ⊙ f(x) with a *random* upstream gradient u (never all ones: a constant
upstream gradient hides softmax-style bugs, whose gradients sum to zero along an axis). Small inputs
are checked element by element; large ones along random unit directions v, comparing
(s(x + εv) − s(x − εv)) / 2ε with ⟨∇s, v⟩. On failure it raises `GradcheckError` naming the input,
the element (or direction) and the difference.

What it is not: a float32 tool. Run it under `use_backend(dtype="float64")`; it refuses other dtypes.
"""

from __future__ import annotations

from ..core.autograd import Tensor
from ..backends import get_backend


class GradcheckError(AssertionError):
    """Backprop and finite differences disagree."""


def gradcheck(
    fn,
    inputs,
    *,
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-6,
    max_elements: int = 64,
    n_directions: int = 6,
    seed: int = 0,
) -> dict:
    """Check the gradient of `fn(*inputs)` w.r.t. every input that requires grad.

    fn: Tensors -> Tensor (any shape). inputs: Tensors (float64). Inputs with at most `max_elements`
    elements are checked per element, larger ones along `n_directions` random directions.
    Returns {"max_abs_err": float, "checked": int} when all pass; raises GradcheckError otherwise.
    """
    be = get_backend()
    xp = be.xp
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != xp.float64:
            raise GradcheckError(f"gradcheck needs float64 inputs; input {i} is {t.dtype}")
    rng = be.host_rng(seed)

    out = fn(*inputs)
    u = be.asarray(rng.standard_normal(out.shape), dtype=xp.float64)  # random upstream gradient

    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    out.backward(u)
    analytic = [t.grad if isinstance(t, Tensor) and t.requires_grad else None for t in inputs]

    def scalar() -> float:
        return float((fn(*inputs).data * u).sum())

    worst, checked = 0.0, 0
    for i, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        g = analytic[i]
        if g is None:
            g = xp.zeros_like(t.data)
        if t.data.size <= max_elements:
            gflat = g.reshape(-1)
            for j in range(t.data.size):
                # index t.data itself: reshape(-1) of a non-contiguous array is a copy, not a view
                pos = _unravel(j, t.shape)
                orig = float(t.data[pos])
                t.data[pos] = orig + eps
                fp = scalar()
                t.data[pos] = orig - eps
                fm = scalar()
                t.data[pos] = orig
                err = _compare((fp - fm) / (2 * eps), float(gflat[j]), atol, rtol,
                               lambda: f"input {i} (shape {t.shape}) element {tuple(int(k) for k in pos)}")
                worst, checked = max(worst, err), checked + 1
        else:
            orig = t.data.copy()
            for d in range(n_directions):
                v = be.asarray(rng.standard_normal(t.shape), dtype=xp.float64)
                v /= float(xp.sqrt((v * v).sum()))
                t.data[...] = orig + eps * v
                fp = scalar()
                t.data[...] = orig - eps * v
                fm = scalar()
                t.data[...] = orig
                err = _compare((fp - fm) / (2 * eps), float((g * v).sum()), atol, rtol,
                               lambda: f"input {i} (shape {t.shape}) random direction {d}")
                worst, checked = max(worst, err), checked + 1
    return {"max_abs_err": worst, "checked": checked}


def _compare(num: float, ana: float, atol: float, rtol: float, where) -> float:
    """|num − ana|; GradcheckError naming `where()` when it exceeds atol + rtol·|num|."""
    err = abs(num - ana)
    if err > atol + rtol * abs(num):
        raise GradcheckError(f"{where()}: backprop {ana!r} vs finite difference {num!r} (|diff| {err:.3e})")
    return err


def _unravel(j, shape):
    idx = []
    for s in reversed(shape):
        idx.append(j % s)
        j //= s
    return tuple(reversed(idx))
