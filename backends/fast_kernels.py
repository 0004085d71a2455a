"""Optional fused CPU kernels, compiled with numba: the accelerated provider of the kernels layer.

What it is for: single-pass versions of the hot kernels of `backends/kernels.py` for the NumPy
backend — LayerNorm forward/backward, GELU (tanh form, computed as x·sigmoid(2u)) forward/backward,
softmax forward/backward (last axis), cross-entropy forward/backward and the AdamW update. Each reads its inputs once and writes its
output once (the NumPy reference needs 5-15 passes per kernel), in SIMD loops. Inputs of at least
PARALLEL_MIN elements are split over numba's threads (`NUMBA_NUM_THREADS`, workqueue layer); smaller
ones run on the calling thread. Compiled with `cache=True`: the first use compiles (a few seconds),
later processes load the cache from `__pycache__` (or numba's user cache where that is read-only).

Selected with `VIETNAMESE_AI_KERNELS=fast` (or `auto`: when numba imports); the default stays the
reference kernels (see kernels.KernelNamespace). Recorded in `KernelNamespace.accelerated` as kernel
name -> "numba".

Accuracy (tests/test_kernels_fast.py holds every kernel to the reference kernels):
  - float64: the same formulas, exp as a vectorisable polynomial (<= 2 ulp; libm's exp is a scalar call)
    and GELU as x·sigmoid(2u) (the same function without the cancellation of 1 + tanh u); agrees with the
    reference to <= 1e-12 relative.
    Row sums (means, variances, logsumexp) are vectorised, so their rounding order differs.
  - float32: exp is a vectorisable polynomial approximation (Cephes' expf, <= 2 ulp);
    row sums accumulate in float64 blocks (more accurate than the reference's float32 sums). The
    results stay within the float32 reference's own rounding error (the tests state the tolerances).
  - AdamW uses the reference's operations in the reference's order, without fast-math: bit-identical
    to the reference kernel in both dtypes (the gradient times `grad_scale` included).
Arrays stay in their dtype: scalars are cast to the array's dtype before the call, so float32 work
never silently becomes float64 (only the row-sum accumulators above are float64, by design).

What it is not: a CuPy path (CuPy arrays keep the reference kernels), nor a different semantics:
anything these kernels do not cover (softmax over another axis, non-float inputs) falls back to the
reference kernel of the same namespace.

It is over 600 lines on purpose: one numba kernel per hot operation and dtype, each beside the
reference it must equal (kernels.py), so that the whole accelerated provider is one file to audit.
"""

from __future__ import annotations

import math
import os
import threading
import types as pytypes

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

PROVIDER = "numba"

#: Inputs with fewer elements than this run on one thread. On the 2-core machines this was tuned on, the
#: second core is mostly held by OpenBLAS's spinning worker right after a GEMM, so splitting mid-sized
#: arrays (GELU/LayerNorm of config B) gained nothing; only large buffers (AdamW, GPT-2's logits) go parallel.
PARALLEL_MIN = 1 << 20

# numba's OpenMP layer spins its workers and fought OpenBLAS's (and torch's) spinning threads for the two
# cores: a config-B step took 2x longer. The workqueue layer sleeps. Set before the first parallel launch;
# NUMBA_THREADING_LAYER in the environment wins. Workqueue must not be entered by two threads at once:
# _pick takes a lock and runs the single-threaded version when another thread holds it.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
_POOL_LOCK = threading.Lock()

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)

_FM = {"reassoc", "contract"}  # vectorised reductions and FMAs; never nnan/ninf (inf and NaN keep their meaning)

# ============================ scalar helpers (inlined) ==========================================

def _bitcast_to(int_type, float_type, ir_type):
    """An intrinsic returning the float whose bit pattern is the integer argument (a register bitcast,
    as C's memcpy): how exp builds 2**k from its exponent bits."""

    @intrinsic
    def bits(typingctx, i):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir_type)

        return float_type(int_type), codegen

    return bits


_bits_f32 = _bitcast_to(types.int32, types.float32, ir.FloatType())
_bits_f64 = _bitcast_to(types.int64, types.float64, ir.DoubleType())


