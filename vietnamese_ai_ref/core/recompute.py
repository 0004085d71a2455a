"""Activation recompute (gradient checkpointing): run a function without keeping its inner activations,
and run it again during backward to get its gradients.

What it is for: `recompute(fn, x, ...)`, one autograd node standing for `fn(x)` (a transformer block).
The forward runs `fn` under `no_grad`, so only its input and output stay alive; the backward runs `fn`
again on the saved input with the graph recorded and backpropagates the upstream gradient through that
graph at once (a nested `Tensor.backward`). Parameters used inside `fn` receive their gradients as
leaves of the nested pass (into their optimiser homes when they have one), the input's gradient
returns to the outer pass. Randomness inside `fn` (dropout) must replay: the caller passes `get_state`
/ `set_state` for its RNG; the recompute starts from the state the forward started from and leaves the
RNG where the forward left it. With the same masks the gradients equal those without recompute (the
same operations on the same arrays; tests/test_lora.py checks them bit for bit in float64).

What it is not: a memory planner. It trades one extra forward per block for the block's activations; a
parameter used both inside and outside `fn` is not supported (its two gradients would not be summed in
the outer pass's order), nor are higher-order gradients.
"""

from __future__ import annotations

from .autograd import Tensor, enable_grad, is_grad_enabled, no_grad

__all__ = ["recompute"]


def recompute(fn, x: Tensor, *, needs_grad: bool, get_state=None, set_state=None) -> Tensor:
    """`fn(x)` as one node that keeps only x and recomputes `fn` in backward.

    needs_grad: whether a parameter used inside `fn` requires grad (the node then records a graph even
    when x does not require grad, e.g. the first block of a model with frozen embeddings).
    get_state() -> state, set_state(state): the RNG inside `fn` (None: `fn` draws no random numbers).
    Without grad mode, or when nothing needs a gradient, this is just `fn(x)`.
    """
    if not is_grad_enabled() or not (needs_grad or x.requires_grad):
        return fn(x)
    start = get_state() if get_state is not None else None
    with no_grad():
        y = fn(x)
    saved = x.data

    def backward(g):
        end = get_state() if get_state is not None else None
        if set_state is not None:
            set_state(start)
        xi = Tensor(saved, requires_grad=x.requires_grad)
        with enable_grad():
            yi = fn(xi)
        if set_state is not None:
            set_state(end)
        if yi.requires_grad:
            yi.backward(Tensor(g))  # a Tensor: backward takes its array as it is (no cast to y's dtype)
        return (xi.grad,)

    out = Tensor(y.data, requires_grad=True)
    out._parents = (x,)
    out._backward = backward
    return out
