"""lint.py and `tutorforge data lint`: findings per row, a summary, exit code 1 on any failure."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT
from tutorforge import cli


def lint_file(tmp_path, rows, capsys, *extra):
    path = tmp_path / "d.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    code = cli.main(["data", "lint", str(path), *extra])
    return code, capsys.readouterr().out, path


def test_failures_are_listed_per_row_and_exit_1(tmp_path, capsys, bundled):
    rows = [
        {"instruction": "a", "input": "", "output": "Fine.\n\n```python\nprint(1 + 1)  # 2\n```"},
        {"instruction": "b", "input": "", "output": "Wrong claim.\n\n```python\nprint(1 + 1)  # 3\n```"},
        {"instruction": "c", "input": "", "output": "Crash.\n\n```python\nprint(undefined)\n```"},
        {"instruction": "d", "input": "", "output": "Shell.\n\n```bash\nls -la\n```"},
        {"instruction": "e", "input": "", "output": "def f(x):\n    return x"},
        {"instruction": "a", "input": "", "output": "Fine.\n\n```python\nprint(1 + 1)  # 2\n```"},
        "{broken",
    ]
    code, out, path = lint_file(tmp_path, rows, capsys)
    assert code == 1
    assert f"{path}:2 block 1: mismatch: line 1 states '3' but printed '2'" in out
    assert f"{path}:3 block 1: error: exit 1: NameError" in out
    assert f"{path}:6: duplicate: duplicate of {path}:1" in out
    assert f"{path}:7: malformed_json" in out
    assert "python blocks: 3 run, 1 ok, 1 error, 1 mismatch" in out
    assert "1 blocks in other languages (bash 1), 1 rows of unfenced Python" in out
    assert out.rstrip().endswith("FAIL")


def test_clean_file_passes(tmp_path, capsys, bundled):
    rows = [{"instruction": "a", "input": "", "output": "Sum.\n\n```python\nprint(sum([1, 2]))  # 3\n```"}]
    code, out, _ = lint_file(tmp_path, rows, capsys)
    assert code == 0 and "OK: every row usable" in out


def test_rows_over_sequence_len_are_counted(tmp_path, capsys, bundled, write_config):
    config = write_config("base_model: smollm2\nadapter: lora\nsequence_len: 64\n")
    rows = [{"instruction": "a", "input": "", "output": "word " * 100}, {"instruction": "b", "output": "ok"}]
    code, out, path = lint_file(tmp_path, rows, capsys, "--config", str(config), "--no-run-code")
    assert code == 1
    assert "1 of 2 over sequence_len 64" in out and f"{path}:1: too_long" in out


@pytest.mark.slow
def test_shipped_dataset_lints_clean(capsys, bundled):
    code = cli.main(["data", "lint", str(ROOT / "data" / "python_tutor.jsonl"),
                     "--config", str(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 rejected" in out and "OK: every row usable, every Python block runs as stated" in out


@pytest.mark.slow
def test_code_alpaca_runs_and_reports_unfenced_code(shared_data, capsys, bundled):
    code = cli.main(["data", "lint", str(shared_data / "code_alpaca_2k.json")])
    out = capsys.readouterr().out
    assert "2017 rows read" in out and "empty_field 2" in out
    unfenced = int(out.split(" rows of unfenced Python")[0].rsplit(", ", 1)[1])
    assert unfenced > 500  # most of its code is unfenced: detected and reported as not checked
    assert code == 1  # two rows have an empty output
