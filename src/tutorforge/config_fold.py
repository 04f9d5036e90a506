"""Axolotl's other spellings of a setting, folded by validation into tutorforge's one key.

    cfg = fold(cfg, report, top_lines(root), given_keys(root))   # config.parse, after the cross-key checks

`batch_size` becomes gradient_accumulation_steps (as Axolotl derives it), `bnb_config_kwargs` the
bitsandbytes keys, the older attention switches (`flash_attention: true`, ...) and hub kernels
`attn_implementation`, `gradient_checkpointing: offload` plain checkpointing, an optimizer's other
name the one tutorforge runs; ignored plugins are warned about. Where the meaning is not exactly the
same, a warning says so, and what saves memory in Axolotl is recorded in
`Config.ignored_memory_savings` for the memory plan.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import yaml

from tutorforge import axolotl_keys as ax
from tutorforge.config_build import Problems
from tutorforge.rules import Bool, Choice, plugin_package

Config = Any  # a config.Config (this module is config's: it cannot import it back)


def fold(cfg: Config, report: Problems, lines: dict[str, yaml.Node], given: set[str]) -> Config:
    """Axolotl's other spellings of a setting, turned into tutorforge's one key, each said in a
    warning where the meaning is not exactly the same: batch_size, bnb_config_kwargs, the older
    attention keys, gradient_checkpointing: offload, optimizer spellings; and the plugins ignored."""
    changes: dict[str, Any] = {}

    def warn(name: str, message: str, saves_memory: str | None = None) -> None:
        """A warning on key `name`; `saves_memory` names what is ignored that saves memory in Axolotl."""
        report.add("warning", name, lines.get(name), message)
        if saves_memory:
            report.ignored_memory_saving(saves_memory)

    if cfg.batch_size is not None and "gradient_accumulation_steps" not in given:
        changes["gradient_accumulation_steps"] = max(1, cfg.batch_size // cfg.micro_batch_size)
        if cfg.batch_size % cfg.micro_batch_size:
            warn("batch_size", f"{cfg.batch_size} is not a multiple of micro_batch_size {cfg.micro_batch_size}: "
                 f"gradient_accumulation_steps {changes['gradient_accumulation_steps']} (as Axolotl rounds down)")
    elif cfg.batch_size is not None and cfg.batch_size != cfg.micro_batch_size * cfg.gradient_accumulation_steps:
        warn("batch_size", f"{cfg.batch_size}: ignored, since gradient_accumulation_steps is set (as in Axolotl): "
             f"each step takes {cfg.micro_batch_size * cfg.gradient_accumulation_steps} samples")
    if cfg.warmup_steps is not None and 0 < cfg.warmup_steps < 1:
        changes["warmup_steps"], changes["warmup_ratio"] = None, cfg.warmup_steps
        warn("warmup_steps", f"{cfg.warmup_steps:g}: below 1, a fraction of all steps (warmup_ratio: "
             f"{cfg.warmup_steps:g}), as transformers reads it")
    elif cfg.warmup_steps is not None and not float(cfg.warmup_steps).is_integer():
        report.add("error", "warmup_steps", lines.get("warmup_steps"), f"{cfg.warmup_steps:g}: a step count "
                   "must be whole (below 1 it is a fraction of all steps)")
    elif cfg.warmup_steps is not None:
        changes["warmup_steps"] = int(cfg.warmup_steps)
    if cfg.adapter == "lora" and cfg.load_in_4bit:
        changes["adapter"] = "qlora"
        warn("adapter", "lora with load_in_4bit: true trains LoRA on a 4-bit base, which is QLoRA (as in "
             "Axolotl): adapter qlora")
    if cfg.logging_steps < 1:
        warn("logging_steps", f"{cfg.logging_steps:g}: a fraction of the run; tutorforge logs every step")
    changes["logging_steps"] = max(1, int(cfg.logging_steps))
    bnb = dict(cfg.bnb_config_kwargs)
    for name in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant"):
        if name in bnb:
            changes[name] = (Choice(("nf4", "fp4")) if name.endswith("type") else Bool())(bnb[name])
    if bnb.get("llm_int8_has_fp16_weight"):
        report.add("error", "bnb_config_kwargs", lines.get("bnb_config_kwargs"), "llm_int8_has_fp16_weight: "
                   "true (training the 8-bit weights themselves) is not supported; remove it")
    wanted = attention_wanted(cfg)
    if wanted is not None and "/" in wanted:
        warn("attn_implementation", f"{wanted}: ignored (hub kernels are not downloaded: the model's default "
             "attention runs, SDPA where it supports it, which computes the same attention)")
        wanted = None
    if wanted != cfg.attn_implementation:
        changes["attn_implementation"] = wanted
    if cfg.attn_implementation == "xformers" or cfg.xformers_attention:
        warn("attn_implementation" if cfg.attn_implementation else "xformers_attention",
             "xformers: PyTorch SDPA is used (its memory-efficient kernel computes the same attention)")
    if isinstance(cfg.gradient_checkpointing, str):
        changes["gradient_checkpointing"] = True
        warn("gradient_checkpointing", f"{cfg.gradient_checkpointing}: activations are recomputed but not "
             "offloaded (offloading is not built in); the memory plan counts them in device memory",
             f"gradient_checkpointing: {cfg.gradient_checkpointing}")
    if cfg.optimizer in ax.OPTIMIZER_SPELLINGS:
        changes["optimizer"], why = ax.OPTIMIZER_SPELLINGS[cfg.optimizer]
        warn("optimizer", why)
    for plugin in cfg.plugins:
        status, reason = ax.PLUGINS[plugin_package(plugin)]
        warn("plugins", f"{plugin}: {ax.ignored_text(reason)}", plugin if status == "ignored:memory" else None)
    if "eval_max_new_tokens" in given and cfg.metric_for_best_model != "code_runs":
        warn("eval_max_new_tokens", f"{cfg.eval_max_new_tokens}: no effect: evaluation generates answers only for "
             "metric_for_best_model: code_runs (`tutorforge compare` answers up to tutorforge.compare.max_new_tokens)")
    datasets = tuple(_dataset(d, i, report, lines) for i, d in enumerate(cfg.datasets))
    if datasets != cfg.datasets:
        changes["datasets"] = datasets
    changes["ignored_memory_savings"] = tuple(dict.fromkeys(report.memory_savings))
    return dataclasses.replace(cfg, **changes)


def _dataset(spec, index: int, report: Problems, lines: dict[str, yaml.Node]):
    """A `datasets:` entry with Axolotl's other spellings folded: type chat_template.default (the
    default loader's name) is chat_template; `conversation` (sharegpt's FastChat template) names its
    chat_template."""
    if spec.type == "chat_template.default":
        spec = dataclasses.replace(spec, type="chat_template")
    if spec.conversation is not None:
        template = ax.CONVERSATIONS[spec.conversation]
        where = f"datasets[{index}].conversation"
        if spec.chat_template not in (None, template):
            report.add("error", where, lines.get("datasets"), f"{spec.conversation} renders as chat_template "
                       f"{template}, but this entry's chat_template is {spec.chat_template}; keep one")
        else:
            report.add("warning", where, lines.get("datasets"), f"{spec.conversation}: FastChat's name of a template; "
                       f"read as this dataset's chat_template: {template}")
            spec = dataclasses.replace(spec, chat_template=template)
    return spec


def _older_attention(cfg: Config) -> list[str]:
    """The older attention switches the config sets, in OLD_ATTENTION_KEYS' order."""
    switches = {"flash_attention": cfg.flash_attention, "sdp_attention": cfg.sdp_attention,
                "flex_attention": cfg.flex_attention, "eager_attention": cfg.eager_attention,
                "xformers_attention": cfg.xformers_attention}
    return [name for name in OLD_ATTENTION_KEYS if switches[name]]


OLD_ATTENTION_KEYS = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa",
                      "flex_attention": "flex_attention", "eager_attention": "eager", "xformers_attention": "sdpa"}


def attention_wanted(cfg: Config) -> str | None:
    """The attention kernel the config asks for: attn_implementation, else the older boolean keys
    (xformers is PyTorch SDPA here), else None: the model's own choice (SDPA where it supports it).
    Validation folds the older keys into attn_implementation, so a validated Config's
    attn_implementation is the answer."""
    if cfg.attn_implementation is not None:
        return "sdpa" if cfg.attn_implementation == "xformers" else cfg.attn_implementation
    return next((OLD_ATTENTION_KEYS[name] for name in _older_attention(cfg)), None)


def attention_checks(cfg: Config, err: Callable[[str, str], None]) -> None:
    asked = _older_attention(cfg)
    wanted = attention_wanted(cfg)
    for name in asked:
        if OLD_ATTENTION_KEYS[name] != wanted:
            other = f"attn_implementation: {cfg.attn_implementation}" if cfg.attn_implementation else asked[0]
            err(name, f"asks for {OLD_ATTENTION_KEYS[name]}, but {other} asks for {wanted}; keep one")
            return
