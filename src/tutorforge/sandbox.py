"""Run the Python examples of a dataset's (or a model's) answers in a sandbox and check what they
say they print.

    results = check_blocks(["print(2 + 2)  # 4"])   # -> [Result(kind="ok", ...)]

Each block runs in its own process inside bubblewrap (Debian package `bubblewrap`), which the code
cannot leave:
- files: the root is an empty read-only directory with only what the interpreter needs bound into
  it, read-only: /usr (and /bin, /lib... as the host has them), ETC_FILES, the venv and the Python
  it was made from, and the block's own directory. Nothing else of the host is there (not the
  project's checkout, /home, /root, /tmp, /var, /etc/passwd, nor their unix sockets). The only
  writable places are the working directory (a fresh 64 MiB tmpfs) and a private 16 MiB /dev/shm;
- new network, pid, IPC and UTS namespaces: no network at all (not even the host's 127.0.0.1),
  and when the block ends every process it started dies with it;
- no user namespaces (one would make the block root of its own mounts): a seccomp filter fails
  unshare/clone with CLONE_NEWUSER and setns with EPERM, clone3 with ENOSYS (the C library then
  falls back to clone, whose flags the filter can read);
- memory: all processes of a block together hold at most BLOCK_MEMORY_MB, the limit of a memory
  cgroup made for it below the one tutorforge runs in (cgroup v2 where the memory controller is
  delegated there, else cgroup v1's memory hierarchy). Without either, the bound is weaker and
  stated by memory_bound(): MEMORY_MB of address space per process x PROCESSES, plus the tmpfs;
- limits the runner sets inside before the block starts (not a preexec_fn, unsafe beside
  check_blocks' threads): CPU seconds, address space, 16 MiB per written file (stdout and stderr
  go to files, so they are capped too), no core files, and a process count (RLIMIT_NPROC) that
  stops fork bombs. The kernel does not apply RLIMIT_NPROC to root, so when tutorforge runs as
  root the block runs as an unused uid of its own (no user's files, no capabilities, a process
  count of its own); otherwise bubblewrap maps the user into a user namespace, where the count is
  the sandbox's own as well. A wall-clock limit ends the whole sandbox.
A scrubbed environment (PYTHONHASHSEED=0, so set order is reproducible) completes it. Without a
working bubblewrap nothing runs: check_block raises SandboxUnavailable, which says how to install
it (`data lint --no-run-code` skips running examples instead). There is no unsandboxed fallback.

What this sandbox does not cover: it shares the host's kernel, and its seccomp filter takes away
user namespaces only, so a kernel bug reachable through an ordinary system call is a way out; it
stops careless or mischievous example code, not an attacker with a kernel exploit. The
interpreter's directories are readable in full: the venv, the base Python and /usr, and whatever
else lies in them (a secret, or a listening unix socket, put inside the venv is reachable). /proc
is the block's own but still shows the machine's CPUs, memory, load and kernel version. CPU is
capped per process and by the wall clock, not shared out: a block may keep every core busy until
its wall-clock limit, and nothing bounds its disk reads. Without a memory cgroup, memory is bound
only per process times the process count (8272 MB by default, see memory_bound()), and the
kernel's own memory for the block (pipes, page tables, sockets) lies outside that bound.

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
import logging
import os
import platform
import re
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

from tutorforge import confine
from tutorforge.confine import Cgroup
from tutorforge.confine import under as _under
from tutorforge.errors import UserError

log = logging.getLogger(__name__)

FENCE = re.compile(r"^```[ \t]*([\w+.-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PYTHON_TAGS = {"python", "py", "python3"}

MEMORY_MB = 512  # address space of each process
BLOCK_MEMORY_MB = 1024  # all processes of a block together (its memory cgroup)
PROCESSES = 16  # processes and threads at once (RLIMIT_NPROC); a fork bomb stops here
FILE_MB = 16  # largest file written, stdout and stderr included
WORKDIR_MB, SHM_MB = 64, 16  # the writable tmpfs working directory and /dev/shm
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # symlinks stay symlinks
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone")
UID_BASE, UID_SPAN = 2_100_000_000, 100_000_000  # uids no account has: one per block when root
INSTALL = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
           "bubblewrap`), or skip running examples with `tutorforge data lint --no-run-code`")

# Runs inside the sandbox: set the limits, drop to the block's own uid (when started as root),
# trace print() per line of snippet.py, then execute it as __main__. The limits are set here, not
# in a preexec_fn (unsafe while check_blocks' threads run), and count this sandbox only.
RUNNER = r"""
import builtins, io, json, os, resource, runpy, sys
snippet = sys.argv[1]
trace_fd, uid, nproc, cpu_s, memory_mb, file_mb = map(int, sys.argv[2:8])
del sys.argv[1:]
for which, soft, hard in ((resource.RLIMIT_CPU, cpu_s, cpu_s + 1), (resource.RLIMIT_CORE, 0, 0),
                          (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
                          (resource.RLIMIT_FSIZE, file_mb << 20, file_mb << 20),
                          (resource.RLIMIT_NPROC, nproc, nproc)):
    resource.setrlimit(which, (soft, hard))
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # clears every capability
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


def _outermost(paths: list[str]) -> list[str]:
    return sorted({p for p in paths if not any(o != p and _under(p, o) for o in paths)})


def _interpreter_dirs() -> list[str]:
    """What the interpreter needs to start: the venv and the Python it was made from."""
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.abspath(sys.executable)), os.path.dirname(os.path.realpath(sys.executable))]
    return [os.path.realpath(d) for d in dirs]


