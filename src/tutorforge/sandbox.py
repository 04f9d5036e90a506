"""Run the Python examples of a dataset's (or a model's) answers in a sandbox and check what they
say they print.

    results = check_blocks(["print(2 + 2)  # 4"])   # -> [Result(kind="ok", ...)]

Each block runs in its own process inside bubblewrap (Debian package `bubblewrap`), which the code
cannot leave:
- the filesystem is read-only (`--ro-bind / /`); /tmp, /var/tmp, /run, /root, /home and $HOME are
  empty read-only directories (the interpreter's own directories are bound back, read-only), so
  nothing of the user's can be read or written; the only writable places are the working directory
  (a fresh 64 MiB tmpfs) and a private 16 MiB /dev/shm, both gone when the block ends;
- new network, pid, IPC and UTS namespaces: no network at all (not even the host's 127.0.0.1),
  and when the block ends every process it started dies with it;
- limits: CPU seconds and wall-clock time, address space (memory), 16 MiB per written file,
  stdout and stderr written to files (so they are capped too), and a process count
  (RLIMIT_NPROC) that stops fork bombs. The kernel does not apply RLIMIT_NPROC to root, so
  when tutorforge runs as root the block runs as an unused uid of its own (no user's files,
  no capabilities, a process count of its own); otherwise bubblewrap maps the user into a
  user namespace, where the count is the sandbox's own as well.
A scrubbed environment (PYTHONHASHSEED=0, so set order is reproducible) completes it. Without a
working bubblewrap nothing runs: check_block raises SandboxUnavailable, which says how to install
it (`data lint --no-run-code` skips running examples instead). There is no unsandboxed fallback.

Two ways of stating output are checked:
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
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import tokenize
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tutorforge.errors import UserError

FENCE = re.compile(r"^```[ \t]*([\w+.-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3"}

MEMORY_MB = 512  # address space of each process
PROCESSES = 16  # processes and threads at once (RLIMIT_NPROC); a fork bomb stops here
FILE_MB = 16  # largest file written, stdout and stderr included
WORKDIR_MB, SHM_MB = 64, 16  # the writable tmpfs working directory and /dev/shm
HIDDEN = ("/tmp", "/var/tmp", "/run", "/root", "/home")  # shown empty and read-only, with $HOME
UID_BASE, UID_SPAN = 2_100_000_000, 100_000_000  # uids no account has: one per block when root
INSTALL = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
           "bubblewrap`), or skip running examples with `tutorforge data lint --no-run-code`")

# Runs inside the sandbox: drop to the block's own uid (when started as root), cap the process
# count, trace print() per line of snippet.py, then execute it as __main__.
RUNNER = r"""
import builtins, io, json, os, resource, runpy, sys
snippet, trace_fd, uid, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
del sys.argv[1:]
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # clears every capability
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))  # set here, so it counts this sandbox only
main = os.getpid()
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
    if os.getpid() == main:  # a forked child of the snippet leaves the trace alone
        try:
            with os.fdopen(trace_fd, "w") as fh:
                json.dump(trace, fh)
        except OSError:
            pass
"""


class SandboxUnavailable(UserError):
    """bubblewrap is missing or cannot create its namespaces here; nothing runs unsandboxed."""


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


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    return sorted({p for p in paths if not any(o != p and _under(p, o) for o in paths)})


def _hidden_dirs() -> list[str]:
    """The directories shown empty inside: where users keep files, keys and sockets, and $HOME."""
    home = os.environ.get("HOME") or os.path.expanduser("~")
    dirs = [os.path.realpath(d) for d in (*HIDDEN, home)]
    return _outermost([d for d in dirs if os.path.isdir(d) and d != "/"])


def _interpreter_dirs() -> list[str]:
    """What the interpreter needs to start: the venv and the Python it was made from."""
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.abspath(sys.executable)), os.path.dirname(os.path.realpath(sys.executable))]
    return [os.path.realpath(d) for d in dirs]


def _bind_back(paths: list[str], hidden: list[str]) -> list[str]:
    """bwrap options that bind `paths` read-only inside the hidden directories that hold them."""
    args, made = [], set()
    for path in _outermost(paths):
        root = next((h for h in hidden if _under(path, h)), None)
        if root is None or path == root:
            continue
        parts = Path(path).relative_to(root).parts
        for i in range(1, len(parts)):  # the directories leading to it, traversable by anyone
            step = os.path.join(root, *parts[:i])
            if step not in made:
                made.add(step)
                args += ["--perms", "0755", "--dir", step]
        args += ["--ro-bind", path, path]
    return args


def _bwrap_command(bwrap: str, work: str, cwd: str, as_root: bool) -> list[str]:
    """The bwrap command line that isolates one block (see the module doc)."""
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
            "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:  # the runner needs these two to switch to the block's uid, which then drops them
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--perms", "01777", "--size", str(SHM_MB << 20), "--tmpfs", "/dev/shm"]
    hidden = _hidden_dirs()
    for d in hidden:
        args += ["--perms", "0755", "--size", "65536", "--tmpfs", d]
    args += _bind_back([*_interpreter_dirs(), work], hidden)
    args += ["--perms", "01777", "--size", str(WORKDIR_MB << 20), "--tmpfs", cwd]
    for d in [*hidden, "/dev"]:
        args += ["--remount-ro", d]
    return [*args, "--chdir", cwd]


@functools.cache
def _sandbox() -> tuple[str | None, str]:
    """(bwrap path, "") when the sandbox works here, else (None, why not)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, f"the code sandbox needs bubblewrap (bwrap), which is not installed; {INSTALL}"
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="tutorforge-sandbox-") as tmp, open(os.devnull, "wb") as sink:
        os.chmod(tmp, 0o755)
        os.mkdir(cwd := os.path.join(tmp, "cwd"))
        snippet = os.path.join(tmp, "snippet.py")
        Path(snippet).touch(mode=0o644)
        cmd = [*_bwrap_command(bwrap, tmp, cwd, as_root), sys.executable, "-s", "-P", "-c", RUNNER, snippet,
               str(sink.fileno()), str(UID_BASE if as_root else -1), str(PROCESSES)]  # an empty block, for real
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                                  pass_fds=(sink.fileno(),))
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"bubblewrap ({bwrap}) did not start a sandbox: {exc}; {INSTALL}"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]
        return None, (f"bubblewrap ({bwrap}) cannot create its sandbox here: {why}. It needs user "
                      "namespaces (or root with CAP_SYS_ADMIN; in a container, run it with --privileged "
                      "or a seccomp profile that allows them)")
    return bwrap, ""


