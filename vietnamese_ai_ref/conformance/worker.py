"""The child process of the conformance runner: it runs the adapter and streams one line per check.

What it is for: `runner.run_isolated` starts it as `python -m vietnamese_ai_ref.conformance.worker` and
writes a job on its standard input (JSON: adapter spec, vector folder, `--only` patterns, tolerance
overrides, the parent's `sys.path`, the index of the first planned case to run). It verifies the
vectors again, makes the same plan as the parent (checks.plan), loads the adapter and writes, on the
standard output it was given — which it first takes away from the adapter, whose own prints go to
stderr — one JSON line per message, flushed at once: `{"ready": name}`, then `{"row": ...}` for each
check as soon as it is made, then `{"done": true}`; a usage problem is `{"usage_error": message}`.
What it is not: where the verdict is made. The parent counts the rows against its own plan, so an
adapter that ends this process — `sys.exit` while importing, `os._exit`, a crash, a signal — leaves
checks unaccounted for, which the parent reports as FAIL; it never makes the run pass.
"""

from __future__ import annotations

import json
import os
import sys

from .._version import SPEC_VERSION
from .checks import UsageError, adapter_name, load_adapter, plan, run_case
from .codec import VectorError, load_vectors


def _channel():
    """The report channel (a duplicate of fd 1); fd 1 and sys.stdout then point at stderr."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main() -> int:
    job = json.loads(sys.stdin.read())
    out = _channel()

    def send(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    sys.path[:] = list(job["sys_path"])
    try:
        manifest, files = load_vectors(job["vectors"], SPEC_VERSION)
        planned = plan(manifest, files, job["only"], job["override"])
        adapter = load_adapter(job["adapter"])
    except (UsageError, VectorError) as e:
        send({"usage_error": str(e)})
        return 2
    send({"ready": adapter_name(adapter, job["adapter"])})
    for p in planned[int(job["start"]):]:
        run_case(adapter, p, job["override"], lambda row: send({"row": row.to_json()}))
    send({"done": True})
    sys.stderr.flush()
    out.close()
    os._exit(0)  # an adapter's leftover threads or atexit hooks cannot hold the run up or change its status


if __name__ == "__main__":
    sys.exit(main())
