"""conversations.py: chat_template and sharegpt rows read into turns with Axolotl's field and role
mappings, through data.load_datasets; every unusable conversation a named reject with file:line."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tutorforge.config import load_config
from tutorforge.conversations import Turn
from tutorforge.data import KINDS, load_datasets
from tutorforge.errors import UserError
from tutorforge.prepare import accept

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is a list?"},
                     {"role": "assistant", "content": "An ordered, mutable sequence."},
                     {"role": "user", "content": "And a tuple?"},
                     {"role": "assistant", "content": "An immutable one."}]}


def write_rows(path: Path, rows: list) -> Path:
    """One row per line: a str is written as it is (a broken line), anything else as JSON."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def load(write_config, tmp_path: Path, rows: list | Path, keys: str = "", type_: str = "chat_template"):
    """load_datasets on one `datasets:` entry of `type_` with the YAML `keys` (one per line)."""
    path = rows if isinstance(rows, Path) else write_rows(tmp_path / "d.jsonl", rows)
    entry = "".join(f"    {line}\n" for line in keys.splitlines())
    cfg = load_config(write_config(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: {path}\n"
                                   f"    type: {type_}\n{entry}"))
    return load_datasets(cfg.datasets, tmp_path)


def roles(row) -> list[str]:
    return [t.role for t in row.turns]


def test_chat_template_rows_become_turns_with_instruction_and_output(write_config, tmp_path):
    report = load(write_config, tmp_path, [CHAT, {**CHAT, "id": 7, "messages": CHAT["messages"][1:3]}])
    assert (report.rows_read, len(report.rows), report.rejects) == (2, 2, [])
    first, second = report.rows
    assert first.turns == tuple(Turn(m["role"], m["content"]) for m in CHAT["messages"])
    assert (first.instruction, first.input, first.output) == ("And a tuple?", "", "An immutable one.")
    assert (first.roles_to_train, first.train_on_eos, first.source) == (("assistant",), "turn", f"{tmp_path}/d.jsonl:1")
    assert (second.instruction, second.output, len(second.turns)) == ("What is a list?",
                                                                      "An ordered, mutable sequence.", 2)
    assert report.extra_keys == {"id": 1}
    assert json.loads(first.raw) == CHAT  # the row as read, for rejected.jsonl