def require_sandbox() -> str:
    """The bwrap executable, or SandboxUnavailable saying why there is none and what to do."""
    bwrap, why = _sandbox()
    if bwrap is None:
        raise SandboxUnavailable(why)
    return bwrap


def network_isolated() -> bool:
    """True when blocks run in the sandbox (which has no network); False when it is unavailable."""
    return _sandbox()[0] is not None


def _limits(cpu_s: int, memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_MB << 20, FILE_MB << 20))
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


def check_block(code: str, *, timeout_s: int = 5, memory_mb: int = MEMORY_MB) -> Result:
    """Parse, run in the sandbox and compare one Python block (see the module doc)."""
    try:
        _parse(code)
    except (SyntaxError, ValueError) as exc:
        return Result("syntax", f"line {getattr(exc, 'lineno', '?')}: {getattr(exc, 'msg', exc)}")
    bwrap = require_sandbox()
    with tempfile.TemporaryDirectory(prefix="tutorforge-sandbox-") as tmp:
        os.chmod(tmp, 0o755)  # the block's own uid reads snippet.py (read-only inside)
        snippet, cwd = os.path.join(tmp, "snippet.py"), os.path.join(tmp, "cwd")
        os.mkdir(cwd)
        with open(snippet, "w", encoding="utf-8") as fh:
            fh.write(code)
        os.chmod(snippet, 0o644)
        as_root = os.geteuid() == 0
        uid = UID_BASE + secrets.randbelow(UID_SPAN) if as_root else -1
        env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
        paths = [os.path.join(tmp, n) for n in ("stdout", "stderr", "trace.json", "info.json")]
        with open(paths[0], "wb") as out, open(paths[1], "wb") as err, open(paths[2], "wb") as trace, \
                open(paths[3], "wb") as info:
            cmd = [*_bwrap_command(bwrap, tmp, cwd, as_root), "--info-fd", str(info.fileno()),
                   sys.executable, "-s", "-P", "-c", RUNNER, snippet, str(trace.fileno()), str(uid), str(PROCESSES)]
            returncode = _run(cmd, env=env, stdout=out, stderr=err, keep=(trace.fileno(), info.fileno()),
                              info=paths[3], timeout_s=timeout_s, memory_mb=memory_mb)
        stdout, stderr, trace_text = (_read(p) for p in paths[:3])
    if returncode is None:
        return Result("timeout", f"still running after {timeout_s} s (wall clock)", stdout)
    if returncode != 0:
        return _failure(returncode, stdout, stderr, timeout_s, memory_mb)
    try:
        trace = json.loads(trace_text)
    except ValueError:
        trace = []
    return _compare(code, stdout, trace)


def _run(cmd: list[str], *, env: dict, stdout, stderr, keep: tuple[int, ...], info: str, timeout_s: int,
         memory_mb: int) -> int | None:
    """Run the sandbox; its exit code, or None when it outlived the wall-clock limit. Then its pid 1
    is killed, which kills every process in its pid namespace, and bwrap exits once they are gone."""
    proc = subprocess.Popen(cmd, cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            pass_fds=keep, preexec_fn=functools.partial(_limits, timeout_s, memory_mb))
    try:
        return proc.wait(timeout_s + 2)
    except subprocess.TimeoutExpired:
        pass
    try:
        with open(info) as fh:
            os.kill(json.load(fh)["child-pid"], signal.SIGKILL)
        proc.wait(10)
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)  # no namespace info: bwrap itself, its children die with it
        proc.wait()
    return None


def _read(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read(FILE_MB << 20).decode("utf-8", errors="replace")


def _failure(returncode: int, stdout: str, stderr: str, timeout_s: int, memory_mb: int) -> Result:
    last = (stderr.strip().splitlines() or [""])[-1][:200]
    # bwrap exits 128 + N when the block died of signal N
    sig = returncode - 128 if returncode > 128 else -returncode if returncode < 0 else 0
    if "MemoryError" in last:
        return Result("memory", f"over the sandbox limit of {memory_mb} MB: {last}", stdout)
    if sig in (signal.SIGKILL, signal.SIGXCPU):
        return Result("timeout", f"over the sandbox limit of {timeout_s} s of CPU", stdout)
    if "BlockingIOError" in last or "can't start new thread" in last:
        return Result("error", f"over the sandbox limit of {PROCESSES} processes and threads: {last}", stdout)
    if "[Errno 27]" in last:  # EFBIG
        return Result("error", f"over the sandbox limit of {FILE_MB} MiB per file: {last}", stdout)
    return Result("error", f"exit {returncode}: {last}", stdout)


def check_blocks(codes: list[str], *, workers: int = 2, timeout_s: int = 5) -> list[Result]:
    """check_block() over many blocks, `workers` processes at a time, results in order."""
    if codes:
        require_sandbox()  # once, before any thread starts
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: check_block(c, timeout_s=timeout_s), codes))