@njit(inline="always", fastmath=_FM, error_model="numpy", cache=True)
def _exp32(x):
    """expf for float32 (Cephes' polynomial), within 2 ulp on [-87.34, 88.72]; 0 below (no subnormals), inf
    above, NaN for NaN. Branch-free (selects only), so that loops calling it vectorise."""
    lo = np.float32(-87.33654)
    hi = np.float32(88.72283)
    xc = min(max(x, lo), hi)
    fx = np.floor(xc * np.float32(1.44269504088896341) + np.float32(0.5))  # x / ln 2, rounded: in [-126, 128]
    k = np.int32(fx)
    r = xc - fx * np.float32(0.693359375)  # ln 2 in two parts (Cody-Waite)
    r = r - fx * np.float32(-2.12194440e-4)
    z = r * r
    y = np.float32(1.9875691500e-4)
    y = y * r + np.float32(1.3981999507e-3)
    y = y * r + np.float32(8.3334519073e-3)
    y = y * r + np.float32(4.1665795894e-2)
    y = y * r + np.float32(1.6666665459e-1)
    y = y * r + np.float32(5.0000001201e-1)
    y = y * z + r + np.float32(1.0)  # exp(r), |r| <= ln2 / 2
    y = y * np.float32(2.0) if k > 127 else y  # 2**128 is not a float32: scale in two steps
    k = min(k, np.int32(127))
    y = y * _bits_f32((k + np.int32(127)) << np.int32(23))  # * 2**k
    y = np.float32(0.0) if x < lo else y
    y = np.float32(np.inf) if x > hi else y
    return x if x != x else y


@njit(inline="always", fastmath=_FM, error_model="numpy", cache=True)
def _exp64(x):
    """exp for float64, within 2 ulp on [-708.39, 709.78] (libm's exp is a scalar call that stops loops from
    vectorising); 0 below (no subnormals), inf above, NaN for NaN. x = k ln2 + r with ln2 in two parts
    (fdlibm's, exact for |k| <= 1024), |r| <= ln2/2, exp(r) by its Taylor series to r^13 (truncation
    < 1e-17 relative), times 2**k built from its bits. Branch-free, like _exp32."""
    lo = -708.3964185322641
    hi = 709.782712893384
    xc = min(max(x, lo), hi)
    fx = np.floor(xc * 1.4426950408889634 + 0.5)  # x / ln 2, rounded: in [-1022, 1024]
    k = np.int64(fx)
    r = xc - fx * 6.93147180369123816490e-01
    r = r - fx * 1.90821492927058770002e-10
    q = 1.6059043836821613e-10  # 1/13!
    q = q * r + 2.08767569878681e-09  # 1/12!
    q = q * r + 2.505210838544172e-08
    q = q * r + 2.755731922398589e-07
    q = q * r + 2.7557319223985893e-06
    q = q * r + 2.48015873015873e-05
    q = q * r + 0.0001984126984126984
    q = q * r + 0.001388888888888889
    q = q * r + 0.008333333333333333
    q = q * r + 0.041666666666666664
    q = q * r + 0.16666666666666666
    q = q * r + 0.5  # 1/2!
    y = q * (r * r) + r + 1.0
    y = y * 2.0 if k > 1023 else y  # 2**1024 is not a float64: scale in two steps
    k = min(k, np.int64(1023))
    y = y * _bits_f64((k + np.int64(1023)) << np.int64(52))  # * 2**k
    y = 0.0 if x < lo else y
    y = np.inf if x > hi else y
    return x if x != x else y


def _fexp(x):
    """exp with the precision of x: _exp32 for float32, _exp64 for float64 (chosen at compile time)."""


