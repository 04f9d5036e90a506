"""Load Alpaca rows {instruction, input, output} from .jsonl and .json files, losing nothing silently.

    report = load_files([Path("data/python_tutor.jsonl")])
    rows = accept(report, skip_bad_rows=False, rejects_path=None)   # DataError lists the problems

Every row read is either accepted or rejected with its file:line and reason: a malformed JSON line,
a row that is not an object, a missing, empty or wrongly typed field, invalid UTF-8, a huge line,
or a duplicate of an earlier row. A BOM, CRLF line ends, blank lines and an empty file are noted.
By default any problem stops loading with the first 20 problems and the counts per kind; with
skip_bad_rows the rejected rows go, verbatim and with their reason, to rejected.jsonl, and
accepted + rejected always equals the rows read.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # a JSONL line over 1 MiB is a broken export, not a lesson
FIELDS = ("instruction", "input", "output")
KINDS = {  # problem kind -> what to do about it
    "malformed_json": "fix the JSON syntax",
    "not_an_object": "each row must be a JSON object {instruction, input, output}",
    "missing_field": "every row needs instruction and output (input may be empty)",
    "empty_field": "instruction and output must have text",
    "wrong_type": "instruction, input and output must be strings",
    "invalid_utf8": "save the file as UTF-8",
    "huge_line": f"a line over {MAX_LINE_BYTES >> 20} MiB; split or drop that row",
    "duplicate": "remove the repeated row",
    "too_long": "longer than sequence_len; shorten the row or raise sequence_len",
    "empty_file": "the file holds no rows",
}
SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept by surrogateescape


@dataclass(frozen=True)
class Row:
    instruction: str
    input: str
    output: str
    source: str  # file:line
    raw: str = field(default="", repr=False, compare=False)  # the row as read, for rejected.jsonl


@dataclass(frozen=True)
class Reject:
    source: str  # file:line
    kind: str
    reason: str
    raw: str  # the row as read (undecodable bytes kept as surrogate escapes)

    def render(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class LoadReport:
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows: list[Row] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_keys: Counter = field(default_factory=Counter)

    def counts(self) -> Counter:
        return Counter(r.kind for r in self.rejects)

    def summary(self) -> str:
        parts = [f"{self.rows_read} rows read from {len(self.files)} file(s): {len(self.rows)} accepted, "
                 f"{len(self.rejects)} rejected"]
        if self.rejects:
            parts.append("rejected by kind: " + ", ".join(f"{k} {n}" for k, n in self.counts().most_common()))
        if self.extra_keys:
            parts.append("extra keys ignored: " + ", ".join(f"{k} ({n} rows)" for k, n in
                                                             self.extra_keys.most_common()))
        return "\n".join(parts + self.notes)


class DataError(UserError):
    """Unusable rows and no permission to skip them: lists the first 20, with counts per kind."""

    def __init__(self, report: LoadReport, limit: int = 20):
        self.report = report
        lines = [r.render() for r in report.rejects[:limit]]
        if len(report.rejects) > limit:
            lines.append(f"... and {len(report.rejects) - limit} more")
        counts = ", ".join(f"{kind}: {n}" for kind, n in report.counts().most_common())
        super().__init__("\n".join(lines) + f"\n{len(report.rejects)} unusable of {report.rows_read} rows "
                         f"read ({counts}). Fix them, or set `skip_bad_rows: true` under tutorforge: "
                         "(or pass --skip-bad-rows) to train without them; they are then written to "
                         "rejected.jsonl with their reasons.")


def _check_row(value: object) -> tuple[str, str] | tuple[tuple[str, str, str], Counter]:
    """Either (kind, reason) for an unusable row, or ((instruction, input, output), extra keys)."""
    if not isinstance(value, dict):
        return "not_an_object", f"a JSON {type(value).__name__}, not an object"
    missing = [k for k in ("instruction", "output") if k not in value]
    if missing:
        return "missing_field", f"missing {', '.join(repr(k) for k in missing)}; {KINDS['missing_field']}"
    for key in FIELDS:
        item = value.get(key, "")
        if item is None and key == "input":
            continue
        if not isinstance(item, str):
            return "wrong_type", f"{key!r} is a {type(item).__name__}; {KINDS['wrong_type']}"
        if SURROGATE.search(item):
            return "invalid_utf8", f"{key!r} holds bytes that are not UTF-8; {KINDS['invalid_utf8']}"
    for key in ("instruction", "output"):
        if not value[key].strip():
            return "empty_field", f"{key!r} is empty; {KINDS['empty_field']}"
    extra = Counter(k for k in value if k not in FIELDS)
    return (value["instruction"], value.get("input") or "", value["output"]), extra


class HugeLine(Exception):
    """A JSONL line over MAX_LINE_BYTES: rejected unparsed."""

    def __init__(self, size: int):
        super().__init__(f"line of {size} bytes")
        self.size = size


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def _jsonl_items(path: Path, data: bytes, report: LoadReport) -> Iterator[tuple[int, str, object]]:
    """(line, raw text, parsed value or an Exception) per non-blank line of a JSONL file."""
    if b"\r\n" in data:
        report.notes.append(f"{path}: CRLF line ends (read as LF)")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    blank = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            blank += 1
            continue
        text = _decode(raw.rstrip(b"\r"))
        if len(raw) > MAX_LINE_BYTES:
            yield number, text, HugeLine(len(raw))
            continue
        try:
            yield number, text, json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, text, exc
    if blank:
        report.notes.append(f"{path}: {blank} blank line(s) skipped")


def _array_items(path: Path, text: str) -> Iterator[tuple[int, str, object]]:
    """(line, raw text, parsed value) per element of a JSON array file."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, exc.pos) + 1
            raise UserError(f"{path}:{line}: malformed JSON array ({exc.msg}, column {exc.colno}); rows "
                            "after this point cannot be told apart, so the file must be fixed") from None
        yield text.count("\n", 0, pos) + 1, text[pos:end], value
        pos = end


