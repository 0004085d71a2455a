"""Conformance runner: checks an implementation of spec/losses.md against the golden vectors.

What it is for: `python -m vietnamese_ai_ref.conformance MODULE[:ATTR] [--vectors DIR] [--only NAME]
[--rtol X] [--atol X] [--quiet]` first verifies the vector folder against its manifest (every file
present, its sha256, spec version and case count as recorded; else one line and exit 2), then runs the
*adapter* (the implementation under test, wrapped in the small protocol below) in a child process
(worker.py) that streams one OK / FAIL / SKIP row per check as it is made — largest absolute and
relative errors; a FAIL row names the spec section of its vector file and lists one failing quantity
per line. The verdict counts the rows against the plan made from the manifest: a check the adapter
never answered (it called `os._exit`, crashed, was killed) is a FAIL, so the run exits 0 only when every
expected check came back and none failed; 1 when any failed; 2 for usage errors (bad command line,
tolerance not finite and > 0, adapter that cannot be imported, untrusted vectors). `run(adapter)`
runs an adapter object in this process (tests, notebooks). The vector codec is codec.py, the checks
checks.py, and `reference_adapter` (reference.py) this package's own implementation.

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

Optional gradients; a missing one makes its checks SKIP. `F_grad(*args, upstream)` is called with
F's positional arguments followed by `upstream` as one more POSITIONAL argument (an array shaped like
F's first output; the runner never passes it by keyword), and returns a dict mapping argument names to
the gradient of sum(upstream * F(*args)) with respect to that argument:
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
The spec 1.1 GRPO and RLOO trainer vectors (spec/rl.md §11) are optional: raising NotImplementedError
for them gives SKIP (for a spec 1.0 trainer vector it is a FAIL).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .._version import SPEC_VERSION
from .checks import (Planned, Row, UsageError, _merge, adapter_name, check_override, compare,  # noqa: F401
                     load_adapter, manifest_check_count, plan, run_case, trainer_comparisons, trainer_errors)
from .codec import (FORMAT, PROTOCOL, TRAINER_FORMAT, Fn, VectorError, VectorFile, decode,  # noqa: F401
                    default_vectors_dir, encode_array, encode_value, load_manifest, load_vectors)
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
    "load_vectors",
    "load_adapter",
    "compare",
    "run",
    "run_isolated",
    "main",
    "default_vectors_dir",
]

#: How often a dead worker is restarted (from the case after the one it died in) before the remaining
#: checks are reported as not run.
MAX_RESTARTS = 3


@dataclass
class Report:
    """The rows of a run and the checks it was planned to make (`expected`: (case, check) pairs)."""

    rows: list = field(default_factory=list)
    expected: list = field(default_factory=list)
    manifest_checks: int = 0
    adapter: str = ""

    @property
    def counts(self) -> dict:
        c = {"OK": 0, "FAIL": 0, "SKIP": 0}
        for r in self.rows:
            c[r.status] += 1
        return c

    @property
    def accounted(self) -> bool:
        """Every planned check came back exactly once, in order."""
        return [(r.case, r.check) for r in self.rows] == list(self.expected)

    @property
    def ok(self) -> bool:
        return self.counts["FAIL"] == 0 and self.accounted


def _prepare(vectors_dir, only, rtol, atol) -> tuple:
    """(manifest, plan, override, vectors folder) or UsageError, before any adapter code runs."""
    override = check_override(rtol, atol)
    vectors_dir = Path(vectors_dir) if vectors_dir is not None else default_vectors_dir()
    try:
        manifest, files = load_vectors(vectors_dir, SPEC_VERSION)
        planned = plan(manifest, files, only, override)
    except VectorError as e:
        raise UsageError(str(e)) from None
    return manifest, planned, override, vectors_dir


def _new_report(manifest, planned, name) -> Report:
    return Report(expected=[(p.name, c) for p in planned for c in p.checks],
                  manifest_checks=manifest_check_count(manifest), adapter=name)


def run(adapter, vectors_dir=None, only=None, rtol=None, atol=None) -> Report:
    """Run every selected vector through the adapter OBJECT `adapter` in this process; returns a Report
    (rows in manifest order). An exception or `sys.exit` of the adapter is a FAIL row; `os._exit` would
    end the caller too — the command line (`main`, `run_isolated`) runs adapters in a child process."""
    manifest, planned, override, _ = _prepare(vectors_dir, only, rtol, atol)
    report = _new_report(manifest, planned, adapter_name(adapter))
    for p in planned:
        run_case(adapter, p, override, report.rows.append)
    return report


def _run_trainer_case(adapter, case: dict, rtol: float, atol: float, rows: list, override: dict | None = None):
    """One trainer case outside a vector folder (tests): appends its Row to `rows`."""
    vf = VectorFile("trainer.json", {}, {"trainer": case["name"].split("/")[0], "cases": [case]}, True)
    run_case(adapter, Planned(vf, case, ("trainer",), rtol, atol), override, rows.append)


# ============================ the adapter in a child process ==================================

def _worker(job: dict):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "vietnamese_ai_ref.conformance.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=None, text=True, encoding="utf-8", env=env)
    proc.stdin.write(json.dumps(job))
    proc.stdin.close()
    return proc


def _ended(proc) -> str:
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _read(proc, report: Report, on_row, on_ready) -> bool:
    """Consume one worker's messages; True when it said `done` with every planned row accounted for."""
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except ValueError:
            return False  # not our protocol: the stream is no longer trusted
        if "usage_error" in msg:
            raise UsageError(msg["usage_error"])
        if "ready" in msg:
            on_ready(str(msg["ready"]))
        elif "row" in msg:
            row = Row.from_json(msg["row"])
            i = len(report.rows)
            if i >= len(report.expected) or (row.case, row.check) != report.expected[i]:
                return False
            report.rows.append(row)
            on_row(row)
        elif msg.get("done"):
            return len(report.rows) == len(report.expected)
    return False


