"""The kernels layer against independent, straightforward float64 implementations.

Every kernel namespace in `KERNEL_PROVIDERS` is held to the same references. Today that is the
backend's `kernels` (the reference kernels of backends/kernels.py). An accelerated provider (fused CPU
loops, CUDA kernels) is added to `KERNEL_PROVIDERS` and must pass this file unchanged.

The references below are written differently on purpose: row loops with `math`, explicit Jacobian
matrices for the backward passes, complex-step differentiation for GELU, and the AdamW algorithm as
documented by torch.optim.AdamW (and, where torch is installed, torch.optim.AdamW itself).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vietnamese_ai_ref.backends import kernels as kernels_mod

# name -> function(backend) returning a kernel namespace with the KernelNamespace interface
KERNEL_PROVIDERS = {
    "backend": lambda be: be.kernels,
}

TOL = 1e-12
GELU_C = math.sqrt(2.0 / math.pi)


@pytest.fixture(params=sorted(KERNEL_PROVIDERS))
def kernels(request, backend):
    return KERNEL_PROVIDERS[request.param](backend)


def assert_close(got, ref, what, tol=TOL):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs reference {ref.shape}"
    err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
    worst = float(err.max()) if err.size else 0.0
    assert worst <= tol, f"{what}: max relative error {worst:.3e} > {tol}"


def dev(be, a):
    return be.asarray(np.asarray(a))


def hostof(be, a):
    return be.to_numpy(a)


# ---------------------------------------------------------------------------------------------
# independent references (host NumPy, float64)
# ---------------------------------------------------------------------------------------------

def ref_layernorm(x, w, b, eps):
    n = x.shape[-1]
    X = x.reshape(-1, n)
    Y, M, R = np.empty_like(X), np.empty(len(X)), np.empty(len(X))
    for r, row in enumerate(X):
        mu = math.fsum(row) / n
        var = math.fsum((v - mu) ** 2 for v in row) / n
        rstd = 1.0 / math.sqrt(var + eps)
        for j, v in enumerate(row):
            y = (v - mu) * rstd
            if w is not None:
                y *= w[j]
            if b is not None:
                y += b[j]
            Y[r, j] = y
        M[r], R[r] = mu, rstd
    lead = x.shape[:-1]
    return Y.reshape(x.shape), M.reshape(lead + (1,)), R.reshape(lead + (1,))


def ref_layernorm_backward(dy, x, w, eps):
    """Explicit Jacobian per row: dy_i/dx_j = w_i * rstd * (δij - 1/n - xhat_i xhat_j / n)."""
    n = x.shape[-1]
    X, DY = x.reshape(-1, n), dy.reshape(-1, n)
    wv = np.ones(n) if w is None else w
    DX = np.empty_like(X)
    dw, db = np.zeros(n), np.zeros(n)
    for r in range(len(X)):
        mu = X[r].mean()
        rstd = 1.0 / math.sqrt(((X[r] - mu) ** 2).mean() + eps)
        xhat = (X[r] - mu) * rstd
        J = wv[:, None] * rstd * (np.eye(n) - 1.0 / n - np.outer(xhat, xhat) / n)
        DX[r] = J.T @ DY[r]
        dw += DY[r] * xhat
        db += DY[r]
    return DX.reshape(x.shape), dw, db


def _gelu_any(z):
    return 0.5 * z * (1.0 + np.tanh(GELU_C * (z + 0.044715 * z**3)))


def ref_gelu(x):
    return np.vectorize(lambda v: 0.5 * v * (1.0 + math.tanh(GELU_C * (v + 0.044715 * v**3))))(x)


def ref_gelu_derivative(x):
    """Complex-step differentiation: f'(x) = Im f(x + ih) / h, exact to rounding for analytic f."""
    h = 1e-30
    return np.imag(_gelu_any(x.astype(np.complex128) + 1j * h)) / h


def _rows_along(x, axis):
    xm = np.moveaxis(x, axis, -1)
    return xm.reshape(-1, xm.shape[-1]), xm.shape


