"""The kernels layer: the hot operations, called through one namespace per backend.

What it is for: LayerNorm, GELU (tanh form), softmax / log-softmax, cross-entropy and the AdamW
update, each as a forward/backward pair of array functions. The versions here are the *reference*
kernels, written once over `xp` so they run unchanged on NumPy and CuPy; an accelerated version of a
kernel (fused CPU loops, CUDA kernels) may replace one in `KernelNamespace` and must then agree with
the reference (tests/test_kernels.py holds them to it).

Performance notes (the results are the textbook formulas up to float rounding): on NumPy each
kernel walks its arrays in blocks of about `BLOCK` elements, so that the temporaries of its 5-15
elementwise passes stay in the CPU cache, and writes into preallocated outputs (`out=`) instead of
allocating one array per operation; sums over short rows are matrix-vector products (BLAS). Large
flat updates (AdamW of big models; see `parallel_parts`) are split over a few Python threads, which
run concurrently because NumPy releases the GIL inside each ufunc; every element sees the same
operations whatever the split, so results do not depend on the thread count. On CuPy the whole array
is one block (one launch per pass). Nothing is ever computed in a wider float type than the input's:
scalars are Python floats, which NumPy's promotion rules (NEP 50) keep at the array's precision.

Accelerated kernels: `VIETNAMESE_AI_KERNELS=fast` replaces the kernels that `backends/fast_kernels.py`
provides with numba-compiled ones on the NumPy backend (the `fast` extra), and those that
`backends/cuda_kernels.py` provides with CUDA kernels on the CuPy backend; the names replaced
are recorded in `KernelNamespace.accelerated` (kernel name -> provider). `fast` without numba warns
once and keeps the reference kernels; `auto` takes numba when it imports and says nothing otherwise.
The default (`reference`, or the variable unset) is the reference kernels below: results never depend
on which packages happen to be installed unless the variable asks. Read when a backend is created.

What it is not: autograd. These functions take and return plain arrays; `vietnamese_ai_ref.autograd`
wraps them as differentiable ops.
"""

from __future__ import annotations

import math
import os
import threading
import warnings

GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715

#: Elements per block of the NumPy kernels (256 KiB of float32): big enough that the Python cost of a
#: block's ufunc calls (~1 µs each) is small, small enough that a block's temporaries stay in L2.
BLOCK = 1 << 16

KERNELS_ENV = "VIETNAMESE_AI_KERNELS"


#: Elements per block of the AdamW update: its six arrays of 512 KiB (float32) still fit in L2, and the
#: Python cost per block (15 ufunc calls) is halved against BLOCK: 124 M parameters update in ~225 ms
#: instead of 255-345 ms on 2 threads.
ADAMW_BLOCK = 1 << 17