def test_a_json_array_file_is_read_by_the_same_code_with_its_lines(write_config, tmp_path):
    path = tmp_path / "chats.json"
    sharegpt_roles = {"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]}
    path.write_text(json.dumps([CHAT, sharegpt_roles], indent=1))
    report = load(write_config, tmp_path, path)
    assert [r.source.rsplit(":", 1)[1] for r in report.rows] == ["2", "26"]
    assert roles(report.rows[1]) == ["user", "assistant"]  # Axolotl's default roles map human, gpt


def test_every_bad_conversation_is_a_named_reject_and_nothing_is_lost(write_config, tmp_path):
    def one(role: str, content: object = "text", **more) -> dict:
        return {"messages": [{"role": "user", "content": "q"}, {"role": role, "content": content, **more}]}

    rows = [CHAT,
            ["not", "an object"],                                   # 2 not_an_object
            {"text": "no messages"},                                # 3 not_a_conversation
            {"messages": "hi"},                                     # 4 not_a_conversation
            {"messages": ["hi"]},                                   # 5 not_a_conversation
            {"messages": [{"content": "hi"}]},                      # 6 missing_message_key (role)
            {"messages": [{"role": "user", "content": None}]},      # 7 missing_message_key (null content)
            one("bot"),                                             # 8 unknown_role
            one("assistant", "   "),                                # 9 empty_content
            one("assistant", ["a", "b"]),                           # 10 content_not_text
            one("assistant", train="yes"),                          # 11 bad_training_flag
            {"messages": [{"role": "user", "content": "only a question"}]},  # 12 no_trainable_turn
            CHAT,                                                   # 13 duplicate
            '{"messages": [',                                       # 14 malformed_json
            one("assistant", "\ud800"),                             # 15 lone_surrogate (json.dumps writes \ud800)
            one("assistant", "an answer"),                          # 16 accepted
            {"messages": [{"role": "user", "content": "teach me", "train": True}]}]  # 17 accepted: flagged
    path = write_rows(tmp_path / "d.jsonl", rows)
    report = load(write_config, tmp_path, path, "message_field_training: train")
    kinds = [(int(r.source.rsplit(":", 1)[1]), r.kind) for r in report.rejects]
    assert kinds == [(2, "not_an_object"), (3, "not_a_conversation"), (4, "not_a_conversation"),
                     (5, "not_a_conversation"), (6, "missing_message_key"), (7, "missing_message_key"),
                     (8, "unknown_role"), (9, "empty_content"), (10, "content_not_text"),
                     (11, "bad_training_flag"), (12, "no_trainable_turn"), (13, "duplicate"),
                     (14, "malformed_json"), (15, "lone_surrogate")]
    assert report.rows_read == 17 == len(report.rows) + len(report.rejects) and len(report.rows) == 3
    assert [r.source for r in report.rows] == [f"{path}:{n}" for n in (1, 16, 17)]
    reasons = {r.source.rsplit(":", 1)[1]: r.reason for r in report.rejects}
    assert reasons["3"].startswith("no 'messages' key (the list of messages); each row needs its messages")
    assert reasons["4"].startswith("'messages' is a JSON string, not a list of messages;")
    assert reasons["5"].startswith("message 1 is a JSON string, not an object;")
    assert "message 1 has no 'role' (its keys: content)" in reasons["6"]
    assert "message 2's role 'bot' is not one of the template's (assistant, system, tool, user)" in reasons["8"]
    assert reasons["8"].endswith(KINDS["unknown_role"])
    assert "message 2's 'content' is a JSON array" in reasons["10"]
    assert "message 2's 'train' is 'yes', a JSON string" in reasons["11"]
    assert "no turn of roles_to_train (assistant) and no message's 'train' is true: roles user" in reasons["12"]
    assert "turn 2 (assistant) holds \\ud800 without its pair" in reasons["15"]
    assert "14 rejected" in report.summary() and "not_a_conversation 3" in report.summary()

    kept = accept(report, skip_bad_rows=True, rejects_path=tmp_path / "out" / "rejected.jsonl")
    written = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and [w["kind"] for w in written] == [kind for _, kind in kinds]
    lines = path.read_text().splitlines()
    assert [w["raw"] for w in written] == [lines[n - 1] for n, _ in kinds]  # verbatim


def test_field_system_becomes_the_first_turn_unless_one_is_there(write_config, tmp_path):
    chat = {"messages": CHAT["messages"][1:3]}
    rows = [{**chat, "prompt": "You teach Python."}, {**CHAT, "prompt": "Not used."}, {**chat, "prompt": ""},
            {"messages": CHAT["messages"][3:], "id": 3, "system": "not read when field_system names another key"}]
    report = load(write_config, tmp_path, rows, "field_system: prompt")
    assert [roles(r) for r in report.rows] == [["system", "user", "assistant"], roles_of(CHAT), ["user", "assistant"],
                                               ["user", "assistant"]]
    assert report.rows[0].turns[0] == Turn("system", "You teach Python.")
    assert report.rows[1].turns[0].content == "Be brief."  # the conversation's own system turn stays
    assert report.extra_keys == {"id": 1, "system": 1}
    default = load(write_config, tmp_path, [{**chat, "system": "From Axolotl's default key."}])
    assert default.rows[0].turns[0] == Turn("system", "From Axolotl's default key.") and not default.extra_keys
    bad = load(write_config, tmp_path, [{**chat, "system": ["a list"]}])
    assert bad.rejects[0].kind == "content_not_text"
    assert "the system prompt 'system' is a JSON array" in bad.rejects[0].reason


def roles_of(row: dict) -> list[str]:
    return [m["role"] for m in row["messages"]]


def test_drop_system_message_drops_the_leading_system_turn(write_config, tmp_path):
    chat = {"messages": CHAT["messages"][1:3]}
    rows = [CHAT, {**chat, "system": "From the row."}, {"messages": CHAT["messages"][3:]}]
    kept = load(write_config, tmp_path, rows)
    assert [len(r.turns) for r in kept.rows] == [5, 3, 2]
    dropped = load(write_config, tmp_path, rows, "drop_system_message: true")
    assert [roles(r) for r in dropped.rows] == [roles_of(CHAT)[1:], ["user", "assistant"], ["user", "assistant"]]
    assert dropped.rows[0].turns[0] == Turn("user", "What is a list?") and dropped.rejects == []
    middle = {"messages": [CHAT["messages"][1], CHAT["messages"][0], CHAT["messages"][2]]}
    assert roles(load(write_config, tmp_path, [middle], "drop_system_message: true").rows[0]) == [
        "user", "system", "assistant"]  # only a leading system turn goes, as in Axolotl


def test_message_field_training_overrides_roles_to_train(write_config, tmp_path):
    row = {"messages": [{"role": "user", "content": "q1", "learn": True},
                        {"role": "assistant", "content": "a1", "learn": False},
                        {"role": "user", "content": "q2"},
                        {"role": "assistant", "content": "a2", "learn": None}]}
    report = load(write_config, tmp_path, [row], "message_field_training: learn")
    assert [t.train for t in report.rows[0].turns] == [True, False, None, None]
    unflagged = load(write_config, tmp_path, [row])  # the key is not read unless named
    assert [t.train for t in unflagged.rows[0].turns] == [None] * 4
    only_false = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "learn": False}]}
    rejected = load(write_config, tmp_path, [only_false], "message_field_training: learn")
    assert [r.kind for r in rejected.rejects] == ["no_trainable_turn"]


