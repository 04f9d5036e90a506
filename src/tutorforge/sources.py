"""Where a dataset's rows come from: the files a `datasets:` entry names (a file, a directory, the
`data_files` inside it, or a dataset in the local Hugging Face cache), and the rows of its CSV,
Parquet and Arrow files (data.read_file reads JSON and JSON lines itself, and checks every row).

    files = dataset_files(cfg.datasets, config_dir)     # local paths, in `datasets:` order
    fmt = table_format(Path("rows.parquet"), None)      # "parquet"; None for JSON (data.read_file)
    for source, raw, value in table_rows(path, fmt, notes):
        ...  # ("rows.parquet:row 1", '{"instruction": ...}', {"instruction": ...}) or a WholeFile

`path` is read as Axolotl reads it (axolotl/utils/data/shared.py, load_dataset_with_config):
- a file: its format from `ds_type`, else from its suffix (.json, .jsonl, .csv, .tsv, .parquet, .arrow;
  anything else is JSON, as Axolotl's get_dataset_type says);
- a directory: the data files of `split` (default train), as datasets.load_dataset(directory) finds
  them (README.md's `configs:`, else file names: train.jsonl and test.jsonl are two splits, files
  named for no split are all train), the way a hub dataset's are; `data_files` names files or
  patterns inside it instead;
- a hub dataset id (`org/name`, not a local path), from the local Hugging Face cache only (there is no
  network here): the files of `split` and of configuration `name`, found as datasets.load_dataset
  finds them (README.md's `configs:`, else the hub's file naming: data/train-00000-of-00001.parquet,
  train.jsonl, a train/ folder), or the `data_files` patterns inside the dataset.

A CSV's first record is its header; each later record is a row {column: cell}, every cell a string
("" when empty), named by the physical line where it starts (a quoted cell may span lines). A row of
a Parquet or Arrow file comes as Python values (a list<struct> column as a list of dicts), named
`file:row N` (N from 1). Each row's `raw`, kept for rejected.jsonl, is the row as JSON text. A file
with no rows or not in UTF-8 is a WholeFile (data.py rejects it whole); a file that cannot be read
(a corrupt Parquet file, an unclosed CSV quote) is a UserError naming it and what to do.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tutorforge.errors import UserError

log = logging.getLogger(__name__)

# Suffix -> format (datasets.packaged_modules._EXTENSION_TO_MODULE, the formats tutorforge reads;
# .tsv is CSV with tabs there too). Other suffixes are read as JSON, as Axolotl's get_dataset_type does.
FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet", ".arrow": "arrow"}
TABLES = frozenset({"csv", "tsv", "parquet", "arrow"})  # formats whose rows are read here
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as tutorforge.models.HUB_ID
CSV_FIELD_LIMIT = 1 << 20  # a cell may be as long as a JSON line may be (data.MAX_LINE_BYTES)
BATCH_ROWS = 1024  # rows per Parquet/Arrow batch turned into Python values at once


@dataclass(frozen=True)
class WholeFile:
    """Why a file gives no rows at all: a data.FILE_KINDS kind and what is wrong."""

    kind: str
    reason: str


def table_format(path: Path, ds_type: str | None) -> str | None:
    """"csv", "tsv", "parquet" or "arrow" for a file whose rows table_rows reads; None for JSON or
    JSON lines (data.read_file). `ds_type` (a dataset's ds_type) overrides the suffix; ds_type csv
    on a .tsv file reads it with tabs."""
    by_suffix = FORMATS.get(path.suffix.lower())
    if ds_type is None:
        return by_suffix if by_suffix in TABLES else None
    if ds_type == "csv" and by_suffix == "tsv":
        return "tsv"
    return ds_type if ds_type in TABLES else None


def row_json(value: object) -> str:
    """A row as JSON text (its `raw`); values JSON has no type for (bytes, dates) as their str()."""
    return json.dumps(value, ensure_ascii=False, default=str)


def table_rows(path: Path, fmt: str, notes: list[str]) -> Iterator[tuple[str, str, object]]:
    """(source, raw, value) per row of a CSV, TSV, Parquet or Arrow file, or one WholeFile (before any
    row) when the file gives none. Notes (a byte-order mark, blank lines) go to `notes`."""
    if fmt in ("csv", "tsv"):
        yield from _csv_rows(path, "\t" if fmt == "tsv" else ",", notes)
    else:
        yield from _arrow_rows(path, fmt)


def _csv_text(path: Path, notes: list[str]) -> str | WholeFile:
    data = path.read_bytes()
    encoding = json.detect_encoding(data)  # json's check of the first bytes: BOMs, UTF-16/32 zero bytes
    if encoding not in ("utf-8", "utf-8-sig"):
        return WholeFile("not_utf8", f"{encoding.upper()} text, not UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        notes.append(f"{path}:1: UTF-8 byte-order mark removed")
        data = data[3:]
    if not data.strip():
        return WholeFile("empty_file", "empty file")
    return data.decode("utf-8", errors="surrogateescape")  # bad bytes: invalid_utf8 rows, as in JSON


def _csv_records(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, cells) per CSV record, blank lines as []; a quoting error is a UserError."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    limit = csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    start = 1
    try:
        for cells in reader:
            yield start, cells
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{path}:{start}: not readable as CSV ({exc}); a cell holding the delimiter, a quote "
                        "or a line break must be quoted, with quotes inside it doubled (\"say \"\"hi\"\"\")") from None
    finally:
        csv.field_size_limit(limit)


def _csv_rows(path: Path, delimiter: str, notes: list[str]) -> Iterator[tuple[str, str, object]]:
    text = _csv_text(path, notes)
    if isinstance(text, WholeFile):
        yield f"{path}:1", "", text
        return
    header: list[str] | None = None
    blank = rows = 0
    for line, cells in _csv_records(path, text, delimiter):
        if not cells:
            blank += 1
        elif header is None:
            header = cells
            if repeated := sorted({c for c in cells if cells.count(c) > 1}):
                raise UserError(f"{path}:{line}: the header names {', '.join(map(repr, repeated))} twice; "
                                "every column needs its own name")
        elif len(cells) > len(header):
            raise UserError(f"{path}:{line}: {len(cells)} cells where the header has {len(header)}; quote a "
                            f"cell that holds the delimiter {delimiter!r}, or name the extra column")
        else:  # a short record lacks its last columns: a missing instruction or output is a reject
            row = dict(zip(header, cells, strict=False))
            rows += 1
            yield f"{path}:{line}", row_json(row), row
    if blank:
        notes.append(f"{path}: {blank} blank line(s) skipped")
    if not rows:
        yield f"{path}:1", "", WholeFile("empty_file", "a header and no rows" if header else "empty file")


def _arrow_batches(path: Path, fmt: str, fh) -> Iterator:
    """The record batches of a Parquet file, or of an Arrow IPC stream or file (datasets' .arrow
    files are streams; datasets.packaged_modules.arrow tries a stream, then a file, the same way)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        yield from pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS)
        return
    try:
        yield from pa.ipc.open_stream(fh)
    except pa.ArrowInvalid:
        fh.seek(0)
        reader = pa.ipc.open_file(fh)
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))


