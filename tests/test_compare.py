"""compare.py: per-answer scores, aggregates and deltas, results.jsonl, and hostile code in answers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tutorforge.compare import UNQUANTIZED, Comparison, chrf, python_blocks, run_comparison, score_answer
from tutorforge.data import Row
from tutorforge.errors import UserError
from tutorforge.evaluate import Answer
from tutorforge.prompts import load_prompts, target_words_from
from tutorforge.report import write_outputs

GOOD = "Use len().\n\n```python\nitems = [1, 2, 3]\nprint(len(items))  # 3\n```\n\nTip: len works on strings too."
WRONG = "Sum them:\n\n```python\nprint(1 + 1)  # 3\n```"
BROKEN = "```python\ndef f(:\n    pass\n```"
CRASH = "```python\nprint('start')\n1 / 0\n```"
SILENT = "```python\nx = 2\n```"


def answer(text: str, stopped: bool = True) -> Answer:
    return Answer(text, len(text.split()) + 1, stopped)


def test_words_brevity_and_stop():
    m = score_answer(answer("one two three four five", stopped=False), None, target_words=5)
    assert (m["words"], m["brief"], m["stopped"], m["has_code"]) == (5, True, False, False)
    assert m["code_parses"] is m["code_runs"] is m["outputs_match"] is m["chrf"] is None
    assert score_answer(answer("one two three four five six"), None, target_words=5)["brief"] is False


@pytest.mark.parametrize("text, parses, runs, stated, match, kinds", [
    (GOOD, True, True, True, True, ["ok"]),
    (WRONG, True, True, True, False, ["mismatch"]),
    (BROKEN, False, False, False, None, ["syntax"]),
    (CRASH, True, False, False, None, ["error"]),
    (SILENT, True, True, False, None, ["ok"]),
    (GOOD + "\n\n" + WRONG, True, True, True, False, ["ok", "mismatch"]),
])
def test_code_is_run_and_judged(text, parses, runs, stated, match, kinds):
    m = score_answer(answer(text), None, target_words=100)
    assert m["has_code"] is True
    assert (m["code_parses"], m["code_runs"], m["outputs_stated"], m["outputs_match"]) == (parses, runs, stated, match)
    assert [b["kind"] for b in m["sandbox"]] == kinds


def test_an_unclosed_block_cut_at_max_tokens_counts_as_code():
    assert python_blocks("Here:\n```python\nfor i in range(3):\n    print(i") == ["for i in range(3):\n    print(i\n"]
    m = score_answer(answer("Here:\n```python\nfor i in range(3):\n    print(i", stopped=False), None, target_words=50)
    assert m["has_code"] and m["code_parses"] is False
    assert python_blocks("```js\nconsole.log(1)\n```\n") == []  # other languages are not Python code


def test_chrf_against_the_reference():
    reference = "A list keeps items in order; use append to add one."
    assert chrf(reference, reference) == pytest.approx(100.0)
    assert chrf("zzzz qqqq", "aaaa bbbb") == pytest.approx(0.0)
    close, far = chrf("A list keeps its items in order.", reference), chrf("Tuples are immutable.", reference)
    assert 0 < far < close < 100
    assert score_answer(answer(reference), reference, target_words=50)["chrf"] == pytest.approx(100.0)


def test_target_words_is_the_90th_percentile():
    outputs = [" ".join(["w"] * n) for n in range(1, 11)]  # 1..10 words: p90 (inclusive) = 9.1
    assert target_words_from(outputs) == 10
    assert target_words_from(["a b c"] * 7) == 3
    assert target_words_from(["a b"]) == 2
    with pytest.raises(UserError, match="target_words"):
        target_words_from(["", "  "])


class Scripted:
    """A Generator that answers from a table and reports a fixed perplexity."""

    def __init__(self, name: str, answers: dict[str, Answer], ppl: float):
        self.name, self.answers, self.ppl, self.calls = name, answers, ppl, []

    def generate(self, instruction, input="", *, system=None, max_new_tokens=256):
        self.calls.append((instruction, system, max_new_tokens))
        return self.answers[instruction]

    def perplexity(self, rows, *, system=None):
        self.calls.append(("perplexity", len(rows)))
        return self.ppl


ROWS = [Row("What is len?", "", "Use len().\n\n```python\nprint(len([1, 2, 3]))  # 3\n```", "p.jsonl:1"),
        Row("Add two numbers.", "2 and 3", "Use +: `2 + 3` is 5.", "p.jsonl:2"),
        Row("What is a set?", "", "", "p.jsonl:3")]  # no reference


def fake_pair():
    ramble = " ".join(["word"] * 40)
    base = Scripted("base-model", {r.instruction: answer(ramble, stopped=False) for r in ROWS}, 12.0)
    tuned = Scripted("tuned-model", {ROWS[0].instruction: answer(GOOD),
                                     ROWS[1].instruction: answer("Use +: `2 + 3` is 5."),
                                     ROWS[2].instruction: answer(WRONG)}, 4.0)
    return base, tuned


def test_comparison_of_a_fake_pair(tmp_path):
    base, tuned = fake_pair()
    ticks = []
    result = write_outputs(run_comparison(base, tuned, ROWS, max_new_tokens=64, target_words=20, system="Be brief.",
                                          progress=lambda done, total: ticks.append((done, total))), tmp_path)
    assert ticks == [(1, 3), (2, 3), (3, 3)]
    assert base.calls[0] == ("What is len?", "Be brief.", 64)
    assert ("perplexity", 2) in base.calls  # only rows with a reference
    b, t = result.aggregates["base"], result.aggregates["tuned"]
    assert (b["brevity_pct"], b["mean_words"], b["stopped_pct"], b["has_code_pct"]) == (0.0, 40.0, 0.0, 0.0)
    assert b["code_runs_pct"] is None and b["perplexity"] == 12.0
    assert t["brevity_pct"] == 100.0 and t["mean_words"] == pytest.approx((18 + 7 + 9) / 3)  # counted by hand
    assert t["has_code_pct"] == pytest.approx(200 / 3) and t["code_runs_pct"] == 100.0
    assert t["outputs_match_pct"] == 50.0 and t["perplexity"] == 4.0
    assert t["mean_chrf"] == pytest.approx((chrf(GOOD, ROWS[0].output) + 100.0) / 2)
    assert result.delta("brevity_pct") == 100.0 and result.delta("perplexity") == -8.0

    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["source"] for r in records] == ["p.jsonl:1", "p.jsonl:2", "p.jsonl:3"]
    assert records[2]["reference"] is None and records[2]["tuned"]["chrf"] is None
    assert records[0]["tuned"]["text"] == GOOD and records[0]["tuned"]["sandbox"] == [{"kind": "ok", "detail": ""}]
    assert records[2]["tuned"]["sandbox"][0]["kind"] == "mismatch"
    assert records[1]["base"]["stopped"] is False and records[1]["tuned"]["words"] == 7
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["aggregates"]["tuned"]["perplexity"] == 4.0 and summary["settings"]["target_words"] == 20
    assert {p.name for p in tmp_path.iterdir()} == {"results.jsonl", "report.md", "report.html", "summary.json"}
    assert "| brevity: at most 20 words (%) | 0.0 | 100.0 | +100.0 |" in (tmp_path / "report.md").read_text()


def test_the_unquantised_export_answers_beside_the_shipped_quantisation(tmp_path):
    """The tuned model's f16 export answers too: its code-run rate is reported beside the shipped
    quantisation's, with the points quantisation moved it; it is asked no perplexity."""
    base, tuned = fake_pair()  # tuned: code in 2 answers, both run
    plain = Scripted("f16 GGUF", {ROWS[0].instruction: answer(GOOD), ROWS[1].instruction: answer(CRASH),
                                  ROWS[2].instruction: answer(BROKEN)}, 3.0)  # code in 3, 1 runs
    result = write_outputs(run_comparison(base, tuned, ROWS, max_new_tokens=64, target_words=20,
                                          unquantized=plain), tmp_path)
    assert result.aggregates[UNQUANTIZED]["code_runs_pct"] == pytest.approx(100 / 3)
    assert result.aggregates[UNQUANTIZED]["perplexity"] is None and not any(c[0] == "perplexity" for c in plain.calls)
    assert [c[0] for c in plain.calls] == [r.instruction for r in ROWS]
    drift = ("tuned, code runs: 33.3% (1 of 3 with code) with its unquantised export (f16 GGUF), "
             "100.0% (2 of 2 with code) with tuned-model: quantisation moves it +66.7 points")
    assert result.quantization_drift() == drift and result.table().endswith(drift)
    assert f"T{drift[1:]}." in (tmp_path / "report.md").read_text()
    assert f"T{drift[1:]}." in (tmp_path / "report.html").read_text()
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r[UNQUANTIZED]["code_runs"] for r in records] == [True, False, False]
    assert json.loads((tmp_path / "summary.json").read_text())["names"][UNQUANTIZED] == "f16 GGUF"
    alone = run_comparison(*fake_pair(), ROWS, max_new_tokens=64, target_words=20)
    assert alone.quantization_drift() is None and UNQUANTIZED not in alone.aggregates
    assert "unquantised" not in alone.table()


