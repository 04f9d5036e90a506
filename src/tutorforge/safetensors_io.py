"""Read and write safetensors files tensor by tensor, with positioned reads and no mmap.

    refs = tensor_refs(Path("merged"))            # every tensor's name, dtype, shape and byte range
    weight = read_tensor(refs[0])                   # one tensor in private memory of its own
    writer = ShardWriter(path, [(name, "BF16", (576, 576))]); writer.write(name, tensor); writer.close()

Pure I/O, after the safetensors format spec (an 8-byte little-endian header size, a JSON header of
name -> dtype, shape, data_offsets, then the data): merge and export stream through it so that only
one tensor is in RAM at a time, and the page cache is never counted against them.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from tutorforge.errors import UserError

DTYPES = {  # safetensors dtype name -> torch dtype (safetensors format spec)
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header (name -> dtype, shape, data_offsets) and where the data starts."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    return header, 8 + size


def tensor_refs(model_dir: Path) -> list[TensorRef]:
    """Every tensor of a checkpoint directory (single file or sharded with an index), in file order."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no .safetensors files; merge needs the base model in safetensors "
                        "format (convert .bin checkpoints with transformers' save_pretrained)")
    refs = []
    for path in files:
        header, data = read_header(path)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            refs.append(TensorRef(name, path, info["dtype"], tuple(info["shape"]), data + start, data + end))
    return refs


def pread_into(ref: TensorRef, view: memoryview, offset: int = 0) -> None:
    """`ref`'s bytes from `offset` on into `view` (len(view) of them) with positioned reads: no mmap,
    no file offset."""
    fd = os.open(ref.file, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], ref.start + offset + done)
            if n == 0:
                raise UserError(f"{ref.file}: truncated while reading {ref.name}")
            done += n
    finally:
        os.close(fd)


def read_tensor(ref: TensorRef) -> torch.Tensor:
    """One tensor, read with a positioned read into private memory of its own (no mmap)."""
    buf = bytearray(ref.end - ref.start)
    pread_into(ref, memoryview(buf))
    if not buf:
        return torch.empty(ref.shape, dtype=DTYPES[ref.dtype])
    return torch.frombuffer(buf, dtype=DTYPES[ref.dtype]).reshape(ref.shape)


class ShardWriter:
    """A safetensors file written tensor by tensor: the header (known in advance from shapes and
    dtypes) first, then each tensor's bytes as it is produced."""

    def __init__(self, path: Path, layout: list[tuple[str, str, tuple[int, ...]]]):
        header, offset = {}, 0
        for name, dtype, shape in layout:
            size = math.prod(shape) * DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data section
        self.expected = [(name, header[name]["data_offsets"][1] - header[name]["data_offsets"][0])
                         for name, _, _ in layout]
        self.fh = path.open("wb")
        self.fh.write(len(raw).to_bytes(8, "little") + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_blocks(name, [tensor])

    def write_blocks(self, name: str, blocks: Iterable[torch.Tensor]) -> None:
        """Tensor `name` from its consecutive row blocks, each written as it comes."""
        expected, size = self.expected.pop(0)
        if name != expected:
            raise RuntimeError(f"shard written out of order at {name}")
        written = 0
        for block in blocks:
            if block.numel():  # the block's own bytes, not a copy of them
                written += self.fh.write(block.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        if written != size:
            raise RuntimeError(f"{name}: {written} bytes written of {size}")

    def close(self) -> None:
        if self.expected:
            raise RuntimeError(f"shard closed before {self.expected[0][0]}")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
