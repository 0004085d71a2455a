"""Writing a model folder without losing anything: atomic, and only the files it owns are replaced.

What it is for: `write_model_folder(path, write)`. A new folder is written into a temporary sibling
and renamed into place, so no folder ever looks finished unless it is. Into an existing model folder
(one with config.json), the new files are written into a temporary sibling first, fsynced, then moved
in one by one with `os.replace` (config.json last), and the files a model folder owns that the new
save does not write (an old index and its shards, say) are removed; every other file (README.md,
LICENSE, a user's notes) stays. Files and folders get the modes the umask gives, like any file the
user creates. Also the fsync helpers of io/.
What it is not: a training-checkpoint writer (checkpoints.py builds on these helpers).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from ..core.errors import CheckpointError

__all__ = ["write_model_folder", "fsync_file", "fsync_dir", "OWNED"]

CONFIG_NAME = "config.json"

#: Files a model folder's writer owns: replaced or removed by a save; anything else is kept.
OWNED = re.compile(
    r"^(config\.json|generation_config\.json|model\.safetensors|model\.safetensors\.index\.json|"
    r"model-\d+-of-\d+\.safetensors|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|"
    r"chat_template\.jinja|adapter_config\.json|adapter_model\.safetensors)$"
)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str) -> None:
    """Give `root` and everything in it the modes a plain open()/mkdir() would (0o666/0o777 & ~umask):
    tempfile creates 0600 files and 0700 folders, which a saved model must not keep."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for name in os.listdir(root):
        p = os.path.join(root, name)
        os.chmod(p, (0o777 if os.path.isdir(p) else 0o666) & ~mask)


def _check_target(path: str) -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointError(f"Đường dẫn đã tồn tại và không phải thư mục / path exists and is not a directory: {path}")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise CheckpointError(
            f"Không ghi vào thư mục không phải mô hình / refusing to write a model into a non-empty directory "
            f"without {CONFIG_NAME}: {path}"
        )


def write_model_folder(path, write) -> None:
    """Call `write(tmp_dir)` to write a model's files into a fresh temporary sibling of `path`, then put
    them in place: rename the whole folder (new path) or move each file in (existing model folder,
    config.json last; owned files the save did not write are removed, others kept).

    A plain file at `path`, or a non-empty directory without config.json, is refused (CheckpointError)
    before anything is written. On any failure the temporary folder is removed and `path` is as before
    (a failure while moving files into an existing folder can leave it mixed; config.json, moved last,
    is then the old one)."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    _check_target(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        write(tmp)
        for fname in os.listdir(tmp):
            fsync_file(os.path.join(tmp, fname))
        apply_umask(tmp)
        fsync_dir(tmp)
        if not os.path.lexists(path):
            os.rename(tmp, path)
        else:
            _move_into(tmp, path)
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into(src: str, dst: str) -> None:
    """Move every file of `src` into `dst` (config.json last) and remove owned files `src` lacks."""
    new = set(os.listdir(src))
    for fname in sorted(new, key=lambda f: f == CONFIG_NAME):
        os.replace(os.path.join(src, fname), os.path.join(dst, fname))
    for fname in os.listdir(dst):
        if fname not in new and OWNED.match(fname) and os.path.isfile(os.path.join(dst, fname)):
            os.remove(os.path.join(dst, fname))
    fsync_dir(dst)