def test_cli_compare_of_a_quantised_gguf_answers_with_its_f16_too_decoded_as_ollama(tmp_path, monkeypatch,
                                                                                       capsys):
    """`compare --tuned model.Q4_K_M.gguf` finds the f16 export.json records beside it and answers
    with both; GGUFs decode with Ollama's repeat penalty, as `run`'s comparison does."""
    from tutorforge import cli

    gguf = tmp_path / "gguf"
    gguf.mkdir()
    for name in ("model.F16.gguf", "model.Q4_K_M.gguf"):
        (gguf / name).write_bytes(b"GGUF")
    (gguf / "export.json").write_text(json.dumps({"files": {"f16": "x/gguf/model.F16.gguf",
                                                            "q4_k_m": "x/gguf/model.Q4_K_M.gguf"}}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": "q", "output": "an answer"}) + "\n")
    opened = {}

    def fake_open(spec, *, name=None, repeat_penalty=1.0, repeat_last_n=64, **_):
        opened[Path(spec).name] = (repeat_penalty, repeat_last_n)
        return Fixed(name, GOOD if "F16" in str(spec) else CRASH)

    monkeypatch.setattr("tutorforge.evaluate.open_generator", fake_open)
    monkeypatch.setattr("tutorforge.compare.model_inputs", lambda spec, adapter=None: {"spec": str(spec)})
    argv = ["compare", "--base", str(gguf / "model.Q4_K_M.gguf"), "--tuned", str(gguf / "model.Q4_K_M.gguf"),
            "--prompts", str(prompts), "--out", str(tmp_path / "report")]
    assert cli.main(argv) == 0
    assert opened == {"model.Q4_K_M.gguf": (1.1, 64), "model.F16.gguf": (1.1, 64)}  # Ollama's defaults
    assert "0.0% (0 of 1 with code) with gguf/model.Q4_K_M.gguf: quantisation moves it -100.0 points" in \
        capsys.readouterr().out
    opened.clear()
    assert cli.main([*argv[:4], str(gguf / "model.F16.gguf"), *argv[5:7], "--out", str(tmp_path / "r2")]) == 0
    assert set(opened) == {"model.Q4_K_M.gguf", "model.F16.gguf"}  # base and an unquantised tuned: two sides
    assert "unquantised" not in capsys.readouterr().out


def test_table_shows_both_sides_and_the_delta():
    aggregates = {"base": {"answers": 4.0, "brevity_pct": 25.0, "mean_words": 120.5, "perplexity": 9.25,
                           "code_runs_pct": None},
                  "tuned": {"answers": 4.0, "brevity_pct": 75.0, "mean_words": 60.0, "perplexity": 6.0,
                            "code_runs_pct": 50.0}}
    table = Comparison({"base": "A", "tuned": "B"}, [], aggregates, {"target_words": 80, "max_new_tokens": 128}).table()
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "(A)", "tuned", "(B)", "delta"]
    row = {line.split("  ")[0].strip(): line.split()[-3:] for line in lines[2:-1]}
    assert row["brevity: at most 80 words (%)"] == ["25.0", "75.0", "+50.0"]
    assert row["mean words"] == ["120.5", "60.0", "-60.5"]
    assert row["perplexity of the references"] == ["9.2", "6.0", "-3.2"]
    assert row["code runs (% of answers with code)"] == ["-", "50.0", "-"]  # nothing to compare with
    assert lines[-1].startswith("4 prompts, greedy, max_new_tokens 128")


HOSTILE = {  # instruction -> (code, the kind the sandbox must record, words in its detail)
    "write outside": ("open({escape!r}, 'w').write('x')", "error", "No such file"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", "error", "processes"),
    "ten gigabytes": ("x = bytearray(10 * 1024 ** 3)", "memory", "MB"),
    "endless loop": ("while True:\n    pass", "timeout", "5 s"),  # of CPU, or of wall clock under load
    "network": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)", "error", "unreachable"),
    "read home": ("print(open({secret!r}).read())", "error", "No such file"),
}


def test_hostile_code_in_answers_is_recorded_and_the_comparison_completes(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text("TOKEN")
    monkeypatch.setenv("HOME", str(home))
    escape = tmp_path / "escaped.txt"
    fill = {"escape": str(escape), "secret": str(home / "secret.txt")}
    rows = [Row(name, "", "", f"hostile:{i}") for i, name in enumerate(HOSTILE)]
    tuned = Scripted("tuned", {name: answer(f"Try this:\n```python\n{code.format(**fill)}\n```")
                               for name, (code, _, _) in HOSTILE.items()}, 3.0)
    base = Scripted("base", {name: answer("No code.") for name in HOSTILE}, 5.0)
    result = write_outputs(run_comparison(base, tuned, rows, max_new_tokens=32, target_words=50), tmp_path / "out")
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == len(HOSTILE)
    for record, (name, (_, kind, words)) in zip(records, HOSTILE.items(), strict=False):
        (block,) = record["tuned"]["sandbox"]
        assert block["kind"] == kind and words in block["detail"], (name, block)
    assert not escape.exists()
    assert result.aggregates["tuned"]["code_runs_pct"] == 0.0 and result.aggregates["tuned"]["perplexity"] is None
    assert "fork bomb" in (tmp_path / "out" / "report.html").read_text()


def test_prompts_file_with_optional_references(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"instruction": "Explain zip.", "output": "zip pairs items."}\n\n'
                    '{"instruction": "Explain map.", "input": null}\n')
    rows = load_prompts(path)
    assert [(r.instruction, r.input, r.output, r.source) for r in rows] == [
        ("Explain zip.", "", "zip pairs items.", f"{path}:1"), ("Explain map.", "", "", f"{path}:3")]
    path.write_text('{"instruction": "ok"}\n{"input": "no instruction"}\n')
    with pytest.raises(UserError, match=r"p.jsonl:2: needs a non-empty \"instruction\""):
        load_prompts(path)
    path.write_text('{"instruction": "ok"\n')
    with pytest.raises(UserError, match=r"p.jsonl:1: not JSON"):
        load_prompts(path)
    path.write_text('{"instruction": "ok", "input": ' + "1" * 5000 + "}\n")  # past int()'s 4300-digit limit
    with pytest.raises(UserError, match=r"p.jsonl:1: not JSON \(Exceeds the limit \(4300 digits\)"):
        load_prompts(path)
    with pytest.raises(UserError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_no_prompts_is_an_error(tmp_path):
    base, tuned = fake_pair()
    with pytest.raises(UserError, match="no prompts"):
        run_comparison(base, tuned, [], max_new_tokens=8, target_words=5)
    assert not list(tmp_path.iterdir())  # nothing written


class Fixed:
    """A Generator that gives every prompt the same answer."""

    def __init__(self, name: str, text: str):
        self.name, self.text, self.calls = name, text, []

    def generate(self, instruction, input="", *, system=None, max_new_tokens=256):
        self.calls.append((instruction, system, max_new_tokens))
        return answer(self.text)

    def perplexity(self, rows, *, system=None):
        return 5.0


@pytest.mark.slow  # base_model smollm2: compare loads the bundled model's converted tokenizer
def test_cli_compare_takes_its_defaults_from_the_config(tmp_path, monkeypatch, capsys):
    from tutorforge import cli

    train = [{"instruction": f"q{n}", "input": "", "output": " ".join(["w"] * n)} for n in range(1, 18)]
    held = [{"instruction": f"held {n}", "input": "", "output": " ".join(["long"] * 100)} for n in range(3)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train + held))
    run = tmp_path / "run"
    run.mkdir()
    (run / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))  # as training writes it
    config = tmp_path / "c.yml"
    config.write_text(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: {data}\nval_set_size: 3\n"
                      f"output_dir: {run}\ndefault_system_message: Be brief.\n"
                      "tutorforge:\n  compare: {max_new_tokens: 32}\n")
    opened = {}

    def fake_open(spec, *, adapter=None, tokenizer_dir=None, chat_template=None, system=None, name=None,
                  threads=None, gpu_layers=None, repeat_penalty=1.0, repeat_last_n=64):
        gen = Fixed(name, "short answer" if str(spec) == str(run) else " ".join(["ramble"] * 30))
        opened[str(spec)] = {"adapter": adapter, "system": system, "tokenizer_dir": tokenizer_dir, "gen": gen,
                             "runtime": (threads, gpu_layers)}
        return gen

    monkeypatch.setattr("tutorforge.evaluate.open_generator", fake_open)
    monkeypatch.setattr("tutorforge.compare.model_inputs", lambda spec, adapter=None: {"spec": str(spec)})
    assert cli.main(["compare", str(config)]) == 0
    out = capsys.readouterr().out
    assert "brevity: at most 16 words (%)" in out  # p90 of the 17 training answers (1..17 words), not held-out
    assert set(opened) == {"smollm2", str(run)} and opened[str(run)]["system"] == "Be brief."
    assert opened["smollm2"]["tokenizer_dir"] is not None  # GGUF sides would tokenize like training
    records = [json.loads(line) for line in (run / "compare" / "results.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in records] == ["held 0", "held 1", "held 2"]
    assert records[0]["tuned"]["brief"] and not records[0]["base"]["brief"]
    assert opened["smollm2"]["gen"].calls[0] == ("held 0", "Be brief.", 32)  # tutorforge.compare.max_new_tokens

    from tutorforge.llamacpp import shared_threads

    assert opened["smollm2"]["runtime"] == (shared_threads(2), None)  # the CPUs split between the two sides
    argv = ["compare", str(config), "--max-prompts", "1", "--out", str(tmp_path / "one"), "--threads", "1"]
    assert cli.main([*argv, "--gpu-layers", "0"]) == 0
    assert opened["smollm2"]["runtime"] == opened[str(run)]["runtime"] == (1, 0)
    assert "brevity: at most 16 words (%)" in capsys.readouterr().out  # the whole split stays held out
    assert len((tmp_path / "one" / "results.jsonl").read_text().splitlines()) == 1

    assert cli.main(["compare", "--base", "smollm2", "--tuned", str(run)]) == 2
    assert "needs --prompts" in capsys.readouterr().err


def test_compare_reuses_its_report_only_for_the_same_inputs_and_never_writes_over_other_files(
        tmp_path, monkeypatch, capsys):
    from tutorforge import cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"q{n}", "output": "an answer"}) + "\n" for n in range(3)))
    identity = {"tuned": "first"}
    opened = []

    def fake_open(spec, *, adapter=None, tokenizer_dir=None, chat_template=None, system=None, name=None,
                  threads=None, gpu_layers=None, repeat_penalty=1.0, repeat_last_n=64):
        opened.append(str(spec))
        return Fixed(name, f"answer of {identity['tuned'] if spec == 'T' else 'base'}")

    monkeypatch.setattr("tutorforge.evaluate.open_generator", fake_open)
    monkeypatch.setattr("tutorforge.compare.model_inputs", lambda spec, adapter=None: {
        "spec": str(spec), "content": identity["tuned"] if spec == "T" else 0})
    out = tmp_path / "report"
    argv = ["compare", "--base", "B", "--tuned", "T", "--prompts", str(prompts), "--out", str(out)]
    assert cli.main(argv) == 0
    first = (out / "results.jsonl").read_text()
    assert opened == ["B", "T"] and "answer of first" in first
    capsys.readouterr()
    assert cli.main(argv) == 0  # same models, prompts, settings: the report is kept, nothing is generated
    assert opened == ["B", "T"] and (out / "results.jsonl").read_text() == first
    assert "delta = tuned - base" in capsys.readouterr().out  # the kept report's table is printed
    identity["tuned"] = "second"  # the tuned model changed: its report is stale and made again
    assert cli.main(argv) == 0
    assert opened == ["B", "T", "B", "T"] and "answer of second" in (out / "results.jsonl").read_text()
    assert cli.main([*argv[:-1], str(tmp_path / "other"), "--max-new-tokens", "8"]) == 0

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert cli.main([*argv[:-1], str(foreign)]) == 2
    assert "not written by tutorforge" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "keep me"


