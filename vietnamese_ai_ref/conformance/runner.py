"""Conformance runner: checks an implementation of spec/losses.md against the golden vectors.

What it is for: `python -m vietnamese_ai_ref.conformance MODULE[:ATTR] [--vectors DIR] [--only NAME]`
loads an *adapter* (the implementation under test, wrapped in the small protocol below), runs every
vector of spec/vectors/ through it, prints one OK / FAIL / SKIP row per check with the largest absolute
and relative errors, and exits 1 when any check fails (2 for usage errors). It also holds the vector
file format helpers (`encode_array`, `decode`) used by scripts/make_vectors.py, and
`reference_adapter`, this package's own implementation behind the same protocol.

It also runs the end-to-end trainer vectors (spec/vectors/trainer_*.json) through the optional
`run_trainer_vector` function; `reference_adapter.run_trainer_vector` drives this package's trainer
components through a vector's explicit step schedule (scripts/make_vectors.py computes the expected
numbers with it).

What it is not: a test of the trainers' own loops, data code or checkpoints (tests/test_trainer_vectors.py
runs the real trainers against the vectors), nor a benchmark. It never imports torch: a torch adapter
imports torch itself.

Adapter protocol (spec 1.0). An adapter is a module or any object; `MODULE:ATTR` names it (ATTR may be
dotted; without it the module itself is the adapter; MODULE may also be a path to a .py file). Arrays
passed in are NumPy arrays, float64 for real values and int64 for labels; the adapter returns NumPy
arrays or anything `numpy.asarray` accepts (torch tensors are detached and moved to the CPU).

Required (each vector file needs one):
  sequence_logps(logits (B,T,V), labels (B,T)) -> (B,)             ignore_index is -100
  sft_loss(logits, labels, num_items_in_batch: int | None) -> ()  scalar
  dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
           reference_rejected_logps, beta: float, label_smoothing: float)
           -> (losses, chosen_rewards, rejected_rewards)           each (B,)
  reward_loss(rewards_chosen, rewards_rejected, margin: None | float | (B,)) -> (B,)
  normalize_scores(scores (n,)) -> (n,)
Invalid inputs (vectors with `expect_error`) must raise ValueError (or a subclass).

Optional gradients; a missing one makes its checks SKIP. `F_grad(*args, upstream)` takes the same
arguments as `F` plus `upstream`, an array shaped like F's (first) output, and returns a dict mapping
argument names to the gradient of sum(upstream * F(*args)) with respect to that argument:
  sequence_logps_grad(logits, labels, upstream)                       -> {"logits"}
  sft_loss_grad(logits, labels, num_items_in_batch, upstream)          -> {"logits"}
  dpo_loss_grad(pc, pr, rc, rr, beta, label_smoothing, upstream)       -> {"policy_chosen_logps",
        "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"}  (of `losses`)
  reward_loss_grad(rewards_chosen, rewards_rejected, margin, upstream) -> {"rewards_chosen", "rewards_rejected"}
Optional, for the trainer vectors (SKIP when absent): run_trainer_vector(inputs: dict) -> dict, where
`inputs` is a case's decoded `inputs` (model_config, parameters, trainer_config, micro_batches,
windows, ...) and the result is shaped like its `expected` (nested dicts of arrays and floats); every
leaf is compared under the case's tolerance, or its `quantity_tolerances` entry (the longest prefix of
the dotted leaf name). Format and semantics: spec/vectors/README.md, "End-to-end trainer vectors".
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .._version import SPEC_VERSION
from .. import losses as L
from ..core.autograd import Tensor
from ..backends import host_np, use_backend

__all__ = [
    "FORMAT",
    "TRAINER_FORMAT",
    "PROTOCOL",
    "ReferenceAdapter",
    "reference_adapter",
    "encode_array",
    "encode_value",
    "decode",
    "load_manifest",
    "load_adapter",
    "run",
    "main",
    "default_vectors_dir",
]

#: Format tag of the per-function vector files (spec/vectors/README.md).
FORMAT = "vietnamese_ai_ref.vectors/1"
#: Format tag reserved for end-to-end trainer vectors.
TRAINER_FORMAT = "vietnamese_ai_ref.trainer-vectors/1"

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# ============================ the protocol ====================================================

@dataclass(frozen=True)
class Fn:
    """One function of the adapter protocol."""

    name: str
    args: tuple  # positional argument names, in order
    outputs: tuple  # output names; one name = a single returned array
    wrt: tuple = ()  # float arguments the optional gradient function differentiates
    grad_of: str | None = None  # the output whose upstream gradient is given

    @property
    def grad_name(self) -> str | None:
        return f"{self.name}_grad" if self.wrt else None


_DPO_ARGS = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")

PROTOCOL: dict[str, Fn] = {
    f.name: f
    for f in (
        Fn("sequence_logps", ("logits", "labels"), ("logps",), ("logits",), "logps"),
        Fn("sft_loss", ("logits", "labels", "num_items_in_batch"), ("loss",), ("logits",), "loss"),
        Fn("dpo_loss", _DPO_ARGS + ("beta", "label_smoothing"), ("losses", "chosen_rewards", "rejected_rewards"),
           _DPO_ARGS, "losses"),
        Fn("reward_loss", ("rewards_chosen", "rewards_rejected", "margin"), ("losses",),
           ("rewards_chosen", "rewards_rejected"), "losses"),
        Fn("normalize_scores", ("scores",), ("normalized",)),
    )
}


# ============================ vector encoding =================================================

def _enc_float(x: float):
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x  # json writes repr(x): the shortest string that round-trips (<= 17 significant digits)


def encode_array(a) -> dict:
    """{"dtype", "shape", "data"}: a row-major flat list; non-finite floats as "NaN"/"Infinity"/"-Infinity"."""
    a = host_np.asarray(a)
    if a.dtype.kind == "f":
        return {"dtype": "float64", "shape": list(a.shape), "data": [_enc_float(v) for v in a.astype(host_np.float64).reshape(-1).tolist()]}
    if a.dtype.kind in "iu":
        return {"dtype": "int64", "shape": list(a.shape), "data": [int(v) for v in a.reshape(-1).tolist()]}
    if a.dtype.kind == "b":
        return {"dtype": "bool", "shape": list(a.shape), "data": [bool(v) for v in a.reshape(-1).tolist()]}
    raise TypeError(f"cannot encode dtype {a.dtype}")


def encode_value(v):
    """Encode an argument or expected value: arrays tagged, floats/ints/None/str/dicts/lists as JSON."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return _enc_float(v)
    if isinstance(v, dict):
        return {k: encode_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [encode_value(x) for x in v]
    if hasattr(v, "dtype") and hasattr(v, "shape"):
        return encode_array(v)
    raise TypeError(f"cannot encode {type(v).__name__}")


def _is_array_record(v) -> bool:
    return isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}


