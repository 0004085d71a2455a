"""The performance work (issue 7) keeps results: blocked reference kernels, fused model ops, the optional
numba kernels, and float32 staying float32.

- The reference kernels walk large inputs in blocks (backends/kernels.py): here they are held, on inputs
  of many blocks, to the plain whole-array formulas (float64, 1e-12), with and without `out=`.
- The fused ops of core/fused.py (`linear_in_out`, `linear`, `causal_attention`) equal the composition of basic
  autograd ops they replace, values and gradients (float64, 1e-12).
- The accelerated kernels of backends/fast_kernels.py (numba; skipped where numba is missing) agree with
  the reference kernels: float64 to 1e-12 relative (scaled by max(1, |ref|), as tests/test_kernels.py),
  float32 within the tolerances below measured against the float64 reference, and AdamW bit for bit.
- A float32 training step (SFT and DPO) never produces a float64 array, forward or backward.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vietnamese_ai_ref.core import autograd as ag
from vietnamese_ai_ref import backends as B
from vietnamese_ai_ref import losses
from vietnamese_ai_ref.core import fused as fused_mod
from vietnamese_ai_ref.models.kv_cache import blocked_keys
from vietnamese_ai_ref.backends import kernels as kernels_mod
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.core.optim import AdamW, clip_coefficient

TOL64 = 1e-12
# float32 tolerances of the accelerated kernels against the float64 reference (|err| / max(1, |ref|)); a
# kernel passes when within these, or within twice the float32 reference kernel's own error on the input.
TOL32 = {
    "layernorm": 2e-6, "layernorm_backward": 2e-5, "gelu": 1e-6, "gelu_backward": 2e-6,
    "softmax": 1e-6, "softmax_backward": 2e-6, "cross_entropy": 2e-6, "cross_entropy_backward": 1e-6,
}


def close(got, ref, what, tol):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
    worst = float(err.max()) if err.size else 0.0
    assert worst <= tol, f"{what}: max relative error {worst:.3e} > {tol:.1e}"


def need_numba():
    """Skip unless numba imports (absent, or present but unusable with this NumPy: both skip)."""
    try:
        import numba  # noqa: F401
    except ImportError as e:
        pytest.skip(f"numba is not available: {e}")


def with_kernels(monkeypatch, mode, dtype="float64"):
    monkeypatch.setenv(kernels_mod.KERNELS_ENV, mode)
    return B.Backend("numpy", np, dtype)


# ---------------------------------------------------------------------------------------------
# the blocked reference kernels against whole-array formulas
# ---------------------------------------------------------------------------------------------

def _plain(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


@pytest.fixture
def ref64(monkeypatch):
    return with_kernels(monkeypatch, "reference").kernels


def test_reference_kernels_blocked_equal_plain_formulas(ref64):
    k = ref64
    rng = np.random.default_rng(0)
    n_rows, d = 3 * kernels_mod.BLOCK // 64 + 7, 64  # several blocks and a ragged last one
    x, dy = rng.standard_normal((n_rows, d)) * 2 + 0.5, rng.standard_normal((n_rows, d))
    w, b = rng.standard_normal(d), rng.standard_normal(d)
    y, mean, rstd = k.layernorm_forward(x, w, b, 1e-5)
    close(y, _plain(x, w, b, 1e-5), "layernorm", TOL64)
    xhat = (x - mean) * rstd
    g = dy * w
    dx_ref = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    dx, dw, db = k.layernorm_backward(dy, x, w, mean, rstd)
    close(dx, dx_ref, "layernorm dx", TOL64)
    close(dw, (dy * xhat).sum(0), "layernorm dw", TOL64)
    close(db, dy.sum(0), "layernorm db", TOL64)

    flat = rng.standard_normal(2 * kernels_mod.BLOCK + 5) * 3
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (flat + 0.044715 * flat**3))
    close(k.gelu_forward(flat), 0.5 * flat * (1 + t), "gelu", TOL64)
    dflat = rng.standard_normal(flat.shape)
    dgelu = 0.5 * (1 + t) + 0.5 * flat * (1 - t * t) * c * (1 + 3 * 0.044715 * flat**2)
    close(k.gelu_backward(dflat, flat), dflat * dgelu, "gelu backward", TOL64)

    att = rng.standard_normal((5, 3, 97, 130)) * 4
    e = np.exp(att - att.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    close(k.softmax_forward(att), p, "softmax", TOL64)
    buf = att.copy()
    assert k.softmax_forward(buf, out=buf) is buf
    close(buf, p, "softmax in place", TOL64)
    big = np.empty(att.shape[:-1] + (2 * att.shape[-1],))
    strided = big[..., ::2]  # a non-contiguous `out`
    k.softmax_forward(att, out=strided)
    close(strided, p, "softmax into a strided out", TOL64)
    datt = rng.standard_normal(att.shape)
    sb = p * (datt - (datt * p).sum(-1, keepdims=True))
    close(k.softmax_backward(datt, p), sb, "softmax backward", TOL64)
    buf = datt.copy()
    assert k.softmax_backward(buf, p, out=buf) is buf
    close(buf, sb, "softmax backward in place", TOL64)

    logits = rng.standard_normal((3 * kernels_mod.BLOCK // 257 + 3, 257)) * 3
    tgt = rng.integers(0, 257, logits.shape[0])
    tgt[::5] = -100
    losses_, lse, valid = k.cross_entropy_forward(logits, tgt)
    m = logits.max(-1)
    lse_ref = m + np.log(np.exp(logits - m[:, None]).sum(-1))
    close(lse, lse_ref, "logsumexp", TOL64)
    picked = logits[np.arange(len(tgt)), np.where(valid, tgt, 0)]
    close(losses_, np.where(valid, lse_ref - picked, 0.0), "cross-entropy", TOL64)
    dl = rng.standard_normal(len(tgt))
    soft = np.exp(logits - lse_ref[:, None])
    soft[np.arange(len(tgt)), np.where(valid, tgt, 0)] -= 1
    close(k.cross_entropy_backward(dl, logits, tgt, lse, valid), soft * np.where(valid, dl, 0)[:, None],
          "cross-entropy backward", TOL64)


def test_reference_adamw_blocked_and_decay_forms(ref64):
    k = ref64
    rng = np.random.default_rng(1)
    n = 2 * kernels_mod.ADAMW_BLOCK + 11
    p0, grads = rng.standard_normal(n), [rng.standard_normal(n) for _ in range(3)]
    for wd in (0.0, 0.05, np.where(np.arange(n) % 4 == 0, 0.0, 0.2)):
        p, m, v = p0.copy(), np.zeros(n), np.zeros(n)
        rp, rm, rv = p0.copy(), np.zeros(n), np.zeros(n)
        for step, g in enumerate(grads, start=1):
            k.adamw_update(p, g, m, v, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=wd, step=step)
            rp = rp * (1 - 1e-2 * wd)
            rm = 0.9 * rm + 0.1 * g
            rv = 0.99 * rv + 0.01 * g * g
            rp = rp - 1e-2 * (rm / (1 - 0.9**step)) / (np.sqrt(rv / (1 - 0.99**step)) + 1e-8)
        close(p, rp, f"adamw param (wd={np.ndim(wd) and 'array' or wd})", TOL64)
        close(m, rm, "adamw m", TOL64)
        close(v, rv, "adamw v", TOL64)


def test_kernel_mode_selection(monkeypatch):
    assert with_kernels(monkeypatch, "reference").kernels.accelerated == {}
    monkeypatch.delenv(kernels_mod.KERNELS_ENV, raising=False)
    assert B.Backend("numpy", np, "float32").kernels.accelerated == {}  # the default: reference kernels
    with pytest.raises(ValueError, match="VIETNAMESE_AI_KERNELS"):
        with_kernels(monkeypatch, "turbo")
    try:
        import numba  # noqa: F401
    except ImportError:
        assert with_kernels(monkeypatch, "auto").kernels.accelerated == {}
        with pytest.warns(RuntimeWarning, match="numba"):
            assert with_kernels(monkeypatch, "fast").kernels.accelerated == {}
    else:
        for mode in ("fast", "auto"):
            acc = with_kernels(monkeypatch, mode).kernels.accelerated
            assert set(acc) == set(FAST_KERNELS) and set(acc.values()) == {"numba"}


# ---------------------------------------------------------------------------------------------
# fused model ops against the composition of basic ops
# ---------------------------------------------------------------------------------------------

def _grads(out, inputs, seed):
    rng = np.random.default_rng(seed)
    for t in inputs:
        t.grad = None
    g = rng.standard_normal(out.shape)
    out.backward(g)
    return [t.grad.copy() for t in inputs]


@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_equals_basic_ops(backend, bias):
    rng = np.random.default_rng(2)
    x = ag.Parameter(backend.asarray(rng.standard_normal((3, 5, 7))))
    w = ag.Parameter(backend.asarray(rng.standard_normal((7, 4))))
    b = ag.Parameter(backend.asarray(rng.standard_normal(4))) if bias else None
    fused = fused_mod.linear_in_out(x, w, b)
    basic = x @ w + b if bias else x @ w
    close(backend.to_numpy(fused.data), backend.to_numpy(basic.data), "linear", TOL64)
    params = [x, w] + ([b] if bias else [])
    gf, gb = _grads(fused, params, 3), _grads(basic, params, 3)
    for a, c, name in zip(gf, gb, ("dx", "dw", "db")):
        close(backend.to_numpy(a), backend.to_numpy(c), f"linear {name}", TOL64)

    wt = ag.Parameter(backend.asarray(rng.standard_normal((6, 7))))  # tied-head layout (n, k)
    fused = fused_mod.linear(x, wt)
    basic = x @ wt.T
    close(backend.to_numpy(fused.data), backend.to_numpy(basic.data), "linear_t", TOL64)
    gf, gb = _grads(fused, [x, wt], 4), _grads(basic, [x, wt], 4)
    for a, c, name in zip(gf, gb, ("dx", "dw")):
        close(backend.to_numpy(a), backend.to_numpy(c), f"linear_t {name}", TOL64)
        assert a.shape == c.shape


def test_fused_attention_equals_basic_ops(backend):
    xp = backend.xp
    rng = np.random.default_rng(5)
    Bn, T, H, hd = 3, 6, 2, 4
    d = H * hd
    qkv = ag.Parameter(backend.asarray(rng.standard_normal((Bn, T, 3 * d))))
    n_real = xp.asarray([6, 4, 1])  # right padding, one row with a single real token
    blocked = blocked_keys(xp, xp.zeros(Bn, dtype=xp.int64), n_real, T, T)[:, None]
    fused = fused_mod.causal_attention(qkv, blocked, H)

    q, k, v = ag.split(qkv, 3, axis=-1)
    q = q.reshape(Bn, T, H, hd).transpose(0, 2, 1, 3)
    k = k.reshape(Bn, T, H, hd).transpose(0, 2, 1, 3)
    v = v.reshape(Bn, T, H, hd).transpose(0, 2, 1, 3)
    att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))
    att = ag.masked_fill(att, blocked, float(xp.finfo(att.dtype).min))
    basic = (ag.softmax(att, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(Bn, T, d)

    close(backend.to_numpy(fused.data), backend.to_numpy(basic.data), "attention", TOL64)
    (gf,), (gb,) = _grads(fused, [qkv], 6), _grads(basic, [qkv], 6)
    close(backend.to_numpy(gf), backend.to_numpy(gb), "attention d qkv", TOL64)


def test_model_gradients_match_unfused_path(backend):
    """The whole model: the fused attention path against the original one (taken with attention dropout)."""
    cfg = GPTConfig(vocab_size=300, n_positions=16, n_embd=16, n_layer=2, n_head=2, seed=3)
    m = TransformerLM(cfg)
    ids = np.random.default_rng(7).integers(0, 300, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    labels = np.where(mask == 1, ids, -100)

    def run(model):
        model.zero_grad()
        loss = losses.sft_loss(model(ids, attention_mask=mask), labels)
        loss.backward()
        return loss.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters().items()}

    fused_loss, fused_grads = run(m)
    m.config.attn_pdrop = 1e-300  # > 0 selects the unfused path; keeps every entry (scale 1/(1-1e-300) == 1)
    basic_loss, basic_grads = run(m)
    m.config.attn_pdrop = 0.0
    assert abs(fused_loss - basic_loss) <= TOL64 * max(1.0, abs(basic_loss))
    for n in fused_grads:
        close(fused_grads[n], basic_grads[n], n, 1e-11)


# ---------------------------------------------------------------------------------------------
# float32 stays float32
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_float32_step_has_no_float64_arrays(monkeypatch, mode):
    if mode == "fast":
        need_numba()
    monkeypatch.setenv(kernels_mod.KERNELS_ENV, mode)
    seen = []
    orig = ag._result

    def recording(data, parents, backward):
        seen.append(("forward", data.dtype))

        def wrapped(g):
            out = backward(g)
            seen.extend(("backward", a.dtype) for a in out if a is not None)
            return out

        return orig(data, parents, wrapped)

    monkeypatch.setattr(ag, "_result", recording)
    with B.use_backend("numpy", dtype="float32") as be:
        cfg = GPTConfig(vocab_size=300, n_positions=16, n_embd=16, n_layer=2, n_head=2)
        m = TransformerLM(cfg)
        opt = AdamW(m.named_parameters(), lr=1e-3, weight_decay=0.01)
        rng = np.random.default_rng(8)
        ids = rng.integers(0, 300, (4, 12))
        mask = np.ones_like(ids)
        mask[2, 9:] = 0
        labels = np.where(mask == 1, ids, -100)
        labels[:, :3] = -100
        loss = losses.sft_loss(m(ids, attention_mask=mask), labels, num_items_in_batch=40)
        loss.backward()
        logps = losses.sequence_logps(m(ids, attention_mask=mask), labels)
        per_pair, _, _ = losses.dpo_loss(logps[:2], logps[2:], be.asarray([-3.0, -4.0]), be.asarray([-5.0, -2.0]))
        (per_pair.sum() / 2).backward()
        opt.gather_grads()
        opt.scale_grads(clip_coefficient(opt.grad_norm(), 1.0))
        opt.step(1e-3)
        arrays = [p.data for p in m.parameters()] + [a for g in opt.groups for a in (g.grad, g.m, g.v)]
    floats = [(where, dt) for where, dt in seen if dt.kind == "f"]
    assert floats and all(dt == np.float32 for _, dt in floats), sorted({(w, str(d)) for w, d in floats})
    assert all(a.dtype == np.float32 for a in arrays)


# ---------------------------------------------------------------------------------------------
# the accelerated (numba) kernels
# ---------------------------------------------------------------------------------------------

FAST_KERNELS = ("layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward", "softmax_forward",
                "softmax_backward", "cross_entropy_forward", "cross_entropy_backward", "adamw_update")


@pytest.fixture
def fast_pair(monkeypatch):
    """make(dtype) -> (accelerated kernels, float64 reference kernels, reference kernels in `dtype`);
    skipped without numba."""
    need_numba()

    def make(dtype):
        return (with_kernels(monkeypatch, "fast", dtype).kernels,
                with_kernels(monkeypatch, "reference", "float64").kernels,
                with_kernels(monkeypatch, "reference", dtype).kernels)

    return make


# (rows, width): small ones run on one thread, the large ones on numba's pool (size >= PARALLEL_MIN)
SHAPES = [(1, 1), (1, 5), (7, 33), (64, 128), (300, 257)]


def _check(kernel, got, want64, ref_same_dtype, dtype):
    """float64: <= 1e-12 from the reference. float32: within TOL32 of the float64 reference, or at most
    twice the float32 reference kernel's own error on the same input (whichever is larger)."""
    if dtype == "float64":
        close(got, want64, kernel + " (float64)", TOL64)
    else:
        r = np.asarray(ref_same_dtype, np.float64)
        own = float((np.abs(r - want64) / np.maximum(1.0, np.abs(want64))).max()) if r.size else 0.0
        close(got, want64, kernel + " (float32)", max(TOL32[kernel], 2 * own))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_fast_layernorm(fast_pair, dtype, shape, affine):
    fast, ref, same = fast_pair(dtype)
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape) * 3 + 1
    dy = rng.standard_normal(shape)
    w, b = (rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])) if affine else (None, None)
    dt = np.dtype(dtype)

    def cast(a, to=dt):
        return None if a is None else a.astype(to)

    xs, dys, ws, bs = cast(x), cast(dy), cast(w), cast(b)
    y, mean, rstd = fast.layernorm_forward(xs, ws, bs, 1e-5)
    want = ref.layernorm_forward(cast(xs, np.float64), cast(ws, np.float64), cast(bs, np.float64), 1e-5)
    own = same.layernorm_forward(xs, ws, bs, 1e-5)
    assert y.dtype == mean.dtype == rstd.dtype == dt
    for got, w64, o in zip((y, mean, rstd), want, own):
        assert got.shape == w64.shape
        _check("layernorm", got, w64, o, dtype)
    got = fast.layernorm_backward(dys, xs, ws, mean, rstd)
    want = ref.layernorm_backward(cast(dys, np.float64), cast(xs, np.float64), cast(ws, np.float64),
                                  cast(mean, np.float64), cast(rstd, np.float64))
    own = same.layernorm_backward(dys, xs, ws, mean, rstd)
    for g, w64, o in zip(got, want, own):
        assert g.dtype == dt
        _check("layernorm_backward", g, w64, o, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_gelu(fast_pair, dtype):
    fast, ref, same = fast_pair(dtype)
    rng = np.random.default_rng(11)
    special = np.array([-1000.0, -100.0, -50.0, -30.0, -9.5, -8.0, -4.0, -0.626, -0.625, -0.3, -1e-8, 0.0, 1e-8, 0.3, 0.625, 4.0, 9.5, 30.0])
    for x in (special, rng.standard_normal(7 * 33) * 3, rng.standard_normal((40, 1000)) * 2):
        xs = x.astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        got = fast.gelu_forward(xs)
        assert got.dtype == np.dtype(dtype) and got.shape == x.shape
        _check("gelu", got, ref.gelu_forward(xs.astype(np.float64)), same.gelu_forward(xs), dtype)
        _check("gelu_backward", fast.gelu_backward(dy, xs),
               ref.gelu_backward(dy.astype(np.float64), xs.astype(np.float64)), same.gelu_backward(dy, xs), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 4, 130)])
