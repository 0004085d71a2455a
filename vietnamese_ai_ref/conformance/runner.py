"""Conformance runner: checks an implementation of spec/losses.md against the golden vectors.

What it is for: `python -m vietnamese_ai_ref.conformance MODULE[:ATTR] [--vectors DIR] [--only NAME]`
loads an *adapter* (the implementation under test, wrapped in the small protocol below), runs every
vector of spec/vectors/ through it, prints one OK / FAIL / SKIP row per check with the largest absolute
and relative errors, and exits 1 when any check fails (2 for usage errors). It also holds the vector
file format helpers (`encode_array`, `decode`, in codec.py) used by scripts/make_vectors.py, and
`reference_adapter` (reference.py), this package's own implementation behind the same protocol.

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
from ..backends import host_np
from .codec import (FORMAT, PROTOCOL, TRAINER_FORMAT, Fn, decode, default_vectors_dir, encode_array,  # noqa: F401
                    encode_value, load_manifest)
from .reference import ReferenceAdapter, reference_adapter  # noqa: F401

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
        if fn.since != "1.0":  # added by a MINOR version: optional (spec/README.md, versioning rules)
            rows.append(Row("SKIP", name, "value", detail=f"adapter has no {fn.name}() (optional, spec {fn.since})"))
        else:
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