def run_isolated(spec: str, vectors_dir=None, only=None, rtol=None, atol=None, on_row=None, on_ready=None) -> Report:
    """Run the adapter named by `spec` (MODULE[:ATTR] or file.py[:ATTR]) in a child process, calling
    `on_row(Row)` as each row arrives and `on_ready(name, report)` once the adapter is loaded. A worker that ends
    before its rows are all back gets a FAIL row for the check it was making (and the rest of its case);
    it is restarted from the next case, at most MAX_RESTARTS times, after which the checks left are FAIL
    rows too. UsageError for bad input, unloadable adapters and untrusted vectors."""
    manifest, planned, override, vdir = _prepare(vectors_dir, only, rtol, atol)
    report = _new_report(manifest, planned, spec)
    on_row = on_row or (lambda row: None)
    ready = {"seen": False}

    def first_ready(name):
        if not ready["seen"]:
            ready["seen"] = True
            report.adapter = name
            (on_ready or (lambda n, r: None))(name, report)

    job = {"adapter": spec, "vectors": str(vdir.resolve()), "only": list(only or []), "override": override,
           "sys_path": [os.getcwd()] + list(sys.path), "start": 0}
    deaths = 0
    while len(report.rows) < len(report.expected):
        proc = _worker(job)
        try:
            done = _read(proc, report, on_row, first_ready)
        finally:
            how = _ended(proc)
        if done:
            break
        if not ready["seen"]:
            raise UsageError(f"tiến trình adapter đã dừng / the adapter process ended while loading {spec!r} ({how})")
        deaths += 1
        _fail_case_rest(report, planned, f"the adapter process ended ({how}) during this check", on_row)
        job["start"] = _case_index(report, planned)
        if deaths > MAX_RESTARTS:
            while len(report.rows) < len(report.expected):
                _fail_case_rest(report, planned, f"not run: the adapter process ended {deaths} times", on_row)
    return report


def _case_index(report: Report, planned: list) -> int:
    """Index in `planned` of the case that the next expected row belongs to."""
    n = len(report.rows)
    for i, p in enumerate(planned):
        if n < len(p.checks):
            return i
        n -= len(p.checks)
    return len(planned)


def _fail_case_rest(report: Report, planned: list, why: str, on_row) -> None:
    """FAIL rows for the next expected check and the rest of its case."""
    i = _case_index(report, planned)
    if i >= len(planned):
        return
    p, first = planned[i], True
    while _case_index(report, planned) == i and len(report.rows) < len(report.expected):
        case, check = report.expected[len(report.rows)]
        msg = why if first else "not run: " + why.replace("not run: ", "").replace(" during this check", "")
        row = Row("FAIL", case, check, detail=msg, section=p.vf.section, problems=[("", None, None, msg)])
        report.rows.append(row)
        on_row(row)
        first = False


# ============================ the report ======================================================