def decode(v):
    """Inverse of `encode_value`: array records become NumPy arrays, "NaN"/"Infinity" strings floats."""
    if _is_array_record(v):
        dt = {"float64": host_np.float64, "int64": host_np.int64, "bool": host_np.bool_}[v["dtype"]]
        data = [(_NONFINITE[x] if isinstance(x, str) else x) for x in v["data"]]
        return host_np.asarray(data, dtype=dt).reshape(tuple(v["shape"]))
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if isinstance(v, dict):
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def default_vectors_dir() -> Path:
    """spec/vectors of the source tree this package was imported from."""
    return Path(__file__).resolve().parents[2] / "spec" / "vectors"


def load_manifest(vectors_dir) -> dict:
    with open(Path(vectors_dir) / "manifest.json", encoding="utf-8") as f:
        return json.load(f)


# ============================ the reference adapter ===========================================

class ReferenceAdapter:
    """`vietnamese_ai_ref.losses` behind the adapter protocol, computed in float64 on `backend`."""

    def __init__(self, backend: str = "numpy"):
        self.backend = backend
        self.name = f"vietnamese_ai_ref {SPEC_VERSION} reference ({backend}, float64)"

    def _ctx(self):
        return use_backend(self.backend, "float64")

    @staticmethod
    def _host(x):
        from ..backends import to_numpy

        return to_numpy(x.data if isinstance(x, Tensor) else x)

    def _arr(self, x, dtype=None):
        from ..backends import get_backend

        return get_backend().asarray(host_np.asarray(x), dtype=dtype)

    def _var(self, x) -> Tensor:
        return Tensor(self._arr(x, "float64"), requires_grad=True)

    # -- values --------------------------------------------------------------------------------
    def sequence_logps(self, logits, labels):
        with self._ctx():
            return self._host(L.sequence_logps(self._arr(logits, "float64"), self._arr(labels)))

    def sft_loss(self, logits, labels, num_items_in_batch=None):
        with self._ctx():
            return self._host(L.sft_loss(self._arr(logits, "float64"), self._arr(labels), num_items_in_batch))

    def dpo_loss(self, pc, pr, rc, rr, beta, label_smoothing):
        with self._ctx():
            out = L.dpo_loss(*(self._arr(x, "float64") for x in (pc, pr, rc, rr)), beta=beta, label_smoothing=label_smoothing)
            return tuple(self._host(o) for o in out)

    def reward_loss(self, rewards_chosen, rewards_rejected, margin=None):
        with self._ctx():
            m = None if margin is None else self._arr(margin, "float64")
            return self._host(L.reward_loss(self._arr(rewards_chosen, "float64"), self._arr(rewards_rejected, "float64"), m))

    def normalize_scores(self, scores):
        with self._ctx():
            return self._host(L.normalize_scores(self._arr(scores, "float64")))

    # -- gradients -----------------------------------------------------------------------------
    def sequence_logps_grad(self, logits, labels, upstream):
        with self._ctx():
            x = self._var(logits)
            L.sequence_logps(x, self._arr(labels)).backward(self._arr(upstream, "float64"))
            return {"logits": self._host(x.grad)}

    def sft_loss_grad(self, logits, labels, num_items_in_batch, upstream):
        with self._ctx():
            x = self._var(logits)
            L.sft_loss(x, self._arr(labels), num_items_in_batch).backward(self._arr(upstream, "float64"))
            return {"logits": self._host(x.grad)}

    def dpo_loss_grad(self, pc, pr, rc, rr, beta, label_smoothing, upstream):
        with self._ctx():
            xs = [self._var(v) for v in (pc, pr, rc, rr)]
            losses, _, _ = L.dpo_loss(*xs, beta=beta, label_smoothing=label_smoothing)
            losses.backward(self._arr(upstream, "float64"))
            return {n: self._host(x.grad) for n, x in zip(_DPO_ARGS, xs)}

    def reward_loss_grad(self, rewards_chosen, rewards_rejected, margin, upstream):
        with self._ctx():
            c, r = self._var(rewards_chosen), self._var(rewards_rejected)
            m = None if margin is None else self._arr(margin, "float64")
            L.reward_loss(c, r, m).backward(self._arr(upstream, "float64"))
            return {"rewards_chosen": self._host(c.grad), "rewards_rejected": self._host(r.grad)}

    # -- end-to-end trainer vectors (spec/vectors/README.md, "End-to-end trainer vectors") -----
    def run_trainer_vector(self, inputs: dict) -> dict:
        """Run a trainer vector's steps with the trainers' own components, as `training.run_loop` does.

        The same code path as SFTTrainer / DPOTrainer / RewardModel.huan_luyen (their micro-batch
        collation and losses, optim.AdamW, optim.linear_schedule, optim.clip_coefficient) except that the
        order of the micro-batches is the vector's explicit `windows` instead of `training.epoch_order`
        (tests/test_trainer_vectors.py checks that the real trainers reproduce these numbers).
        Returns the dict described by the vector's `expected` (host NumPy arrays and floats)."""
        with self._ctx():
            return _reference_trainer_run(inputs)


