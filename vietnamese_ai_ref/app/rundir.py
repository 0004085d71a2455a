"""Run directories of the command-line tool and the demo, written as transactions; progress bars.

What it is for: a run never overwrites and never looks finished unless it is. `RunDir.plan` checks the
output path before any compute (an existing non-empty folder is refused unless `--overwrite` and it is
a finished run of this tool; a file, a parent that is a file, a parent we may not write into are refused);
the run then writes into the sibling folder `<out>.partial` (config.json first, checkpoints inside it),
and `RunDir.commit` writes the results, `summary.json` last, and renames the folder into place. A run
that fails or is killed leaves at most `<out>.partial`: kept when it holds a checkpoint to resume from
(`--resume`), removed otherwise, and the error line says which (`RunDir.abandon`). Also: the exit codes
and the two error types the command line maps to them, a tqdm bar fed by the trainers' log callback, and
the planned step count of a run.
What it is not: training or model-saving logic; the commands in cli.py and demo.py use these helpers.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid

from ..core.errors import JsonlError
from ..io.checkpoints import list_checkpoints
from ..text.jsonl import read_json_object, write_json

#: exit codes (spec/errors.md "Exit codes of the command line")
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3

PARTIAL_SUFFIX = ".partial"
CONFIG = "config.json"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"

#: OSError numbers that mean "the environment", not a bug: permissions, disk full, read-only media, I/O
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO,
                      errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG}


class CliError(Exception):
    """A user error on the command line: printed as one line, exit code 2."""


class EnvironmentProblem(Exception):
    """The environment refused: permission denied, disk full, read-only file system. One line, exit 3."""


def describe_os_error(e: OSError) -> str:
    """A short bilingual reason for an OSError of the environment."""
    what = {
        errno.ENOSPC: "đĩa đầy / disk full",
        errno.EDQUOT: "hết hạn mức đĩa / disk quota exceeded",
        errno.EROFS: "hệ thống tệp chỉ đọc / read-only file system",
        errno.EACCES: "không có quyền / permission denied",
        errno.EPERM: "không có quyền / operation not permitted",
    }.get(e.errno, f"lỗi hệ thống / system error: {e.strerror or e}")
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return what + where


def is_finished_run(path) -> bool:
    """A folder this tool wrote and finished: config.json naming the command, and summary.json."""
    if not (os.path.isfile(os.path.join(path, SUMMARY)) and os.path.isfile(os.path.join(path, CONFIG))):
        return False
    try:
        return "command" in read_json_object(os.path.join(path, CONFIG))
    except JsonlError:
        return False


def _nearest_existing(path):
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


class RunDir:
    """One run's output folder: checks first, then `<final>.partial`, then a rename into place."""

    def __init__(self, final, command, *, overwrite=False):
        self.final = os.path.abspath(os.fspath(final))
        self.partial = self.final + PARTIAL_SUFFIX
        self.command = command
        self.overwrite = bool(overwrite)
        self.resuming = False

    @property
    def checkpoints(self) -> str:
        """Where the trainers write their checkpoints: inside the partial folder."""
        return os.path.join(self.partial, CHECKPOINTS)

    # -- before any compute ------------------------------------------------------------------------
    @classmethod
    def plan(cls, out, command, *, overwrite=False) -> "RunDir":
        """Check `out` (None: runs/<command>-<time>) before anything is computed or written."""
        if out is None:
            out = os.path.join("runs", f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")
        rd = cls(out, command, overwrite=overwrite)
        rd._check_final()
        if os.path.lexists(rd.partial) and not overwrite:
            raise CliError(
                f"--out: đã có một lần chạy bị ngắt ở {rd.partial}; chạy tiếp bằng --resume {rd.partial} hoặc "
                f"dùng --overwrite để bỏ nó / an interrupted run is at {rd.partial}: resume it with "
                f"--resume {rd.partial}, or pass --overwrite to discard it"
            )
        return rd

    @classmethod
    def for_resume(cls, path, command) -> tuple:
        """(RunDir, stored config) of the interrupted run at `path` (its `.partial` folder, or the `--out`
        it was started with)."""
        path = os.path.abspath(os.fspath(path))
        partial = path if path.endswith(PARTIAL_SUFFIX) else path + PARTIAL_SUFFIX
        if not os.path.isdir(partial):
            if os.path.isdir(path) and is_finished_run(path):
                raise CliError(f"--resume: lần chạy đã xong, không có gì để chạy tiếp / the run is finished, "
                               f"nothing to resume: {path}")
            raise CliError(f"--resume: không có lần chạy dở nào / no interrupted run at {path} "
                           f"(expected a folder {os.path.basename(partial)})")
        try:
            stored = read_json_object(os.path.join(partial, CONFIG))
        except JsonlError as e:
            raise CliError(f"--resume: {e}") from None
        if stored.get("command") != command or not isinstance(stored.get("args"), dict):
            raise CliError(f"--resume: {partial} là lần chạy '{stored.get('command')}', không phải '{command}' "
                           f"/ is a '{stored.get('command')}' run, not '{command}'")
        rd = cls(partial[: -len(PARTIAL_SUFFIX)], command, overwrite=stored.get("overwrite", False))
        rd.resuming = True
        rd._check_final()
        return rd, stored

    def _check_final(self):
        final = self.final
        if os.path.lexists(final) and not os.path.isdir(final):
            raise CliError(f"--out: đường dẫn là một tệp, không phải thư mục / the path is a file, not a "
                           f"directory: {final}")
        if os.path.isdir(final) and os.listdir(final):
            if not self.overwrite:
                raise CliError(
                    f"--out: thư mục đã tồn tại và không rỗng (một lần chạy trước?): {final}; dùng --overwrite để "
                    f"thay hoặc chọn --out khác / the directory exists and is not empty (an earlier run?): "
                    f"{final}; pass --overwrite to replace it or choose another --out"
                )
            if not is_finished_run(final):
                raise CliError(
                    f"--out: {final} không phải thư mục kết quả của công cụ này; không xoá nó kể cả với --overwrite "
                    f"/ is not a run directory of this tool (no config.json + summary.json): refusing to replace "
                    f"it even with --overwrite"
                )
        base = _nearest_existing(os.path.dirname(final))
        if not os.path.isdir(base):
            raise CliError(f"--out: {base} là một tệp, không tạo được thư mục trong nó / is a file: cannot create "
                           f"the run directory under it")
        if not os.access(base, os.W_OK | os.X_OK):
            raise EnvironmentProblem(
                f"--out: không ghi được vào / cannot write into {base}: không có quyền / permission denied "
                f"(nothing was computed)"
            )

    # -- the run -------------------------------------------------------------------------------------
    def begin(self, config: dict) -> None:
        """Create `<final>.partial` (a fresh one) and write config.json; resumed runs reuse theirs."""
        try:
            if not self.resuming:
                if os.path.lexists(self.partial):  # --overwrite: discard the interrupted run
                    shutil.rmtree(self.partial)
                os.makedirs(self.partial)
                write_json(os.path.join(self.partial, CONFIG), config)
            self._clean_leftovers()
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            raise EnvironmentProblem(f"--out: không tạo được thư mục chạy / cannot create the run directory "
                                     f"{self.partial}: {describe_os_error(e)} (nothing was computed)") from e

    def _clean_leftovers(self):
        """A resumed run's folder: drop what a killed process left half-written (a summary written just
        before the rename, hidden temporary folders of a model save)."""
        stale = os.path.join(self.partial, SUMMARY)
        if os.path.exists(stale):
            os.unlink(stale)
        for name in os.listdir(self.partial):
            if name.startswith(".") and ".tmp-" in name:
                shutil.rmtree(os.path.join(self.partial, name), ignore_errors=True)

    def commit(self, write_results, summary: dict) -> None:
        """write_results(folder) writes the models and metrics into the partial folder; then summary.json
        (last), then the folder is renamed to its final name (replacing a finished run with --overwrite)."""
        write_results(self.partial)
        write_json(os.path.join(self.partial, SUMMARY), summary)
        self._move_into_place()

    def _move_into_place(self):
        final = self.final
        if not os.path.lexists(final):
            os.rename(self.partial, final)
            return
        if os.path.isdir(final) and not os.listdir(final):
            os.rmdir(final)
            os.rename(self.partial, final)
            return
        parent, name = os.path.split(final)
        old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(final, old)
        try:
            os.rename(self.partial, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def has_checkpoint(self) -> bool:
        """Whether the partial folder holds a complete checkpoint (directly or per pipeline stage)."""
        root = self.checkpoints
        if not os.path.isdir(root):
            return False
        if list_checkpoints(root):
            return True
        return any(list_checkpoints(os.path.join(root, d)) for d in os.listdir(root))

    def abandon(self) -> str:
        """After a failure: keep the partial folder when it can be resumed, else remove it. Returns the
        sentence the error line ends with."""
        if not os.path.isdir(self.partial):
            return ""
        if self.has_checkpoint():
            return (f"thư mục dở dang được giữ lại / the partial run folder is kept: {self.partial} "
                    f"(chạy tiếp / resume: vietnamese-ai-ref {self.command} --resume {self.partial})")
        shutil.rmtree(self.partial, ignore_errors=True)
        if os.path.exists(self.partial):
            return f"không xoá được thư mục dở dang / could not remove the partial run folder {self.partial}"
        return f"chưa có bước nào được lưu, đã xoá / no step was saved; removed {self.partial}"


class Progress:
    """A tqdm bar fed by the trainers' log callback; collects the log entries for metrics.jsonl."""

    def __init__(self, total, desc, quiet, stage):
        self.entries = []
        self.stage = stage
        self.last_step = 0
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="bước", dynamic_ncols=True, leave=True)

    def __call__(self, info):
        info = dict(info, stage=self.stage)
        self.entries.append(info)
        if self.bar is not None:
            self.bar.update(info["step"] - self.last_step)
            post = {"loss": f"{info['train_loss']:.4f}"}
            for k in ("reward_margin", "accuracy", "reward_accuracy"):
                if k in info:
                    post[k.replace("reward_", "r_")] = f"{info[k]:.3f}"
            self.bar.set_postfix(post)
        self.last_step = info["step"]
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()


def history_entries(history: dict, stage: str) -> list:
    """The log entries of a finished (or resumed) run, rebuilt from its whole history: one dict per log
    entry with the keys the callback got, plus `stage`. A resumed run's metrics therefore equal an
    uninterrupted one's, whatever the callbacks of this process saw."""
    keys = [k for k in history if k != "eval_loss"]
    n = len(history.get("step", []))
    return [dict({k: history[k][i] for k in keys if len(history[k]) == n}, stage=stage) for i in range(n)]


def total_steps(n_records, batch_size, accumulation, epochs):
    from ..trainers.settings import LoopSettings, plan_steps

    s = LoopSettings(epochs=epochs, batch_size=batch_size, accumulation=accumulation, lr=1.0,
                     weight_decay=0.0, warmup_ratio=0.0, clip=0.0, logging_steps=1, seed=0)
    return plan_steps(n_records, s)[2]
