"""Read dataset rows, losing nothing silently: Alpaca rows {instruction, input, output} and the other
types of row_types.py (Axolotl's Alpaca spellings, completion, input_output), or conversations
(type: chat_template or sharegpt, a list of messages per row: turns read by conversations.py), from
JSON and JSON lines files here and CSV, Parquet and Arrow files through sources.py (which also finds
the files a `datasets:` entry names); every problem a reject like any other.

    report = load_files([Path("data/python_tutor.jsonl")])     # or load_datasets(cfg.datasets)
    print(report.summary())                                    # rows read, accepted, rejected by kind
    files = dataset_files(cfg.datasets)                        # the files `datasets:` names

Every row read is either accepted or rejected with its file:line and reason: a malformed JSON line,
a row that is not an object, a missing, empty or wrongly typed field, invalid UTF-8, a lone UTF-16
surrogate (a "\\ud800" escape), a number no reader can hold (1e999999, a 10^6-digit integer, NaN),
nesting too deep to parse, a huge line, or a duplicate of an earlier row: rows read = accepted +
rejected, always. A file is rejected whole when it is empty (or an empty array) or not UTF-8
(UTF-16/32); a BOM, CRLF line ends and blank lines are noted. A .jsonl file is read line by line,
always (or any file of a dataset with ds_type: jsonl); another file is one JSON array when it starts
with [ and that array ends the file, else it too is read by lines. Reading raises nothing for a
bad row; prepare.accept decides what the rejects mean (by default any problem stops loading with
the first 20 problems and the counts per kind; with skip_bad_rows the rejects go, verbatim and with
their reason, to rejected.jsonl). Tokenising, the held-out split, the length rules (rows over
sequence_len or under min_sample_len: LENGTH_KINDS) and packing are in prepare.py.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tutorforge.conversations import (
    CONVERSATION_TYPES,
    Problem,
    Reading,
    Turn,
    conversation_reading,
    json_type,
    prompt_and_answer,
    read_conversation,
)
from tutorforge.errors import UserError
from tutorforge.row_types import ALPACA_TYPES, RowReading, read_row, row_reading
from tutorforge.sources import WholeFile, dataset_files, table_format, table_rows

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # a JSONL line over 1 MiB is a broken export, not a lesson
MAX_INT_DIGITS = 4300  # Python's default int <-> str limit (sys.get_int_max_str_digits)
LINE_SUFFIXES = {".jsonl", ".ndjson"}  # read line by line whatever the first line holds
FIELDS = ("instruction", "input", "output")
ALPACA = ALPACA_TYPES["alpaca"]  # how a file no dataset entry names is read
KINDS = {  # problem kind -> what to do about it
    "malformed_json": "fix the JSON syntax",
    "not_an_object": "each row must be a JSON object {instruction, input, output}",
    "missing_field": "every row needs the keys its type reads (alpaca: instruction and output; input may be empty)",
    "empty_field": "an instruction, answer or text must have text",
    "wrong_type": "a row's instruction, input, answer, system prompt or text must be a string",
    "invalid_utf8": "save the file as UTF-8",
    "lone_surrogate": "half of a UTF-16 surrogate pair is no character; fix the escape or drop the row",
    "bad_number": "write the number as a string, or drop it",
    "too_deep": "nested deeper than JSON readers go; flatten or drop the row",
    "huge_line": f"a row over {MAX_LINE_BYTES >> 20} MiB; split or drop that row",
    "duplicate": "remove the repeated row",
    # conversations (type: chat_template or sharegpt; conversations.py says what each means)
    "not_a_conversation": "each row needs its messages as a list of objects under field_messages",
    "missing_message_key": "every message needs its role and content; message_property_mappings names their keys",
    "unknown_role": "map the name to a template role under roles: (e.g. assistant: [gpt, assistant, bot])",
    "content_not_text": "a message's content must be a string",
    "empty_content": "every message needs text; fill it in or drop the message",
    "bad_training_flag": "message_field_training's key must hold true or false",
    "no_trainable_turn": "add a turn to train on (an answer), or set roles_to_train or message_field_training",
    # type: input_output (row_types.py)
    "bad_segment": "each row needs 'segments': a list of {text: string, label: true or false}",
    "no_trained_segment": "give at least one segment label: true (the text to train on)",
    "too_long": "shorten the row, raise sequence_len, or set excess_length_strategy: truncate",
    "too_short": "lengthen the row or lower min_sample_len",
    "no_trained_tokens": "shorten the prompt, or raise sequence_len",
    "empty_file": "the file holds no rows",
    "not_utf8": "save the file as UTF-8",
}
FILE_KINDS = frozenset({"empty_file", "not_utf8"})  # a whole file rejected: no rows read from it
# Rows dropped by prepare's length rules (excess_length_strategy, min_sample_len, as Axolotl drops
# them): counted and written to rejected.jsonl like any reject, but not errors that stop training.
LENGTH_KINDS = frozenset({"too_long", "too_short", "no_trained_tokens"})
SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept by surrogateescape
ANY_SURROGATE = re.compile("[\ud800-\udfff]")  # also lone \ud800-style escapes, which encode nothing
SPACE = re.compile(r"[ \t\r\n]*")  # JSON's whitespace
TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[][{},]|"')  # a string, a bracket, a comma, a lone quote


@dataclass(frozen=True)
class Row:
    """One training example, of a `kind`: "alpaca" (any Alpaca spelling: instruction, input, output,
    an optional system prompt), "conversation" (`turns`, from type chat_template or sharegpt; its
    instruction and output are its last user turn and last assistant turn, what the brevity and code
    checks read), "completion" (the text in `output`, trained whole) or "segments" (type
    input_output: `segments` of (text, trained); instruction and output join the untrained and the
    trained texts)."""

    instruction: str
    input: str
    output: str
    source: str  # file:line
    raw: str = field(default="", repr=False, compare=False)  # the row as read, for rejected.jsonl
    turns: tuple[Turn, ...] = ()  # a conversation's messages in order; () for an Alpaca row
    roles_to_train: tuple[str, ...] = ("assistant",)  # its dataset's roles_to_train
    train_on_eos: str = "turn"  # its dataset's train_on_eos: turn | last | all | none
    kind: str = "alpaca"  # alpaca | conversation | completion | segments
    system: str = ""  # an Alpaca row's own system prompt (alpaca_w_system); "": the config's
    segments: tuple[tuple[str, bool], ...] = ()  # input_output: (text, trained) in order


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
    rejects: list[Reject] = field(default_factory=list)  # rows, and files rejected whole (FILE_KINDS)
    notes: list[str] = field(default_factory=list)
    extra_keys: Counter = field(default_factory=Counter)

    @property
    def row_rejects(self) -> list[Reject]:
        return [r for r in self.rejects if r.kind not in FILE_KINDS]

    @property
    def file_rejects(self) -> list[Reject]:
        return [r for r in self.rejects if r.kind in FILE_KINDS]

    @property
    def errors(self) -> list[Reject]:
        """Rejects that stop loading unless skip_bad_rows: all but the length rules' drops."""
        return [r for r in self.rejects if r.kind not in LENGTH_KINDS]

    def counts(self) -> Counter:
        """Rejected rows per kind (files rejected whole are not rows)."""
        return Counter(r.kind for r in self.row_rejects)

    def summary(self) -> str:
        rejected = self.row_rejects  # rows read = accepted + rejected, always
        parts = [f"{self.rows_read} rows read from {len(self.files)} file(s): {len(self.rows)} accepted, "
                 f"{len(rejected)} rejected"]
        if rejected:
            parts.append("rejected by kind: " + ", ".join(f"{k} {n}" for k, n in self.counts().most_common()))
        if files := self.file_rejects:
            parts.append(f"{len(files)} file(s) rejected whole: " + "; ".join(r.render() for r in files))
        if self.extra_keys:
            parts.append("extra keys ignored: " + ", ".join(f"{k} ({n} rows)" for k, n in
                                                             self.extra_keys.most_common()))
        return "\n".join(parts + self.notes)


