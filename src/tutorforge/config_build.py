"""Typed, frozen dataclasses built from YAML nodes, each problem reported with its YAML path and line.

    report = Report("recipe.yml")                               # config.Report, or any `Problems`
    config = build(Config, loader, root, "", report, top=True)  # None where a required key is missing

`build` knows nothing of any one config: it reads each field's metadata (`rule`, `doc`, `required`,
`section`, `list_of`, `internal`, as rules.key and config.section write it). A key that the class lacks is
looked up in Axolotl's schema (axolotl_keys.schema): a refused key is an error naming the reason, an
ignored one a warning; any other key is unknown, with a "did you mean". A field whose key Axolotl's
schema marks ignored warns when set. A bad value keeps its default, so one pass reports every problem.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Protocol

import yaml

from tutorforge import axolotl_keys as ax
from tutorforge.rules import Invalid, did_you_mean


class Problems(Protocol):
    """Where problems go (config.Report): each with its severity, YAML path, node (for the line)
    and message."""

    def add(self, severity: str, path: str, node: yaml.Node | None, message: str) -> None: ...

    memory_savings: list[str]  # what ignored_memory_saving recorded

    def ignored_memory_saving(self, path: str) -> None:
        """Record a key (or value) that saves memory in Axolotl and is ignored here, for the plan."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_empty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def _construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_object(node, deep=True)


