"""Training checkpoints: everything a run needs to continue bit-identically, written atomically.

What it is for: saving and loading the state of the shared training loop (training.run_loop) so that a
run killed at any point — SIGKILL included — and resumed with `tiep_tuc_tu=` ends with the same weights
and history, bit for bit on CPU, as a run that was never interrupted. A checkpoint is one directory

    <thu_muc_checkpoint>/checkpoint-<global_step, 8 digits>/
        model/                  the weights: the model's own `save` layout (config.json, model.safetensors,
                                tokenizer files), so the folder also loads with hf.from_pretrained /
                                TransformerLM.load / LlamaLM.load; under LoRA the (frozen) base
        adapter/                only under LoRA: adapter_config.json + adapter_model.safetensors (io/peft.py)
        optimizer.safetensors   AdamW's moments: group<i>.m, group<i>.v (flat buffers, backend dtype)
        trainer_state.json      format_version, kind, run identity (trainer config, loop settings, model
                                config, dtype, data fingerprint), the loop state (global_step = scheduler
                                step, epoch and position in the epoch, history so far, the open logging
                                window's accumulators, skipped-step count, time), AdamW's step_count and
                                group layout, the model's dropout RNG state, and trainer extras (DPO: the
                                reference log-probabilities of every pair)

written into a hidden temporary sibling (`.checkpoint-….tmp-…`), every file fsynced, then renamed into
place; older checkpoints are pruned (renamed to a hidden `.deleting-…` name, then removed) only after the
new one is complete. A write killed at any moment therefore leaves the previous checkpoint loadable; the
hidden leftovers are ignored and cleaned by the next write.

What it is not: a way to change a run midway. Resuming checks the trainer config, loop settings, model
config, parameter names, dtype and the data (count and SHA-256 of the prepared examples) against the
checkpoint and refuses any difference with a CheckpointError naming it, before anything is written or any
weight changes. Nor is it the model format itself (model.py owns that; this module reuses it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid

from ..backends import get_backend, host_np
from ..core.errors import CheckpointError
from .folders import apply_umask
from .folders import fsync_dir as _fsync_dir
from ..io.hf import from_pretrained, save_pretrained
from .peft import luu_adapter, tai_adapter

__all__ = [
    "FORMAT_VERSION", "DEFAULT_SAVE_EVERY", "DEFAULT_KEEP", "INTERRUPT_DIR", "CheckpointError",
    "CheckpointOptions", "TrainingCheckpoint", "list_checkpoints", "tim_checkpoint", "load_checkpoint",
]

FORMAT_VERSION = 1
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"  # a LoRA run: its adapters (and score head) in PEFT's layout beside the base in model/
PREFIX = "checkpoint-"
#: with `thu_muc_checkpoint` and no `luu_moi`: a checkpoint every 50 optimiser steps (and one at the end)
DEFAULT_SAVE_EVERY = 50
#: `giu_lai`: how many of the newest checkpoints a directory keeps
DEFAULT_KEEP = 2
#: where Ctrl-C saves when no `thu_muc_checkpoint` was given (relative to the working directory); it only
#: ever holds the checkpoint of the last interrupted run
INTERRUPT_DIR = "checkpoint-interrupted"

_NAME_RE = re.compile(r"^checkpoint-(\d{8,})$")

#: Test hook: a callable(phase, global_step) called at each phase of a write ("model", "optimizer",
#: "state", "renamed", "pruned"). tests/_resume_worker.py sets it to SIGKILL the process mid-write.
_write_hook = None

#: the loop settings' names as the trainers' parameters spell them (for error messages)
SETTING_NAMES = {
    "epochs": "so_vong", "batch_size": "kich_thuoc_batch", "accumulation": "gradient_accumulation",
    "lr": "toc_do_hoc", "weight_decay": "weight_decay", "warmup_ratio": "warmup_ratio",
    "clip": "gradient_clip", "logging_steps": "logging_steps", "seed": "seed",
}


def _hook(phase, step):
    if _write_hook is not None:
        _write_hook(phase, step)


# ---------------------------------------------------------------------------------------------
# directory listing
# ---------------------------------------------------------------------------------------------

def list_checkpoints(directory) -> list:
    """[(global_step, path)] of the complete checkpoints in `directory`, oldest first ([] if none)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        m = _NAME_RE.match(name)
        path = os.path.join(directory, name)
        if m and os.path.isfile(os.path.join(path, STATE_NAME)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def tim_checkpoint(thu_muc):
    """Checkpoint mới nhất / the newest complete checkpoint in `thu_muc` (a path), or None."""
    found = list_checkpoints(thu_muc)
    return found[-1][1] if found else None


latest_checkpoint = tim_checkpoint


# ---------------------------------------------------------------------------------------------
# run identity: what must not change between a checkpoint and its resumption
# ---------------------------------------------------------------------------------------------

def data_fingerprint(examples) -> str:
    """SHA-256 of the prepared examples (token ids, labels, margins, indices; DPO's reference
    log-probabilities, which are state, excluded)."""
    h = hashlib.sha256()
    for e in examples:
        clean = {k: v for k, v in e.items() if not k.startswith("ref_")}
        h.update(json.dumps(clean, sort_keys=True, ensure_ascii=True).encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def run_identity(*, kind, trainer_config, settings, model, examples, stat_keys, has_eval) -> dict:
    """What must not change between a checkpoint and its resumption, as it reads back from JSON (a model
    with LoRA adapters adds its LoraConfig under "adapters"; the parameter names include the adapters')."""
    ident = {
        "kind": kind,
        "trainer_config": dict(trainer_config),
        "settings": dict(vars(settings)),
        "model_config": model.config.to_dict(),
        "parameters": list(model.named_parameters()),
        "dtype": get_backend().dtype.name,
        "n_examples": len(examples),
        "data_sha256": data_fingerprint(examples),
        "stat_keys": list(stat_keys),
        "has_eval": bool(has_eval),
    }
    if getattr(model, "has_adapters", False):
        ident["adapters"] = model.lora_config.to_dict()
    return json.loads(json.dumps(ident))


def run_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _diff(saved: dict, now: dict, names=None) -> list:
    names = names or {}
    out = []
    for k in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(k, "<không có/absent>"), now.get(k, "<không có/absent>")
        if a != b:
            out.append(f"{names.get(k, k)}: checkpoint={a!r}, hiện tại/now={b!r}")
    return out


def check_identity(saved: dict, now: dict, path) -> None:
    """Raise CheckpointError naming every difference between a checkpoint's identity and this run's."""
    if saved.get("kind") != now["kind"]:
        raise CheckpointError(
            f"Checkpoint {path} là của lần chạy '{saved.get('kind')}', không phải '{now['kind']}' "
            f"/ the checkpoint is from a '{saved.get('kind')}' run, not '{now['kind']}'"
        )
    for key, names, vi, en in (
        ("trainer_config", None, "Cấu hình trainer", "the trainer config differs"),
        ("settings", SETTING_NAMES, "Tham số huấn luyện", "the training settings differ"),
        ("model_config", None, "Cấu hình mô hình", "the model config differs"),
    ):
        d = _diff(saved.get(key, {}), now[key], names)
        if d:
            raise CheckpointError(
                f"{vi} khác checkpoint {path}: {'; '.join(d)} / {en} from the checkpoint: {'; '.join(d)}"
            )
    d = _diff(saved.get("adapters") or {}, now.get("adapters") or {})
    if d:
        raise CheckpointError(f"Adapter LoRA khác checkpoint {path}: {'; '.join(d)} / the LoRA adapters differ "
                              f"from the checkpoint: {'; '.join(d)}")
    sp, np_ = saved.get("parameters", []), now["parameters"]
    if sp != np_:
        missing = [n for n in sp if n not in np_]
        extra = [n for n in np_ if n not in sp]
        raise CheckpointError(
            f"Tham số mô hình khác checkpoint {path}: checkpoint có thêm {missing}, mô hình có thêm {extra} "
            f"/ model parameters differ: only in checkpoint {missing}, only in model {extra}"
        )
    if saved.get("dtype") != now["dtype"]:
        raise CheckpointError(
            f"dtype khác checkpoint {path}: checkpoint={saved.get('dtype')}, hiện tại={now['dtype']} "
            f"/ dtype differs: checkpoint={saved.get('dtype')}, now={now['dtype']} (use set_backend(dtype=...))"
        )
    if saved.get("has_eval") != now["has_eval"]:
        raise CheckpointError(
            f"Checkpoint {path} {'có' if saved.get('has_eval') else 'không có'} dữ liệu kiểm định (du_lieu_val), "
            f"lần chạy này {'có' if now['has_eval'] else 'không có'} / validation data presence differs "
            f"(checkpoint: {saved.get('has_eval')}, now: {now['has_eval']})"
        )
    if saved.get("n_examples") != now["n_examples"] or saved.get("data_sha256") != now["data_sha256"]:
        raise CheckpointError(
            f"Dữ liệu huấn luyện khác checkpoint {path}: checkpoint có {saved.get('n_examples')} bản ghi "
            f"(sha256 {str(saved.get('data_sha256'))[:12]}), lần này {now['n_examples']} "
            f"(sha256 {now['data_sha256'][:12]}) / the training data differs from the checkpoint "
            f"({saved.get('n_examples')} vs {now['n_examples']} records, or different content)"
        )
    if saved.get("stat_keys") != now["stat_keys"]:
        raise CheckpointError(f"Chỉ số khác checkpoint / logged statistics differ: {saved.get('stat_keys')} "
                              f"vs {now['stat_keys']}")


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

class TrainingCheckpoint:
    """A checkpoint read fully into memory (nothing is applied until restore_* is called)."""

    def __init__(self, path, state, model_state, optimizer_arrays):
        self.path = path
        self.state = state
        self.model_state = model_state  # name -> host array
        self.optimizer_arrays = optimizer_arrays  # "group<i>.m"/".v" -> host array

    @property
    def global_step(self) -> int:
        return int(self.state["loop"]["global_step"])

    @property
    def kind(self) -> str:
        return self.state["kind"]

    @property
    def identity(self) -> dict:
        return self.state["identity"]

    @property
    def extra(self) -> dict:
        return self.state.get("extra") or {}

    def check(self, identity: dict, model=None) -> None:
        """Everything that could make a restore fail, checked before any restore: the identity, then
        the optimiser state's group layout and tensor shapes against `model`."""
        check_identity(self.identity, identity, self.path)
        if model is None:
            return
        from ..core.optim import decay_groups

        params = model.named_parameters()
        expected = [[n for n, _ in g] for g in decay_groups(params) if g]
        groups = self.state["optimizer"].get("groups", [])
        if [g.get("names") for g in groups] != expected:
            raise CheckpointError(
                f"Nhóm tham số của optimizer khác checkpoint / optimizer parameter groups differ in {self.path}"
            )
        for i, names in enumerate(expected):
            size = sum(int(params[n].size) for n in names)
            for key in ("m", "v"):
                arr = self.optimizer_arrays[f"group{i}.{key}"]
                if tuple(arr.shape) != (size,):
                    raise CheckpointError(
                        f"Tệp checkpoint bị hỏng / corrupted checkpoint file {os.path.join(self.path, OPTIMIZER_NAME)}: "
                        f"group{i}.{key} has shape {tuple(arr.shape)}, expected {(size,)}"
                    )

    def check_examples(self, examples) -> None:
        """Only the data part of the identity (DPO uses it before restoring its reference log-probs)."""
        n, sha = len(examples), data_fingerprint(examples)
        if self.identity.get("n_examples") != n or self.identity.get("data_sha256") != sha:
            raise CheckpointError(
                f"Dữ liệu huấn luyện khác checkpoint {self.path}: checkpoint có {self.identity.get('n_examples')} "
                f"bản ghi, lần này {n} / the training data differs from the checkpoint "
                f"({self.identity.get('n_examples')} vs {n} records, or different content)"
            )

    def loop_state(self) -> dict:
        return copy.deepcopy(self.state["loop"])

    def restore_model(self, model) -> None:
        """Weights (in place: the Parameter objects stay) and the dropout RNG state."""
        model.load_state_dict(self.model_state)
        rng_state = self.state.get("dropout_rng")
        if rng_state is None or rng_state.get("state") is None:
            model._dropout_rng = None
        else:
            be = get_backend()
            rng = be.rng(model.config.seed)
            be.set_rng_state(rng, rng_state["state"])  # False on CuPy (state lives on the device): the stream restarts
            model._dropout_rng = rng

    def restore_optimizer(self, opt) -> None:
        be = get_backend()
        meta = self.state["optimizer"]
        groups = meta["groups"]
        if [g["names"] for g in groups] != [g.names for g in opt.groups]:
            raise CheckpointError(
                f"Nhóm tham số của optimizer khác checkpoint {self.path} / optimizer parameter groups differ"
            )
        for i, g in enumerate(opt.groups):
            for key in ("m", "v"):
                arr = self.optimizer_arrays[f"group{i}.{key}"]
                target = getattr(g, key)
                if tuple(arr.shape) != tuple(target.shape):
                    raise CheckpointError(
                        f"Sai kích thước / wrong shape for optimizer tensor group{i}.{key} in {self.path}: "
                        f"{tuple(arr.shape)} vs {tuple(target.shape)}"
                    )
                target[...] = be.asarray(arr)
        opt.step_count = int(meta["step_count"])


_REQUIRED = ("format_version", "kind", "identity", "run_id", "loop", "optimizer")
_LOOP_KEYS = ("global_step", "epoch", "next_window", "epochs_done", "history", "window_losses", "window_stats",
              "last", "stopped", "finished", "skipped", "time")


def read_state(path) -> dict:
    """trainer_state.json of the checkpoint directory `path`, with its format version checked."""
    fname = os.path.join(path, STATE_NAME)
    if not os.path.isfile(fname):
        raise CheckpointError(f"Thiếu tệp / missing file: {fname}")
    try:
        with open(fname, encoding="utf-8") as f:
            state = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"Tệp checkpoint bị hỏng / corrupted checkpoint file {fname}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Tệp checkpoint bị hỏng / corrupted checkpoint file {fname}: not a JSON object")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"Phiên bản định dạng checkpoint không hỗ trợ / unsupported checkpoint format_version in {fname}: "
            f"found {version!r}, expected {FORMAT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in state]
    missing += [f"loop.{k}" for k in _LOOP_KEYS if k not in (state.get("loop") or {})]
    if missing:
        raise CheckpointError(f"Tệp checkpoint bị hỏng / corrupted checkpoint file {fname}: missing {missing}")
    return state


def load_checkpoint(path) -> TrainingCheckpoint:
    """Read a checkpoint directory — or, given a `thu_muc_checkpoint` root, its newest checkpoint — fully
    into memory. Every problem (missing, corrupt, wrong version) raises CheckpointError naming it."""
    from safetensors.numpy import load_file

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"Không tìm thấy checkpoint / checkpoint not found: {path}")
    if not os.path.isfile(os.path.join(path, STATE_NAME)):
        newest = tim_checkpoint(path)
        if newest is None:
            raise CheckpointError(
                f"Thư mục không chứa checkpoint hoàn chỉnh nào / no complete checkpoint in: {path} "
                f"(expected {STATE_NAME} or {PREFIX}<step>/ subdirectories)"
            )
        path = newest
    state = read_state(path)
    model = from_pretrained(os.path.join(path, MODEL_DIR))
    if os.path.isdir(os.path.join(path, ADAPTER_DIR)):
        tai_adapter(model, os.path.join(path, ADAPTER_DIR))
    oname = os.path.join(path, OPTIMIZER_NAME)
    if not os.path.isfile(oname):
        raise CheckpointError(f"Thiếu tệp / missing file: {oname}")
    try:
        arrays = load_file(oname)
    except Exception as e:  # safetensors raises its own error types on a corrupt file
        raise CheckpointError(f"Tệp checkpoint bị hỏng / corrupted checkpoint file {oname}: {e}") from None
    n_groups = len(state["optimizer"].get("groups", []))
    want = {f"group{i}.{k}" for i in range(n_groups) for k in ("m", "v")}
    if set(arrays) != want:
        raise CheckpointError(
            f"Tệp checkpoint bị hỏng / corrupted checkpoint file {oname}: tensors {sorted(arrays)}, "
            f"expected {sorted(want)}"
        )
    return TrainingCheckpoint(path, state, model.state_dict(), arrays)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def _fsync_tree(root: str) -> None:
    for d, _dirs, files in os.walk(root):
        for f in files:
            _fsync_dir(os.path.join(d, f))  # opens read-only and fsyncs: files and folders alike
        _fsync_dir(d)


