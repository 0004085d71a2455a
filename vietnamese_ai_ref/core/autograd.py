"""A minimal reverse-mode autograd over the backend's `xp` arrays.

What it is for: `Tensor` (`.data`, `.grad`, `requires_grad`) and the ops a GPT-style transformer and
the alignment losses need. Each op is one function: its forward computes the output array, and its
`backward` closure, written right below, maps the output's gradient to the inputs' gradients from the
arrays it saved explicitly. `Tensor.backward()` walks the graph in reverse topological order,
accumulates gradients on leaves (`+=`, like torch) and frees the graph as it goes.

Gradient homes (performance): an optimiser may give a Parameter a *home* (`Parameter.grad_home`, a
view into its flat gradient buffer). Ops that produce a large weight gradient ask `grad_out(p)` for
it and write the gradient there with `out=`, and further contributions to the same parameter in the
same pass are added into it in place (`grad_accumulator(p)`), so the optimiser need not copy
gradients into its buffer afterwards. The values are exactly those without homes.

What it is not: a general tensor library. No in-place ops on graph tensors, no higher-order
gradients, no views that alias a parent's gradient. Integer tensors never require grad.

It is over 600 lines on purpose: every primitive op keeps its backward beside its forward, and the
`Tensor` operators call them, so the ops and the class they serve stay one module a reader walks
through top to bottom (micrograd's layout) rather than two that import each other.
"""

from __future__ import annotations

import builtins
import contextlib

from ..backends import add_at, get_backend

__all__ = [
    "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "Parameter",
    "add", "sub", "mul", "div", "neg", "power", "matmul", "reshape", "transpose", "getitem",
    "concat", "split", "stack", "sum", "mean", "max", "exp", "log", "tanh", "sqrt", "sigmoid",
    "logsigmoid", "relu", "gelu", "embedding", "softmax", "log_softmax", "layer_norm",
    "cross_entropy", "masked_fill", "where", "dropout", "gather_last",
]

_grad_enabled = True

#: During Tensor.backward(): {"grads": id -> gradient so far, "homes": ids whose entry is the home}.
_pass = None


