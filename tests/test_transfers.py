"""Host<->device transfer accounting (`Backend.count_transfers`) and the transfer budget of a step.

The budget (issue 9, what a GPU run may copy per optimiser step): uploads only of the batch (token
ids, attention mask, labels: integer arrays of one row per sequence) and, for DPO, the reference
log-probability vectors; downloads only of O(batch) scalars and vectors (the loss, the DPO reward
statistics), never an array of more than 2·batch elements: no logits, no parameters, no gradients.

On the NumPy backend the counter records the same calls (lists, tuples and Python scalars handed to
`xp.asarray` are uploads; every `to_numpy` of an array is a download), so this file measures the
budget without a GPU; through the `backend` fixture it runs on CuPy too where a GPU is present.
Implicit conversions (`float(a)`, `bool(a)`, `a.tolist()` on a device array) are not recorded.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from vietnamese_ai_ref import DPOTrainer, SFTTrainer
from vietnamese_ai_ref import backends as B
from vietnamese_ai_ref.core.autograd import Tensor
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

BATCH = 2  # sequences (SFT) or pairs (DPO) per micro-batch; one micro-batch = one optimiser step here
N_POSITIONS = 64


def tiny(seed=0):
    return TransformerLM(GPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=N_POSITIONS, seed=seed))


SFT_DATA = [{"instruction": f"Tính {a} + 1", "output": f"{a + 1}."} for a in range(BATCH)]
PREF = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(BATCH)]


# ---------------------------------------------------------------------------------------------
# the counter itself
# ---------------------------------------------------------------------------------------------

def test_counter_records_explicit_transfers(backend):
    xp = backend.xp
    dev = backend.asarray(np.arange(6.0).reshape(2, 3))  # made before the block: not recorded
    with backend.count_transfers() as log:
        a = backend.asarray([1, 2, 3])  # a host list: upload
        backend.asarray(1.5)  # a Python scalar: a device fill on CuPy, never recorded
        backend.asarray(dev)  # already on the device
        backend.asarray(np.ones(4))  # a host array: an upload on CuPy; a "device" array on the stand-in
        backend.xp.asarray([[1.0, 2.0]], dtype=xp.float64)  # the namespace's constructor: upload
        backend.xp.zeros(5)  # made on the device
        host = backend.to_numpy(dev)  # download
        B.to_numpy(a)  # the module's to_numpy: download
        Tensor(dev[0, :1]).item()  # item(): a one-element download
        Tensor(dev).numpy()  # download
    up, down = log.uploads, log.downloads
    expected_up = [(3,), (4,), (1, 2)] if backend.name == "cupy" else [(3,), (1, 2)]
    assert [e.shape for e in up] == expected_up, log.report()
    assert up[0].nbytes == 3 * a.dtype.itemsize and up[0].via == "Backend.asarray"
    assert up[-1].via == "xp.asarray" and up[-1].nbytes == 16
    assert [e.shape for e in down] == [(2, 3), (3,), (1,), (2, 3)], log.report()
    assert down[0].nbytes == host.nbytes and down[2].size == 1
    assert all(e.direction in ("h2d", "d2h") for e in log)
    assert "test_transfers.py" in up[0].where  # where the copy was made
    assert log.summary() == {"h2d": {"count": len(up), "nbytes": sum(e.nbytes for e in up)},
                             "d2h": {"count": 4, "nbytes": sum(e.nbytes for e in down)}}
    assert "total:" in log.report()


def test_counter_is_scoped_nests_and_restores(backend):
    module = backend.xp
    with backend.count_transfers() as outer:
        assert backend.xp is not module and backend.xp.float64 is module.float64  # same namespace
        assert isinstance(backend.xp.zeros(2), module.ndarray)
        backend.asarray([1.0])
        with B.count_transfers() as inner:  # the module-level form: the current backend
            backend.to_numpy(backend.xp.zeros(3))
        backend.asarray([2.0])
    assert backend.xp is module  # the plain namespace is back
    assert [e.direction for e in outer] == ["h2d", "d2h", "h2d"]
    assert [e.direction for e in inner] == ["d2h"]
    backend.asarray([3.0])  # nothing is recorded outside a block
    assert len(outer) == 3
    with pytest.raises(ZeroDivisionError):
        with backend.count_transfers():
            1 / 0
    assert backend.xp is module and not B._ACTIVE_LOGS
    assert backend.with_dtype("float32").xp is module


def test_numpy_scalars_are_device_values_on_the_stand_in():
    """np.float64 subclasses float, but on NumPy it is what a reduction returns: not an upload."""
    with B.use_backend("numpy", dtype="float64") as be:
        with be.count_transfers() as log:
            s = be.xp.ones(3).sum()
            assert isinstance(s, float)
            be.xp.asarray(s, dtype=be.xp.float64)
            be.xp.asarray(2.5)  # a real Python float: an upload (a memcpy on CuPy)
    assert [e.shape for e in log.uploads] == [()]


class _Dev(np.ndarray):
    """The 'device' arrays of the simulated CuPy below (host NumPy arrays stay plain ndarrays)."""


def _fake_cupy(calls):
    """A namespace shaped like CuPy for the code paths only CuPy takes (no GPU needed)."""
    mod = types.ModuleType("fake_cupy")
    for name in ("dtype", "float32", "float64", "int64", "zeros", "random", "add"):
        setattr(mod, name, getattr(np, name))
    mod.ndarray = _Dev

    def asarray(x, dtype=None):
        calls.append(("asarray", type(x).__name__))
        return np.asarray(x, dtype=dtype).view(_Dev)

    def full(shape, value, dtype=None):
        calls.append(("full", dtype))
        return np.full(shape, value, dtype=dtype).view(_Dev)

    mod.asarray, mod.full = asarray, full
    mod.asnumpy = lambda x: np.asarray(x).view(np.ndarray)
    return mod


def test_cupy_paths_simulated():
    """Backend("cupy") logic on a simulated namespace: scalars become fills, host arrays are uploads."""
    calls = []
    be = B.Backend("cupy", _fake_cupy(calls), "float32")
    with be.count_transfers() as log:
        s = be.asarray(1.5)
        i = be.asarray(7)
        f = be.asarray(np.float64(2.0))
        h = be.asarray(np.ones(3))  # a host array on CuPy: an upload
        d = be.asarray(h)  # already a device array
        host = be.to_numpy(d)
    assert s.dtype == np.float32 and s.shape == () and float(s) == 1.5
    assert i.dtype.kind == "i" and f.dtype == np.float32
    assert [c[0] for c in calls[:3]] == ["full", "full", "full"]
    assert [(e.direction, e.shape) for e in log] == [("h2d", (3,)), ("d2h", (3,))]
    assert type(host) is np.ndarray and isinstance(d, _Dev)
    assert be.asarray(2.0, dtype=np.float64).dtype == np.float64


def test_add_at_accumulates_and_falls_back_to_cupyx(monkeypatch):
    target = np.zeros(4)
    B.add_at(np, target, np.array([1, 1, 3]), np.array([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(target, [0.0, 3.0, 0.0, 5.0])  # repeats accumulate

    seen = []
    fake_cupyx = types.ModuleType("cupyx")
    fake_cupyx.scatter_add = lambda t, idx, v: seen.append((t, idx, v))
    monkeypatch.setitem(sys.modules, "cupyx", fake_cupyx)
    old_cupy = types.SimpleNamespace(add=types.SimpleNamespace())  # a CuPy < 12: add has no .at
    B.add_at(old_cupy, "t", "i", "v")
    assert seen == [("t", "i", "v")]


def test_rng_state_helpers():
    be = B.Backend("numpy", np, "float64")
    rng = be.rng(3)
    state = be.rng_state(rng)
    first = rng.random(4)
    assert be.set_rng_state(rng, state)
    np.testing.assert_array_equal(rng.random(4), first)
    # CuPy's bit generators have a state() *method* (a device pointer): nothing to export or set
    cupy_like = types.SimpleNamespace(bit_generator=types.SimpleNamespace(state=lambda: 12345))
    assert be.rng_state(cupy_like) is None
    assert not be.set_rng_state(cupy_like, {"state": 1})
    assert callable(cupy_like.bit_generator.state)  # untouched
    assert not be.set_rng_state(rng, None)


# ---------------------------------------------------------------------------------------------
# the budget of one optimiser step
# ---------------------------------------------------------------------------------------------

def _check_budget(log, *, batch_rows, float_vectors, max_batch_uploads, max_vector_uploads, max_downloads,
                  max_download_elems):
    """Assert the transfer budget; returns (batch uploads, vector uploads)."""
    report = "\n" + log.report()
    batch_up = [e for e in log.uploads if e.dtype.startswith("int") and len(e.shape) == 2]
    vec_up = [e for e in log.uploads if e.dtype.startswith("float") and e.shape == (float_vectors,)]
    other = [e for e in log.uploads if e not in batch_up and e not in vec_up]
    assert not other, "uploads other than the batch and the reference log-probs:" + report
    assert all(e.shape[0] == batch_rows and 2 <= e.shape[1] <= N_POSITIONS for e in batch_up), report
    assert 1 <= len(batch_up) <= max_batch_uploads, report
    assert len(vec_up) <= max_vector_uploads, report
    big = [e for e in log.downloads if e.size > max_download_elems]
    assert not big, f"downloads of more than {max_download_elems} elements (logits, parameters, gradients?):" + report
    assert len(log.downloads) <= max_downloads, report
    return batch_up, vec_up


def test_sft_step_transfer_budget(backend):
    model = tiny()
    trainer = SFTTrainer(so_vong=1, kich_thuoc_batch=BATCH, gradient_accumulation=1, toc_do_hoc=1e-3)
    with backend.count_transfers() as log:
        result = trainer.huan_luyen(model, SFT_DATA)
    assert result["global_step"] == 1
    batch_up, _ = _check_budget(log, batch_rows=BATCH, float_vectors=BATCH, max_batch_uploads=3,
                                max_vector_uploads=0, max_downloads=1, max_download_elems=2 * BATCH)
    T = batch_up[0].shape[1]
    assert log.nbytes("h2d") <= 3 * BATCH * T * 8  # ids, mask, labels as int64
    assert log.nbytes("d2h") <= backend.dtype.itemsize  # the step's loss


def test_dpo_step_transfer_budget(backend):
    """Reference pass (ids/mask/labels up, two (B,) log-prob vectors down) + one step (the batch and
    the two (B,) reference vectors up; the two (B,) reward vectors and the loss down)."""
    model = tiny()
    trainer = DPOTrainer(so_vong=1, kich_thuoc_batch=BATCH, gradient_accumulation=1, toc_do_hoc=1e-3)
    with backend.count_transfers() as log:
        result = trainer.huan_luyen(model, None, PREF)
    assert result["global_step"] == 1
    batch_up, vec_up = _check_budget(log, batch_rows=2 * BATCH, float_vectors=BATCH, max_batch_uploads=6,
                                     max_vector_uploads=2, max_downloads=5, max_download_elems=2 * BATCH)
    T = max(e.shape[1] for e in batch_up)
    assert log.nbytes("h2d") <= 6 * 2 * BATCH * T * 8 + 2 * BATCH * backend.dtype.itemsize
    assert log.nbytes("d2h") <= 5 * BATCH * backend.dtype.itemsize


def test_budget_check_catches_a_logits_download(backend):
    """The checker is not vacuous: downloading the logits of a batch breaks the budget."""
    model = tiny()
    with backend.count_transfers() as log:
        ids = backend.xp.asarray([[1, 2, 3], [4, 5, 6]], dtype=backend.xp.int64)
        backend.to_numpy(model(ids).data)
    with pytest.raises(AssertionError, match="more than 4 elements"):
        _check_budget(log, batch_rows=BATCH, float_vectors=BATCH, max_batch_uploads=3, max_vector_uploads=0,
                      max_downloads=1, max_download_elems=2 * BATCH)
