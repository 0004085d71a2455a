"""The array-backend layer: the only code in this project that touches the numpy/cupy namespaces.

What it is for: one small object per backend (`numpy` on CPU, `cupy` on CUDA GPUs) that gives the
array namespace `xp`, transfers to and from host NumPy, a seeded random generator and the dtype
policy (float32 by default, float64 for conformance runs); plus `kernels`, the namespace through
which the hot operations (LayerNorm, GELU, softmax, cross-entropy, AdamW) are called.

What it is not: an array library. Everything else in `vietnamese_ai_ref` writes `be.xp.<fn>` and
never imports numpy or cupy itself. Installed as `vietnamese_ai_ref.backends` (never as a top-level
`backends` module: PyPI has an unrelated package of that name).

Selection: `set_backend("numpy" | "cupy" | "auto", dtype=...)`, else the environment variables
`VIETNAMESE_AI_BACKEND` (`numpy`, `cupy`, `auto`; default `numpy`) and `VIETNAMESE_AI_DTYPE`
(`float32`, `float64`; default `float32`).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

__all__ = [
    "Backend",
    "BackendError",
    "get_backend",
    "set_backend",
    "use_backend",
    "host_np",
    "to_numpy",
    "cupy_available",
]

#: Host NumPy, for code that must produce host arrays (file I/O, JSON vectors). Using it for compute
#: inside the package is a bug: go through `get_backend().xp`.
host_np = np

_DTYPES = {"float32": np.float32, "float64": np.float64}


class BackendError(RuntimeError):
    """Raised when a backend or dtype cannot be used (for example CuPy without a GPU)."""


class Backend:
    """One array backend: its namespace `xp`, host transfers, seeded RNGs and the float dtype."""

    def __init__(self, name: str, xp, dtype="float32"):
        if str(dtype) not in _DTYPES:
            raise BackendError(
                f"dtype không hợp lệ / invalid dtype: expected 'float32' or 'float64', got {dtype!r}"
            )
        self.name = name
        self.xp = xp
        self.dtype = xp.dtype(_DTYPES[str(dtype)])
        from . import kernels as _k

        self.kernels = _k.KernelNamespace(self)

    # -- transfers -------------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """Array on this backend. Python/NumPy floats become the policy dtype unless `dtype` is given."""
        if dtype is None:
            a = self.xp.asarray(x)
            if a.dtype.kind == "f" and a.dtype != self.dtype:
                a = a.astype(self.dtype)
            return a
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        """A host NumPy array (copies from the device on CuPy)."""
        if self.name == "cupy" and not isinstance(x, np.ndarray):
            return self.xp.asnumpy(x)
        return np.asarray(x)

    def is_array(self, x) -> bool:
        return isinstance(x, self.xp.ndarray)

    # -- randomness ------------------------------------------------------------------------
    def rng(self, seed):
        """A seeded generator on this backend (`xp.random.default_rng`)."""
        return self.xp.random.default_rng(seed)

    def host_rng(self, seed):
        """A seeded host generator (data shuffling, initialisation: identical on every backend)."""
        return np.random.default_rng(seed)

    def with_dtype(self, dtype) -> "Backend":
        return Backend(self.name, self.xp, dtype)

    def synchronize(self):
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def __repr__(self):
        return f"Backend(name={self.name!r}, dtype={self.dtype.name})"


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _make(name: str, dtype) -> Backend:
    name = (name or "numpy").lower()
    if name == "auto":
        name = "cupy" if cupy_available() else "numpy"
    if name == "numpy":
        return Backend("numpy", np, dtype)
    if name == "cupy":
        try:
            import cupy
        except ImportError as e:
            raise BackendError(
                "Không tìm thấy CuPy / CuPy is not installed: install the `cuda` extra "
                "(pip install 'vietnamese-ai-ref[cuda]'), or use VIETNAMESE_AI_BACKEND=numpy."
            ) from e
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDA driver missing
            raise BackendError(
                f"CuPy không thấy GPU / CuPy sees no CUDA GPU ({e}); the `cuda` extra needs a CUDA "
                "device. Use VIETNAMESE_AI_BACKEND=numpy."
            ) from e
        if n == 0:
            raise BackendError(
                "CuPy không thấy GPU / CuPy sees no CUDA GPU; the `cuda` extra needs a CUDA device. "
                "Use VIETNAMESE_AI_BACKEND=numpy."
            )
        return Backend("cupy", cupy, dtype)
    raise BackendError(
        f"VIETNAMESE_AI_BACKEND không hợp lệ / invalid backend: expected 'numpy', 'cupy' or 'auto', got {name!r}"
    )


_current: Backend | None = None


def get_backend() -> Backend:
    """The current backend (created from the environment on first use)."""
    global _current
    if _current is None:
        _current = _make(
            os.environ.get("VIETNAMESE_AI_BACKEND", "numpy"),
            os.environ.get("VIETNAMESE_AI_DTYPE", "float32"),
        )
    return _current


def set_backend(name: str | None = None, dtype=None) -> Backend:
    """Select the backend (`numpy`, `cupy`, `auto`) and/or the float dtype; returns the new backend."""
    global _current
    cur = get_backend()
    new_name = name if name is not None else cur.name
    new_dtype = dtype if dtype is not None else cur.dtype.name
    _current = _make(new_name, getattr(new_dtype, "__name__", str(new_dtype)))
    return _current


@contextlib.contextmanager
def use_backend(name: str | None = None, dtype=None):
    """Context manager: `with use_backend(dtype="float64"): ...` restores the previous backend on exit."""
    global _current
    prev = get_backend()
    try:
        yield set_backend(name, dtype)
    finally:
        _current = prev


def to_numpy(x):
    """Host NumPy array from an array of any backend (or a Python scalar/list)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
