"""A dataset row -> the turns of a conversation, with Axolotl's field and role mappings.

    reading = conversation_reading(spec, index)   # a `datasets:` entry of type chat_template or sharegpt
    match read_conversation(row, reading):        # row: one JSON object of the dataset
        case Problem(kind, what): ...             # data.py turns it into a Reject (data.KINDS[kind])
        case (turns, extra_keys): ...             # Turn objects, roles mapped to the template's

What Axolotl's chat_template strategy does (axolotl/prompt_strategies/chat_template.py:
ChatTemplatePrompter, ChatTemplateStrategy.get_conversation_thread, transform_message), read the same
way here: the messages are the list under `field_messages`; a message's role and content are under
the keys `message_property_mappings` names (the older message_field_role / message_field_content set
the same); its role is mapped through `roles` (given, it replaces the default mapping whole, as
Axolotl's does); `roles_to_train` is mapped through it too; a row's `field_system` value becomes a
first system turn unless the first message is one already; `drop_system_message` drops a leading
system turn; `message_field_training` names a message key whose true/false overrides roles_to_train.
type: sharegpt is read as chat_template with ShareGPT's keys (conversations, from, value), with a
warning: Axolotl deprecated it.

Where Axolotl would pass a problem on to the chat template (or fail a whole run), a row here is a
Problem with a kind: not a conversation, a message without its role or content, a role that is
neither mapped nor a template role, content that is empty or not text, a training flag that is not
true/false, no turn to train on. The text checks every reader shares (UTF-8, surrogates) and
duplicates are data.py's.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from tutorforge.errors import UserError

log = logging.getLogger(__name__)

# Axolotl ChatTemplatePrompter's roles when `roles:` is not set: template role <- the data's names.
DEFAULT_ROLES = (
    ("user", ("human", "user")),
    ("assistant", ("gpt", "assistant")),
    ("system", ("system",)),
    ("tool", ("tool",)),
)
TEMPLATE_ROLES = frozenset({"system", "user", "assistant", "tool"})  # the roles chat templates render
# type -> (field_messages, role key, content key) when the dataset's keys do not say
DEFAULTS = {
    "chat_template": ("messages", "role", "content"),  # Axolotl's StrategyLoader and ChatTemplatePrompter
    "sharegpt": ("conversations", "from", "value"),  # ShareGPT's own format, as Axolotl's sharegpt read it
}
CONVERSATION_TYPES = tuple(DEFAULTS)  # the dataset types read here
DEFAULT_FIELD_SYSTEM = "system"  # ChatTemplatePrompter's field_system, which its loader never overrides
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
              bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, its role mapped to the template's (system, user, assistant, tool)."""

    role: str
    content: str
    train: bool | None = None  # message_field_training's value: train it or not; None: by roles_to_train

    def trained(self, roles_to_train: tuple[str, ...], train_on_inputs: bool = False) -> bool:
        """Whether training learns this turn: its own flag where it has one, else its role is one of
        roles_to_train (with train_on_inputs, every turn is)."""
        return self.train if self.train is not None else (train_on_inputs or self.role in roles_to_train)


@dataclass(frozen=True)
class Reading:
    """How one dataset's rows are read as conversations (its DatasetSpec's keys, defaults filled in)."""

    field_messages: str
    role_key: str
    content_key: str
    training_key: str | None
    roles: dict[str, str]  # the data's role name -> the template's
    template_roles: frozenset[str]  # roles a message may name unmapped
    roles_to_train: tuple[str, ...]  # mapped through `roles`, as Axolotl maps them
    train_on_eos: str
    field_system: str
    drop_system_message: bool


class Problem(NamedTuple):
    """Why a row is no usable conversation: a data.KINDS kind and what is wrong with this row."""

    kind: str
    what: str


