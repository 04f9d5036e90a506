"""The model and optimizer of a training run: a frozen base (16/32-bit, or 4-bit NF4/FP4, or
8-bit through bitsandbytes) with LoRA adapters from peft (new ones, or a saved adapter continued:
`continue_lora`), and the optimizer the config names. A full fine-tune unfreezes the base itself
(tutorforge.finetune).

Builders take plain values, not the config: `load_base(path, quant="nf4", dtype=torch.bfloat16, ...)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tutorforge.errors import UserError

OPTIMIZERS = {  # config name -> (module, class); bitsandbytes ones run on CPU too
    "adamw_torch": ("torch.optim", "AdamW"),
    "adamw_torch_fused": ("torch.optim", "AdamW"),
    "adamw_bnb_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "paged_adamw_8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
    "paged_adamw_32bit": ("bitsandbytes.optim", "PagedAdamW32bit"),
    "adafactor": ("transformers.optimization", "Adafactor"),
    "sgd": ("torch.optim", "SGD"),
}


def build_optimizer(name: str, params, *, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, device: torch.device):
    import importlib

    module, cls = OPTIMIZERS[name]
    opt_cls = getattr(importlib.import_module(module), cls)
    if name == "sgd":
        return opt_cls(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        return opt_cls(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False)
    extra = {"fused": True} if name == "adamw_torch_fused" and device.type == "cuda" else {}
    return opt_cls(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, **extra)


def compute_dtype(bf16: bool | str, fp16: bool | None, device: torch.device) -> torch.dtype:
    """bf16 where asked or (auto) where the hardware has it; fp16 only on CUDA; else fp32."""
    if fp16 and device.type == "cuda":
        return torch.float16
    if bf16 is True:
        return torch.bfloat16
    if bf16 == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    return torch.float32


def load_base(path: Path, *, quant: str | None, double_quant: bool, dtype: torch.dtype,
              device: torch.device, gradient_checkpointing: bool, attention: str | None = None,
              trust_remote_code: bool = False, config_dir: Path | None = None):
    """The base model, frozen: 16/32-bit, or 4-bit (`quant` nf4/fp4) or 8-bit (`quant` int8).
    `config_dir` (config key base_model_config) holds the config.json to build it from instead of
    its own; `trust_remote_code` lets transformers run a model's own code (auto_map). An
    `attention` kernel the model class cannot run is a UserError naming the ones it can."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from tutorforge.tokenizer import check_remote_code

    kwargs: dict = {"attn_implementation": attention, "trust_remote_code": trust_remote_code}
    directories: list[Path] = [Path(path), *([Path(config_dir)] if config_dir else [])]
    for directory in dict.fromkeys(directories):
        check_remote_code(directory, trust_remote_code)
    built = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=trust_remote_code) if config_dir else None
    if built is not None:
        kwargs["config"] = built
    if quant in ("nf4", "fp4"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    elif quant == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    # CPU keeps fp32 weights and autocasts to bf16 (fastest measured); CUDA stores 16-bit weights.
    kwargs["dtype"] = torch.float32 if device.type == "cpu" else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (ValueError, ImportError) as exc:  # transformers checks the kernel before reading weights
        if attention is None or "attention" not in str(exc).lower():
            raise
        built = built or AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        raise unsupported_attention(attention, built, exc) from None
    # Frozen base, checkpointing as peft's prepare_model_for_kbit_training sets it up, but without its
    # upcast of every unquantised 16-bit weight to fp32: for Llama 3 8B that is embeddings and lm_head,
    # 1.05B parameters, 2.1 GB more on the GPU for nothing (they are frozen; the loss is fp32 anyway).
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:  # non-reentrant: no need to make the embeddings' output require grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not quant:
        model.to(device)  # pyright: ignore[reportArgumentType]  (transformers' stub types .to on the generate mixin)
    model.config.use_cache = False
    return model


def unsupported_attention(attention: str, model_config, exc: BaseException) -> UserError:
    """The error for an attention kernel the model's class cannot run here: the key, the class,
    the kernels it can run (its transformers flags; flex attention also needs torch's) and the fix."""
    import transformers
    from transformers import modeling_utils

    names = list(getattr(model_config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        return UserError(f"attn_implementation: {attention}: the model ({type(model_config).__name__}) cannot run it "
                         f"({str(exc).splitlines()[0][:200]}); remove attn_implementation to use the model's "
                         "default, or name another kernel")
    kernels = ["eager"] + ["sdpa"] * bool(cls._supports_sdpa)
    kernels += ["flash_attention_2", "flash_attention_3"] * bool(cls._supports_flash_attn)
    flex = modeling_utils.is_torch_flex_attn_available()  # pyright: ignore[reportPrivateImportUsage]  (the name
    # transformers' own check calls)
    kernels += ["flex_attention"] * bool(cls._supports_flex_attn and flex)
    default = "sdpa" if cls._supports_sdpa else "eager"
    why = ("this torch has no flex attention" if attention == "flex_attention" and cls._supports_flex_attn
           else "it does not support it")
    return UserError(f"attn_implementation: {attention}: {cls.__name__} cannot run it here ({why}; it runs "
                     f"{', '.join(kernels)}); remove attn_implementation to use the model's default "
                     f"({default}), or name one it supports")


def add_lora(model, *, r: int, alpha: float, dropout: float, target_linear: bool | None,
             target_modules: tuple[str, ...], modules_to_save: tuple[str, ...], fan_in_fan_out: bool,
             layers: tuple[int, ...] = ()):
    """LoRA on every linear layer (or the named modules), in all decoder layers or only `layers`.
    With LoRA in the upper layers only, nothing below the lowest of them needs a gradient, so
    backward stops there."""
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.num_hidden_layers
    if layers and max(layers) >= n_layers:
        raise UserError(f"peft_layers_to_transform: layer {max(layers)} does not exist; the model has "
                        f"{n_layers} layers (0 to {n_layers - 1})")
    targets = "all-linear" if target_linear or not target_modules else list(target_modules)
    if layers and targets == "all-linear":  # peft wants names to restrict layers with
        targets = linear_module_names(model)
    config = LoraConfig(r=r, lora_alpha=alpha,  # pyright: ignore[reportArgumentType]  (a float scales as well)
                        lora_dropout=dropout, target_modules=targets,
                        modules_to_save=list(modules_to_save) or None, fan_in_fan_out=fan_in_fan_out,
                        layers_to_transform=list(layers) or None, task_type="CAUSAL_LM", bias="none")
    return _fp32_trainable(get_peft_model(model, config))


def _fp32_trainable(model):
    for param in model.parameters():  # embeddings trained in full: fp32 master weights, like LoRA's
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def continue_lora(model, directory: Path, *, r: int, alpha: float, dropout: float, target_linear: bool | None,
                  target_modules: tuple[str, ...]) -> tuple[Any, list[str]]:
    """The PEFT adapter in `directory` (config key lora_model_dir) on the base, trainable, to go on
    training from: its own rank, alpha, dropout and target modules; a decision line says so where
    the config's lora_* keys (given as r, alpha, ...) differ."""
    from peft import PeftConfig, PeftModel

    if not (directory / "adapter_config.json").is_file():
        raise UserError(f"lora_model_dir: {directory} holds no PEFT adapter (adapter_config.json missing); "
                        "give the adapter/ directory of a training run")
    saved = PeftConfig.from_pretrained(str(directory))
    ours = {"lora_r": r, "lora_alpha": alpha, "lora_dropout": dropout}
    theirs = {"lora_r": saved.r, "lora_alpha": saved.lora_alpha, "lora_dropout": saved.lora_dropout}  # pyright: ignore[reportAttributeAccessIssue]
    differ = [f"{k} {ours[k]:g} (adapter: {theirs[k]:g})" for k in ours if float(ours[k]) != float(theirs[k])]
    targets = saved.target_modules  # pyright: ignore[reportAttributeAccessIssue]
    wanted = "all-linear" if target_linear or not target_modules else sorted(target_modules)
    found = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
    if wanted != found and not (wanted == "all-linear" and found == linear_module_names(model)):
        differ.append(f"target modules {wanted} (adapter: {found})")
    model = _fp32_trainable(PeftModel.from_pretrained(model, str(directory), is_trainable=True))
    decisions = [f"lora_model_dir {directory}: training continues from this adapter"]
    if differ:
        decisions.append("lora_model_dir: the adapter's own settings are used where the config's differ: "
                         + "; ".join(differ))
    return model, decisions


def linear_module_names(model) -> list[str]:
    """The names of the linear layers inside the decoder layers (q_proj, ..., down_proj): what
    `all-linear` means, spelled out; lm_head is not among them."""
    import torch.nn as nn

    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if (isinstance(module, nn.Linear) or kind in {"Linear4bit", "Linear8bitLt"}) and ".layers." in name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)
