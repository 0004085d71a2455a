"""The TOML file of `vietnamese-ai-ref pipeline --config FILE.toml`, read and checked in full.

What it is for: one place that says what the file may hold — `[model]` (GPTConfig fields, or `path` to a
model folder alone), `[data]` (`sft`, `preference`: paths relative to the file), `[sft]`, `[reward]`,
`[dpo]` (tables of the trainers' parameters), `method` (stage 3: "dpo", the default, or "grpo", "rloo",
"online_dpo") with the online trainer's table `[grpo]`, `[rloo]` or `[online_dpo]`, `out` (a string) — and
refuses anything else with one line naming the file and the key, before any data is read or anything
computed (a value of the wrong TOML type would otherwise surface later as a TypeError). `stage3` settles
the method (the command line's `--method` wins over the file's) and refuses a table of another method.
What it is not: the check of the parameters' values (the trainers and RLHFPipeline do that).
"""

from __future__ import annotations

import os

from .rundir import CliError

#: stage 3's methods (= trainers.pipeline.METHODS; tests/test_pipeline_rl.py checks): each one's table
STAGE3_METHODS = ("dpo", "grpo", "rloo", "online_dpo")
TABLES = ("model", "data", "sft", "reward", *STAGE3_METHODS)
PIPELINE_KEYS = {*TABLES, "method", "out"}
DATA_KEYS = {"sft", "preference"}


def _load_toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    if not os.path.isfile(path):
        what = "là một thư mục / is a directory" if os.path.isdir(path) else "không tìm thấy tệp / file not found"
        raise CliError(f"--config: {what}: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"{path}: TOML không hợp lệ / invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: không phải UTF-8 / not UTF-8: {e.reason}") from None


def _type_error(path, key, expected, got):
    return CliError(f"{path}: {key} phải là {expected[0]}, nhận được {type(got).__name__} {got!r} / {key} must be "
                    f"{expected[1]}, got {type(got).__name__} {got!r}")


def read_pipeline_config(path) -> dict:
    """The config as a dict, every key and every value's TOML type checked."""
    cfg = _load_toml(path)
    unknown = sorted(set(cfg) - PIPELINE_KEYS)
    if unknown:
        raise CliError(f"{path}: khóa không hợp lệ / unknown keys {unknown}; valid: {sorted(PIPELINE_KEYS)}")
    for table in TABLES:
        if table in cfg and not isinstance(cfg[table], dict):
            raise _type_error(path, f"[{table}]", ("một bảng", "a table"), cfg[table])
    if "out" in cfg and not isinstance(cfg["out"], str):
        raise _type_error(path, "out", ("một chuỗi", "a string"), cfg["out"])
    if "method" in cfg and cfg["method"] not in STAGE3_METHODS:
        raise CliError(f"{path}: method không hợp lệ / invalid method {cfg['method']!r}; valid: "
                       f"{list(STAGE3_METHODS)}")
    data = cfg.get("data", {})
    for k in sorted(DATA_KEYS):
        if k not in data:
            raise CliError(f"{path}: thiếu [data].{k} / missing [data].{k}")
        if not isinstance(data[k], str):
            raise _type_error(path, f"[data].{k}", ("một đường dẫn (chuỗi)", "a path (a string)"), data[k])
    extra = sorted(set(data) - DATA_KEYS)
    if extra:
        raise CliError(f"{path}: [data] có khóa không hợp lệ / unknown keys {extra}; valid: {sorted(DATA_KEYS)}")
    model = cfg.get("model", {})
    if "path" in model:
        if not isinstance(model["path"], str):
            raise _type_error(path, "[model].path", ("một đường dẫn (chuỗi)", "a path (a string)"), model["path"])
        if len(model) > 1:
            raise CliError(f"{path}: [model].path không dùng cùng {sorted(set(model) - {'path'})} / [model].path "
                           f"cannot be combined with {sorted(set(model) - {'path'})} (the folder's config decides)")
    return cfg


def stage3(path, cfg, method=None) -> tuple:
    """(method, its trainer's table) of a checked config: `method` (the command line's --method) when given,
    else the file's `method`, else "dpo". A table of another method is refused, naming it."""
    method = method or cfg.get("method", "dpo")
    others = [m for m in STAGE3_METHODS if m != method and m in cfg]
    if others:
        raise CliError(f"{path}: [{others[0]}] chỉ dùng với method = \"{others[0]}\", lần chạy này dùng "
                       f"\"{method}\" / [{others[0]}] is only for method = \"{others[0]}\"; this run's method "
                       f"is \"{method}\"")
    return method, cfg.get(method, {})