@dataclass(frozen=True)
class Unreadable:
    """Why a row's text gives no value (malformed, too deep, a bad number, a huge line)."""

    kind: str
    reason: str


def _text_problem(label: str, item: str, raw: str) -> tuple[str, str] | None:
    """(kind, reason) where a string holds no text a file can hold: bytes not UTF-8, a lone surrogate."""
    if found := ANY_SURROGATE.search(item):
        if SURROGATE.search(raw):  # the file's bytes, not a \u escape
            return "invalid_utf8", f"{label} holds bytes that are not UTF-8; {KINDS['invalid_utf8']}"
        return "lone_surrogate", (f"{label} holds \\u{ord(found.group()):04x} without its pair; "
                                  f"{KINDS['lone_surrogate']}")
    return None


Checked = tuple[str, str] | tuple[dict, tuple, Counter]  # (kind, reason) or (Row fields, duplicate key, extra keys)


def _check_row(value: object, raw: str, reading: RowReading) -> Checked:
    """Either (kind, reason) for an unusable row of an Alpaca spelling, completion or input_output
    (row_types.py), or (its fields, its duplicate key, extra keys)."""
    if not isinstance(value, dict):
        return "not_an_object", f"a JSON {json_type(value)}, not an object; {KINDS['not_an_object']}"
    read = read_row(value, reading)
    if isinstance(read, Problem):
        return read.kind, f"{read.what}; {KINDS[read.kind]}"
    for label, text in read.texts:
        if problem := _text_problem(label, text, raw):
            return problem
    return read.fields, read.key, read.extra