def _blocks(n_rows: int, row_len: int, blocked: bool, block: int | None = None):
    """Row slices covering range(n_rows), each about `block` (default BLOCK) elements (one slice when
    not `blocked`)."""
    block = BLOCK if block is None else block
    if not blocked or n_rows * row_len <= block:
        return (slice(0, n_rows),)
    step = max(1, block // max(1, row_len))
    return tuple(slice(s, min(n_rows, s + step)) for s in range(0, n_rows, step))


class KernelNamespace:
    """The kernels of one backend. Attribute access returns functions bound to that backend's `xp`."""

    def __init__(self, backend):
        self.backend = backend
        self.xp = backend.xp
        self.accelerated: dict[str, str] = {}  # kernel name -> provider, for kernels replaced below
        self._blocked = backend.name == "numpy"
        mode = os.environ.get(KERNELS_ENV, "reference").strip().lower() or "reference"
        if mode not in ("reference", "fast", "auto"):
            raise ValueError(f"{KERNELS_ENV} must be 'reference', 'fast' or 'auto', got {mode!r}")
        if mode != "reference" and backend.name == "numpy":
            self._install_fast(warn=mode == "fast")
        elif mode != "reference" and backend.name == "cupy":
            self._install_cuda(warn=mode == "fast")

    def _install_fast(self, warn: bool):
        """Replace the kernels fast_kernels provides (numba), recording each in `accelerated`."""
        try:
            from . import fast_kernels
        except ImportError as e:  # numba missing or unusable with this NumPy
            if warn:
                _warn_once(f"{KERNELS_ENV}=fast: numba is not available ({e}); using the reference kernels")
            return
        for name, fn in fast_kernels.kernels_for(self).items():
            setattr(self, name, fn)
            self.accelerated[name] = fast_kernels.PROVIDER

    def _install_cuda(self, warn: bool):
        """Replace the kernels cuda_kernels provides (CuPy on a GPU), recording each in `accelerated`."""
        try:
            from . import cuda_kernels
        except Exception as e:  # noqa: BLE001 — CuPy missing, or no CUDA compiler/driver for RawModule
            if warn:
                _warn_once(f"{KERNELS_ENV}=fast: the CUDA kernels are not available ({e}); using the reference kernels")
            return
        for name, fn in cuda_kernels.kernels_for(self).items():
            setattr(self, name, fn)
            self.accelerated[name] = cuda_kernels.PROVIDER

    # ---- LayerNorm over the last axis ------------------------------------------------------
    def layernorm_forward(self, x, w, b, eps):
        """y = (x - mean) * rstd * w + b. Returns (y, mean, rstd); mean/rstd keep a trailing axis of 1."""
        xp = self.xp
        n = x.shape[-1]
        X = x.reshape(-1, n)
        N = X.shape[0]
        Y = xp.empty((N, n), dtype=x.dtype)
        mean = xp.empty((N, 1), dtype=x.dtype)
        rstd = xp.empty((N, 1), dtype=x.dtype)
        ones = xp.ones((n, 1), dtype=x.dtype)  # row sums as matrix-vector products (BLAS, SIMD)
        tmp = None
        for s in _blocks(N, n, self._blocked):
            xs, ys, ms, rs = X[s], Y[s], mean[s], rstd[s]
            if tmp is None:
                tmp = xp.empty(xs.shape, dtype=x.dtype)
            t = tmp[: xs.shape[0]]
            xp.matmul(xs, ones, out=ms)
            xp.divide(ms, n, out=ms)  # mean
            xp.subtract(xs, ms, out=ys)  # xc
            xp.multiply(ys, ys, out=t)
            xp.matmul(t, ones, out=rs)
            xp.divide(rs, n, out=rs)  # biased variance, as torch
            rs += eps
            xp.sqrt(rs, out=rs)
            xp.divide(1.0, rs, out=rs)  # rstd
            ys *= rs
            if w is not None:
                ys *= w
            if b is not None:
                ys += b
        return Y.reshape(x.shape), mean.reshape(x.shape[:-1] + (1,)), rstd.reshape(x.shape[:-1] + (1,))

    def layernorm_backward(self, dy, x, w, mean, rstd):
        """Gradients (dx, dw, db) of LayerNorm; dw/db are None when w/b were None (caller decides)."""
        xp = self.xp
        n = x.shape[-1]
        X, DY = x.reshape(-1, n), dy.reshape(-1, n)
        M, R = mean.reshape(-1, 1), rstd.reshape(-1, 1)
        N = X.shape[0]
        DX = xp.empty((N, n), dtype=dy.dtype)
        dw = xp.zeros(n, dtype=dy.dtype)
        db = xp.zeros(n, dtype=dy.dtype)
        xhat_b = g_b = None
        for s in _blocks(N, n, self._blocked):
            xs, dys, dxs, ms, rs = X[s], DY[s], DX[s], M[s], R[s]
            if xhat_b is None:
                xhat_b = xp.empty(xs.shape, dtype=dy.dtype)
                g_b = xp.empty(xs.shape, dtype=dy.dtype)
            xhat, t = xhat_b[: xs.shape[0]], g_b[: xs.shape[0]]
            xp.subtract(xs, ms, out=xhat)
            xhat *= rs
            db += dys.sum(axis=0)
            xp.multiply(dys, xhat, out=t)  # dy * xhat
            dw += t.sum(axis=0)
            if w is not None:  # row sums of g * xhat and of g = dy * w as matrix-vector products
                c = xp.matmul(t, w)[:, None]
                a = xp.matmul(dys, w)[:, None]
                xp.multiply(dys, w, out=t)  # g
                g = t
            else:
                c = t.sum(axis=-1, keepdims=True)
                a = dys.sum(axis=-1, keepdims=True)
                g = dys
            c /= n  # mean of g * xhat
            a /= n  # mean of g
            xhat *= c
            xp.subtract(g, a, out=dxs)
            dxs -= xhat
            dxs *= rs
        return DX.reshape(x.shape), dw, db

    # ---- GELU, tanh approximation (GPT-2's "gelu_new") ------------------------------------
    def gelu_forward(self, x):
        """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        xp = self.xp
        X = x.reshape(-1)
        out = xp.empty(X.shape, dtype=x.dtype)
        tmp = None
        for s in _blocks(X.shape[0], 1, self._blocked):
            xs, os_ = X[s], out[s]
            if tmp is None:
                tmp = xp.empty(xs.shape, dtype=x.dtype)
            t = tmp[: xs.shape[0]]
            xp.multiply(xs, xs, out=t)
            t *= GELU_A
            t += 1.0
            t *= xs  # x + a x^3
            t *= GELU_C
            xp.tanh(t, out=t)
            t += 1.0
            xp.multiply(xs, t, out=os_)
            os_ *= 0.5
        return out.reshape(x.shape)

    def gelu_backward(self, dy, x):
        """dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 a x^2)), t = tanh(...)."""
        xp = self.xp
        X, DY = x.reshape(-1), dy.reshape(-1)
        out = xp.empty(X.shape, dtype=dy.dtype)
        t1_b = t2_b = None
        for s in _blocks(X.shape[0], 1, self._blocked):
            xs, dys, os_ = X[s], DY[s], out[s]
            if t1_b is None:
                t1_b = xp.empty(xs.shape, dtype=dy.dtype)
                t2_b = xp.empty(xs.shape, dtype=dy.dtype)
            x2, t = t1_b[: xs.shape[0]], t2_b[: xs.shape[0]]
            xp.multiply(xs, xs, out=x2)
            xp.multiply(x2, GELU_A, out=t)
            t += 1.0
            t *= xs
            t *= GELU_C
            xp.tanh(t, out=t)  # t
            x2 *= 3.0 * GELU_A
            x2 += 1.0
            x2 *= GELU_C  # d/dx of the tanh argument
            xp.multiply(t, t, out=os_)
            xp.subtract(1.0, os_, out=os_)  # 1 - t^2
            x2 *= os_
            x2 *= xs
            t += 1.0
            x2 += t  # (1 + t) + x dt
            x2 *= 0.5
            xp.multiply(dys, x2, out=os_)
        return out.reshape(x.shape)

    # ---- softmax / log-softmax --------------------------------------------------------------
    def softmax_forward(self, x, axis=-1, out=None):
        """softmax along `axis`; `out` (may be `x` itself) receives the result when given."""
        xp = self.xp
        if axis % x.ndim != x.ndim - 1:
            m = x.max(axis=axis, keepdims=True)
            e = xp.exp(x - m)
            e /= e.sum(axis=axis, keepdims=True)
            return _into(out, e)
        n = x.shape[-1]
        res = xp.empty(x.shape, dtype=x.dtype) if out is None else out
        tgt = res if res.flags.c_contiguous else xp.empty(res.shape, dtype=res.dtype)
        X, O = x.reshape(-1, n), tgt.reshape(-1, n)
        ones = xp.ones((n, 1), dtype=x.dtype)  # short-row sums as matrix-vector products (BLAS, SIMD)
        for s in _blocks(X.shape[0], n, self._blocked):
            xs, os_ = X[s], O[s]
            m = xs.max(axis=-1, keepdims=True)
            xp.subtract(xs, m, out=os_)
            xp.exp(os_, out=os_)
            os_ /= xp.matmul(os_, ones)
        if tgt is not res:
            res[...] = tgt
        return res

    def softmax_backward(self, dy, y, axis=-1, out=None):
        """y * (dy - sum(dy * y)); `out` (may be `dy` itself) receives the result when given."""
        xp = self.xp
        if axis % y.ndim != y.ndim - 1:
            return _into(out, y * (dy - (dy * y).sum(axis=axis, keepdims=True)))
        n = y.shape[-1]
        res = xp.empty(y.shape, dtype=dy.dtype) if out is None else out
        tgt = res if res.flags.c_contiguous else xp.empty(res.shape, dtype=res.dtype)
        DY, Y, O = dy.reshape(-1, n), y.reshape(-1, n), tgt.reshape(-1, n)
        ones = xp.ones((n, 1), dtype=dy.dtype)
        tmp = None
        for s in _blocks(Y.shape[0], n, self._blocked):
            dys, ys, os_ = DY[s], Y[s], O[s]
            if tmp is None:
                tmp = xp.empty(ys.shape, dtype=dy.dtype)
            t = tmp[: ys.shape[0]]
            xp.multiply(dys, ys, out=t)
            c = xp.matmul(t, ones)
            xp.subtract(dys, c, out=os_)
            os_ *= ys
        if tgt is not res:
            res[...] = tgt
        return res

    def log_softmax_forward(self, x, axis=-1):
        xp = self.xp
        m = x.max(axis=axis, keepdims=True)
        z = x - m
        e = xp.exp(z)
        z -= xp.log(e.sum(axis=axis, keepdims=True))
        return z

    def log_softmax_backward(self, dy, y, axis=-1):
        xp = self.xp
        r = xp.exp(y)
        r *= dy.sum(axis=axis, keepdims=True)
        xp.subtract(dy, r, out=r)
        return r

    # ---- cross-entropy over rows of logits ----------------------------------------------------
    def cross_entropy_forward(self, logits, targets, ignore_index=-100):
        """Per-row loss -log softmax(logits)[target] for logits (N, V), int targets (N,).

        Rows whose target is `ignore_index` get loss 0. Returns (losses (N,), logsumexp (N,), valid (N,) bool).
        """
        xp = self.xp
        N, V = logits.shape
        valid = targets != ignore_index
        safe = xp.where(valid, targets, 0)
        lse = xp.empty(N, dtype=logits.dtype)
        tmp = None
        for s in _blocks(N, V, self._blocked):
            ls = logits[s]
            if tmp is None:
                tmp = xp.empty(ls.shape, dtype=logits.dtype)
            t = tmp[: ls.shape[0]]
            m = ls.max(axis=-1)
            xp.subtract(ls, m[:, None], out=t)
            xp.exp(t, out=t)
            ssum = t.sum(axis=-1)
            xp.log(ssum, out=ssum)
            xp.add(m, ssum, out=lse[s])
        picked = xp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
        losses = xp.where(valid, lse - picked, 0.0).astype(logits.dtype)
        return losses, lse, valid

    def cross_entropy_backward(self, dlosses, logits, targets, lse, valid):
        """d logits = (softmax - onehot(target)) * dloss per row; ignored rows get 0."""
        xp = self.xp
        N, V = logits.shape
        g = xp.where(valid, dlosses, 0.0).astype(logits.dtype)
        p = xp.empty((N, V), dtype=logits.dtype)
        for s in _blocks(N, V, self._blocked):
            ps = p[s]
            xp.subtract(logits[s], lse[s, None], out=ps)
            xp.exp(ps, out=ps)
            ps *= g[s, None]
        rows = xp.arange(N)
        safe = xp.where(valid, targets, 0)
        p[rows, safe] -= g
        return p

    # ---- AdamW over flat buffers (decoupled weight decay, as torch.optim.AdamW) ---------------
    def adamw_update(self, param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale=1.0):
        """In-place AdamW step on flat arrays. `weight_decay` is a scalar or an array (0 where no decay).

        g = grad * grad_scale (the clipping coefficient; `grad` itself is not modified);
        param <- param * (1 - lr*wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
        param <- param - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)      (torch's formula)
        """
        grad_scale = float(grad_scale)
        xp = self.xp
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
        sbc2 = math.sqrt(bc2)
        wd_array = getattr(weight_decay, "ndim", 0) > 0
        if not wd_array:
            weight_decay = float(weight_decay)

        def update(part):  # one contiguous part of the buffers, walked in blocks
            t1_b = t2_b = t3_b = None
            for s in _blocks(part.stop - part.start, 1, self._blocked, ADAMW_BLOCK):
                s = slice(part.start + s.start, part.start + s.stop)
                ps, gs, ms, vs = param[s], grad[s], m[s], v[s]
                if t1_b is None:
                    t1_b = xp.empty(ps.shape, dtype=param.dtype)
                    t2_b = xp.empty(ps.shape, dtype=param.dtype)
                    t3_b = xp.empty(ps.shape, dtype=param.dtype) if grad_scale != 1.0 else None
                t1, t2 = t1_b[: ps.shape[0]], t2_b[: ps.shape[0]]
                if grad_scale != 1.0:  # multiplying by exactly 1 would change nothing
                    gs = xp.multiply(gs, grad_scale, out=t3_b[: ps.shape[0]])
                if wd_array:
                    xp.multiply(weight_decay[s], -lr, out=t1)
                    t1 += 1.0
                    ps *= t1
                elif weight_decay != 0.0:  # multiplying by exactly 1.0 would change nothing
                    ps *= 1.0 - lr * weight_decay
                ms *= beta1
                xp.multiply(gs, 1.0 - beta1, out=t1)
                ms += t1
                vs *= beta2
                xp.multiply(gs, gs, out=t1)
                t1 *= 1.0 - beta2
                vs += t1
                xp.sqrt(vs, out=t1)
                t1 /= sbc2
                t1 += eps  # denom
                xp.divide(ms, t1, out=t2)
                t2 *= lr / bc1
                ps -= t2

        self.parallel_parts(update, param.shape[0])

    # ---- the squared L2 norm of a flat buffer (gradient clipping) ------------------------------
    def sum_of_squares(self, x) -> float:
        """sum(x * x) of a flat array, as a Python float.

        Below PARALLEL_ELEMENTS (and on CuPy): one dot product. Above it (NumPy): dot products over
        fixed chunks of SUMSQ_CHUNK elements, summed in chunk order, the chunks shared among `threads()`
        Python threads. One `dot` over a large buffer runs on one core at ~17 GB/s; two threads read
        twice that. The chunks do not depend on the thread count, so neither does the result."""
        xp = self.xp
        n = x.shape[0]
        if not self._blocked or n < PARALLEL_ELEMENTS:
            return float(xp.dot(x, x))
        starts = range(0, n, SUMSQ_CHUNK)
        sums = [0.0] * len(starts)

        def chunk_sums(part):  # part: a slice of chunk indices
            for i in range(part.start, part.stop):
                c = x[starts[i]:starts[i] + SUMSQ_CHUNK]
                sums[i] = float(xp.dot(c, c))

        k = min(threads(), len(starts))
        bounds = [len(starts) * i // k for i in range(k + 1)]
        _run_parts(chunk_sums, [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a])
        return sum(sums)

    # ---- helpers -------------------------------------------------------------------------------
    def parallel_parts(self, fn, n):
        """fn(slice) over range(n): split over `threads()` Python threads when n >= PARALLEL_ELEMENTS
        (NumPy backend; otherwise one call fn(slice(0, n))). For elementwise work on large flat buffers.

        NumPy releases the GIL inside each ufunc call, so the parts run concurrently; every element is
        computed by the same operations whichever part holds it, so results do not depend on the split."""
        k = threads() if (self._blocked and n >= PARALLEL_ELEMENTS) else 1
        if k <= 1:
            fn(slice(0, n))
            return
        bounds = [n * i // k // BLOCK * BLOCK for i in range(k)] + [n]
        _run_parts(fn, [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a])


#: Chunk of `sum_of_squares` on large buffers (fixed, so that the result does not depend on the threads).
SUMSQ_CHUNK = 1 << 22

#: Elementwise kernels on at least this many elements (the AdamW update of large models) are split over
#: `threads()` Python threads; below it, waking a thread (~0.1 ms) costs more than it saves.
PARALLEL_ELEMENTS = 1 << 22

_POOL = None
_POOL_LOCK = threading.Lock()


def threads() -> int:
    """Threads for the NumPy kernels' large elementwise work: VIETNAMESE_AI_NUM_THREADS, else
    OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS (the BLAS budget), else the CPUs this process may use."""
    for var in ("VIETNAMESE_AI_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _into(out, r):
    """r, written into `out` (and `out` returned) when an output array was given."""
    if out is None:
        return r
    out[...] = r
    return out


def _run_parts(fn, parts):
    """fn(part) for every part: the first on the calling thread, the others on the pool, concurrently."""
    futures = [_pool(len(parts) - 1).submit(fn, p) for p in parts[1:]]
    fn(parts[0])
    for f in futures:
        f.result()


def _pool(workers: int):
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vietnamese-ai-kernels")
        return _POOL


def _warn_once(msg, _seen=set()):
    if msg not in _seen:
        _seen.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
