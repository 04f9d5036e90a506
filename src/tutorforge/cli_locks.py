"""The locks a command holds while it writes: its training output_dir and an --out of its own.

    from tutorforge.cli_locks import writing

    with writing(run_dir, out):
        ...  # a second tutorforge command on the same run_dir or out waits for none: it fails at once

Commands lock here, at the edge; the stages below them (train, merge, export, report) only write.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def writing(run_dir: Path | None, out: Path | None = None) -> Iterator[None]:
    """Hold the locks of what a command writes: the training output_dir it works in, and an --out
    directory of its own (locked in tutorforge's cache, see outputs.lock_file: the command itself
    decides whether that directory is its to write before it puts anything there)."""
    from tutorforge.fsutil import exclusive
    from tutorforge.outputs import lock_file

    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            stack.enter_context(exclusive(run_dir))
        if out is not None and (run_dir is None or not Path(out).resolve().is_relative_to(Path(run_dir).resolve())):
            stack.enter_context(exclusive(Path(out), str(out), lock=lock_file(out)))
        yield