def _check_conversation(value: object, raw: str, reading: Reading) -> Checked:
    """Either (kind, reason) for an unusable conversation row, or (its fields, duplicate key, extra keys)."""
    if not isinstance(value, dict):
        return "not_an_object", (f"a JSON {json_type(value)}, not an object; each row must be a JSON object "
                                 f"holding its messages under {reading.field_messages!r}")
    read = read_conversation(value, reading)
    if isinstance(read, Problem):
        return read.kind, f"{read.what}; {KINDS[read.kind]}"
    turns, extra = read
    for n, turn in enumerate(turns, start=1):
        if problem := _text_problem(f"turn {n} ({turn.role})", turn.content, raw):
            return problem
    instruction, output = prompt_and_answer(turns)
    fields = {"instruction": instruction, "input": "", "output": output, "turns": turns, "kind": "conversation",
              "roles_to_train": reading.roles_to_train, "train_on_eos": reading.train_on_eos}
    return fields, ("turns",) + tuple((t.role, t.content.strip(), t.train) for t in turns), extra


def _scan(text: str, pos: int) -> tuple[int, int] | None:
    """(end, deepest nesting) of the JSON value at `pos`, found from its brackets alone, without
    recursion: how a row too deep for json (or malformed) is measured and stepped over. The end of a
    value that is not an array or object is the next top-level , or ]. None where brackets do not
    pair or a string is not closed."""
    stack: list[str] = []
    deepest = 0
    for match in TOKEN.finditer(text, pos):
        token = match.group()
        if token == '"':
            return None
        if token[0] == '"' or (token == "," and stack):
            continue
        if token in "[{":
            stack.append(token)
            deepest = max(deepest, len(stack))
        elif not stack:  # a , or the ] that closes the enclosing array
            return match.start(), deepest
        elif stack.pop() != "[{"["]}".index(token)]:
            return None
        elif not stack:
            return match.end(), deepest
    return (len(text), deepest) if not stack else None


