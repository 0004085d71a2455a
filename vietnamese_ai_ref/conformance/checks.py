"""The checks of the conformance runner: which checks a selection of vectors makes, and each one run.

What it is for: the engine shared by `runner.run` (an adapter object, in this process) and the worker
process (`worker.py`, what the command line uses): loading an adapter by name (`load_adapter`), the
`--only` rule and the list of checks a selection makes (`plan`: the number the verdict is counted
against), running one planned case through an adapter (`run_case`, one `Row` per check, never an
exception: an adapter that raises or calls `sys.exit` gets a FAIL row), the comparison rule
(`compare`), the tolerances, and the trainer-vector comparison per quantity (`trainer_comparisons`;
logits at padded positions are not compared, spec/model.md §4).
What it is not: the command line, the child process or the printed report (runner.py, worker.py), nor
the integrity check of the vector files (codec.load_vectors).

`--only` rule: each pattern is a glob (`fnmatch`, case-sensitive; a plain word is a glob that matches
only itself) tried against the whole of four names of every case — its file name (`trainer_sft.json`),
the file's stem (`trainer_sft`), its function or trainer (`sft_loss`, `sft`) and the case name
(`sft_loss/own_count`); a pattern ending in `/` also matches every case name that starts with it. A name
is never matched by a substring: `sft` is the SFT trainer vector (trainer `sft`), `sft_loss` the loss
function, `'*sft*'` both. A pattern that matches no case is a usage error.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import host_np
from .codec import PROTOCOL, VectorError, VectorFile, decode

__all__ = ["UsageError", "Row", "Planned", "load_adapter", "adapter_name", "check_override", "plan",
           "manifest_check_count", "run_case", "compare", "trainer_comparisons", "trainer_errors"]


class UsageError(Exception):
    """Bad command line, adapter that cannot be loaded, missing or untrusted vectors (exit 2)."""


# ============================ loading an adapter ==============================================

def load_adapter(spec: str):
    """`MODULE[:ATTR]` or `path/to/file.py[:ATTR]` -> the adapter object (UsageError when it cannot be
    imported, including an import that calls `sys.exit`)."""
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
    except (Exception, SystemExit) as e:  # noqa: BLE001 — an import that exits is an unusable adapter
        raise UsageError(f"không nạp được adapter / cannot import adapter module {mod_part!r}: "
                         f"{type(e).__name__}: {_one_line(e)}") from e
    obj = module
    for part in [p for p in attr.split(".") if p]:
        if not hasattr(obj, part):
            raise UsageError(f"adapter không có thuộc tính / adapter module {mod_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def adapter_name(adapter, fallback: str = "adapter") -> str:
    return str(getattr(adapter, "name", None) or getattr(adapter, "__name__", None) or fallback)


def check_override(rtol, atol) -> dict:
    """{"rtol", "atol"} of the command line: None (the vectors' own) or a finite number > 0."""
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UsageError(f"dung sai không hợp lệ / --{name} must be a finite number > 0, got {v!r}")
    return {"rtol": rtol, "atol": atol}


# ============================ rows and the plan ===============================================

@dataclass
class Row:
    """One check's result. `problems`: one (quantity, max_abs, max_rel, text) per failing quantity or
    message of a FAIL row; `section`: the spec section its vector file names."""

    status: str  # OK, FAIL, SKIP
    case: str
    check: str  # value, grad, raises, trainer
    max_abs: float | None = None
    max_rel: float | None = None
    detail: str = ""
    section: str = ""
    problems: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"status": self.status, "case": self.case, "check": self.check, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "detail": self.detail, "section": self.section,
                "problems": [list(p) for p in self.problems]}

    @classmethod
    def from_json(cls, d: dict) -> "Row":
        return cls(d["status"], d["case"], d["check"], d.get("max_abs"), d.get("max_rel"), d.get("detail", ""),
                   d.get("section", ""), [tuple(p) for p in d.get("problems", [])])


@dataclass(frozen=True)
class Planned:
    """One selected case: its file, the case, the checks it makes (in order) and its tolerance."""

    vf: VectorFile
    case: dict
    checks: tuple
    rtol: float
    atol: float

    @property
    def name(self) -> str:
        return self.case["name"]


