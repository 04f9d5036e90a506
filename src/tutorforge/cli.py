"""The `tutorforge` command: a table from command name to one typed function per command.

    tutorforge --help
    tutorforge validate recipes/python-tutor-smollm2-cpu.yml
    python -m tutorforge data lint data/python_tutor.jsonl

Each command's signature is its interface (positional parameters are arguments, the others
--options) and its docstring is its --help. A user's mistake (`UserError`) prints a short message
and exits with code 2; --debug shows the traceback.

This module holds the table, the parser built from it and main(). The commands live in
cli_train (validate, plan, keys, data, train, run) and cli_model (merge, export, package, deploy,
generate, chat, serve, compare); what they share in cli_locks and cli_terminal. Imports point one
way: cli -> cli_train, cli_model -> cli_locks, cli_terminal.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP spin-waiting slows CPU work 3-5x
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the CLI draws its own progress

from tutorforge import __version__  # noqa: E402
from tutorforge.cli_model import chat, compare, deploy, export, generate, merge, package, serve  # noqa: E402
from tutorforge.cli_train import data_lint, data_prepare, keys, plan, run, train, validate  # noqa: E402
from tutorforge.errors import UserError  # noqa: E402

COMMANDS: dict[str, Callable[..., int]] = {  # "group name" makes `tutorforge group name`
    "run": run,
    "validate": validate,
    "plan": plan,
    "data lint": data_lint,
    "data prepare": data_prepare,
    "train": train,
    "merge": merge,
    "export": export,
    "package": package,
    "deploy": deploy,
    "chat": chat,
    "serve": serve,
    "compare": compare,
    "generate": generate,
    "keys": keys,
}


def _param_help(doc: str) -> dict[str, str]:
    helps = {}
    for line in doc.splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            helps[name] = text
    return helps


def _add_command(sub, name: str, fn: Callable[..., int]) -> None:
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0]
    parser = sub.add_parser(name, help=summary, description=summary)
    helps = _param_help(doc)
    hints = typing.get_type_hints(fn)
    for param in inspect.signature(fn).parameters.values():
        kind = hints.get(param.name, str)
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))  # X | None -> X
        flag = "--" + param.name.rstrip("_").replace("_", "-")  # from_ -> --from
        if typing.get_origin(kind) is list:
            parser.add_argument(param.name, type=typing.get_args(kind)[0], nargs="+",
                                help=helps.get(param.name))
        elif param.kind is param.POSITIONAL_OR_KEYWORD:  # an argument; optional when it has a default
            optional = {} if param.default is inspect.Parameter.empty else {"nargs": "?", "default": param.default}
            parser.add_argument(param.name, type=kind, help=helps.get(param.name), **optional)
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(flag, dest=param.name, type=kind, required=True, help=helps.get(param.name))
        elif kind is bool:
            parser.add_argument(flag, dest=param.name, action=argparse.BooleanOptionalAction,
                                default=param.default, help=helps.get(param.name))
        else:
            parser.add_argument(flag, dest=param.name, type=kind, default=param.default,
                                help=f"{helps.get(param.name, '')} (default: {param.default})")
    parser.set_defaults(_command=fn)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tutorforge", description="Fine-tune a specialised assistant and ship it to Ollama.")
    parser.add_argument("--version", action="version", version=f"tutorforge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, fn in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            helps = ", ".join(n.split(" ", 1)[1] for n in COMMANDS if n.startswith(group + " "))
            group_parser = sub.add_parser(group, help=f"{group} commands: {helps}")
            groups[group] = group_parser.add_subparsers(title=f"{group} commands", metavar="COMMAND",
                                                        required=True)
        _add_command(groups[group] if group else sub, leaf, fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes announces an optional CPU kernel package it does not need
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    kwargs = {k: v for k, v in vars(args).items() if k not in {"_command", "debug"}}
    from tutorforge import fsutil

    fsutil.HOLDER = f"tutorforge {args._command.__name__.replace('_', ' ')}"
    try:
        return args._command(**kwargs)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's mistake: say so, keep the trace for --debug
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\nrun again with --debug for the "
              "traceback, and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
