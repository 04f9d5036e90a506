"""Run the Python examples of a dataset's answers in a sandbox and check what they say they print.

    results = check_blocks(["print(2 + 2)  # 4"])   # -> [Result(kind="ok", ...)]

Each block runs in its own process with CPU-time, memory and file-size limits, a fresh temporary
directory as cwd, a scrubbed environment (PYTHONHASHSEED=0, so set order is reproducible) and, where
the OS allows (`unshare -n`), no network. Two ways of stating output are checked:
- a trailing comment on a print line, `print(x)  # 42`: what that line printed must equal `42`;
- an `# Output:` comment block: the whole stdout must equal the comment lines below it.
`print` is traced per source line inside the sandbox, so a stated value is compared with what its
own line printed, not with a guess from line order.
"""
from __future__ import annotations

import ast
import functools
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import tokenize
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

FENCE = re.compile(r"^```[ \t]*([\w+.-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3"}

# Runs inside the sandbox: trace print() per line of snippet.py, then execute it as __main__.
RUNNER = r"""
import builtins, io, json, runpy, sys
snippet, trace_path = sys.argv[1], sys.argv[2]
del sys.argv[1:]
trace = []
_print = builtins.print
def traced(*args, **kwargs):
    target = kwargs.get("file")
    if target is None or target is sys.stdout:
        buf = io.StringIO()
        _print(*args, **{**kwargs, "file": buf})
        frame = sys._getframe(1)
        if frame.f_code.co_filename == snippet:
            trace.append([frame.f_lineno, buf.getvalue()])
        sys.stdout.write(buf.getvalue())
        if kwargs.get("flush"):
            sys.stdout.flush()
    else:
        _print(*args, **kwargs)
builtins.print = traced
try:
    runpy.run_path(snippet, run_name="__main__")  # as `python snippet.py`: a real __main__ module
finally:
    sys.stdout.flush()
    with open(trace_path, "w") as fh:
        json.dump(trace, fh)
"""


@dataclass(frozen=True)
class Block:
    language: str  # as written after the fence ("" when none)
    code: str


@dataclass(frozen=True)
class Result:
    kind: str  # ok | syntax | error | timeout | memory | mismatch
    detail: str = ""
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def find_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text."""
    return [Block(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # invalid escapes in someone's snippet are not our warning
        warnings.simplefilter("ignore")
        return ast.parse(code)


def looks_like_python(text: str) -> bool:
    """True for unfenced text that is Python code (it parses and does more than name a value)."""
    try:
        tree = _parse(text)
    except (SyntaxError, ValueError):
        return False
    trivial = (ast.Expr, ast.Pass)
    return any(not isinstance(node, trivial) or isinstance(getattr(node, "value", None), ast.Call)
               for node in tree.body)


@functools.cache
def _network_isolation() -> list[str]:
    """The command prefix that cuts the network off, or [] where the OS does not allow it."""
    unshare = shutil.which("unshare")
    for prefix in ([unshare, "-n"], [unshare, "-rn"]) if unshare else ():
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return []


def network_isolated() -> bool:
    return bool(_network_isolation())


def _limits(cpu_s: int, memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    os.setsid()


def _comments(code: str) -> tuple[dict[int, str], list[tuple[int, str]]]:
    """Trailing comments by line, and standalone comment lines, with the '#' and one space cut."""
    trailing, standalone = {}, []
    lines = code.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        text = tok.string[1:]
        text = text[1:] if text.startswith(" ") else text
        if lines[row - 1][:col].strip():
            trailing[row] = text.rstrip()
        else:
            standalone.append((row, text.rstrip()))
    return trailing, standalone


def stated_outputs(code: str) -> tuple[dict[tuple[int, int], str], str | None]:
    """What the code says it prints: {(first, last line of a print call): value} and the
    `# Output:` block (or None)."""
    tree = _parse(code)
    trailing, standalone = _comments(code)
    per_line = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            for line in (node.lineno, node.end_lineno):
                if line in trailing:
                    per_line[(node.lineno, node.end_lineno)] = re.sub(r"^(?i:output):\s*", "", trailing[line])
    block = None
    for i, (row, text) in enumerate(standalone):
        head = re.match(r"(?i)^output:\s*(.*)$", text)
        if head:
            body = [head.group(1)] if head.group(1) else []
            expected_row = row + 1
            for next_row, next_text in standalone[i + 1:]:
                if next_row != expected_row:
                    break
                body.append(next_text)
                expected_row += 1
            block = "\n".join(body)
            break
    return per_line, block


def _compare(code: str, stdout: str, trace: list[list]) -> Result:
    per_line, block = stated_outputs(code)
    for (first, last), expected in sorted(per_line.items()):
        actual = "\n".join(text.rstrip("\n") for line, text in trace if first <= line <= last)
        if expected not in {actual, actual.replace("\n", " ")}:
            return Result("mismatch", f"line {last} states {expected!r} but printed {actual!r}", stdout)
    if block is not None:
        actual = "\n".join(line.rstrip() for line in stdout.rstrip("\n").split("\n"))
        if block.rstrip() != actual.rstrip():
            return Result("mismatch", f"# Output: states {block!r} but the code printed {actual!r}", stdout)
    return Result("ok", "", stdout)


def check_block(code: str, *, timeout_s: int = 5, memory_mb: int = 512) -> Result:
    """Parse, run and compare one Python block (see the module doc)."""
    try:
        _parse(code)
    except (SyntaxError, ValueError) as exc:
        return Result("syntax", f"line {getattr(exc, 'lineno', '?')}: {getattr(exc, 'msg', exc)}")
    with tempfile.TemporaryDirectory(prefix="tutorforge-sandbox-") as tmp:
        snippet, trace_path, cwd = (os.path.join(tmp, n) for n in ("snippet.py", "trace.json", "cwd"))
        os.mkdir(cwd)
        with open(snippet, "w", encoding="utf-8") as fh:
            fh.write(code)
        env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [*_network_isolation(), sys.executable, "-s", "-P", "-c", RUNNER, snippet, trace_path]
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=timeout_s + 2, stdin=subprocess.DEVNULL,
                                  preexec_fn=functools.partial(_limits, timeout_s, memory_mb))
        except subprocess.TimeoutExpired:
            return Result("timeout", f"still running after {timeout_s} s")
        if proc.returncode != 0:
            return _failure(proc, timeout_s, memory_mb)
        try:
            with open(trace_path) as fh:
                trace = json.load(fh)
        except (OSError, ValueError):
            trace = []
    return _compare(code, proc.stdout, trace)


def _failure(proc: subprocess.CompletedProcess, timeout_s: int, memory_mb: int) -> Result:
    last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    if proc.returncode in (-9, -24) or "MemoryError" in last:
        kind = "memory" if "MemoryError" in last else "timeout"
        limit = f"{memory_mb} MB" if kind == "memory" else f"{timeout_s} s of CPU"
        return Result(kind, f"over the sandbox limit of {limit}", proc.stdout)
    return Result("error", f"exit {proc.returncode}: {last}", proc.stdout)


def check_blocks(codes: list[str], *, workers: int = 2, timeout_s: int = 5) -> list[Result]:
    """check_block() over many blocks, `workers` processes at a time, results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: check_block(c, timeout_s=timeout_s), codes))