def _checks_of(vf: VectorFile, case: dict) -> tuple:
    if vf.trainer:
        return ("trainer",)
    if "expect_error" in case:
        return ("raises",)
    return ("value", "grad") if ("grad" in case and PROTOCOL[vf.function].grad_name) else ("value",)


def manifest_check_count(manifest: dict) -> int:
    """The number of checks the manifest's counts make: value + gradient (functions with a gradient) +
    error checks per loss file, one per trainer case."""
    n = 0
    for e in manifest.get("files", []):
        grads = e.get("grad_checks", 0) if PROTOCOL[e["function"]].grad_name else 0
        n += e.get("value_checks", 0) + grads + e.get("error_checks", 0)
    return n + sum(e["cases"] for e in (manifest.get("trainer_vectors") or {}).get("files", []))


def _matches(pattern: str, vf: VectorFile, case_name: str) -> bool:
    if pattern.endswith("/") and case_name.startswith(pattern):
        return True
    return any(fnmatch.fnmatchcase(n, pattern) for n in (vf.name, vf.stem, vf.function, case_name))


def plan(manifest: dict, files: list, only=None, override=None) -> list:
    """[Planned] for every case of `files` that `only` selects (all when empty), in manifest order."""
    override = override or {}
    out, used = [], set()
    for vf in files:
        for case in vf.cases:
            hit = [p for p in (only or []) if _matches(p, vf, case["name"])]
            if only and not hit:
                continue
            used.update(hit)
            rt, at = _tolerance(manifest, vf, case, override)
            out.append(Planned(vf, case, _checks_of(vf, case), rt, at))
    unused = [p for p in (only or []) if p not in used]
    if unused:
        raise UsageError(f"không có vector nào khớp / no vector matches --only {unused[0]!r} "
                         "(globs over file names, file stems, function or trainer names and case names)")
    if not only and sum(len(p.checks) for p in out) != manifest_check_count(manifest):
        raise VectorError("vector không tin được / untrusted vectors: manifest.json: its counts make "
                          f"{manifest_check_count(manifest)} checks, the files {sum(len(p.checks) for p in out)}")
    return out


def _tolerance(manifest: dict, vf: VectorFile, case: dict, override: dict) -> tuple:
    tol = dict(manifest.get("tolerances", {}).get("default", {"rtol": 1e-12, "atol": 1e-12}))
    if vf.trainer:
        tol.update(manifest.get("trainer_vectors", {}).get("tolerances", {}))
    tol.update(manifest.get("tolerances", {}).get(vf.name, {}))
    tol.update(vf.entry.get("tolerances", {}))
    tol.update(vf.obj.get("tolerances", {}))
    tol.update(case.get("tolerances", {}))
    tol.update({k: v for k, v in override.items() if v is not None})
    return float(tol["rtol"]), float(tol["atol"])


# ============================ comparing ========================================================

def _to_np(x):
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        x = x.get()
    return host_np.asarray(x, dtype=host_np.float64)


def compare(actual, expected, rtol: float, atol: float, where=None):
    """(ok, max_abs, max_rel, detail): passes iff shapes match, `actual` is finite where `expected` is
    compared, and |a − e| ≤ atol + rtol·|e| element-wise. `where` (broadcast to the shape), when given,
    marks the elements that are compared; the others are not normative and ignored."""
    e = host_np.asarray(expected, dtype=host_np.float64)
    try:
        a = _to_np(actual)
    except Exception as ex:  # noqa: BLE001
        return False, None, None, f"output is not numeric: {type(ex).__name__}: {_one_line(ex)}"
    if a.shape != e.shape:
        return False, None, None, f"shape {a.shape} != expected {e.shape}"
    w = host_np.ones(e.shape, dtype=bool) if where is None else host_np.broadcast_to(host_np.asarray(where, dtype=bool), e.shape)
    if a.size == 0 or not bool(w.any()):
        return True, 0.0, 0.0, ""
    bad_values = ~host_np.isfinite(a) & w
    if bool(bad_values.any()):
        return False, math.inf, math.inf, f"{int(bad_values.sum())} non-finite value(s)"
    with host_np.errstate(invalid="ignore", over="ignore"):
        err = host_np.where(w, host_np.abs(a - e), 0.0)
    mag = host_np.where(w, host_np.abs(e), 0.0)
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


