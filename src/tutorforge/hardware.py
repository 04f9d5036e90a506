"""The machine a memory plan is for: a named hardware profile, a GPU of a given size, or this one.

    profile("rtx3060-12gb")   -> Hardware(device="cuda", memory_gb=12.0, ram_gb=16.0, ...)
    custom(24)                -> a 24 GB CUDA device (`tutorforge plan --vram 24`)
    detect()                  -> this machine: CUDA device 0 if torch sees one, else its CPU and RAM

Sizes are in GiB (2**30 bytes), written "GB" as the training log writes them. The model's side of
a plan is tutorforge.shapes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tutorforge.errors import UserError
from tutorforge.rules import did_you_mean

Config = Any  # a config.Config (config imports this module: it cannot import it back)

# name: (device, memory GiB, host RAM GiB, bf16, what the CUDA device name contains)
# Memory is what nvidia-smi reports as memory.total (MiB / 1024); host RAM is a usual machine
# with that card, overridden by --ram.
PROFILES: dict[str, tuple[str, float | None, float | None, bool | None, str | None]] = {
    # 12288 MiB; 16 GB RAM: the reference machine (DESIGN.md)
    "rtx3060-12gb": ("cuda", 12288 / 1024, 16.0, True, "RTX 3060"),
    # 24564 MiB; 32 GB RAM: a usual desktop
    "rtx4090-24gb": ("cuda", 24564 / 1024, 32.0, True, "RTX 4090"),
    # 15360 MiB; 12.7 GB RAM: Google Colab's T4 runtime; Turing: no bf16
    "t4-16gb": ("cuda", 15360 / 1024, 12.7, False, "T4"),
    # A100-SXM4-40GB 40960 MiB; 85 GB RAM: GCP a2-highgpu-1g
    "a100-40gb": ("cuda", 40960 / 1024, 85.0, True, "A100"),
    # A100-SXM4-80GB 81920 MiB; 170 GB RAM: GCP a2-ultragpu-1g
    "a100-80gb": ("cuda", 81920 / 1024, 170.0, True, "A100"),
    # H100 80GB HBM3 81559 MiB; 234 GB RAM: GCP a3-highgpu-1g
    "h100-80gb": ("cuda", 81559 / 1024, 234.0, True, "H100"),
    # training in RAM: this machine's RAM (/proc/meminfo), bf16 where oneDNN has it
    "cpu": ("cpu", None, None, None, None),
}


@dataclass(frozen=True)
class Hardware:
    name: str
    device: str  # "cuda" or "cpu"
    memory_gb: float  # what training fills: VRAM on cuda, RAM on cpu
    ram_gb: float  # host RAM: loading, merging and exporting
    bf16: bool  # bf16 compute (bf16: auto picks it)
    source: str  # where the numbers come from

    def describe(self) -> str:
        what = f"{self.memory_gb:.1f} GB VRAM, {self.ram_gb:.1f} GB RAM" if self.device == "cuda" else \
            f"CPU, {self.ram_gb:.1f} GB RAM"
        return f"{self.name} ({what}; {self.source})"


def machine_ram_gb() -> float:
    """This machine's RAM (MemTotal)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def cpu_has_bf16() -> bool:
    """What `bf16: auto` finds on this CPU (tutorforge.lora.compute_dtype asks oneDNN the same)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def profile(name: str, *, ram_gb: float | None = None) -> Hardware:
    """A named hardware profile (`tutorforge plan --gpu NAME`); UserError with a hint otherwise."""
    if name not in PROFILES:
        raise UserError(f"--gpu {name}: unknown hardware profile{did_you_mean(name, PROFILES)}; "
                        f"known: {', '.join(PROFILES)} (or give --vram GB)")
    device, memory, ram, bf16, _ = PROFILES[name]
    if device == "cpu":
        ram = ram_gb or machine_ram_gb()
        return Hardware(name, "cpu", ram, ram, cpu_has_bf16(), "this machine's RAM" if not ram_gb else "--ram")
    assert memory is not None and ram is not None and bf16 is not None, f"{name}: a GPU profile has every number"
    return Hardware(name, device, memory, ram_gb or ram, bf16, "profile")


def custom(vram_gb: float, *, ram_gb: float | None = None) -> Hardware:
    """A CUDA device of `vram_gb` (`--vram`); host RAM from --ram, else this machine's."""
    return Hardware(f"cuda-{vram_gb:g}gb", "cuda", vram_gb, ram_gb or machine_ram_gb(), True, "--vram")


def detect(*, ram_gb: float | None = None) -> Hardware:
    """The machine this runs on: CUDA device 0 (named after its profile when one matches), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return profile("cpu", ram_gb=ram_gb)
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    match = next((name for name, (device, mem, _, _, pattern) in PROFILES.items()
                  if device == "cuda" and pattern in props.name and abs(mem - memory) / mem < 0.1), None)
    return Hardware(match or f"cuda:{props.name}", "cuda", memory, ram_gb or machine_ram_gb(),
                    torch.cuda.is_bf16_supported(), f"detected {props.name}")


def attention_implementation(wanted: str | None, device: str) -> tuple[str | None, str | None]:
    """The attention kernel to load the model with: `wanted` (config.attention_wanted) where this
    machine can run it, else the model's own choice (None: transformers picks SDPA where the model
    supports it, else eager). Returns (implementation, the reason when the config's wish was not
    followed). `device` is a torch device type (cuda, cpu, mps). Whether the model supports the kernel
    is checked by transformers when it loads (lora.load_base); the plan asks the same (plan.planned_attention).
    Here and not in lora.py, which imports torch: the plan imports neither torch nor a model."""
    import importlib.util

    needs = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}  # their packages
    if wanted in needs:
        if device != "cuda":
            return None, f"attn_implementation {wanted} needs CUDA; using the model's default (SDPA or eager)"
        if importlib.util.find_spec(needs[wanted]) is None:
            return None, (f"attn_implementation {wanted} needs the {needs[wanted]} package, which is not "
                          "installed; using the model's default (SDPA or eager)")
    return wanted, None


def training_attention(cfg: Config, device: str, model_dir: Path) -> tuple[str | None, list[str]]:
    """The attention kernel training loads the model at `model_dir` with (None: the model's
    default), and why, where that is not what the config (config_fold.attention_wanted) asks for:
    attention_implementation on this machine, then shapes.runnable_attention for the model's class."""
    from tutorforge.config_fold import attention_wanted
    from tutorforge.shapes import model_class_of, runnable_attention

    chosen, why = attention_implementation(attention_wanted(cfg), device)
    chosen, instead = runnable_attention(chosen, *model_class_of(model_dir))
    return chosen, [w for w in (why, instead) if w]
