"""The backend layer: selection, dtype policy, transfers, seeded generators, and the import rule.

The rule: inside `vietnamese_ai_ref`, only `vietnamese_ai_ref.backends` touches numpy/cupy; every
other module goes through `get_backend().xp`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import vietnamese_ai_ref
from vietnamese_ai_ref import backends as B
from vietnamese_ai_ref.backends import BackendError

PKG_DIR = Path(vietnamese_ai_ref.__file__).resolve().parent
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch):
    """No current backend and no selection variables: the next get_backend() reads the environment."""
    monkeypatch.delenv("VIETNAMESE_AI_BACKEND", raising=False)
    monkeypatch.delenv("VIETNAMESE_AI_DTYPE", raising=False)
    monkeypatch.setattr(B, "_current", None)
    return monkeypatch


def _no_cupy(monkeypatch):
    """Make `import cupy` fail, whether or not CuPy is installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def _fake_cupy(monkeypatch, device_count):
    """A stand-in CuPy that imports but reports `device_count` GPUs (or raises, like a missing driver)."""

    def count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))
    monkeypatch.setitem(sys.modules, "cupy", fake)


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------

def test_default_is_numpy_float32(fresh):
    be = B.get_backend()
    assert be.name == "numpy" and be.xp is np
    assert be.dtype == np.float32
    assert B.get_backend() is be  # created once


def test_select_by_argument(fresh):
    be = B.set_backend("numpy", dtype="float64")
    assert be.name == "numpy" and be.dtype == np.float64
    assert B.get_backend() is be
    be2 = B.set_backend(dtype="float32")  # keeps the name
    assert be2.name == "numpy" and be2.dtype == np.float32
    be3 = B.set_backend(dtype=np.float64)  # a dtype object works too
    assert be3.dtype == np.float64


def test_use_backend_restores(fresh):
    outer = B.set_backend("numpy", dtype="float32")
    with B.use_backend(dtype="float64") as be:
        assert be.dtype == np.float64 and B.get_backend() is be
    assert B.get_backend() is outer
    with pytest.raises(ZeroDivisionError):
        with B.use_backend("numpy", dtype="float64"):
            1 / 0
    assert B.get_backend() is outer


@pytest.mark.parametrize("value", ["numpy", "NumPy"])
def test_select_by_environment(fresh, value):
    fresh.setenv("VIETNAMESE_AI_BACKEND", value)
    fresh.setenv("VIETNAMESE_AI_DTYPE", "float64")
    be = B.get_backend()
    assert be.name == "numpy" and be.dtype == np.float64


def test_auto_selects_numpy_without_gpu(fresh):
    _no_cupy(fresh)
    fresh.setenv("VIETNAMESE_AI_BACKEND", "auto")
    assert B.get_backend().name == "numpy"
    assert B.set_backend("auto").name == "numpy"


def test_auto_matches_cupy_availability(fresh):
    fresh.setenv("VIETNAMESE_AI_BACKEND", "auto")
    assert B.get_backend().name == ("cupy" if B.cupy_available() else "numpy")


def test_invalid_backend_name(fresh):
    fresh.setenv("VIETNAMESE_AI_BACKEND", "tensorflow")
    with pytest.raises(BackendError, match="tensorflow"):
        B.get_backend()
    fresh.delenv("VIETNAMESE_AI_BACKEND")
    before = B.get_backend()
    with pytest.raises(BackendError):
        B.set_backend("jax")
    assert B.get_backend() is before  # a failed selection changes nothing


def test_invalid_dtype(fresh):
    with pytest.raises(BackendError):
        B.set_backend("numpy", dtype="float16")
    fresh.setenv("VIETNAMESE_AI_DTYPE", "int32")
    fresh.setattr(B, "_current", None)
    with pytest.raises(BackendError):
        B.get_backend()