def test_fast_softmax(fast_pair, dtype, shape):
    fast, ref, same = fast_pair(dtype)
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(shape) * 5 + 40).astype(dtype)  # a large offset: the max shift matters
    if shape[-1] > 2:  # masked entries (the attention's finfo.min) must get probability exactly 0
        x[..., 1] = np.finfo(np.dtype(dtype)).min
    want, own = ref.softmax_forward(x.astype(np.float64)), same.softmax_forward(x)
    y = fast.softmax_forward(x)
    assert y.dtype == np.dtype(dtype)
    _check("softmax", y, want, own, dtype)
    if shape[-1] > 2:
        assert np.all(y[..., 1] == 0.0)
    buf = x.copy()
    assert fast.softmax_forward(buf, out=buf) is buf
    _check("softmax", buf, want, own, dtype)
    p = want.astype(dtype)  # probabilities
    dy = rng.standard_normal(shape).astype(dtype)
    want, own = ref.softmax_backward(dy.astype(np.float64), p.astype(np.float64)), same.softmax_backward(dy, p)
    _check("softmax_backward", fast.softmax_backward(dy, p), want, own, dtype)
    buf = dy.copy()
    assert fast.softmax_backward(buf, p, out=buf) is buf
    _check("softmax_backward", buf, want, own, dtype)
    # another axis: the reference kernel (the fast one covers the last axis)
    np.testing.assert_array_equal(fast.softmax_forward(x, axis=0), same.softmax_forward(x, axis=0))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (6, 4), (16, 33), (64, 2000)])