def _arrow_rows(path: Path, fmt: str) -> Iterator[tuple[str, str, object]]:
    import pyarrow as pa

    number = 0
    with path.open("rb") as fh:
        try:
            for batch in _arrow_batches(path, fmt, fh):
                for row in batch.to_pylist():  # nested columns: lists and dicts
                    number += 1
                    yield f"{path}:row {number}", row_json(row), row
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            name = "Parquet" if fmt == "parquet" else "Arrow"
            where = f" after row {number}" if number else ""
            raise UserError(f"{path}: not readable as a {name} file{where} ({str(exc).splitlines()[0][:200]}); "
                            "check that the file is whole (a download cut short?), or set ds_type to the "
                            "format it is in") from None
    if not number:
        yield str(path), "", WholeFile("empty_file", f"a {fmt.capitalize()} file with no rows")


def dataset_files(specs, config_dir: Path | None = None, *, first: int = 0) -> list[Path]:
    """The files named by the config's `datasets:` entries (DatasetSpec), in order. `first` is
    the index of specs[0] in `datasets:`, for messages."""
    files = []
    for i, spec in enumerate(specs, start=first):
        base = Path(spec.path).expanduser()
        if not base.exists() and config_dir is not None and (config_dir / base).exists():
            log.info("datasets[%d].path %s: not in %s; using %s", i, spec.path, Path.cwd(), config_dir / base)
            base = config_dir / base
        if base.is_dir():
            files += _directory_files(base, spec, f"datasets[{i}]")
        elif base.exists():
            files.append(base)
        elif _looks_like_hub_id(spec.path):
            files += _repo_files(_hub_snapshot(spec.path, f"datasets[{i}].path"), spec, f"datasets[{i}]")
        else:
            raise UserError(f"datasets[{i}].path: {spec.path}: no such file or directory (relative paths start "
                            f"at {Path.cwd()}); name a local file or directory, or a hub dataset id (owner/name) "
                            "that is in the Hugging Face cache")
    return files


