"""Whether a base model can go the whole way (trained, exported to GGUF, packaged for Ollama), told
before anything is trained: `validate`, `plan` and `run` call it on a base model that is here.

    problems = model_problems(model_dir, cfg)     # [] when export and package can take it

Export takes an architecture that tutorforge's own writer writes (gguf_write.ARCHS) or that
llama.cpp's converter registers (llamacpp_tools.converter_architectures, read from its source at the
pinned version); package takes a chat template of a family ollama_templates.py holds, as the config
uses it (ollama.family_for). A problem names what fails, what is supported, and what to do.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.errors import UserError

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger(__name__)


def architecture(model_dir: Path) -> str | None:
    """A checkpoint's Hugging Face architecture (config.json's first `architectures` entry)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("architectures") or [None])[0]


def export_problem(model_dir: Path) -> str | None:
    """Why export could not write this checkpoint as GGUF, or None."""
    from tutorforge.gguf_write import ARCHS
    from tutorforge.llamacpp_tools import converter_architectures, version

    arch = architecture(model_dir)
    if arch is None:
        return f"{model_dir}: config.json names no architecture; export would not know how to write it"
    if arch in ARCHS:
        return None
    try:
        known = converter_architectures()
    except UserError as exc:  # the converter is not on this machine and cannot be fetched
        log.warning("export support not checked: %s", exc)
        return None
    if arch in known:
        return None
    return (f"architecture {arch}: export cannot write it to GGUF (neither tutorforge's writer, for "
            f"{', '.join(ARCHS)}, nor llama.cpp's converter at llama-cpp-python {version()} knows it), so a run "
            "would stop after training; use a model of a supported architecture (tutorforge keys lists the "
            "families in the README's export table), or a newer llama-cpp-python in pyproject.toml")


def package_problem(model_dir: Path, cfg: Config) -> str | None:
    """Why package could not write an Ollama TEMPLATE for the prompt format this config trains with
    (its chat_template, or the one its datasets name; default_system_message; chat_template_jinja),
    or None: ollama.family_for, on the tokenizer alone."""
    from tutorforge.ollama import family_for
    from tutorforge.tokenizer import tokenizer_for

    try:
        tokenizer = tokenizer_for(model_dir, cfg.tokenizer_config, special_tokens=cfg.special_tokens,
                                  trust_remote_code=cfg.trust_remote_code, allow_download=False)
    except (OSError, ValueError) as exc:  # transformers' own refusals of a directory without a tokenizer
        return (f"{model_dir}: its tokenizer does not load ({str(exc).strip().splitlines()[0][:200]}); training "
                "needs it: give the model's tokenizer files, or tokenizer_config")
    template = cfg.chat_template or next((d.chat_template for d in cfg.datasets if d.chat_template), None)
    try:
        family_for(tokenizer, template, cfg.default_system_message, chat_template_jinja=cfg.chat_template_jinja)
    except UserError as exc:
        return f"the Ollama Modelfile: {exc}"
    return None


def model_problems(model_dir: Path, cfg: Config | None = None) -> list[str]:
    """Every reason this base model (trained as `cfg` says, when given) could not go the whole way
    (empty: it can)."""
    found = [export_problem(model_dir)] + ([package_problem(model_dir, cfg)] if cfg is not None else [])
    return [p for p in found if p]


def check_config_model(cfg: Config, where: str) -> None:
    """check_model on the config's base model when it is on this machine (one that is not yet here
    is checked where it is resolved)."""
    from tutorforge.models import check_base_model, resolve_base_model

    if check_base_model(cfg.base_model)[0]:
        check_model(resolve_base_model(cfg.base_model, allow_download=False).path, where, cfg)


def check_model(model_dir: Path, where: str, cfg: Config | None = None) -> None:
    """UserError listing model_problems, named by `where` (the config file)."""
    if problems := model_problems(model_dir, cfg):
        raise UserError(f"{where}: base_model cannot go the whole way:\n  " + "\n  ".join(problems))