def _unrows(rows, moved_shape, axis):
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)


def ref_softmax(x, axis):
    rows, shp = _rows_along(x, axis)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = math.fsum(e)
        out[r] = [v / s for v in e]
    return _unrows(out, shp, axis)


def ref_log_softmax(x, axis):
    rows, shp = _rows_along(x, axis)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
        out[r] = [v - lse for v in row]
    return _unrows(out, shp, axis)


def ref_softmax_backward(dy, x, axis):
    """J = diag(p) - p p^T per row; dx = J^T dy."""
    P, shp = _rows_along(ref_softmax(x, axis), axis)
    DY, _ = _rows_along(dy, axis)
    DX = np.stack([(np.diag(p) - np.outer(p, p)).T @ g for p, g in zip(P, DY)])
    return _unrows(DX, shp, axis)


def ref_log_softmax_backward(dy, x, axis):
    """J_ij = δij - p_j per row; dx = J^T dy."""
    P, shp = _rows_along(ref_softmax(x, axis), axis)
    DY, _ = _rows_along(dy, axis)
    n = P.shape[-1]
    DX = np.stack([(np.eye(n) - np.outer(np.ones(n), p)).T @ g for p, g in zip(P, DY)])
    return _unrows(DX, shp, axis)


def ref_cross_entropy(logits, targets, ignore_index):
    losses, lses, valid = [], [], []
    for row, t in zip(logits, targets):
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
        lses.append(lse)
        ok = int(t) != ignore_index
        valid.append(ok)
        losses.append(lse - row[int(t)] if ok else 0.0)
    return np.array(losses), np.array(lses), np.array(valid)


def ref_cross_entropy_backward(dlosses, logits, targets, ignore_index):
    out = np.zeros_like(logits)
    for r, (row, t) in enumerate(zip(logits, targets)):
        if int(t) == ignore_index:
            continue
        m = max(row)
        e = np.array([math.exp(v - m) for v in row])
        p = e / math.fsum(e)
        p[int(t)] -= 1.0
        out[r] = p * dlosses[r]
    return out