def _filesystem(work: str, cwd: str) -> list[str]:
    """bwrap options for the files a block sees (see the module doc): all read-only but cwd and /dev/shm."""
    args, binds = [], []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):  # /bin -> usr/bin on a merged /usr
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            binds.append(d)
    binds += [f for f in ETC_FILES if os.path.exists(f)]
    made = set()
    for path in _outermost([*binds, *_interpreter_dirs(), work]):
        parts = Path(path).parts
        for i in range(2, len(parts)):  # the directories leading to it, traversable by anyone
            if (step := os.path.join(*parts[:i])) not in made:
                made.add(step)
                args += ["--perms", "0755", "--dir", step]
        args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--proc", "/proc",
             "--perms", "01777", "--size", str(SHM_MB << 20), "--tmpfs", "/dev/shm",
             "--perms", "01777", "--size", str(WORKDIR_MB << 20), "--tmpfs", cwd]
    return [*args, "--remount-ro", "/dev", "--remount-ro", "/"]


def _bwrap_command(bwrap: str, work: str, cwd: str, as_root: bool, seccomp_fd: int) -> list[str]:
    """The bwrap command line that isolates one block (see the module doc)."""
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
            "--unshare-net", "--unshare-uts", "--unshare-cgroup-try", "--seccomp", str(seccomp_fd)]
    if as_root:  # the runner needs these two to switch to the block's uid, which then drops them
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"]
    return [*args, *_filesystem(work, cwd), "--chdir", cwd]


@functools.cache
def _memory_cgroup() -> Cgroup | None:
    """The cgroup below which each block gets its own memory limit, or None (see memory_bound)."""
    cg = confine.memory_cgroup(BLOCK_MEMORY_MB)
    if cg is None:
        log.warning("sandbox: no memory cgroup can be made here, so a block's memory is bound per process "
                    "only (%d MB x %d processes)", MEMORY_MB, PROCESSES)
    return cg


def memory_bound(memory_mb: int = MEMORY_MB) -> tuple[int, str]:
    """The most memory (MB) one block and all its processes hold together, and what enforces it."""
    cg = _memory_cgroup()
    if cg is not None:
        return _block_mb(memory_mb), f"memory cgroup v{cg.version}"
    tmpfs = WORKDIR_MB + SHM_MB
    return (memory_mb * PROCESSES + tmpfs,
            f"{memory_mb} MB per process x {PROCESSES} processes + {tmpfs} MiB tmpfs: no memory cgroup here")


