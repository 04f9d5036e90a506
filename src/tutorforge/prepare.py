"""Prepare a config's datasets for training: tokenise, split off the held-out rows, fit them to sequence_len, pack.

    prepared = prepare(cfg, tokenizer, skip_bad_rows=False)    # DataError lists unusable rows
    print(prepared.summary())                                  # rows, length rules, split, packing efficiency
    write_rows(prepared.val_rows, run_dir / "heldout.jsonl")

The rows come from data.load_datasets. `accept` decides what unusable rows mean: by default any
stops with DataError (the first 20 and the counts per kind); with skip_bad_rows they go, verbatim
and with their reason, to rejected.jsonl and training goes on without them.

The length rules are Axolotl's, applied to both splits (the held-out rows are drawn first, so which
rows are held out does not depend on sequence_len). A row longer than sequence_len once tokenised as
training sees it (template, prompt, answer, end token) is dropped under excess_length_strategy: drop
(the default), cut to sequence_len tokens with its labels under truncate, or stops preparing with
TooLongError under raise (skip_bad_rows or not: raise is asked for by name). A truncated row with no
answer token left (it would train nothing), and a row of fewer than min_sample_len tokens, are
dropped. Every drop and truncation is counted by split in the summary, every drop is written to
rejected.jsonl with its reason: rows read = used + rejected, always.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.conversations import CONVERSATION_TYPES
from tutorforge.data import FILE_KINDS, KINDS, LoadReport, Reject, Row, load_datasets
from tutorforge.errors import UserError
from tutorforge.formatting import (
    IGNORE,
    NEEDS_TEMPLATE,
    Example,
    PromptFormat,
    encode_row,
    prompt_format,
    split_rows,
    text_chunks,
)
from tutorforge.fsutil import atomic_write

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger(__name__)


class DataError(UserError):
    """Unusable rows and no permission to skip them: lists the first 20, with counts per kind.
    Rows the length rules drop (data.LENGTH_KINDS) are no errors and are not listed."""

    def __init__(self, report: LoadReport, limit: int = 20):
        self.report = report
        errors = report.errors
        lines = [r.render() for r in errors[:limit]]
        if len(errors) > limit:
            lines.append(f"... and {len(errors) - limit} more")
        rows = [r for r in errors if r.kind not in FILE_KINDS]
        files = report.file_rejects
        counts = ", ".join(f"{kind}: {n}" for kind, n in Counter(r.kind for r in rows).most_common())
        found = [f"{len(rows)} unusable of {report.rows_read} rows read ({counts})"] if rows else []
        found += [f"{len(files)} file(s) rejected whole"] if files else []
        super().__init__("\n".join(lines) + f"\n{' and '.join(found)}. Fix them, or set `skip_bad_rows: "
                         "true` under tutorforge: (or pass --skip-bad-rows) to train without them; they "
                         "are then written to rejected.jsonl with their reasons.")


class TooLongError(UserError):
    """Rows over sequence_len under excess_length_strategy: raise: lists the first 20."""

    def __init__(self, rejects: list[Reject], sequence_len: int, limit: int = 20):
        self.rejects = rejects
        lines = [r.render() for r in rejects[:limit]]
        if len(rejects) > limit:
            lines.append(f"... and {len(rejects) - limit} more")
        super().__init__("\n".join(lines) + f"\n{_rows(len(rejects))} longer than sequence_len {sequence_len} "
                         "(excess_length_strategy: raise). Shorten them or raise sequence_len, or set "
                         "excess_length_strategy: drop (they are left out and written to rejected.jsonl) "
                         "or truncate (they are cut to sequence_len tokens).")


def write_rejects(rejects: list[Reject], path: Path) -> None:
    """Write rejected rows, verbatim with their reasons, atomically to `path` (JSON lines)."""
    with atomic_write(path) as fh:
        for r in rejects:
            fh.write(json.dumps({"source": r.source, "kind": r.kind, "reason": r.reason,
                                 "raw": r.raw}) + "\n")


def check(report: LoadReport, *, skip_bad_rows: bool) -> None:
    """DataError if any row is unusable and skipping is off; UserError if no row is left."""
    if report.errors and not skip_bad_rows:
        raise DataError(report)
    if not report.rows:
        raise UserError(f"no usable rows in {', '.join(report.files) or 'the datasets'}")


def record(report: LoadReport, rejects_path: Path | None) -> None:
    """Write every reject (rejects_path: None writes nothing), warn with the counts per kind, and
    check that rows read = accepted + rejected."""
    if rejects_path is not None:
        write_rejects(report.rejects, rejects_path)
    if report.rejects:
        files = f", {len(report.file_rejects)} file(s) rejected whole" if report.file_rejects else ""
        log.warning("%d of %d rows rejected (%s)%s; see %s", len(report.row_rejects), report.rows_read,
                    ", ".join(f"{k} {n}" for k, n in report.counts().most_common()), files, rejects_path)
    assert len(report.rows) + len(report.row_rejects) == report.rows_read


def accept(report: LoadReport, *, skip_bad_rows: bool, rejects_path: Path | None) -> list[Row]:
    """The usable rows: DataError if any row is unusable and skipping is off; else write rejects."""
    check(report, skip_bad_rows=skip_bad_rows)
    record(report, rejects_path)
    return report.rows


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def _by_split(counts: dict[str, int], preposition: str) -> str:
    return ", ".join(f"{n} {preposition} {split}" for split, n in counts.items() if n)


@dataclass
class Lengths:
    """The length rules (Axolotl's excess_length_strategy and min_sample_len) and what they did, by
    split ("train", "held out")."""

    strategy: str  # drop | truncate | raise
    sequence_len: int
    min_sample_len: int
    rejects_path: Path | None = None
    dropped: dict[str, list[Reject]] = field(default_factory=dict)
    truncated: Counter = field(default_factory=Counter)
    chunked: Counter = field(default_factory=Counter)  # split -> completion texts cut into chunks
    chunks: Counter = field(default_factory=Counter)  # split -> the chunks they were cut into
    short_chunks: Counter = field(default_factory=Counter)  # split -> chunks left out under min_sample_len

    @property
    def rejects(self) -> list[Reject]:
        return [r for rejects in self.dropped.values() for r in rejects]

    def fit(self, example: Example, row: Row) -> Example | Reject:
        """The example under the rules: itself, cut to sequence_len (truncate), or why it is dropped."""
        n, limit = len(example.input_ids), self.sequence_len
        if n > limit:
            if self.strategy != "truncate":
                return Reject(row.source, "too_long", f"{n} tokens > sequence_len {limit} "
                              f"(excess_length_strategy: {self.strategy}); {KINDS['too_long']}", row.raw)
            example = Example(example.input_ids[:limit], example.labels[:limit], example.source)
            if all(label == IGNORE for label in example.labels):
                return Reject(row.source, "no_trained_tokens", f"{n} tokens > sequence_len {limit}; cut to "
                              f"{limit} tokens (excess_length_strategy: truncate), no answer token is left: "
                              f"it would train nothing; {KINDS['no_trained_tokens']}", row.raw)
        if len(example.input_ids) < self.min_sample_len:
            return Reject(row.source, "too_short", f"{len(example.input_ids)} tokens < min_sample_len "
                          f"{self.min_sample_len}; {KINDS['too_short']}", row.raw)
        return example

    def cut(self, example: Example, row: Row, split: str) -> list[Example] | Reject:
        """A completion's example under the rules, as Axolotl applies them to completion texts: cut
        into sequence_len chunks (formatting.text_chunks), a chunk shorter than min_sample_len left
        out (the end of a long text; counted by split), dropped whole when no chunk is left."""
        pieces = text_chunks(example, self.sequence_len)
        least = max(self.min_sample_len, 2)  # a chunk of one token predicts nothing
        kept = [p for p in pieces if len(p.input_ids) >= least]
        if not kept:
            why = f"min_sample_len {least}" if least == self.min_sample_len else "one token predicts nothing"
            return Reject(row.source, "too_short", f"{len(example.input_ids)} tokens < {least} ({why}); "
                          f"{KINDS['too_short']}", row.raw)
        if len(pieces) > 1:
            self.chunked[split] += 1
            self.chunks[split] += len(pieces)
            self.short_chunks[split] += len(pieces) - len(kept)
        return kept

    def lines(self) -> list[str]:
        """One summary line per rule that changed rows, with the count per split."""
        see = f"; see {self.rejects_path}" if self.rejects_path is not None else ""
        out = []
        if n := sum(self.truncated.values()):
            out.append(f"{_rows(n)} truncated to sequence_len {self.sequence_len} (excess_length_strategy: "
                       f"truncate): {_by_split(self.truncated, 'in')}")
        if n := sum(self.chunked.values()):
            out.append(f"{n} completion text(s) longer than sequence_len {self.sequence_len} cut into "
                       f"{sum(self.chunks.values())} chunks of at most {self.sequence_len} tokens, as Axolotl cuts "
                       f"them: {_by_split(self.chunked, 'in')}")
        if n := sum(self.short_chunks.values()):
            out.append(f"{n} chunk(s) shorter than min_sample_len {self.min_sample_len} tokens left out (the ends "
                       f"of long completion texts, as Axolotl drops them): {_by_split(self.short_chunks, 'from')}")
        for kind, what in (
                ("too_long", f"longer than sequence_len {self.sequence_len} dropped (excess_length_strategy: "
                             f"{self.strategy})"),
                ("no_trained_tokens", f"dropped: cut to sequence_len {self.sequence_len}, no answer token "
                                      "was left to train on"),
                ("too_short", f"shorter than min_sample_len {self.min_sample_len} tokens dropped")):
            per = {split: sum(r.kind == kind for r in rejects) for split, rejects in self.dropped.items()}
            if n := sum(per.values()):
                out.append(f"{_rows(n)} {what}: {_by_split(per, 'from')}{see}")
        return out


@dataclass
class Prepared:
    """A config's data, ready to train: examples (and packs), the held-out split, the report."""

    train: list[Example]
    val: list[Example]
    val_rows: list[Row]
    packs: list | None  # packing.Pack when sample_packing
    load: LoadReport
    fmt: object  # formatting.PromptFormat
    efficiency: dict[str, float]
    lengths: Lengths

    def summary(self) -> str:
        eff = ", ".join(f"{k} {v:.1%}" for k, v in self.efficiency.items())
        packs = f", {len(self.packs)} packs" if self.packs is not None else ""
        return "\n".join([self.load.summary(), *self.lengths.lines(),
                          f"split: {len(self.train)} train, {len(self.val)} held out{packs}",
                          f"packing efficiency (real tokens / token slots): {eff}"])


def choose_format(cfg: Config, tokenizer, rows: list[Row]) -> PromptFormat:
    """The prompt format: the config's chat_template (or chat_template_jinja), else the one that the
    conversation datasets name (one template for the model: training and serving share it). A
    conversation needs a chat template: UserError naming the datasets when the format is Alpaca."""
    named = {d.chat_template for d in cfg.datasets if d.chat_template}
    template = cfg.chat_template
    if named - {template} and (template is not None or len(named) > 1):
        raise UserError(f"datasets name the chat templates {', '.join(sorted(named))} and the config "
                        f"{template or 'none'}; a model is trained and served with one: set the same "
                        "chat_template everywhere (or only the top-level one)")
    if template is None and named:
        template = named.pop()
    fmt = prompt_format(tokenizer, template, cfg.default_system_message,
                        chat_template_jinja=cfg.chat_template_jinja)
    if fmt.kind == "alpaca" and any(r.turns for r in rows):
        chats = [f"datasets[{i}] ({d.path}, type: {d.type})" for i, d in enumerate(cfg.datasets)
                 if d.type in CONVERSATION_TYPES]
        why = "chat_template is alpaca" if template == "alpaca" else "this model has none (a base model)"
        raise UserError(f"{', '.join(chats) or 'a dataset'}: conversations need a chat template, and {why}; "
                        f"{NEEDS_TEMPLATE}")
    return fmt


def _encode_split(tokenizer, fmt, rows: list[Row], split: str, lengths: Lengths, *,
                  train_on_inputs: bool) -> tuple[list[Row], list[Example]]:
    """The rows of one split that the length rules keep, and their examples (truncated ones cut)."""
    kept_rows, kept = [], []
    dropped = lengths.dropped.setdefault(split, [])
    for row in rows:
        full = encode_row(tokenizer, fmt, row, train_on_inputs=train_on_inputs)
        fitted = lengths.cut(full, row, split) if row.kind == "completion" else lengths.fit(full, row)
        if isinstance(fitted, Reject):
            dropped.append(fitted)
            continue
        if isinstance(fitted, Example) and len(fitted.input_ids) < len(full.input_ids):
            lengths.truncated[split] += 1
        kept_rows.append(row)
        kept += [fitted] if isinstance(fitted, Example) else fitted
    return kept_rows, kept


def _apply_lengths(report: LoadReport, lengths: Lengths) -> None:
    """TooLongError under raise; else the dropped rows leave report.rows for its rejects (in file
    order), all rejects are written, and each rule that changed rows is logged."""
    order = {r.source: i for i, r in enumerate(report.rows)}
    dropped = sorted(lengths.rejects, key=lambda r: order[r.source])
    too_long = [r for r in dropped if r.kind == "too_long"]
    if lengths.strategy == "raise" and too_long:
        raise TooLongError(too_long, lengths.sequence_len)
    gone = {r.source for r in dropped}
    report.rows = [r for r in report.rows if r.source not in gone]
    report.rejects += dropped
    record(report, lengths.rejects_path)
    for line in lengths.lines():
        log.warning("%s", line)


def prepare(cfg: Config, tokenizer, *, skip_bad_rows: bool, config_dir: Path | None = None) -> Prepared:
    """Load, check, format, tokenize, split, fit to sequence_len (the length rules) and (when
    sample_packing) pack a config's datasets."""
    from tutorforge.packing import pack, packed_efficiency, padded_efficiency

    report = load_datasets(cfg.datasets, config_dir)
    check(report, skip_bad_rows=skip_bad_rows or cfg.tutorforge.skip_bad_rows)  # before any tokenising
    fmt = choose_format(cfg, tokenizer, report.rows)
    lengths = Lengths(cfg.excess_length_strategy, cfg.sequence_len, cfg.min_sample_len,
                      Path(cfg.output_dir) / "rejected.jsonl")
    train_rows, val_rows = split_rows(report.rows, cfg.val_set_size, cfg.seed)
    train_rows, train = _encode_split(tokenizer, fmt, train_rows, "train", lengths,
                                      train_on_inputs=cfg.train_on_inputs)
    val_rows, val = _encode_split(tokenizer, fmt, val_rows, "held out", lengths,
                                  train_on_inputs=cfg.train_on_inputs)
    _apply_lengths(report, lengths)
    assert len(train_rows) + len(val_rows) == len(report.rows)
    if not train:
        raise UserError(f"no training row is left after the length rules ({'; '.join(lengths.lines())}); "
                        "raise sequence_len, set excess_length_strategy: truncate, or lower min_sample_len")
    token_counts = [len(e.input_ids) for e in train]
    pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None  # what training's batches are padded to
    efficiency = {"padded": padded_efficiency(token_counts, cfg.micro_batch_size, sequence_len=pad_to).ratio}
    packs = None
    if cfg.sample_packing:
        packs = pack(train, cfg.sequence_len)
        efficiency["packed"] = packed_efficiency(packs, cfg.micro_batch_size, sequence_len=pad_to).ratio
    return Prepared(train, val, val_rows, packs, report, fmt, efficiency, lengths)


def write_rows(rows: list[Row], path: Path) -> None:
    """Write the rows that have a prompt to ask as JSONL, atomically: an Alpaca row's fields; a
    conversation row with them (its last user and assistant turns, for Alpaca readers) its messages
    too (role, content, and "train" where the turn has its own flag), roles_to_train and train_on_eos,
    which prompts.load_prompts reads back; an Alpaca row with its own system prompt (alpaca_w_system)
    as the conversation system, user, assistant. Completion and input_output rows have no prompt to
    ask: they are left out, and counted in a log line."""
    from tutorforge.formatting import user_turn

    asked = [r for r in rows if r.kind in ("alpaca", "conversation")]
    if left := len(rows) - len(asked):
        log.info("%s: %d completion or input_output row(s) left out (no prompt to compare on; the evaluation "
                 "loss counts them)", path.name, left)
    with atomic_write(path) as fh:
        for r in asked:
            item: dict = {"instruction": r.instruction, "input": r.input, "output": r.output}
            if r.turns:
                item["messages"] = [{"role": t.role, "content": t.content, **({} if t.train is None else
                                                                             {"train": t.train})} for t in r.turns]
                item |= {"roles_to_train": list(r.roles_to_train), "train_on_eos": r.train_on_eos}
            elif r.system:
                item["messages"] = [{"role": "system", "content": r.system},
                                    {"role": "user", "content": user_turn(r.instruction, r.input)},
                                    {"role": "assistant", "content": r.output}]
            fh.write(json.dumps(item | {"source": r.source}, ensure_ascii=False) + "\n")