def ref_adamw(param, grads, *, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.AdamW's documented algorithm, one step per gradient in `grads`."""
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        p = p - lr * weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------

LN_SHAPES = [(5,), (3, 8), (2, 3, 16), (4, 1)]


@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_forward(backend, kernels, shape, affine, eps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3 + 1
    d = shape[-1]
    w, b = (rng.standard_normal(d), rng.standard_normal(d)) if affine else (None, None)
    y, mean, rstd = kernels.layernorm_forward(dev(backend, x), None if w is None else dev(backend, w),
                                              None if b is None else dev(backend, b), eps)
    ry, rm, rr = ref_layernorm(x, w, b, eps)
    assert_close(hostof(backend, y), ry, "y")
    assert_close(hostof(backend, mean), rm, "mean")
    assert_close(hostof(backend, rstd), rr, "rstd")


@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_backward(backend, kernels, shape, affine):
    rng = np.random.default_rng(1)
    eps = 1e-5
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    d = shape[-1]
    w = rng.standard_normal(d) if affine else None
    _, rm, rr = ref_layernorm(x, w, None, eps)
    dx, dw, db = kernels.layernorm_backward(dev(backend, dy), dev(backend, x), None if w is None else dev(backend, w),
                                            dev(backend, rm), dev(backend, rr))
    rdx, rdw, rdb = ref_layernorm_backward(dy, x, w, eps)
    assert_close(hostof(backend, dx), rdx, "dx")
    assert_close(hostof(backend, dw), rdw, "dw")
    assert_close(hostof(backend, db), rdb, "db")


# ---------------------------------------------------------------------------------------------
# GELU
# ---------------------------------------------------------------------------------------------

GELU_INPUTS = np.concatenate([np.linspace(-8, 8, 41), [-30.0, -1e-8, 0.0, 1e-8, 30.0]])


def test_gelu_forward(backend, kernels):
    x = np.concatenate([GELU_INPUTS, np.random.default_rng(2).standard_normal(52) * 3]).reshape(-1, 7)
    assert_close(hostof(backend, kernels.gelu_forward(dev(backend, x))), ref_gelu(x), "gelu")


def test_gelu_backward(backend, kernels):
    rng = np.random.default_rng(3)
    x = np.concatenate([GELU_INPUTS, rng.standard_normal(52) * 3]).reshape(-1, 7)
    dy = rng.standard_normal(x.shape)
    got = kernels.gelu_backward(dev(backend, dy), dev(backend, x))
    assert_close(hostof(backend, got), dy * ref_gelu_derivative(x), "gelu backward")


# ---------------------------------------------------------------------------------------------
# softmax / log-softmax
# ---------------------------------------------------------------------------------------------

SM_CASES = [((7,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), -3), ((4, 1), -1)]


@pytest.mark.parametrize("shape,axis", SM_CASES)
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_softmax_forward(backend, kernels, shape, axis, scale):
    x = np.random.default_rng(4).standard_normal(shape) * scale + 100.0  # large offsets: stability
    assert_close(hostof(backend, kernels.softmax_forward(dev(backend, x), axis=axis)), ref_softmax(x, axis), "softmax")
    assert_close(hostof(backend, kernels.log_softmax_forward(dev(backend, x), axis=axis)), ref_log_softmax(x, axis),
                 "log_softmax")


@pytest.mark.parametrize("shape,axis", SM_CASES)
def test_softmax_backward(backend, kernels, shape, axis):
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal(shape) * 2, rng.standard_normal(shape)
    y = ref_softmax(x, axis)
    got = kernels.softmax_backward(dev(backend, dy), dev(backend, y), axis=axis)
    assert_close(hostof(backend, got), ref_softmax_backward(dy, x, axis), "softmax backward")


@pytest.mark.parametrize("shape,axis", SM_CASES)
def test_log_softmax_backward(backend, kernels, shape, axis):
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal(shape) * 2, rng.standard_normal(shape)
    y = ref_log_softmax(x, axis)
    got = kernels.log_softmax_backward(dev(backend, dy), dev(backend, y), axis=axis)
    assert_close(hostof(backend, got), ref_log_softmax_backward(dy, x, axis), "log_softmax backward")


# ---------------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,V", [(1, 1), (1, 5), (6, 4), (16, 33)])
@pytest.mark.parametrize("p_ignore", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, -1])
def test_cross_entropy_forward(backend, kernels, N, V, p_ignore, ignore_index):
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((N, V)) * 4 + 30.0
    t = np.where(rng.random(N) < p_ignore, ignore_index, rng.integers(0, V, size=N))
    losses, lse, valid = kernels.cross_entropy_forward(dev(backend, logits), dev(backend, t), ignore_index)
    rl, rlse, rv = ref_cross_entropy(logits, t, ignore_index)
    assert_close(hostof(backend, losses), rl, "losses")
    assert_close(hostof(backend, lse), rlse, "logsumexp")
    np.testing.assert_array_equal(hostof(backend, valid), rv)
    assert np.all(hostof(backend, losses)[~rv] == 0.0)


@pytest.mark.parametrize("N,V", [(1, 1), (1, 5), (6, 4), (16, 33)])
@pytest.mark.parametrize("p_ignore", [0.0, 0.4, 1.0])
def test_cross_entropy_backward(backend, kernels, N, V, p_ignore):
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((N, V)) * 4
    t = np.where(rng.random(N) < p_ignore, -100, rng.integers(0, V, size=N))
    dl = rng.standard_normal(N)
    _, rlse, rv = ref_cross_entropy(logits, t, -100)
    got = kernels.cross_entropy_backward(dev(backend, dl), dev(backend, logits), dev(backend, t), dev(backend, rlse),
                                         dev(backend, rv))
    assert_close(hostof(backend, got), ref_cross_entropy_backward(dl, logits, t, -100), "d logits")


def test_cross_entropy_backward_leaves_inputs_untouched(backend, kernels):
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((5, 6))
    t = np.array([0, 5, -100, 2, 2])
    dl = rng.standard_normal(5)
    L, T, D = dev(backend, logits), dev(backend, t), dev(backend, dl)
    _, lse, valid = kernels.cross_entropy_forward(L, T, -100)
    kernels.cross_entropy_backward(D, L, T, lse, valid)
    np.testing.assert_array_equal(hostof(backend, L), logits)
    np.testing.assert_array_equal(hostof(backend, D), dl)
    np.testing.assert_array_equal(hostof(backend, T), t)


# ---------------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------------

ADAM_HP = [
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
    dict(lr=0.1, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.0),
    dict(lr=0.05, beta1=0.0, beta2=0.5, eps=1e-3, weight_decay=0.3),
]


def _adam_data(n=37, steps=3, seed=10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n), [rng.standard_normal(n) * (k + 1) for k in range(steps)]


def _run_kernel_adamw(backend, kernels, p0, grads, hp, wd):
    p, m, v = dev(backend, p0.copy()), dev(backend, np.zeros_like(p0)), dev(backend, np.zeros_like(p0))
    ids = (id(p), id(m), id(v))
    wd_arg = dev(backend, wd) if isinstance(wd, np.ndarray) else wd
    for step, g in enumerate(grads, start=1):
        gd = dev(backend, g)
        kernels.adamw_update(p, gd, m, v, lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"],
                             weight_decay=wd_arg, step=step)
        np.testing.assert_array_equal(hostof(backend, gd), g)  # the gradient is not modified
    assert (id(p), id(m), id(v)) == ids
    return hostof(backend, p), hostof(backend, m), hostof(backend, v)


@pytest.mark.parametrize("hp", ADAM_HP)
@pytest.mark.parametrize("wd_form", ["scalar", "array"])
def test_adamw_update_reference(backend, kernels, hp, wd_form):
    p0, grads = _adam_data()
    if wd_form == "array":  # decay on some entries only (0 where no decay, e.g. biases and LayerNorm)
        wd = np.where(np.arange(p0.size) % 3 == 0, 0.0, max(hp["weight_decay"], 0.1))
    else:
        wd = hp["weight_decay"]
    p, m, v = _run_kernel_adamw(backend, kernels, p0, grads, hp, wd)
    hp_ref = {k: val for k, val in hp.items() if k != "weight_decay"}
    rp, rm, rv = ref_adamw(p0, grads, weight_decay=wd, **hp_ref)
    assert_close(p, rp, "param")
    assert_close(m, rm, "exp_avg")
    assert_close(v, rv, "exp_avg_sq")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_grad_scale_is_scaling_the_gradient_first(backend, dtype):
    """grad_scale (the clip coefficient applied inside the update) gives bit for bit what scaling the
    gradient buffer in place and updating without it gives, and leaves the gradient unmodified."""
    k = backend.kernels
    rng = np.random.default_rng(12)
    n = 2 * kernels_mod.ADAMW_BLOCK + 5  # several blocks of the NumPy kernel
    p0 = rng.standard_normal(n).astype(dtype)
    wd = np.where(np.arange(n) % 3 == 0, 0.0, 0.1).astype(dtype)
    put = lambda a: backend.asarray(a, dtype=dtype)  # noqa: E731
    fused = [put(a) for a in (p0, np.zeros(n, dtype), np.zeros(n, dtype))]
    plain = [put(a) for a in (p0, np.zeros(n, dtype), np.zeros(n, dtype))]
    for step, coef in ((1, 0.37), (2, 1.0), (3, 0.0123)):
        g = (rng.standard_normal(n) * step).astype(dtype)
        gd = put(g)
        k.adamw_update(*fused[:1], gd, *fused[1:], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=put(wd), step=step, grad_scale=coef)
        np.testing.assert_array_equal(hostof(backend, gd), g)
        scaled = put(g)
        scaled *= coef  # what scale_grads did before: the buffer scaled in place, in its dtype
        assert scaled.dtype == np.dtype(dtype)
        k.adamw_update(*plain[:1], scaled, *plain[1:], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                       weight_decay=put(wd), step=step)
    for a, b, what in zip(fused, plain, ("param", "m", "v")):
        np.testing.assert_array_equal(hostof(backend, a), hostof(backend, b), err_msg=what)


@pytest.mark.torch
@pytest.mark.parametrize("hp", ADAM_HP)
@pytest.mark.parametrize("wd_form", ["scalar", "array"])
def test_adamw_update_matches_torch(backend, kernels, torch, hp, wd_form):
    p0, grads = _adam_data(seed=11)
    if wd_form == "array":
        decay = np.arange(p0.size) % 3 != 0
        wd_val = max(hp["weight_decay"], 0.1)
        wd = np.where(decay, wd_val, 0.0)
    else:
        decay, wd_val, wd = np.ones(p0.size, dtype=bool), hp["weight_decay"], hp["weight_decay"]
    p, m, v = _run_kernel_adamw(backend, kernels, p0, grads, hp, wd)

    # torch: weight decay is per parameter group, so split the flat buffer into decayed / not decayed
    groups, tensors = [], []
    for mask, group_wd in ((decay, wd_val), (~decay, 0.0)):
        if mask.any():
            t = torch.tensor(p0[mask], dtype=torch.float64, requires_grad=True)
            tensors.append((mask, t))
            groups.append({"params": [t], "weight_decay": group_wd})
    opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            foreach=False)
    for g in grads:
        opt.zero_grad()
        for mask, t in tensors:
            t.grad = torch.tensor(g[mask], dtype=torch.float64)
        opt.step()
    tp, tm, tv = np.empty_like(p0), np.empty_like(p0), np.empty_like(p0)
    for mask, t in tensors:
        st = opt.state[t]
        tp[mask] = t.detach().numpy()
        tm[mask] = st["exp_avg"].numpy()
        tv[mask] = st["exp_avg_sq"].numpy()
    assert_close(p, tp, "param vs torch")
    assert_close(m, tm, "exp_avg vs torch")
    assert_close(v, tv, "exp_avg_sq vs torch")


