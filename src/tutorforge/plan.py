"""The memory plan: peak device memory of training and peak RAM of loading, merging and exporting,
from the config and the model's shape alone, before anything is loaded; and the smallest changes
that make training fit.

    tutorforge plan recipes/python-tutor-llama3-8b-rtx3060.yml --gpu rtx3060-12gb

Device memory is VRAM on CUDA and RAM on CPU (there the number is training's peak RSS). Every
component is a formula of the shape and the settings, shown next to its value by `render()`; the
constants that are not formulas (framework overheads, allocator slack) say where they were measured.
Sizes are GiB, written "GB" as the training log writes them. Assumptions:
- the worst case of the data: every micro batch is full (sequence_len tokens per sample) and every
  position is a label (train.loss_sum runs the LM head on label positions only; this bounds it);
- transformers' Llama-family decoder (Llama, Mistral, Qwen2, SmolLM) with SDPA attention, built as
  tutorforge.lora builds it: with a quantised base, the weights that are not quantised (embeddings,
  lm_head, norms) stay in the compute dtype (no fp32 upcast, unlike peft's
  prepare_model_for_kbit_training); LoRA weights are fp32;
  CUDA stores the other weights in the compute dtype, CPU keeps fp32 and autocasts where bf16 is on.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tutorforge.errors import UserError
from tutorforge.hardware import Hardware, Shape, ShapeUnknown, custom, detect, model_shape, profile

if TYPE_CHECKING:
    from tutorforge.config import Config

log = logging.getLogger(__name__)

GB = 2**30
QUANT_BYTES = {  # bytes per weight of a quantised linear layer (bitsandbytes 0.50 Params4bit / Int8Params)
    ("nf4", True): 0.5 + 1 / 64 + 4 / (64 * 256),  # 4-bit codes, 8-bit absmax per 64, fp32 absmax per 256 blocks
    ("nf4", False): 0.5 + 4 / 64,  # 4-bit codes, fp32 absmax per 64
    ("fp4", True): 0.5 + 1 / 64 + 4 / (64 * 256),
    ("fp4", False): 0.5 + 4 / 64,
    ("int8", True): 1.0,  # int8 codes (+ an fp32 scale per output row, counted apart)
    ("int8", False): 1.0,
}
OPTIMIZER_BYTES = {  # optimizer -> bytes of state per trainable weight (torch.optim, bitsandbytes.optim 0.50)
    "adamw_torch": 8.0,  # exp_avg + exp_avg_sq in the parameter's dtype (fp32 here)
    "adamw_torch_fused": 8.0,
    "adamw_bnb_8bit": 2 + 8 / 256,  # two 8-bit states + an fp32 absmax per 256 values each
    "adamw_8bit": 2 + 8 / 256,
    "paged_adamw_8bit": 2 + 8 / 256,  # paged: may move to RAM under pressure; counted on the device
    "paged_adamw_32bit": 8.0,
    "adafactor": 0.0,  # factored second moment: (rows + cols) x 4 bytes per matrix (see _optimizer)
    "sgd": 0.0,  # momentum 0 (tutorforge.lora.build_optimizer)
}
EIGHT_BIT_MIN = 4096  # bitsandbytes min_8bit_size: smaller tensors keep 32-bit states (8 bytes)
QLORA_EMBEDDINGS_FP32 = False  # lora.load_base freezes the base without peft's fp32 upcast of unquantised weights
LOSS_BYTES = 12  # per label position x vocab: the fp32 log-softmax kept for backward, its incoming
# and its outgoing gradient, alive together at the start of backward (the loss's peak)
# CUDA, estimated (no GPU was at hand to measure them; bench/gpu_check.sh prints what a GPU shows):
CUDA_CONTEXT_GB = 0.5  # CUDA context + cuBLAS kernels, outside torch's allocator (0.3-0.5 GB is
# what torch 2.x with CUDA 12 lazy module loading usually takes)
CUDA_RESERVE = 0.05  # blocks the caching allocator holds but has not handed out, per GB allocated
HOST_FRAMEWORK_GB = 2.0  # host RSS of torch (CUDA build) + transformers with a CUDA context
# CPU, measured on a 2-core AMD EPYC with 24 GB, torch 2.13 (CPU), transformers 5.23, glibc 2.36:
CPU_FRAMEWORK_GB = 0.45  # RSS of python with torch, transformers, peft, bitsandbytes, accelerate
# imported (0.38 GB), plus the tokenizer and the prepared data (0.07 GB), before the model loads
CPU_SLACK = {  # (checkpointing, run of at most 3 micro batches) -> RSS glibc's heap holds beyond live
    # tensors (forward temporaries under its 32 MiB mmap threshold), x the layers' saved activations;
    # fitted on SmolLM2-135M LoRA/QLoRA runs, peak RSS measured (ru_maxrss) in brackets:
    (False, True): 0.75,  # 3 steps of 1: 512 tokens (2.41-2.61 GB), 1024 (4.10 GB); predicted within 4%
    (False, False): 1.6,  # 1024 tokens, 2 steps x 4 and x 8 (5.31, 5.13 GB): reached in the first step
    (True, True): 0.55,  # checkpointing, 3 steps of 1: 512 tokens (1.80 GB), 1024 (2.27 GB); within 6%
    (True, False): 1.1,  # checkpointing, 1 step x 8 at 512 tokens (2.08 GB)
}
TOOLS_FRAMEWORK_GB = 0.4  # RSS of python + torch + transformers for merge and export (0.38 GB)
LAYER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EMBEDDINGS = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class Settings:
    """What the plan reads from a config, with the machine's compute dtype resolved."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    sequence_len: int
    gradient_checkpointing: bool
    quant: str | None  # nf4, fp4, int8 or None
    double_quant: bool
    lora_r: int
    targets: tuple[str, ...]  # adapted linear modules of a decoder layer
    lora_layers: int  # decoder layers with LoRA (peft_layers_to_transform, default all)
    grad_layers: int  # decoder layers backward runs through: from the lowest adapted one up
    lora_embeddings: tuple[str, ...]  # embed_tokens / lm_head adapted with LoRA
    saved_embeddings: tuple[str, ...]  # embed_tokens / lm_head trained in full (modules_to_save)
    lora_dropout: float
    optimizer: str
    compute_bytes: int  # 2 (bf16/fp16 autocast) or 4 (fp32)
    packed: bool  # sample_packing: a block-diagonal mask, so keys and values repeated per head
    max_steps: int | None