@pytest.mark.skipif(B.cupy_available(), reason="a CUDA GPU is present: asking for cupy succeeds here")
def test_cupy_without_gpu_mentions_cuda_extra(fresh):
    before = B.get_backend()
    with pytest.raises(BackendError, match="`cuda` extra"):
        B.set_backend("cupy")
    assert B.get_backend() is before
    fresh.setenv("VIETNAMESE_AI_BACKEND", "cupy")
    fresh.setattr(B, "_current", None)
    with pytest.raises(BackendError, match="`cuda` extra"):
        B.get_backend()


@pytest.mark.parametrize("situation", ["not installed", "no device", "no driver"])
def test_cupy_unusable_raises_backend_error(fresh, situation):
    """Each way CuPy can be unusable gives a BackendError naming the `cuda` extra (simulated)."""
    if situation == "not installed":
        _no_cupy(fresh)
    else:
        _fake_cupy(fresh, 0 if situation == "no device" else RuntimeError("CUDA driver not found"))
    assert not B.cupy_available()
    with pytest.raises(BackendError, match="`cuda` extra"):
        B.set_backend("cupy")
    assert B.set_backend("auto").name == "numpy"


def test_backend_error_is_runtime_error():
    assert issubclass(BackendError, RuntimeError)


# ---------------------------------------------------------------------------------------------
# dtype policy
# ---------------------------------------------------------------------------------------------

def test_dtype_policy_float32_default(fresh):
    be = B.get_backend()
    assert be.asarray([1.0, 2.0]).dtype == np.float32
    assert be.asarray(np.ones(3, dtype=np.float64)).dtype == np.float32  # floats converted
    assert be.asarray(1.5).dtype == np.float32
    assert be.asarray([1, 2, 3]).dtype.kind == "i"  # ints kept
    assert be.asarray(np.arange(3, dtype=np.int32)).dtype == np.int32
    assert be.asarray(np.array([True, False])).dtype == np.bool_
    assert be.asarray([1.0], dtype=np.float64).dtype == np.float64  # explicit dtype wins


def test_dtype_policy_float64(backend):
    xp = backend.xp
    assert backend.dtype == xp.float64
    assert backend.asarray(np.ones(3, dtype=np.float32)).dtype == xp.float64
    assert backend.asarray([1, 2]).dtype.kind == "i"
    assert backend.with_dtype("float32").dtype == xp.float32
    assert backend.with_dtype("float32").name == backend.name


def test_tensor_follows_policy(backend):
    from vietnamese_ai_ref import tensor

    assert tensor([1.0, 2.0]).dtype == backend.xp.float64
    assert tensor([1, 2]).dtype.kind == "i"
    with B.use_backend(dtype="float32"):
        assert tensor(np.ones(2)).dtype == backend.xp.float32


# ---------------------------------------------------------------------------------------------
# transfers and randomness
# ---------------------------------------------------------------------------------------------

def test_to_numpy_round_trip(backend):
    host = np.random.default_rng(0).standard_normal((3, 4))
    dev = backend.asarray(host)
    assert backend.is_array(dev)
    back = backend.to_numpy(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    np.testing.assert_array_equal(B.to_numpy(dev), host)
    ids = np.array([3, 1, 2])
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray(ids)), ids)
    assert isinstance(B.to_numpy([1.0, 2.0]), np.ndarray)
    assert B.to_numpy(host) is host
    assert float(B.to_numpy(2.5)) == 2.5


