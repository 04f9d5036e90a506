"""What a training run trains, and the model it writes: LoRA/QLoRA on a frozen base (a fresh adapter,
or one continued from `lora_model_dir`), or a full fine-tune (`adapter` unset: every weight, or
only those `unfrozen_parameters` names), saved as a whole Hugging Face checkpoint.

    model = load_base(path, quant=None, dtype=torch.float32, ...)   # tutorforge.lora: frozen
    model, decisions = trainable_model(model, cfg)                  # what the optimizer steps
    output, dtype, note = write_trained(model, tokenizer, run_dir, cfg, best=None)   # adapter/ or model/

A full fine-tune keeps fp32 master weights on every device (the optimizer steps fp32 weights; a
16-bit compute dtype is autocast, as LoRA's is on CPU) and saves them in the base model's own dtype
(config.json `dtype`, `torch_dtype` before transformers 5), so model/ is the size of the base.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tutorforge.errors import UserError
from tutorforge.lora import add_lora, continue_lora
from tutorforge.tokenizer import save_tokenizer

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger(__name__)

SHARD_BYTES = 2 << 30  # the largest safetensors shard of model/: merge's default (merge.merge, `merge --shard-gb`)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # config.json names


def trainable_model(model, cfg: Config) -> tuple[Any, list[str]]:
    """The loaded (frozen) base made trainable as the config says, and the decisions taken: every
    weight or the unfrozen_parameters of a full fine-tune, the adapter of lora_model_dir, or a new one."""
    if cfg.adapter is None:
        return model, [unfreeze(model, cfg.unfrozen_parameters),
                       "full fine-tune: fp32 master weights (the optimizer steps fp32 weights; a 16-bit "
                       "compute dtype is autocast)"]
    if cfg.lora_model_dir:
        return continue_lora(model, Path(cfg.lora_model_dir), r=cfg.lora_r, alpha=cfg.lora_alpha,
                             dropout=cfg.lora_dropout, target_linear=cfg.lora_target_linear,
                             target_modules=cfg.lora_target_modules)
    return add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                    target_linear=cfg.lora_target_linear, target_modules=cfg.lora_target_modules,
                    modules_to_save=cfg.lora_modules_to_save, fan_in_fan_out=cfg.lora_fan_in_fan_out,
                    layers=cfg.peft_layers_to_transform), []


def unfreeze(model, patterns: tuple[str, ...]) -> str:
    """Make every parameter trainable, or (Axolotl's unfrozen_parameters) those whose name, as
    model.named_parameters() gives it, matches one of the regular expressions (re.search); the rest
    stay frozen. A pattern that matches nothing is a UserError naming it and some real names."""
    names = [name for name, _ in model.named_parameters()]
    if not patterns:
        chosen = set(names)
    else:
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise UserError(f"unfrozen_parameters: {pattern!r} is not a regular expression ({exc})") from None
        for pattern, regex in zip(patterns, compiled, strict=True):
            if not any(regex.search(name) for name in names):
                shown = ", ".join(names[:2] + names[len(names) // 2:len(names) // 2 + 1] + names[-2:])
                raise UserError(f"unfrozen_parameters: {pattern!r} matches no parameter of the model; its "
                                f"{len(names)} parameters are named like {shown}")
        chosen = {name for name in names if any(regex.search(name) for regex in compiled)}
    total = trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
        total += param.numel()
        trainable += param.numel() if name in chosen else 0
    which = "every weight" if not patterns else f"the weights unfrozen_parameters matches ({len(chosen)} tensors)"
    return f"full fine-tune of {which}: {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters trainable"


def saved_dtype(model_dir: Path) -> torch.dtype:
    """The base model's own dtype, as its config.json states it (fp32 when it states none, as
    transformers assumes)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(str(name).removeprefix("torch."), torch.float32)


def save_output(model, tokenizer, out: Path, *, full: bool, dtype: torch.dtype | None = None) -> Path:
    """Write what training made to `out`, atomically (a temporary directory, then renamed): the
    adapter (PEFT format) or, for a full fine-tune, the whole checkpoint in `dtype` (config.json,
    model*.safetensors, generation_config.json); and the tokenizer it trained with. A full
    fine-tune's model is cast to `dtype` in place: this is the end of training."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if full:
        if dtype is not None:
            model.to(dtype)  # parameter by parameter: never a second copy of the whole model
        model.config.use_cache = True  # load_base turned it off for training; the saved model generates
        model.save_pretrained(tmp, max_shard_size=SHARD_BYTES)
    else:
        model.save_pretrained(tmp)
    if tokenizer is not None:  # the tokenizer trained with (special_tokens, tokenizer_config)
        save_tokenizer(tokenizer, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def copy_adapter(source: Path, tokenizer, out: Path) -> Path:
    """A checkpoint's adapter (the best evaluated one) as the run's adapter/, atomically."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if tokenizer is not None:
        save_tokenizer(tokenizer, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def model_bytes(model, cfg: Config) -> int | None:
    """A full fine-tune's model/ on disk: every weight in the base model's dtype (None: an adapter)."""
    from tutorforge.models import resolve_base_model

    if cfg.adapter is not None:
        return None
    return sum(p.numel() for p in model.parameters()) * saved_dtype(resolve_base_model(cfg.base_model).path).itemsize


def write_trained(model, tokenizer, run_dir: Path, cfg: Config, *,
                  best: Path | None) -> tuple[Path, torch.dtype | None, str | None]:
    """The run's output, from the trained model or from the checkpoint `best` (early stopping keeps
    the best evaluated one): adapter/, or model/ for a full fine-tune in the base model's dtype.
    Returns (its path, the dtype of a full fine-tune's weights, the decision line saying why)."""
    from tutorforge.checkpoints import load_weights
    from tutorforge.models import resolve_base_model

    best = best if best is not None and best.is_dir() else None
    if best is not None:
        log.info("trained weights: the best evaluated checkpoint, %s", best.name)
    if cfg.adapter is not None:
        if best is not None and (best / "adapter").is_dir():
            return copy_adapter(best / "adapter", tokenizer, run_dir / "adapter"), None, None
        return save_output(model, tokenizer, run_dir / "adapter", full=False), None, None
    dtype = saved_dtype(resolve_base_model(cfg.base_model).path)
    note = (f"model/ saved in {str(dtype).removeprefix('torch.')}: the base model's own dtype (its config.json); "
            "trained with fp32 master weights")
    log.info("decision: %s", note)
    if best is not None:
        load_weights(best, model)
    return save_output(model, tokenizer, run_dir / "model", full=True, dtype=dtype), dtype, note
