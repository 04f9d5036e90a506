"""sandbox.py: examples run isolated, and stated outputs are compared with what was printed.

The hostile cases (writing outside, a fork bomb, 10 GB, 14 processes of 400 MB, an endless loop,
the network, a unix socket, the user's home, the project's checkout, a user namespace) each end in
a Result whose kind says what stopped them, and leave nothing behind.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tutorforge import confine, sandbox
from tutorforge.sandbox import (
    check_block,
    check_blocks,
    find_blocks,
    looks_like_python,
    network_isolated,
    stated_outputs,
)


@pytest.mark.parametrize("code, kind", [
    ("x = [1, 2]\nprint(x)  # [1, 2]\n", "ok"),
    ("print(2 + 2)  # 5\n", "mismatch"),
    ("for i in range(3):\n    print(i)\n# Output:\n# 0\n# 1\n# 2\n", "ok"),
    ("print('a')\n# Output:\n# b\n", "mismatch"),
    ("print('a')\n# Output: a\n", "ok"),
    ("def f():\n    print('hi')  # hi\nf()\n", "ok"),
    ("def f():\n    print('hi')  # hi\n", "mismatch"),  # the stated line never ran
    ("print('x',\n      'y')  # x y\n", "ok"),
    ("print(sorted({'b', 'a'}))  # ['b', 'a']\n", "mismatch"),
    ("import sys\nprint('err', file=sys.stderr)\nprint('out')  # out\n", "ok"),
    ("def f(:\n  pass", "syntax"),
    ("1 / 0", "error"),
    ("while True:\n    pass", "timeout"),
    ("x = bytearray(3 * 1024 ** 3)", "memory"),
    ("import sys\nsys.exit(3)", "error"),
])
def test_outcomes(code, kind):
    assert check_block(code, timeout_s=2).kind == kind


def test_set_order_is_reproducible():
    """PYTHONHASHSEED is fixed, so a printed set reads the same on every run."""
    code = "print({'banana', 'apple', 'cherry', 'date', 'elder'})"
    outputs = {r.stdout for r in check_blocks([code] * 4)}
    assert len(outputs) == 1


def test_environment_is_scrubbed_and_cwd_is_empty(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = check_block("import os\nprint(sorted(os.environ))\nprint(os.listdir('.'))\n"
                         "open('made.txt', 'w').write('x')\nprint(os.getcwd())")
    env, listing, cwd = result.stdout.splitlines()
    assert "SECRET_TOKEN" not in env and "PYTHONHASHSEED" in env
    assert listing == "[]"
    assert "tutorforge-sandbox-" in cwd
    import os

    assert not os.path.exists(cwd)  # removed afterwards


def test_stated_outputs_parsing():
    per_line, block = stated_outputs("a = 1\nprint(a)  # 1\nprint(a + 1)  # Output: 2\n# just a note\n")
    assert per_line == {(2, 2): "1", (3, 3): "2"} and block is None
    per_line, block = stated_outputs("x = 3  # the count\nprint(x)\n# Output:\n# 3\n\n# trailing note\n")
    assert per_line == {} and block == "3"


def test_find_blocks_and_unfenced_detection():
    text = "Intro\n\n```python\nprint(1)\n```\n\nthen\n\n```js\nconsole.log(1)\n```\n"
    blocks = find_blocks(text)
    assert [(b.language, b.code) for b in blocks] == [("python", "print(1)\n"), ("js", "console.log(1)\n")]
    assert looks_like_python("def f(x):\n    return x * 2")
    assert looks_like_python("import os\nprint(os.sep)")
    assert not looks_like_python("The answer is four.")
    assert not looks_like_python("True")
    assert not looks_like_python("SELECT * FROM users;")


# --- hostile code ----------------------------------------------------------------------------------

def _write(path: Path) -> str:
    return f"open({str(path)!r}, 'w').write('escaped')\n"


def test_writing_outside_its_directory_is_contained(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    visible = Path(tempfile.mkdtemp(prefix="sandbox-target-", dir=sys.prefix))  # not a hidden place
    visible.chmod(0o777)  # only the read-only mount can stop the write
    try:
        root = Path(f"/tutorforge-escaped-{uuid.uuid4().hex}.txt")  # the sandbox's own root is read-only
        for target in (tmp_path / "escaped.txt", home / "escaped.txt", visible / "escaped.txt",
                       Path("/root/escaped.txt"), Path(__file__).parent / "escaped.txt", root):
            result = check_block(_write(target))
            assert result.kind == "error", (target, result)
            assert "Read-only file system" in result.detail or "No such file" in result.detail
            assert not target.exists()
    finally:
        for leftover in visible.iterdir():
            leftover.unlink()
        visible.rmdir()
    shm = Path("/dev/shm") / f"tutorforge-escape-{uuid.uuid4().hex}"
    result = check_block(_write(shm) + f"print(open({str(shm)!r}).read())  # escaped\n")
    assert result.kind == "ok"  # its /dev/shm is its own ...
    assert not shm.exists()  # ... and gone afterwards


def test_its_own_directory_is_small():
    code = "for i in range(6):\n    open(f'f{i}', 'wb').write(b'x' * (15 << 20))\n"
    result = check_block(code)
    assert result.kind == "error" and "No space left" in result.detail  # 64 MiB tmpfs


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_process_limit_holds_before_any_fork_bomb():
    """The containment first, with a bounded loop: 40 sleeping children are asked for."""
    code = ("import os, time\nkids = 0\nfor i in range(40):\n    try:\n        pid = os.fork()\n"
            "    except BlockingIOError:\n        break\n    if pid == 0:\n        time.sleep(1)\n"
            "        os._exit(0)\n    kids += 1\nprint(kids)\n")
    result = check_block(code)
    assert result.kind == "ok"
    assert 8 <= int(result.stdout) < sandbox.PROCESSES


@pytest.mark.parametrize("bomb, kind", [
    ("while True:\n    os.fork()\n", "error"),  # dies at the limit
    ("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", "timeout"),  # keeps trying
])
def test_fork_bomb_is_stopped_and_leaves_nothing(bomb, kind):
    started = time.monotonic()
    result = check_block("import os\nprint(os.getcwd(), flush=True)\n" + bomb, timeout_s=2)
    assert time.monotonic() - started < 10
    assert result.kind == kind
    if kind == "error":
        assert f"limit of {sandbox.PROCESSES} processes" in result.detail
    work = str(Path(result.stdout.split()[0]).parent)
    assert "tutorforge-sandbox-" in work
    assert _processes_mentioning(work) == []  # the pid namespace died with the sandbox
    assert check_block("print(1)  # 1").ok  # and the machine still runs the next block


def test_ten_gigabytes_is_a_memory_failure():
    assert check_block("x = bytearray(10 * 1024 ** 3)").kind == "memory"
    result = check_block("import numpy as np\nx = np.ones(10 * 1024 ** 3 // 8)")
    assert result.kind == "memory" and "512 MB" in result.detail


def test_endless_loops_time_out():
    started = time.monotonic()
    spin = check_block("while True:\n    pass", timeout_s=1)
    sleep = check_block("import time\nprint('waiting', flush=True)\ntime.sleep(600)", timeout_s=1)
    assert (spin.kind, sleep.kind) == ("timeout", "timeout")
    assert "wall clock" in sleep.detail and sleep.stdout == "waiting\n"  # a sleeper spends no CPU
    assert "1 s" in spin.detail  # of CPU (or of wall clock, on a machine too loaded to give it 1 s)
    assert time.monotonic() - started < 12


def test_no_network_not_even_the_hosts_loopback():
    assert network_isolated()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        local = check_block(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert local.kind == "error" and "Connection refused" in local.detail
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's listener
    public = check_block("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
    assert public.kind == "error" and "Network is unreachable" in public.detail
    dns = check_block("import socket\nsocket.getaddrinfo('pypi.org', 443)")
    assert dns.kind == "error" and "gaierror" in dns.detail


def test_the_users_home_cannot_be_read(tmp_path, monkeypatch):
    real_home = Path.home().resolve()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    monkeypatch.setenv("HOME", str(home))
    result = check_block(f"print(open({str(home / '.ssh' / 'id_ed25519')!r}).read())")
    assert result.kind == "error" and "No such file" in result.detail and "PRIVATE" not in result.stdout
    # the real home shows only what the interpreter needs (bound back read-only), if anything
    allowed = {Path(d).relative_to(real_home).parts[0] for d in sandbox._interpreter_dirs()
               if d != str(real_home) and d.startswith(str(real_home) + "/")}
    listing = check_block(f"import os\nh = {str(real_home)!r}\n"
                          "print(sorted(os.listdir(h)) if os.path.isdir(h) else [])")  # not there at all, now
    assert listing.kind == "ok"
    assert set(eval(listing.stdout)) <= allowed
    assert set(os.listdir(real_home)) - allowed  # the host's home does hold more


def test_runs_as_nobody_in_particular():
    result = check_block("import os\nprint(os.getuid(), os.geteuid())")
    uid, euid = map(int, result.stdout.split())
    assert uid == euid != 0


@pytest.mark.parametrize("which, message", [
    (None, "apt-get install bubblewrap"),  # not installed
    ("/bin/false", "cannot create its sandbox here"),  # installed, but it cannot isolate
])
def test_without_a_working_sandbox_nothing_runs(monkeypatch, which, message):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: which)
    sandbox._sandbox.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match=message):
            check_block("print(1)")
        with pytest.raises(sandbox.SandboxUnavailable, match=message):
            check_blocks(["print(1)"])
        assert not network_isolated()
        assert check_blocks([]) == []  # nothing to run: no sandbox needed
        assert check_block("def f(:").kind == "syntax"  # parsing needs no sandbox either
    finally:
        monkeypatch.undo()
        sandbox._sandbox.cache_clear()
    assert network_isolated()


# --- what the sandbox shows, and what it lets a block do to the kernel -------------------------------

REPO = Path(__file__).resolve().parent.parent


def test_only_the_interpreter_and_the_block_are_visible():
    """No `--ro-bind / /`: the checkout, the host's /etc and /var are not there at all."""
    for path in (REPO / "pyproject.toml", REPO / "src" / "tutorforge" / "sandbox.py", Path("/etc/passwd"),
                 Path("/etc/shadow"), Path("/var/log")):
        result = check_block(f"print(open({str(path)!r}).read()[:20])")
        assert result.kind == "error" and "No such file" in result.detail, (path, result)
        assert result.stdout == ""
    top = check_block("import os\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/etc')))")
    assert top.kind == "ok", top
    root, etc = map(eval, top.stdout.splitlines())
    wanted = {Path(d).parts[1] for d in [*sandbox._interpreter_dirs(), tempfile.gettempdir()]}
    assert set(root) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc"} | wanted
    assert "var" not in root and "home" not in root and "sys" not in root
    assert set(etc) <= {Path(f).name for f in sandbox.ETC_FILES}
    assert check_block("import numpy, json, ssl\nprint(numpy.arange(3).sum())  # 3").ok  # it still runs


