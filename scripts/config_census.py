"""Validate every YAML config under some folders and count what happens to them.

    python scripts/config_census.py PATH_TO_AXOLOTL/examples [MORE_FOLDERS ...]

Each config is validated as `tutorforge validate` does (no model is loaded; a base_model that is not
on this machine is a warning) and falls into one class: valid; refused-only (every error names a
feature tutorforge does not support); or the kinds of the other errors it has (unknown key, other).
Prints the counts, the share that validate or are refused only for a named feature, the keys behind
each kind, and any traceback (there should be none). A development tool: the configs are not the
project's, and no test reads them.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import re
import sys
import traceback
from pathlib import Path

from tutorforge.cli_train import validate
from tutorforge.config import validate_file
from tutorforge.errors import UserError

NAMED_UNSUPPORTED = ("not implemented by tutorforge", "not supported")


def classify(path: Path, problems: collections.Counter) -> str:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            validate(path)
        cli = "ok"
    except UserError:
        cli = "error"
    except Exception:  # noqa: BLE001  (the census counts crashes; it must not stop at one)
        print(f"TRACEBACK {path}\n{traceback.format_exc()[-800:]}")
        return "traceback"
    kinds = set()
    for problem in validate_file(path).errors:
        key = re.sub(r"\[\d+\]", "[]", problem.path)
        kind = ("unknown key" if problem.message.startswith("unknown key") else
                "refused" if any(words in problem.message for words in NAMED_UNSUPPORTED) else "other")
        kinds.add(kind)
        problems[(kind, key if kind != "other" else f"{key}: {problem.message[:90]}")] += 1
    if not kinds:
        return "valid" if cli == "ok" else "other"
    return "refused-only" if kinds == {"refused"} else " + ".join(sorted(kinds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    outcomes, problems = collections.Counter(), collections.Counter()
    for folder in args.folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml")):
            outcomes[classify(path, problems)] += 1
    total = sum(outcomes.values())
    good = outcomes["valid"] + outcomes["refused-only"]
    print(f"{total} configs: " + ", ".join(f"{k} {n}" for k, n in outcomes.most_common()))
    print(f"valid or refused only for a named feature: {good} of {total} ({good / max(total, 1):.1%})")
    for kind in ("unknown key", "refused", "other"):
        found = [(key, n) for (k, key), n in problems.most_common() if k == kind]
        if found:
            print(f"{kind}: " + ", ".join(f"{key} {n}" for key, n in found[:40]))
    return 1 if outcomes["traceback"] else 0


if __name__ == "__main__":
    sys.exit(main())