def _remove_dir(path: str) -> None:
    """Rename to a hidden name first (so no half-deleted checkpoint is ever visible), then delete."""
    parent, name = os.path.split(path)
    doomed = os.path.join(parent, f".deleting-{name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _clean_stale(directory: str) -> None:
    """Leftovers of writes or deletions that were killed midway."""
    for name in os.listdir(directory):
        if name.startswith(f".{PREFIX}") and ".tmp-" in name or name.startswith(".deleting-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def dropout_rng_state(model):
    """JSON-able state of the model's dropout generator (None: not created yet; {"state": None}: a
    backend whose generator state cannot be read, CuPy)."""
    rng = getattr(model, "_dropout_rng", None)
    if rng is None:
        return None
    return {"state": get_backend().rng_state(rng)}


def write_checkpoint(directory, *, identity, loop_state, model, opt, rng_state=None, extra=None,
                     keep=DEFAULT_KEEP, exclusive=False) -> str:
    """Write the checkpoint of `loop_state["global_step"]` into `directory` atomically; prune to the
    newest `keep` (with `exclusive`, remove every other checkpoint). Returns its path."""
    from safetensors.numpy import save_file

    from .._version import __version__

    be = get_backend()
    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"Đường dẫn checkpoint không phải thư mục / not a directory: {directory}")
    os.makedirs(directory, exist_ok=True)
    _clean_stale(directory)
    step = int(loop_state["global_step"])
    name = f"{PREFIX}{step:08d}"
    final = os.path.join(directory, name)
    state = {
        "format_version": FORMAT_VERSION,
        "kind": identity["kind"],
        "run_id": run_id(identity),
        "identity": identity,
        "loop": loop_state,
        "optimizer": {
            "step_count": opt.step_count,
            "betas": list(opt.betas),
            "eps": opt.eps,
            "groups": [{"names": list(g.names), "weight_decay": g.weight_decay, "size": int(g.m.size)}
                       for g in opt.groups],
        },
        "dropout_rng": rng_state,
        "extra": extra or {},
        "library_version": __version__,
        "saved_at": time.time(),
    }
    text = json.dumps(state, ensure_ascii=False)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=directory)
    try:
        save_pretrained(model.base_model(), os.path.join(tmp, MODEL_DIR))
        if getattr(model, "has_adapters", False):
            luu_adapter(model, os.path.join(tmp, ADAPTER_DIR))
        _hook("model", step)
        arrays = {k: host_np.ascontiguousarray(be.to_numpy(v)) for k, v in opt.state_arrays().items()}
        save_file(arrays, os.path.join(tmp, OPTIMIZER_NAME), metadata={"format": "vietnamese_ai_ref-adamw"})
        _hook("optimizer", step)
        with open(os.path.join(tmp, STATE_NAME), "w", encoding="utf-8") as f:
            f.write(text)
        _hook("state", step)
        apply_umask(tmp)
        _fsync_tree(tmp)
        if os.path.lexists(final):  # a checkpoint of the same step (a resumed run, or the final save)
            _remove_dir(final)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _hook("renamed", step)
    others = [p for _, p in list_checkpoints(directory) if p != final]
    doomed = others if exclusive else others[: max(0, len(others) - (keep - 1))]
    for p in doomed:
        _remove_dir(p)
    _hook("pruned", step)
    return final


