"""The built wheel: an installed tutorforge (not the checkout) runs a verified export.

The wheel is built from a copy of the project's sources, installed with --target into a directory of
its own, and run from a directory outside the checkout with that directory first on sys.path and the
virtual environment's site-packages for the dependencies (`python -S`: no .pth file puts src/ back).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT

PROBE = """
import json, sys
from pathlib import Path
target, model, out = map(Path, sys.argv[1:4])
sys.path[:0] = [str(target)]
import tutorforge
from tutorforge.export import Source, default_verify_rows, export_model
assert Path(tutorforge.__file__).is_relative_to(target), tutorforge.__file__
assert sys.argv[4] not in sys.path and not Path("src/tutorforge").exists(), sys.path  # not the checkout
report = export_model(Source(model), out, name="tiny", outtype="f32", quantizations=("f32",),
                      verify_rows=default_verify_rows()[:12])
print(json.dumps({"rows": len(default_verify_rows()), "report": report}))
"""


@pytest.mark.slow
def test_an_installed_wheel_runs_a_verified_export(tmp_path, bundled):
    from test_merge import tiny_llama

    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("tutorforge-*.whl"))
    target = tmp_path / "installed"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    assert (target / "tutorforge" / "lessons.jsonl.gz").is_file()  # package data in the wheel
    model = tiny_llama(tmp_path / "tiny", bundled.path, tied=True)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=sysconfig.get_paths()["purelib"])
    done = subprocess.run([sys.executable, "-S", "-c", PROBE, str(target), str(model), str(tmp_path / "gguf"),
                           str(ROOT / "src")], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == 400
    report = result["report"]
    assert report["failures"] == [] and set(report["verification"]) == {"f32"}
    f32 = report["verification"]["f32"]
    # the texts: the 12 rows' and the 400 lessons' fields (empty inputs left out), and their renderings
    assert f32["tokenization_mismatches"] == 0 and f32["texts_tokenized"] >= 900
    assert f32["positions"] >= 1000 and f32["top1_agreement"] >= 0.99
    assert json.loads((tmp_path / "gguf" / "export.json").read_text())["verification"]["f32"] == f32
