"""The Axolotl dataset types whose rows are not conversations: which keys a row of each holds, read
into a data.Row's fields (conversations, type chat_template and sharegpt, are conversations.py's).

    reading = row_reading(spec, index)     # a `datasets:` entry's type -> AlpacaReading, Completion, Segments
    match read_row(row, reading):          # row: one JSON object of the dataset
        case Problem(kind, what): ...      # data.py turns it into a Reject (data.KINDS[kind])
        case Read(fields, key, extra, texts): ...

- The Alpaca spellings (ALPACA_TYPES): Axolotl's `alpaca`, `alpaca:STYLE`, `alpaca_chat`,
  `alpaca_chat.load_qa`, `alpaca_w_system.load_open_orca` ... read the same three parts (instruction,
  input, answer) and sometimes a system prompt, each under the keys its loader reads
  (axolotl/prompt_strategies/alpaca_chat.py, alpaca_instruct.py, alpaca_w_system.py, prompters.py).
  Axolotl's loaders also fix the prompt text around them (STYLE: "USER: ...\\nASSISTANT:" for chat,
  ChatML text for chatml); tutorforge renders every row in the run's one prompt format (the model's
  chat template, or the Alpaca prompt for a base model), the format the Modelfile serves, and says so
  in a warning where the loader's text would differ from the Alpaca prompt.
- `completion` (axolotl/prompt_strategies/completion.py): the text under `field` (default "text"),
  trained whole; prepare.py cuts a text longer than sequence_len into sequence_len-token chunks,
  as Axolotl does (without Axolotl's silent cut at 64 x sequence_len: every token is kept).
- `input_output` (axolotl/prompt_strategies/input_output.py): `segments`, a list of {text, label};
  the texts are tokenised one after another with no special tokens added, and a segment is trained
  when its label is true (every segment under train_on_inputs).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from tutorforge.conversations import Problem, json_type
from tutorforge.errors import UserError

log = logging.getLogger(__name__)

# Axolotl's prompt text of each style (prompters.AlpacaPrompter.match_prompt_style), as shown to users.
STYLES = {"instruct": "the Alpaca prompt ('### Instruction: ... ### Response:')",
          "chat": "'USER: ...\\nASSISTANT:' text", "chatml": "ChatML text ('<|im_start|>user ...')",
          "phi": "Phi text ('<|user|> ... <|assistant|>')",
          "concise": "the Alpaca chat prompt asking for concise answers",
          "no_prompt": "the Alpaca prompt without its preamble",
          "open_orca": "OpenOrca's '### Human: ... ### Assistant:' text",
          "open_orca_chatml": "OpenOrca's ChatML text"}


@dataclass(frozen=True)
class AlpacaReading:
    """An Alpaca spelling: the keys of instruction, input (None: the loader reads none), answer and
    system prompt (None: none), and the style of Axolotl's prompt text."""

    instruction: str = "instruction"
    input: str | None = "input"
    output: str = "output"
    system: str | None = None
    style: str = "instruct"

    @property
    def required(self) -> tuple[str, ...]:
        """The keys every row needs (Axolotl's loaders raise KeyError without them; input may be absent)."""
        return (self.instruction, self.output) + ((self.system,) if self.system else ())


_ALPACA = AlpacaReading()
_CHAT = AlpacaReading(style="chat")
_QA = AlpacaReading("question", None, "answer", style="chat")
_W_SYSTEM = AlpacaReading(system="system", style="chat")
_ORCA = AlpacaReading("question", None, "response", "system_prompt", style="open_orca")
# type -> its reading (Axolotl's spelling: module.load_function, or alpaca:STYLE for the base type)
ALPACA_TYPES: dict[str, AlpacaReading] = {
    "alpaca": _ALPACA,  # utils/data/wrappers.py _handle_alpaca_dataset, AlpacaPrompter("instruct")
    "alpaca:instruct": _ALPACA,
    "alpaca:chat": _CHAT,  # alpaca:STYLE: sft.py _parse_dataset_type, AlpacaPrompter(STYLE)
    "alpaca:chatml": AlpacaReading(style="chatml"),
    "alpaca:phi": AlpacaReading(style="phi"),
    "alpaca_instruct": _ALPACA,  # alpaca_instruct.load
    "alpaca_instruct.load": _ALPACA,
    "alpaca_instruct.load_no_prompt": AlpacaReading(style="no_prompt"),
    "alpaca_chat": _CHAT,  # alpaca_chat.load
    "alpaca_chat.load": _CHAT,
    "alpaca_chat.load_concise": AlpacaReading(style="concise"),
    "alpaca_chat.load_qa": _QA,  # AlpacaQAPromptTokenizingStrategy: question, answer
    "alpaca_chat.load_camel_ai": AlpacaReading("message_1", None, "message_2", style="chat"),
    "alpaca_chat.load_no_prompt": AlpacaReading(style="no_prompt"),
    "alpaca_w_system": _W_SYSTEM,  # alpaca_w_system.load = load_chat: instruction, input, output, system
    "alpaca_w_system.load": _W_SYSTEM,
    "alpaca_w_system.load_chat": _W_SYSTEM,
    "alpaca_w_system.load_instruct": AlpacaReading(system="system"),
    "alpaca_w_system.load_open_orca": _ORCA,  # OpenOrcaPromptTokenizingStrategy
    "alpaca_w_system.load_open_orca_chatml": AlpacaReading("question", None, "response", "system_prompt",
                                                           style="open_orca_chatml"),
}
COMPLETION_FIELD = "text"  # completion.py CompletionPromptTokenizingStrategy._field
TYPES = (*ALPACA_TYPES, "completion", "completion.load", "input_output", "input_output.load")


