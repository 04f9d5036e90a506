"""fsutil.py: atomic writes, and one run per output_dir (a lock the kernel frees when its holder dies)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write, exclusive


def test_an_interrupted_write_leaves_nothing_under_the_final_name(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError
    assert not target.exists() and not list(tmp_path.iterdir())


def test_a_second_run_on_the_same_output_dir_is_refused_until_the_first_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tutorforge.fsutil import exclusive\n"
                               f"with exclusive({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    busy = rf"tutorforge \(pid {holder.pid}, since [0-9:]+\) is already working on this output_dir"
    with pytest.raises(UserError, match=busy):
        with exclusive(tmp_path):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    time.sleep(0.1)
    with exclusive(tmp_path):  # the kernel released the dead holder's lock
        pass
