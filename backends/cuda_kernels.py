"""Optional CUDA kernels for the CuPy backend: the accelerated provider of the kernels layer on a GPU.

What it is for: with `VIETNAMESE_AI_KERNELS=fast` (or `auto`) on the CuPy backend, the hot kernels of
`kernels.KernelNamespace` run as single CUDA launches instead of chains of CuPy array operations:
GELU forward/backward and the AdamW update as `cupy.ElementwiseKernel`s (one pass over the flat
buffers), softmax forward/backward, LayerNorm forward and the row log-sum-exp of cross-entropy as
`cupy.RawKernel`s (one block per row: a shared-memory max and sum, then one write). Each computes what
the reference kernel computes, up to float rounding (and the GPU's fused multiply-adds);
tests/test_cuda_kernels.py holds them to the reference on a GPU.

What it is not: tested on this project's CPU machines: CuPy and a GPU are needed to import it (the
kernels layer then keeps the reference kernels, as it does when numba is missing for `fast`). Cases
these kernels do not cover (softmax over another axis, non-contiguous arrays, integer inputs) fall back
to the reference kernel of the same namespace.
"""

from __future__ import annotations

import math

import cupy as cp

PROVIDER = "cupy-cuda"
THREADS = 256  # threads per block of the row kernels (a power of two: the tree reductions halve it)
_GC = math.sqrt(2.0 / math.pi)  # GELU constants, as kernels.GELU_C / GELU_A
_GA = 0.044715

_GELU_FWD = cp.ElementwiseKernel(
    "T x, T c, T a", "T y",
    """T t = x * x; t = t * a; t = t + (T)1; t = t * x; t = t * c;
       t = tanh(t) + (T)1; y = (x * t) * (T)0.5;""",
    "vai_gelu_fwd")

_GELU_BWD = cp.ElementwiseKernel(
    "T dy, T x, T c, T a", "T dx",
    """T x2 = x * x; T t = tanh(((x2 * a + (T)1) * x) * c);
       T dt = (x2 * ((T)3 * a) + (T)1) * c * ((T)1 - t * t) * x;
       dx = dy * (((t + (T)1) + dt) * (T)0.5);""",
    "vai_gelu_bwd")

_ADAMW = cp.ElementwiseKernel(
    "T g, T decay, T gs, T b1, T one_b1, T b2, T one_b2, T eps, T sbc2, T step_size", "T p, T m, T v",
    """T gg = g * gs; p = p * decay;
       m = m * b1 + gg * one_b1; v = v * b2 + (gg * gg) * one_b2;
       T denom = sqrt(v) / sbc2 + eps; p = p - (m / denom) * step_size;""",
    "vai_adamw")

_ADAMW_WD = cp.ElementwiseKernel(
    "T g, T wd, T neg_lr, T gs, T b1, T one_b1, T b2, T one_b2, T eps, T sbc2, T step_size", "T p, T m, T v",
    """T gg = g * gs; p = p * (wd * neg_lr + (T)1);
       m = m * b1 + gg * one_b1; v = v * b2 + (gg * gg) * one_b2;
       T denom = sqrt(v) / sbc2 + eps; p = p - (m / denom) * step_size;""",
    "vai_adamw_wd")

# One block per row; `buf` is the shared scratch of the tree reductions (max, then sum).
_ROWS = r"""
__device__ T block_max(T v, T* buf) {
  buf[threadIdx.x] = v; __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] = fmax(buf[threadIdx.x], buf[threadIdx.x + s]);
    __syncthreads();
  }
  T r = buf[0]; __syncthreads(); return r;
}
__device__ T block_sum(T v, T* buf) {
  buf[threadIdx.x] = v; __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  T r = buf[0]; __syncthreads(); return r;
}
extern "C" __global__ void softmax_fwd(const T* x, T* y, long long n) {
  __shared__ T buf[THREADS];
  const T* xr = x + blockIdx.x * n; T* yr = y + blockIdx.x * n;
  T m = -INFINITY;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) m = fmax(m, xr[j]);
  m = block_max(m, buf);
  T s = 0;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) { T e = exp(xr[j] - m); yr[j] = e; s += e; }
  s = block_sum(s, buf);
  for (long long j = threadIdx.x; j < n; j += blockDim.x) yr[j] = yr[j] / s;
}
extern "C" __global__ void softmax_bwd(const T* dy, const T* y, T* dx, long long n) {
  __shared__ T buf[THREADS];
  const T* dyr = dy + blockIdx.x * n; const T* yr = y + blockIdx.x * n; T* dxr = dx + blockIdx.x * n;
  T c = 0;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) c += dyr[j] * yr[j];
  c = block_sum(c, buf);
  for (long long j = threadIdx.x; j < n; j += blockDim.x) dxr[j] = (dyr[j] - c) * yr[j];
}
extern "C" __global__ void row_logsumexp(const T* x, T* lse, long long n) {
  __shared__ T buf[THREADS];
  const T* xr = x + blockIdx.x * n;
  T m = -INFINITY;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) m = fmax(m, xr[j]);
  m = block_max(m, buf);
  T s = 0;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) s += exp(xr[j] - m);
  s = block_sum(s, buf);
  if (threadIdx.x == 0) lse[blockIdx.x] = m + log(s);
}
extern "C" __global__ void layernorm_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd,
                                         long long n, T eps, int has_w, int has_b) {
  __shared__ T buf[THREADS];
  const T* xr = x + blockIdx.x * n; T* yr = y + blockIdx.x * n;
  T s = 0;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
  T mu = block_sum(s, buf) / (T)n;
  T q = 0;
  for (long long j = threadIdx.x; j < n; j += blockDim.x) { T d = xr[j] - mu; q += d * d; }
  T r = (T)1 / sqrt(block_sum(q, buf) / (T)n + eps);
  for (long long j = threadIdx.x; j < n; j += blockDim.x) {
    T v = (xr[j] - mu) * r;
    if (has_w) v = v * w[j];
    if (has_b) v = v + b[j];
    yr[j] = v;
  }
  if (threadIdx.x == 0) { mean[blockIdx.x] = mu; rstd[blockIdx.x] = r; }
}
"""