@overload(_fexp, inline="always")
def _ol_fexp(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: _exp64(x)


def _clone(fn, suffix):
    """A copy of `fn` under another name: numba's cache keys files by qualified name, not by flags."""
    g = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    g.__qualname__ = fn.__qualname__ + suffix
    g.__module__ = fn.__module__
    return g


@njit(fastmath={"nnan", "nsz", "reassoc"}, cache=True)
def _rowmax(row):
    """max of a 1-D row, in eight running maxima that LLVM turns into one SIMD register. A NaN entry may be
    skipped here (nnan), but every caller feeds the same row through exp, so the NaN still reaches its result."""
    n = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    nb = n // 8
    for blk in range(nb):
        o = blk * 8
        v = row[o]
        m0 = v if v > m0 else m0
        v = row[o + 1]
        m1 = v if v > m1 else m1
        v = row[o + 2]
        m2 = v if v > m2 else m2
        v = row[o + 3]
        m3 = v if v > m3 else m3
        v = row[o + 4]
        m4 = v if v > m4 else m4
        v = row[o + 5]
        m5 = v if v > m5 else m5
        v = row[o + 6]
        m6 = v if v > m6 else m6
        v = row[o + 7]
        m7 = v if v > m7 else m7
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    m = m4 if m4 > m0 else m0
    for j in range(nb * 8, n):
        v = row[j]
        m = v if v > m else m
    return m


_SUM_BLOCK = 256  # float32 partial sums over this many terms (8 SIMD lanes x 32), then added in float64


@njit(fastmath=_FM, error_model="numpy", cache=True)
def _sum_exp(row, m):
    """sum(exp(row - m)) in float64: blocks of float32 partial sums (SIMD), each block added in float64."""
    n = row.shape[0]
    s = 0.0
    for c0 in range(0, n, _SUM_BLOCK):
        blk = row[c0:min(n, c0 + _SUM_BLOCK)]
        ss = row.dtype.type(0)
        for j in range(blk.shape[0]):
            ss += _fexp(blk[j] - m)
        s += ss
    return s


@njit(fastmath=_FM, error_model="numpy", cache=True)
def _exp_store_sum(row, out, m):
    """out = exp(row - m); returns sum(out) in float64 (as _sum_exp)."""
    n = row.shape[0]
    s = 0.0
    for c0 in range(0, n, _SUM_BLOCK):
        c1 = min(n, c0 + _SUM_BLOCK)
        blk = row[c0:c1]
        ob = out[c0:c1]
        ss = row.dtype.type(0)
        for j in range(blk.shape[0]):
            e = _fexp(blk[j] - m)
            ob[j] = e
            ss += e
        s += ss
    return s


def _par_or_ser(fn, **kw):
    """Two compiled versions of `fn`: multi-threaded (prange) and single-threaded."""
    kw.setdefault("error_model", "numpy")  # x / 0 -> inf/nan as in NumPy; Python's check would block SIMD
    return (njit(parallel=True, cache=True, **kw)(_clone(fn, "_par")),
            njit(parallel=False, cache=True, **kw)(_clone(fn, "_ser")))


class _Parallel:
    """Calls the multi-threaded version under _POOL_LOCK, or the single-threaded one if the lock is busy."""

    __slots__ = ("par", "ser")

    def __init__(self, par, ser):
        self.par, self.ser = par, ser

    def __call__(self, *args):
        if _POOL_LOCK.acquire(blocking=False):
            try:
                return self.par(*args)
            finally:
                _POOL_LOCK.release()
        return self.ser(*args)


def _pick(pair, size):
    """The version of a kernel to run on `size` elements: one thread below PARALLEL_MIN or with one thread."""
    if size >= PARALLEL_MIN and numba.get_num_threads() > 1:
        return _Parallel(*pair)
    return pair[1]


@njit(inline="always", cache=True)
def _chunks(n, size):
    """Number of chunks of about `size` elements covering n (at least one)."""
    return max(1, (n + size - 1) // size)


# ============================ LayerNorm ========================================================

def _ln_fwd(X, w, b, has_w, has_b, eps, Y, M, R):
    N, n = X.shape
    for i in prange(N):
        s = 0.0
        for j in range(n):
            s += X[i, j]
        mu = s / n
        q = 0.0
        for j in range(n):
            d = X[i, j] - mu
            q += d * d
        rs = 1.0 / math.sqrt(q / n + eps)
        mu_t = X.dtype.type(mu)
        rs_t = X.dtype.type(rs)
        M[i, 0] = mu_t
        R[i, 0] = rs_t
        for j in range(n):
            y = (X[i, j] - mu_t) * rs_t
            if has_w:
                y = y * w[j]
            if has_b:
                y = y + b[j]
            Y[i, j] = y


_LN_FWD = _par_or_ser(_ln_fwd, fastmath=_FM)


def _ln_bwd(DY, X, w, has_w, M, R, DX, DWp, DBp, rows_per):
    N, n = X.shape
    nch = DWp.shape[0]
    for c in prange(nch):
        for i in range(c * rows_per, min(N, (c + 1) * rows_per)):
            mu = M[i, 0]
            rs = R[i, 0]
            a = 0.0
            cc = 0.0
            for j in range(n):
                xh = (X[i, j] - mu) * rs
                g = DY[i, j] * w[j] if has_w else DY[i, j]
                a += g
                cc += g * xh
                DWp[c, j] += DY[i, j] * xh
                DBp[c, j] += DY[i, j]
            a_t = X.dtype.type(a / n)
            c_t = X.dtype.type(cc / n)
            for j in range(n):
                xh = (X[i, j] - mu) * rs
                g = DY[i, j] * w[j] if has_w else DY[i, j]
                DX[i, j] = rs * (g - a_t - xh * c_t)


_LN_BWD = _par_or_ser(_ln_bwd, fastmath=_FM)


# ============================ GELU =============================================================

_GC = math.sqrt(2.0 / math.pi)
_GA = 0.044715


# 0.5 x (1 + tanh u) = x s with s = sigmoid(2u) = 1 / (1 + e), e = exp(-2u): one exp and one division
# instead of tanh's exp, division and polynomial, and no cancellation in 1 + tanh u for negative x
# (more accurate than the reference there). -2u is capped at `lim` (80 in float32, 700 in float64) so
# that e stays finite: s is then < 1e-34 (1e-304), where the exact GELU is smaller still.
# Derivative: s + 2 x s (1 - s) du/dx with 1 - s = e s (no cancellation either).

def _gelu_fwd(X, Y, block, lim):
    n = X.shape[0]
    one = X.dtype.type(1.0)
    for c in prange(_chunks(n, block)):
        lo = c * block
        hi = min(n, lo + block)
        Xc, Yc = X[lo:hi], Y[lo:hi]  # chunk views: indices from range(len) are known >= 0, so loops vectorise
        for i in range(Xc.shape[0]):
            x = Xc[i]
            u2 = x * (x * x * X.dtype.type(_GA) + one) * X.dtype.type(-2.0 * _GC)  # -2u
            e = _fexp(min(u2, lim))
            Yc[i] = x / (one + e)


_GELU_FWD = _par_or_ser(_gelu_fwd, fastmath=_FM)


def _gelu_bwd(DY, X, O, block, lim):
    n = X.shape[0]
    one = X.dtype.type(1.0)
    for c in prange(_chunks(n, block)):
        lo = c * block
        hi = min(n, lo + block)
        Xc, DYc, Oc = X[lo:hi], DY[lo:hi], O[lo:hi]
        for i in range(Xc.shape[0]):
            x = Xc[i]
            x2 = x * x
            u2 = x * (x2 * X.dtype.type(_GA) + one) * X.dtype.type(-2.0 * _GC)  # -2u
            e = _fexp(min(u2, lim))
            s = one / (one + e)
            du2 = X.dtype.type(2.0 * _GC) * (one + X.dtype.type(3.0 * _GA) * x2)  # 2 du/dx
            Oc[i] = DYc[i] * (s + x * (e * s) * s * du2)


_GELU_BWD = _par_or_ser(_gelu_bwd, fastmath=_FM)


# ============================ softmax (last axis) ==============================================

def _softmax_fwd(X, O):
    N, n = X.shape
    for i in prange(N):
        m = _rowmax(X[i])
        inv = X.dtype.type(_exp_store_sum(X[i], O[i], m))
        for j in range(n):
            O[i, j] = O[i, j] / inv


_SOFTMAX_FWD = _par_or_ser(_softmax_fwd, fastmath=_FM)


def _softmax_fwd_inplace(X):
    """_softmax_fwd with O = X. A separate kernel: LLVM vectorises a loop only when it can prove that its
    input and output do not overlap, and an aliased call would run the scalar fallback (~5x slower)."""
    N, n = X.shape
    for i in prange(N):
        row = X[i]
        m = _rowmax(row)
        s = 0.0
        for c0 in range(0, n, _SUM_BLOCK):
            blk = row[c0:min(n, c0 + _SUM_BLOCK)]
            ss = X.dtype.type(0)
            for j in range(blk.shape[0]):
                e = _fexp(blk[j] - m)
                blk[j] = e
                ss += e
            s += ss
        inv = X.dtype.type(s)
        for j in range(n):
            row[j] = row[j] / inv


_SOFTMAX_FWD_INPLACE = _par_or_ser(_softmax_fwd_inplace, fastmath=_FM)


def _softmax_bwd(DY, Y, O):
    N, n = Y.shape
    for i in prange(N):
        s = 0.0
        for j in range(n):
            s += DY[i, j] * Y[i, j]
        c = Y.dtype.type(s)
        for j in range(n):
            O[i, j] = (DY[i, j] - c) * Y[i, j]


_SOFTMAX_BWD = _par_or_ser(_softmax_bwd, fastmath=_FM)


def _softmax_bwd_inplace(DY, Y):
    """_softmax_bwd with O = DY (see _softmax_fwd_inplace)."""
    N, n = Y.shape
    for i in prange(N):
        d = DY[i]
        y = Y[i]
        s = 0.0
        for j in range(n):
            s += d[j] * y[j]
        c = Y.dtype.type(s)
        for j in range(n):
            d[j] = (d[j] - c) * y[j]


_SOFTMAX_BWD_INPLACE = _par_or_ser(_softmax_bwd_inplace, fastmath=_FM)


# ============================ cross-entropy ====================================================

def _ce_fwd(L, safe, valid, losses, lse):
    N, V = L.shape
    zero = L.dtype.type(0)
    for i in prange(N):
        m = _rowmax(L[i])
        ls = L.dtype.type(m + math.log(_sum_exp(L[i], m)))
        lse[i] = ls
        losses[i] = (ls - L[i, safe[i]]) if valid[i] else zero


_CE_FWD = _par_or_ser(_ce_fwd, fastmath=_FM)


def _ce_bwd(dl, L, safe, valid, lse, P):
    N, V = L.shape
    zero = L.dtype.type(0)
    for i in prange(N):
        g = dl[i] if valid[i] else zero
        ls = lse[i]
        for j in range(V):
            e = _fexp(L[i, j] - ls)
            P[i, j] = e * g
        P[i, safe[i]] -= g


_CE_BWD = _par_or_ser(_ce_bwd, fastmath=_FM)


# ============================ AdamW ============================================================

def _adamw(p, g, m, v, decay, gscale, b1, omb1, b2, omb2, sbc2, eps, step_size, block):
    """The reference's operations in the reference's order (no fast-math: bit-identical to it)."""
    n = p.shape[0]
    for c in prange(_chunks(n, block)):
        lo = c * block
        hi = min(n, lo + block)
        P, G, M, V = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(P.shape[0]):
            pi = P[i] * decay
            gi = G[i] * gscale  # the clipping coefficient (x * 1 is exact)
            mi = M[i] * b1 + gi * omb1
            vi = V[i] * b2 + (gi * gi) * omb2
            M[i] = mi
            V[i] = vi
            den = math.sqrt(vi) / sbc2 + eps
            P[i] = pi - (mi / den) * step_size


def _adamw_wd(p, g, m, v, decay, gscale, b1, omb1, b2, omb2, sbc2, eps, step_size, block):
    """_adamw with a per-entry decay factor `decay` (an array)."""
    n = p.shape[0]
    for c in prange(_chunks(n, block)):
        lo = c * block
        hi = min(n, lo + block)
        P, G, M, V, D = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], decay[lo:hi]
        for i in range(P.shape[0]):
            pi = P[i] * D[i]
            gi = G[i] * gscale  # the clipping coefficient (x * 1 is exact)
            mi = M[i] * b1 + gi * omb1
            vi = V[i] * b2 + (gi * gi) * omb2
            M[i] = mi
            V[i] = vi
            den = math.sqrt(vi) / sbc2 + eps
            P[i] = pi - (mi / den) * step_size


_ADAMW = _par_or_ser(_adamw)
_ADAMW_WD = _par_or_ser(_adamw_wd)


# ============================ the kernel functions =============================================

def _gelu_cap(dtype):
    """The cap on -2u in the GELU kernels, as a scalar of `dtype` (see _gelu_fwd)."""
    return dtype.type(80.0 if dtype == _F32 else 700.0)


def kernels_for(ns) -> dict:
    """name -> function with the signature of the KernelNamespace method it replaces, bound to `ns`
    (whose reference methods serve as the fallback for cases these kernels do not cover).

    It is over 80 lines on purpose: one small closure per replaced method, each choosing its numba
    kernel or the reference fallback, listed together so the table of replacements reads as one."""
    ref = {name: getattr(ns, name) for name in (
        "layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward", "softmax_forward",
        "softmax_backward", "cross_entropy_forward", "cross_entropy_backward", "adamw_update")}

    def ok(*arrays):
        return all(isinstance(a, np.ndarray) and a.dtype in (_F32, _F64) for a in arrays) and \
            len({a.dtype for a in arrays}) == 1

    def layernorm_forward(x, w, b, eps):
        if not ok(x, *(a for a in (w, b) if a is not None)):
            return ref["layernorm_forward"](x, w, b, eps)
        n = x.shape[-1]
        X = np.ascontiguousarray(x).reshape(-1, n)
        N = X.shape[0]
        Y = np.empty((N, n), dtype=x.dtype)
        M = np.empty((N, 1), dtype=x.dtype)
        R = np.empty((N, 1), dtype=x.dtype)
        dummy = X[0, :0] if N else np.empty(0, x.dtype)
        _pick(_LN_FWD, X.size)(X, dummy if w is None else np.ascontiguousarray(w),
                               dummy if b is None else np.ascontiguousarray(b), w is not None, b is not None,
                               float(eps), Y, M, R)
        lead = x.shape[:-1]
        return Y.reshape(x.shape), M.reshape(lead + (1,)), R.reshape(lead + (1,))

    def layernorm_backward(dy, x, w, mean, rstd):
        if not ok(dy, x, mean, rstd, *(() if w is None else (w,))):
            return ref["layernorm_backward"](dy, x, w, mean, rstd)
        n = x.shape[-1]
        X = np.ascontiguousarray(x).reshape(-1, n)
        DY = np.ascontiguousarray(dy).reshape(-1, n)
        M = np.ascontiguousarray(mean).reshape(-1, 1)
        R = np.ascontiguousarray(rstd).reshape(-1, 1)
        N = X.shape[0]
        DX = np.empty((N, n), dtype=x.dtype)
        par = X.size >= PARALLEL_MIN and numba.get_num_threads() > 1
        nch = min(N, 4 * numba.get_num_threads()) if par else 1
        nch = max(nch, 1)
        rows_per = max(1, -(-N // nch))
        nch = max(1, -(-N // rows_per))
        DWp = np.zeros((nch, n), dtype=np.float64)  # per-chunk partial sums (float64, as the row sums)
        DBp = np.zeros((nch, n), dtype=np.float64)
        wv = np.ascontiguousarray(w) if w is not None else X[0, :0] if N else np.empty(0, x.dtype)
        (_Parallel(*_LN_BWD) if par else _LN_BWD[1])(DY, X, wv, w is not None, M, R, DX, DWp, DBp, rows_per)
        return DX.reshape(x.shape), DWp.sum(axis=0).astype(x.dtype), DBp.sum(axis=0).astype(x.dtype)

    def gelu_forward(x):
        if not ok(x):
            return ref["gelu_forward"](x)
        X = np.ascontiguousarray(x).reshape(-1)
        Y = np.empty_like(X)
        _pick(_GELU_FWD, X.size)(X, Y, 1 << 14, _gelu_cap(X.dtype))
        return Y.reshape(x.shape)

    def gelu_backward(dy, x):
        if not ok(dy, x):
            return ref["gelu_backward"](dy, x)
        X = np.ascontiguousarray(x).reshape(-1)
        DY = np.ascontiguousarray(dy).reshape(-1)
        O = np.empty_like(X)
        _pick(_GELU_BWD, X.size)(DY, X, O, 1 << 14, _gelu_cap(X.dtype))
        return O.reshape(x.shape)

    def softmax_forward(x, axis=-1, out=None):
        if not ok(x) or axis % x.ndim != x.ndim - 1 or x.shape[-1] == 0 or \
                (out is not None and not (ok(out) and out.dtype == x.dtype and out.flags.c_contiguous)):
            return ref["softmax_forward"](x, axis=axis, out=out)
        n = x.shape[-1]
        if out is x:  # in place (the fused attention)
            _pick(_SOFTMAX_FWD_INPLACE, out.size)(out.reshape(-1, n))
            return out
        if out is not None and np.shares_memory(out, x):  # partial overlap: leave it to the reference
            return ref["softmax_forward"](x, axis=axis, out=out)
        X = np.ascontiguousarray(x).reshape(-1, n)
        res = np.empty(x.shape, dtype=x.dtype) if out is None else out
        _pick(_SOFTMAX_FWD, X.size)(X, res.reshape(-1, n))
        return res

    def softmax_backward(dy, y, axis=-1, out=None):
        if not ok(dy, y) or axis % y.ndim != y.ndim - 1 or \
                (out is not None and not (ok(out) and out.dtype == y.dtype and out.flags.c_contiguous)):
            return ref["softmax_backward"](dy, y, axis=axis, out=out)
        n = y.shape[-1]
        Y = np.ascontiguousarray(y).reshape(-1, n)
        if out is not None and (np.shares_memory(out, dy) or np.shares_memory(out, y)):
            if out is dy and not np.shares_memory(out, y):
                _pick(_SOFTMAX_BWD_INPLACE, out.size)(out.reshape(-1, n), Y)
                return out
            return ref["softmax_backward"](dy, y, axis=axis, out=out)
        DY = np.ascontiguousarray(dy).reshape(-1, n)
        res = np.empty(y.shape, dtype=y.dtype) if out is None else out
        _pick(_SOFTMAX_BWD, Y.size)(DY, Y, res.reshape(-1, n))
        return res

    def cross_entropy_forward(logits, targets, ignore_index=-100):
        if not ok(logits) or not isinstance(targets, np.ndarray) or logits.shape[-1] == 0:
            return ref["cross_entropy_forward"](logits, targets, ignore_index)
        L = np.ascontiguousarray(logits)
        valid = targets != ignore_index
        safe = np.where(valid, targets, 0).astype(np.int64)
        N = L.shape[0]
        losses = np.empty(N, dtype=L.dtype)
        lse = np.empty(N, dtype=L.dtype)
        _pick(_CE_FWD, L.size)(L, safe, valid, losses, lse)
        return losses, lse, valid

    def cross_entropy_backward(dlosses, logits, targets, lse, valid):
        if not ok(logits, lse) or not isinstance(targets, np.ndarray) or not isinstance(dlosses, np.ndarray) \
                or not isinstance(valid, np.ndarray):
            return ref["cross_entropy_backward"](dlosses, logits, targets, lse, valid)
        L = np.ascontiguousarray(logits)
        safe = np.where(valid, targets, 0).astype(np.int64)
        dl = np.ascontiguousarray(dlosses, dtype=L.dtype).reshape(-1)
        P = np.empty(L.shape, dtype=L.dtype)
        _pick(_CE_BWD, L.size)(dl, L, safe, np.ascontiguousarray(valid), np.ascontiguousarray(lse), P)
        return P

    def adamw_update(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale=1.0):
        arrays = (param, grad, m, v)
        if not ok(*arrays) or not all(a.ndim == 1 and a.flags.c_contiguous for a in arrays):
            return ref["adamw_update"](param, grad, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                       weight_decay=weight_decay, step=step, grad_scale=grad_scale)
        t = param.dtype.type
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
        if getattr(weight_decay, "ndim", 0) > 0:  # per-entry decay: the factor as the reference forms it
            decay = np.multiply(weight_decay, -lr).astype(param.dtype)
            decay += 1.0
            kern = _ADAMW_WD
        else:
            decay, kern = t(1.0 - lr * float(weight_decay)), _ADAMW
        _pick(kern, param.size)(param, grad, m, v, decay, t(grad_scale), t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2),
                                t(math.sqrt(bc2)), t(eps), t(lr / bc1), 1 << 14)

    return {
        "layernorm_forward": layernorm_forward,
        "layernorm_backward": layernorm_backward,
        "gelu_forward": gelu_forward,
        "gelu_backward": gelu_backward,
        "softmax_forward": softmax_forward,
        "softmax_backward": softmax_backward,
        "cross_entropy_forward": cross_entropy_forward,
        "cross_entropy_backward": cross_entropy_backward,
        "adamw_update": adamw_update,
    }
