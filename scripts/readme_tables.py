"""Write `tutorforge keys --markdown` and `tutorforge keys --axolotl --markdown` into README.md's
Configuration section, where tests/test_cli.py checks them.

    python scripts/readme_tables.py
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from tutorforge.cli_train import keys

README = Path(__file__).resolve().parent.parent / "README.md"


def output(**flags: bool) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        keys(markdown=True, **flags)
    return buffer.getvalue().strip()


def replace(text: str, start: str, end: str, new: str) -> str:
    """`text` with the part from `start` up to (not including) the next `end` replaced by `new`."""
    i = text.index(start)
    return text[:i] + new + text[text.index(end, i):]


def main() -> None:
    text = README.read_text()
    text = replace(text, "| key | default | accepted | meaning | Axolotl |", "\n\n", output())
    counts, table = output(axolotl=True).split("\n\n", 1)
    text = replace(text, "Axolotl's schema at [", "\n", counts)
    text = replace(text, "| Axolotl key | tutorforge |", "\n\n</details>", table)
    README.write_text(text)


if __name__ == "__main__":
    main()
