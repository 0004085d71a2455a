"""JSONL files in and out: one record per line, errors that name the file and the line.

What it is for: reading the record files the CLI takes (the format TRL users already have; a UTF-8 byte
order mark at the start is accepted; a directory, a pipe or an unreadable file each get their own message)
and writing `metrics.jsonl`; every write goes to a temporary file that is renamed into place. Also the one
reader of JSON files that must hold an object (config.json, tokenizer_config.json, ...).
What it is not: a record validator (records.py checks keys and types).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile

from ..core.errors import JsonlError

_BOM = "\ufeff"


def read_json_object(path, error=JsonlError) -> dict:
    """The JSON object in the file `path`; `error` (an exception class) if it is missing, not valid
    UTF-8/JSON, or not an object. Callers pass the error type of their layer (CheckpointError for a
    model folder's config.json, TokenizerError for tokenizer_config.json)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"Thiếu tệp / missing file: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"JSON hỏng / invalid JSON in {path}: {e}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"JSON không đọc được / unreadable JSON in {path}: {e}") from e
    if not isinstance(raw, dict):
        raise error(f"{path} phải là một đối tượng JSON / must hold a JSON object, got {type(raw).__name__}")
    return raw


def check_regular_file(path) -> None:
    """JsonlError unless `path` is an existing regular file: missing, a directory, a pipe or another
    special file each get their own message."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise JsonlError(f"không tìm thấy tệp / file not found: {path}") from None
    except OSError as e:  # a path through a file, a name too long, a folder we may not enter
        raise JsonlError(f"không truy cập được / cannot access {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise JsonlError(f"là một thư mục, không phải tệp / is a directory, not a file: {path}")
    if stat.S_ISFIFO(mode):
        raise JsonlError(
            f"là một pipe, không phải tệp thường: hãy ghi dữ liệu ra tệp (cần đọc lại khi chạy tiếp) / is a pipe, "
            f"not a regular file: write the data to a file first (a run reads it again to resume): {path}"
        )
    if not stat.S_ISREG(mode):
        raise JsonlError(f"không phải tệp thường / not a regular file (a device or socket): {path}")


def _open_for_reading(path):
    check_regular_file(path)
    try:
        return open(path, "rb")
    except OSError as e:  # permissions (not as root), a file removed meanwhile
        raise JsonlError(f"không đọc được tệp / cannot read the file {path}: {e.strerror}") from None


def read_jsonl(path) -> list:
    """Records of a JSONL file (blank lines skipped; a UTF-8 BOM at the start is skipped). Each line
    must be a JSON object."""
    path = os.fspath(path)
    out = []
    with _open_for_reading(path) as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JsonlError(f"{path}:{n}: không phải UTF-8 hợp lệ / invalid UTF-8 ({e.reason})") from None
            if n == 1 and line.startswith(_BOM):
                line = line[1:]
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{path}:{n}: JSON không hợp lệ / invalid JSON: {e.msg} (cột/column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # an integer beyond Python's digit limit; nesting too deep
                raise JsonlError(f"{path}:{n}: JSON không đọc được / unreadable JSON: "
                                 f"{'lồng quá sâu / nested too deeply' if isinstance(e, RecursionError) else e}") from None
            if not isinstance(rec, dict):
                raise JsonlError(
                    f"{path}:{n}: mỗi dòng phải là một đối tượng JSON, nhận được {type(rec).__name__} "
                    f"/ each line must be a JSON object, got {type(rec).__name__}"
                )
            out.append(rec)
    if not out:
        raise JsonlError(f"{path}: tệp rỗng / empty file")
    return out


def atomic_write_text(path, text: str):
    """Write `text` to `path` through a temporary sibling file, fsync, rename."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path, records):
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
