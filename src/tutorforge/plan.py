"""The memory plan: peak device memory of training and peak RAM of loading, merging, exporting and
verifying, for a config on a machine, before anything is loaded; and the smallest changes that make
training fit.

    tutorforge plan recipes/python-tutor-llama3-8b-rtx3060.yml --gpu rtx3060-12gb
    plan_training(cfg, hardware="rtx3060-12gb").render()   # the same table
    apply_plan(cfg)                                        # what train does first

Device memory is VRAM on CUDA and RAM on CPU (there the number is training's peak RSS). The numbers
are tutorforge.memory's formulas (its docstring lists their assumptions); this module turns a
config into their settings (with the attention kernel training will run: attn_implementation, else
the model class's default, read from transformers without loading weights), names every component
with its formula (`render()`), and searches the changes that fit. Sizes are GiB, written "GB" as
the training log writes them.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tutorforge.errors import UserError
from tutorforge.hardware import Hardware, custom, detect, profile
from tutorforge.memory import (
    CPU_FRAMEWORK_GB,
    CUDA_CONTEXT_GB,
    CUDA_RESERVE,
    EIGHT_BIT_MIN,
    EMBEDDINGS,
    GB,
    HOST_FRAMEWORK_GB,
    LAYER_MODULES,
    LOSS_BYTES,
    OPTIMIZER_BYTES,
    Moving,
    Settings,
    allocated_gb,
    attention_probabilities,
    cpu_slack,
    dtypes,
    full_copies,
    lora_tensors,
    loss_rows,
    moving,
    optimizer_state,
    overhead_gb,
    param_shapes,
    quant_bytes,
    streaming,
    trainable_bytes,
    training_gb,
    verifying_gb,
    weights,
)
from tutorforge.shapes import Shape, ShapeUnknown, model_shape

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger(__name__)


def settings(cfg: Config, hw: Hardware, layers: int, shape: Shape | None = None,
             attention: str | None = None) -> Settings:
    """The plan's view of a config on a machine, for a model of `layers` decoder layers (the rules
    of tutorforge.lora and train); a full fine-tune's needs the model's `shape` too. `attention`:
    the kernel training runs (None: planned_attention's)."""
    attention = attention or planned_attention(cfg, hw, shape)[0]
    if cfg.adapter is None:
        if shape is None:
            raise TypeError("plan.settings: a full fine-tune's settings need the model's shape")
        return _full_settings(cfg, hw, shape, attention)
    chosen, names = cfg.peft_layers_to_transform, set(cfg.lora_target_modules)
    all_linear = bool(cfg.lora_target_linear) or not cfg.lora_target_modules  # as lora.add_lora
    half = _half(cfg, hw)
    quant = cfg.bnb_4bit_quant_type if cfg.load_in_4bit else "int8" if cfg.load_in_8bit else None
    return Settings(cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.sequence_len,
                    cfg.gradient_checkpointing, quant, cfg.bnb_4bit_use_double_quant, cfg.lora_r,
                    tuple(m for m in LAYER_MODULES if all_linear or m in names),
                    len(set(chosen)) if chosen else layers, layers - min(chosen) if chosen else layers,
                    tuple(m for m in EMBEDDINGS if m in names),
                    tuple(m for m in EMBEDDINGS if m in cfg.lora_modules_to_save),
                    cfg.lora_dropout, cfg.optimizer, 2 if half else 4, cfg.sample_packing, cfg.max_steps,
                    attention=attention)


def _half(cfg: Config, hw: Hardware) -> bool:
    return (hw.device == "cuda" and (bool(cfg.fp16) or cfg.bf16 in (True, "auto"))) or \
        (hw.device == "cpu" and (cfg.bf16 is True or (cfg.bf16 == "auto" and hw.bf16)))


def _full_settings(cfg: Config, hw: Hardware, shape: Shape, attention: str) -> Settings:
    """A full fine-tune (tutorforge.finetune.unfreeze): every parameter trains, or those whose name
    one of unfrozen_parameters matches (re.search); backward runs from the lowest trainable layer up
    (through every layer when the embeddings train)."""
    import re

    params = param_shapes(shape)
    patterns = [re.compile(p) for p in cfg.unfrozen_parameters]
    chosen = [n for n in params if not patterns or any(p.search(n) for p in patterns)]
    layers = [int(n.split(".")[2]) for n in chosen if n.startswith("model.layers.")]
    lowest = 0 if "model.embed_tokens.weight" in chosen else min(layers, default=shape.layers)
    return Settings(cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.sequence_len,
                    cfg.gradient_checkpointing, None, False, 0, (), 0, shape.layers - lowest, (), (), 0.0,
                    cfg.optimizer, 2 if _half(cfg, hw) else 4, cfg.sample_packing, cfg.max_steps,
                    full=True, full_tensors=tuple(params[n] for n in chosen), attention=attention)


def planned_attention(cfg: Config, hw: Hardware, shape: Shape | None) -> tuple[str, str]:
    """(the attention kernel training will run, why): attn_implementation where this machine can
    run it (hardware.attention_implementation, as train decides), else the model class's default in
    transformers (SDPA where the class supports it, else eager); SDPA, said so, where the class
    is unknown here. No weights are loaded, and no model code imported."""
    from tutorforge.config_fold import attention_wanted
    from tutorforge.hardware import attention_implementation
    from tutorforge.shapes import default_attention, model_class, runnable_attention

    chosen, fallback = attention_implementation(attention_wanted(cfg), hw.device)
    model_type, name = model_class(shape)
    if chosen is not None:
        runs, instead = runnable_attention(chosen, model_type, name)
        return runs or chosen, instead or f"attn_implementation: {chosen}"
    kernel, name = default_attention(model_type, name)
    if kernel is None:
        label = name or model_type
        why = (f"assumed: {label} is not a class transformers has here" if label else
               "assumed: the model's class is not known here") + ", so its default is taken to be SDPA"
        return "sdpa", f"{fallback}; {why}" if fallback else why
    why = f"the model's default: {name} {'supports SDPA' if kernel == 'sdpa' else 'has no SDPA'}"
    return kernel, f"{fallback}; {why}" if fallback else why


@dataclass(frozen=True)
class Line:
    """One component of a peak: its size and how it was computed."""

    name: str
    gb: float
    how: str


# --- training on the device ---------------------------------------------------------------------

def _weights(s: Settings, shape: Shape, hw: Hardware) -> list[Line]:
    base, (_, w, _) = weights(s, shape, hw), dtypes(s, hw)
    linear = shape.layers * shape.layer_linear_params
    per = quant_bytes(s)
    if s.full:
        how = "16-bit compute by autocast" if s.compute_bytes == 2 else "fp32 compute"
        where = " (memory-mapped, then written by the optimizer)" if hw.device == "cpu" else ""
        return [Line(f"weights, fp32 master weights{where}", base.total / GB,
                     f"{shape.params / 1e9:.3f}B params x 4 bytes; {how}")]
    if hw.device == "cpu":
        lines = [Line("base weights, fp32 (memory-mapped)", base.mapped / GB,
                      f"{shape.params / 1e9:.3f}B params x 4 bytes")] if base.mapped else [
            Line("embeddings, norms, lm_head, fp32" if s.quant else "base weights, fp32", base.stored / GB,
                 f"{base.stored / 4 / 1e9:.3f}B params x 4 bytes: the {shape.dtype_bytes * 8}-bit checkpoint "
                 "converted")]
        name = "quantised copy" if base.mapped else "linear weights"
        return lines + ([Line(f"{name}, {s.quant}", base.quantised / GB, f"{linear / 1e9:.3f}B x {per:.3f} bytes")]
                        if s.quant else [])
    if not s.quant:
        return [Line(f"base weights, {'fp32' if w == 4 else '16-bit'}", base.stored / GB,
                     f"{shape.params / 1e9:.2f}B params x {w} bytes")]
    detail = "8 bits + fp32 scale per row" if s.quant == "int8" else (
        "4 bits + 8-bit absmax per 64 + fp32 per 16384" if s.double_quant else "4 bits + fp32 absmax per 64")
    others = shape.params - linear
    return [Line(f"linear weights, {s.quant}", base.quantised / GB,
                 f"{linear / 1e9:.2f}B params x {per:.3f} bytes ({detail})"),
            Line(f"embeddings, norms{'' if shape.tied else ', lm_head'} ({'fp32' if w == 4 else '16-bit'})",
                 base.stored / GB, f"{others / 1e6:.0f}M x {w} bytes: not quantised, kept in the compute dtype")]


def _optimizer_how(s: Settings) -> str:
    per = OPTIMIZER_BYTES[s.optimizer]
    return {"adafactor": "(rows + cols) x 4 bytes per matrix", "sgd": "no state (momentum 0)"}.get(
        s.optimizer, f"{per:.2f} bytes per parameter" + (f" (32-bit under {EIGHT_BIT_MIN} values)" if per < 8 else ""))


def _full_trainable(s: Settings, shape: Shape) -> list[Line]:
    n = sum(r * k for r, k in s.full_tensors)
    which = f"{n / 1e9:.3f}B of {shape.params / 1e9:.3f}B params trainable ({len(s.full_tensors)} tensors)"
    return [Line("gradients (fp32)", trainable_bytes(s, shape) / GB, f"{which} x 4 bytes"),
            Line(f"optimizer states, {s.optimizer}", optimizer_state(s, shape) / GB, _optimizer_how(s))]


def _trainable(s: Settings, shape: Shape) -> list[Line]:
    if s.full:
        return _full_trainable(s, shape)
    n_lora, full = sum(r * k for r, k in lora_tensors(s, shape)), full_copies(s, shape)
    params = trainable_bytes(s, shape)
    how = f"{n_lora / 1e6:.2f}M = {s.lora_layers} layers x r {s.lora_r} x (in + out) of {len(s.targets)} modules"
    how += f" + LoRA on {'/'.join(s.lora_embeddings)}" if s.lora_embeddings else ""
    if full:
        how += f" + {'/'.join(s.saved_embeddings)} trained in full ({full} x {shape.embed_params / 1e6:.0f}M)"
    return [Line("LoRA parameters (fp32)", params / GB, how),
            Line("gradients", params / GB, "one per trainable parameter"),
            Line(f"optimizer states, {s.optimizer}", optimizer_state(s, shape) / GB, _optimizer_how(s))]


def _moving_lines(s: Settings, shape: Shape, hw: Hardware, m: Moving) -> list[Line]:
    tokens, gc = s.micro_batch_size * s.sequence_len, s.gradient_checkpointing
    size = (f"{s.grad_layers} layers x {tokens} tokens "
            f"(micro batch {s.micro_batch_size} x sequence_len {s.sequence_len})")
    if probabilities := attention_probabilities(s, shape, hw, tokens):
        size += f", eager attention's probabilities {probabilities / 2**20:.1f} MiB a layer"
    other = f"; checkpointing {'off' if gc else 'on'}: {(m.all_layers if gc else m.checkpoints) / GB:.2f} GB"
    lines = [Line(f"activations, checkpointing {'on' if gc else 'off'}", (m.checkpoints if gc else m.all_layers) / GB,
                  f"{size}: {'each layer input' if gc else f'{m.layer / 2**20:.1f} MiB a layer'}{other}")]
    chunk, rows = loss_rows(s, shape)
    copy = f" + lm_head cast to 16-bit {m.head_copy / GB:.2f} GB" if m.head_copy else ""
    loss = Line("logits and loss", (m.loss + m.head_copy) / GB,
                f"one chunk of {chunk} of the {rows} label positions x vocab "
                f"{shape.vocab} x {LOSS_BYTES} bytes + the label positions' hidden states{copy}")
    if not gc:
        return lines + [loss]
    recomputed = Line("one layer recomputed", m.recompute / GB, f"its {m.layer / 2**20:.0f} MiB + gradients")
    larger = max(loss, recomputed, key=lambda x: x.gb)
    return lines + [Line("backward, beyond the layer inputs", larger.gb, f"the larger of the two below: {larger.name}"),
                    dataclasses.replace(loss, name="  " + loss.name),
                    dataclasses.replace(recomputed, name="  " + recomputed.name)]


def training(s: Settings, shape: Shape, hw: Hardware) -> tuple[list[Line], float]:
    """The peak of training on the device: its components (overheads last) and the total."""
    allocated = allocated_gb(s, shape, hw)
    overhead = overhead_gb(s, shape, hw, allocated)
    if hw.device == "cuda":
        last = Line("framework (CUDA context, allocator)", overhead,
                    f"context {CUDA_CONTEXT_GB} GB + {CUDA_RESERVE:.0%} of the allocated peak")
    else:
        last = Line("framework (python, libraries, allocator)", overhead,
                    f"imports and data {CPU_FRAMEWORK_GB} GB + glibc heap slack {cpu_slack(s)} x the layers' "
                    "activations")
    lines = _weights(s, shape, hw) + _trainable(s, shape) + _moving_lines(s, shape, hw, moving(s, shape, hw))
    return lines + [last], allocated + overhead


def ram(cfg: Config, s: Settings, shape: Shape, hw: Hardware) -> list[Line]:
    """Peak RAM of loading (CUDA: on the host), merging, exporting and verifying; one tensor at a time."""
    t = streaming(s, shape, bool(cfg.tutorforge.export.quantizations))
    lines = [Line("loading (host)", t.loading_gb(), f"framework {HOST_FRAMEWORK_GB} GB + the largest tensor "
                  f"({t.largest / 1e6:.0f}M x {t.checkpoint_bytes} bytes); the checkpoint's page cache is reclaimable")
             ] if hw.device == "cuda" else []
    if not s.full:  # a full fine-tune's model/ is exported as it is: nothing to merge
        lines.append(Line("merging", t.merging_gb(), f"framework + adapter {t.adapter / GB:.2f} GB + a block of "
                          f"rows at a time ({t.merged / GB:.2f} GB)"))
    lines.append(Line("exporting", t.exporting_gb(), f"framework + adapter + a block of rows written "
                      f"({t.write / GB:.2f} GB) or the largest tensor quantised by llama.cpp "
                      f"({t.quantize / GB:.2f} GB)"))
    if cfg.tutorforge.export.verify:
        lines.append(verifying(shape, hw))
    return lines


def verifying(shape: Shape, hw: Hardware) -> Line:
    """verify.reference_model: the merged model in fp32, in RAM when it fits, else read from disk."""
    gb, in_ram = verifying_gb(shape, hw.ram_gb)
    if in_ram:
        return Line("verifying the export", gb, "the PyTorch reference in fp32: "
                    f"{shape.params / 1e9:.2f}B x 4 bytes + activations")
    return Line("verifying the export", gb, f"the PyTorch reference ({shape.params * 4 / GB:.0f} GB in fp32) read "
                "from disk a layer at a time: the embeddings in fp32 + a batch's activations")


# --- the plan, and what makes it fit --------------------------------------------------------------

@dataclass(frozen=True)
class Fix:
    """One config change of a plan's fixes."""

    key: str
    old: object
    new: object
    why: str

    def line(self) -> str:
        def show(v: object) -> str:
            if isinstance(v, bool):
                return str(v).lower()
            return "[" + ", ".join(v) + "]" if isinstance(v, tuple) else str(v)

        return f"{self.key} {show(self.old)} -> {show(self.new)} ({self.why})"


@dataclass
class Plan:
    source: str
    hardware: Hardware
    shape: Shape
    settings: Settings
    lines: list[Line]  # training on the device; the framework overhead last
    total_gb: float
    ram: list[Line]
    fixes: list[Fix]
    fixed_gb: float | None  # the peak once the fixes are applied
    attention: str = ""  # why settings.attention is the kernel planned for (planned_attention)
    ignored: tuple[str, ...] = ()  # Config.ignored_memory_savings: Axolotl's savings not counted on

    @property
    def capacity_gb(self) -> float:
        return self.hardware.memory_gb

    @property
    def peak_gb(self) -> float:
        """Training's peak on the device: the total of its lines."""
        return self.total_gb

    @property
    def allocated_gb(self) -> float:
        """The peak of what torch allocates (the framework overhead left out)."""
        return self.total_gb - self.lines[-1].gb

    @property
    def fits(self) -> bool:
        """Training fits the device (VRAM on CUDA, RAM on CPU)."""
        return self.peak_gb <= self.capacity_gb

    @property
    def margin_gb(self) -> float:
        return self.capacity_gb - self.peak_gb

    def verdict(self) -> str:
        where = "VRAM" if self.hardware.device == "cuda" else "RAM"
        if self.fits:
            return f"fits: {self.peak_gb:.1f} GB of {self.capacity_gb:.1f} GB {where}, {self.margin_gb:.1f} GB to spare"
        return (f"does not fit: {self.peak_gb:.1f} GB > {self.capacity_gb:.1f} GB {where} "
                f"({-self.margin_gb:.1f} GB over)")

    def fixes_text(self) -> str:
        if self.fits:
            return ""
        if not self.fixes:
            hint = "adapter: qlora with load_in_4bit: true, " if not self.settings.quant else ""
            return ("no change within reach fits (micro batch 1, gradient checkpointing and sequence_len 64 "
                    f"still need more): use {hint}a smaller base model, or a larger device")
        effective = self.settings.micro_batch_size * self.settings.gradient_accumulation_steps
        return (f"the smallest changes that fit ({self.fixed_gb:.1f} GB, effective batch kept at {effective}):\n"
                + "\n".join(f"  {f.line()}" for f in self.fixes))

    def render(self) -> str:
        s, shape, hw = self.settings, self.shape, self.hardware
        stored = "16-bit" if hw.device == "cuda" and s.compute_bytes == 2 else "fp32"
        quant = f"{s.quant}{' double quant' if s.double_quant and s.quant != 'int8' else ''}" if s.quant else stored
        head = [f"memory plan: {self.source} on {hw.describe()}",
                f"model: {shape.name} ({shape.source}): {shape.params / 1e9:.2f}B params, {shape.layers} layers, "
                f"hidden {shape.hidden}, vocab {shape.vocab}{', tied embeddings' if shape.tied else ''}",
                f"training: {_method(s, shape, quant)}, sequence_len "
                f"{s.sequence_len} x micro batch {s.micro_batch_size} "
                f"(x {s.gradient_accumulation_steps} accumulation), "
                f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, {s.optimizer}, "
                f"{'16-bit' if s.compute_bytes == 2 else 'fp32'} compute; worst case: full micro batches, "
                "every position a label",
                f"attention: {s.attention} ({self.attention})" + (
                    "; eager keeps the attention probabilities, micro batch x heads x sequence_len^2, for "
                    "backward" if s.attention == "eager" else "")]
        if self.ignored:
            head.append(f"ignored, not counted on: {', '.join(self.ignored)} (tutorforge does not do what "
                        "they save; this plan assumes no saving)")
        head.append("")
        width = max(len(x.name) for x in self.lines + self.ram) + 2
        rows = [f"{'training peak, ' + ('GPU' if hw.device == 'cuda' else 'RAM'):<{width + 2}}    GB"]
        rows += [f"  {x.name:<{width}}{x.gb:6.2f}   {x.how}" for x in self.lines]
        rows.append(f"  {'total':<{width}}{self.total_gb:6.2f}")
        verdict = [f"verdict: {self.verdict()}"] + ([self.fixes_text()] if not self.fits else [])
        ram_rows = [f"{f'RAM (of {hw.ram_gb:.1f} GB)':<{width + 2}}    GB"] + [
            f"  {x.name:<{width}}{x.gb:6.2f}   {x.how}{'' if x.gb <= hw.ram_gb else '  DOES NOT FIT'}"
            for x in self.ram]
        return "\n".join(head + rows + [""] + verdict + [""] + ram_rows)


def _method(s: Settings, shape: Shape, quant: str) -> str:
    if s.full:
        n = sum(r * k for r, k in s.full_tensors)
        return f"full fine-tune, {n / 1e9:.3f}B of {shape.params / 1e9:.3f}B params trainable, fp32 master weights"
    return f"{quant} base, LoRA r {s.lora_r} on {len(s.targets)} modules a layer"


def _candidates(s: Settings) -> Iterator[Settings]:
    """Changed settings, most preferred first, all with the same effective batch: a smaller micro
    batch; then checkpointing on; then no embeddings trained; then, last, a shorter sequence_len."""
    effective = s.micro_batch_size * s.gradient_accumulation_steps
    sizes = [m for m in range(s.micro_batch_size, 0, -1) if effective % m == 0]
    stages = [s]
    if not s.gradient_checkpointing:
        stages.append(dataclasses.replace(stages[-1], gradient_checkpointing=True))
    if s.lora_embeddings or s.saved_embeddings:
        stages.append(dataclasses.replace(stages[-1], lora_embeddings=(), saved_embeddings=()))
    for stage in stages:
        for m in sizes:
            if stage is not s or m != s.micro_batch_size:
                yield dataclasses.replace(stage, micro_batch_size=m, gradient_accumulation_steps=effective // m)
    last = dataclasses.replace(stages[-1], micro_batch_size=1, gradient_accumulation_steps=effective)
    for seq in range((s.sequence_len - 1) // 64 * 64, 63, -64):
        yield dataclasses.replace(last, sequence_len=seq)


def _fixes(cfg: Config, s: Settings, new: Settings, why: str) -> list[Fix]:
    fixes = []
    if new.micro_batch_size != s.micro_batch_size:
        fixes += [Fix("micro_batch_size", s.micro_batch_size, new.micro_batch_size, why),
                  Fix("gradient_accumulation_steps", s.gradient_accumulation_steps, new.gradient_accumulation_steps,
                      f"keeps the effective batch {new.micro_batch_size * new.gradient_accumulation_steps}")]
    if new.gradient_checkpointing != s.gradient_checkpointing:
        fixes.append(Fix("gradient_checkpointing", False, True, why))
    if (s.lora_embeddings or s.saved_embeddings) and not (new.lora_embeddings or new.saved_embeddings):
        for key in ("lora_modules_to_save", "lora_target_modules"):
            if any(m in EMBEDDINGS for m in getattr(cfg, key)):
                kept = tuple(m for m in getattr(cfg, key) if m not in EMBEDDINGS)
                fixes.append(Fix(key, getattr(cfg, key), kept, f"no embeddings trained; {why}"))
    if new.sequence_len != s.sequence_len:
        fixes.append(Fix("sequence_len", s.sequence_len, new.sequence_len,
                         f"last resort, longer samples are cut; {why}"))
    return fixes


def plan_training(cfg: Config, *, hardware: str | None = None, vram_gb: float | None = None,
                  ram_gb: float | None = None, source: str | None = None) -> Plan:
    """The memory plan of `cfg` on a hardware profile, a GPU of `vram_gb`, the config's
    tutorforge.hardware, or (none given) this machine; with the smallest fixes when it does not fit."""
    if vram_gb is not None and vram_gb <= 0:
        raise UserError(f"--vram {vram_gb:g}: must be a positive number of GB")
    name = hardware or cfg.tutorforge.hardware
    hw = custom(vram_gb, ram_gb=ram_gb) if vram_gb else profile(name, ram_gb=ram_gb) if name else detect(ram_gb=ram_gb)
    shape = model_shape(cfg.base_model, cfg.base_model_config)
    kernel, why = planned_attention(cfg, hw, shape)
    s = settings(cfg, hw, shape.layers, shape, attention=kernel)
    lines, total = training(s, shape, hw)
    plan = Plan(source or cfg.base_model, hw, shape, s, lines, total, ram(cfg, s, shape, hw), [], None, why,
                cfg.ignored_memory_savings)
    if plan.fits:
        return plan
    why = f"plan: {plan.peak_gb:.1f} GB > {hw.memory_gb:.1f} GB"
    for candidate in _candidates(s):
        peak = training_gb(candidate, shape, hw)
        if peak <= hw.memory_gb:
            plan.fixes, plan.fixed_gb = _fixes(cfg, s, candidate, why), peak
            break
    return plan


def apply_plan(cfg: Config, *, ignore: bool = False, hardware: str | None = None) -> tuple[Config, list[str]]:
    """Plan before training: (config, decision lines). The config as it is when it fits; changed by
    the plan's fixes when it does not and tutorforge.auto_fit is on; else UserError with the plan,
    unless `ignore` (--ignore-plan)."""
    try:
        plan = plan_training(cfg, hardware=hardware)
    except ShapeUnknown as exc:  # training resolves (downloads) the model itself: say it was not planned
        log.warning("memory plan skipped: %s", exc)
        return cfg, [f"memory plan skipped: {str(exc).splitlines()[0]}"]
    where = plan.hardware.name
    if plan.fits:
        return cfg, [f"memory plan on {where}: {plan.verdict()}"]
    if ignore:
        return cfg, [f"memory plan on {where}: {plan.verdict()}; training anyway (--ignore-plan)"]
    if cfg.tutorforge.auto_fit and plan.fixes:
        changed = dataclasses.replace(cfg, **{f.key: f.new for f in plan.fixes})
        return changed, [f.line() for f in plan.fixes] + [  # train logs each and keeps them in run.json
            f"memory plan on {where} after these changes: {plan.fixed_gb:.1f} GB of {plan.capacity_gb:.1f} GB "
            "(tutorforge.auto_fit)"]
    how = ("apply these changes, or set `tutorforge: {auto_fit: true}` to let train apply them, or pass "
           "--ignore-plan to train anyway" if plan.fixes else "pass --ignore-plan to train anyway")
    raise UserError(f"memory plan on {where}: training {plan.verdict()}\n{plan.fixes_text()}\n"
                    f"{how} (`tutorforge plan CONFIG` shows the breakdown)")
