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
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def disk_full(directory: Path, what: str):
    """The UserError for a disk that filled up while `what` was written into `directory`."""
    import shutil

    from tutorforge.errors import UserError

    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free now"
    except OSError:
        free = "free space unknown"
    return UserError(f"{directory}: the disk filled up while writing {what} ({free}); nothing was left under "
                     "its final name. Free some space (or choose an output directory on another disk) and "
                     "run the command again")


@contextmanager
def disk_full_says_so(directory: Path, what: str) -> Iterator[None]:
    """A disk that fills up inside the block becomes disk_full's message (the writers remove their
    partial files: nothing is left under a final name); other errors pass through."""
    import errno

    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise disk_full(directory, what) from None


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


HOLDER = "tutorforge"  # how a lock names its holder; the CLI sets "tutorforge <command>"
_held: dict[str, int] = {}  # lock files this process holds, with how many blocks hold each


@contextmanager
def exclusive(directory: Path, what: str = "this output_dir", *, lock: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (its .lock file, or `lock`) for the block, or refuse at
    once when another process holds it: two commands writing one output_dir would corrupt each
    other's outputs. Re-entrant within a process (a command that runs another holds one lock). The
    kernel drops the lock when the holder dies, so a killed run never leaves it stuck."""
    import fcntl
    import time

    from tutorforge.errors import UserError

    directory = Path(directory)
    lock_path = Path(lock) if lock else directory / ".lock"
    key = os.path.realpath(lock_path)
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise UserError(f"{directory}: {holder} is already working on {what}; wait for it to finish "
                            "(or stop it), or give this command another output directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{HOLDER} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})")
        fh.flush()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            fh.truncate(0)