def _FREED(g):  # marks a non-leaf node whose graph an earlier backward() released
    raise RuntimeError("the graph was already freed by an earlier backward()")


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record no graph (reference models, evaluation, generation)."""
    global _grad_enabled
    prev = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = prev


@contextlib.contextmanager
def enable_grad():
    """Inside this block ops record the graph again (activation recompute inside a backward pass)."""
    global _grad_enabled
    prev = _grad_enabled
    _grad_enabled = True
    try:
        yield
    finally:
        _grad_enabled = prev


def is_grad_enabled() -> bool:
    return _grad_enabled


class Tensor:
    """An array with an optional gradient. `data` is an array of the current backend."""

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "name", "__weakref__")
    __array_priority__ = 1000  # so that `ndarray * Tensor` defers to Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        be = get_backend()
        if isinstance(data, Tensor):
            data = data.data
        if not be.is_array(data):
            data = be.asarray(data)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require grad, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents: tuple = ()
        self._backward = None
        self.name = name

    # -- basic properties -----------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def T(self):
        return transpose(self)

    def __len__(self):
        return self.data.shape[0]

    def __repr__(self):
        rg = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{rg})"

    def numpy(self):
        """Host NumPy copy of the data."""
        return get_backend().to_numpy(self.data)

    def item(self) -> float:
        """The one element as a Python float: an explicit device-to-host copy (Backend.to_numpy)."""
        if self.data.size != 1:
            _raise_item(self.shape)
        return float(get_backend().to_numpy(self.data).reshape(-1)[0])

    def detach(self) -> "Tensor":
        return Tensor(self.data, requires_grad=False)

    def zero_grad(self):
        self.grad = None

    # -- reverse mode ---------------------------------------------------------------------
    def backward(self, grad=None):
        """Backpropagate from this tensor. `grad` defaults to ones for a scalar; required otherwise.

        Leaves (tensors without parents) that require grad accumulate into `.grad`. The graph is
        freed afterwards: calling backward twice through the same graph raises.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        be = get_backend()
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() needs a gradient for a non-scalar output of shape {self.shape}")
            grad = be.xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else be.asarray(grad, dtype=self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"gradient shape {grad.shape} != tensor shape {self.shape}")
        global _pass
        order = _topological_order(self)
        grads = {id(self): grad}
        outer, _pass = _pass, {"grads": grads, "homes": set()}
        try:
            for node in reversed(order):
                g = grads.pop(id(node), None)
                if g is None:
                    continue
                if node._backward is None:  # leaf
                    if node.grad is None:
                        node.grad = g
                    elif node.grad is getattr(node, "grad_home", None):
                        node.grad += g  # the optimiser's buffer: accumulate in place
                    else:
                        node.grad = node.grad + g
                    continue
                if node._backward is _FREED:
                    raise RuntimeError("the graph was already freed by an earlier backward()")
                parent_grads = node._backward(g)
                for p, pg in zip(node._parents, parent_grads):
                    if pg is None or not p.requires_grad:
                        continue
                    if pg.shape != p.shape:  # a backward must return exactly the parent's shape
                        raise AssertionError(f"internal: grad shape {pg.shape} for parent {p.shape}")
                    k = id(p)
                    if k not in grads:
                        grads[k] = pg
                    elif k in _pass["homes"]:
                        grads[k] += pg  # the home buffer is ours: add in place
                    else:
                        grads[k] = grads[k] + pg
                node._parents = ()
                node._backward = _FREED
        finally:
            _pass = outer

    # -- operators ----------------------------------------------------------------------------
    def __add__(self, o): return add(self, o)
    def __radd__(self, o): return add(o, self)
    def __sub__(self, o): return sub(self, o)
    def __rsub__(self, o): return sub(o, self)
    def __mul__(self, o): return mul(self, o)
    def __rmul__(self, o): return mul(o, self)
    def __truediv__(self, o): return div(self, o)
    def __rtruediv__(self, o): return div(o, self)
    def __neg__(self): return neg(self)
    def __pow__(self, p): return power(self, p)
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)
    def __getitem__(self, idx): return getitem(self, idx)

    def reshape(self, *shape): return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def transpose(self, *axes): return transpose(self, axes if axes else None) if len(axes) != 1 else transpose(self, axes[0])
    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def exp(self): return exp(self)
    def log(self): return log(self)
    def tanh(self): return tanh(self)
    def sqrt(self): return sqrt(self)


def _raise_item(shape):
    raise ValueError(f"item() needs a tensor with one element, got shape {shape}")


class Parameter(Tensor):
    """A leaf tensor that requires grad: a trainable weight.

    `grad_home` (None unless an optimiser sets it): an array of the parameter's shape where backward
    may write the gradient directly (see the module docstring); `.grad` is then that array."""

    __slots__ = ("grad_home",)

    def __init__(self, data, name: str | None = None):
        super().__init__(data, requires_grad=True, name=name)
        self.grad_home = None


def grad_out(p: Tensor):
    """For an op's backward: the array to write `p`'s gradient into (`out=`) and return, or None.

    It is `p.grad_home` when p has one, has no gradient yet (`p.grad is None`) and no op of the
    current backward pass has produced a gradient for p yet; the home is then taken for this pass."""
    home = getattr(p, "grad_home", None)
    if home is None or _pass is None or p.grad is not None or id(p) in _pass["grads"]:
        return None
    _pass["homes"].add(id(p))
    return home


