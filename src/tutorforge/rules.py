"""Value rules for configuration keys: each turns a YAML value into a typed one or says why not.

A rule is a callable `rule(value) -> converted` that raises `Invalid(reason)` with a message a
user can act on. `config.py` attaches one rule to every config field; `config_build.py` collects
the failures. Axolotl's configs are written by hand, so numbers may arrive as strings (`learning_rate: 2e-4` is
a string to YAML 1.1): numeric strings are accepted, anything else is an error. `OutputDir` also
looks at this machine's filesystem: a path where a run must not (or cannot) write is refused.
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Invalid(ValueError):
    """A value a rule refuses; the message says what is expected."""


Rule = Callable[[Any], Any]


def key(default: Any, rule: Rule, doc: str, *, required: bool = False) -> Any:
    """A config field (config.py, config_datasets.py): its default, the rule its value must pass, and
    its documentation."""
    meta = {"rule": rule, "doc": doc, "required": required}
    return field(default=default, metadata=meta)



def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the closest choice (by spelling, or one that contains `word`), or ''."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [c for c in choices if c.startswith(word)][:1]
    return f"; did you mean `{close[0]}`?" if close else ""


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        raise Invalid("expected a number, not true/false")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                return float(value.strip())
            except ValueError:
                pass
    raise Invalid("expected a number")


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None

    def __call__(self, value: Any) -> int:
        bound = _bounds(self.lo, self.hi, False, False)
        try:
            number = _number(value)
        except Invalid:
            raise Invalid(f"expected a whole number {bound}".rstrip()) from None
        if isinstance(number, float):
            if not (math.isfinite(number) and number.is_integer()):
                raise Invalid(f"expected a whole number {bound}".rstrip())
            number = int(number)
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            raise Invalid(f"must be {bound}")
        return number


@dataclass(frozen=True)
class Float:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __call__(self, value: Any) -> float:
        bound = _bounds(self.lo, self.hi, self.lo_open, self.hi_open)
        try:
            number = float(_number(value))
        except Invalid:
            raise Invalid(f"expected a number {bound}".rstrip()) from None
        except OverflowError:
            raise Invalid(f"number out of range; expected {bound}") from None
        if not math.isfinite(number):
            raise Invalid(f"expected a finite number {bound}".rstrip())
        too_low = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
        too_high = self.hi is not None and (number >= self.hi if self.hi_open else number > self.hi)
        if too_low or too_high:
            raise Invalid(f"must be {bound}")
        return number


@dataclass(frozen=True)
class Bool:
    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise Invalid("expected true or false")


@dataclass(frozen=True)
class Str:
    def __call__(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise Invalid("expected a text value")


@dataclass(frozen=True)
class Choice:
    """One of `values`; `refused` maps values that are known but not offered to the reason;
    `otherwise`, when given, is the reason for any other value that is not a misspelling of one of
    `values` (Axolotl accepts open-ended values there, such as a Python module path)."""

    values: tuple[str, ...]
    refused: tuple[tuple[str, str], ...] = ()
    otherwise: str | None = None

    def __call__(self, value: Any) -> str:
        if isinstance(value, dict) and self.otherwise is not None:  # Axolotl's user-defined formats
            raise Invalid(f"a mapping here (a custom format) is not supported: {self.otherwise}")
        if not isinstance(value, str):
            raise Invalid(f"expected one of: {', '.join(self.values)}")
        key = value.strip()
        if key in self.values:
            return key
        if key.lower() in self.values:
            return key.lower()
        refused = dict(self.refused)
        if key in refused:
            raise Invalid(f"`{key}` is not supported: {refused[key]}; use one of: {', '.join(self.values)}")
        hint = did_you_mean(key, [*self.values, *refused])
        if self.otherwise is not None:
            # Axolotl spells variants with a suffix (`chat_template.default`, `alpaca:chat`): not typos
            family = key.replace(":", ".").split(".")[0]
            if family != key or not did_you_mean(key, self.values):
                reason = refused.get(family, self.otherwise)
                raise Invalid(f"`{key}` is not supported: {reason}; use one of: {', '.join(self.values)}")
        raise Invalid(f"expected one of: {', '.join(self.values)}{hint}")


@dataclass(frozen=True)
class ChoiceOrHub:
    """One of a Choice's values, or a Hugging Face Hub path (`org/name`: Axolotl's hub kernels),
    kept as written for validation to decide on."""

    choice: Choice

    def __call__(self, value: Any) -> str:
        if isinstance(value, str) and "/" in value.strip():
            return value.strip()
        return self.choice(value)


@dataclass(frozen=True)
class BoolOr:
    """true, false, or one of the given words (Axolotl's `bf16: auto`)."""

    words: tuple[str, ...]

    def __call__(self, value: Any) -> bool | str:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in self.words:
            return value.strip().lower()
        raise Invalid(f"expected true, false or {' / '.join(self.words)}")


@dataclass(frozen=True)
class StrList:
    """A list of names; a single name is accepted as a list of one."""

    def __call__(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise Invalid("expected a list of names, e.g. [q_proj, v_proj]")


@dataclass(frozen=True)
class IntList:
    """A list of whole numbers >= lo; a single number is accepted as a list of one."""

    lo: int = 0

    def __call__(self, value: Any) -> tuple[int, ...]:
        items = value if isinstance(value, list) else [value]
        try:
            return tuple(Int(self.lo)(v) for v in items)
        except Invalid:
            raise Invalid(f"expected a list of whole numbers >= {self.lo}, e.g. [20, 21, 22]") from None


@dataclass(frozen=True)
class StrMap:
    """A mapping of names to text (with `scalars`, also to true/false or a number), keys limited to `keys`."""

    keys: tuple[str, ...]
    scalars: bool = False

    def __call__(self, value: Any) -> tuple[tuple[str, Any], ...]:
        if not isinstance(value, dict):
            raise Invalid(f"expected a mapping with keys among: {', '.join(self.keys)}")
        out = []
        for key, item in value.items():
            if key not in self.keys:
                raise Invalid(f"unknown key `{key}`{did_you_mean(str(key), self.keys)}; "
                              f"allowed: {', '.join(self.keys)}")
            scalar = self.scalars and isinstance(item, (bool, int, float))
            if not scalar and (not isinstance(item, str) or not item):
                raise Invalid(f"`{key}` must be a non-empty text value" + (", true/false or a number" * self.scalars))
            out.append((key, item))
        return tuple(out)


@dataclass(frozen=True)
class RoleMap:
    """Axolotl's `roles:` mapping of a template role to the data's names for it, {user: [human, user]};
    kept as ((role, (names...)), ...)."""

    def __call__(self, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
        items = value.items() if isinstance(value, dict) else value if isinstance(value, list) else None
        out = []
        for item in items if items is not None else [None]:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and item[0]):
                raise Invalid("expected a mapping of roles to lists of names, e.g. {user: [human, user]}")
            out.append((item[0], StrList()(item[1])))
        return tuple(out)


@dataclass(frozen=True)
class Plugins:
    """Axolotl's `plugins:` list of integration classes (`axolotl.integrations.liger.LigerPlugin`):
    each must be one that axolotl_keys.PLUGINS accepts; a refused one names its reason."""

    def __call__(self, value: Any) -> tuple[str, ...]:
        from tutorforge.axolotl_keys import PLUGIN_OTHER, PLUGINS

        names = StrList()(value)
        for name in names:
            status, reason = PLUGINS.get(plugin_package(name), ("refused", PLUGIN_OTHER))
            if status == "refused":
                raise Invalid(f"`{name}` is not supported: {reason}; remove it from plugins")
        return names


def plugin_package(name: str) -> str:
    """The integration a plugin class belongs to: `axolotl.integrations.liger.LigerPlugin` -> liger."""
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["axolotl", "integrations"] else name


# Where a run's files must not go. Each is resolved before comparing (/bin -> /usr/bin, /etc ->
# /private/etc on macOS). Mount points other than the root are allowed: a data disk's root
# (/workspace, /data) is a common and sound place for outputs.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                "/sbin", "/sys", "/usr", "/System", "/Library")  # the system's: nothing of a run below them
SHARED_DIRS = ("/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/tmp", "/Users",
               "/Volumes")  # shared by every user and program: a run belongs in a directory below them
OWN_DIRECTORY = "use a directory of the run's own, e.g. ./outputs/my-run"


def _within(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _placement(path: Path) -> str | None:
    """Why a run must not write into `path` (absolute, normalised), or None."""
    real = Path(os.path.realpath(path))
    if real == Path(real.anchor) or path == Path(path.anchor):
        return (f"{real}: the filesystem root: a run writes heldout.jsonl, checkpoints/ and adapter/ "
                f"straight into it; {OWN_DIRECTORY}")
    try:
        home = Path(os.path.realpath(Path.home()))
    except RuntimeError:  # no HOME and no password entry: nothing to compare with
        home = Path(real.anchor)
    if real == home:
        return f"{real}: your home directory itself; {OWN_DIRECTORY}"
    shared = next((d for d in SHARED_DIRS if real == Path(os.path.realpath(d))), None)
    if shared is not None:
        return f"{real}: {shared} itself, a directory shared by every user and program; {OWN_DIRECTORY}"
    if home != Path(home.anchor) and home in real.parents:
        return None  # below the user's home (which may itself lie below /usr, as /usr/home on BSD)
    for tree in SYSTEM_TREES:
        top = Path(os.path.realpath(tree))
        if _within(real, top) or _within(path, Path(tree)):
            where = "a system directory" if real == top else f"inside {tree}, a system directory"
            return f"{real}: {where}; {OWN_DIRECTORY}"
    return None


def _file_in_the_way(path: Path) -> str | None:
    """Why no directory can be at `path` because a file is there or above it, or None."""
    for here in (path, *path.parents):
        if here.is_dir():
            return None
        if here.exists():
            if here == path:
                return f"{here} is a file, not a directory; give a directory (it is made when missing)"
            return f"{here} is a file, so no directory can be made inside it; give another directory"
    return None


@dataclass(frozen=True)
class OutputDir:
    """A directory a run may write into (it need not exist yet): not the filesystem root, not inside a
    system directory, not a shared directory or the home directory itself, and not a file. Relative
    paths are from the current directory, as every path in a config."""

    def __call__(self, value: Any) -> str:
        text = Str()(value)
        if "\0" in text:
            raise Invalid("contains a NUL character; give a directory path")
        try:
            path = Path(os.path.abspath(Path(text).expanduser()))
            problem = _placement(path) or _file_in_the_way(path)
        except RuntimeError:  # `~user` of no such user, or no home directory at all
            raise Invalid("`~` cannot be expanded here; give the directory's full path") from None
        except OSError as exc:
            raise Invalid(f"cannot be checked: {exc.strerror or exc}; give another directory") from None
        if problem:
            raise Invalid(problem)
        return text


def describe(rule: Rule) -> str:
    """A short human description of what a rule accepts, for docs and messages."""
    match rule:
        case Int(lo=lo, hi=hi):
            return f"integer {_bounds(lo, hi, False, False)}".strip()
        case Float(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open):
            return f"number {_bounds(lo, hi, lo_open, hi_open)}".strip()
        case Bool():
            return "true/false"
        case Choice(values=values):
            return " | ".join(values)
        case ChoiceOrHub(choice=Choice(values=values)):
            return " | ".join(values) + " | a hub kernel (org/name: ignored, the model's default runs)"
        case BoolOr(words=words):
            return "true/false/" + "/".join(words)
        case StrList():
            return "list of names"
        case Plugins():
            return "list of Axolotl plugin classes"
        case RoleMap():
            return "mapping of roles to lists of names"
        case IntList(lo=lo):
            return f"list of integers >= {lo}"
        case StrMap(keys=keys):
            return "mapping of " + ", ".join(keys)
        case _:
            return "text"