def _reference_trainer_run(inputs: dict, diagnostics: dict | None = None) -> dict:
    """The body of `ReferenceAdapter.run_trainer_vector` (backend already selected, float64).
    `diagnostics`, when given, receives `min_abs_pair_difference` per step (reward model: min |r_c − r_r|,
    DPO: min |chosen reward − rejected reward|), which scripts/make_vectors.py uses to keep the discrete
    accuracies away from ties."""
    from ..trainers import dpo as _dpo
    from ..trainers import reward as _reward
    from ..core.autograd import no_grad
    from ..backends import get_backend, to_numpy
    from ..models.gpt2 import GPTConfig, TransformerLM
    from ..core.optim import AdamW, clip_coefficient, linear_schedule
    from ..text.records import IGNORE_INDEX

    be = get_backend()
    xp = be.xp
    kind = inputs["trainer"]
    if kind not in ("sft", "dpo", "reward"):
        raise ValueError(f"trainer không rõ / unknown trainer {kind!r}: expected 'sft', 'dpo' or 'reward'")
    mc, tc = inputs["model_config"], inputs["trainer_config"]
    for key, want in (("activation", "gelu_new"), ("tie_word_embeddings", True)):
        if key in mc and mc[key] != want:
            raise ValueError(f"model_config[{key!r}] = {mc[key]!r}: only {want!r} is implemented")
    cfg = GPTConfig(vocab_size=int(mc["vocab_size"]), n_positions=int(mc["n_positions"]),
                    n_embd=int(mc["n_embd"]), n_layer=int(mc["n_layer"]), n_head=int(mc["n_head"]),
                    layer_norm_epsilon=float(mc["layer_norm_epsilon"]))
    model = TransformerLM(cfg)
    model.load_state_dict({n: be.asarray(host_np.asarray(a, dtype=host_np.float64))
                           for n, a in inputs["parameters"].items()})
    pad = int(mc.get("pad_token_id", 0))
    mbs = inputs["micro_batches"]
    windows = [[int(i) for i in w] for w in inputs["windows"]]
    lr0 = float(tc["toc_do_hoc"])
    total, warmup = int(tc["total_steps"]), int(tc["warmup_steps"])
    clip = float(tc["gradient_clip"])
    if len(windows) != total:
        raise ValueError(f"windows has {len(windows)} steps, trainer_config.total_steps is {total}")

    def arr(a):
        return be.asarray(host_np.asarray(a, dtype=host_np.int64), dtype=xp.int64)

    def real(a, mask):
        """Rows of a padded (B, T) array without their padding (host lists)."""
        a, mask = host_np.asarray(a), host_np.asarray(mask)
        return [a[b, : int(mask[b].sum())].tolist() for b in range(a.shape[0])]

    def pairs_of(mb):
        """The trainers' example dicts of one DPO/RM micro-batch (they re-pad chosen + rejected jointly)."""
        out = []
        ci, ri = real(mb["chosen_input_ids"], mb["chosen_attention_mask"]), real(mb["rejected_input_ids"], mb["rejected_attention_mask"])
        cl = real(mb["chosen_labels"], mb["chosen_attention_mask"]) if "chosen_labels" in mb else [None] * len(ci)
        rl = real(mb["rejected_labels"], mb["rejected_attention_mask"]) if "rejected_labels" in mb else [None] * len(ri)
        margins = host_np.asarray(mb["margin"], dtype=host_np.float64).tolist() if "margin" in mb else [0.0] * len(ci)
        for b in range(len(ci)):
            out.append({"chosen_ids": ci[b], "chosen_labels": cl[b], "rejected_ids": ri[b],
                        "rejected_labels": rl[b], "margin": margins[b]})
        return out

    def weight(mb) -> int:
        if kind == "sft":
            return int((host_np.asarray(mb["labels"])[:, 1:] != IGNORE_INDEX).sum())
        return int(host_np.asarray(mb["chosen_input_ids"]).shape[0])

    first = {}
    stat_keys = {"sft": (), "dpo": ("chosen_rewards", "rejected_rewards", "reward_margin"),
                 "reward": ("accuracy", "reward_margin")}[kind]

    if kind == "dpo":
        beta, eps = float(tc["beta"]), float(tc["label_smoothing"])
        # the reference model: a frozen copy of the initial parameters, evaluated once, in eval mode
        ref = model.copy()
        ref.eval()
        ref_logps = {}
        with no_grad():
            for w in windows:
                for i in w:
                    if i not in ref_logps:
                        rc, rr = _dpo.pair_logps(ref, pairs_of(mbs[i]), pad)
                        ref_logps[i] = (to_numpy(rc.numpy()), to_numpy(rr.numpy()))

    def micro_step(i, denominator):
        mb = mbs[i]
        if kind == "sft":
            logits = model(arr(mb["input_ids"]), attention_mask=arr(mb["attention_mask"]))
            if not first:
                first["logits"] = to_numpy(logits.numpy()).copy()
            return L.sft_loss(logits, arr(mb["labels"]), num_items_in_batch=denominator), {}
        batch = pairs_of(mb)
        n = len(batch)
        if kind == "dpo":
            pc, pr = _dpo.pair_logps(model, batch, pad)
            rc, rr = (be.asarray(v) for v in ref_logps[i])
            per_pair, cr, rj = L.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
            if not first:
                first["logps"] = {"policy_chosen": to_numpy(pc.numpy()).copy(), "policy_rejected": to_numpy(pr.numpy()).copy(),
                                  "reference_chosen": ref_logps[i][0].copy(), "reference_rejected": ref_logps[i][1].copy()}
            cr, rj = to_numpy(getattr(cr, "data", cr)), to_numpy(getattr(rj, "data", rj))
            stats = {"chosen_rewards": (float(cr.sum()), n), "rejected_rewards": (float(rj.sum()), n),
                     "reward_margin": (float((cr - rj).sum()), n), "_gap": float(host_np.abs(cr - rj).min())}
            return per_pair.sum() / denominator, stats
        rc, rr = _reward._pair_scores(model, batch, pad)
        per_pair = L.reward_loss(rc, rr, margin=be.asarray([e["margin"] for e in batch]))
        c, r = to_numpy(rc.numpy()), to_numpy(rr.numpy())
        if not first:
            first["scores"] = {"chosen": c.copy(), "rejected": r.copy()}
        stats = {"accuracy": (float((c > r).sum()), n), "reward_margin": (float((c - r).sum()), n),
                 "_gap": float(host_np.abs(c - r).min())}
        return per_pair.sum() / denominator, stats

    model.train()
    opt = AdamW(model.named_parameters(), lr=lr0, weight_decay=float(tc["weight_decay"]))
    traj = {"loss_trajectory": [], "learning_rates": [], "grad_norms": []}
    traj.update({k: [] for k in stat_keys})
    out = {}
    for s, window in enumerate(windows):  # as training._epochs, one optimiser step per window
        denominator = sum(weight(mbs[i]) for i in window)
        opt.zero_grad()
        step_loss = 0.0
        step_stats = {k: [0.0, 0] for k in stat_keys}
        gap = math.inf
        for i in window:
            loss, stats = micro_step(i, denominator)
            loss.backward()
            step_loss += loss.item()
            for k in stat_keys:
                step_stats[k][0] += stats[k][0]
                step_stats[k][1] += stats[k][1]
            gap = min(gap, stats.get("_gap", math.inf))
        if diagnostics is not None:
            diagnostics.setdefault("min_abs_pair_difference", []).append(gap)
        opt.gather_grads()
        norm = opt.grad_norm()
        if not (math.isfinite(step_loss) and math.isfinite(norm)):
            raise FloatingPointError(f"non-finite loss or gradient norm at step {s + 1}")
        if s == 0:
            out["loss"] = step_loss
            out["grad_norm"] = norm
            grads = {}
            for g in opt.groups:
                for name, p, a, b in zip(g.names, g.params, g.offsets, g.offsets[1:]):
                    grads[name] = to_numpy(g.grad[a:b]).reshape(p.data.shape).copy()
            out["grads"] = {n: grads[n] for n in model.named_parameters()}
        opt.scale_grads(clip_coefficient(norm, clip))
        lr = lr0 * linear_schedule(s, total, warmup)
        opt.step(lr)
        opt.zero_grad()
        traj["loss_trajectory"].append(step_loss)
        traj["learning_rates"].append(lr)
        traj["grad_norms"].append(norm)
        for k in stat_keys:
            traj[k].append(step_stats[k][0] / step_stats[k][1])
    result = dict(first)
    result.update({"loss": out["loss"], "grad_norm": out["grad_norm"], "grads": out["grads"]})
    result.update({k: host_np.asarray(v, dtype=host_np.float64) for k, v in traj.items()})
    result["parameters_after"] = {n: to_numpy(p.data).copy() for n, p in model.named_parameters().items()}
    return result


