"""llama.cpp's own Python tools at the pinned llama-cpp-python version: its Hugging Face -> GGUF
converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py it needs) and the chat
templates of real models that llama.cpp tests against (models/templates/*.jinja).

    python -m tutorforge.llamacpp_tools              # fetch them once (scripts/setup_env.py does)
    tools = tools_dir()                              # the cached copy, fetched on first use
    convert_checkpoint(model_dir, out, outtype="f16")   # llama.cpp's converter, output written atomically
    text = model_template("Qwen-Qwen3-0.6B")         # a real model's chat template, as llama.cpp keeps it
    "Qwen3ForCausalLM" in converter_architectures()  # what the converter converts

They ship in the llama-cpp-python source distribution (vendor/llama.cpp), not in its wheel: the
sdist of the pinned version is downloaded from PyPI once (pip download), the files above are
extracted into the wheel cache beside the built llama-cpp-python wheel (TUTORFORGE_WHEEL_CACHE,
else $XDG_CACHE_HOME/tutorforge/wheels), and the folder is renamed into place only when whole.

The converter runs in its own process with its own gguf-py first on the path (it needs that
version's gguf; tutorforge itself runs on PyPI's gguf, pinned), writes to a temporary name and is
renamed into place when it succeeds (it is not atomic itself); its errors are shown with what to do.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from tutorforge.errors import UserError

log = logging.getLogger(__name__)

PACKAGE = "llama-cpp-python"
VENDOR = "vendor/llama.cpp/"  # where the sdist keeps llama.cpp
# What is kept of vendor/llama.cpp: the converter, its model classes, its gguf-py, the templates.
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "models/templates/", "LICENSE")
CONVERT_TIMEOUT_S = 6 * 3600  # an 8B model converts in minutes; this only ends a hung process


def version() -> str:
    """The installed llama-cpp-python's version (pinned in pyproject.toml)."""
    return metadata.version(PACKAGE)


def cache_root() -> Path:
    """The wheel cache (scripts/setup_env.py keeps the built llama-cpp-python wheel there too)."""
    if env := os.environ.get("TUTORFORGE_WHEEL_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tutorforge" / "wheels"


def tools_dir(*, fetch: bool = True) -> Path:
    """The cached llama.cpp tools of the installed version, fetched from PyPI when absent (fetch)."""
    slot = cache_root() / f"llama.cpp-tools-{version()}"
    if (slot / "convert_hf_to_gguf.py").is_file():
        return slot
    if not fetch:
        raise UserError(f"{slot}: llama.cpp's converter is not on this machine; run `python -m "
                        "tutorforge.llamacpp_tools` (make setup does) with PyPI reachable")
    return _fetch(slot)


def _fetch(slot: Path) -> Path:
    """Download the sdist of the installed version and extract MEMBERS into `slot`, atomically."""
    slot.parent.mkdir(parents=True, exist_ok=True)
    requirement = f"{PACKAGE}=={version()}"
    log.info("llama.cpp tools: downloading the %s source distribution once (about 75 MB) for its "
             "converter and chat templates", requirement)
    with tempfile.TemporaryDirectory(dir=slot.parent, prefix=".tools-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                               "--no-deps", "--no-binary", ":all:", requirement, "-d", tmp],
                              capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if done.returncode or not archives:
            raise UserError(f"could not download {requirement}'s source distribution from PyPI (pip said: "
                            f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}); llama.cpp's converter "
                            "comes from it: check the network to PyPI, or copy a machine's "
                            f"{slot.name} folder into {slot.parent}")
        staging = Path(tmp) / "slot"
        _extract(archives[0], staging)
        staging.rename(slot)  # a folder that is there is whole
    log.info("llama.cpp tools: %s", slot)
    return slot


def _extract(archive: Path, out: Path) -> None:
    """The MEMBERS of the sdist's vendor/llama.cpp, as regular files (nothing else, no links)."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/")  # llama_cpp_python-X.Y.Z/...
            if not inner.startswith(VENDOR) or not member.isfile():
                continue
            name = inner[len(VENDOR):]
            if any(name == m or (m.endswith("/") and name.startswith(m)) for m in MEMBERS):
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, target.open("wb") as fh:
                    shutil.copyfileobj(source, fh)
    if not (out / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"{archive.name}: no {VENDOR}convert_hf_to_gguf.py in it; this llama-cpp-python "
                        "version does not ship llama.cpp's converter")


def converter_architectures() -> frozenset[str]:
    """The Hugging Face architectures llama.cpp's converter registers (its conversion/*.py classes'
    @ModelBase.register(...) names), read from the source without importing it."""
    import ast

    names: set[str] = set()
    for path in sorted((tools_dir() / "conversion").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ModelBase"):
                names |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return frozenset(names)


def model_template(name: str) -> str:
    """The chat template of model `name` as llama.cpp keeps it (models/templates/NAME.jinja)."""
    path = tools_dir() / "models" / "templates" / f"{name}.jinja"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.jinja"))
        raise UserError(f"{path}: no such template; llama.cpp keeps: {', '.join(known)}")
    return path.read_text(encoding="utf-8")


def convert_checkpoint(model_dir: Path, out: Path, *, outtype: str = "f16", adapter: Path | None = None) -> Path:
    """llama.cpp's converter on a Hugging Face checkpoint directory, or on a base and a LoRA
    `adapter` merged as the converter reads them (convert_driver), in its own process: `out` is
    written under a temporary name and renamed when the converter succeeds (UserError otherwise,
    with the converter's last lines)."""
    tools = tools_dir()
    tmp = out.with_name(f".{out.name}.converting")
    staging = out.with_name(f".{out.name}.input")
    tmp.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tools / "gguf-py"), str(tools)]))
    env.pop("NO_LOCAL_GGUF", None)
    source = model_dir if adapter is None else _staging(model_dir, adapter, staging)
    cmd = [sys.executable, "-m", "tutorforge.convert_driver", str(source), str(tmp), outtype]
    if adapter is not None:
        cmd += ["--base", str(model_dir), "--adapter", str(adapter)]
    log.info("export: llama.cpp's converter on %s%s (%s)", model_dir, f" + {adapter}" if adapter else "", outtype)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        done = None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if done is None:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{model_dir}: llama.cpp's converter ran past {CONVERT_TIMEOUT_S} s")
    if done.returncode or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        last = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise UserError(f"{model_dir}: llama.cpp's converter failed (exit {done.returncode}):\n  {last}\n"
                        "the architecture or tokenizer may be one llama.cpp does not convert at this version")
    os.replace(tmp, out)
    return out


def _staging(base: Path, adapter: Path, staging: Path) -> Path:
    """What the converter reads for base + adapter: the base's files beside its weights with the
    run's tokenizer (as merge writes them), and links to the base's weight files (nothing copied)."""
    from tutorforge.merge import copy_files

    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copy_files(base, adapter, staging)
    for path in base.iterdir():
        if path.name.endswith((".safetensors", ".safetensors.index.json")):
            (staging / path.name).symlink_to(path.resolve())
    return staging


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(tools_dir())
