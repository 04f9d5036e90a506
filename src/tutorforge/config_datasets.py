"""One entry of a config's `datasets:` list: where its rows are and how they are read.

    spec = cfg.datasets[0]        # DatasetSpec(path="data/python_tutor.jsonl", type="alpaca", ...)

The keys are Axolotl's, with its defaults: sources.py reads `path`, `data_files`, `split`, `name`
and `ds_type`; conversations.py the conversation keys (type chat_template or sharegpt); row_types.py
the other types (the Alpaca spellings, completion with `field`, input_output). config.py holds the
rest of the config and the entry points.
"""
from __future__ import annotations

from dataclasses import dataclass

from tutorforge import axolotl_keys as ax
from tutorforge.conversations import CONVERSATION_TYPES
from tutorforge.row_types import COMPLETION_FIELD
from tutorforge.row_types import TYPES as ROW_TYPES
from tutorforge.rules import Bool, Choice, RoleMap, Str, StrList, StrMap, key

CHAT_TEMPLATES = ("tokenizer_default", "alpaca", "chatml", "llama3", "jinja")  # formatting.CHAT_TEMPLATES and more
DATASET_TYPES = (*CONVERSATION_TYPES, "chat_template.default", *ROW_TYPES)  # conversations.py, row_types.py


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of `datasets:`."""

    path: str = key(None, Str(), "local .json/.jsonl/.csv/.parquet/.arrow file or directory, or a hub dataset "
                    "id (owner/name) in the local Hugging Face cache", required=True)
    type: str = key("alpaca", Choice(DATASET_TYPES, tuple(ax.DATASET_TYPES.items()), ax.DATASET_TYPE_OTHER),
                    "row format: alpaca rows {instruction, input, output} (and Axolotl's other Alpaca "
                    "spellings: alpaca_chat, alpaca:chat, alpaca_chat.load_qa, alpaca_w_system, ...); "
                    "chat_template, a list of messages per row; sharegpt, ShareGPT conversations (read as "
                    "chat_template); completion, raw text under `field`; input_output, segments of "
                    "{text, label}")
    data_files: tuple[str, ...] = key((), StrList(), "files inside `path` to read")
    field: str | None = key(None, Str(), f"type: completion: the key of a row's text (default {COMPLETION_FIELD})")
    split: str = key("train", Str(), "the split to read from a hub dataset or a directory (train.jsonl, "
                     "test.jsonl, ...)")
    name: str | None = key(None, Str(), "configuration name of a hub dataset (README.md configs:, or a folder)")
    ds_type: str | None = key(None, Choice(("json", "jsonl", "csv", "parquet", "arrow"),
                                           tuple(ax.DS_TYPES.items())),
                              "file format (default: from the suffix; json = an array or JSON lines, "
                              "jsonl = JSON lines)")
    # conversations (type: chat_template or sharegpt), with Axolotl's names and defaults
    field_messages: str | None = key(None, Str(), "a row's key holding its messages (default: messages; "
                                     "sharegpt: conversations)")
    message_property_mappings: tuple[tuple[str, str], ...] = key((), StrMap(("role", "content")), "the keys of a "
                                                                 "message holding its role and content "
                                                                 "(default role, content; sharegpt from, value)")
    message_field_role: str | None = key(None, Str(), "older spelling of message_property_mappings.role")
    message_field_content: str | None = key(None, Str(), "older spelling of message_property_mappings.content")
    message_field_training: str | None = key(None, Str(), "a message's key saying whether to train on it "
                                             "(true/false), over roles_to_train")
    roles: tuple[tuple[str, tuple[str, ...]], ...] = key((), RoleMap(), "role names of the data mapped to the "
                                                          "template's: {user: [human, user], assistant: [gpt, "
                                                          "assistant], system: [system], tool: [tool]} by default")
    roles_to_train: tuple[str, ...] = key(("assistant",), StrList(), "the roles whose turns are trained on")
    train_on_eos: str = key("turn", Choice(("turn", "last", "all", "none")), "which end-of-turn tokens are "
                            "trained: after each trained turn, the last one only, all, none")
    field_system: str | None = key(None, Str(), "a row's key holding a system prompt (a system turn first)")
    drop_system_message: bool = key(False, Bool(), "leave out the conversation's system turns")
    chat_template: str | None = key(None, Choice(CHAT_TEMPLATES, tuple(ax.CHAT_TEMPLATES.items())),
                                    "this dataset's prompt format (default: the top-level chat_template)")
    conversation: str | None = key(None, Choice(tuple(ax.CONVERSATIONS), (), ax.CONVERSATION_OTHER),
                                   "older sharegpt key, a FastChat template name: chatml or llama-3 is this "
                                   "dataset's chat_template")
