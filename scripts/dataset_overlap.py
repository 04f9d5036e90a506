"""Check that a dataset copies no row from other datasets: no instruction or answer of it appears,
whitespace-trimmed, in any of the others (for the shipped lessons, the public Alpaca sets).

    .venv/bin/python scripts/dataset_overlap.py data/python_tutor.jsonl --against A.json B.json

Prints each row that overlaps (file:line) and exits 1 when there is one; 0 and a count otherwise.
It takes the other datasets as paths because the tests never depend on files outside the project.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tutorforge.data import load_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--against", type=Path, nargs="+", required=True)
    args = parser.parse_args()
    others: set[str] = set()
    for path in args.against:  # every row, the unusable ones too (an empty answer, say)
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(x) for x in text.splitlines() if x.strip()]
        for item in items:
            others |= {str(item.get(k) or "").strip() for k in ("instruction", "output")} - {""}
    rows = load_files([args.dataset]).rows
    copied = [r.source for r in rows if r.instruction.strip() in others or r.output.strip() in others]
    for source in copied:
        print(f"{source}: instruction or answer found in {', '.join(map(str, args.against))}")
    print(f"{len(copied)} of {len(rows)} rows of {args.dataset} overlap {len(others)} texts of the others")
    return 1 if copied else 0


if __name__ == "__main__":
    sys.exit(main())