def settings(cfg: Config, hw: Hardware, layers: int) -> Settings:
    """The plan's view of a config on a machine, for a model of `layers` decoder layers (the rules
    of tutorforge.lora and train)."""
    chosen, names = cfg.peft_layers_to_transform, set(cfg.lora_target_modules)
    all_linear = bool(cfg.lora_target_linear) or not cfg.lora_target_modules  # as lora.add_lora
    half = (hw.device == "cuda" and (bool(cfg.fp16) or cfg.bf16 in (True, "auto"))) or \
        (hw.device == "cpu" and (cfg.bf16 is True or (cfg.bf16 == "auto" and hw.bf16)))
    quant = cfg.bnb_4bit_quant_type if cfg.load_in_4bit else "int8" if cfg.load_in_8bit else None
    return Settings(cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.sequence_len,
                    cfg.gradient_checkpointing, quant, cfg.bnb_4bit_use_double_quant, cfg.lora_r,
                    tuple(m for m in LAYER_MODULES if all_linear or m in names),
                    len(set(chosen)) if chosen else layers, layers - min(chosen) if chosen else layers,
                    tuple(m for m in EMBEDDINGS if m in names),
                    tuple(m for m in EMBEDDINGS if m in cfg.lora_modules_to_save),
                    cfg.lora_dropout, cfg.optimizer, 2 if half else 4, cfg.sample_packing, cfg.max_steps)


