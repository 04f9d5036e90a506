"""sandbox.py: examples run isolated, and stated outputs are compared with what was printed."""
from __future__ import annotations

import pytest

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


def test_no_network():
    assert network_isolated(), "unshare -n must work here (root, or user namespaces)"
    result = check_block("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
                         "except OSError as e:\n    print(type(e).__name__, e.errno)")
    assert result.kind == "ok" and "101" in result.stdout  # ENETUNREACH: no interface at all


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
