"""sandbox.py: examples run isolated, and stated outputs are compared with what was printed.

The hostile cases (writing outside, a fork bomb, 10 GB, an endless loop, the network, the user's
home) each end in a Result whose kind says what stopped them, and leave nothing behind.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tutorforge import sandbox
from tutorforge.sandbox import (check_block, check_blocks, find_blocks, looks_like_python,
                                network_isolated, stated_outputs)


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
        for target in (tmp_path / "escaped.txt", home / "escaped.txt", visible / "escaped.txt",
                       Path("/root/escaped.txt"), Path(__file__).parent / "escaped.txt"):
            result = check_block(_write(target))
            assert result.kind == "error", (target, result)
            assert "Read-only file system" in result.detail or "No such file" in result.detail
            assert not target.exists()
    finally:
        for leftover in visible.iterdir():
            leftover.unlink()
        visible.rmdir()
    shm = Path("/dev/shm") / f"tutorforge-escape-{uuid.uuid4().hex}"
    result = check_block(_write(shm) + "print(open(%r).read())  # escaped\n" % str(shm))
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
    listing = check_block(f"import os\nprint(sorted(os.listdir({str(real_home)!r})))")
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
