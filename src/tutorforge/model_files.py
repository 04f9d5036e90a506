"""Check model files for damage before anything loads them: the file and what is wrong with it.

    check_model_files(Path("models/llama"), require_weights=True)   # raises DamagedModel, or None
    check_model_files(Path("base.gguf"))

Headers only, milliseconds for a 16 GB model: a config.json that is not JSON, a .safetensors or
.gguf file cut short by an interrupted download or copy, a shard a sharded index names that is
missing, a file that is not what its name says. The error names the file and what is wrong with
it, where from_pretrained() would fail deep inside with neither.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from tutorforge.errors import UserError

AGAIN = "copy or download it again (an interrupted download or copy leaves a file like this)"
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit on its JSON header
GGUF_VERSIONS = (2, 3)  # what gguf-py and llama.cpp read
GGUF_ALIGNMENT = 32  # tensor data alignment when general.alignment is absent (the GGUF spec)


class DamagedModel(UserError):
    """A model file that can never load: cut short, or not the format its name says."""

    def __init__(self, file: Path, what: str, name: str | None = None):
        self.file, self.what = file, what
        same = name is not None and Path(name).expanduser().resolve() == file.resolve()
        super().__init__((f"base_model: {name}: " if name else "") + ("" if same else f"{file}: ") + what)

    def named(self, name: str) -> DamagedModel:
        return DamagedModel(self.file, self.what, name)


def check_model_files(path: Path, *, require_weights: bool = False) -> None:
    """Raise DamagedModel when a model cannot load: `path` is a .gguf file, or a directory that
    from_pretrained() reads (its *.json files must be JSON, config.json an object, every
    .safetensors file complete, every shard a sharded index names present). Headers only."""
    path = Path(path)
    signature = _files_signature(path, require_weights)
    if signature in _checked:  # every stage resolves the base model: its files are read once
        return
    if path.is_file():
        if problem := _gguf_problem(path):
            raise DamagedModel(path, problem)
        _checked.add(signature)
        return
    for file in sorted(path.glob("*.json")):
        try:
            value = json.loads(file.read_bytes())
        except json.JSONDecodeError as exc:
            raise DamagedModel(file, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                               f"{AGAIN}") from None
        except ValueError:  # not UTF-8
            raise DamagedModel(file, f"not valid JSON (not UTF-8 text); {AGAIN}") from None
        if file.name == "config.json" and not isinstance(value, dict):
            raise DamagedModel(file, "not a JSON object (a model's config.json is one: {...}); " + AGAIN)
        if file.name.endswith(".safetensors.index.json"):
            shards = sorted(set((value.get("weight_map") or {}).values())) if isinstance(value, dict) else []
            if missing := [s for s in shards if not (path / s).is_file()]:
                raise DamagedModel(file, f"names {missing[0]}, which is missing ({len(missing)} of "
                                   f"{len(shards)} shards missing); copy or download the model again")
    weights = sorted(path.glob("*.safetensors"))
    if require_weights and not weights and not any(path.glob("*.bin")):
        raise DamagedModel(path, "no weights (*.safetensors or pytorch_model*.bin); copy the model's "
                           "weight files into it, or point base_model at the complete model")
    for file in weights:
        if problem := _safetensors_problem(file):
            raise DamagedModel(file, problem)
    _checked.add(signature)


_checked: set[tuple] = set()  # check_model_files' passes, by the files' names, sizes and times


def _files_signature(path: Path, require_weights: bool) -> tuple:
    """What a check's result depends on: the path, and the name, size and modification time of
    the file (or of every file in the directory)."""
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
    return (os.path.realpath(path), require_weights,
            tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a .safetensors file, from its header: 8 bytes of header length, the JSON
    header, then the tensors' bytes, which must end exactly where the file ends. (The safetensors
    library refuses such a file too, but says neither how long it is nor how long it should be.)"""
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"truncated: {size:,} bytes, not even the 8-byte header length; {AGAIN}"
        n = int.from_bytes(head, "little")
        if n > SAFETENSORS_MAX_HEADER:
            return f"not a safetensors file (its first 8 bytes say a header of {n:,} bytes); {AGAIN}"
        if 8 + n > size:
            return f"truncated: its header says {n:,} bytes of metadata, the file has {size:,} in all; {AGAIN}"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        return f"not a safetensors file (its header is not a JSON object); {AGAIN}"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return f"not a safetensors file (tensor {name!r} has no valid data_offsets); {AGAIN}"
        end = max(end, offsets[1])
    need = 8 + n + end
    if need > size:
        return f"truncated: its tensors need {need:,} bytes, the file has {size:,}; {AGAIN}"
    if need < size:
        return f"damaged: {size - need:,} bytes longer than its tensors need ({need:,}); {AGAIN}"
    return None