def _mapping_items(loader, node, path, report) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """The (key, key node, value node) pairs of a mapping node; bad or repeated keys reported."""
    items, seen = [], {}
    loader.flatten_mapping(node)  # YAML merge keys (`<<: *defaults`) become plain keys
    for key_node, value_node in node.value:
        name = _construct(loader, key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(name, str) or not name:
            report.add("error", path, key_node, f"keys must be names, got {_show(name)}")
            continue
        if name in seen:  # YAML readers (Axolotl's too) keep the last: so does tutorforge, and says so
            report.add("warning", f"{path}.{name}".lstrip("."), key_node,
                       f"appears twice (lines {seen[name]} and {key_node.start_mark.line + 1}): the value on line "
                       f"{key_node.start_mark.line + 1} is used, as in Axolotl; remove the other")
            items = [item for item in items if item[0] != name]
        seen[name] = key_node.start_mark.line + 1
        items.append((name, key_node, value_node))
    return items


def ignored_message(key: ax.AxolotlKey) -> str:
    """The warning for an Axolotl key tutorforge accepts and ignores (or does already: "accepted: ...")."""
    text = ax.ignored_text(key.reason)
    if key.saves_memory:
        text += "; it saves memory in Axolotl, and tutorforge's memory plan does not count on that saving"
    return text


def _unknown_key(name: str, path: str, key_node: yaml.Node, value: Any, known: list[str],
                 report: Problems, *, top: bool = False) -> None:
    """Report a key the dataclass does not have: one Axolotl knows (axolotl_keys.entry: refused, an
    error; ignored, a warning), or unknown, with a "did you mean" over the keys that make sense here."""
    where = f"{path}.{name}".lstrip(".")
    axolotl = ax.entry(where) if (top or path.startswith("datasets[")) else None
    if axolotl is not None and axolotl.status == "refused":
        done = ax.REFUSED_DONE_VALUES.get(axolotl.name)
        if (value not in (*done, None, "")) if done is not None else not _is_empty(value):
            report.add("error", where, key_node,
                       f"{_show(value)}: Axolotl key not implemented by tutorforge: {axolotl.reason}; remove it")
        return
    if axolotl is not None:  # ignored (an implemented key always has its field: tests/test_axolotl_schema.py)
        if not _is_empty(value) and value not in ax.IGNORED_VALUES_DONE.get(axolotl.name, ()):
            report.add("warning", where, key_node, ignored_message(axolotl))
            if axolotl.saves_memory:
                report.ignored_memory_saving(where)
        return
    level = re.sub(r"\[\d+\]", "[]", path)
    axolotl_level = top or level == "datasets[]"
    axolotl_here = [k.rpartition(".")[2] for k in ax.schema() if k.rpartition(".")[0] == level] \
        if axolotl_level else []
    hint = did_you_mean(name, [*known, *axolotl_here])
    if axolotl_level and not difflib.get_close_matches(name, [*known, *axolotl_here], n=1, cutoff=TYPO):
        # Axolotl ignores keys its schema lacks; one that misspells no known key is ignored here too, aloud
        report.add("warning", where, key_node, f"unknown key, ignored: neither tutorforge nor Axolotl's schema "
                   f"has it{hint.replace('; did', ' (did').replace('?', '?)')}")
        return
    report.add("error", where, key_node, f"unknown key{hint}")


# How alike (difflib's ratio) an unknown key and a known one must be for the unknown key to be taken
# for a misspelling, an error: adam_eps/adam_epsilon is 0.8, eta_min/streaming 0.62.
TYPO = 0.8


def build(cls: type, loader, node: yaml.Node, path: str, report: Problems, top: bool = False) -> Any:
    """Validate a mapping node against dataclass `cls`; return an instance (defaults where bad)."""
    if not isinstance(node, yaml.MappingNode):
        report.add("error", path, node, f"expected a mapping of keys, got {_show(_construct(loader, node))}")
        return cls(**{f.name: f.default for f in dataclasses.fields(cls)
                      if f.default is not dataclasses.MISSING}) if not _has_required(cls) else None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, key_node, value_node in _mapping_items(loader, node, path, report):
        where = f"{path}.{name}".lstrip(".")
        f = fields.get(name)
        if f is None or f.metadata.get("internal"):  # internal fields are set by validation, not the YAML
            value = _construct(loader, value_node)
            public = [n for n, g in fields.items() if not g.metadata.get("internal")]
            _unknown_key(name, path, key_node, value, public, report, top=top)
            continue
        if "section" in f.metadata:
            if not _is_empty(_construct(loader, value_node)):
                values[name] = build(f.metadata["section"], loader, value_node, where, report)
            continue
        if "list_of" in f.metadata:
            values[name] = _build_list(f.metadata["list_of"], loader, value_node, where, report)
            continue
        value = _construct(loader, value_node)
        if value is None or value == "":
            continue  # Axolotl configs list keys with no value: keep the default
        try:
            values[name] = f.metadata["rule"](value)
        except Invalid as exc:
            report.add("error", where, value_node, f"{_show(value)}: {exc} ({f.metadata['doc']})")
            continue
        _warn_if_ignored(where, values[name], f.default, key_node, report)
    missing = [n for n, f in fields.items() if f.metadata.get("required") and n not in values]
    for name in missing:
        report.add("error", f"{path}.{name}".lstrip("."), node, f"required: {fields[name].metadata['doc']}")
    if missing:
        return None
    return cls(**values)


def _warn_if_ignored(where: str, value: Any, default: Any, key_node: yaml.Node, report: Problems) -> None:
    """A warning for a key tutorforge accepts and ignores (its status in axolotl_keys.schema),
    unless its value is empty or the default, which is what tutorforge does anyway."""
    axolotl = ax.entry(where)
    if axolotl is None or not axolotl.ignored or _is_empty(value) or value == default or \
            value in ax.IGNORED_VALUES_DONE.get(axolotl.name, ()):
        return
    report.add("warning", where, key_node, f"{_show(value)}: {ignored_message(axolotl)}")
    if axolotl.saves_memory:
        report.ignored_memory_saving(where)


def _has_required(cls: type) -> bool:
    return any(f.metadata.get("required") for f in dataclasses.fields(cls))


def _build_list(cls, loader, node, path, report) -> tuple:
    if not isinstance(node, yaml.SequenceNode):
        value = _construct(loader, node)
        if _is_empty(value):
            return ()
        report.add("error", path, node, f"{_show(value)}: expected a list of entries like `- path: data.jsonl`")
        return ()
    items = (build(cls, loader, item, f"{path}[{i}]", report) for i, item in enumerate(node.value))
    return tuple(item for item in items if item is not None)