def _block_mb(memory_mb: int) -> int:
    return max(BLOCK_MEMORY_MB, memory_mb)


def describe_limits(cpu_s: int = 5) -> str:
    """The sandbox's limits in one line, for reports."""
    bound_mb, how = memory_bound()
    return (f"{MEMORY_MB} MB per process, {bound_mb} MB per block ({how}), {PROCESSES} processes, "
            f"{cpu_s} s CPU, no network, no user namespaces, only the interpreter's files")


@functools.cache
def _sandbox() -> tuple[str | None, str]:
    """(bwrap path, "") when the sandbox works here, else (None, why not)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, f"the code sandbox needs bubblewrap (bwrap), which is not installed; {INSTALL}"
    if platform.machine() not in confine.SECCOMP_ARCH:
        return None, (f"the code sandbox's seccomp filter knows {' and '.join(confine.SECCOMP_ARCH)} machines, not "
                      f"{platform.machine()}; skip running examples with `tutorforge data lint --no-run-code`")
    try:
        run = _execute(bwrap, "", timeout_s=30, memory_mb=MEMORY_MB)  # an empty block, for real
    except (OSError, SandboxUnavailable) as exc:
        return None, f"bubblewrap ({bwrap}) did not start a sandbox: {exc}; {INSTALL}"
    if run.returncode != 0:
        return None, (f"bubblewrap ({bwrap}) cannot create its sandbox here: {run.why}. It needs user "
                      "namespaces (or root with CAP_SYS_ADMIN; in a container, run it with --privileged "
                      "or a seccomp profile that allows them)")
    bound_mb, how = memory_bound()
    log.info("sandbox: %s; memory: %d MB per block (%s)", bwrap, bound_mb, how)
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
    run = _execute(require_sandbox(), code, timeout_s=timeout_s, memory_mb=memory_mb)
    if not run.started:  # it worked when probed: fail closed, never run the block some other way
        raise SandboxUnavailable(f"the code sandbox did not start: {run.why}")
    if run.returncode is None:
        return Result("timeout", f"still running after {timeout_s} s (wall clock)", run.stdout)
    if run.returncode != 0 or run.oom_kills:
        return _failure(run, timeout_s, memory_mb)
    try:
        trace = json.loads(run.trace)
    except ValueError:
        trace = []
    return _compare(code, run.stdout, trace)


@dataclass(frozen=True)
class _Run:
    returncode: int | None  # None: still running at the wall-clock limit
    stdout: str
    stderr: str
    trace: str  # the runner's JSON list of [line, printed]
    oom_kills: int  # processes the kernel ended at the block's memory cgroup limit
    started: bool  # False: the sandbox itself failed before the block could start

    @property
    def why(self) -> str:
        return (self.stderr.strip().splitlines() or [f"exit {self.returncode}"])[-1][:200]


def _execute(bwrap: str, code: str, *, timeout_s: int, memory_mb: int) -> _Run:
    """Run one block in the sandbox, in a fresh directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tutorforge-sandbox-") as tmp:
        os.chmod(tmp, 0o755)  # the block's own uid reads snippet.py (read-only inside)
        snippet = os.path.join(tmp, "snippet.py")
        os.mkdir(os.path.join(tmp, "cwd"))
        with open(snippet, "w", encoding="utf-8") as fh:
            fh.write(code)
        os.chmod(snippet, 0o644)
        paths = [os.path.join(tmp, n) for n in ("stdout", "stderr", "trace.json", "info.json")]
        with open(paths[0], "wb") as out, open(paths[1], "wb") as err, open(paths[2], "wb") as trace, \
                open(paths[3], "wb") as info:
            returncode, oom_kills = _launch(bwrap, tmp, (out, err, trace, info), timeout_s, memory_mb)
        stdout, stderr, trace_text, info_text = (_read(p) for p in paths)
    started = returncode in (0, None) or bool(info_text.strip())  # bwrap reports its namespaces
    return _Run(returncode, stdout, stderr, trace_text, oom_kills, started)


