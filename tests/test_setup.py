"""scripts/setup_env.py and the environment it builds: pins in one place, torch first, a cached
portable llama-cpp-python wheel, and a test run that fails on any skip."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setup_env():
    spec = importlib.util.spec_from_file_location("setup_env", ROOT / "scripts" / "setup_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dependency_is_pinned_and_installed_at_its_pin():
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    deps += PYPROJECT["tool"]["tutorforge"]["setup"]["no_deps"]
    for dep in deps:
        name, _, version = dep.partition("==")
        assert version, f"{dep} is not pinned with =="
        installed = importlib.metadata.version(name.partition("[")[0]).split("+")[0]  # pyright[nodejs]
        assert installed == version, f"{name}: installed {installed}, pyproject pins {version}"


def test_torch_is_the_pinned_cpu_build_here():
    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"


def test_llama_cpp_comes_from_the_cached_portable_wheel():
    direct = importlib.metadata.distribution("llama_cpp_python").read_text("direct_url.json")
    assert direct, "llama-cpp-python must be installed from the cached wheel, not from an index"
    wheel = Path(json.loads(direct)["url"].removeprefix("file://"))
    info = (wheel.parent / "BUILD_INFO").read_text()
    assert PYPROJECT["tool"]["tutorforge"]["setup"]["llama_cpp_cmake_args"] in info
    assert "-DGGML_NATIVE=OFF" in info and "llama-cpp-python==0.3.36" in info


def test_wheel_cache_is_built_once_then_reused(tmp_path, monkeypatch):
    setup_env = _setup_env()
    monkeypatch.setenv("TUTORFORGE_WHEEL_CACHE", str(tmp_path))
    calls = []

    def fake_pip(*args, env=None):
        calls.append((args, env["CMAKE_ARGS"]))
        out = Path(args[args.index("-w") + 1])
        (out / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_bytes(b"wheel")

    monkeypatch.setattr(setup_env, "pip", fake_pip)
    first = setup_env.llama_cpp_wheel("llama-cpp-python==0.3.36", "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF")
    assert calls[0][1] == "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
    assert "--no-binary" in calls[0][0]
    second = setup_env.llama_cpp_wheel("llama-cpp-python==0.3.36", "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF")
    assert second == first and len(calls) == 1  # cached: not rebuilt
    other = setup_env.llama_cpp_wheel("llama-cpp-python==0.3.36", "-DGGML_NATIVE=ON")
    assert other.parent != first.parent and len(calls) == 2  # other flags: another cache slot
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_a_failed_build_leaves_no_cache_slot(tmp_path, monkeypatch):
    setup_env = _setup_env()
    monkeypatch.setenv("TUTORFORGE_WHEEL_CACHE", str(tmp_path))

    def failing_pip(*args, env=None):
        raise subprocess.CalledProcessError(1, "pip wheel")

    monkeypatch.setattr(setup_env, "pip", failing_pip)
    with pytest.raises(subprocess.CalledProcessError):
        setup_env.llama_cpp_wheel("llama-cpp-python==0.3.36", "-DGGML_NATIVE=OFF")
    assert list(tmp_path.iterdir()) == []


def test_a_skipped_test_fails_the_run(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_one="import pytest\n\ndef test_ok():\n    assert True\n\n"
                                 "def test_skipped():\n    pytest.skip('missing dependency')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 test(s) skipped; nothing may be skipped*"])


def test_a_test_on_the_bundled_model_without_the_slow_mark_fails_before_loading_it(pytester, monkeypatch,
                                                                                     tmp_path):
    """conftest's two guards: the bundled model's fixtures, or its resolution in process, in a test
    without the slow mark fail that test before anything is converted."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: on the bundled model\naddopts = --strict-markers\n")
    pytester.makepyfile(test_two="import pytest\n\ndef test_unmarked(bundled):\n    pass\n\n"
                                 "def test_through_adapter(adapter):\n    pass\n\n"
                                 "@pytest.mark.slow\ndef test_marked(bundled):\n    pass\n\n"
                                 "def test_other(tmp_path):\n    pass\n\n"
                                 "def test_resolves():\n    from tutorforge.models import resolve_base_model\n\n"
                                 "    resolve_base_model('smollm2')\n")
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("TUTORFORGE_CACHE", str(tmp_path / "cache"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not slow")
    result.assert_outcomes(passed=1, errors=2, failed=1, deselected=1)  # errors: at setup, before the fixture
    result.stdout.fnmatch_lines(["*test_two.py::test_unmarked uses the fixture(s) bundled, which load the "
                                 "bundled model: mark it @pytest.mark.slow*",
                                 "*test_two.py::test_through_adapter uses the fixture(s) bundled, adapter,*",
                                 "*test_two.py::test_resolves resolves the bundled model*"])
    assert list((tmp_path / "cache").iterdir()) == []  # failed before the model was converted


def test_ci_runs_make_test():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "scripts/setup_env.py" in makefile and "-m pytest" in makefile
