"""safetensors files in and out, without torch: single files, sharded folders, bfloat16.

What it is for: `read_safetensors(path)` parses a .safetensors file directly (8-byte header size,
JSON header, raw data; memory-mapped; BF16 widened to float32) so bfloat16 checkpoints load without
torch; `read_weights(folder)` reads model.safetensors or the shards of model.safetensors.index.json;
`write_safetensors(path, tensors)` writes one file with safetensors' NumPy API.
What it is not: a model reader (io/hf.py maps names and shapes) or a pickle loader.
"""

from __future__ import annotations

import json
import os
import struct

from ..backends import host_np
from ..core.errors import CheckpointError
from ..text.jsonl import read_json_object

__all__ = ["read_safetensors", "read_weights", "write_safetensors", "WEIGHTS_NAME", "INDEX_NAME"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype -> host NumPy dtype (BF16 is widened to float32 by bit shifting)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "BOOL": "?"}


def read_safetensors(path) -> dict:
    """Every tensor of one .safetensors file as a host NumPy array (memory-mapped; BF16 -> float32).

    Parsed directly (8-byte little-endian header size, JSON header, raw data), so bfloat16 files load
    without torch. A truncated or malformed file raises CheckpointError naming it.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                raise ValueError(f"header size {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"Không đọc được / cannot read safetensors file {path}: {e}") from e
    base = 8 + n
    raw = host_np.memmap(path, dtype=host_np.uint8, mode="r") if size > base else host_np.zeros(0, host_np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if base + b > size or a > b:
            raise CheckpointError(f"Tệp hỏng / corrupt safetensors file {path}: tensor {name} lies outside the file")
        chunk = raw[base + a: base + b]
        if dtype == "BF16":  # bfloat16 = the high 16 bits of a float32
            arr = (chunk.view("<u2").astype(host_np.uint32) << 16).view(host_np.float32)
        elif dtype in _ST_DTYPES:
            arr = chunk.view(_ST_DTYPES[dtype])
        else:
            raise CheckpointError(
                f"Kiểu dữ liệu không hỗ trợ / unsupported tensor dtype {dtype} for tensor {name} in {path}"
            )
        count = 1
        for s in shape:
            count *= s
        if arr.size != count:
            raise CheckpointError(f"Tệp hỏng / corrupt safetensors file {path}: tensor {name} has {arr.size} "
                                  f"values for shape {shape}")
        out[name] = arr.reshape(shape)
    return out


def read_weights(path) -> dict:
    """All tensors of a checkpoint folder: model.safetensors, or the shards listed by the index file."""
    path = os.fspath(path)
    single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, INDEX_NAME)
    if os.path.isfile(single):
        return read_safetensors(single)
    if os.path.isfile(index):
        idx = read_json_object(index, error=CheckpointError)
        wmap = idx.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise CheckpointError(f"{index}: thiếu 'weight_map' / missing or empty 'weight_map'")
        out = {}
        for shard in sorted(set(wmap.values())):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointError(f"Thiếu tệp / missing shard file: {shard_path} (listed in {index})")
            for k, arr in read_safetensors(shard_path).items():
                if wmap.get(k) != shard:
                    raise CheckpointError(
                        f"Tensor {k} trong {shard} không khớp index / tensor {k} found in shard {shard}, "
                        f"but {INDEX_NAME} maps it to {wmap.get(k)!r}"
                    )
                out[k] = arr
        missing = sorted(k for k in wmap if k not in out)
        if missing:
            raise CheckpointError("Thiếu tensor trong các shard / tensors listed in the index but absent: "
                                  + ", ".join(missing))
        return out
    extra = ""
    if any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(path)):
        extra = (" (only safetensors is read: re-save with transformers' "
                 "save_pretrained(path, safe_serialization=True))")
    raise CheckpointError(f"Thiếu tệp / missing file: {single} or {index}{extra}")


def write_safetensors(path, tensors: dict) -> None:
    """Write {name: host array} to `path` (PyTorch-compatible metadata, as transformers writes)."""
    from safetensors.numpy import save_file

    save_file(tensors, os.fspath(path), metadata={"format": "pt"})


