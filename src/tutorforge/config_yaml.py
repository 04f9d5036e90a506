"""Reading a config file's YAML within size caps, so that a wrong or hostile file costs milliseconds.

    raw = read_capped(path)            # at most MAX_CONFIG_BYTES + 1 bytes, whatever the file is
    loader = CappedLoader(text)        # PyYAML's safe loader; raises TooLarge past MAX_NODES values
    root = loader.get_single_node()
    lines = top_lines(root)            # top-level key -> its key node, for the line of a problem

A config is a few kB: a file over MAX_CONFIG_BYTES, or YAML that expands (aliases counted in full)
to more than MAX_NODES values, is refused before it is built, so an alias bomb costs milliseconds.
This module knows YAML, not config keys: config.py turns the nodes into a `Config`.
"""
from __future__ import annotations

from pathlib import Path

import yaml

MAX_CONFIG_BYTES = 1 << 20  # 1 MB; the largest config seen in the wild is about 10 kB, and PyYAML
# reads about 4 MB a second: the limit bounds the time a wrong file can take
MAX_NODES = 10_000  # values of the document written out in full; a large config has a few hundred


class TooLarge(Exception):
    """The document expands to more than MAX_NODES values; `mark` is where reading stopped."""

    def __init__(self, mark: yaml.Mark):
        self.mark = mark


class CappedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting the values of the document as if every alias were written out
    (an alias counts as all it points to, and so does a merge key's `<<: *name`). Past MAX_NODES it
    stops: an alias bomb ("billion laughs") is refused after reading a few lines of it, in time and
    memory linear in what was read. PyYAML itself has no such limit."""

    def __init__(self, text: str):
        super().__init__(text)
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, written out in full
        self._expanded = 0

    def compose_node(self, parent, index):
        alias = self.check_event(yaml.AliasEvent)
        mark = self.peek_event().start_mark
        node = super().compose_node(parent, index)
        if alias:  # an alias of a node still being read (recursive) counts 1; it is refused later
            self._expanded += self._sizes.get(id(node), 1)
        else:
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
                node.value if isinstance(node, yaml.SequenceNode) else [])
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(child), 1) for child in children)
            self._expanded += 1
        if self._expanded > MAX_NODES:
            raise TooLarge(mark)
        return node


def read_capped(path: Path) -> bytes:
    """The file's bytes, never more than MAX_CONFIG_BYTES + 1 (the path may be a huge file or a
    device): more than MAX_CONFIG_BYTES came back means the file is too large for a config."""
    with path.open("rb") as fh:
        return fh.read(MAX_CONFIG_BYTES + 1)


def too_large_message(size: int) -> str:
    return (f"{size:,} bytes: too large for a config (at most {MAX_CONFIG_BYTES:,} bytes, "
            f"{MAX_CONFIG_BYTES >> 20} MB; a config is a few kB); is this the right file?")


def too_many_nodes_message() -> str:
    return (f"the YAML expands to more than {MAX_NODES:,} values (an alias `*name` counts as all it "
            "repeats); a config has a few hundred: is this the right file?")


def top_lines(root: yaml.Node) -> dict[str, yaml.Node]:
    """Each top-level key's node (its line is where a problem with that key is shown)."""
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: k for k, _ in root.value if isinstance(k, yaml.ScalarNode)}


def given_keys(root: yaml.Node) -> set[str]:
    """The top-level keys the YAML gives a value (a key listed with no value, or null, is unset)."""
    if not isinstance(root, yaml.MappingNode):
        return set()
    return {k.value for k, v in root.value if isinstance(k, yaml.ScalarNode)
            and not (isinstance(v, yaml.ScalarNode) and (v.tag.endswith(":null") or v.value == ""))}
