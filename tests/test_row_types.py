"""row_types.py: the Alpaca spellings read their own keys (and system prompt), completion texts are
trained whole and cut into sequence_len chunks, input_output segments are trained by their labels;
every unusable row is a named reject, and rows read = accepted + rejected."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tutorforge.config import DatasetSpec, load_config
from tutorforge.data import load_datasets
from tutorforge.errors import UserError
from tutorforge.formatting import IGNORE, encode_row, prompt_format, render_prompt
from tutorforge.prepare import prepare
from tutorforge.row_types import ALPACA_TYPES, row_reading


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def config(write_config, tmp_path, data: Path, dataset: str, extra: str = "", sequence_len: int = 64):
    return load_config(write_config(
        f"base_model: smollm2\nadapter: lora\nsequence_len: {sequence_len}\nval_set_size: 0\n"
        f"datasets:\n  - path: {data}\n    {dataset}\noutput_dir: {tmp_path / 'out'}\n{extra}"))


@pytest.mark.parametrize("type_", sorted(ALPACA_TYPES))
def test_every_alpaca_spelling_reads_its_own_keys(tmp_path, type_):
    reading = ALPACA_TYPES[type_]
    row = {reading.instruction: "Reverse a list", reading.output: "Use `xs[::-1]`.", "note": "kept out"}
    if reading.input:
        row[reading.input] = "xs = [1, 2]"
    if reading.system:
        row[reading.system] = "Be brief."
    missing = {k: v for k, v in row.items() if k != reading.output}
    report = load_datasets([DatasetSpec(path=str(jsonl(tmp_path / "d.jsonl", [row, missing])), type=type_)])
    assert report.rows_read == 2 and len(report.rows) == 1
    got = report.rows[0]
    assert (got.kind, got.instruction, got.output) == ("alpaca", "Reverse a list", "Use `xs[::-1]`.")
    assert got.input == ("xs = [1, 2]" if reading.input else "")
    assert got.system == ("Be brief." if reading.system else "")
    assert report.extra_keys == {"note": 1}
    [reject] = report.rejects
    assert reject.kind == "missing_field" and f"missing {reading.output!r}" in reject.reason
    assert reject.source.endswith("d.jsonl:2")


def test_a_spelling_whose_prompt_text_tutorforge_does_not_write_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        row_reading(DatasetSpec(path="x", type="alpaca"), 0)
        assert not caplog.records
        row_reading(DatasetSpec(path="x", type="alpaca_chat.load_qa"), 3)
    [record] = caplog.records
    assert "datasets[3]: type: alpaca_chat.load_qa: rows read as question -> instruction, answer -> output" \
        in record.getMessage() and "USER:" in record.getMessage()


def test_a_rows_own_system_prompt_replaces_the_default(bundled_tokenizer, tmp_path):
    spec = DatasetSpec(path=str(jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Add", "input": "1 2", "output": "3", "system": "Answer in one word."},
        {"instruction": "Add", "input": "3 4", "output": "7", "system": ""}])), type="alpaca_w_system")
    own, default = load_datasets([spec]).rows
    fmt = prompt_format(bundled_tokenizer, None, "You are a tutor.")
    for row, system in ((own, "Answer in one word."), (default, "You are a tutor.")):
        example = encode_row(bundled_tokenizer, fmt, row)
        prompt = render_prompt(bundled_tokenizer, prompt_format(bundled_tokenizer, None, system), row.instruction,
                               row.input)
        n = len(bundled_tokenizer.encode(prompt, add_special_tokens=False))
        assert bundled_tokenizer.decode(example.input_ids[:n]) == prompt
        assert example.labels[:n] == [IGNORE] * n and IGNORE not in example.labels[n:]


def test_completion_is_trained_whole_and_cut_into_sequence_len_chunks(bundled_tokenizer, tmp_path, write_config):
    long_text = " ".join(f"line {i}: print({i} * {i})" for i in range(40))
    data = jsonl(tmp_path / "d.jsonl", [{"body": long_text}, {"body": "x = 1"}, {"text": "no body"}])
    cfg = config(write_config, tmp_path, data, "type: completion\n    field: body",
                 extra="tutorforge:\n  skip_bad_rows: true\n", sequence_len=64)
    prepared = prepare(cfg, bundled_tokenizer, skip_bad_rows=False)
    full = bundled_tokenizer(long_text)["input_ids"] + [bundled_tokenizer.eos_token_id]
    n_chunks = -(-len(full) // 64)
    assert len(full) > 3 * 64
    chunks, short = prepared.train[:n_chunks], prepared.train[n_chunks:]
    assert [t for c in chunks for t in c.input_ids] == full  # every token kept, in order
    assert all(len(c.input_ids) <= 64 for c in chunks)
    for c in chunks:  # trained whole but the first token of each chunk, which nothing predicts
        assert c.labels == [IGNORE] + c.input_ids[1:]
    [one] = short
    assert one.input_ids == bundled_tokenizer("x = 1")["input_ids"] + [bundled_tokenizer.eos_token_id]
    assert f"1 completion text(s) longer than sequence_len 64 cut into {n_chunks} chunks" in prepared.summary()
    [reject] = prepared.load.rejects
    assert reject.kind == "missing_field" and "'body'" in reject.reason and reject.source.endswith("d.jsonl:3")
    assert prepared.load.rows_read == len(prepared.load.rows) + len(prepared.load.row_rejects) == 3


def test_input_output_trains_exactly_the_labelled_segments(bundled_tokenizer, tmp_path):
    segments = [{"text": "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n", "label": False},
                {"text": "<|im_start|>assistant\n", "label": False},
                {"text": "4<|im_end|>", "label": True},
                {"text": "\n<|im_start|>user\nAnd 3 + 3?<|im_end|>\n<|im_start|>assistant\n", "label": False},
                {"text": "6<|im_end|>", "label": True}]
    spec = DatasetSpec(path=str(jsonl(tmp_path / "d.jsonl", [{"segments": segments}])), type="input_output")
    [row] = load_datasets([spec]).rows
    fmt = prompt_format(bundled_tokenizer)
    for train_on_inputs in (False, True):
        example = encode_row(bundled_tokenizer, fmt, row, train_on_inputs=train_on_inputs)
        text = "".join(s["text"] for s in segments)
        assert example.input_ids == bundled_tokenizer(text, add_special_tokens=False)["input_ids"]
        trained = bundled_tokenizer.decode([t for t, lab in zip(example.input_ids, example.labels, strict=True)
                                            if lab != IGNORE])
        expected = text if train_on_inputs else "4<|im_end|>6<|im_end|>"
        assert trained == expected.removeprefix("<|im_start|>" if train_on_inputs else "")
    im_end = bundled_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example.input_ids.count(im_end) == 4  # special tokens in the text are special tokens


def test_bad_input_output_and_completion_rows_are_named_and_nothing_is_lost(tmp_path):
    io = jsonl(tmp_path / "io.jsonl", [
        {"segments": [{"text": "q", "label": False}, {"text": "a", "label": True}]},
        {"segments": []}, {"segments": "text"}, {"segments": [{"text": "q"}]},
        {"segments": [{"text": 3, "label": True}]}, {"segments": [{"text": "q", "label": "yes"}]},
        {"segments": [{"text": "q", "label": False}]}, [1, 2], "{not json"])
    text = jsonl(tmp_path / "text.jsonl",
                 [{"text": "ok"}, {"text": ""}, {"text": ["a"]}, {"other": "x"}, {"text": "ok"}])
    report = load_datasets([DatasetSpec(path=str(io), type="input_output"),
                            DatasetSpec(path=str(text), type="completion")])
    kinds = [(r.source.rpartition("/")[2], r.kind) for r in report.rejects]
    assert kinds == [("io.jsonl:2", "bad_segment"), ("io.jsonl:3", "bad_segment"), ("io.jsonl:4", "bad_segment"),
                     ("io.jsonl:5", "bad_segment"), ("io.jsonl:6", "bad_segment"),
                     ("io.jsonl:7", "no_trained_segment"), ("io.jsonl:8", "not_an_object"),
                     ("io.jsonl:9", "malformed_json"), ("text.jsonl:2", "empty_field"),
                     ("text.jsonl:3", "wrong_type"), ("text.jsonl:4", "missing_field"), ("text.jsonl:5", "duplicate")]
    assert "segment 1's 'label' is missing" in report.rejects[2].reason
    assert report.rows_read == 14 == len(report.rows) + len(report.row_rejects)


def test_field_is_only_for_completion():
    with pytest.raises(UserError, match=r"datasets\[0\]\.field: body: only type: completion reads it"):
        row_reading(DatasetSpec(path="x", type="alpaca", field="body"), 0)


@pytest.mark.parametrize("type_", ["alpaca:chat", "alpaca_chat.load_qa", "alpaca_w_system.load_open_orca",
                                   "completion", "input_output"])
def test_the_types_validate(write_config, tmp_path, type_):
    cfg = config(write_config, tmp_path, tmp_path / "d.jsonl", f"type: {type_}")
    assert cfg.datasets[0].type == type_


def test_a_completion_chunk_under_min_sample_len_is_left_out_and_counted(bundled_tokenizer, tmp_path, write_config):
    text = " ".join(f"item {i}" for i in range(60))
    full = bundled_tokenizer(text)["input_ids"] + [bundled_tokenizer.eos_token_id]
    tail = len(full) % 32
    assert 2 <= tail < 16  # the text's last chunk is short
    data = jsonl(tmp_path / "d.jsonl", [{"text": text}, {"text": "x"}])
    cfg = config(write_config, tmp_path, data, "type: completion",
                 extra="min_sample_len: 16\ntutorforge:\n  skip_bad_rows: true\n", sequence_len=32)
    prepared = prepare(cfg, bundled_tokenizer, skip_bad_rows=False)
    assert [len(e.input_ids) for e in prepared.train] == [32] * (len(full) // 32)  # the short end left out
    assert [t for e in prepared.train for t in e.input_ids] == full[:len(full) - tail]
    assert "1 chunk(s) shorter than min_sample_len 16 tokens left out" in prepared.summary()
    [reject] = prepared.load.rejects
    assert reject.kind == "too_short" and reject.source.endswith("d.jsonl:2") and "(min_sample_len 16)" in reject.reason