def _launch(bwrap: str, tmp: str, files: tuple, timeout_s: int, memory_mb: int) -> tuple[int | None, int]:
    """Start bwrap for the block in tmp (in its own memory cgroup, when there is one) and wait:
    (exit code or None at the wall-clock limit, processes ended at the memory limit)."""
    out, err, trace, info = files
    cwd, as_root = os.path.join(tmp, "cwd"), os.geteuid() == 0
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if as_root else -1
    env = {"PATH": os.defpath, "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
    cg = _memory_cgroup()
    try:
        group = confine.make_cgroup(cg, _block_mb(memory_mb)) if cg else None
    except OSError as exc:  # it worked when probed: fail closed rather than run without it
        raise SandboxUnavailable(f"the code sandbox cannot make the block's memory cgroup below {cg and cg.parent}: "
                                 f"{exc}") from exc
    seccomp, feed = os.pipe()  # bwrap reads the filter from it
    with os.fdopen(feed, "wb") as fh:
        fh.write(confine.seccomp_filter(platform.machine()))
    try:
        cmd = [*_bwrap_command(bwrap, tmp, cwd, as_root, seccomp), "--info-fd", str(info.fileno()),
               sys.executable, "-s", "-P", "-c", RUNNER, os.path.join(tmp, "snippet.py"), str(trace.fileno()),
               *map(str, (uid, PROCESSES, timeout_s, memory_mb, FILE_MB))]
        if group:
            cmd = ["/bin/sh", "-c", confine.PLACE, os.path.join(group, "cgroup.procs"), *cmd]
        returncode = _run(cmd, env=env, stdout=out, stderr=err, keep=(trace.fileno(), info.fileno(), seccomp),
                          info=info.name, timeout_s=timeout_s)
        return returncode, confine.oom_kills(group, cg.version) if group and cg else 0
    finally:
        os.close(seccomp)
        if group:
            confine.remove_cgroup(group)


def _run(cmd: list[str], *, env: dict, stdout, stderr, keep: tuple[int, ...], info: str,
         timeout_s: int) -> int | None:
    """Run the sandbox; its exit code, or None when it outlived the wall-clock limit. Then its pid 1
    is killed, which kills every process in its pid namespace, and bwrap exits once they are gone."""
    proc = subprocess.Popen(cmd, cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            pass_fds=keep, start_new_session=True)
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


def _failure(run: _Run, timeout_s: int, memory_mb: int) -> Result:
    last = (run.stderr.strip().splitlines() or [""])[-1][:200]
    # bwrap exits 128 + N when the block died of signal N
    code = run.returncode or 0  # None (still running at the wall-clock limit) is handled before this
    sig = code - 128 if code > 128 else -code if code < 0 else 0
    if run.oom_kills:
        return Result("memory", f"over the sandbox limit of {_block_mb(memory_mb)} MB for the block and all its "
                      f"processes together (the kernel ended {run.oom_kills} of them)", run.stdout)
    if "MemoryError" in last:
        return Result("memory", f"over the sandbox limit of {memory_mb} MB: {last}", run.stdout)
    if sig in (signal.SIGKILL, signal.SIGXCPU):
        return Result("timeout", f"over the sandbox limit of {timeout_s} s of CPU", run.stdout)
    # a fork bomb's children print their tracebacks at once, interleaved: look past the last line
    refused = [line for line in run.stderr[-8192:].splitlines()
               if "BlockingIOError" in line or "can't start new thread" in line]
    if refused:
        return Result("error", f"over the sandbox limit of {PROCESSES} processes and threads: "
                      f"{refused[-1].strip()[:200]}", run.stdout)
    if "[Errno 27]" in last:  # EFBIG
        return Result("error", f"over the sandbox limit of {FILE_MB} MiB per file: {last}", run.stdout)
    return Result("error", f"exit {run.returncode}: {last}", run.stdout)


def check_blocks(codes: list[str], *, workers: int = 2, timeout_s: int = 5) -> list[Result]:
    """check_block() over many blocks, `workers` processes at a time, results in order."""
    if codes:
        require_sandbox()  # once, before any thread starts
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: check_block(c, timeout_s=timeout_s), codes))