def test_roles_replace_the_default_mapping_and_map_roles_to_train(write_config, tmp_path):
    rows = [{"messages": [{"role": "person", "content": "q"}, {"role": "bot", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "human", "content": "q"}, {"role": "bot", "content": "c"}]}]
    keys = "roles:\n  user: [person]\n  assistant: [bot]\nroles_to_train: [bot, person]\ntrain_on_eos: all"
    report = load(write_config, tmp_path, rows, keys)
    assert [roles(r) for r in report.rows] == [["user", "assistant"], ["user", "assistant"]]
    assert (report.rows[0].roles_to_train, report.rows[0].train_on_eos) == (("assistant", "user"), "all")
    assert [(r.source.rsplit(":", 1)[1], r.kind) for r in report.rejects] == [("3", "unknown_role")]
    assert "role 'human'" in report.rejects[0].reason and "(mapped: bot, person)" in report.rejects[0].reason
    reviewed = {"messages": [{"role": "u", "content": "q"}, {"role": "r", "content": "a"}]}
    custom = load(write_config, tmp_path, [reviewed], "roles:\n  user: [u]\n  reviewer: [r]\nroles_to_train: [r]")
    assert roles(custom.rows[0]) == ["user", "reviewer"] and custom.rows[0].roles_to_train == ("reviewer",)


def test_sharegpt_defaults_and_its_deprecation_warning(write_config, tmp_path, caplog):
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is pip?"},
                             {"from": "gpt", "value": "Python's installer."}], "id": "x1"}
    with caplog.at_level(logging.WARNING, logger="tutorforge.conversations"):
        report = load(write_config, tmp_path, [row, {"messages": CHAT["messages"]}], type_="sharegpt")
    assert roles(report.rows[0]) == ["system", "user", "assistant"]
    assert (report.rows[0].instruction, report.rows[0].output) == ("What is pip?", "Python's installer.")
    assert [r.kind for r in report.rejects] == ["not_a_conversation"]  # no "conversations" key
    assert "no 'conversations' key" in report.rejects[0].reason
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "datasets[0]: type: sharegpt is deprecated by Axolotl" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tutorforge.conversations"):
        load(write_config, tmp_path, [CHAT])
    assert not caplog.records  # chat_template is no deprecated type


