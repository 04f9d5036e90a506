"""The model and optimizer of a training run: a frozen base (16/32-bit, or 4-bit NF4/FP4, or
8-bit through bitsandbytes) with LoRA adapters from peft, and the optimizer the config names.

Builders take plain values, not the config: `load_base(path, quant="nf4", dtype=torch.bfloat16, ...)`.
"""
from __future__ import annotations

from pathlib import Path

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


def attention_implementation(flash_attention: bool, device: torch.device) -> tuple[str, str | None]:
    """flash_attention_2 where asked, on CUDA, with flash-attn installed; else PyTorch SDPA.
    Returns (implementation, the reason when the config's wish was not followed)."""
    if not flash_attention:
        return "sdpa", None
    if device.type != "cuda":
        return "sdpa", "flash_attention: true needs CUDA; using PyTorch SDPA"
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "flash_attention: true but flash-attn is not installed; using PyTorch SDPA"
    return "flash_attention_2", None


def load_base(path: Path, *, quant: str | None, double_quant: bool, dtype: torch.dtype,
              device: torch.device, gradient_checkpointing: bool, attention: str = "sdpa",
              trust_remote_code: bool = False, config_dir: Path | None = None):
    """The base model, frozen: 16/32-bit, or 4-bit (`quant` nf4/fp4) or 8-bit (`quant` int8).
    `config_dir` (config key base_model_config) holds the config.json to build it from instead of
    its own; `trust_remote_code` lets transformers run a model's own code (auto_map)."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from tutorforge.tokenizer import check_remote_code

    kwargs: dict = {"attn_implementation": attention, "trust_remote_code": trust_remote_code}
    directories: list[Path] = [Path(path), *([Path(config_dir)] if config_dir else [])]
    for directory in dict.fromkeys(directories):
        check_remote_code(directory, trust_remote_code)
    if config_dir is not None:
        kwargs["config"] = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=trust_remote_code)
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
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
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
    model = get_peft_model(model, config)
    for param in model.parameters():  # embeddings trained in full: fp32 master weights, like LoRA's
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


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