def test_a_listening_unix_socket_outside_cannot_be_reached():
    where = Path(tempfile.mkdtemp(prefix="sock-", dir=Path(__file__).parent))  # under the repo: not hidden
    where.chmod(0o755)
    path = where / "s"
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            path.chmod(0o777)  # anyone may connect: only the sandbox can stop it
            server.listen()
            server.settimeout(0.5)
            result = check_block(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n"
                                 "print('connected')")
            assert result.kind == "error" and "No such file" in result.detail, result
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        path.unlink(missing_ok=True)
        where.rmdir()


def test_no_user_namespaces_inside():
    """`unshare -r` gave a block root of its own namespace: its own mounts, a tmpfs past every cap."""
    code = ("import ctypes, os, subprocess, threading\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))\n"  # CLONE_NEWUSER
            "r = subprocess.run(['unshare', '-r', 'id', '-u'], capture_output=True, text=True)\n"
            "print(r.returncode, r.stdout.strip())\n"
            "t = threading.Thread(target=print, args=('thread',))\n"  # threads and subprocesses still start
            "t.start()\nt.join()\n")
    result = check_block(code)
    assert result.kind == "ok", result
    unshared, cli, thread = result.stdout.splitlines()
    assert unshared == "-1 Operation not permitted"
    assert cli.split() == ["1"]  # unshare(1) failed and printed no uid
    assert thread == "thread"


