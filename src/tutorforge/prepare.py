"""Prepare a config's datasets for training: tokenise, filter, split off the held-out rows, pack.

    prepared = prepare(cfg, tokenizer, skip_bad_rows=False)    # DataError lists unusable rows
    print(prepared.summary())                                  # rows, split, packing efficiency
    write_rows(prepared.val_rows, run_dir / "heldout.jsonl")

The rows come from data.load_datasets. A row longer than sequence_len once tokenised is rejected
like any other unusable row, never truncated. `accept` decides what the rejects mean: by default
any reject stops with DataError (the first 20 and the counts per kind); with skip_bad_rows they go,
verbatim and with their reason, to rejected.jsonl and training goes on without them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.data import KINDS, LoadReport, Reject, Row, load_datasets
from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger(__name__)


class DataError(UserError):
    """Unusable rows and no permission to skip them: lists the first 20, with counts per kind."""

    def __init__(self, report: LoadReport, limit: int = 20):
        self.report = report
        lines = [r.render() for r in report.rejects[:limit]]
        if len(report.rejects) > limit:
            lines.append(f"... and {len(report.rejects) - limit} more")
        rows, files = report.row_rejects, report.file_rejects
        counts = ", ".join(f"{kind}: {n}" for kind, n in report.counts().most_common())
        found = [f"{len(rows)} unusable of {report.rows_read} rows read ({counts})"] if rows else []
        found += [f"{len(files)} file(s) rejected whole"] if files else []
        super().__init__("\n".join(lines) + f"\n{' and '.join(found)}. Fix them, or set `skip_bad_rows: "
                         "true` under tutorforge: (or pass --skip-bad-rows) to train without them; they "
                         "are then written to rejected.jsonl with their reasons.")


def write_rejects(rejects: list[Reject], path: Path) -> None:
    """Write rejected rows, verbatim with their reasons, atomically to `path` (JSON lines)."""
    with atomic_write(path) as fh:
        for r in rejects:
            fh.write(json.dumps({"source": r.source, "kind": r.kind, "reason": r.reason,
                                 "raw": r.raw}) + "\n")


def accept(report: LoadReport, *, skip_bad_rows: bool, rejects_path: Path | None) -> list[Row]:
    """The usable rows: DataError if any row is unusable and skipping is off; else write rejects."""
    if report.rejects and not skip_bad_rows:
        raise DataError(report)
    if rejects_path is not None:
        write_rejects(report.rejects, rejects_path)
    if report.rejects:
        files = f", {len(report.file_rejects)} file(s) rejected whole" if report.file_rejects else ""
        log.warning("%d of %d rows rejected (%s)%s; see %s", len(report.row_rejects), report.rows_read,
                    ", ".join(f"{k} {n}" for k, n in report.counts().most_common()), files, rejects_path)
    if not report.rows:
        raise UserError(f"no usable rows in {', '.join(report.files) or 'the datasets'}")
    assert len(report.rows) + len(report.row_rejects) == report.rows_read
    return report.rows


@dataclass
class Prepared:
    """A config's data, ready to train: examples (and packs), the held-out split, the report."""

    train: list  # formatting.Example
    val: list  # formatting.Example
    val_rows: list[Row]
    packs: list | None  # packing.Pack when sample_packing
    load: LoadReport
    fmt: object  # formatting.PromptFormat
    efficiency: dict[str, float]

    def summary(self) -> str:
        eff = ", ".join(f"{k} {v:.1%}" for k, v in self.efficiency.items())
        packs = f", {len(self.packs)} packs" if self.packs is not None else ""
        return (f"{self.load.summary()}\nsplit: {len(self.train)} train, {len(self.val)} held out"
                f"{packs}\npacking efficiency (real tokens / token slots): {eff}")


def prepare(cfg: Config, tokenizer, *, skip_bad_rows: bool, config_dir: Path | None = None) -> Prepared:
    """Load, check, format, tokenize, split and (when sample_packing) pack a config's datasets.
    Rows over sequence_len are rejected like any other unusable row, never truncated."""
    from tutorforge.formatting import encode_row, prompt_format, split_rows
    from tutorforge.packing import pack, packed_efficiency, padded_efficiency

    report = load_datasets(cfg.datasets, config_dir)
    fmt = prompt_format(tokenizer, cfg.chat_template, cfg.default_system_message)
    encoded = {}
    for row in report.rows:
        example = encode_row(tokenizer, fmt, row, train_on_inputs=cfg.train_on_inputs)
        if len(example.input_ids) > cfg.sequence_len:
            report.rejects.append(Reject(row.source, "too_long", f"{len(example.input_ids)} tokens > "
                                         f"sequence_len {cfg.sequence_len}; {KINDS['too_long']}", row.raw))
        else:
            encoded[row.source] = example
    report.rows = [r for r in report.rows if r.source in encoded]
    rows = accept(report, skip_bad_rows=skip_bad_rows or cfg.tutorforge.skip_bad_rows,
                  rejects_path=Path(cfg.output_dir) / "rejected.jsonl")
    train_rows, val_rows = split_rows(rows, cfg.val_set_size, cfg.seed)
    train = [encoded[r.source] for r in train_rows]
    lengths = [len(e.input_ids) for e in train]
    pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None  # what training's batches are padded to
    efficiency = {"padded": padded_efficiency(lengths, cfg.micro_batch_size, sequence_len=pad_to).ratio}
    packs = None
    if cfg.sample_packing:
        packs = pack(train, cfg.sequence_len)
        efficiency["packed"] = packed_efficiency(packs, cfg.micro_batch_size, sequence_len=pad_to).ratio
    return Prepared(train, [encoded[r.source] for r in val_rows], val_rows, packs, report, fmt, efficiency)


def write_rows(rows: list[Row], path: Path) -> None:
    """Write rows as Alpaca JSONL, atomically."""
    with atomic_write(path) as fh:
        for r in rows:
            fh.write(json.dumps({"instruction": r.instruction, "input": r.input, "output": r.output,
                                 "source": r.source}, ensure_ascii=False) + "\n")