def _looks_like_hub_id(path: str) -> bool:
    return bool(HUB_ID.match(path)) and not path.startswith((".", "~")) and Path(path).suffix.lower() not in FORMATS


def _directory_files(base: Path, spec, where: str) -> list[Path]:
    """A local directory's files: `data_files` (names or glob patterns inside it, else as they are
    written: relative to the current directory, as Axolotl reads them), else the files of
    `split`, found as datasets.load_dataset(directory, split=...) finds them, which Axolotl calls
    (_repo_files: train.jsonl and test.jsonl are two splits; files named for no split are all train)."""
    if spec.data_files:
        files = []
        for name in spec.data_files:
            # inside the directory; else as given (Axolotl passes data_files to load_dataset as they are)
            roots = [base, Path()] if not Path(name).is_absolute() else [Path()]
            if not any(c in name for c in "*?["):
                files.append(next((r / name for r in roots if (r / name).exists()), base / name))  # missing:
                continue  # load_files' "no such file"
            matched = next((m for r in roots if (m := sorted(p for p in r.glob(name) if p.is_file()))), [])
            if not matched:
                raise UserError(f"{where}.data_files: {name!r} matches no file in {base}")
            files += matched
        return files
    return _repo_files(base, spec, where)


def _hub_snapshot(repo_id: str, where: str) -> Path:
    """The local snapshot of hub dataset `repo_id` (huggingface_hub's snapshot_download with
    local_files_only: the cache's refs/main and snapshots/<commit>, never the network)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        why = str(exc).split(". ")[0][:200] if "incomplete" in str(exc) else "not in the cache"
        raise UserError(
            f"{where}: {repo_id}: no such local file or directory (relative paths start at {Path.cwd()}), and "
            f"the hub dataset {repo_id} is not on this machine ({why}; Hugging Face cache: "
            f"{constants.HF_HUB_CACHE}). tutorforge does not download datasets. On a machine with network run "
            f"`hf download --repo-type dataset {repo_id}` (huggingface-hub < 1.0: `huggingface-cli download "
            f"--repo-type dataset {repo_id}`), then copy the cache's datasets--{repo_id.replace('/', '--')} folder "
            "into HF_HUB_CACHE here, or copy the downloaded files and point path at them (or save the rows "
            f"there with datasets.load_dataset({repo_id!r}, split=...).to_parquet(\"rows.parquet\")).") from None


def _repo_files(root: Path, spec, where: str) -> list[Path]:
    """The files of split `spec.split` of configuration `spec.name` of a dataset repository at `root`
    (a hub snapshot, or a copy of one), resolved as datasets.load_dataset resolves them offline, with
    its own helpers: README.md's `configs:` (LocalDatasetModuleFactory), else the hub's file naming
    (datasets.data_files.get_data_patterns); `data_files`, when given, are patterns inside `root`,
    all of split train (as load_dataset(path, data_files=[...]) makes them)."""
    from datasets.data_files import DataFilesDict, get_data_patterns, sanitize_patterns
    from datasets.load import LocalDatasetModuleFactory

    if "[" in spec.split:
        raise UserError(f"{where}.split: {spec.split!r}: slices of a split are not supported; name the whole "
                        "split (val_set_size holds rows out)")
    try:
        if spec.data_files:
            splits = DataFilesDict.from_patterns(sanitize_patterns(list(spec.data_files)), base_path=str(root))
        elif spec.name and (root / spec.name).is_dir() and spec.name not in _configs(root):
            splits = DataFilesDict.from_patterns(get_data_patterns(str(root / spec.name)), str(root / spec.name))
        else:
            splits = _config_files(LocalDatasetModuleFactory(str(root)).get_module(), root, spec, where)
    except (FileNotFoundError, ValueError) as exc:  # EmptyDatasetError; README.md's configs: malformed
        raise UserError(f"{where}: {root}: {str(exc).strip().splitlines()[0][:300]}; check path, data_files, "
                        "name and the dataset's README.md") from None
    if spec.split not in splits:
        raise UserError(f"{where}.split: {spec.split!r}: {root} has the split(s) "
                        f"{', '.join(map(str, splits))}; set split to one of them")
    absolute = root.resolve()  # datasets gives absolute paths; keep the path as the config names it
    files = [root / Path(f).relative_to(absolute) if Path(f).is_relative_to(absolute) else Path(f)
             for f in splits[spec.split]]
    if not files:  # datasets drops a glob that matches nothing
        what = f"data_files: {', '.join(spec.data_files)}" if spec.data_files else f"split: {spec.split}"
        raise UserError(f"{where}.{what}: no file of {root} matches; name files inside the dataset "
                        "(data_files: [data/train-*.parquet])")
    readable = [f for f in files if f.suffix.lower() in FORMATS]
    if not readable:
        suffixes = ", ".join(sorted({f.suffix or f.name for f in files}))
        raise UserError(f"{where}: {root}: split {spec.split} holds {suffixes} files; tutorforge reads "
                        f"{', '.join(FORMATS)}: convert them, or point path at other files")
    if skipped := [f.name for f in files if f not in readable]:
        log.info("%s: %d file(s) of split %s not read (not a data format): %s", where, len(skipped),
                 spec.split, ", ".join(skipped[:5]))
    return readable


def _configs(root: Path) -> list[str]:
    """The configuration names README.md's `configs:` declares (datasets' MetadataConfigs)."""
    from datasets.load import LocalDatasetModuleFactory

    try:
        params = LocalDatasetModuleFactory(str(root)).get_module().builder_configs_parameters
    except (FileNotFoundError, ValueError):  # no data files, or a malformed card: _repo_files says which
        return []
    return list(params.metadata_configs or {})


def _config_files(module, root: Path, spec, where: str) -> dict:
    """{split: files} of configuration `spec.name` (None: the default one) of a datasets module."""
    params = module.builder_configs_parameters
    configs = {c.name: c for c in params.builder_configs or []}
    name = spec.name or params.default_config_name or (next(iter(configs)) if len(configs) == 1 else None)
    if name not in configs:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        choices = ", ".join(dict.fromkeys([*(params.metadata_configs or {}), *folders])) or "none"
        what = f"no configuration {spec.name!r}" if spec.name else "several configurations"
        raise UserError(f"{where}.name: {root}: {what}; set name to one of: {choices}")
    data_files = configs[name].data_files
    return data_files.resolve(str(root)) if hasattr(data_files, "resolve") else data_files