def _problems(results) -> list:
    return [(n, r[1], r[2], r[3] or "differs") for n, r in results if not r[0]]


def _one_line(x, n: int = 300) -> str:
    lines = str(x).strip().splitlines()
    s = (lines[0] + (" …" if len(lines) > 1 else "")) if lines else ""
    return s if len(s) <= n else s[: n - 1] + "…"


def _short(x, n: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


# ============================ running a planned case ==========================================

def _call(fn, args, skip=()) -> tuple:
    """(True, result) or (False, message): an exception or a `sys.exit` of the adapter is a result;
    (None, message) for an exception of the types `skip` (an optional check the adapter declines)."""
    try:
        return True, fn(*args)
    except skip as e:
        return None, _one_line(e)
    except SystemExit as e:
        return False, f"adapter called sys.exit({e.code!r})"
    except Exception as e:  # noqa: BLE001 — any exception is a conformance failure, never a crash
        return False, f"raised {type(e).__name__}: {_one_line(e)}"


def run_case(adapter, p: Planned, override: dict | None, emit) -> None:
    """Run planned case `p` through `adapter`, calling `emit(Row)` once per check of `p.checks`, in order."""
    rows = _trainer_rows(adapter, p, override) if p.vf.trainer else _loss_rows(adapter, p)
    for r in rows:
        r.section = p.vf.section
        if r.status == "FAIL" and not r.problems:
            r.problems = [("", r.max_abs, r.max_rel, r.detail)]
        emit(r)


def _fail(p: Planned, check: str, message: str) -> Row:
    return Row("FAIL", p.name, check, detail=message)


def _loss_rows(adapter, p: Planned) -> list:
    fn = PROTOCOL[p.vf.function]
    args = decode(p.case["args"])
    argv = [args[a] for a in fn.args]
    rows = []
    for check in p.checks:
        name = fn.grad_name if check == "grad" else fn.name
        impl = getattr(adapter, name, None)
        if not callable(impl):
            if check == "grad":
                rows.append(Row("SKIP", p.name, check, detail=f"adapter has no {name}()"))
            elif fn.since != "1.0":  # added by a MINOR version: optional (spec/README.md, versioning rules)
                rows.append(Row("SKIP", p.name, check, detail=f"adapter has no {name}() (optional, spec {fn.since})"))
            else:
                rows.append(_fail(p, check, f"adapter lacks required function {name}()"))
        elif check == "raises":
            rows.append(_raises_row(p, impl, argv))
        elif check == "value":
            rows.append(_value_row(p, fn, impl, argv))
        else:
            rows.append(_grad_row(p, fn, impl, argv))
    return rows


def _raises_row(p: Planned, impl, argv) -> Row:
    want = p.case["expect_error"]
    try:
        out = impl(*argv)
    except ValueError as e:
        return Row("OK", p.name, "raises", detail=type(e).__name__)
    except SystemExit as e:
        return _fail(p, "raises", f"expected {want}, the adapter called sys.exit({e.code!r})")
    except Exception as e:  # noqa: BLE001 — any other exception is a conformance failure
        return _fail(p, "raises", f"expected {want}, got {type(e).__name__}: {_one_line(e)}")
    return _fail(p, "raises", f"expected {want} ({p.case.get('reason', '')}), returned {_short(out)}")


def _value_row(p: Planned, fn, impl, argv) -> Row:
    ok, out = _call(impl, argv)
    if not ok:
        return _fail(p, "value", out)
    if len(fn.outputs) == 1:
        outs = {fn.outputs[0]: out}
    elif not isinstance(out, (tuple, list)) or len(out) != len(fn.outputs):
        return _fail(p, "value", f"expected a tuple {fn.outputs}, got {_short(out)}")
    else:
        outs = dict(zip(fn.outputs, out))
    expected = decode(p.case["expected"])
    res = [(k, compare(outs[k], expected[k], p.rtol, p.atol)) for k in fn.outputs]
    ok, ma, mr, detail = _merge(res)
    return Row("OK" if ok else "FAIL", p.name, "value", ma, mr, detail, problems=_problems(res))


def _grad_row(p: Planned, fn, impl, argv) -> Row:
    g = decode(p.case["grad"])
    ok, got = _call(impl, argv + [g["upstream"]])  # upstream is the LAST POSITIONAL argument
    if not ok:
        return _fail(p, "grad", got)
    if not isinstance(got, dict):
        return _fail(p, "grad", f"{fn.grad_name}() must return a dict, got {type(got).__name__}")
    res = [(k, compare(got[k], exp, p.rtol, p.atol) if k in got else (False, None, None, f"missing gradient {k!r}"))
           for k, exp in g["expected"].items()]
    ok, ma, mr, detail = _merge(res)
    return Row("OK" if ok else "FAIL", p.name, "grad", ma, mr, detail, problems=_problems(res))


def _trainer_rows(adapter, p: Planned, override) -> list:
    impl = getattr(adapter, "run_trainer_vector", None)
    if not callable(impl):
        return [Row("SKIP", p.name, "trainer", detail="adapter has no run_trainer_vector()")]
    optional = p.vf.obj.get("spec_version") != "1.0"  # added by a MINOR version (spec/README.md)
    ok, got = _call(impl, [decode(p.case["inputs"])], NotImplementedError if optional else ())
    if ok is None:
        return [Row("SKIP", p.name, "trainer", detail=f"run_trainer_vector() does not implement trainer "
                                                      f"{p.vf.function!r} (optional, spec {p.vf.obj['spec_version']})")]
    if not ok:
        return [_fail(p, "trainer", got)]
    if not isinstance(got, dict):
        return [_fail(p, "trainer", f"run_trainer_vector() must return a dict, got {type(got).__name__}")]
    res = trainer_comparisons(got, p.case, p.rtol, p.atol, override)
    ok, ma, mr, detail = _merge(res)
    return [Row("OK" if ok else "FAIL", p.name, "trainer", ma, mr, detail, problems=_problems(res))]


# ============================ trainer vectors: per quantity ===================================

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


def normative_masks(case: dict, expected: dict) -> dict:
    """{leaf: mask} of the elements that are compared where not all are: the first-forward `logits`
    (B, T, V) only at the real positions of micro_batches[0] (attention_mask ≠ 0), since the values at
    padded positions are not normative (spec/model.md §4); the GRPO/RLOO vectors' `token_logps`
    (B, T − 1) only at the completion tokens (micro_batches[0].completion_mask ≠ 0, spec/rl.md §11)."""
    out = {}
    try:
        mb = case["inputs"]["micro_batches"][0]
    except (KeyError, IndexError, TypeError):
        return out
    e = expected.get("logits")
    if "attention_mask" in mb:
        am = host_np.asarray(decode(mb["attention_mask"])) != 0
        if getattr(e, "ndim", 0) == 3 and am.shape == e.shape[:2]:
            out["logits"] = am[:, :, None]  # (B, T, 1): broadcast over the vocabulary
    e = expected.get("token_logps")
    if "completion_mask" in mb:
        cm = host_np.asarray(decode(mb["completion_mask"])) != 0
        if getattr(e, "ndim", 0) == 2 and cm.shape == e.shape:
            out["token_logps"] = cm
    return out


def trainer_comparisons(got, case: dict, rtol: float, atol: float, override: dict | None = None) -> list:
    """[(dotted leaf name, (ok, max_abs, max_rel, detail))] for every leaf of a trainer case's
    `expected`, compared with the adapter's output `got` under the per-quantity tolerances; padded
    positions of the first-forward logits are not compared (`normative_masks`)."""
    decoded = decode(case["expected"])
    masks = normative_masks(case, decoded)
    exp, act = {}, {}
    _flatten("", decoded, exp)
    _flatten("", got if isinstance(got, dict) else {}, act)
    res = []
    for k, e in exp.items():
        rt, at = _quantity_tolerance(k, case, rtol, atol, override)
        res.append((k, compare(act[k], e, rt, at, masks.get(k)) if k in act else (False, None, None, "missing")))
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