@dataclass(frozen=True)
class Line:
    """One component of a peak: its size and how it was computed."""

    name: str
    gb: float
    how: str


# --- training on the device ---------------------------------------------------------------------

def _dtypes(s: Settings, hw: Hardware) -> tuple[int, int, int, int]:
    """Bytes of: the compute dtype; stored unquantised linear weights; the weights that are not
    linear (embeddings, lm_head, norms), also the residual stream's; the linear layers' outputs."""
    c = s.compute_bytes
    w = c if hw.device == "cuda" else 4  # lora.load_base: CUDA stores the compute dtype, CPU fp32
    e = 4 if s.quant and QLORA_EMBEDDINGS_FP32 else w
    o = e if s.quant else c  # bitsandbytes returns its input's dtype; autocast returns c
    return c, w, e, o


def lora_tensors(s: Settings, shape: Shape) -> list[tuple[int, int]]:
    """(rows, cols) of every LoRA tensor (A and B of each adapted module)."""
    linears = shape.linears()
    out = [t for m in s.targets for t in ((s.lora_r, linears[m][0]), (linears[m][1], s.lora_r))] * s.lora_layers
    return out + [(shape.vocab, s.lora_r), (s.lora_r, shape.hidden)] * len(s.lora_embeddings)


def full_copies(s: Settings, shape: Shape) -> int:
    """Embedding-sized matrices trained in full (modules_to_save; one when they are tied)."""
    return min(len(s.saved_embeddings), 1 if shape.tied else 2)


def _optimizer(name: str, tensors: list[tuple[int, int]], param_bytes: int) -> float:
    total = 0.0
    for rows, cols in tensors:
        n = rows * cols
        if name == "adafactor":
            total += (rows + cols) * 4
        elif name in ("adamw_torch", "adamw_torch_fused"):
            total += n * 2 * param_bytes
        elif OPTIMIZER_BYTES[name] not in (0.0, 8.0) and n < EIGHT_BIT_MIN:
            total += n * 8.0
        else:
            total += n * OPTIMIZER_BYTES[name]
    return total


def _weights(s: Settings, shape: Shape, hw: Hardware) -> list[Line]:
    c, w, e, o = _dtypes(s, hw)
    linear = shape.layers * shape.layer_linear_params
    others = shape.params - linear
    per = QUANT_BYTES.get((s.quant, s.double_quant), 0.0)
    if hw.device == "cpu":  # from_pretrained maps the fp32 checkpoint, and with a quantised base the
        # mapping stays after quantisation (measured: RssFile = the whole checkpoint)
        lines = [Line("base weights, fp32 (memory-mapped)", shape.params * 4 / GB, f"{shape.params / 1e9:.3f}B params x 4 bytes")]
        return lines + ([Line(f"quantised copy, {s.quant}", linear * per / GB, f"{linear / 1e9:.3f}B x {per:.3f} bytes")]
                        if s.quant else [])
    if not s.quant:
        return [Line(f"base weights, {'fp32' if w == 4 else '16-bit'}", shape.params * w / GB,
                     f"{shape.params / 1e9:.2f}B params x {w} bytes")]
    scales = shape.layers * sum(out for _, out in shape.linears().values()) * 4 if s.quant == "int8" else 0
    detail = "8 bits + fp32 scale per row" if s.quant == "int8" else (
        "4 bits + 8-bit absmax per 64 + fp32 per 16384" if s.double_quant else "4 bits + fp32 absmax per 64")
    why = "upcast by prepare_model_for_kbit_training" if e == 4 else "kept in the compute dtype"
    return [Line(f"linear weights, {s.quant}", (linear * per + scales) / GB,
                 f"{linear / 1e9:.2f}B params x {per:.3f} bytes ({detail})"),
            Line(f"embeddings, norms{'' if shape.tied else ', lm_head'} ({'fp32' if e == 4 else '16-bit'})",
                 others * e / GB, f"{others / 1e6:.0f}M x {e} bytes: not quantised, {why}")]


