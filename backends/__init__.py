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

Transfer accounting: `with get_backend().count_transfers() as log:` records every explicit
host<->device copy made inside the block (direction, shape, dtype, bytes, where in the code): uploads
through `Backend.asarray` and through `xp.asarray` / `xp.array` / `xp.ascontiguousarray` of a host
object, downloads through `Backend.to_numpy`, the module's `to_numpy` and `xp.asnumpy`. On the NumPy
backend the same calls are recorded, so that it stands in for a GPU: a host object is a list, a
tuple or a Python scalar handed to `xp.asarray` (NumPy arrays count as "device" arrays there), a
download is any `to_numpy` of an array. Implicit conversions (`float(a)`, `bool(a)`, `int(a)`,
`a.tolist()`, `a.item()` on a device array) cannot be intercepted and are not recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import numpy as np

__all__ = [
    "Backend",
    "BackendError",
    "Transfer",
    "TransferLog",
    "add_at",
    "get_backend",
    "set_backend",
    "use_backend",
    "count_transfers",
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


def add_at(xp, target, idx, values) -> None:
    """target[idx] += values in place, repeated indices accumulating (numpy.add.at semantics).

    `xp.add.at` where the namespace has it (NumPy; CuPy >= 12), else `cupyx.scatter_add` (older CuPy;
    it lives in the `cupyx` package, not in the `cupy` namespace)."""
    at = getattr(getattr(xp, "add", None), "at", None)
    if at is not None:
        at(target, idx, values)
        return
    import cupyx

    cupyx.scatter_add(target, idx, values)


# ---------------------------------------------------------------------------------------------
# transfer accounting
# ---------------------------------------------------------------------------------------------

_PY_SCALARS = (bool, int, float, complex)
_HERE = os.path.abspath(__file__)


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One recorded copy: `direction` "h2d" (upload) or "d2h" (download), the array's shape, dtype
    and bytes, the call that made it (`via`) and where in the code it was made (`where`)."""

    direction: str
    shape: tuple
    dtype: str
    nbytes: int
    via: str
    where: str
    backend: str

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    def __str__(self) -> str:
        return f"{self.direction} {self.via:<22} {str(self.shape):<14} {self.dtype:<8} {self.nbytes:>10} B  {self.where}"


class TransferLog:
    """The transfers recorded while a `count_transfers()` block was open, in order."""

    def __init__(self):
        self.events: list[Transfer] = []

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(self.events)

    @property
    def uploads(self) -> list:
        return [e for e in self.events if e.direction == "h2d"]

    @property
    def downloads(self) -> list:
        return [e for e in self.events if e.direction == "d2h"]

    def count(self, direction: str | None = None) -> int:
        return sum(1 for e in self.events if direction is None or e.direction == direction)

    def nbytes(self, direction: str | None = None) -> int:
        return sum(e.nbytes for e in self.events if direction is None or e.direction == direction)

    def summary(self) -> dict:
        """{"h2d": {"count", "nbytes"}, "d2h": {"count", "nbytes"}}."""
        return {d: {"count": self.count(d), "nbytes": self.nbytes(d)} for d in ("h2d", "d2h")}

    def report(self) -> str:
        """One line per transfer, then the totals (for test failure messages and notes)."""
        lines = [str(e) for e in self.events]
        sm = self.summary()
        lines.append(f"total: {sm['h2d']['count']} uploads ({sm['h2d']['nbytes']} B), "
                     f"{sm['d2h']['count']} downloads ({sm['d2h']['nbytes']} B)")
        return "\n".join(lines)

    def clear(self) -> None:
        self.events.clear()


_ACTIVE_LOGS: list = []  # the logs of the open count_transfers() blocks (each event goes to all)


def _where(depth: int = 1) -> str:
    """The first two call sites outside this file, innermost first ("pkg/file.py:line func < ...")."""
    out = []
    f = sys._getframe(depth)
    while f is not None and len(out) < 2:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn != _HERE:
            short = "/".join(fn.replace(os.sep, "/").split("/")[-2:])
            out.append(f"{short}:{f.f_lineno} {f.f_code.co_name}")
        f = f.f_back
    return " < ".join(out)


def _record(direction: str, arr, via: str, backend: str) -> None:
    shape = tuple(int(s) for s in getattr(arr, "shape", ()))
    dtype = getattr(arr, "dtype", None)
    nbytes = int(getattr(arr, "nbytes", 0))
    ev = Transfer(direction, shape, str(dtype), nbytes, via, _where(), backend)
    for log in _ACTIVE_LOGS:
        log.events.append(ev)


class _CountingNamespace:
    """Stands in for `Backend.xp` while a count_transfers() block is open: the same namespace (every
    attribute is the module's), with the array constructors and `asnumpy` recording host objects
    that cross. Installed and removed by Backend.count_transfers; never seen otherwise."""

    def __init__(self, backend: "Backend"):
        object.__setattr__(self, "_backend", backend)
        object.__setattr__(self, "_module", backend._module)

    def __getattr__(self, name):
        return getattr(self._module, name)

    def __setattr__(self, name, value):
        raise AttributeError("the counting namespace is read-only")

    def __repr__(self):
        return f"<counting {self._module.__name__}>"

    def _wrap_ctor(fname):
        def ctor(self, a, *args, **kwargs):
            out = getattr(self._module, fname)(a, *args, **kwargs)
            if _ACTIVE_LOGS and self._backend._is_host_input(a):
                _record("h2d", out, f"xp.{fname}", self._backend.name)
            return out

        ctor.__name__ = fname
        return ctor

    asarray = _wrap_ctor("asarray")
    array = _wrap_ctor("array")
    asanyarray = _wrap_ctor("asanyarray")
    ascontiguousarray = _wrap_ctor("ascontiguousarray")
    del _wrap_ctor

    def asnumpy(self, a, *args, **kwargs):
        out = self._module.asnumpy(a, *args, **kwargs)  # AttributeError on NumPy, as without the counter
        if _ACTIVE_LOGS and isinstance(a, self._module.ndarray):
            _record("d2h", out, "xp.asnumpy", self._backend.name)
        return out


class Backend:
    """One array backend: its namespace `xp`, host transfers, seeded RNGs and the float dtype."""

    def __init__(self, name: str, xp, dtype="float32"):
        if str(dtype) not in _DTYPES:
            raise BackendError(
                f"dtype không hợp lệ / invalid dtype: expected 'float32' or 'float64', got {dtype!r}"
            )
        self.name = name
        self._module = xp  # the array module itself (numpy or cupy), whatever `xp` is at the moment
        self.xp = xp
        self._counting = 0  # open count_transfers() blocks on this backend
        self.dtype = xp.dtype(_DTYPES[str(dtype)])
        from . import kernels as _k

        self.kernels = _k.KernelNamespace(self)

    # -- transfers -------------------------------------------------------------------------
    def _is_host_input(self, x) -> bool:
        """Whether handing `x` to an array constructor is an upload (see the module docstring)."""
        if self.name == "numpy":  # stand-in: NumPy arrays and NumPy scalars are "device" values
            # (np.float64 subclasses float: a reduction's result is a device value, not a host one)
            return isinstance(x, (list, tuple)) or (isinstance(x, _PY_SCALARS) and not isinstance(x, np.generic))
        return not isinstance(x, self._module.ndarray) and not hasattr(x, "__cuda_array_interface__")

    def asarray(self, x, dtype=None):
        """Array on this backend. Python/NumPy floats become the policy dtype unless `dtype` is given.

        On CuPy a Python or NumPy scalar becomes a device fill (`cupy.full`: the value travels as a
        kernel argument, no host-to-device copy), so it is not recorded as a transfer either."""
        xp = self._module
        if self.name != "numpy" and isinstance(x, _PY_SCALARS + (np.generic,)):
            if dtype is None:
                dtype = np.asarray(x).dtype  # host-side dtype inference only
                if dtype.kind == "f" and dtype != self.dtype:
                    dtype = self.dtype
            return xp.full((), x, dtype=dtype)
        if dtype is None:
            a = xp.asarray(x)
            if a.dtype.kind == "f" and a.dtype != self.dtype:
                a = a.astype(self.dtype)
        else:
            a = xp.asarray(x, dtype=dtype)
        # Python scalars are fills on CuPy (above), so they are not recorded on the stand-in either
        if _ACTIVE_LOGS and not isinstance(x, _PY_SCALARS) and self._is_host_input(x):
            _record("h2d", a, "Backend.asarray", self.name)
        return a

    def to_numpy(self, x):
        """A host NumPy array (copies from the device on CuPy)."""
        if self.name == "cupy" and (isinstance(x, self._module.ndarray) or not isinstance(x, np.ndarray)):
            out = self._module.asnumpy(x)
            if _ACTIVE_LOGS and isinstance(x, self._module.ndarray):
                _record("d2h", out, "Backend.to_numpy", self.name)
            return out
        out = np.asarray(x)
        if _ACTIVE_LOGS and self.name == "numpy" and isinstance(x, (np.ndarray, np.generic)):
            _record("d2h", out, "Backend.to_numpy", self.name)
        return out

    def is_array(self, x) -> bool:
        return isinstance(x, self._module.ndarray)

    @contextlib.contextmanager
    def count_transfers(self):
        """`with be.count_transfers() as log:` records the block's host<->device copies in `log`
        (a TransferLog). Blocks nest; every open log receives every event."""
        log = TransferLog()
        _ACTIVE_LOGS.append(log)
        self._counting += 1
        if self._counting == 1:
            self.xp = _CountingNamespace(self)
        try:
            yield log
        finally:
            self._counting -= 1
            if self._counting == 0:
                self.xp = self._module
            _ACTIVE_LOGS.remove(log)

    # -- randomness ------------------------------------------------------------------------
    def rng(self, seed):
        """A seeded generator on this backend (`xp.random.default_rng`)."""
        return self._module.random.default_rng(seed)

    def host_rng(self, seed):
        """A seeded host generator (data shuffling, initialisation: identical on every backend)."""
        return np.random.default_rng(seed)

    @staticmethod
    def rng_state(rng):
        """The JSON-able state of a generator from `rng()`, or None where it cannot be exported.

        NumPy: `rng.bit_generator.state` (a dict). CuPy: None; its bit generators keep their state in
        device memory, and there `bit_generator.state` is a *method* returning a device pointer."""
        state = getattr(getattr(rng, "bit_generator", None), "state", None)
        if state is None or callable(state):
            return None
        return state

    @staticmethod
    def set_rng_state(rng, state) -> bool:
        """Restore a state from `rng_state` into `rng`; False (nothing changed) where impossible."""
        bg = getattr(rng, "bit_generator", None)
        if state is None or bg is None or callable(getattr(bg, "state", None)):
            return False
        bg.state = state
        return True

    def with_dtype(self, dtype) -> "Backend":
        return Backend(self.name, self._module, dtype)

    def synchronize(self):
        if self.name == "cupy":
            self._module.cuda.Device().synchronize()

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
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        out = x.get()
        if _ACTIVE_LOGS:
            _record("d2h", out, "to_numpy", "cupy")
        return out
    out = x if isinstance(x, np.ndarray) else np.asarray(x)
    if _ACTIVE_LOGS and isinstance(x, (np.ndarray, np.generic)) and (_current is None or _current.name == "numpy"):
        _record("d2h", out, "to_numpy", "numpy")  # the NumPy stand-in: its arrays are "device" arrays
    return out


def count_transfers():
    """`with count_transfers() as log:` on the current backend (see Backend.count_transfers)."""
    return get_backend().count_transfers()