class _Reader:
    """json's decoder, with numbers and constants no reader can hold noted (a reject), not raised."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.decoder = json.JSONDecoder(parse_float=self._float, parse_int=self._int,
                                        parse_constant=self._constant)

    def _float(self, text: str) -> float:
        value = float(text)
        if math.isinf(value):
            self.problems.append(f"{text[:20]}{'...' if len(text) > 20 else ''} is out of range "
                                 "(it reads as infinity)")
        return value

    def _int(self, text: str) -> int:
        if len(text) > MAX_INT_DIGITS:  # int() would refuse it (or take seconds with the limit off)
            self.problems.append(f"an integer of {len(text.lstrip('-')):,} digits (at most "
                                 f"{MAX_INT_DIGITS} are read)")
            return 0
        return int(text)

    def _constant(self, text: str) -> None:
        self.problems.append(f"{text} is not JSON")

    def _checked(self, value: object) -> object:
        if not self.problems:
            return value
        return Unreadable("bad_number", f"{'; '.join(self.problems[:3])}; {KINDS['bad_number']}")

    def line(self, text: str) -> object:
        """The value of one JSONL line, or why it has none (Unreadable)."""
        self.problems.clear()
        try:
            return self._checked(self.decoder.decode(text))
        except json.JSONDecodeError as exc:
            return _malformed(text, f"{exc.msg} at column {exc.colno}")
        except RecursionError:
            return _too_deep(_scan(text, 0))

    def element(self, text: str, pos: int) -> tuple[object, int] | None:
        """(value or Unreadable, end) of the array element at `pos`; None where its end is lost."""
        self.problems.clear()
        try:
            value, end = self.decoder.raw_decode(text, pos)
            return self._checked(value), end
        except (json.JSONDecodeError, RecursionError) as exc:
            scanned = _scan(text, pos)
            if scanned is None or not text[pos:scanned[0]].strip():
                return None
            end = pos + len(text[pos:scanned[0]].rstrip())
            if isinstance(exc, RecursionError):
                return _too_deep(scanned), end
            return _malformed(text[pos:end], f"{exc.msg} at line {exc.lineno} column {exc.colno}"), end


def _malformed(raw: str, where: str) -> Unreadable:
    if SURROGATE.search(raw):
        return Unreadable("invalid_utf8", f"bytes that are not UTF-8; {KINDS['invalid_utf8']}")
    return Unreadable("malformed_json", f"malformed JSON: {where}")


def _too_deep(scanned: tuple[int, int] | None) -> Unreadable:
    depth = f"{scanned[1]:,} levels" if scanned else "too many levels"
    return Unreadable("too_deep", f"nested {depth} deep; {KINDS['too_deep']}")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def _jsonl_items(path: Path, data: bytes, report: LoadReport) -> Iterator[tuple[int, str, object]]:
    """(line, raw text, parsed value or Unreadable) per non-blank line of a JSONL file."""
    if b"\r\n" in data:
        report.notes.append(f"{path}: CRLF line ends (read as LF)")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    blank, reader = 0, _Reader()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            blank += 1
            continue
        text = _decode(raw.rstrip(b"\r"))
        if len(raw) > MAX_LINE_BYTES:
            yield number, text, Unreadable("huge_line", f"line of {len(raw):,} bytes; {KINDS['huge_line']}")
            continue
        value = reader.line(text)
        if number == 1 and isinstance(value, list):
            report.notes.append(f"{path}:1: a JSON array on the first line: each line of a JSON lines "
                                "file is one row (a file that is one JSON array is read as such when "
                                "not named .jsonl)")
        yield number, text, value
    if blank:
        report.notes.append(f"{path}: {blank} blank line(s) skipped")


def _skip_space(text: str, pos: int) -> int:
    """The first position at or after `pos` past JSON whitespace (SPACE also matches nothing)."""
    match = SPACE.match(text, pos)
    return match.end() if match else pos


def _array_items(path: Path, text: str) -> list[tuple[int, str, object]] | None:
    """(line, raw text, parsed value or Unreadable) per element of a JSON array file, in time linear
    in its size; None when text follows the array's closing ] (the file is then read as lines)."""
    reader, items = _Reader(), []
    line, counted = 1, 0
    pos = _skip_space(text, text.index("[") + 1)
    while not text.startswith("]", pos):
        line += text.count("\n", counted, pos)
        counted = pos
        element = None if text.startswith(",", pos) else reader.element(text, pos)
        if element is None:
            what = ("a comma with no row before it" if text.startswith(",", pos) else "the file ends "
                    "inside it" if pos == len(text) else "a row whose end cannot be found: a string "
                    "or bracket is not closed")
            raise UserError(f"{path}:{line}: malformed JSON array ({what}); the rows after it "
                            "cannot be told apart, so the file must be fixed")
        value, end = element
        raw = text[pos:end]
        size = len(raw.encode("utf-8", "surrogateescape")) if len(raw) > MAX_LINE_BYTES // 4 else 0
        if size > MAX_LINE_BYTES:
            value = Unreadable("huge_line", f"a row of {size:,} bytes; {KINDS['huge_line']}")
        items.append((line, raw, value))
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif not text.startswith("]", pos):
            line += text.count("\n", counted, pos)
            raise UserError(f"{path}:{line}: malformed JSON array (expected , or ] after the row at "
                            f"line {items[-1][0]}); the rows after it cannot be told apart, so the "
                            "file must be fixed")
    return None if text[pos + 1:].strip() else items


