"""prepare.py: the length rules (excess_length_strategy: drop / truncate / raise, min_sample_len) on
both splits, counted, reported and written to rejected.jsonl; packing of what remains."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT
from tutorforge.data import load_files
from tutorforge.formatting import IGNORE, encode_row, prompt_format, split_rows
from tutorforge.prepare import TooLongError, prepare

GOOD = {"instruction": "Say hi", "input": "", "output": "hi"}
LONG = {**GOOD, "output": "word " * 400}  # ~400 answer tokens
LONG_PROMPT = {**GOOD, "instruction": "why " * 400}  # the answer starts past any sequence_len here
SHIPPED = ROOT / "data" / "python_tutor.jsonl"


def jsonl(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(write_config, tmp_path, data: Path, extra: str = "", sequence_len: int = 128):
    from tutorforge.config import load_config

    return load_config(write_config(f"base_model: smollm2\nadapter: lora\nsequence_len: {sequence_len}\n"
                                    f"datasets:\n  - path: {data}\noutput_dir: {tmp_path / 'out'}\n{extra}"))


def rejected(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]


def counts(summary: str) -> tuple[int, int, int]:
    """(read, accepted, rejected) from the summary's first line."""
    match = re.match(r"(\d+) rows read from \d+ file\(s\): (\d+) accepted, (\d+) rejected", summary)
    assert match, summary
    return int(match[1]), int(match[2]), int(match[3])


def test_rows_over_sequence_len_are_dropped_by_default_and_rejected(write_config, tmp_path, bundled_tokenizer):
    data = jsonl(tmp_path, [GOOD, LONG, {**GOOD, "output": "short"}])
    prepared = prepare(config(write_config, tmp_path, data), bundled_tokenizer, skip_bad_rows=False)
    assert [e.source for e in prepared.train] == [f"{data}:1", f"{data}:3"]
    [reject] = rejected(tmp_path)
    assert (reject["source"], reject["kind"], reject["raw"]) == (f"{data}:2", "too_long", json.dumps(LONG))
    assert re.match(r"\d{3} tokens > sequence_len 128 \(excess_length_strategy: drop\)", reject["reason"])
    summary = prepared.summary()
    assert counts(summary) == (3, 2, 1)
    assert (f"1 row longer than sequence_len 128 dropped (excess_length_strategy: drop): 1 from train; "
            f"see {tmp_path / 'out' / 'rejected.jsonl'}") in summary


def test_raise_stops_naming_the_rows_and_the_other_strategies(write_config, tmp_path, bundled_tokenizer):
    data = jsonl(tmp_path, [GOOD, LONG, {**GOOD, "output": "short"}])
    cfg = config(write_config, tmp_path, data, "excess_length_strategy: raise\n")
    for skip in (False, True):  # raise is asked for by name: skip_bad_rows does not skip these
        with pytest.raises(TooLongError, match=rf"{data}:2: \d+ tokens > sequence_len 128") as caught:
            prepare(cfg, bundled_tokenizer, skip_bad_rows=skip)
        assert "1 row longer than sequence_len 128 (excess_length_strategy: raise)" in str(caught.value)
        assert "excess_length_strategy: drop" in str(caught.value) and "or truncate" in str(caught.value)
    assert not (tmp_path / "out" / "rejected.jsonl").exists()


def test_truncate_cuts_ids_and_labels_and_drops_rows_with_no_answer_left(write_config, tmp_path,
                                                                          bundled_tokenizer):
    data = jsonl(tmp_path, [GOOD, LONG, LONG_PROMPT])
    cfg = config(write_config, tmp_path, data, "excess_length_strategy: truncate\nsample_packing: true\n")
    prepared = prepare(cfg, bundled_tokenizer, skip_bad_rows=False)
    fmt = prompt_format(bundled_tokenizer)
    full = encode_row(bundled_tokenizer, fmt, load_files([data]).rows[1])
    [short, cut] = prepared.train
    assert len(full.input_ids) > 300 and len(cut.input_ids) == len(cut.labels) == 128
    assert (cut.input_ids, cut.labels) == (full.input_ids[:128], full.labels[:128])
    assert cut.labels[-1] != IGNORE  # the answer's start is kept and trained on
    [reject] = rejected(tmp_path)
    assert (reject["source"], reject["kind"]) == (f"{data}:3", "no_trained_tokens")
    assert re.match(r"\d{3} tokens > sequence_len 128; cut to 128 tokens \(excess_length_strategy: truncate\), "
                    "no answer token is left: it would train nothing", reject["reason"])
    summary = prepared.summary()
    assert counts(summary) == (3, 2, 1)
    assert "1 row truncated to sequence_len 128 (excess_length_strategy: truncate): 1 in train" in summary
    assert "1 row dropped: cut to sequence_len 128, no answer token was left to train on: 1 from train" in summary
    assert sorted(t for p in prepared.packs for t in p.input_ids) == sorted(short.input_ids + cut.input_ids)
    assert all(len(p.input_ids) <= 128 for p in prepared.packs)