def _trainable(s: Settings, shape: Shape, hw: Hardware) -> list[Line]:
    c, w, e, o = _dtypes(s, hw)
    lora, full = lora_tensors(s, shape), full_copies(s, shape)
    n_lora = sum(r * k for r, k in lora)
    params = (n_lora + full * shape.embed_params) * 4  # fp32: LoRA (peft), full copies (lora.add_lora)
    how = f"{n_lora / 1e6:.2f}M = {s.lora_layers} layers x r {s.lora_r} x (in + out) of {len(s.targets)} modules"
    how += f" + LoRA on {'/'.join(s.lora_embeddings)}" if s.lora_embeddings else ""
    if full:
        how += f" + {'/'.join(s.saved_embeddings)} trained in full ({full} x {shape.embed_params / 1e6:.0f}M)"
    opt = _optimizer(s.optimizer, lora, 4) + _optimizer(s.optimizer, [(shape.vocab, shape.hidden)] * full, 4)
    per = OPTIMIZER_BYTES[s.optimizer]
    opt_how = {"adafactor": "(rows + cols) x 4 bytes per matrix", "sgd": "no state (momentum 0)"}.get(
        s.optimizer, f"{per:.2f} bytes per parameter" + (f" (32-bit under {EIGHT_BIT_MIN} values)" if per < 8 else ""))
    return [Line("LoRA parameters (fp32)", params / GB, how),
            Line("gradients", params / GB, "one per trainable parameter"),
            Line(f"optimizer states, {s.optimizer}", opt / GB, opt_how)]


def layer_activations(s: Settings, shape: Shape, hw: Hardware, tokens: int) -> int:
    """Bytes autograd keeps for one decoder layer's backward at `tokens` tokens (each term checked
    against torch.autograd.graph.saved_tensors_hooks, tests/test_plan.py)."""
    c, w, e, o = _dtypes(s, hw)
    autocast = c != 4
    h, i, r = shape.hidden, shape.intermediate, s.lora_r
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    sdpa = c if autocast else o  # SDPA runs in the autocast dtype
    total = 2 * tokens * (h * 4 + 4)  # each RMSNorm keeps its input upcast to fp32, and 1/rms
    groups = (  # (modules reading one input, its width, whether another op keeps it already)
        (("q_proj", "k_proj", "v_proj"), h, False),  # the first norm's output
        (("o_proj",), q_dim, True),  # the attention output, kept by SDPA
        (("gate_proj", "up_proj"), h, False),  # the second norm's output
        (("down_proj",), i, False),  # silu(gate) * up
    )
    mask_bytes = 1 if hw.device == "cuda" else 4  # dropout's mask: bool on CUDA, a float on CPU
    for modules, width, kept in groups:
        k = sum(m in s.targets for m in modules)
        if s.lora_dropout > 0:  # each module: its dropout's mask and output (lora_A's input)
            total += k * tokens * width * (mask_bytes + (c if autocast else 4))
        elif autocast:  # peft casts lora_A's input to fp32, autocast back to c: a copy per module
            total += k * tokens * width * c
        elif k and not kept:  # fp32: the input itself, shared by the modules that read it
            total += tokens * width * 4
    kv = q_dim if s.packed else kv_dim  # a mask turns SDPA's grouped-query path off: k, v repeated
    total += tokens * (2 * q_dim + 2 * kv) * sdpa + tokens * shape.heads * 4  # q, k, v, out, logsumexp
    if s.packed:  # SDPA turns the shared boolean mask into a float copy of its own, in every layer
        total += tokens * s.sequence_len * sdpa
    total += 3 * tokens * i * o  # gate (SiLU's input), silu(gate) and up (the product's inputs)
    total += len(s.targets) * tokens * r * (c if autocast else 4)  # lora_A outputs (lora_B's inputs)
    if autocast:  # autocast's casts of the weights, kept for backward: LoRA's, and fp32 base ones
        total += sum(r * sum(shape.linears()[m]) for m in s.targets) * c
        total += shape.layer_linear_params * c if not s.quant and w != c else 0
    return total