#: This package's own implementation: `python -m vietnamese_ai_ref.conformance vietnamese_ai_ref.conformance:reference_adapter`.
reference_adapter = ReferenceAdapter()


# ============================ loading an adapter ==============================================

class UsageError(Exception):
    """Bad command line, adapter that cannot be loaded, missing or incompatible vectors (exit 2)."""


def load_adapter(spec: str):
    """`MODULE[:ATTR]` or `path/to/file.py[:ATTR]` -> the adapter object."""
    mod_part, _, attr = spec.partition(":")
    if not mod_part:
        raise UsageError(f"adapter không hợp lệ / invalid adapter spec: expected MODULE[:ATTR], got {spec!r}")
    try:
        if mod_part.endswith(".py") or os.sep in mod_part or "/" in mod_part:
            path = Path(mod_part)
            if not path.is_file():
                raise UsageError(f"không thấy tệp adapter / adapter file not found: {mod_part}")
            name = "_conformance_adapter_" + path.stem
            spec_ = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[name] = module
            spec_.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # MODULE relative to the working directory, as `python -m`
            module = importlib.import_module(mod_part)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"không nạp được adapter / cannot import adapter module {mod_part!r}: {type(e).__name__}: {e}") from e
    obj = module
    for part in [p for p in attr.split(".") if p]:
        if not hasattr(obj, part):
            raise UsageError(f"adapter không có thuộc tính / adapter module {mod_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


# ============================ running vectors =================================================

@dataclass
class Row:
    status: str  # OK, FAIL, SKIP
    case: str
    check: str
    max_abs: float | None = None
    max_rel: float | None = None
    detail: str = ""


@dataclass
class Report:
    rows: list = field(default_factory=list)

    @property
    def counts(self) -> dict:
        c = {"OK": 0, "FAIL": 0, "SKIP": 0}
        for r in self.rows:
            c[r.status] += 1
        return c

    @property
    def ok(self) -> bool:
        return self.counts["FAIL"] == 0


def _to_np(x):
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        x = x.get()
    return host_np.asarray(x, dtype=host_np.float64)


def compare(actual, expected, rtol: float, atol: float):
    """(ok, max_abs, max_rel, detail): passes iff shapes match, `actual` is finite where `expected` is,
    and |a − e| ≤ atol + rtol·|e| element-wise."""
    e = host_np.asarray(expected, dtype=host_np.float64)
    try:
        a = _to_np(actual)
    except Exception as ex:
        return False, None, None, f"output is not numeric: {type(ex).__name__}: {ex}"
    if a.shape != e.shape:
        return False, None, None, f"shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return True, 0.0, 0.0, ""
    if not bool(host_np.isfinite(a).all()):
        return False, math.inf, math.inf, f"{int((~host_np.isfinite(a)).sum())} non-finite value(s)"
    err = host_np.abs(a - e)
    mag = host_np.abs(e)
    max_abs = float(err.max())
    nz = mag > 0
    max_rel = float((err[nz] / mag[nz]).max()) if bool(nz.any()) else (0.0 if max_abs == 0 else math.inf)
    bad = err > atol + rtol * mag
    if bool(bad.any()):
        i = int(host_np.flatnonzero(bad.reshape(-1))[0])
        idx = tuple(int(k) for k in host_np.unravel_index(i, e.shape)) if e.ndim else ()
        return False, max_abs, max_rel, f"first mismatch at {idx}: got {float(a.reshape(-1)[i])!r}, expected {float(e.reshape(-1)[i])!r}"
    return True, max_abs, max_rel, ""


def _merge(results):
    """Combine compare() results of several named outputs into one row's numbers."""
    ok = all(r[1][0] for r in results)
    abs_ = [r[1][1] for r in results if r[1][1] is not None]
    rel = [r[1][2] for r in results if r[1][2] is not None]
    detail = "; ".join(f"{n}: {r[3]}" for n, r in results if not r[0])
    return ok, (max(abs_) if abs_ else None), (max(rel) if rel else None), detail


def _selected(case: str, function: str, stem: str, only) -> bool:
    if not only:
        return True
    for pat in only:
        if pat in (function, stem, case) or fnmatch.fnmatchcase(case, pat) or case.startswith(pat.rstrip("/") + "/"):
            return True
    return False


def _tolerance(manifest: dict, entry: dict, file_obj: dict, case: dict, override: dict, trainer: bool = False) -> tuple:
    tol = dict(manifest.get("tolerances", {}).get("default", {"rtol": 1e-12, "atol": 1e-12}))
    if trainer:
        tol.update(manifest.get("trainer_vectors", {}).get("tolerances", {}))
    tol.update(manifest.get("tolerances", {}).get(entry.get("file", ""), {}))
    tol.update(entry.get("tolerances", {}))
    tol.update(file_obj.get("tolerances", {}))
    tol.update(case.get("tolerances", {}))
    tol.update({k: v for k, v in override.items() if v is not None})
    return float(tol["rtol"]), float(tol["atol"])


def _call(fn, args):
    return fn(*args)


def _run_loss_case(adapter, fn: Fn, case: dict, rtol: float, atol: float, rows: list):
    name = case["name"]
    impl = getattr(adapter, fn.name, None)
    if not callable(impl):
        rows.append(Row("FAIL", name, "value", detail=f"adapter lacks required function {fn.name}()"))
        return
    args = decode(case["args"])
    missing = [a for a in fn.args if a not in args]
    if missing:
        rows.append(Row("FAIL", name, "value", detail=f"malformed vector: missing args {missing}"))
        return
    argv = [args[a] for a in fn.args]

    if "expect_error" in case:
        want = case["expect_error"]
        try:
            out = _call(impl, argv)
        except ValueError as e:
            rows.append(Row("OK", name, "raises", detail=f"{type(e).__name__}"))
        except Exception as e:  # noqa: BLE001 — any other exception is a conformance failure
            rows.append(Row("FAIL", name, "raises", detail=f"expected {want}, got {type(e).__name__}: {e}"))
        else:
            rows.append(Row("FAIL", name, "raises", detail=f"expected {want} ({case.get('reason', '')}), returned {_short(out)}"))
        return

    expected = decode(case["expected"])
    try:
        out = _call(impl, argv)
    except Exception as e:  # noqa: BLE001
        rows.append(Row("FAIL", name, "value", detail=f"raised {type(e).__name__}: {e}"))
        return
    if len(fn.outputs) == 1:
        outs = {fn.outputs[0]: out}
    else:
        if not isinstance(out, (tuple, list)) or len(out) != len(fn.outputs):
            rows.append(Row("FAIL", name, "value", detail=f"expected a tuple {fn.outputs}, got {_short(out)}"))
            return
        outs = dict(zip(fn.outputs, out))
    res = [(k, compare(outs[k], expected[k], rtol, atol)) for k in fn.outputs]
    ok, ma, mr, detail = _merge(res)
    rows.append(Row("OK" if ok else "FAIL", name, "value", ma, mr, detail))

    if "grad" not in case or not fn.grad_name:
        return
    gimpl = getattr(adapter, fn.grad_name, None)
    if not callable(gimpl):
        rows.append(Row("SKIP", name, "grad", detail=f"adapter has no {fn.grad_name}()"))
        return
    g = decode(case["grad"])
    try:
        got = _call(gimpl, argv + [g["upstream"]])
    except Exception as e:  # noqa: BLE001
        rows.append(Row("FAIL", name, "grad", detail=f"raised {type(e).__name__}: {e}"))
        return
    if not isinstance(got, dict):
        rows.append(Row("FAIL", name, "grad", detail=f"{fn.grad_name}() must return a dict, got {type(got).__name__}"))
        return
    res = []
    for k, exp in g["expected"].items():
        if k not in got:
            res.append((k, (False, None, None, f"missing gradient {k!r}")))
        else:
            res.append((k, compare(got[k], exp, rtol, atol)))
    ok, ma, mr, detail = _merge(res)
    rows.append(Row("OK" if ok else "FAIL", name, "grad", ma, mr, detail))


def _flatten(prefix: str, v, out: dict):
    if isinstance(v, dict):
        for k, x in v.items():
            _flatten(f"{prefix}.{k}" if prefix else k, x, out)
    else:
        out[prefix] = v


def _quantity_tolerance(leaf: str, case: dict, rtol: float, atol: float, override: dict | None) -> tuple:
    """Tolerance of one dotted leaf of a trainer case: the longest matching prefix of the case's
    `quantity_tolerances` over the case tolerance (rtol, atol); a CLI override beats both."""
    best, tol = -1, {"rtol": rtol, "atol": atol}
    for prefix, t in (case.get("quantity_tolerances") or {}).items():
        if (leaf == prefix or leaf.startswith(prefix + ".")) and len(prefix) > best:
            best, tol = len(prefix), {"rtol": rtol, "atol": atol, **t}
    tol.update({k: v for k, v in (override or {}).items() if v is not None})
    return float(tol["rtol"]), float(tol["atol"])


def trainer_comparisons(got, case: dict, rtol: float, atol: float, override: dict | None = None) -> list:
    """[(dotted leaf name, (ok, max_abs, max_rel, detail))] for every leaf of a trainer case's
    `expected`, compared with the adapter's output `got` under the per-quantity tolerances."""
    exp, act = {}, {}
    _flatten("", decode(case["expected"]), exp)
    _flatten("", got if isinstance(got, dict) else {}, act)
    res = []
    for k, e in exp.items():
        rt, at = _quantity_tolerance(k, case, rtol, atol, override)
        res.append((k, compare(act[k], e, rt, at) if k in act else (False, None, None, "missing")))
    return res


def trainer_errors(got, case: dict) -> dict:
    """Largest absolute and relative error per quantity of a trainer case, {quantity: (max_abs, max_rel)}:
    one entry per top-level key of `expected`, except that leaves with their own `quantity_tolerances`
    entry are reported under that entry's name (the numbers spec/vectors/README.md quotes)."""
    prefixes = sorted(case.get("quantity_tolerances") or {}, key=len, reverse=True)
    out = {}
    for leaf, r in trainer_comparisons(got, case, 0.0, 0.0, {"rtol": 0.0, "atol": 0.0}):
        q = next((p for p in prefixes if leaf == p or leaf.startswith(p + ".")), leaf.split(".", 1)[0])
        a, m = out.get(q, (0.0, 0.0))
        out[q] = (max(a, math.inf if r[1] is None else r[1]), max(m, math.inf if r[2] is None else r[2]))
    return out


def _run_trainer_case(adapter, case: dict, rtol: float, atol: float, rows: list, override: dict | None = None):
    name = case["name"]
    impl = getattr(adapter, "run_trainer_vector", None)
    if not callable(impl):
        rows.append(Row("SKIP", name, "trainer", detail="adapter has no run_trainer_vector()"))
        return
    try:
        got = impl(decode(case["inputs"]))
    except Exception as e:  # noqa: BLE001
        rows.append(Row("FAIL", name, "trainer", detail=f"raised {type(e).__name__}: {e}"))
        return
    if not isinstance(got, dict):
        rows.append(Row("FAIL", name, "trainer", detail=f"run_trainer_vector() must return a dict, got {type(got).__name__}"))
        return
    ok, ma, mr, detail = _merge(trainer_comparisons(got, case, rtol, atol, override))
    rows.append(Row("OK" if ok else "FAIL", name, "trainer", ma, mr, detail))


def _short(x, n: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def run(adapter, vectors_dir=None, only=None, rtol=None, atol=None) -> Report:
    """Run every selected vector through `adapter`; returns a Report (rows in manifest order)."""
    vectors_dir = Path(vectors_dir) if vectors_dir is not None else default_vectors_dir()
    if not (vectors_dir / "manifest.json").is_file():
        raise UsageError(f"không thấy manifest / no manifest.json in {vectors_dir} (use --vectors DIR)")
    manifest = load_manifest(vectors_dir)
    ver = str(manifest.get("spec_version", ""))
    if ver.split(".")[0] != SPEC_VERSION.split(".")[0]:
        raise UsageError(
            f"phiên bản spec không khớp / spec major version mismatch: vectors are {ver!r}, runner implements {SPEC_VERSION!r}"
        )
    override = {"rtol": rtol, "atol": atol}
    report = Report()
    matched = False
    entries = list(manifest.get("files", []))
    entries += list(manifest.get("trainer_vectors", {}).get("files", []))
    for entry in entries:
        with open(vectors_dir / entry["file"], encoding="utf-8") as f:
            fobj = json.load(f)
        stem = Path(entry["file"]).stem
        function = fobj.get("function", entry.get("function", ""))
        trainer = fobj.get("format") == TRAINER_FORMAT
        if not trainer and function not in PROTOCOL:
            raise UsageError(f"hàm không rõ / vector file {entry['file']} names unknown function {function!r}")
        for case in fobj["cases"]:
            if not _selected(case["name"], function, stem, only):
                continue
            matched = True
            rt, at = _tolerance(manifest, entry, fobj, case, override, trainer)
            if trainer:
                _run_trainer_case(adapter, case, rt, at, report.rows, override)
            else:
                _run_loss_case(adapter, PROTOCOL[function], case, rt, at, report.rows)
    if only and not matched:
        raise UsageError(f"không có vector nào khớp / no vector matches --only {only}")
    return report


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def format_report(report: Report, adapter_name: str, quiet: bool = False) -> str:
    width = max([len(r.case) for r in report.rows] + [6])
    lines = [f"adapter: {adapter_name}", f"{'status':<6} {'vector':<{width}} {'check':<7} {'max_abs':>9} {'max_rel':>9}  detail"]
    for r in report.rows:
        if quiet and r.status != "FAIL":
            continue
        lines.append(f"{r.status:<6} {r.case:<{width}} {r.check:<7} {_fmt(r.max_abs):>9} {_fmt(r.max_rel):>9}  {r.detail}".rstrip())
    c = report.counts
    lines.append(f"{c['OK']} OK, {c['FAIL']} FAIL, {c['SKIP']} SKIP -> {'PASS' if report.ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """CLI entry point; returns the exit status (0 pass, 1 any FAIL, 2 usage error)."""
    p = argparse.ArgumentParser(
        prog="python -m vietnamese_ai_ref.conformance",
        description=f"Check an implementation against the spec {SPEC_VERSION} golden vectors (spec/vectors).",
    )
    p.add_argument("adapter", help="MODULE[:ATTR] or path/to/file.py[:ATTR], e.g. vietnamese_ai_ref.conformance:reference_adapter")
    p.add_argument("--vectors", default=None, help="directory holding manifest.json (default: spec/vectors of this source tree)")
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run only vectors whose function, file stem or case name is NAME (glob allowed); repeatable")
    p.add_argument("--rtol", type=float, default=None, help="override the manifest's relative tolerance")
    p.add_argument("--atol", type=float, default=None, help="override the manifest's absolute tolerance")
    p.add_argument("--quiet", action="store_true", help="print only FAIL rows and the summary")
    try:
        ns = p.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    try:
        adapter = load_adapter(ns.adapter)
        report = run(adapter, ns.vectors, ns.only, ns.rtol, ns.atol)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = getattr(adapter, "name", None) or getattr(adapter, "__name__", None) or ns.adapter
    print(format_report(report, str(name), ns.quiet))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