# --- conversations: the last user turn asked after its history ---------------------------------

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is a list?"},
        {"role": "assistant", "content": "An ordered sequence."}, {"role": "user", "content": "And a tuple?"},
        {"role": "assistant", "content": "The same, immutable."}]


def test_a_messages_file_is_read_as_conversations(tmp_path):
    from tutorforge.prompts import history

    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"messages": CHAT[1:4]}) + "\n")
    first, second = load_prompts(path)
    assert (first.instruction, first.input, first.output, first.source) == (
        "And a tuple?", "", "The same, immutable.", f"{path}:1")
    assert history(first) == CHAT[:3] and [t.role for t in first.turns] == [m["role"] for m in CHAT]
    assert (second.instruction, second.output, history(second)) == ("And a tuple?", "", CHAT[1:3])  # no reference
    assert first.roles_to_train == second.roles_to_train == ("assistant",) and first.train_on_eos == "turn"

    sharegpt = tmp_path / "share.json"  # ShareGPT's keys and role names, mapped as training maps them
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye"}]
    sharegpt.write_text(json.dumps([{"conversations": turns}]))
    (row,) = load_prompts(sharegpt)
    assert (row.instruction, row.output, history(row)) == ("Bye", "", [{"role": "user", "content": "Hi"},
                                                                        {"role": "assistant", "content": "Hello."}])
    path.write_text(json.dumps({"messages": CHAT[:1] + CHAT[2:3]}) + "\n")
    with pytest.raises(UserError, match=r"chats.jsonl:1: a conversation with no user turn"):
        load_prompts(path)
    path.write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n")
    with pytest.raises(UserError, match=r"chats.jsonl:1: message 1's role 'wizard' is not one of the template's"):
        load_prompts(path)