def grad_accumulator(p: Tensor):
    """For an op's backward: the array already holding `p`'s gradient in this pass when it is p's home
    (an op may add its contribution into it in place and return None for p), else None."""
    if _pass is None or id(p) not in _pass["homes"]:
        return None
    return _pass["grads"].get(id(p))


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """A Tensor from a list, a host array or a backend array (floats get the policy dtype)."""
    be = get_backend()
    return Tensor(be.asarray(data, dtype=dtype), requires_grad=requires_grad)


def _topological_order(root: Tensor) -> list:
    """Nodes that require grad, parents before children (iterative DFS: no recursion limit)."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p.requires_grad and id(p) not in seen:
                stack.append((p, False))
    return order


def _as_tensor(x, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    be = get_backend()
    dtype = like.dtype if (like is not None and like.dtype.kind == "f") else None
    return Tensor(be.asarray(x, dtype=dtype))


def _result(data, parents, backward) -> Tensor:
    """Wrap an op's output; record the graph only when grad is enabled and a parent needs it."""
    out = Tensor(data)
    if _grad_enabled and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents = tuple(parents)
        out._backward = backward
    return out


def _unbroadcast(g, shape):
    """Sum a broadcast gradient back down to `shape` (leading axes, then size-1 axes)."""
    if g.shape == tuple(shape):
        return g
    nlead = g.ndim - len(shape)
    if nlead > 0:
        g = g.sum(axis=tuple(range(nlead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


# ============================ elementwise arithmetic ==========================================

def add(a, b) -> Tensor:
    a, b = _as_tensor(a, b if isinstance(b, Tensor) else None), _as_tensor(b, a if isinstance(a, Tensor) else None)
    out = a.data + b.data

    def backward(g):
        return _unbroadcast(g, a.shape), _unbroadcast(g, b.shape)

    return _result(out, (a, b), backward)


def sub(a, b) -> Tensor:
    a, b = _as_tensor(a, b if isinstance(b, Tensor) else None), _as_tensor(b, a if isinstance(a, Tensor) else None)
    out = a.data - b.data

    def backward(g):
        return _unbroadcast(g, a.shape), _unbroadcast(-g, b.shape)

    return _result(out, (a, b), backward)


def mul(a, b) -> Tensor:
    a, b = _as_tensor(a, b if isinstance(b, Tensor) else None), _as_tensor(b, a if isinstance(a, Tensor) else None)
    ad, bd = a.data, b.data  # saved for backward
    out = ad * bd

    def backward(g):
        return (
            _unbroadcast(g * bd, a.shape) if a.requires_grad else None,
            _unbroadcast(g * ad, b.shape) if b.requires_grad else None,
        )

    return _result(out, (a, b), backward)


def div(a, b) -> Tensor:
    a, b = _as_tensor(a, b if isinstance(b, Tensor) else None), _as_tensor(b, a if isinstance(a, Tensor) else None)
    ad, bd = a.data, b.data
    out = ad / bd

    def backward(g):
        return (
            _unbroadcast(g / bd, a.shape) if a.requires_grad else None,
            _unbroadcast(-g * ad / (bd * bd), b.shape) if b.requires_grad else None,
        )

    return _result(out, (a, b), backward)


def neg(a: Tensor) -> Tensor:
    def backward(g):
        return (-g,)

    return _result(-a.data, (a,), backward)


def power(a: Tensor, p: float) -> Tensor:
    """a ** p for a Python-number exponent p."""
    if isinstance(p, Tensor):
        raise TypeError("power() takes a Python number as exponent")
    ad = a.data
    out = ad**p

    def backward(g):
        return (g * p * ad ** (p - 1),)

    return _result(out, (a,), backward)


# ============================ linear algebra ===================================================

def matmul(a, b) -> Tensor:
    """Batched matrix product with broadcasting over leading axes (both operands at least 2-D)."""
    a, b = _as_tensor(a), _as_tensor(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands of at least 2 dimensions, got {a.shape} @ {b.shape}")
    xp = get_backend().xp
    ad, bd = a.data, b.data
    out = xp.matmul(ad, bd)

    def backward(g):
        ga = gb = None
        if a.requires_grad:
            ga = _unbroadcast(xp.matmul(g, xp.swapaxes(bd, -1, -2)), a.shape)
        if b.requires_grad:
            if ad.ndim > 2 and bd.ndim == 2:
                # (..., m, k)^T @ (..., m, n) summed over batch == one GEMM on flattened rows
                gb = xp.matmul(ad.reshape(-1, ad.shape[-1]).T, g.reshape(-1, g.shape[-1]))
            else:
                gb = _unbroadcast(xp.matmul(xp.swapaxes(ad, -1, -2), g), b.shape)
        return ga, gb

    return _result(out, (a, b), backward)


# ============================ shape ops ========================================================

def reshape(a: Tensor, shape) -> Tensor:
    old = a.shape

    def backward(g):
        return (g.reshape(old),)

    return _result(a.data.reshape(shape), (a,), backward)


def transpose(a: Tensor, axes=None) -> Tensor:
    """Permute axes (`axes=None` reverses them, like ndarray.transpose)."""
    xp = get_backend().xp
    if axes is None:
        axes = tuple(reversed(range(a.ndim)))
    axes = tuple(ax % a.ndim for ax in axes)
    inv = tuple(sorted(range(len(axes)), key=axes.__getitem__))  # inverse permutation

    def backward(g):
        return (xp.transpose(g, inv),)

    return _result(xp.transpose(a.data, axes), (a,), backward)


def getitem(a: Tensor, idx) -> Tensor:
    """Basic slicing and integer-array indexing. Backward scatters with add-at (repeats accumulate)."""
    xp = get_backend().xp
    if isinstance(idx, Tensor):
        idx = idx.data
    shape, dtype = a.shape, a.dtype
    out = a.data[idx]

    def backward(g):
        ga = xp.zeros(shape, dtype=dtype)
        if _is_basic_index(idx):
            ga[idx] = g  # basic slices never repeat an element: a plain copy, no read-add-write
        else:
            _add_at(xp, ga, idx, g)
        return (ga,)

    return _result(out, (a,), backward)


def _fill_zero(a):
    a.fill(0)
    return a


def _is_basic_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


def _add_at(xp, target, idx, values):
    """target[idx] += values in place, repeated indices accumulating (numpy.add.at semantics).

    `xp.add.at` where the namespace has it (NumPy, CuPy >= 12), else `cupyx.scatter_add` (older
    CuPy): `backends.add_at` picks, so that only the backend layer knows CuPy's spelling."""
    add_at(xp, target, idx, values)


def concat(tensors, axis: int = 0) -> Tensor:
    xp = get_backend().xp
    tensors = [_as_tensor(t) for t in tensors]
    sizes = [t.shape[axis] for t in tensors]
    bounds = [int(s) for s in _cumsum(sizes)[:-1]]

    def backward(g):
        return tuple(xp.split(g, bounds, axis=axis))

    return _result(xp.concatenate([t.data for t in tensors], axis=axis), tuple(tensors), backward)


def _cumsum(xs):
    out, s = [], 0
    for x in xs:
        s += x
        out.append(s)
    return out


def split(a: Tensor, sections, axis: int = -1) -> list:
    """Split into pieces: `sections` is a count of equal parts or a list of sizes. Each piece is a view op."""
    n = a.shape[axis]
    if isinstance(sections, int):
        if n % sections:
            raise ValueError(f"cannot split an axis of size {n} into {sections} equal parts")
        sizes = [n // sections] * sections
    else:
        sizes = list(sections)
        if builtins.sum(sizes) != n:
            raise ValueError(f"split sizes {sizes} do not add up to {n}")
    ax = axis % a.ndim
    out, start = [], 0
    for s in sizes:
        idx = (slice(None),) * ax + (slice(start, start + s),)
        out.append(getitem(a, idx))
        start += s
    return out


def stack(tensors, axis: int = 0) -> Tensor:
    tensors = [_as_tensor(t) for t in tensors]
    expanded = [reshape(t, t.shape[:axis % (t.ndim + 1)] + (1,) + t.shape[axis % (t.ndim + 1):]) for t in tensors]
    return concat(expanded, axis=axis)


# ============================ reductions =======================================================

def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _expand_reduced(g, shape, axes):
    """Broadcastable gradient of a reduction without keepdims: re-insert the reduced axes."""
    return g.reshape(tuple(1 if i in axes else s for i, s in enumerate(shape)))


def sum(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    xp = get_backend().xp
    axes = _norm_axes(axis, a.ndim)
    shape = a.shape

    def backward(g):
        return (xp.broadcast_to(_expand_reduced(g, shape, axes), shape).copy(),)

    return _result(a.data.sum(axis=axes, keepdims=keepdims), (a,), backward)


def mean(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    xp = get_backend().xp
    axes = _norm_axes(axis, a.ndim)
    shape = a.shape
    n = 1
    for ax in axes:
        n *= shape[ax]

    def backward(g):
        return (xp.broadcast_to(_expand_reduced(g, shape, axes) / n, shape).copy(),)

    return _result(a.data.mean(axis=axes, keepdims=keepdims), (a,), backward)


def max(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum over axes; the gradient is shared equally among tied maxima (like torch.amax)."""
    axes = _norm_axes(axis, a.ndim)
    ad = a.data
    m = ad.max(axis=axes, keepdims=True)

    def backward(g):
        mask = (ad == m).astype(ad.dtype)
        mask /= mask.sum(axis=axes, keepdims=True)
        return (mask * _expand_reduced(g, ad.shape, axes),)

    out = m if keepdims else m.reshape(tuple(s for i, s in enumerate(ad.shape) if i not in axes))
    return _result(out, (a,), backward)


# ============================ elementwise functions ============================================

def exp(a: Tensor) -> Tensor:
    out = get_backend().xp.exp(a.data)

    def backward(g):
        return (g * out,)

    return _result(out, (a,), backward)


def log(a: Tensor) -> Tensor:
    ad = a.data

    def backward(g):
        return (g / ad,)

    return _result(get_backend().xp.log(ad), (a,), backward)


def tanh(a: Tensor) -> Tensor:
    out = get_backend().xp.tanh(a.data)

    def backward(g):
        return (g * (1.0 - out * out),)

    return _result(out, (a,), backward)


def sqrt(a: Tensor) -> Tensor:
    out = get_backend().xp.sqrt(a.data)

    def backward(g):
        return (g / (2.0 * out),)

    return _result(out, (a,), backward)


def relu(a: Tensor) -> Tensor:
    ad = a.data

    def backward(g):
        return (g * (ad > 0),)

    return _result(ad * (ad > 0), (a,), backward)


def _sigmoid_array(xp, x):
    """Stable logistic: never exponentiates a positive number."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid(a: Tensor) -> Tensor:
    xp = get_backend().xp
    out = _sigmoid_array(xp, a.data)

    def backward(g):
        return (g * out * (1.0 - out),)

    return _result(out, (a,), backward)


def logsigmoid(a: Tensor) -> Tensor:
    """log σ(x) = min(x, 0) - log1p(exp(-|x|)): finite for any finite x (|x| up to 1e4 and beyond)."""
    xp = get_backend().xp
    ad = a.data
    out = xp.minimum(ad, 0.0) - xp.log1p(xp.exp(-xp.abs(ad)))

    def backward(g):
        return (g * _sigmoid_array(xp, -ad),)  # d/dx log σ(x) = σ(-x)

    return _result(out.astype(ad.dtype), (a,), backward)


def gelu(a: Tensor) -> Tensor:
    """GELU, tanh approximation (GPT-2). Forward and backward from the kernels layer."""
    k = get_backend().kernels
    ad = a.data

    def backward(g):
        return (k.gelu_backward(g, ad),)

    return _result(k.gelu_forward(ad), (a,), backward)


# ============================ fused neural-network ops =========================================

def embedding(weight: Tensor, ids) -> Tensor:
    """Rows of `weight` (V, d) picked by integer `ids` (any shape) -> (*ids.shape, d).

    Backward scatter-adds into the rows, so a token id that repeats accumulates its gradients.
    """
    be = get_backend()
    xp = be.xp
    ids = ids.data if isinstance(ids, Tensor) else be.asarray(ids)
    V, d = weight.shape
    out = weight.data[ids]  # (*ids.shape, d)

    def backward(g):
        acc = grad_accumulator(weight)  # a tied weight whose home already holds the head's gradient
        if acc is None:
            gw = grad_out(weight)
            gw = xp.zeros((V, d), dtype=g.dtype) if gw is None else _fill_zero(gw)
        else:
            gw = acc
        flat, rows = ids.reshape(-1), g.reshape(-1, d)  # (N,) ids, (N, d) rows into (V, d)
        if be.name == "numpy" and flat.size > 1:
            # sort the ids, then one reduceat sums each id's rows (about 2x faster than add.at here)
            order = xp.argsort(flat, kind="stable")
            s = flat[order]
            starts = xp.flatnonzero(xp.concatenate((xp.ones(1, dtype=bool), s[1:] != s[:-1])))
            sums = xp.add.reduceat(rows[order], starts, axis=0)  # one row per distinct id
            if acc is None:
                gw[s[starts]] = sums
            else:
                gw[s[starts]] += sums  # distinct rows: fancy-index += adds each once
        else:
            _add_at(xp, gw, flat, rows)
        return (None if acc is not None else gw,)

    return _result(out, (weight,), backward)


def softmax(a: Tensor, axis: int = -1) -> Tensor:
    k = get_backend().kernels
    out = k.softmax_forward(a.data, axis=axis)

    def backward(g):
        return (k.softmax_backward(g, out, axis=axis),)

    return _result(out, (a,), backward)


def log_softmax(a: Tensor, axis: int = -1) -> Tensor:
    k = get_backend().kernels
    out = k.log_softmax_forward(a.data, axis=axis)

    def backward(g):
        return (k.log_softmax_backward(g, out, axis=axis),)

    return _result(out, (a,), backward)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last axis (biased variance, eps inside the sqrt, as torch)."""
    k = get_backend().kernels
    w = weight.data if weight is not None else None
    b = bias.data if bias is not None else None
    xd = x.data
    y, mu, rstd = k.layernorm_forward(xd, w, b, eps)

    def backward(g):
        dx, dw, db = k.layernorm_backward(g, xd, w, mu, rstd)
        return (dx, dw if weight is not None else None, db if bias is not None else None)

    parents = (x,) + ((weight,) if weight is not None else (Tensor(0.0),)) + ((bias,) if bias is not None else (Tensor(0.0),))
    return _result(y, parents, backward)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (..., V) against integer targets (...), `ignore_index` rows skipped.

    reduction: "none" (per position, 0 where ignored), "sum", or "mean" (over non-ignored positions;
    raises if there are none: a loss over zero tokens is undefined, not NaN).
    """
    be = get_backend()
    k, xp = be.kernels, be.xp
    t = targets.data if isinstance(targets, Tensor) else be.asarray(targets)
    V = logits.shape[-1]
    lead = logits.shape[:-1]
    if t.shape != lead:
        raise ValueError(f"targets shape {t.shape} does not match logits {logits.shape} without the last axis")
    L2 = logits.data.reshape(-1, V)  # (N, V)
    t1 = t.reshape(-1)  # (N,)
    bad = (t1 != ignore_index) & ((t1 < 0) | (t1 >= V))
    if bool(bad.any()):
        raise ValueError(
            f"`labels` chứa token id ngoài [0, {V}) khác {ignore_index} / `labels` target ids must lie in "
            f"[0, {V}) or equal ignore_index={ignore_index}; got {int(bad.sum())} out-of-range id(s)"
        )
    losses, lse, valid = k.cross_entropy_forward(L2, t1, ignore_index)
    if reduction == "none":
        out = losses.reshape(lead)
        scale = None
    elif reduction == "sum":
        out = losses.sum()
        scale = 1.0
    elif reduction == "mean":
        n_valid = int(valid.sum())  # a host sync on a GPU: only the mean needs the count
        if n_valid == 0:
            raise ValueError("cross_entropy(reduction='mean'): no target token (every label is ignore_index)")
        out = losses.sum() / n_valid
        scale = 1.0 / n_valid
    else:
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")

    def backward(g):
        if scale is None:
            gl = g.reshape(-1)
        else:
            gl = xp.broadcast_to(g * scale, (L2.shape[0],)).astype(L2.dtype)
        return (k.cross_entropy_backward(gl, L2, t1, lse, valid).reshape(logits.shape),)

    return _result(xp.asarray(out, dtype=logits.dtype), (logits,), backward)


def gather_last(a: Tensor, index) -> Tensor:
    """out[..., i] = a[..., index[..., i]] along the last axis (index int array, same leading shape)."""
    be = get_backend()
    xp = be.xp
    idx = index.data if isinstance(index, Tensor) else be.asarray(index)
    ad = a.data
    out = xp.take_along_axis(ad, idx, axis=-1)

    def backward(g):
        ga = xp.zeros_like(ad)
        lead = ad.shape[:-1]
        flat = ga.reshape(-1, ad.shape[-1])
        rows = xp.repeat(xp.arange(flat.shape[0]), idx.shape[-1])
        _add_at(xp, flat, (rows, idx.reshape(-1)), g.reshape(-1))
        return (flat.reshape(lead + (ad.shape[-1],)),)

    return _result(out, (a,), backward)


def masked_fill(a: Tensor, mask, value: float) -> Tensor:
    """Replace entries where `mask` (bool, broadcastable) is True by `value`; they get no gradient."""
    be = get_backend()
    xp = be.xp
    m = mask.data if isinstance(mask, Tensor) else be.asarray(mask)
    out = xp.where(m, be.asarray(value, dtype=a.dtype), a.data)  # a device fill on CuPy, no upload

    def backward(g):
        return (_unbroadcast(xp.where(m, 0.0, g).astype(g.dtype), a.shape),)

    return _result(out, (a,), backward)


def where(cond, a, b) -> Tensor:
    """Elementwise choice: a where cond, else b (broadcasting)."""
    be = get_backend()
    xp = be.xp
    c = cond.data if isinstance(cond, Tensor) else be.asarray(cond)
    a, b = _as_tensor(a, b if isinstance(b, Tensor) else None), _as_tensor(b, a if isinstance(a, Tensor) else None)
    out = xp.where(c, a.data, b.data)

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (
            _unbroadcast(xp.where(c, g, zero), a.shape) if a.requires_grad else None,
            _unbroadcast(xp.where(c, zero, g), b.shape) if b.requires_grad else None,
        )

    return _result(out, (a, b), backward)


def dropout(a: Tensor, p: float, rng, training: bool = True) -> Tensor:
    """Inverted dropout: zero each entry with probability p, scale the rest by 1/(1-p).

    `rng` is a backend generator (`Backend.rng(seed)`), so a seeded run drops the same entries.
    Identity when not training or p == 0.
    """
    if not training or p == 0.0:
        return a
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
    keep = (rng.random(a.shape) >= p).astype(a.dtype) * (1.0 / (1.0 - p))

    def backward(g):
        return (g * keep,)

    return _result(a.data * keep, (a,), backward)


