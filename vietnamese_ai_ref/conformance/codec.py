"""The golden-vector codec and the adapter protocol of spec/vectors/README.md.

What it is for: the JSON encoding of arrays and non-finite floats in vector files (`encode_array`,
`encode_value`, `decode`), the manifest reader and the integrity check of a vector folder
(`load_vectors`: every file the manifest lists present, its sha256, spec version, format, function and
case counts as the manifest records them, its cases well formed; `VectorError` otherwise), and the
table of protocol functions (`PROTOCOL`: each function's positional arguments, outputs and optional
gradient) that the runner and the reference adapter share; scripts/make_vectors.py writes vectors
with it.
What it is not: the runner (runner.py, checks.py) or an implementation (reference.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..backends import host_np

__all__ = ["FORMAT", "TRAINER_FORMAT", "PROTOCOL", "Fn", "encode_array", "encode_value", "decode",
           "load_manifest", "default_vectors_dir", "VectorError", "VectorFile", "load_vectors", "sha256_hex"]

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
    since: str = "1.0"  # the spec version that added it; functions added after 1.0 are optional (SKIP)

    @property
    def grad_name(self) -> str | None:
        return f"{self.name}_grad" if self.wrt else None


_GRPO_ARGS = ("logps", "old_logps", "advantages", "mask", "ref_logps", "beta", "epsilon_low", "epsilon_high",
              "loss_type", "importance_sampling_level", "delta", "num_items_in_batch", "max_completion_length",
              "num_accumulation_steps")
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
        # spec 1.1 (spec/rl.md): optional, so an adapter written for 1.0 still conforms
        Fn("grpo_advantages", ("rewards", "num_generations", "scale_rewards"), ("advantages",), since="1.1"),
        Fn("grpo_loss", _GRPO_ARGS, ("loss",), ("logps",), "loss", since="1.1"),
        Fn("rloo_advantages", ("rewards", "num_generations", "old_logps", "ref_logps", "mask", "beta",
                               "normalize_advantages", "reward_clip_range"), ("advantages",), since="1.1"),
        Fn("rloo_loss", ("logps", "old_logps", "advantages", "mask", "epsilon_low", "epsilon_high",
                         "num_accumulation_steps"), ("loss",), ("logps",), "loss", since="1.1"),
        Fn("online_dpo_pairs", ("rewards", "has_eos", "missing_eos_penalty"), ("chosen_index", "rejected_index"),
           since="1.1"),
    )
}


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


# ============================ integrity of a vector folder ====================================

class VectorError(ValueError):
    """A vector folder that cannot be trusted (missing, changed or malformed file): one line naming the
    file and what is wrong. The runner prints it and exits 2 before calling any adapter."""


@dataclass(frozen=True)
class VectorFile:
    """One verified vector file: its manifest entry, its parsed JSON, and whether it holds trainer vectors."""

    name: str
    entry: dict
    obj: dict
    trainer: bool

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def function(self) -> str:
        """The protocol function (loss files) or the trainer ("sft", "dpo", "reward")."""
        return self.obj["trainer"] if self.trainer else self.obj["function"]

    @property
    def section(self) -> str:
        return str(self.obj.get("section") or self.entry.get("section") or "")

    @property
    def cases(self) -> list:
        return self.obj["cases"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bad(name: str, what: str) -> VectorError:
    return VectorError(f"vector không tin được / untrusted vectors: {name}: {what}")


def _version(v, name: str) -> tuple:
    parts = str(v).split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise _bad(name, f"spec_version must look like '1.0', got {v!r}")
    return int(parts[0]), int(parts[1])


def load_vectors(vectors_dir, spec_version: str) -> tuple:
    """(manifest, [VectorFile, ...] in manifest order) after checking everything the manifest records.

    Raises VectorError (one line) when manifest.json is missing or unreadable, its spec version is not
    one this runner implements (same major, minor not newer than `spec_version`), or any listed file is
    missing, differs from its recorded sha256, is not JSON, carries another spec version, format,
    function/trainer or case count than its entry, or holds a malformed case. A vector file carries the
    spec version that introduced it: equal to its entry's, same major as the manifest, not newer."""
    root = Path(vectors_dir)
    if not (root / "manifest.json").is_file():
        raise VectorError(f"không thấy manifest / no manifest.json in {root} (use --vectors DIR)")
    try:
        manifest = load_manifest(root)
    except (OSError, ValueError) as e:
        raise _bad("manifest.json", f"cannot be read as JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad("manifest.json", f"format must be {FORMAT!r}")
    mver, rver = _version(manifest.get("spec_version"), "manifest.json"), _version(spec_version, "runner")
    if mver[0] != rver[0] or mver[1] > rver[1]:
        raise VectorError(f"phiên bản spec không khớp / spec version mismatch: vectors are "
                          f"{manifest.get('spec_version')!r}, this runner implements {spec_version!r}")
    slot = manifest.get("trainer_vectors") or {}
    entries = [(e, False) for e in manifest.get("files", [])] + [(e, True) for e in slot.get("files", [])]
    if not entries:
        raise _bad("manifest.json", "lists no vector file")
    names = [e.get("file") if isinstance(e, dict) else None for e, _ in entries]
    if len(set(names)) != len(names):
        raise _bad("manifest.json", "lists a file twice")
    return manifest, [_load_file(root, e, trainer, mver) for e, trainer in entries]


_ENTRY_KEYS = ("file", "cases", "spec_version", "sha256")


def _load_file(root: Path, entry, trainer: bool, mver: tuple) -> VectorFile:
    kind_key = "trainer" if trainer else "function"
    if not isinstance(entry, dict) or any(k not in entry for k in _ENTRY_KEYS + (kind_key,)):
        raise _bad("manifest.json", f"entry {entry!r:.80} lacks one of {list(_ENTRY_KEYS + (kind_key,))} "
                                    "(regenerate it with scripts/make_vectors.py)")
    name = str(entry["file"])
    if Path(name).name != name or not name.endswith(".json"):
        raise _bad("manifest.json", f"file name {name!r} must be a plain *.json name in the vector folder")
    path = root / name
    if not path.is_file():
        raise _bad(name, "listed in manifest.json but missing")
    data = path.read_bytes()
    if sha256_hex(data) != entry["sha256"]:
        raise _bad(name, f"sha256 {sha256_hex(data)[:16]}… differs from the manifest's {str(entry['sha256'])[:16]}… "
                         "(changed or corrupt; regenerate with scripts/make_vectors.py)")
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError as e:
        raise _bad(name, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(name, "not a JSON object")
    fmt = TRAINER_FORMAT if trainer else FORMAT
    if obj.get("format") != fmt:
        raise _bad(name, f"format {obj.get('format')!r}, expected {fmt!r}")
    fver = _version(obj.get("spec_version"), name)
    if str(obj.get("spec_version")) != str(entry["spec_version"]) or fver[0] != mver[0] or fver[1] > mver[1]:
        raise _bad(name, f"spec_version {obj.get('spec_version')!r}, the manifest records {entry['spec_version']!r} "
                         f"(of spec {mver[0]}.{mver[1]})")
    if obj.get(kind_key) != entry[kind_key]:
        raise _bad(name, f"{kind_key} {obj.get(kind_key)!r}, the manifest records {entry[kind_key]!r}")
    if not trainer and obj["function"] not in PROTOCOL:
        raise _bad(name, f"names unknown function {obj['function']!r}")
    cases = obj.get("cases")
    if not isinstance(cases, list) or len(cases) != entry["cases"]:
        got = len(cases) if isinstance(cases, list) else type(cases).__name__
        raise _bad(name, f"holds {got} cases, the manifest records {entry['cases']}")
    vf = VectorFile(name, entry, obj, trainer)
    _check_cases(vf)
    return vf


def _check_cases(vf: VectorFile) -> None:
    """Every case well formed, names unique, and the manifest's value/grad/error counts right."""
    seen, counts = set(), {"value_checks": 0, "grad_checks": 0, "error_checks": 0}
    fn = None if vf.trainer else PROTOCOL[vf.function]
    for i, c in enumerate(vf.cases):
        cname = c.get("name") if isinstance(c, dict) else None
        if not isinstance(cname, str) or not cname or cname in seen:
            raise _bad(vf.name, f"case {i} has a missing or repeated name {cname!r}")
        seen.add(cname)
        if vf.trainer:
            if not (isinstance(c.get("inputs"), dict) and isinstance(c.get("expected"), dict)):
                raise _bad(vf.name, f"case {cname!r} needs 'inputs' and 'expected' objects")
            continue
        if not isinstance(c.get("args"), dict) or any(a not in c["args"] for a in fn.args):
            raise _bad(vf.name, f"case {cname!r} lacks some of the arguments {list(fn.args)}")
        if ("expected" in c) == ("expect_error" in c):
            raise _bad(vf.name, f"case {cname!r} needs exactly one of 'expected' and 'expect_error'")
        if "grad" in c and not (isinstance(c["grad"], dict) and {"upstream", "expected"} <= set(c["grad"])):
            raise _bad(vf.name, f"case {cname!r}: 'grad' needs 'upstream' and 'expected'")
        counts["value_checks"] += "expected" in c
        counts["grad_checks"] += "grad" in c
        counts["error_checks"] += "expect_error" in c
    for k, n in counts.items():
        if k in vf.entry and vf.entry[k] != n:
            raise _bad(vf.name, f"{k} is {n}, the manifest records {vf.entry[k]}")
