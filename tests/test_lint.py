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


@pytest.mark.slow
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


@pytest.mark.slow
def test_clean_file_passes(tmp_path, capsys, bundled):
    rows = [{"instruction": "a", "input": "", "output": "Sum.\n\n```python\nprint(sum([1, 2]))  # 3\n```"}]
    code, out, _ = lint_file(tmp_path, rows, capsys)
    assert code == 0 and "OK: every row usable" in out


@pytest.mark.slow
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
def test_a_code_alpaca_style_array_runs_and_reports_unfenced_code(tmp_path, capsys, bundled):
    """Rows as Code Alpaca writes them (a JSON array, code without fences, some outputs empty)."""
    import json

    rows = [{"instruction": f"Write a function that adds {n} to a number.", "input": "",
             "output": f"def add_{n}(x):\n    return x + {n}"} for n in range(12)]  # unfenced code
    rows += [{"instruction": f"What is {n} squared?", "input": "", "output": f"{n} squared is {n * n}."}
             for n in range(6)]  # prose
    rows += [{"instruction": "Print a greeting.", "input": "", "output": "```python\nprint('hi')  # hi\n```"}]
    rows += [{"instruction": f"Empty answer {n}", "input": "", "output": ""} for n in range(2)]
    path = tmp_path / "code_alpaca_like.json"
    path.write_text(json.dumps(rows, indent=1))
    code = cli.main(["data", "lint", str(path)])
    out = capsys.readouterr().out
    assert "21 rows read" in out and "empty_field 2" in out
    unfenced = int(out.split(" rows of unfenced Python")[0].rsplit(", ", 1)[1])
    assert unfenced == 12  # every unfenced function is detected and reported as not checked
    assert code == 1  # two rows have an empty output


class ByteTokenizer:
    """One token per UTF-8 byte; like a real tokenizer it cannot encode a lone surrogate."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))


def lint_rows(tmp_path, lines: list, **kwargs):
    from tutorforge.formatting import PromptFormat
    from tutorforge.lint import lint

    path = tmp_path / "d.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in lines))
    report = lint([path], tokenizer=ByteTokenizer(), fmt=PromptFormat("alpaca", None, 0),
                  sequence_len=4096, model="bytes", **kwargs)
    return report, path


def test_no_run_code_says_the_blocks_were_not_run(tmp_path):
    from tutorforge.lint import render

    rows = [{"instruction": "a", "input": "", "output": "```python\nprint(1)  # 1\n```"},
            {"instruction": "b", "input": "", "output": "```python\nprint(1 / 0)\n```\n```py\nx = 1\n```"}]
    report, _ = lint_rows(tmp_path, rows, run_code=False)
    out = render(report)
    assert "python blocks: 3 found, not run (--no-run-code)" in out
    assert " run, " not in out and "runs as stated" not in out
    assert out.splitlines()[-1] == "OK: every row usable; Python blocks not run (--no-run-code)"


def test_one_pathological_row_does_not_abort_lint(tmp_path):
    from tutorforge.lint import render

    good = {"instruction": "a", "input": "", "output": "fine"}
    lines = [good, '{"instruction": "b", "output": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
             '{"instruction": "c", "output": "half \\ud800"}',
             '{"instruction": "d", "output": "x", "n": 1e999999}',
             '{"instruction": "e", "output": "x", "n": ' + "1" * 1_000_000 + "}", {**good, "instruction": "f"}]
    report, path = lint_rows(tmp_path, lines, run_code=False)
    assert [(f.source, f.kind) for f in report.findings] == [
        (f"{path}:2", "too_deep"), (f"{path}:3", "lone_surrogate"), (f"{path}:4", "bad_number"),
        (f"{path}:5", "bad_number")]
    assert report.failed and len(report.token_lengths) == 2
    assert render(report).splitlines()[:2] == ["6 rows read from 1 file(s): 2 accepted, 4 rejected",
                                               "rejected by kind: bad_number 2, too_deep 1, lone_surrogate 1"]


@pytest.mark.slow
def test_cli_lint_reports_pathological_rows_and_that_code_was_not_run(tmp_path, capsys, bundled):
    rows = [{"instruction": "a", "input": "", "output": "```python\nprint(2)  # 2\n```"},
            '{"instruction": "b", "output": "\\udfff"}', "[" * 50_000 + "]" * 50_000]
    code, out, path = lint_file(tmp_path, rows, capsys, "--no-run-code")
    assert code == 1
    assert f"{path}:2: lone_surrogate" in out and f"{path}:3: too_deep" in out
    assert "3 rows read from 1 file(s): 1 accepted, 2 rejected" in out
    assert "python blocks: 1 found, not run (--no-run-code)" in out and "runs as stated" not in out


def test_a_conversation_dataset_is_linted_as_conversations(tmp_path, bundled_tokenizer):
    """With the config's datasets, a messages file is read as conversations: every assistant turn's
    Python blocks are found (not only the last turn's), and the rows are not rejected as Alpaca."""
    from tutorforge.config import parse
    from tutorforge.formatting import prompt_format
    from tutorforge.lint import lint, render

    path = tmp_path / "chats.jsonl"
    chats = [[("user", "Show a loop."), ("assistant", "```python\nfor i in range(2):\n    print(i)\n```"),
              ("user", "And a list?"), ("assistant", "```python\nprint([1, 2])  # [1, 2]\n```")],
             [("user", "Add two numbers."), ("assistant", "```python\nprint(1 + 2)  # 3\n```")]]
    path.write_text("".join(json.dumps({"messages": [{"role": r, "content": c} for r, c in chat]}) + "\n"
                            for chat in chats))
    cfg = parse(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: {path}\n    type: chat_template\n",
                "c.yml").config
    assert cfg is not None
    report = lint([path], tokenizer=bundled_tokenizer, fmt=prompt_format(bundled_tokenizer), sequence_len=512,
                  model="smollm2", run_code=False, datasets=cfg.datasets)
    out = render(report)
    assert out.splitlines()[0] == "2 rows read from 1 file(s): 2 accepted, 0 rejected"
    assert "python blocks: 3 found, not run (--no-run-code)" in out
    as_alpaca = lint([path], tokenizer=bundled_tokenizer, fmt=prompt_format(bundled_tokenizer), sequence_len=512,
                     model="smollm2", run_code=False)
    assert as_alpaca.load.rows == []  # without the config: Alpaca rows, which these are not