def read_file(path: Path, report: LoadReport, seen: dict, ds_type: str | None = None,
              reading: Reading | RowReading | None = None) -> None:
    """Read one file into `report` (accepted rows and rejects). `ds_type` (a dataset's ds_type) says
    the format whatever the suffix: "jsonl" is read line by line, "json" as one array when it is one,
    else by lines; "csv", "parquet", "arrow": their rows from sources.table_rows; None: from the suffix
    (LINE_SUFFIXES: by lines; sources.FORMATS). `reading` says how a row is read (a conversation,
    row_types' readings; None: an Alpaca row). Every row, whatever its format, goes through the same
    checks (_add)."""
    if (fmt := table_format(path, ds_type)) is not None:
        report.files.append(str(path))
        for source, raw, value in table_rows(path, fmt, report.notes):
            if isinstance(value, WholeFile):  # before any row: the file gives none
                report.rejects.append(Reject(source, value.kind, f"{value.reason}: {KINDS[value.kind]}", ""))
                return
            size = len(raw.encode("utf-8", "surrogateescape")) if len(raw) > MAX_LINE_BYTES // 4 else 0
            if size > MAX_LINE_BYTES:
                value = Unreadable("huge_line", f"a row of {size:,} bytes; {KINDS['huge_line']}")
            report.rows_read += 1
            _add(report, source, raw, value, seen, reading)
        return
    data = path.read_bytes()
    report.files.append(str(path))
    encoding = json.detect_encoding(data)  # json's own check of the first bytes (RFC 4627)
    if encoding not in ("utf-8", "utf-8-sig"):
        report.rejects.append(Reject(f"{path}:1", "not_utf8", f"{encoding.upper()} text, not UTF-8; "
                                     f"{KINDS['not_utf8']}", ""))
        return
    if data.startswith(b"\xef\xbb\xbf"):
        report.notes.append(f"{path}:1: UTF-8 byte-order mark removed")
        data = data[3:]
    if not data.strip():
        report.rejects.append(Reject(f"{path}:1", "empty_file", f"empty file: {KINDS['empty_file']}", ""))
        return
    items: Iterable | None = None
    by_lines = ds_type == "jsonl" or (ds_type is None and path.suffix in LINE_SUFFIXES)
    if not by_lines and data.lstrip()[:1] == b"[":
        items = _array_items(path, _decode(data))
        if items is None:
            report.notes.append(f"{path}: text follows the JSON array that opens it; read as JSON lines")
        elif not items:
            report.rejects.append(Reject(f"{path}:1", "empty_file", f"an empty JSON array: "
                                         f"{KINDS['empty_file']}", ""))
    for line, raw, value in items if items is not None else _jsonl_items(path, data, report):
        report.rows_read += 1
        _add(report, f"{path}:{line}", raw, value, seen, reading)


def _add(report: LoadReport, source: str, raw: str, value: object, seen: dict,
         reading: Reading | RowReading | None) -> None:
    if isinstance(value, Unreadable):
        report.rejects.append(Reject(source, value.kind, value.reason, raw))
        return
    reading = reading or ALPACA
    match _check_conversation(value, raw, reading) if isinstance(reading, Reading) else _check_row(value, raw, reading):
        case (str() as kind, str() as reason):
            report.rejects.append(Reject(source, kind, reason, raw))
            return
        case (dict() as fields, key, extra):
            pass
    if key in seen:
        report.rejects.append(Reject(source, "duplicate", f"duplicate of {seen[key]}; "
                                     f"{KINDS['duplicate']}", raw))
        return
    seen[key] = source
    report.extra_keys.update(extra)
    report.rows.append(Row(source=source, raw=raw, **fields))


def load_files(paths: Iterable[Path], ds_types: Iterable[str | None] = (),
               readings: Iterable[Reading | RowReading | None] = ()) -> LoadReport:
    """Read every file (duplicates are found across files); nothing is raised for bad rows.
    `ds_types`, when given, is each file's format (see read_file); `readings` how each file's rows
    are read (conversations.Reading, row_types.RowReading; None: Alpaca rows, as when not given)."""
    report, seen = LoadReport(), {}
    paths = list(paths)
    formats = list(ds_types) or [None] * len(paths)
    chats = list(readings) or [None] * len(paths)
    for path, ds_type, reading in zip(paths, formats, chats, strict=True):
        try:
            read_file(Path(path), report, seen, ds_type, reading)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file; check datasets[].path (relative paths start at "
                            f"the current directory, {Path.cwd()})") from None
        except IsADirectoryError:
            raise UserError(f"{path}: a directory; name a data file (.jsonl, .json, .csv, .parquet, .arrow) "
                            "inside it, or list it in data_files") from None
    return report


def load_datasets(specs, config_dir: Path | None = None, *, only: Iterable[Path] | None = None) -> LoadReport:
    """Read the files of the config's `datasets:` entries, each in its entry's ds_type and type
    (conversations.py's or row_types.py's reading). With `only`, read those files
    instead: each as the entry that names it reads it, a file no entry names as Alpaca rows."""
    files, formats, readings = [], [], []
    for i, spec in enumerate(specs):
        named = dataset_files([spec], config_dir, first=i) if only is None else []
        if only is not None:
            try:
                mine = {f.resolve() for f in dataset_files([spec], config_dir, first=i)}
            except UserError:  # an entry whose files are not here names none of `only`
                mine = set()
            named = [f for f in only if f.resolve() in mine and f not in files]
        reading = conversation_reading(spec, i) if spec.type in CONVERSATION_TYPES else row_reading(spec, i)
        files += named
        formats += [spec.ds_type] * len(named)
        readings += [reading] * len(named)
    if only is not None:
        rest = [f for f in only if f not in files]
        files, formats, readings = files + rest, formats + [None] * len(rest), readings + [None] * len(rest)
    return load_files(files, formats, readings)

