"""What the commands draw on the terminal: progress bars with an ETA, and their result tables.

    from tutorforge.cli_terminal import progress_bar, render_export, render_stages

    with progress_bar("merging", unit="tensors") as progress:  # None when stderr is not a terminal
        merge(..., progress=progress)
    print(render_export(report))           # one line per GGUF file with its verification numbers
    print(render_stages(pipeline.outcomes))  # `tutorforge run`'s stage / time / output / size table

The library only logs (CONVENTIONS.md, "Errors and output"); bars and tables are drawn here.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tutorforge.pipeline import Outcome


@contextlib.contextmanager
def progress_bar(label: str, unit: str = "steps"):
    """A progress callback (step, total, row) drawing a bar with ETA on a terminal; None elsewhere."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=None, info="")

        def update(step: int, total: int, row: dict | None = None) -> None:
            info = f"loss {row['loss']:.3f} | {row['tokens_per_s']:.0f} tok/s" if row and "loss" in row else unit
            bar.update(task, completed=step, total=total, info=info)

        yield update


def render_export(report: dict) -> str:
    """One line per exported file: type, size, path and its verification numbers."""
    lines = []
    for kind, path in report["files"].items():
        v = report.get("verification", {}).get(kind)
        extra = ""
        if v:
            agree = f", top-1 agreement {v['top1_agreement']:.2%}" if v["top1_agreement"] is not None else ""
            extra = (f" | tokenization {v['texts_tokenized'] - v['tokenization_mismatches']}/{v['texts_tokenized']}"
                     f"{agree} over {v['positions']} positions | perplexity {v['perplexity']:.3f}")
        lines.append(f"{kind:>7}  {report['sizes_mib'][kind]:>8.1f} MiB  {path}{extra}")
    return "\n".join(lines)


def render_stages(outcomes: Iterable[Outcome]) -> str:
    """The pipeline's stages as a table: stage, done/skipped, seconds, output path, size (right-aligned)."""
    header = ("stage", "", "time", "output", "size")
    rows = [(o.stage, o.status, f"{o.seconds:.0f} s", str(o.output or ""), _size(o.size)) for o in outcomes]
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(5)]
    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i != 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join(line(r) for r in [header, *rows])


def _size(n: int) -> str:
    """Bytes as KiB, MiB or GiB; empty for 0 (a stage that wrote nothing)."""
    if not n:
        return ""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
