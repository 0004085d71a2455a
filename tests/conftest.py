"""Shared fixtures for the whole test suite.

- `backend`: parametrized over "numpy" and "cupy" (the cupy case carries `pytest.mark.gpu` and is
  skipped where CuPy or a CUDA device is missing). It yields the selected `Backend` in float64, so a
  test body written once runs on both backends. Never copy a test file for CuPy: take this fixture.
- `torch`: the torch module, or a skip where torch is not installed (it is a test oracle only).
- `_restore_backend` (autouse): every test leaves the process-wide backend as it found it.
"""

from __future__ import annotations

import pytest

from vietnamese_ai_ref import backends as _backends

BACKEND_NAMES = ("numpy", "cupy")


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