def test_message_keys_and_their_older_spellings(write_config, tmp_path):
    row = {"dialog": [{"who": "user", "text": "q"}, {"who": "assistant", "text": "a"}]}
    mapped = load(write_config, tmp_path, [row], "field_messages: dialog\nmessage_property_mappings:\n"
                                                "  role: who\n  content: text")
    older = load(write_config, tmp_path, [row], "field_messages: dialog\nmessage_field_role: who\n"
                                               "message_field_content: text")
    expected = [(Turn("user", "q"), Turn("assistant", "a"))]
    assert [r.turns for r in mapped.rows] == [r.turns for r in older.rows] == expected
    both = load(write_config, tmp_path, [row], "field_messages: dialog\nmessage_property_mappings:\n  role: who\n"
                                              "message_field_role: who\nmessage_field_content: text")
    assert len(both.rows) == 1  # the same key spelled both ways agrees
    with pytest.raises(UserError, match=r"datasets\[0\]: message_field_role: speaker and "
                                        r"message_property_mappings.role: who disagree"):
        load(write_config, tmp_path, [row], "message_property_mappings:\n  role: who\nmessage_field_role: speaker")


def test_alpaca_datasets_read_no_turns(write_config, tmp_path):
    report = load(write_config, tmp_path, [{"instruction": "a", "output": "b"}, CHAT], type_="alpaca")
    assert [r.turns for r in report.rows] == [()] and [r.kind for r in report.rejects] == ["missing_field"]


def test_a_conversation_longer_than_sequence_len_is_dropped_named_and_kept(write_config, tmp_path, bundled_tokenizer):
    from tutorforge.prepare import prepare

    long = {"messages": [{"role": "user", "content": "Explain loops."},
                         {"role": "assistant", "content": "A loop repeats. " * 60}]}
    rows = [CHAT, long, {"messages": "broken"}, {"messages": CHAT["messages"][1:3]}]
    path = write_rows(tmp_path / "d.jsonl", rows)
    cfg = load_config(write_config(f"base_model: smollm2\nadapter: lora\nsequence_len: 96\nval_set_size: 0\n"
                                   f"datasets:\n  - path: {path}\n    type: chat_template\n"
                                   f"output_dir: {tmp_path / 'out'}\ntutorforge:\n  skip_bad_rows: true\n"))
    prepared = prepare(cfg, bundled_tokenizer, skip_bad_rows=False)
    written = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [(w["source"].rsplit(":", 1)[1], w["kind"]) for w in written] == [("3", "not_a_conversation"),
                                                                             ("2", "too_long")]
    assert "tokens > sequence_len 96" in written[1]["reason"]
    assert [w["raw"] for w in written] == [path.read_text().splitlines()[n] for n in (2, 1)]  # verbatim
    assert prepared.load.rows_read == 4 == len(prepared.train) + len(written)


def test_sharegpts_older_conversation_key_names_the_chat_template(write_config, tmp_path):
    from tutorforge.config import parse

    def parsed(entry: str):
        return parse(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: d.jsonl\n    type: sharegpt\n{entry}",
                     "c.yml")

    for name, template in (("chatml", "chatml"), ("llama-3", "llama3")):
        report = parsed(f"    conversation: {name}\n")
        assert not report.errors and report.config is not None
        assert report.config.datasets[0].chat_template == template
        assert any(f"read as this dataset's chat_template: {template}" in w.message for w in report.warnings)
    [error] = parsed("    conversation: vicuna_v1.1\n").errors
    assert "FastChat's other conversation templates are not offered; set chat_template" in error.message
    [error] = parsed("    conversation: chatml\n    chat_template: llama3\n").errors
    assert "chatml renders as chat_template chatml, but this entry's chat_template is llama3" in error.message