@dataclass(frozen=True)
class Completion:
    """type: completion: the key of a row's text."""

    field: str = COMPLETION_FIELD


@dataclass(frozen=True)
class Segments:
    """type: input_output: segments of {text, label} (Axolotl's fixed keys)."""


class Read(NamedTuple):
    """A usable row: its Row fields, the key duplicates are found by, its other keys, and its texts
    (label, text) for data.py's checks that every reader shares (UTF-8, surrogates)."""

    fields: dict
    key: tuple
    extra: Counter
    texts: list[tuple[str, str]]


RowReading = AlpacaReading | Completion | Segments


def row_reading(spec, index: int) -> RowReading:
    """The reading of `datasets[index]` (a DatasetSpec whose type is one of TYPES)."""
    where = f"datasets[{index}]"
    if spec.type.startswith("completion"):
        return Completion(spec.field or COMPLETION_FIELD)
    if spec.field:
        raise UserError(f"{where}.field: {spec.field}: only type: completion reads it (the key of a row's text); "
                        f"remove it, or set type: completion")
    if spec.type.startswith("input_output"):
        return Segments()
    reading = ALPACA_TYPES[spec.type]
    if reading.style != "instruct":
        parts = ((reading.instruction, "instruction"), (reading.input, "input"), (reading.output, "output"),
                 (reading.system, "system prompt"))
        keys = ", ".join(f"{k} -> {part}" for k, part in parts if k)
        log.warning("%s: type: %s: rows read as %s; Axolotl writes them in %s, tutorforge in the run's one "
                    "prompt format (the model's chat template, or the Alpaca prompt for a base model), which the "
                    "Modelfile serves too", where, spec.type, keys, STYLES[reading.style])
    return reading


def _text(row: dict, key: str, *, optional: bool = False) -> str | Problem:
    """The string under `key`: "" for an absent or null optional key, else a Problem when absent,
    not a string, or (required) empty."""
    if key not in row:
        return "" if optional else Problem("missing_field", f"missing {key!r}")
    value = row[key]
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        return Problem("wrong_type", f"{key!r} is a JSON {json_type(value)}, not a string")
    if not optional and not value.strip():
        return Problem("empty_field", f"{key!r} is empty")
    return value


def _alpaca(row: dict, reading: AlpacaReading) -> Read | Problem:
    if missing := [k for k in reading.required if k not in row]:
        keys = (k for k in (reading.instruction, reading.input, reading.output, reading.system) if k)
        return Problem("missing_field", f"missing {', '.join(map(repr, missing))} (type's keys: {', '.join(keys)})")
    parts = {}
    for part, key, optional in (("instruction", reading.instruction, False), ("input", reading.input, True),
                                ("output", reading.output, False), ("system", reading.system, True)):
        value = _text(row, key, optional=optional) if key else ""
        if isinstance(value, Problem):
            return value
        parts[part] = value
    used = {reading.instruction, reading.input, reading.output, reading.system}
    texts = [(repr(k), parts[p]) for p, k in zip(parts, (reading.instruction, reading.input, reading.output,
                                                          reading.system), strict=True) if k]
    return Read(parts, tuple(v.strip() for v in parts.values()), Counter(k for k in row if k not in used), texts)


def _completion(row: dict, reading: Completion) -> Read | Problem:
    text = _text(row, reading.field)
    if isinstance(text, Problem):
        where = f"type: completion reads a row's text under `field` (here {reading.field!r})"
        return Problem(text.kind, f"{text.what} ({where})")
    fields = {"instruction": "", "input": "", "output": text, "kind": "completion"}
    return Read(fields, ("completion", text.strip()), Counter(k for k in row if k != reading.field),
                [(repr(reading.field), text)])


def _segments(row: dict) -> Read | Problem:
    segments = row.get("segments")
    if not isinstance(segments, list) or not segments:
        what = ("no 'segments' key (a list of {text, label})" if segments is None else "'segments' is an empty list"
                if segments == [] else f"'segments' is a JSON {json_type(segments)}, not a list of {{text, label}}")
        return Problem("bad_segment", what)
    out = []
    for n, segment in enumerate(segments, start=1):
        if not isinstance(segment, dict):
            return Problem("bad_segment", f"segment {n} is a JSON {json_type(segment)}, not an object {{text, label}}")
        text, label = segment.get("text"), segment.get("label")
        if not isinstance(text, str):
            what = "missing" if text is None else f"a JSON {json_type(text)}"
            return Problem("bad_segment", f"segment {n}'s 'text' is {what}")
        if not isinstance(label, bool):
            return Problem("bad_segment", f"segment {n}'s 'label' is {'missing' if label is None else repr(label)}, "
                           "not true or false")
        out.append((text, label))
    if not any(label and text.strip() for text, label in out):
        return Problem("no_trained_segment", "no segment with label true and text: nothing to train on")
    fields = {"instruction": "".join(t for t, label in out if not label), "input": "",
              "output": "".join(t for t, label in out if label), "kind": "segments", "segments": tuple(out)}
    return Read(fields, ("segments", *out), Counter(k for k in row if k != "segments"),
                [(f"segment {n}", t) for n, (t, _) in enumerate(out, start=1)])


def read_row(row: dict, reading: RowReading) -> Read | Problem:
    """A row (a JSON object) of this reading's type as Row fields, or what is wrong with it."""
    if isinstance(reading, Completion):
        return _completion(row, reading)
    if isinstance(reading, Segments):
        return _segments(row)
    return _alpaca(row, reading)