@dataclass(frozen=True)
class Moving:
    """What grows and shrinks with the batch, in bytes."""

    layer: int  # one layer's saved tensors
    checkpoints: int  # the input of every layer backward runs through (gradient checkpointing)
    all_layers: int  # the saved tensors of every layer backward runs through (no checkpointing)
    recompute: int  # one layer rebuilt in backward, with its gradients (checkpointing)
    loss: int  # logits and loss at their peak
    head_copy: int  # autocast's 16-bit lm_head, kept for backward

    def peak(self, checkpointing: bool) -> int:
        if checkpointing:
            return self.checkpoints + max(self.loss + self.head_copy, self.recompute)
        return self.all_layers + self.loss + self.head_copy


def moving(s: Settings, shape: Shape, hw: Hardware) -> Moving:
    c, w, e, o = _dtypes(s, hw)
    tokens = s.micro_batch_size * s.sequence_len
    layer = layer_activations(s, shape, hw, tokens)
    # shared by every layer: the boolean mask of packed samples, rope's cos and sin (fp32)
    shared = (tokens * s.sequence_len if s.packed else 0) + 2 * tokens * shape.head_dim * 4
    # checkpointing: each layer's input (the residual stream) and the final norm's fp32 input;
    # without, each layer's tensors (the lowest layer's input needs none, the final norm's does)
    checkpoints = s.grad_layers * tokens * shape.hidden * e + tokens * shape.hidden * 4 + shared
    biggest = max(a * b for a, b in shape.linears().values())
    # recomputed: the layer's tensors, the MLP's gradients and, quantised, one weight dequantised
    recompute = layer + 3 * tokens * shape.intermediate * o + (biggest * c if s.quant else 0)
    loss = s.micro_batch_size * (s.sequence_len - 1) * shape.vocab * LOSS_BYTES
    copy = shape.embed_params * c if (c != 4 and e != c) else 0
    return Moving(layer, checkpoints, s.grad_layers * layer + shared, recompute, loss, copy)


def _moving_lines(s: Settings, shape: Shape, m: Moving) -> list[Line]:
    tokens, gc = s.micro_batch_size * s.sequence_len, s.gradient_checkpointing
    size = f"{s.grad_layers} layers x {tokens} tokens (micro batch {s.micro_batch_size} x sequence_len {s.sequence_len})"
    other = f"; checkpointing {'off' if gc else 'on'}: {(m.all_layers if gc else m.checkpoints) / GB:.2f} GB"
    lines = [Line(f"activations, checkpointing {'on' if gc else 'off'}", (m.checkpoints if gc else m.all_layers) / GB,
                  f"{size}: {'each layer input' if gc else f'{m.layer / 2**20:.1f} MiB a layer'}{other}")]
    if gc:
        lines.append(Line("  one layer recomputed", m.recompute / GB,
                          f"its {m.layer / 2**20:.0f} MiB + gradients (counted where above the loss)"))
    copy = f" + lm_head cast to 16-bit {m.head_copy / GB:.2f} GB" if m.head_copy else ""
    return lines + [Line("logits and loss", (m.loss + m.head_copy) / GB, f"{s.micro_batch_size * (s.sequence_len - 1)} "
                         f"label positions x vocab {shape.vocab} x {LOSS_BYTES} bytes{copy}")]


