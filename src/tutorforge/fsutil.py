"""Atomic outputs: write under a temporary name beside the target, rename when complete.

An interrupted stage therefore never leaves a broken file under its final name.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def exclusive(directory: Path, what: str = "this output_dir") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (its .lock file) for the block, or refuse at once when
    another process holds it: two runs writing one output_dir would corrupt each other's outputs.
    The kernel drops the lock when the holder dies, so a killed run never leaves it stuck."""
    import fcntl

    from tutorforge.errors import UserError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise UserError(f"{directory}: {holder} is already working on {what}; wait for it to finish "
                            "(or stop it), or give this run another output_dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"tutorforge (pid {os.getpid()})")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
