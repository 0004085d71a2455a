"""The CUDA kernels of backends/cuda_kernels.py against the reference kernels, on a GPU.

What it is for: each CUDA kernel (GELU, softmax, LayerNorm forward, cross-entropy's log-sum-exp,
AdamW) gives what the reference kernel of the same name gives on the same CuPy arrays, in float32 and
float64, for odd row lengths and a random upstream gradient. Skipped where CuPy or a GPU is missing.
What it is not: a speed test (benchmarks/ measures speed).
"""

from __future__ import annotations

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    cp.cuda.runtime.getDeviceCount()
except Exception:  # noqa: BLE001
    pytest.skip("no CUDA device", allow_module_level=True)

from vietnamese_ai_ref.backends import kernels as K  # noqa: E402
from vietnamese_ai_ref.backends import use_backend  # noqa: E402

pytestmark = pytest.mark.gpu
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(params=["float32", "float64"])
def pair(request):
    from vietnamese_ai_ref.backends import cuda_kernels

    with use_backend("cupy", request.param) as be:
        ref = K.KernelNamespace(be)
        yield request.param, ref, cuda_kernels.kernels_for(ref)


def _rand(shape, dtype, seed):
    return cp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=dtype)


def _close(a, b, dtype):
    np.testing.assert_allclose(cp.asnumpy(a), cp.asnumpy(b), **TOL[dtype])


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 259), (4, 1000)])
def test_rows_and_elementwise_match_the_reference(pair, shape):
    dtype, ref, cuda = pair
    x, dy = _rand(shape, dtype, 1), _rand(shape, dtype, 2)
    _close(cuda["gelu_forward"](x), ref.gelu_forward(x), dtype)
    _close(cuda["gelu_backward"](dy, x), ref.gelu_backward(dy, x), dtype)
    y = ref.softmax_forward(x)
    _close(cuda["softmax_forward"](x), y, dtype)
    _close(cuda["softmax_backward"](dy, y), ref.softmax_backward(dy, y), dtype)
    w, b = _rand(shape[-1:], dtype, 3), _rand(shape[-1:], dtype, 4)
    for got, want in zip(cuda["layernorm_forward"](x, w, b, 1e-5), ref.layernorm_forward(x, w, b, 1e-5)):
        _close(got, want, dtype)


def test_cross_entropy_and_adamw_match_the_reference(pair):
    dtype, ref, cuda = pair
    logits = _rand((6, 259), dtype, 5)
    targets = cp.asarray([1, 5, -100, 258, 0, 7])
    for got, want in zip(cuda["cross_entropy_forward"](logits, targets), ref.cross_entropy_forward(logits, targets)):
        _close(got, want, dtype)
    for wd in (0.01, _rand((1000,), dtype, 9) ** 2):
        p1, g, m1, v1 = (_rand((1000,), dtype, s) for s in (6, 7, 8, 10))
        v1 = v1 ** 2
        p2, m2, v2 = p1.copy(), m1.copy(), v1.copy()
        kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, step=3, grad_scale=0.5)
        ref.adamw_update(p1, g, m1, v1, **kw)
        cuda["adamw_update"](p2, g, m2, v2, **kw)
        for a, b in ((p1, p2), (m1, m2), (v1, v2)):
            _close(a, b, dtype)