class Remembering(Scripted):
    """A Scripted Generator that takes the earlier turns of a follow-up question too."""

    def generate(self, instruction, input="", *, system=None, max_new_tokens=256, history=()):
        self.calls.append((instruction, system, max_new_tokens, history))
        return self.answers[instruction]


def test_a_follow_up_is_asked_with_its_history_and_reported_with_it(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    rows = [*load_prompts(path), ROWS[1]]
    answers = {"And a tuple?": answer("Immutable."), ROWS[1].instruction: answer("5")}
    base, tuned = Remembering("base", answers, 9.0), Scripted("tuned", answers, 3.0)
    with pytest.raises(TypeError, match="history"):  # a Generator that cannot take the history is not asked without it
        run_comparison(base, tuned, rows, max_new_tokens=8, target_words=5)
    base.calls.clear()
    result = write_outputs(run_comparison(base, Remembering("tuned", answers, 3.0), rows, max_new_tokens=8,
                                          target_words=5, system="Be brief."), tmp_path / "out")
    assert base.calls[:2] == [("And a tuple?", "Be brief.", 8, CHAT[:3]), ("Add two numbers.", "Be brief.", 8, ())]
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert records[0]["history"] == CHAT[:3] and records[0]["reference"] == "The same, immutable."
    assert "history" not in records[1]  # an Alpaca row's record is as before
    assert result.records[0]["tuned"]["chrf"] == pytest.approx(chrf("Immutable.", "The same, immutable."))


def test_held_out_conversations_keep_their_history_flags_and_roles(tmp_path):
    """prepare.write_rows writes a conversation with its messages; compare reads back the same turns
    (training flags, roles_to_train, train_on_eos), and an Alpaca reader still reads its last turns."""
    from tutorforge.config import load_config
    from tutorforge.conversations import Turn
    from tutorforge.data import load_files
    from tutorforge.prepare import write_rows
    from tutorforge.prompts import heldout_rows, history, training_outputs

    data = tmp_path / "chats.jsonl"
    convs = [CHAT, CHAT[1:3], [CHAT[1], {"role": "assistant", "content": "x " * 30}]]
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    config = tmp_path / "c.yml"
    config.write_text(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: {data}\n    type: chat_template\n"
                      f"val_set_size: 1\noutput_dir: {tmp_path / 'run'}\n")
    cfg = load_config(config)
    turns = tuple(Turn(m["role"], m["content"]) for m in CHAT)
    flagged = (*turns[:2], Turn("assistant", CHAT[2]["content"], train=False), *turns[3:])
    held = Row("What is a list?", "", "The same, immutable.", f"{data}:1", turns=turns)
    (tmp_path / "run").mkdir()
    write_rows([dataclasses_replace(held, turns=flagged, roles_to_train=("assistant", "user"), train_on_eos="last"),
                ROWS[1]], tmp_path / "run" / "heldout.jsonl")
    conversation, alpaca = heldout_rows(cfg)
    assert conversation.turns == flagged and conversation.roles_to_train == ("assistant", "user")
    assert conversation.train_on_eos == "last" and history(conversation) == CHAT[:3]
    assert (conversation.instruction, conversation.output) == ("And a tuple?", "The same, immutable.")
    assert (alpaca.instruction, alpaca.input, alpaca.output, alpaca.turns) == (*[ROWS[1].instruction, "2 and 3",
                                                                                 ROWS[1].output], ())
    as_alpaca = load_files([tmp_path / "run" / "heldout.jsonl"]).rows  # export's reading of heldout.jsonl
    assert [(r.instruction, r.output) for r in as_alpaca] == [("What is a list?", "The same, immutable."),
                                                               (ROWS[1].instruction, ROWS[1].output)]
    (tmp_path / "run" / "heldout.jsonl").write_text("")
    write_rows([held], tmp_path / "run" / "heldout.jsonl")
    # the held-out conversation is not a training answer; the two others are
    assert training_outputs(cfg, heldout_rows(cfg)) == ["An ordered sequence.", "x " * 30]


def test_a_config_with_nothing_held_out_compares_on_its_prompts_file(tmp_path):
    """val_set_size 0: training writes an empty heldout.jsonl; tutorforge.compare.prompts is asked, every
    dataset answer sets the brevity target, and without a prompts file the error names both ways out."""
    from tutorforge.config import load_config
    from tutorforge.errors import UserError
    from tutorforge.prompts import prompts_and_target

    data, asked = tmp_path / "train.jsonl", tmp_path / "asked.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{n}", "input": "", "output": "w " * n}) + "\n"
                            for n in range(1, 11)))
    asked.write_text(json.dumps({"instruction": "What is len?", "input": "", "output": ""}) + "\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "heldout.jsonl").write_text("")  # as training writes it with nothing held out
    config = tmp_path / "c.yml"
    body = (f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: {data}\nval_set_size: 0\n"
            f"output_dir: {tmp_path / 'run'}\n")
    config.write_text(body + f"tutorforge:\n  compare: {{prompts: {asked}}}\n")
    cfg = load_config(config)
    rows, target = prompts_and_target(cfg, tmp_path, settings=cfg.tutorforge.compare)
    assert [r.instruction for r in rows] == ["What is len?"] and target == 10  # p90 of 1..10 words, rounded up
    config.write_text(body)
    cfg = load_config(config)
    with pytest.raises(UserError, match="val_set_size is 0.*tutorforge.compare.prompts"):
        prompts_and_target(cfg, tmp_path, settings=cfg.tutorforge.compare)


def dataclasses_replace(row, **changes):
    import dataclasses

    return dataclasses.replace(row, **changes)


def test_held_out_rows_without_a_prompt_are_left_out_and_a_rows_own_system_prompt_is_kept(tmp_path):
    from tutorforge.prepare import write_rows
    from tutorforge.prompts import history, load_prompts

    path = tmp_path / "heldout.jsonl"
    write_rows([Row("", "", "def f(): pass", "d.jsonl:1", kind="completion"),
                Row("q", "", "a", "d.jsonl:2", kind="segments", segments=(("q", False), ("a", True))),
                Row("Add them.", "1 2", "3", "d.jsonl:3", system="Answer with a number."),
                Row("Say hi.", "", "hi", "d.jsonl:4")], path)
    own, plain = load_prompts(path, held_out=True)
    assert history(own) == [{"role": "system", "content": "Answer with a number."}]
    assert (own.instruction, own.output, own.source) == ("Add them.\n\n1 2", "3", "d.jsonl:3")
    assert (plain.instruction, plain.turns, plain.source) == ("Say hi.", (), "d.jsonl:4")