def _anon_of_descendants() -> int:
    """Anonymous memory (proportional set size, bytes) of every process below this one: the host
    RAM they hold of their own (mapped files are the host's page cache, shared with it)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    mine, total = {os.getpid()}, 0
    for pid in sorted(parents):
        chain, p = [], pid
        while p in parents and p not in mine and len(chain) < 64:
            chain.append(p)
            p = parents[p]
        if p in mine:
            mine.update(chain)
    for pid in mine - {os.getpid()}:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) << 10 for line in rollup.splitlines() if line.startswith("Pss_Anon:"))
    return total


def test_a_block_and_its_processes_share_one_memory_bound():
    """14 children of 400 MB each (5.6 GB) stay under the bound the sandbox states for a whole block."""
    bound_mb, how = sandbox.memory_bound()
    children, each_mb = 14, 400
    code = ("import os, time\npids = []\n"
            f"for _ in range({children}):\n    pid = os.fork()\n    if pid == 0:\n"
            f"        b = b'x' * ({each_mb} << 20)\n        time.sleep(2)\n        os._exit(0)\n"
            "    pids.append(pid)\nfor pid in pids:\n    os.waitpid(pid, 0)\nprint('done')\n")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(check_block, code, timeout_s=30)
        peak = 0
        while not future.done():
            peak = max(peak, _anon_of_descendants())
            time.sleep(0.05)
        result = future.result()
    # each sample reads the processes one after another, so one the kernel is ending and one that
    # grows meanwhile can both be counted: a quarter of the bound is allowed for that
    assert peak <= (bound_mb << 20) * 5 // 4, f"{peak >> 20} MB held, over the stated bound {bound_mb} MB ({how})"
    assert result.kind == ("memory" if children * each_mb > bound_mb else "ok"), result
    if result.kind == "memory":
        assert f"{bound_mb} MB" in result.detail
    assert confine.leftover_cgroups(sandbox._memory_cgroup()) == []  # each block's cgroup went with it


def test_without_a_memory_cgroup_the_bound_is_per_process_times_processes(monkeypatch):
    monkeypatch.setattr(sandbox, "_memory_cgroup", lambda: None)
    sandbox._sandbox.cache_clear()
    try:
        bound_mb, how = sandbox.memory_bound()
        assert bound_mb == sandbox.MEMORY_MB * sandbox.PROCESSES + sandbox.WORKDIR_MB + sandbox.SHM_MB
        assert "per process" in how and "no memory cgroup" in how
        assert check_block("x = bytearray(3 * 1024 ** 3)").kind == "memory"  # each process: enforced
        forks = ("import os, time\nkids = 0\nfor i in range(40):\n    try:\n        pid = os.fork()\n"
                 "    except BlockingIOError:\n        break\n    if pid == 0:\n        time.sleep(1)\n"
                 "        os._exit(0)\n    kids += 1\nprint(kids)\n")
        assert int(check_block(forks).stdout) < sandbox.PROCESSES  # the count: enforced
    finally:
        monkeypatch.undo()
        sandbox._sandbox.cache_clear()


def test_limits_are_set_without_preexec_fn(monkeypatch):
    """preexec_fn is unsafe while other threads run (check_blocks runs a pool): the runner sets them."""
    sandbox.require_sandbox()  # the one-time probe first: what is recorded is the blocks' own
    calls = []
    real = subprocess.Popen

    class Recording(real):
        def __init__(self, *args, **kwargs):
            calls.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    results = check_blocks(["print(1)  # 1", "open('big', 'wb').write(b'x' * (17 << 20))",
                            "while True:\n    pass"], timeout_s=1)
    assert [r.kind for r in results] == ["ok", "error", "timeout"]
    assert f"{sandbox.FILE_MB} MiB per file" in results[1].detail
    assert calls and all(kw.get("preexec_fn") is None and kw.get("start_new_session") for kw in calls)


HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"
CONTAINER_MOUNTS = "612 600 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n"


@pytest.mark.parametrize("mounts, cgroups, found", [
    (HYBRID_MOUNTS, "4:memory:/process_api/92f\n1:cpu:/\n0::/\n",
     [(2, "/sys/fs/cgroup/unified"), (1, "/sys/fs/cgroup/memory/process_api/92f")]),
    (V2_MOUNTS, "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-1.scope\n",
     [(2, "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/run-1.scope")]),
    (CONTAINER_MOUNTS, "0::/docker/abc/lint\n", [(2, "/sys/fs/cgroup/lint")]),  # the mount shows a subtree
    (CONTAINER_MOUNTS, "0::/elsewhere\n", []),  # outside what is mounted
    (HYBRID_MOUNTS.replace("rw,memory", "rw,pids"), "4:pids:/\n", []),  # no memory hierarchy: none
], ids=["hybrid", "v2", "container", "outside-the-mount", "no-memory-controller"])
def test_memory_cgroups_are_found_in_v1_v2_and_hybrid_layouts(mounts, cgroups, found):
    assert [(c.version, c.parent) for c in confine.cgroup_candidates(mounts, cgroups)] == found


def test_a_block_whose_memory_cgroup_cannot_be_made_does_not_run(monkeypatch, tmp_path):
    """It worked when probed; when it stops working, blocks stop running (not run unbounded)."""
    sandbox.require_sandbox()
    monkeypatch.setattr(sandbox, "_memory_cgroup", lambda: sandbox.Cgroup(1, str(tmp_path / "gone")))
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    with pytest.raises(sandbox.SandboxUnavailable, match="memory cgroup below .*gone"):
        check_block("print(1)")
    assert started == []  # no process was started for it
