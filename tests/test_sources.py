"""sources.py: a dataset's rows from CSV, Parquet and Arrow files, directories, data_files and the
local Hugging Face cache, every row through data.py's own checks: rows read = accepted + rejected."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tutorforge.config import load_config
from tutorforge.data import load_datasets, load_files
from tutorforge.errors import UserError
from tutorforge.sources import dataset_files

GOOD = {"instruction": "Say hi", "input": "", "output": "hi"}
CHAT = [{"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "A sequence."}]


def nothing_lost(report) -> None:
    assert report.rows_read == len(report.rows) + len(report.row_rejects)


def rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def write_arrow(path: Path, table: pa.Table, *, stream: bool = True) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema) if stream else pa.ipc.new_file(sink, table.schema)
        writer.write_table(table, max_chunksize=2)  # several record batches: the row count runs on
        writer.close()
    return path


def entries(write_config, tmp_path: Path, *entries: str):
    """load_datasets on `datasets:` entries, each given as its YAML lines after `- `."""
    text = "".join("  - " + e.replace("\n", "\n    ") + "\n" for e in entries)
    cfg = load_config(write_config(f"base_model: smollm2\nadapter: lora\ndatasets:\n{text}"))
    return cfg.datasets


def test_csv_rows_are_named_by_the_line_where_they_start(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b'instruction,input,output\r\n'
                     b'"Explain\nthis, please",,"It is ""x""."\r\n'  # a record over two lines, quoted ""
                     b'\r\n'  # a blank line: skipped, noted
                     b'Say hi,,hi\n'
                     b'caf\xe9,,latin-1 byte\n'  # not UTF-8: rejected, kept byte for byte
                     b'short row\n'  # no output cell
                     b'Empty out,,\n'
                     b'Say hi,,hi\n')  # a duplicate
    report = load_files([path])
    nothing_lost(report)
    assert report.rows_read == 6
    assert [(r.source, r.instruction, r.input, r.output) for r in report.rows] == [
        (f"{path}:2", "Explain\nthis, please", "", 'It is "x".'), (f"{path}:5", "Say hi", "", "hi")]
    assert [(r.source, r.kind) for r in report.rejects] == [
        (f"{path}:6", "invalid_utf8"), (f"{path}:7", "missing_field"), (f"{path}:8", "empty_field"),
        (f"{path}:9", "duplicate")]
    assert json.loads(report.rows[0].raw) == {"instruction": "Explain\nthis, please", "input": "",
                                              "output": 'It is "x".'}  # the row as JSON text
    assert report.rejects[0].raw.encode("utf-8", "surrogateescape") == (
        b'{"instruction": "caf\xe9", "input": "", "output": "latin-1 byte"}')  # byte for byte
    assert json.loads(report.rejects[1].raw) == {"instruction": "short row"}
    assert f"{path}: 1 blank line(s) skipped" in report.notes


def test_parquet_and_arrow_rows_get_the_same_checks_as_json(tmp_path):
    table = rows_table([{**GOOD, "id": None}, {**GOOD, "output": "two", "id": None},
                        {**GOOD, "instruction": None, "id": None}, {**GOOD, "output": "four", "id": 4},
                        {**GOOD, "instruction": "   ", "id": None}])
    parquet = tmp_path / "rows.parquet"
    pq.write_table(table, parquet, row_group_size=2)
    stream = write_arrow(tmp_path / "stream.arrow", rows_table([{**GOOD, "output": "six"}, GOOD]))
    ipc_file = write_arrow(tmp_path / "file.arrow", rows_table([{**GOOD, "output": "eight"}]), stream=False)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(rows_table([{"instruction": "Add", "input": "", "output": 3}]), numbers)
    report = load_files([parquet, stream, ipc_file, numbers])
    nothing_lost(report)
    assert (report.rows_read, len(report.rows)) == (9, 5)
    assert [r.source for r in report.rows] == [f"{parquet}:row 1", f"{parquet}:row 2", f"{parquet}:row 4",
                                               f"{stream}:row 1", f"{ipc_file}:row 1"]
    assert [(r.source, r.kind) for r in report.rejects] == [
        (f"{parquet}:row 3", "wrong_type"), (f"{parquet}:row 5", "empty_field"),
        (f"{stream}:row 2", "duplicate"), (f"{numbers}:row 1", "wrong_type")]
    assert "duplicate of " + f"{parquet}:row 1" in report.rejects[2].reason
    assert json.loads(report.rejects[0].raw) == {**GOOD, "instruction": None, "id": None}
    assert report.extra_keys == {"id": 3}  # a column of that file: a key of each of its accepted rows


def test_a_parquet_messages_column_is_read_as_conversations(write_config, tmp_path):
    path = tmp_path / "chat.parquet"
    pq.write_table(rows_table([{"messages": CHAT}, {"messages": CHAT[:1]}, {"messages": []}]), path)
    report = load_datasets(entries(write_config, tmp_path, f"path: {path}\ntype: chat_template"))
    nothing_lost(report)
    assert [(r.source, r.instruction, r.output, len(r.turns)) for r in report.rows] == [
        (f"{path}:row 1", "What is a list?", "A sequence.", 2)]
    assert [r.kind for r in report.rejects] == ["no_trainable_turn", "not_a_conversation"]


def test_ds_type_overrides_the_suffix(write_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.txt").write_text("instruction\toutput\nSay hi\thi\n")
    (tmp_path / "rows.data").write_text("instruction,output\nSay hi,hi\nTwo,2\n")
    pq.write_table(rows_table([GOOD]), tmp_path / "rows.bin")
    (tmp_path / "lines.csv").write_text(json.dumps(GOOD) + "\n")
    as_csv = load_datasets(entries(write_config, tmp_path, "path: rows.data\nds_type: csv"))
    assert [r.output for r in as_csv.rows] == ["hi", "2"]
    assert [r.output for r in load_datasets(entries(write_config, tmp_path, "path: rows.bin\nds_type: parquet"))
            .rows] == ["hi"]
    as_json = load_datasets(entries(write_config, tmp_path, "path: lines.csv\nds_type: jsonl"))
    assert [r.source for r in as_json.rows] == ["lines.csv:1"]
    by_suffix = load_datasets(entries(write_config, tmp_path, "path: lines.csv"))  # a CSV whose header is JSON
    assert (by_suffix.rows_read, len(by_suffix.rows)) == (0, 0)
    assert [r.kind for r in by_suffix.rejects] == ["empty_file"]
    with pytest.raises(UserError, match=r"datasets\[0\].ds_type: 'text': `text` is not supported"):
        entries(write_config, tmp_path, "path: rows.txt\nds_type: text")


def test_a_directory_is_read_by_split_as_load_dataset_reads_it(write_config, tmp_path, monkeypatch):
    """Axolotl reads a directory with datasets.load_dataset(directory, split=...): files named for a
    split are that split's, files named for none are all train (sorted, subfolders included)."""
    monkeypatch.chdir(tmp_path)
    shards, splits = tmp_path / "shards", tmp_path / "splits"
    for folder in (shards, splits, shards / "more"):
        folder.mkdir()
    for path, output in ((shards / "part-1.jsonl", "b"), (shards / "part-0.jsonl", "a"),
                         (shards / "more" / "part-2.jsonl", "c"), (splits / "train.jsonl", "t"),
                         (splits / "test.jsonl", "v")):
        path.write_text(json.dumps({**GOOD, "output": output}) + "\n")
    (shards / "README.md").write_text("# rows\n")  # a dataset card holds no rows
    every = entries(write_config, tmp_path, "path: shards")
    assert [f.resolve().relative_to(shards).as_posix() for f in dataset_files(every)] == [
        "more/part-2.jsonl", "part-0.jsonl", "part-1.jsonl"]
    report = load_datasets(every)
    assert ([r.output for r in report.rows], report.rows_read, report.rejects) == (["c", "a", "b"], 3, [])
    assert [r.output for r in load_datasets(entries(write_config, tmp_path, "path: splits")).rows] == ["t"]
    assert [r.output for r in load_datasets(entries(write_config, tmp_path, "path: splits\nsplit: test")).rows] == ["v"]
    with pytest.raises(UserError, match=r"datasets\[0\].split: 'dev': .* has the split\(s\) train, test"):
        dataset_files(entries(write_config, tmp_path, "path: splits\nsplit: dev"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.csv").write_text("instruction,input,output\nSay hi,,a\n")
    pq.write_table(rows_table([{**GOOD, "output": "b"}]), mixed / "b.parquet")
    picked = entries(write_config, tmp_path, "path: mixed\ndata_files: [a.csv, '*.parquet']")
    assert [f.name for f in dataset_files(picked)] == ["a.csv", "b.parquet"]
    assert [r.output for r in load_datasets(picked).rows] == ["a", "b"]
    with pytest.raises(UserError, match=r"datasets\[0\].data_files: '\*.tsv' matches no file in mixed"):
        dataset_files(entries(write_config, tmp_path, "path: mixed\ndata_files: ['*.tsv']"))


def test_a_directory_saved_by_datasets_is_read_by_split(write_config, tmp_path, monkeypatch):
    """What Axolotl reads with load_from_disk: save_to_disk's Arrow files, its JSON metadata left out."""
    import datasets

    monkeypatch.chdir(tmp_path)
    train = datasets.Dataset.from_list([{**GOOD, "output": f"train {i}"} for i in range(3)])
    train.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": train, "test": train.select([1])}).save_to_disk(str(tmp_path / "splits"))
    one = load_datasets(entries(write_config, tmp_path, "path: one"))
    assert ([r.output for r in one.rows], one.rejects) == (["train 0", "train 1", "train 2"], [])
    assert dataset_files(entries(write_config, tmp_path, "path: splits")) == [
        Path("splits/train/data-00000-of-00001.arrow")]  # named as the config names the directory
    test = load_datasets(entries(write_config, tmp_path, "path: splits\nsplit: test"))
    assert [(r.source, r.output) for r in test.rows] == [("splits/test/data-00000-of-00001.arrow:row 1", "train 1")]


def test_unreadable_files_are_named_errors_or_whole_file_rejects(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(rows_table([GOOD] * 3), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-40])
    (tmp_path / "open.csv").write_text('instruction,output\nSay hi,hi\n"never closed,x\nmore,rows\n')
    (tmp_path / "wide.csv").write_text("instruction,output\nSay hi,hi\nSay, hi,hi\n")
    (tmp_path / "twice.csv").write_text("instruction,output,output\na,b,c\n")
    for name, message in [("cut.parquet", r"cut.parquet: not readable as a Parquet file .*check that the file is "
                           "whole"), ("open.csv", r"open.csv:3: not readable as CSV .*must be quoted"),
                          ("wide.csv", r"wide.csv:3: 3 cells where the header has 2; quote a cell"),
                          ("twice.csv", r"twice.csv:1: the header names 'output' twice")]:
        with pytest.raises(UserError, match=message):
            load_files([tmp_path / name])
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("instruction,output\nSay hi,hi\n".encode("utf-16"))
    header_only = tmp_path / "header.csv"
    header_only.write_text("instruction,input,output\n\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    no_rows = tmp_path / "none.parquet"
    pq.write_table(rows_table([GOOD]).slice(0, 0), no_rows)
    report = load_files([utf16, header_only, empty, no_rows, good])
    assert [(r.source, r.kind) for r in report.file_rejects] == [
        (f"{utf16}:1", "not_utf8"), (f"{header_only}:1", "empty_file"), (f"{empty}:1", "empty_file"),
        (str(no_rows), "empty_file")]
    assert "UTF-16 text, not UTF-8: save the file as UTF-8" == report.rejects[0].reason
    assert (report.rows_read, len(report.rows), len(report.row_rejects)) == (3, 1, 2)  # good.parquet: 2 duplicates
    with pytest.raises(UserError, match="a directory; name a data file"):
        load_files([tmp_path])


def fake_hub_dataset(cache: Path, repo_id: str, files: dict[str, str | bytes]) -> Path:
    """A dataset in a Hugging Face cache laid out as huggingface_hub writes it: blobs named by their
    hash, the snapshot's files links to them, refs/main the snapshot's commit."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def parquet_bytes(tmp_path: Path, rows: list[dict]) -> bytes:
    pq.write_table(rows_table(rows), tmp_path / "tmp.parquet")
    return (tmp_path / "tmp.parquet").read_bytes()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


def test_a_hub_dataset_is_read_from_the_local_cache(write_config, tmp_path, hub_cache):
    train = [{**GOOD, "output": f"train {i}"} for i in range(3)]
    snapshot = fake_hub_dataset(hub_cache, "org/tutor", {
        "README.md": "# a dataset card without configs\n",
        "data/train-00000-of-00002.parquet": parquet_bytes(tmp_path, train[:2]),
        "data/train-00001-of-00002.parquet": parquet_bytes(tmp_path, train[2:]),
        "data/test-00000-of-00001.parquet": parquet_bytes(tmp_path, [{**GOOD, "output": "test"}]),
        "extra/more.jsonl": json.dumps({**GOOD, "output": "more"}) + "\n"})
    default = load_datasets(entries(write_config, tmp_path, "path: org/tutor"))
    nothing_lost(default)
    assert [r.output for r in default.rows] == ["train 0", "train 1", "train 2"]
    assert default.rows[2].source == f"{snapshot}/data/train-00001-of-00002.parquet:row 1"
    assert [r.output for r in load_datasets(entries(write_config, tmp_path, "path: org/tutor\nsplit: test"))
            .rows] == ["test"]
    picked = load_datasets(entries(write_config, tmp_path, "path: org/tutor\ndata_files: [extra/*.jsonl]"))
    assert [r.output for r in picked.rows] == ["more"]
    with pytest.raises(UserError, match=r"datasets\[0\].split: 'validation': .* has the split\(s\) train, test"):
        dataset_files(entries(write_config, tmp_path, "path: org/tutor\nsplit: validation"))
    with pytest.raises(UserError, match=r"datasets\[0\].split: 'train\[:10\]': slices of a split are not"):
        dataset_files(entries(write_config, tmp_path, "path: org/tutor\nsplit: 'train[:10]'"))


def test_a_hub_dataset_configuration_is_chosen_by_name(write_config, tmp_path, hub_cache):
    card = ("---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  - split: train\n"
            "    path: english/train.csv\n- config_name: fr\n  data_files:\n  - split: train\n"
            "    path: french/*.jsonl\n---\n# two configurations\n")
    fake_hub_dataset(hub_cache, "org/multi", {
        "README.md": card, "english/train.csv": "instruction,input,output\nSay hi,,hello\n",
        "french/train.jsonl": json.dumps({**GOOD, "output": "salut"}) + "\n"})
    fake_hub_dataset(hub_cache, "org/folders", {  # configurations as folders, as the parquet export has them
        "de/train/0000.parquet": parquet_bytes(tmp_path, [{**GOOD, "output": "hallo"}]),
        "es/train/0000.parquet": parquet_bytes(tmp_path, [{**GOOD, "output": "hola"}])})

    def outputs(entry: str) -> list[str]:
        return [r.output for r in load_datasets(entries(write_config, tmp_path, entry)).rows]

    assert outputs("path: org/multi") == ["hello"]
    assert outputs("path: org/multi\nname: fr") == ["salut"]
    assert outputs("path: org/folders\nname: es") == ["hola"]
    with pytest.raises(UserError, match=r"datasets\[0\].name: .*no configuration 'it'; set name to one of: en, fr"):
        dataset_files(entries(write_config, tmp_path, "path: org/multi\nname: it"))


def test_a_hub_dataset_not_in_the_cache_says_how_to_get_it(write_config, tmp_path, hub_cache):
    with pytest.raises(UserError) as caught:
        dataset_files(entries(write_config, tmp_path, "path: someone/missing"))
    text = str(caught.value)
    assert text.startswith("datasets[0].path: someone/missing: no such local file or directory")
    assert f"Hugging Face cache: {hub_cache}" in text
    assert "hf download --repo-type dataset someone/missing" in text and "datasets--someone--missing" in text
    with pytest.raises(UserError, match=r"datasets\[0\].path: data/rows.parquet: no such file or directory"):
        dataset_files(entries(write_config, tmp_path, "path: data/rows.parquet"))


def test_nothing_is_lost_across_formats(tmp_path):
    rows = [GOOD, {**GOOD, "output": ""}, {"instruction": "x"}, {**GOOD, "output": "ok"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{bad\n")
    (tmp_path / "b.csv").write_text("instruction,input,output\n" + "".join(
        f"{r['instruction']},,{r.get('output', '')}\n" for r in rows))
    pq.write_table(rows_table([{**GOOD, **r} for r in rows]), tmp_path / "c.parquet")
    write_arrow(tmp_path / "d.arrow", rows_table([{**GOOD, "output": f"new {i}"} for i in range(3)]))
    report = load_files(sorted(tmp_path.iterdir()))
    nothing_lost(report)
    assert (report.rows_read, len(report.rows), len(report.rejects)) == (16, 6, 10)
    assert report.counts() == {"duplicate": 4, "empty_field": 4, "missing_field": 1, "malformed_json": 1}


def test_data_files_may_be_written_as_axolotl_passes_them(write_config, tmp_path, monkeypatch):
    """Axolotl gives a local directory's data_files to load_dataset as they are (relative to the
    current directory); inside `path` is tried first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({**GOOD, "output": "t"}) + "\n")
    (tmp_path / "data" / "more.jsonl").write_text(json.dumps({**GOOD, "output": "m"}) + "\n")
    for data_files in ("[data/train.jsonl, more.jsonl]", "['data/t*.jsonl', 'm*.jsonl']"):
        spec = entries(write_config, tmp_path, f"path: data\ndata_files: {data_files}")
        assert [r.output for r in load_datasets(spec).rows] == ["t", "m"]
