"""bench/: the prepared GPU check runs its own code path on CPU (a tiny shape), so it cannot rot
while no GPU is at hand to run it on."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_qlora_script_dry_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_qlora.py"), "--dry-run", "--steps", "2",
                          "--checkpoint", str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu (dry run)" and result["tokens_per_s"] > 0
    assert (tmp_path / "ckpt-dry" / "model.safetensors.index.json").is_file()