# ---------------------------------------------------------------------------------------------
# dtype: float32 in, float32 out (no silent upcasting), close to the float64 reference
# ---------------------------------------------------------------------------------------------

def test_kernels_keep_float32(backend):
    be32 = backend.with_dtype("float32")
    for name, provider in sorted(KERNEL_PROVIDERS.items()):
        k = provider(be32)
        f32 = be32.xp.float32
        rng = np.random.default_rng(12)
        x = rng.standard_normal((4, 6))
        X = be32.asarray(x)
        assert X.dtype == f32
        y, mean, rstd = k.layernorm_forward(X, None, None, 1e-5)
        outs = {
            "layernorm": y, "layernorm.mean": mean, "layernorm.rstd": rstd,
            "layernorm_backward": k.layernorm_backward(X, X, None, mean, rstd)[0],
            "gelu": k.gelu_forward(X), "gelu_backward": k.gelu_backward(X, X),
            "softmax": k.softmax_forward(X), "log_softmax": k.log_softmax_forward(X),
        }
        t = be32.asarray(np.array([0, 5, -100, 3]))
        losses, lse, valid = k.cross_entropy_forward(X, t, -100)
        outs["cross_entropy"] = losses
        outs["cross_entropy_backward"] = k.cross_entropy_backward(losses, X, t, lse, valid)
        for what, arr in outs.items():
            assert arr.dtype == f32, f"{name}.{what}: {arr.dtype}"
        assert_close(be32.to_numpy(y), ref_layernorm(x.astype(np.float32).astype(np.float64), None, None, 1e-5)[0],
                     "float32 layernorm", tol=1e-5)
        p = be32.asarray(x.reshape(-1).copy())
        m, v = be32.xp.zeros_like(p), be32.xp.zeros_like(p)
        k.adamw_update(p, p * 0.5, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=1)
        assert p.dtype == f32 and m.dtype == f32 and v.dtype == f32