def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def header_lines(adapter_name_: str, vectors_dir, spec: str, rtol, atol, width: int) -> list:
    if rtol is None and atol is None:
        tol = "the vectors' own (manifest, file, case and per-quantity entries; spec/vectors/README.md)"
    else:
        tol = (f"OVERRIDDEN on the command line: rtol={'(vectors)' if rtol is None else repr(rtol)}, "
               f"atol={'(vectors)' if atol is None else repr(atol)} for every check")
    return [f"adapter: {adapter_name_}", f"vectors: {vectors_dir} (spec {spec}; sha256, spec version and "
            "case count of every file verified)", f"tolerances: {tol}",
            f"{'status':<6} {'vector':<{width}} {'check':<7} {'max_abs':>9} {'max_rel':>9}  detail"]


def row_lines(r: Row, width: int) -> list:
    """The row, then one line per failing quantity of a FAIL row (never one line for all of them)."""
    detail = f"spec/{r.section}" if r.status == "FAIL" and r.section else r.detail
    if r.status == "FAIL" and not r.section:
        detail = ""
    lines = [f"{r.status:<6} {r.case:<{width}} {r.check:<7} {_fmt(r.max_abs):>9} {_fmt(r.max_rel):>9}  {detail}".rstrip()]
    if r.status == "FAIL":
        for name, ma, mr, text in r.problems:
            what = f"{name}: " if name else ""
            nums = f"max_abs {_fmt(ma)}, max_rel {_fmt(mr)}; " if ma is not None else ""
            lines.append(f"         - {what}{nums}{text}"[:400])
    return lines


def summary_line(report: Report) -> str:
    c, n = report.counts, len(report.expected)
    verdict = "PASS" if report.ok else "FAIL"
    scope = (f"{len(report.rows)} of {n} checks" if n == report.manifest_checks else
             f"{len(report.rows)} of {n} selected checks; the manifest lists {report.manifest_checks}")
    return f"{c['OK']} OK, {c['FAIL']} FAIL, {c['SKIP']} SKIP ({scope}) -> {verdict}"


def _width(report: Report) -> int:
    return max([len(c) for c, _ in report.expected] + [len(r.case) for r in report.rows] + [6])


def format_report(report: Report, adapter_name_: str, quiet: bool = False, vectors_dir=None,
                  rtol=None, atol=None) -> str:
    w = _width(report)
    lines = header_lines(adapter_name_, vectors_dir or default_vectors_dir(), SPEC_VERSION, rtol, atol, w)
    for r in report.rows:
        if not quiet or r.status == "FAIL":
            lines += row_lines(r, w)
    lines.append(summary_line(report))
    return "\n".join(lines)


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None


def main(argv=None) -> int:
    """CLI entry point; returns the exit status (0 pass, 1 any FAIL or check unaccounted for, 2 usage error)."""
    p = argparse.ArgumentParser(
        prog="python -m vietnamese_ai_ref.conformance",
        description=f"Check an implementation against the spec {SPEC_VERSION} golden vectors (spec/vectors).",
    )
    p.add_argument("adapter", help="MODULE[:ATTR] or path/to/file.py[:ATTR], e.g. vietnamese_ai_ref.conformance:reference_adapter")
    p.add_argument("--vectors", default=None, help="directory holding manifest.json (default: spec/vectors of this source tree)")
    p.add_argument("--only", action="append", default=None, metavar="GLOB",
                   help="run only the cases whose file name, file stem, function/trainer name or case name matches "
                        "GLOB as a whole (e.g. 'trainer_*', trainer_sft.json, dpo_loss, sft, 'dpo_loss/random_*'); repeatable")
    p.add_argument("--rtol", type=_float, default=None, help="override every relative tolerance (finite, > 0)")
    p.add_argument("--atol", type=_float, default=None, help="override every absolute tolerance (finite, > 0)")
    p.add_argument("--quiet", action="store_true", help="print only FAIL rows and the summary")
    try:
        ns = p.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    vdir = Path(ns.vectors) if ns.vectors else default_vectors_dir()
    width = {"w": 6}

    def on_ready(name, report):
        width["w"] = _width(report)
        print("\n".join(header_lines(name, vdir, SPEC_VERSION, ns.rtol, ns.atol, width["w"])), flush=True)

    def on_row(row):
        if not ns.quiet or row.status == "FAIL":
            print("\n".join(row_lines(row, width["w"])), flush=True)

    try:
        report = run_isolated(ns.adapter, vdir, ns.only, ns.rtol, ns.atol, on_row, on_ready)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_line(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