_MODULES: dict = {}


def _fn(dtype, name: str):
    """The row kernel `name` compiled for float32 or float64 (cached)."""
    key = cp.dtype(dtype).name
    if key not in _MODULES:
        ctype = {"float32": "float", "float64": "double"}[key]
        _MODULES[key] = cp.RawModule(code=f"#define T {ctype}\n#define THREADS {THREADS}\n" + _ROWS)
    return _MODULES[key].get_function(name)


def _rows_ok(x, axis) -> bool:
    return x.dtype in (cp.float32, cp.float64) and axis % x.ndim == x.ndim - 1 and x.flags.c_contiguous


def kernels_for(ns) -> dict:
    """name -> function with the signature of the KernelNamespace method it replaces, bound to `ns`
    (whose reference methods serve as the fallback for cases these kernels do not cover)."""
    R = type(ns)  # the reference KernelNamespace (not imported: kernels.py imports this module)

    def gelu_forward(x):
        t = x.dtype.type
        return _GELU_FWD(x, t(_GC), t(_GA))

    def gelu_backward(dy, x):
        t = x.dtype.type
        return _GELU_BWD(dy, x, t(_GC), t(_GA))

    def softmax_forward(x, axis=-1, out=None):
        if not _rows_ok(x, axis) or (out is not None and not out.flags.c_contiguous):
            return R.softmax_forward(ns, x, axis=axis, out=out)
        n = x.shape[-1]
        res = cp.empty_like(x) if out is None else out
        _fn(x.dtype, "softmax_fwd")((x.size // n,), (THREADS,), (x, res, cp.int64(n)))
        return res

    def softmax_backward(dy, y, axis=-1, out=None):
        if not (_rows_ok(y, axis) and dy.flags.c_contiguous) or (out is not None and not out.flags.c_contiguous):
            return R.softmax_backward(ns, dy, y, axis=axis, out=out)
        n = y.shape[-1]
        res = cp.empty_like(dy) if out is None else out
        _fn(y.dtype, "softmax_bwd")((y.size // n,), (THREADS,), (dy, y, res, cp.int64(n)))
        return res

    def layernorm_forward(x, w, b, eps):
        if not _rows_ok(x, -1):
            return R.layernorm_forward(ns, x, w, b, eps)
        n = x.shape[-1]
        rows = x.size // n
        y = cp.empty_like(x)
        mean = cp.empty(rows, dtype=x.dtype)
        rstd = cp.empty(rows, dtype=x.dtype)
        dummy = cp.empty(1, dtype=x.dtype)
        _fn(x.dtype, "layernorm_fwd")((rows,), (THREADS,), (
            x, dummy if w is None else w, dummy if b is None else b, y, mean, rstd, cp.int64(n),
            x.dtype.type(eps), cp.int32(w is not None), cp.int32(b is not None)))
        keep = x.shape[:-1] + (1,)
        return y, mean.reshape(keep), rstd.reshape(keep)

    def cross_entropy_forward(logits, targets, ignore_index=-100):
        if not _rows_ok(logits, -1):
            return R.cross_entropy_forward(ns, logits, targets, ignore_index)
        N, V = logits.shape
        lse = cp.empty(N, dtype=logits.dtype)
        _fn(logits.dtype, "row_logsumexp")((N,), (THREADS,), (logits, lse, cp.int64(V)))
        valid = targets != ignore_index
        safe = cp.where(valid, targets, 0)
        picked = cp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
        losses = cp.where(valid, lse - picked, 0.0).astype(logits.dtype)
        return losses, lse, valid

    def adamw_update(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale=1.0):
        t = param.dtype.type
        bc1, sbc2 = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
        common = (t(grad_scale), t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(eps), t(sbc2), t(lr / bc1))
        if getattr(weight_decay, "ndim", 0) > 0:
            _ADAMW_WD(grad, weight_decay, t(-lr), *common, param, m, v)
        else:
            _ADAMW(grad, t(1.0 - lr * float(weight_decay)), *common, param, m, v)

    return {"gelu_forward": gelu_forward, "gelu_backward": gelu_backward, "softmax_forward": softmax_forward,
            "softmax_backward": softmax_backward, "layernorm_forward": layernorm_forward,
            "cross_entropy_forward": cross_entropy_forward, "adamw_update": adamw_update}