# ---------------------------------------------------------------------------------------------
# the options a trainer hands to the loop
# ---------------------------------------------------------------------------------------------

class CheckpointOptions:
    """Validated checkpoint options of one huan_luyen call (built by TrainerBase._checkpoint_options)."""

    def __init__(self, *, kind, trainer_config, directory=None, every=None, keep=DEFAULT_KEEP, resume=None):
        self.kind = kind
        self.trainer_config = dict(trainer_config)
        self.directory = os.path.abspath(os.fspath(directory)) if directory is not None else None
        self.every = every if every is not None else (DEFAULT_SAVE_EVERY if self.directory else None)
        self.keep = keep
        self.resume = resume

    def check_directory(self, identity) -> None:
        """A directory may only hold checkpoints of this very run (same identity), and only when resuming."""
        if self.directory is None:
            return
        found = list_checkpoints(self.directory)
        if not found:
            return
        if self.resume is None:
            raise CheckpointError(
                f"Thư mục checkpoint đã có checkpoint của một lần chạy khác: {self.directory}; hãy truyền "
                f"tiep_tuc_tu để chạy tiếp hoặc dùng thư mục trống / the checkpoint directory already holds "
                f"checkpoints ({os.path.basename(found[-1][1])}); pass tiep_tuc_tu to resume or use an empty directory"
            )
        mine = run_id(identity)
        for _, p in found:
            try:
                other = read_state(p).get("run_id")
            except CheckpointError:
                continue
            if other != mine:
                raise CheckpointError(
                    f"Thư mục checkpoint {self.directory} chứa checkpoint của một lần chạy khác ({os.path.basename(p)}) "
                    f"/ the checkpoint directory holds a checkpoint of a different run: {p}"
                )