def test_min_sample_len_drops_short_rows(write_config, tmp_path, bundled_tokenizer):
    longer = {**GOOD, "output": "a longer answer, of several words"}
    data = jsonl(tmp_path, [GOOD, longer])
    [good, _] = load_files([data]).rows
    n = len(encode_row(bundled_tokenizer, prompt_format(bundled_tokenizer), good).input_ids)
    cfg = config(write_config, tmp_path, data, f"min_sample_len: {n + 1}\n")
    prepared = prepare(cfg, bundled_tokenizer, skip_bad_rows=False)
    assert [e.source for e in prepared.train] == [f"{data}:2"]
    [reject] = rejected(tmp_path)
    assert (reject["source"], reject["kind"]) == (f"{data}:1", "too_short")
    assert reject["reason"].startswith(f"{n} tokens < min_sample_len {n + 1}")
    assert counts(prepared.summary()) == (2, 1, 1)
    assert f"1 row shorter than min_sample_len {n + 1} tokens dropped: 1 from train" in prepared.summary()


def test_held_out_rows_follow_the_same_rule_and_the_summary_names_the_split(write_config, tmp_path,
                                                                              bundled_tokenizer):
    rows = [{**(LONG if i % 2 else GOOD), "instruction": f"question {i}"} for i in range(20)]
    data = jsonl(tmp_path, rows)
    cfg = config(write_config, tmp_path, data, "val_set_size: 0.5\nseed: 3\n")
    train_rows, val_rows = split_rows(load_files([data]).rows, 0.5, 3)  # drawn before the length rules
    long_in = [sum(r.instruction.endswith(tuple("13579")) for r in split) for split in (train_rows, val_rows)]
    assert all(long_in) and sum(long_in) == 10  # the seed puts long rows in both splits
    prepared = prepare(cfg, bundled_tokenizer, skip_bad_rows=False)
    assert (len(prepared.train), len(prepared.val)) == (10 - long_in[0], 10 - long_in[1])
    assert {r.source for r in prepared.val_rows} == {e.source for e in prepared.val}
    assert all(len(e.input_ids) <= 128 for e in prepared.train + prepared.val)
    assert (f"10 rows longer than sequence_len 128 dropped (excess_length_strategy: drop): "
            f"{long_in[0]} from train, {long_in[1]} from held out") in prepared.summary()
    assert counts(prepared.summary()) == (20, 10, 10) and len(rejected(tmp_path)) == 10


def test_shipped_dataset_at_sequence_len_256(write_config, tmp_path, bundled_tokenizer):
    """data/python_tutor.jsonl under the bundled tokenizer: 22 of its 400 rows are over 256 tokens;
    one of them has a prompt of 291 tokens, so truncating it leaves no answer."""
    fmt = prompt_format(bundled_tokenizer)
    rows = load_files([SHIPPED]).rows
    over = {r.source for r in rows if len(encode_row(bundled_tokenizer, fmt, r).input_ids) > 256}
    assert len(over) == 22
    extra = "val_set_size: 0.1\nsample_packing: true\n"
    dropped = prepare(config(write_config, tmp_path, SHIPPED, extra, 256), bundled_tokenizer, skip_bad_rows=False)
    assert counts(dropped.summary()) == (400, 378, 22)
    assert {r["source"] for r in rejected(tmp_path)} == over
    assert {r["kind"] for r in rejected(tmp_path)} == {"too_long"}
    assert re.search(r"22 rows longer than sequence_len 256 dropped \(excess_length_strategy: drop\): "
                     r"\d+ from train", dropped.summary())
    assert len(dropped.train) + len(dropped.val) == 378 and max(len(p.input_ids) for p in dropped.packs) <= 256

    extra += "excess_length_strategy: truncate\n"
    cut = prepare(config(write_config, tmp_path, SHIPPED, extra, 256), bundled_tokenizer, skip_bad_rows=False)
    [no_answer] = rejected(tmp_path)
    assert no_answer["kind"] == "no_trained_tokens" and no_answer["source"] in over
    examples = cut.train + cut.val
    assert sorted(len(e.input_ids) for e in examples if e.source in over) == [256] * 21
    assert counts(cut.summary()) == (400, 399, 1)
    assert re.search(r"21 rows truncated to sequence_len 256 \(excess_length_strategy: truncate\): \d+ in train",
                     cut.summary())
