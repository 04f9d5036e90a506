"""Typed, frozen dataclasses built from YAML nodes, each problem reported with its YAML path and line.

    report = Report("recipe.yml")                               # config.Report, or any `Problems`
    config = build(Config, loader, root, "", report, top=True)  # None where a required key is missing

`build` knows nothing of any one config: it reads each field's metadata (`rule`, `doc`, `required`,
`section`, `list_of`, as config.key/section write it) and a class's `AXOLOTL_REFUSED` (Axolotl keys
that tutorforge refuses there). A key that the class lacks is reported as Axolotl-known (an error or,
at the top level, an ignored integration key) or unknown with a "did you mean"; a key that
tutorforge accepts and ignores (axolotl_keys.IGNORED_FIELDS) warns when set. A bad value keeps its
default, so one pass reports every problem.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Protocol

import yaml

from tutorforge import axolotl_keys as ax
from tutorforge.rules import Invalid, did_you_mean


class Problems(Protocol):
    """Where problems go (config.Report): each with its severity, YAML path, node (for the line)
    and message."""

    def add(self, severity: str, path: str, node: yaml.Node | None, message: str) -> None: ...


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
        if name in seen:
            report.add("error", f"{path}.{name}".lstrip("."), key_node,
                       f"appears twice (lines {seen[name]} and {key_node.start_mark.line + 1}); keep one")
            continue
        seen[name] = key_node.start_mark.line + 1
        items.append((name, key_node, value_node))
    return items


def _prefixed(name: str, prefixes: dict[str, str]) -> str | None:
    return next((reason for prefix, reason in prefixes.items() if name.startswith(prefix)), None)


def _unknown_key(name: str, path: str, key_node: yaml.Node, value: Any, known: list[str],
                 report: Problems, refused: dict[str, str], *, top: bool = False) -> None:
    """Report a key the dataclass does not have: Axolotl-known (error or warning) or unknown.

    At the top level `refused` is Axolotl's training keys and the integration keys are
    warnings; inside a section only `refused` applies."""
    where = f"{path}.{name}".lstrip(".")
    reason = refused.get(name) or (_prefixed(name, ax.TRAINING_PREFIXES) if top else None)
    if reason is not None:
        if not _is_empty(value):
            report.add("error", where, key_node,
                       f"{_show(value)}: Axolotl key not implemented by tutorforge: {reason}; remove it")
        return
    ignored = (ax.INTEGRATION_KEYS.get(name) or _prefixed(name, ax.INTEGRATION_PREFIXES)) if top else None
    if ignored is not None:
        if not _is_empty(value):
            report.add("warning", where, key_node, f"ignored ({ignored})")
        return
    candidates = [*known, *refused, *(ax.INTEGRATION_KEYS if top else ())]
    report.add("error", where, key_node, f"unknown key{did_you_mean(name, candidates)}")


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
        if f is None:
            value = _construct(loader, value_node)
            refused = getattr(cls, "AXOLOTL_REFUSED", {})
            _unknown_key(name, path, key_node, value, list(fields), report, refused, top=top)
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
    """A warning for a key tutorforge accepts and ignores (axolotl_keys.IGNORED_FIELDS), unless its
    value is empty or the default, which is what tutorforge does anyway."""
    name = re.sub(r"\[\d+\]", "[]", where)
    reason = ax.IGNORED_FIELDS.get(name)
    if reason is not None and not _is_empty(value) and value != default and \
            value not in ax.IGNORED_VALUES_DONE.get(name, ()):
        report.add("warning", where, key_node, f"{_show(value)}: ignored ({reason})")


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