def read_file(path: Path, report: LoadReport, seen: dict) -> None:
    """Read one .jsonl or .json file into `report` (accepted rows and rejects)."""
    data = path.read_bytes()
    report.files.append(str(path))
    if data.startswith(b"\xef\xbb\xbf"):
        report.notes.append(f"{path}:1: UTF-8 byte-order mark removed")
        data = data[3:]
    if not data.strip():
        report.rejects.append(Reject(f"{path}:1", "empty_file", f"empty file: {KINDS['empty_file']}", ""))
        return
    first = data.lstrip()[:1]
    items: Iterable = (_array_items(path, _decode(data)) if first == b"[" else _jsonl_items(path, data, report))
    for line, raw, value in items:
        report.rows_read += 1
        _add(report, f"{path}:{line}", raw, value, seen)


def _add(report: LoadReport, source: str, raw: str, value: object, seen: dict) -> None:
    if isinstance(value, Exception):
        if isinstance(value, HugeLine):
            kind, reason = "huge_line", f"line of {value.size:,} bytes; {KINDS['huge_line']}"
        elif SURROGATE.search(raw):
            kind, reason = "invalid_utf8", f"bytes that are not UTF-8; {KINDS['invalid_utf8']}"
        else:
            kind, reason = "malformed_json", f"malformed JSON: {value.msg} at column {value.colno}"
        report.rejects.append(Reject(source, kind, reason, raw))
        return
    checked = _check_row(value)
    if isinstance(checked[0], str):
        report.rejects.append(Reject(source, checked[0], checked[1], raw))
        return
    (instruction, input_, output), extra = checked
    key = (instruction.strip(), input_.strip(), output.strip())
    if key in seen:
        report.rejects.append(Reject(source, "duplicate", f"duplicate of {seen[key]}; "
                                     f"{KINDS['duplicate']}", raw))
        return
    seen[key] = source
    report.extra_keys.update(extra)
    report.rows.append(Row(instruction, input_, output, source, raw))


def load_files(paths: Iterable[Path]) -> LoadReport:
    """Read every file (duplicates are found across files); nothing is raised for bad rows."""
    report, seen = LoadReport(), {}
    for path in paths:
        try:
            read_file(Path(path), report, seen)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file; check datasets[].path (relative paths start at "
                            f"the current directory, {Path.cwd()})") from None
        except IsADirectoryError:
            raise UserError(f"{path}: a directory; name the .jsonl/.json file, or list it in data_files")
    return report


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
        log.warning("%d of %d rows rejected (%s); see %s", len(report.rejects), report.rows_read,
                    ", ".join(f"{k} {n}" for k, n in report.counts().most_common()), rejects_path)
    if not report.rows:
        raise UserError(f"no usable rows in {', '.join(report.files) or 'the datasets'}")
    assert len(report.rows) + len(report.rejects) - report.counts()["empty_file"] == report.rows_read
    return report.rows


def dataset_files(specs, config_dir: Path | None = None) -> list[Path]:
    """The files named by the config's `datasets:` entries (DatasetSpec), in order."""
    files = []
    for i, spec in enumerate(specs):
        base = Path(spec.path).expanduser()
        if not base.exists() and config_dir is not None and (config_dir / base).exists():
            log.info("datasets[%d].path %s: not in %s; using %s", i, spec.path, Path.cwd(), config_dir / base)
            base = config_dir / base
        if base.is_dir():
            names = spec.data_files or tuple(sorted(p.name for p in base.iterdir()
                                                    if p.suffix in {".json", ".jsonl"}))
            files += [base / n for n in names]
        elif base.exists():
            files.append(base)
        else:
            raise UserError(f"datasets[{i}].path: {spec.path}: no such file or directory (relative paths "
                            f"start at {Path.cwd()}); tutorforge reads local .jsonl/.json files: download "
                            "a hub dataset first and point path at the file")
    return files


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


def prepare(cfg, tokenizer, *, skip_bad_rows: bool, config_dir: Path | None = None) -> Prepared:
    """Load, check, format, tokenize, split and (when sample_packing) pack a config's datasets.
    Rows over sequence_len are rejected like any other unusable row, never truncated."""
    from tutorforge.formatting import encode_row, prompt_format, split_rows
    from tutorforge.packing import pack, packed_efficiency, padded_efficiency

    report = load_files(dataset_files(cfg.datasets, config_dir))
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
    efficiency = {"padded": padded_efficiency(lengths, cfg.micro_batch_size,
                                              sequence_len=cfg.sequence_len if cfg.pad_to_sequence_len else None).ratio}
    packs = None
    if cfg.sample_packing:
        packs = pack(train, cfg.sequence_len)
        efficiency["packed"] = packed_efficiency(packs, cfg.micro_batch_size).ratio
    return Prepared(train, [encoded[r.source] for r in val_rows], val_rows, packs, report, fmt, efficiency)


def write_rows(rows: list[Row], path: Path) -> None:
    """Write rows as Alpaca JSONL, atomically."""
    with atomic_write(path) as fh:
        for r in rows:
            fh.write(json.dumps({"instruction": r.instruction, "input": r.input, "output": r.output,
                                 "source": r.source}, ensure_ascii=False) + "\n")