@pytest.mark.parametrize("p_ignore", [0.0, 0.4, 1.0])
def test_fast_cross_entropy(fast_pair, dtype, shape, p_ignore):
    fast, ref, same = fast_pair(dtype)
    rng = np.random.default_rng(13)
    N, V = shape
    logits = (rng.standard_normal(shape) * 4 + 30).astype(dtype)
    t = np.where(rng.random(N) < p_ignore, -100, rng.integers(0, V, size=N))
    L64 = logits.astype(np.float64)
    before = logits.copy()
    losses_, lse, valid = fast.cross_entropy_forward(logits, t, -100)
    rl, rlse, rv = ref.cross_entropy_forward(L64, t, -100)
    ol, olse, _ = same.cross_entropy_forward(logits, t, -100)
    assert losses_.dtype == lse.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(valid, rv)
    assert np.all(losses_[~rv] == 0.0)
    _check("cross_entropy", losses_, rl, ol, dtype)
    _check("cross_entropy", lse, rlse, olse, dtype)
    dl = rng.standard_normal(N).astype(dtype)
    got = fast.cross_entropy_backward(dl, logits, t, lse, valid)
    assert got.dtype == np.dtype(dtype)
    _check("cross_entropy_backward", got, ref.cross_entropy_backward(dl.astype(np.float64), L64, t, rlse, rv),
           same.cross_entropy_backward(dl, logits, t, olse, valid), dtype)
    np.testing.assert_array_equal(logits, before)  # inputs untouched


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [1, 37, 100_003])
@pytest.mark.parametrize("wd_form", ["zero", "scalar", "array"])
@pytest.mark.parametrize("grad_scale", [1.0, 0.3141])
def test_fast_adamw_is_bit_identical(fast_pair, dtype, n, wd_form, grad_scale):
    fast, _, same = fast_pair(dtype)
    rng = np.random.default_rng(14)
    p0 = rng.standard_normal(n).astype(dtype)
    wd = {"zero": 0.0, "scalar": 0.1, "array": np.where(np.arange(n) % 3 == 0, 0.0, 0.2)}[wd_form]
    state = {name: (p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)) for name in ("fast", "ref")}
    for step in range(1, 4):
        g = (rng.standard_normal(n) * step).astype(dtype)
        g_before = g.copy()
        for name, k in (("fast", fast), ("ref", same)):
            p, m, v = state[name]
            k.adamw_update(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, step=step,
                           grad_scale=grad_scale)
        np.testing.assert_array_equal(g, g_before)  # the gradient buffer is read, never rewritten
    for a, b_, what in zip(state["fast"], state["ref"], ("param", "m", "v")):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b_, err_msg=f"adamw {what}")


