"""data.py: Alpaca loading where every row read is accepted or rejected with file:line and reason;
prepare.py: what the rejects mean, and rows tokenised, filtered and split for training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from tutorforge.data import MAX_LINE_BYTES, dataset_files, load_files
from tutorforge.errors import UserError
from tutorforge.prepare import DataError, accept, prepare

GOOD = {"instruction": "Say hi", "input": "", "output": "hi"}


def jsonl(tmp_path: Path, lines: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    raw = [line if isinstance(line, bytes) else
           (line if isinstance(line, str) else json.dumps(line)).encode() for line in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def kinds(report) -> list[tuple[str, str]]:
    return [(r.source.rsplit(":", 1)[1], r.kind) for r in report.rejects]


@pytest.mark.parametrize("line, kind, reason", [
    ('{"instruction": "a", "output": "b"', "malformed_json", "malformed JSON"),
    ({"instruction": "a"}, "missing_field", "missing 'output'"),
    ({"output": "b"}, "missing_field", "missing 'instruction'"),
    ({"instruction": "a", "output": "   "}, "empty_field", "'output' is empty"),
    ({"instruction": "", "output": "b"}, "empty_field", "'instruction' is empty"),
    ({"instruction": 5, "output": "b"}, "wrong_type", "'instruction' is a JSON number"),
    ({"instruction": "a", "input": 3, "output": "b"}, "wrong_type", "'input' is a JSON number"),
    ({"instruction": "a", "output": ["b"]}, "wrong_type", "'output' is a JSON array"),
    (["a", "b"], "not_an_object", "a JSON array, not an object"),
    ('"just a string"', "not_an_object", "a JSON string"),
    (b'{"instruction": "caf\xe9", "output": "b"}', "invalid_utf8", "not UTF-8"),
])
def test_each_bad_row_is_rejected_with_line_and_reason(tmp_path, line, kind, reason):
    path = jsonl(tmp_path, [GOOD, line, {**GOOD, "output": "hello"}])
    report = load_files([path])
    assert report.rows_read == 3 and len(report.rows) == 2
    assert kinds(report) == [("2", kind)]
    assert reason in report.rejects[0].reason
    assert report.rejects[0].source == f"{path}:2"


def test_optional_input_and_null_input(tmp_path):
    report = load_files([jsonl(tmp_path, [{"instruction": "a", "output": "b"},
                                          {"instruction": "c", "input": None, "output": "d"}])])
    assert [r.input for r in report.rows] == ["", ""] and not report.rejects


def test_extra_keys_are_ignored_and_counted(tmp_path):
    report = load_files([jsonl(tmp_path, [{**GOOD, "id": 1, "lang": "en"}, {**GOOD, "output": "x", "id": 2}])])
    assert report.extra_keys == {"id": 2, "lang": 1}
    assert "extra keys ignored: id (2 rows), lang (1 rows)" in report.summary()


def test_bom_and_crlf_are_read_and_noted(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n"
                     + json.dumps({**GOOD, "output": "two"}).encode() + b"\r\n")
    report = load_files([path])
    assert [r.output for r in report.rows] == ["hi", "two"] and not report.rejects
    assert any("byte-order mark removed" in n for n in report.notes)
    assert any("CRLF" in n for n in report.notes)


def test_duplicates_are_rejected_with_the_first_occurrence(tmp_path):
    a = jsonl(tmp_path, [GOOD, {**GOOD, "output": "x"}, {**GOOD, "instruction": " Say hi "}], "a.jsonl")
    b = jsonl(tmp_path, [GOOD], "b.jsonl")
    report = load_files([a, b])
    assert kinds(report) == [("3", "duplicate"), ("1", "duplicate")]
    assert f"duplicate of {a}:1" in report.rejects[1].reason


def test_empty_file_and_blank_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    report = load_files([empty])
    assert kinds(report) == [("1", "empty_file")] and report.rows_read == 0
    spaced = jsonl(tmp_path, [GOOD, "", "  ", {**GOOD, "output": "x"}], "spaced.jsonl")
    report = load_files([spaced])
    assert len(report.rows) == 2 and any("2 blank line(s) skipped" in n for n in report.notes)


def test_huge_line(tmp_path):
    huge = {**GOOD, "output": "x" * (MAX_LINE_BYTES + 10)}
    report = load_files([jsonl(tmp_path, [GOOD, huge])])
    assert kinds(report) == [("2", "huge_line")]
    assert report.rejects[0].raw == json.dumps(huge)  # kept verbatim


def test_json_array_files_with_line_numbers(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"},\n'
                    '  {"instruction": "d", "input": "e", "output": "f"}\n]\n')
    report = load_files([path])
    assert [r.source for r in report.rows] == [f"{path}:2", f"{path}:4"]
    assert kinds(report) == [("3", "missing_field")]
    bad_row = tmp_path / "bad_row.json"  # one malformed element is a reject; the rest are read
    bad_row.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c",,},\n'
                       ' {"instruction": "d", "output": "e"}\n]')
    report = load_files([bad_row])
    assert kinds(report) == [("3", "malformed_json")] and [r.output for r in report.rows] == ["b", "e"]
    assert report.rejects[0].raw == '{"instruction": "c",,}'
    for name, broken in [("unterminated", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c\n]'),
                         ("no_comma", '[\n {"instruction": "a", "output": "b"}\n {"instruction": "c"}\n]'),
                         ("unclosed", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c"\n]')]:
        path = tmp_path / f"{name}.json"
        path.write_text(broken)
        with pytest.raises(UserError, match=rf"{name}.json:3: malformed JSON array"):
            load_files([path])


def test_default_stops_with_first_20_problems_and_counts(tmp_path):
    lines = [GOOD] + [{"instruction": f"q{i}"} for i in range(25)] + ["{bad"] * 3
    report = load_files([jsonl(tmp_path, lines)])
    with pytest.raises(DataError) as caught:
        accept(report, skip_bad_rows=False, rejects_path=tmp_path / "rejected.jsonl")
    text = str(caught.value)
    assert text.count("missing 'output'") == 20 and "... and 8 more" in text
    assert "28 unusable of 29 rows read (missing_field: 25, malformed_json: 3)" in text
    assert "--skip-bad-rows" in text
    assert not (tmp_path / "rejected.jsonl").exists()


def test_skip_bad_rows_writes_rejects_verbatim_and_counts_add_up(tmp_path):
    bad_bytes = b'{"instruction": "caf\xe9", "output": "b"}'
    lines = [GOOD, "{bad json", {"instruction": "a"}, bad_bytes, GOOD, {**GOOD, "output": "ok"}]
    path = jsonl(tmp_path, lines)
    report = load_files([path])
    rows = accept(report, skip_bad_rows=True, rejects_path=tmp_path / "out" / "rejected.jsonl")
    assert len(rows) + len(report.rejects) == report.rows_read == 6
    written = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [w["kind"] for w in written] == ["malformed_json", "missing_field", "invalid_utf8", "duplicate"]
    assert written[0]["raw"] == "{bad json" and written[0]["source"] == f"{path}:2"
    assert written[2]["raw"].encode("utf-8", "surrogateescape") == bad_bytes  # byte for byte
    assert all(w["reason"] for w in written)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_files([tmp_path / "nope.jsonl"])
    with pytest.raises(UserError, match="a directory"):
        load_files([tmp_path])


def test_dataset_entries_are_concatenated(tmp_path, write_config, monkeypatch):
    from tutorforge.config import load_config

    jsonl(tmp_path, [GOOD], "one.jsonl")
    (tmp_path / "dir").mkdir()
    jsonl(tmp_path / "dir", [{**GOOD, "output": "2"}], "two.jsonl")
    jsonl(tmp_path / "dir", [{**GOOD, "output": "3"}], "three.jsonl")
    array = tmp_path / "four.json"
    array.write_text(json.dumps([{**GOOD, "output": "4"}]))
    cfg = load_config(write_config("base_model: smollm2\nadapter: lora\ndatasets:\n  - path: one.jsonl\n"
                                   "  - path: dir\n    data_files: [two.jsonl]\n  - path: four.json\n"))
    monkeypatch.chdir(tmp_path)
    files = dataset_files(cfg.datasets)
    assert [f.name for f in files] == ["one.jsonl", "two.jsonl", "four.json"]
    assert [r.output for r in load_files(files).rows] == ["hi", "2", "4"]


@pytest.fixture
def smol_tokenizer(bundled_tokenizer):
    return bundled_tokenizer


def _config(write_config, tmp_path, data: Path, extra: str = ""):
    from tutorforge.config import load_config

    return load_config(write_config(f"base_model: smollm2\nadapter: lora\nsequence_len: 128\n"
                                    f"datasets:\n  - path: {data}\noutput_dir: {tmp_path / 'out'}\n{extra}"))


def test_skip_bad_rows_config_key(write_config, tmp_path, smol_tokenizer):
    data = jsonl(tmp_path, [GOOD, "{bad"])
    cfg = _config(write_config, tmp_path, data, "tutorforge:\n  skip_bad_rows: true\n")
    assert len(prepare(cfg, smol_tokenizer, skip_bad_rows=False).train) == 1


def test_prepare_held_out_is_never_trained_on(write_config, tmp_path, smol_tokenizer):
    rows = [{**GOOD, "instruction": f"question {i}", "output": f"answer {i}"} for i in range(40)]
    data = jsonl(tmp_path, rows)
    cfg = _config(write_config, tmp_path, data, "val_set_size: 0.25\nsample_packing: true\n")
    prepared = prepare(cfg, smol_tokenizer, skip_bad_rows=False)
    assert (len(prepared.train), len(prepared.val)) == (30, 10)
    val_sources = {e.source for e in prepared.val}
    assert val_sources == {r.source for r in prepared.val_rows}
    assert not val_sources & {e.source for e in prepared.train}
    packed_tokens = sorted(t for p in prepared.packs for t in p.input_ids)
    assert packed_tokens == sorted(t for e in prepared.train for t in e.input_ids)
    assert 0 < prepared.efficiency["padded"] <= prepared.efficiency["packed"] <= 1


def test_shipped_dataset_loads_clean():
    report = load_files([ROOT / "data" / "python_tutor.jsonl"])
    assert report.rejects == [] and report.rows_read == len(report.rows) >= 400


def test_shipped_dataset_meets_its_brief():
    """Its size, brevity, code and syllabus. (That it copies no row of the public Alpaca sets is
    checked against them by scripts/dataset_overlap.py, which takes their paths.)"""
    import ast
    import statistics

    rows = load_files([ROOT / "data" / "python_tutor.jsonl"]).rows
    assert len(rows) >= 400
    assert statistics.median(len(r.output.split()) for r in rows) <= 90
    with_code = [r for r in rows if r.input and any(k in r.input for k in ("(", "=", ":", "import"))]
    assert len(with_code) / len(rows) >= 0.15
    assert all("```python" in r.output for r in rows)
    for r in rows:
        for block in r.output.split("```python\n")[1:]:
            ast.parse(block.split("```")[0])
    readme = (ROOT / "data" / "README.md").read_text()
    for topic in ("types", "numbers", "strings", "lists", "tuples", "dicts", "sets", "control flow",
                  "functions", "arguments", "scope", "comprehensions", "iterators and generators",
                  "classes", "dunder methods", "exceptions", "files", "context managers", "modules",
                  "standard library", "typing", "testing", "debugging common errors", "idioms"):
        assert topic in readme.lower(), topic


def array_file(tmp_path: Path, elements: list, name: str = "a.json") -> Path:
    """A JSON array file with element i (a value, or raw JSON text) on line i + 2."""
    path = tmp_path / name
    text = [e if isinstance(e, str) else json.dumps(e) for e in elements]
    path.write_text("[\n" + ",\n".join(text) + "\n]\n")
    return path


def test_an_array_line_in_jsonl_is_a_reject_and_every_later_line_is_read(tmp_path):
    rows = [{**GOOD, "output": f"answer {i}"} for i in range(9)]
    path = jsonl(tmp_path, [rows[:2]] + rows[2:])
    report = load_files([path])
    assert report.rows_read == 8 and len(report.rows) == 7
    assert kinds(report) == [("1", "not_an_object")]
    assert "a JSON array, not an object" in report.rejects[0].reason
    assert any(n.startswith(f"{path}:1: a JSON array on the first line") for n in report.notes)
    as_json = jsonl(tmp_path, [rows[:2]] + rows[2:], "lines.json")  # .json, but not one array
    assert load_files([as_json]).rows_read == 8
    trailing = tmp_path / "trailing.json"
    trailing.write_text(json.dumps([GOOD]) + ' {"instruction": "x", "output": "y"}\n')
    report = load_files([trailing])
    assert report.rows_read == 1 and kinds(report) == [("1", "malformed_json")]


def test_json_array_loads_in_linear_time(tmp_path):
    import time

    rows = [{"instruction": f"Explain item {i} of the list in plain words.", "input": "",
             "output": f"Item {i} is a number; doubled it is {2 * i}. " * 4} for i in range(20_000)]
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(rows, indent=2))
    lines = jsonl(tmp_path, rows, "rows.jsonl")
    started = time.perf_counter()
    assert len(load_files([lines]).rows) == 20_000
    jsonl_s = time.perf_counter() - started
    started = time.perf_counter()
    report = load_files([array])
    array_s = time.perf_counter() - started
    assert len(report.rows) == 20_000 and report.rows[-1].source == f"{array}:{2 + 5 * 19_999}"
    assert array_s < 4 * jsonl_s + 1.0, (array_s, jsonl_s)  # the quadratic reader took 15 s here


DEEP = "[" * 100_000 + "]" * 100_000
PATHOLOGICAL = {  # raw JSON of one row -> (kind, words of its reason)
    "deep": ('{"instruction": "a", "output": "b", "meta": ' + DEEP + "}", "too_deep",
             "nested 100,001 levels deep"),
    "deep_row": (DEEP, "too_deep", "nested 100,000 levels deep"),
    "surrogate": ('{"instruction": "a", "output": "b \\ud800"}', "lone_surrogate", "'output'"),
    "surrogate_input": ('{"instruction": "a", "input": "\\udfff", "output": "b"}', "lone_surrogate",
                        "'input'"),
    "inf": ('{"instruction": "a", "output": "b", "score": 1e999999}', "bad_number", "infinity"),
    "digits": ('{"instruction": "a", "output": "b", "id": ' + "7" * 1_000_000 + "}", "bad_number",
               "1,000,000 digits"),
    "nan": ('{"instruction": "a", "output": "b", "score": NaN}', "bad_number", "NaN"),
}


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize("case", list(PATHOLOGICAL))
def test_no_single_row_aborts_loading(tmp_path, case, fmt):
    raw, kind, words = PATHOLOGICAL[case]
    elements = [GOOD, raw, {**GOOD, "output": "after"}]
    path = jsonl(tmp_path, elements) if fmt == "jsonl" else array_file(tmp_path, elements)
    line = 2 if fmt == "jsonl" else 3
    report = load_files([path])
    assert report.rows_read == 3 and [r.output for r in report.rows] == ["hi", "after"]
    assert kinds(report) == [(str(line), kind)] and words in report.rejects[0].reason
    accept(report, skip_bad_rows=True, rejects_path=tmp_path / "rejected.jsonl")
    written = [json.loads(x) for x in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [(w["source"], w["kind"]) for w in written] == [(f"{path}:{line}", kind)]
    assert written[0]["raw"] == raw and words in written[0]["reason"]


def summary_counts(summary: str) -> tuple[int, int, int, dict[str, int]]:
    import re

    head, kinds_line = summary.splitlines()[:2]
    match = re.fullmatch(r"(\d+) rows read from \d+ file\(s\): (\d+) accepted, (\d+) rejected", head)
    assert match and kinds_line.startswith("rejected by kind: "), summary
    by_kind = {k: int(n) for k, n in (part.rsplit(" ", 1) for part in kinds_line[18:].split(", "))}
    return int(match[1]), int(match[2]), int(match[3]), by_kind


def test_summary_counts_add_up(tmp_path):
    a = jsonl(tmp_path, [GOOD, "{bad", {"instruction": "a"}, GOOD, {**GOOD, "output": "two"}], "a.jsonl")
    b = array_file(tmp_path, [{**GOOD, "output": "three"}, "[1]", {**GOOD, "output": "two"}], "b.json")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    report = load_files([a, empty, b])
    read, accepted, rejected, by_kind = summary_counts(report.summary())
    assert (read, accepted, rejected) == (8, 3, 5)
    assert read == accepted + rejected == report.rows_read and sum(by_kind.values()) == rejected
    assert by_kind == {"duplicate": 2, "malformed_json": 1, "missing_field": 1, "not_an_object": 1}
    assert f"1 file(s) rejected whole: {empty}:1: empty file" in report.summary()
    with pytest.raises(DataError, match=r"5 unusable of 8 rows read \(.*\) and 1 file\(s\) rejected whole"):
        accept(report, skip_bad_rows=False, rejects_path=None)


def test_odd_files_give_named_rejects(tmp_path):
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    utf16_bare = tmp_path / "utf16be.json"
    utf16_bare.write_bytes(json.dumps([GOOD]).encode("utf-16-be"))
    latin1 = jsonl(tmp_path, [GOOD, '{"instruction": "café", "output": "b"}'.encode("latin-1")],
                   "latin1.jsonl")
    empty_array = tmp_path / "empty.json"
    empty_array.write_text(" [ ] \n")
    scalars = array_file(tmp_path, [1, '"text"', None, [GOOD]], "scalars.json")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([{**GOOD, "output": "bom"}]).encode())
    report = load_files([utf16, utf16_bare, latin1, empty_array, scalars, bom])
    assert [(r.source, r.kind) for r in report.rejects] == [
        (f"{utf16}:1", "not_utf8"), (f"{utf16_bare}:1", "not_utf8"), (f"{latin1}:2", "invalid_utf8"),
        (f"{empty_array}:1", "empty_file"), *((f"{scalars}:{n}", "not_an_object") for n in (2, 3, 4, 5))]
    assert "UTF-16" in report.rejects[0].reason and "save the file as UTF-8" in report.rejects[0].reason
    assert "UTF-16-BE" in report.rejects[1].reason
    assert "empty JSON array" in report.rejects[3].reason
    assert [r.reason.split(",")[0] for r in report.rejects[4:8]] == [
        "a JSON number", "a JSON string", "a JSON null", "a JSON array"]
    assert report.rows_read == 7 and [r.source for r in report.rows] == [f"{latin1}:1", f"{bom}:1"]
    assert any("byte-order mark removed" in n for n in report.notes)


@pytest.mark.slow
def test_cli_prepare_skip_bad_rows_survives_every_pathological_row(write_config, tmp_path, capsys, bundled):
    from tutorforge import cli

    bad = [raw for raw, _, _ in PATHOLOGICAL.values()]
    lines = jsonl(tmp_path, [GOOD, {**GOOD, "output": "two"}, *bad])
    array = array_file(tmp_path, [{**GOOD, "output": "three"}, *bad, {**GOOD, "output": "four"}])
    config = write_config(f"base_model: smollm2\nadapter: lora\nsequence_len: 128\nval_set_size: 0\n"
                          f"datasets:\n  - path: {lines}\n  - path: {array}\n"
                          f"output_dir: {tmp_path / 'out'}\n")
    assert cli.main(["data", "prepare", str(config), "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert "18 rows read from 2 file(s): 4 accepted, 14 rejected" in out
    assert "rejected by kind: bad_number 6, too_deep 4, lone_surrogate 4" in out
    written = [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    expected = [kind for _, kind, _ in PATHOLOGICAL.values()]
    assert [w["kind"] for w in written] == expected * 2
    assert [w["source"] for w in written] == ([f"{lines}:{n}" for n in range(3, 10)]
                                              + [f"{array}:{n}" for n in range(3, 10)])


def test_ds_type_says_the_format_of_a_file_without_extension(write_config, tmp_path, monkeypatch):
    from tutorforge.config import load_config
    from tutorforge.data import load_datasets

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows").write_text(json.dumps([GOOD, {**GOOD, "output": "two"}], indent=2))  # an array
    (tmp_path / "lines.json").write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "output": "3"}) + "\n")

    def load(entry: str):
        return load_datasets(load_config(write_config(f"base_model: smollm2\nadapter: lora\n"
                                                      f"datasets:\n  - {entry}\n")).datasets)

    as_json = load("path: rows\n    ds_type: json")
    assert ([r.output for r in as_json.rows], as_json.rows_read) == ([GOOD["output"], "two"], 2)
    as_lines = load("path: rows\n    ds_type: jsonl")  # read line by line: the array's lines are no rows
    assert (len(as_lines.rows), as_lines.rows_read, set(as_lines.counts())) == (0, 12, {"malformed_json"})
    assert [r.source for r in load("path: lines.json\n    ds_type: jsonl").rows] == ["lines.json:1", "lines.json:2"]
    (tmp_path / "rows.csv").write_text("instruction,output\nhi,there\n")
    assert [r.source for r in load("path: rows.csv").rows] == ["rows.csv:2"]  # CSV by its name (sources.py)
    assert [r.output for r in load("path: rows.csv\n    ds_type: csv").rows] == ["there"]
    with pytest.raises(UserError, match=r"datasets\[0\].ds_type: 'text': `text` is not supported: plain-text"):
        load("path: rows.csv\n    ds_type: text")


def test_reading_never_imports_preparing():
    """data.py reads rows and knows nothing of prepare.py (not even inside a function), which
    imports it: the dependency points one way."""
    import tutorforge.data
    from conftest import tutorforge_imports

    assert "tutorforge.prepare" not in tutorforge_imports("data")
    assert "tutorforge.data" in tutorforge_imports("prepare")
    assert not hasattr(tutorforge.data, "prepare") and not hasattr(tutorforge.data, "accept")