class _Short(Exception):
    """The file ends inside the GGUF header or metadata."""


def _gguf_problem(file: Path) -> str | None:
    """What is wrong with a .gguf file: its magic, version, metadata, and whether the tensor data
    its tensor table describes fits in the file."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        magic = fh.read(4)
        if not magic:
            return f"empty (0 bytes); {AGAIN}"
        if magic != b"GGUF":
            return f"not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); {AGAIN}"
        try:
            n_tensors, end = _gguf_tensor_end(fh, size)
        except _Short:
            return f"truncated: the file ends (at byte {size:,}) inside its metadata; {AGAIN}"
        except ValueError as exc:
            return str(exc)
    if end > size:
        return f"truncated: its {n_tensors} tensors end at byte {end:,}, the file has {size:,}; {AGAIN}"
    return None


def _gguf_tensor_end(fh, size: int) -> tuple[int, int]:
    """(tensors, the byte where their data ends), walking the header and tensor table as the GGUF
    spec lays them out. Hand-written because gguf-py's GGUFReader maps every tensor and, on a file
    cut short, fails with a numpy reshape error that names no sizes; it also takes seconds on a
    large vocabulary, where this walk seeks past it. Sizes of values and types are gguf-py's."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    scalars: dict[int, int] = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
                               GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4,
                               GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.UINT64: 8,
                               GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}

    def read(n: int) -> bytes:
        data = fh.read(n) if n <= size else b""
        if len(data) < n:
            raise _Short
        return data

    raw = read(4)
    version = int.from_bytes(raw, "little")
    order = "<" if version in GGUF_VERSIONS else ">"  # a big-endian GGUF writes its version so too
    if version not in GGUF_VERSIONS and int.from_bytes(raw, "big") not in GGUF_VERSIONS:
        raise ValueError(f"GGUF version {version}: tutorforge reads versions 2 and 3 (as llama.cpp); "
                         "convert the model again with a current llama.cpp")

    def number(fmt: str) -> int:
        return struct.unpack(order + fmt, read(struct.calcsize(fmt)))[0]

    def skip(n: int) -> None:
        if n > size or fh.seek(n, 1) > size:
            raise _Short

    def skip_value(vtype: int) -> None:
        if vtype in scalars:
            skip(scalars[vtype])
        elif vtype == GGUFValueType.STRING:
            skip(number("Q"))
        elif vtype == GGUFValueType.ARRAY:
            item, count = number("I"), number("Q")
            if item in scalars:
                skip(count * scalars[item])
            else:
                for _ in range(min(count, size)):  # a count past the file's end runs out of bytes first
                    skip_value(item)
        else:
            raise ValueError(f"damaged: a metadata value of unknown type {vtype} at byte {fh.tell():,}; "
                             + AGAIN)

    n_tensors, n_kv = number("Q"), number("Q")
    alignment = GGUF_ALIGNMENT
    for _ in range(min(n_kv, size)):
        key, vtype = read(number("Q")), number("I")
        if key == b"general.alignment" and vtype == GGUFValueType.UINT32:
            alignment = number("I") or GGUF_ALIGNMENT
        else:
            skip_value(vtype)
    ends = []
    for _ in range(min(n_tensors, size)):
        skip(number("Q"))  # the tensor's name
        n_dims = number("I")
        if n_dims > 8:
            raise ValueError(f"damaged: a tensor with {n_dims} dimensions at byte {fh.tell():,}; {AGAIN}")
        dims = [number("Q") for _ in range(n_dims)]
        kind, offset = number("I"), number("Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise ValueError(f"damaged: a tensor of unknown type {kind}; {AGAIN}") from None
        ends.append(offset + math.prod(dims) // block * type_size)
    start = fh.tell() + -fh.tell() % alignment
    return n_tensors, start + max(ends, default=0)