def test_fast_exp_accuracy():
    """The float32 exp of fast_kernels: within 2 ulp of the correctly rounded values (documented)."""
    need_numba()
    from numba import njit

    from vietnamese_ai_ref.backends import fast_kernels as fk

    @njit
    def apply(a, o):
        for i in range(a.size):
            o[i] = fk._exp32(a[i])

    x = np.linspace(-87.3, 88.7, 1_000_001).astype(np.float32)
    o = np.empty_like(x)
    apply(x, o)
    ex = np.exp(x.astype(np.float64))
    assert float(np.max(np.abs(o - ex) / ex)) < 2 * 2.0**-23
    apply(np.array([-np.inf, -1e30, -88.0, 89.0, np.inf, np.nan], np.float32), o[:6])
    assert list(o[:4]) == [0.0, 0.0, 0.0, np.inf] and o[4] == np.inf and np.isnan(o[5])


def test_fast_exp64_accuracy():
    """The float64 exp of fast_kernels, inlined into a loop compiled with the kernels' fast-math flags
    (reassociation must not undo the two-part ln 2): within 2 ulp of libm's, 0 below the normal range,
    inf above it, NaN for NaN."""
    need_numba()
    from numba import njit

    from vietnamese_ai_ref.backends import fast_kernels as fk

    @njit(fastmath=fk._FM)
    def apply(a, o):
        for i in range(a.size):
            o[i] = fk._exp64(a[i])

    rng = np.random.default_rng(3)
    x = np.concatenate([np.linspace(-708.39, 709.78, 1_000_001), rng.uniform(-30, 30, 200_000), [0.0, -0.0, 1e-300]])
    o = np.empty_like(x)
    apply(x, o)
    ex = np.exp(x)
    assert float(np.max(np.abs(o - ex) / np.spacing(ex))) <= 2.0
    special = np.array([-np.inf, -1e300, -709.0, 710.0, 1e300, np.inf, np.nan])
    apply(special, o[:7])
    assert list(o[:6]) == [0.0, 0.0, 0.0, np.inf, np.inf, np.inf] and np.isnan(o[6])