def training(s: Settings, shape: Shape, hw: Hardware) -> tuple[list[Line], float]:
    """The peak of training on the device: its components (overheads last) and the total."""
    static = _weights(s, shape, hw) + _trainable(s, shape, hw)
    m = moving(s, shape, hw)
    allocated = sum(x.gb for x in static) + m.peak(s.gradient_checkpointing) / GB
    if hw.device == "cuda":
        overhead = Line("framework (CUDA context, allocator)", CUDA_CONTEXT_GB + CUDA_RESERVE * allocated,
                        f"context {CUDA_CONTEXT_GB} GB + {CUDA_RESERVE:.0%} of the allocated peak")
    else:
        short = s.max_steps is not None and s.max_steps * s.gradient_accumulation_steps <= 3
        share = CPU_SLACK[(s.gradient_checkpointing, short)]
        overhead = Line("framework (python, libraries, allocator)", CPU_FRAMEWORK_GB + share * s.grad_layers * m.layer / GB,
                        f"imports and data {CPU_FRAMEWORK_GB} GB + glibc heap slack {share} x the layers' activations")
    return static + _moving_lines(s, shape, m) + [overhead], allocated + overhead.gb


def loading_peak(s: Settings, shape: Shape, hw: Hardware) -> float:
    """The device's peak while loading a quantised base on CUDA: prepare_model_for_kbit_training
    upcasts one 16-bit embedding-sized matrix at a time, so the last stands beside its fp32 copy."""
    c, w, e, o = _dtypes(s, hw)
    if hw.device != "cuda" or not s.quant or e == w:
        return 0.0
    return sum(x.gb for x in _weights(s, shape, hw)) + shape.embed_params * w / GB + CUDA_CONTEXT_GB


def ram(cfg: Config, s: Settings, shape: Shape, hw: Hardware) -> list[Line]:
    """Peak RAM of loading (CUDA: on the host), merging and exporting; one tensor at a time."""
    b = shape.dtype_bytes
    adapted = max(a * k for a, k in shape.linears().values())
    big = max(adapted, shape.embed_params)
    adapter = (sum(r * k for r, k in lora_tensors(s, shape)) + full_copies(s, shape) * shape.embed_params) * 4
    # merge.Workspace: a buffer for the largest tensor's bytes and an fp32 one for the largest adapted
    # tensor; export adds a q/k tensor's permuted copy and the f16 copy of what it writes
    merged = big * b + adapted * 4
    write = merged + max(adapted * (b + 2), big * 2)
    quantize = big * (4 + 2) if cfg.tutorforge.export.quantizations else 0  # llama.cpp: fp32 + output
    lines = [Line("loading (host)", HOST_FRAMEWORK_GB + big * b / GB, f"framework {HOST_FRAMEWORK_GB} GB + the "
                  f"largest tensor ({big / 1e6:.0f}M x {b} bytes); the checkpoint's page cache is reclaimable")
             ] if hw.device == "cuda" else []
    lines.append(Line("merging", TOOLS_FRAMEWORK_GB + (adapter + merged) / GB, f"framework + adapter "
                      f"{adapter / GB:.2f} GB + one tensor at a time (largest {merged / GB:.2f} GB)"))
    lines.append(Line("exporting", TOOLS_FRAMEWORK_GB + (adapter + max(write, quantize)) / GB,
                      f"framework + adapter + the largest tensor written ({write / GB:.2f} GB) or quantised by "
                      f"llama.cpp ({quantize / GB:.2f} GB)"))
    if cfg.tutorforge.export.verify:
        lines.append(verifying(shape, hw))
    return lines


REFERENCE_HEADROOM = 1.2  # the fp32 reference in RAM: its weights, plus activations and allocator slack
REFERENCE_BATCH_TOKENS, REFERENCE_LOGIT_ROWS = 4096, 512  # verify.reference_predictions' defaults


def reference_in_ram(fp32_bytes: float, ram_bytes: float) -> bool:
    """Whether verify holds the fp32 reference model in RAM; else it reads it from disk a layer at a time."""
    return fp32_bytes * REFERENCE_HEADROOM + GB <= ram_bytes