def test_seeded_rng_reproducible(backend):
    a = backend.to_numpy(backend.rng(42).random(8))
    b = backend.to_numpy(backend.rng(42).random(8))
    c = backend.to_numpy(backend.rng(43).random(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    h1 = backend.host_rng(7).standard_normal(5)
    h2 = np.random.default_rng(7).standard_normal(5)  # host generator: identical on every backend
    assert isinstance(h1, np.ndarray)
    np.testing.assert_array_equal(h1, h2)


def test_kernels_namespace_is_bound(backend):
    assert backend.kernels.xp is backend.xp
    assert backend.kernels.backend is backend
    assert isinstance(backend.kernels.accelerated, dict)


def test_repr_and_synchronize(backend):
    assert backend.name in repr(backend) and "float64" in repr(backend)
    backend.synchronize()


def test_host_np_is_numpy():
    assert B.host_np is np


# ---------------------------------------------------------------------------------------------
# the rule: no numpy/cupy imports outside the backends layer
# ---------------------------------------------------------------------------------------------

_FORBIDDEN = re.compile(r"^\s*(import|from)\s+(numpy|cupy)\b", re.MULTILINE)
_TOP_LEVEL_BACKENDS = re.compile(r"^\s*(import|from)\s+backends\b", re.MULTILINE)


def _package_sources():
    """Every .py of the package except the backend layer itself (which lives in PKG_DIR/backends in a
    wheel install, and in the repository's top-level backends/ in an editable one)."""
    layer = PKG_DIR / "backends"
    files = sorted(
        p for p in PKG_DIR.rglob("*.py") if "__pycache__" not in p.parts and layer not in p.parents
    )
    assert files, f"no Python files found under {PKG_DIR}"
    return files


def test_rule_no_direct_numpy_or_cupy_imports():
    offenders = []
    for path in _package_sources():
        text = path.read_text(encoding="utf-8")
        for m in _FORBIDDEN.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            offenders.append(f"{path.relative_to(PKG_DIR.parent)}:{line}: {m.group(0).strip()}")
    assert not offenders, (
        "modules of vietnamese_ai_ref must not import numpy/cupy directly (use get_backend().xp, "
        "or backends.host_np for host I/O):\n  " + "\n  ".join(offenders)
    )


def test_rule_no_top_level_backends_imports():
    offenders = [
        str(p.relative_to(PKG_DIR.parent)) for p in _package_sources() if _TOP_LEVEL_BACKENDS.search(p.read_text("utf-8"))
    ]
    assert not offenders, f"import the backend layer as `vietnamese_ai_ref.backends` / `.backends`: {offenders}"


def test_rule_regex_catches_violations():
    """The rule's pattern itself: catches the usual spellings, ignores look-alikes."""
    for bad in ["import numpy as np", "from numpy import ndarray", "    import cupy", "from cupy.cuda import runtime",
                "import numpy"]:
        assert _FORBIDDEN.search(bad), bad
    for ok in ["import numpyish", "# import numpy", "from .backends import host_np", "x = 'import numpy'"]:
        assert not _FORBIDDEN.search(ok), ok


def test_backends_is_a_subpackage():
    mod = importlib.import_module("vietnamese_ai_ref.backends")
    where = Path(mod.__file__).resolve().parent
    assert where in (REPO_ROOT / "backends", PKG_DIR / "backends"), where
    assert mod.__name__ == "vietnamese_ai_ref.backends"
    assert mod.kernels.__name__ == "vietnamese_ai_ref.backends.kernels"


def test_no_top_level_backends_module_installed(tmp_path):
    """Outside the repository checkout, `backends` must not resolve into this project, and importing
    the package must not import a top-level `backends` module (PyPI has an unrelated package by that name).

    Runs in a subprocess with `-I` from a neutral directory: `python -m pytest` puts the repository
    root on sys.path, where the source folder `backends/` would be found by accident.
    """
    code = (
        "import importlib.util, sys, json\n"
        "spec = importlib.util.find_spec('backends')\n"
        "import vietnamese_ai_ref, vietnamese_ai_ref.core.autograd, vietnamese_ai_ref.core.gradcheck\n"
        "import vietnamese_ai_ref.backends as b\n"
        "print(json.dumps({'origin': getattr(spec, 'origin', None) if spec else None,\n"
        "                  'loaded': 'backends' in sys.modules, 'file': b.__file__}))\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    info = json.loads(proc.stdout.strip().splitlines()[-1])
    origin = info["origin"]
    ours = Path(info["file"]).resolve().parent
    assert ours in (REPO_ROOT / "backends", PKG_DIR / "backends"), ours
    if origin is not None:  # an unrelated `backends` distribution may exist; ours must not be it
        o = Path(origin).resolve()
        assert o.parent != ours and ours not in o.parents, f"top-level `backends` resolves into this project: {o}"
    assert not info["loaded"], "importing vietnamese_ai_ref imported a top-level `backends` module"
