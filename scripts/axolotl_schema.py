"""List the keys of Axolotl's config schema at one commit, to keep src/tutorforge/axolotl_schema.tsv whole.

    python scripts/axolotl_schema.py AXOLOTL_GIT_DIR [--commit SHA] [--check src/tutorforge/axolotl_schema.tsv]

Reads Axolotl's pydantic models without importing them (Python's ast): the fields of
`AxolotlInputConfig` and every class it derives from (src/axolotl/utils/schemas/), the fields of
every dataset class in schemas/datasets.py (as `datasets[].KEY`), and the fields of each
integration's arguments (src/axolotl/integrations/*/args.py), which Axolotl reads at the top level
when the integration is among `plugins`. A field declared with an alias (`type_of_model`, alias
`model_type`) is listed by its alias, the key a config writes. Prints one key a line. With --check, exits 1 and names
every key that the table lacks or that the table has and the schema does not.
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

SCHEMAS = "src/axolotl/utils/schemas/"
INTEGRATIONS = "src/axolotl/integrations/"
TOP = ("AxolotlInputConfig", "AxolotlConfigWCapabilities")
DATASET_FILE = SCHEMAS + "datasets.py"


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def _classes(source: str) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (base names, field names) of every class in a module."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
            fields = [_alias(s) or s.target.id for s in node.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                      and not s.target.id.startswith("_") and s.target.id != "model_config"]
            found[node.name] = (bases, fields)
    return found


def _alias(statement: ast.AnnAssign) -> str | None:
    """The name a config writes for a field declared `Field(alias="...")`: the YAML key is the alias."""
    call = statement.value
    if isinstance(call, ast.Call):
        for keyword in call.keywords:
            if keyword.arg == "alias" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
    return None


def schema_keys(repo: str, commit: str) -> list[str]:
    files = _git(repo, "ls-tree", "-r", "--name-only", commit, SCHEMAS, INTEGRATIONS).split()
    classes: dict[str, tuple[list[str], list[str]]] = {}
    dataset_classes: set[str] = set()
    integration_fields: set[str] = set()
    for path in files:
        if not path.endswith(".py"):
            continue
        module = _classes(_git(repo, "show", f"{commit}:{path}"))
        if path.startswith(SCHEMAS):
            classes.update(module)
            if path == DATASET_FILE:
                dataset_classes.update(module)
        elif path.endswith("/args.py"):
            for _, fields in module.values():
                integration_fields.update(fields)
    top: set[str] = set()
    seen: set[str] = set()
    todo = list(TOP)
    while todo:
        name = todo.pop()
        if name in seen or name not in classes:
            continue
        seen.add(name)
        bases, fields = classes[name]
        top.update(fields)
        todo.extend(bases)
    datasets = {f"datasets[].{f}" for name in dataset_classes for f in classes[name][1]}
    return sorted(top | integration_fields) + sorted(datasets)


def table_keys(path: Path) -> list[str]:
    rows = [line.split("\t")[0] for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return rows[1:]  # the header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="a clone of axolotl-ai-cloud/axolotl (work tree or git directory)")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--check", type=Path, help="the table to compare with")
    args = parser.parse_args()
    commit = _git(args.repo, "rev-parse", args.commit).strip()
    keys = schema_keys(args.repo, commit)
    if args.check is None:
        print(f"# {len(keys)} keys of Axolotl's schema at {commit}")
        print("\n".join(keys))
        return 0
    table = set(table_keys(args.check))
    missing, extra = sorted(set(keys) - table), sorted(table - set(keys))
    for key in missing:
        print(f"{args.check}: lacks {key}")
    for key in extra:
        print(f"{args.check}: has {key}, which Axolotl's schema at {commit[:12]} does not")
    print(f"{len(keys)} keys in the schema at {commit}; {len(missing)} missing, {len(extra)} extra")
    return 1 if missing or extra else 0


if __name__ == "__main__":
    sys.exit(main())