def verifying(shape: Shape, hw: Hardware) -> Line:
    """verify.reference_model: the merged model in fp32, in RAM when it fits, else read from disk."""
    fp32 = shape.params * 4
    if reference_in_ram(fp32, hw.ram_gb * GB):
        return Line("verifying the export", TOOLS_FRAMEWORK_GB + fp32 * REFERENCE_HEADROOM / GB, "the PyTorch "
                    f"reference in fp32: {shape.params / 1e9:.2f}B x 4 bytes + activations")
    tokens = REFERENCE_BATCH_TOKENS  # a batch's hidden states, attention and MLP activations, in fp32
    activations = tokens * (shape.hidden * 6 + shape.intermediate * 3) * 4
    logits = REFERENCE_LOGIT_ROWS * shape.vocab * 4
    return Line("verifying the export", TOOLS_FRAMEWORK_GB + (shape.embed_params * 4 + logits + activations) / GB,
                f"the PyTorch reference ({fp32 / GB:.0f} GB in fp32) read from disk a layer at a time: the "
                "embeddings in fp32 + a batch's activations")


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
            return str(v).lower() if isinstance(v, bool) else "[" + ", ".join(v) + "]" if isinstance(v, tuple) else str(v)

        return f"{self.key} {show(self.old)} -> {show(self.new)} ({self.why})"


@dataclass
class Plan:
    source: str
    hardware: Hardware
    shape: Shape
    settings: Settings
    lines: list[Line]  # training on the device; the framework overhead last
    total_gb: float
    load_gb: float  # the device's peak while loading, where it has one of its own (else 0)
    ram: list[Line]
    fixes: list[Fix]
    fixed_gb: float | None  # the peak once the fixes are applied

    @property
    def capacity_gb(self) -> float:
        return self.hardware.memory_gb

    @property
    def peak_gb(self) -> float:
        return max(self.total_gb, self.load_gb)

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
        return f"does not fit: {self.peak_gb:.1f} GB > {self.capacity_gb:.1f} GB {where} ({-self.margin_gb:.1f} GB over)"

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
                f"training: {quant} base, LoRA r {s.lora_r} on {len(s.targets)} modules a layer, sequence_len "
                f"{s.sequence_len} x micro batch {s.micro_batch_size} (x {s.gradient_accumulation_steps} accumulation), "
                f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, {s.optimizer}, "
                f"{'16-bit' if s.compute_bytes == 2 else 'fp32'} compute; worst case: full micro batches, "
                "every position a label", ""]
        width = max(len(x.name) for x in self.lines + self.ram) + 2
        rows = [f"{'training peak, ' + ('GPU' if hw.device == 'cuda' else 'RAM'):<{width + 2}}    GB"]
        rows += [f"  {x.name:<{width}}{x.gb:6.2f}   {x.how}" for x in self.lines]
        rows.append(f"  {'total':<{width}}{self.total_gb:6.2f}")
        if self.load_gb:
            rows.append(f"  {'loading, on the GPU':<{width}}{self.load_gb:6.2f}   the weights while peft upcasts the "
                        "last 16-bit embedding matrix, + the CUDA context")
        verdict = [f"verdict: {self.verdict()}"] + ([self.fixes_text()] if not self.fits else [])
        ram_rows = [f"{f'RAM (of {hw.ram_gb:.1f} GB)':<{width + 2}}    GB"] + [
            f"  {x.name:<{width}}{x.gb:6.2f}   {x.how}{'' if x.gb <= hw.ram_gb else '  DOES NOT FIT'}" for x in self.ram]
        return "\n".join(head + rows + [""] + verdict + [""] + ram_rows)


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
        fixes.append(Fix("sequence_len", s.sequence_len, new.sequence_len, f"last resort, longer samples are cut; {why}"))
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
    s = settings(cfg, hw, shape.layers)
    lines, total = training(s, shape, hw)
    plan = Plan(source or cfg.base_model, hw, shape, s, lines, total, loading_peak(s, shape, hw),
                ram(cfg, s, shape, hw), [], None)
    if plan.fits:
        return plan
    why = f"plan: {plan.peak_gb:.1f} GB > {hw.memory_gb:.1f} GB"
    for candidate in _candidates(s):
        peak = max(training(candidate, shape, hw)[1], loading_peak(candidate, shape, hw))
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