def json_type(value: object) -> str:
    """A Python value's JSON type name, for messages."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def _message_keys(spec, where: str) -> tuple[str, str]:
    """The message keys of role and content: message_property_mappings, else the older
    message_field_role / message_field_content, else the type's default; a conflict is an error
    (Axolotl's handle_legacy_message_fields_logic raises on it too)."""
    mapped = dict(spec.message_property_mappings)
    _, role, content = DEFAULTS[spec.type]
    defaults = {"role": role, "content": content}
    keys = []
    for prop, older in (("role", spec.message_field_role), ("content", spec.message_field_content)):
        if older and prop in mapped and mapped[prop] != older:
            raise UserError(f"{where}: message_field_{prop}: {older} and message_property_mappings.{prop}: "
                            f"{mapped[prop]} disagree; keep one (message_field_{prop} is the older spelling)")
        keys.append(mapped.get(prop) or older or defaults[prop])
    return keys[0], keys[1]


def conversation_reading(spec, index: int) -> Reading:
    """The Reading of `datasets[index]` (a DatasetSpec of type chat_template or sharegpt)."""
    where = f"datasets[{index}]"
    if spec.type == "sharegpt":
        log.warning("%s: type: sharegpt is deprecated by Axolotl; read as chat_template (ShareGPT's keys "
                    "by default: field_messages conversations, role from, content value); write type: "
                    "chat_template with those keys to silence this warning", where)
    role_key, content_key = _message_keys(spec, where)
    given = spec.roles or DEFAULT_ROLES
    roles = {name: role for role, names in given for name in names}
    return Reading(
        field_messages=spec.field_messages or DEFAULTS[spec.type][0],
        role_key=role_key, content_key=content_key, training_key=spec.message_field_training,
        roles=roles, template_roles=TEMPLATE_ROLES | {role for role, _ in given},
        roles_to_train=tuple(roles.get(r, r) for r in spec.roles_to_train),
        train_on_eos=spec.train_on_eos, field_system=spec.field_system or DEFAULT_FIELD_SYSTEM,
        drop_system_message=spec.drop_system_message)


def _turn(n: int, message: object, reading: Reading) -> Turn | Problem:
    """Message number `n` (from 1) of a row as a Turn, or what is wrong with it."""
    if not isinstance(message, dict):
        return Problem("not_a_conversation", f"message {n} is a JSON {json_type(message)}, not an object")
    missing = [k for k in (reading.role_key, reading.content_key) if message.get(k) is None]
    if missing:  # Axolotl's transform_message takes a null as missing too
        return Problem("missing_message_key", f"message {n} has no {' or '.join(map(repr, missing))} (its "
                       f"keys: {', '.join(map(str, message)) or 'none'})")
    name, content = message[reading.role_key], message[reading.content_key]
    if not isinstance(name, str) or (name not in reading.roles and name not in reading.template_roles):
        shown = repr(name) if isinstance(name, str) else f"a JSON {json_type(name)}"
        return Problem("unknown_role", f"message {n}'s role {shown} is not one of the template's "
                       f"({', '.join(sorted(reading.template_roles))}) nor mapped to one "
                       f"(mapped: {', '.join(sorted(reading.roles))})")
    if not isinstance(content, str):
        return Problem("content_not_text", f"message {n}'s {reading.content_key!r} is a JSON {json_type(content)}")
    if not content.strip():
        return Problem("empty_content", f"message {n}'s {reading.content_key!r} is empty")
    train = message.get(reading.training_key) if reading.training_key else None
    if train is not None and not isinstance(train, bool):
        return Problem("bad_training_flag", f"message {n}'s {reading.training_key!r} is "
                       f"{train!r}, a JSON {json_type(train)}")
    return Turn(reading.roles.get(name, name), content, train)


def _system_turn(row: dict, reading: Reading) -> Turn | Problem | None:
    """The row's `field_system` prompt as a system turn; None where it has none (absent, null, empty)."""
    prompt = row.get(reading.field_system)
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return None
    if not isinstance(prompt, str):
        return Problem("content_not_text", f"the system prompt {reading.field_system!r} is a JSON "
                       f"{json_type(prompt)}")
    return Turn("system", prompt)


def read_conversation(row: dict, reading: Reading) -> Problem | tuple[tuple[Turn, ...], Counter]:
    """A row's turns (system prompt first when field_system gives one, a leading system turn
    dropped with drop_system_message) and its keys other than the messages and system prompt."""
    messages = row.get(reading.field_messages)
    if not isinstance(messages, list) or not messages:
        key = repr(reading.field_messages)
        what = (f"no {key} key (the list of messages)" if messages is None else f"{key} is an empty list"
                if messages == [] else f"{key} is a JSON {json_type(messages)}, not a list of messages")
        return Problem("not_a_conversation", what)
    turns = []
    for n, message in enumerate(messages, start=1):
        turn = _turn(n, message, reading)
        if isinstance(turn, Problem):
            return turn
        turns.append(turn)
    if turns[0].role != "system" and (system := _system_turn(row, reading)) is not None:
        if isinstance(system, Problem):
            return system
        turns.insert(0, system)
    if reading.drop_system_message and turns[0].role == "system":
        turns.pop(0)  # Axolotl drops the first turn only, when it is a system turn
    if not any(t.trained(reading.roles_to_train) for t in turns):
        flagged = f" and no message's {reading.training_key!r} is true" if reading.training_key else ""
        return Problem("no_trainable_turn", f"no turn of roles_to_train ({', '.join(reading.roles_to_train)})"
                       f"{flagged}: roles {', '.join(t.role for t in turns)}")
    extra = Counter(k for k in row if k not in (reading.field_messages, reading.field_system))
    return tuple(turns), extra


def prompt_and_answer(turns: tuple[Turn, ...]) -> tuple[str, str]:
    """(the last user turn before the last assistant turn, the last assistant turn): what the
    brevity checks and `data lint` read as a conversation's instruction and output ("" if none)."""
    last = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=len(turns))
    answer = turns[last].content if last < len(turns) else ""
    prompt = next((t.content for t in reversed(turns[:last]) if t.role == "user"), "")
    return prompt, answer