def test_threaded_parts_are_bit_identical(monkeypatch):
    """Large elementwise work (AdamW with the clip coefficient, gathering gradients) split over Python
    threads gives exactly the single-threaded result, whatever the number of threads."""
    from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

    monkeypatch.setattr(kernels_mod, "PARALLEL_ELEMENTS", 1000)
    monkeypatch.setattr(kernels_mod, "BLOCK", 256)  # parts are whole blocks: small ones, so that there are 3
    monkeypatch.setattr(kernels_mod, "ADAMW_BLOCK", 128)  # and several AdamW blocks per part
    calls = []
    real = kernels_mod.KernelNamespace.parallel_parts

    def counting(self, fn, n):
        calls.append(n)
        return real(self, fn, n)

    monkeypatch.setattr(kernels_mod.KernelNamespace, "parallel_parts", counting)
    monkeypatch.delenv(kernels_mod.KERNELS_ENV, raising=False)
    results = {}
    for n_threads in ("1", "3"):
        monkeypatch.setenv("VIETNAMESE_AI_NUM_THREADS", n_threads)
        assert kernels_mod.threads() == int(n_threads)
        with B.use_backend("numpy", dtype="float32"):
            m = TransformerLM(GPTConfig(vocab_size=300, n_positions=8, n_embd=16, n_layer=1, n_head=2))
            opt = AdamW(m.named_parameters(), lr=1e-2, weight_decay=0.1)
            ids = np.random.default_rng(0).integers(0, 300, (2, 8))
            for _ in range(2):
                opt.zero_grad()
                losses.sft_loss(m(ids), ids).backward()
                opt.gather_grads()
                opt.scale_grads(0.5)
                opt.step(1e-2)
            results[n_threads] = [a.copy() for g in opt.groups for a in (g.data, g.grad, g.m, g.v)]
    assert calls and max(calls) >= 3 * 256
    for a, b_ in zip(results["1"], results["3"]):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sum_of_squares_chunks_do_not_depend_on_threads(monkeypatch, dtype):
    """The squared norm of a large gradient (fixed chunks shared among threads) is the same number for
    any thread count, agrees with the exact sum to rounding, and is one dot product below the threshold."""
    monkeypatch.setattr(kernels_mod, "PARALLEL_ELEMENTS", 1000)
    monkeypatch.setattr(kernels_mod, "SUMSQ_CHUNK", 256)  # 20 chunks
    monkeypatch.delenv(kernels_mod.KERNELS_ENV, raising=False)
    x = np.random.default_rng(4).standard_normal(5000).astype(dtype)
    exact = math.fsum(float(v) * float(v) for v in x)
    got = {}
    for n_threads in ("1", "2", "3"):
        monkeypatch.setenv("VIETNAMESE_AI_NUM_THREADS", n_threads)
        with B.use_backend("numpy", dtype=dtype) as be:
            got[n_threads] = be.kernels.sum_of_squares(x)
            assert be.kernels.sum_of_squares(x[:999]) == float(np.dot(x[:999], x[:999]))  # below: one dot
    assert got["1"] == got["2"] == got["3"]
    assert abs(got["1"] - exact) <= (1e-6 if dtype == "float32" else 1e-14) * exact


@pytest.mark.slow
def test_benchmark_script_smoke(tmp_path):
    """benchmarks/bench.py runs (config A, one step) and writes its JSON; with torch installed, the torch
    copy of the model starts from the same loss (same weights, same data)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(script), "--configs", "A", "--steps", "1", "--warmup", "1",
                           "--rounds", "1", "--no-memory", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["kind"] for r in rows] == ["train"]
    assert rows[0]["ours"]["tokens_per_s"] > 0
    if "torch" in rows[0]:
        assert rows[0]["first_loss_rel_diff"] < 1e-5
