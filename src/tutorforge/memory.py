"""The memory formulas: bytes of each part of training's peak on the device, and of the RAM peaks
of loading, merging, exporting and verifying, from the settings and the model's shape alone.

    s = Settings(...)                       # tutorforge.plan.settings builds it from a config
    weights(s, shape, hw).total             # bytes of the base model on the device
    layer_activations(s, shape, hw, 1024)   # bytes autograd keeps for one decoder layer
    allocated_gb(s, shape, hw)              # the peak torch allocates; + overhead_gb: the peak

Pure arithmetic: nothing is loaded, nothing is printed (tutorforge.plan names and explains every
number). Sizes are bytes unless a name ends in _gb (GiB). Assumptions: the worst case of the data
(every micro batch full, every position a label: loss.loss_sum runs the LM head on label positions
only, in chunks of loss_chunk_rows, so this bounds it); transformers' Llama-family decoder with the
attention kernel of Settings.attention (SDPA, or eager, which keeps the attention probabilities;
flash and flex attention are counted as SDPA: neither keeps them), built as tutorforge.lora builds
it: with a quantised base, the weights that are not quantised (embeddings, lm_head, norms) stay in
the stored dtype (no fp32 upcast, unlike peft's prepare_model_for_kbit_training); LoRA weights are
fp32; CUDA stores the other weights in the compute dtype, CPU keeps fp32 and autocasts where bf16 is
on. A full fine-tune (adapter unset, tutorforge.finetune) keeps fp32 master weights on every device
and autocasts a 16-bit compute dtype: weights 4 bytes a parameter, gradients 4 and the optimizer's
state (AdamW 8) per trainable one.
"""
from __future__ import annotations

from dataclasses import dataclass

from tutorforge.hardware import Hardware
from tutorforge.shapes import Shape
from tutorforge.verify import REFERENCE_BATCH_TOKENS, REFERENCE_HEADROOM, REFERENCE_LOGIT_ROWS, reference_in_ram

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
    "adafactor": 0.0,  # factored second moment: (rows + cols) x 4 bytes per matrix (see optimizer_bytes)
    "sgd": 0.0,  # momentum 0 (tutorforge.lora.build_optimizer)
}
EIGHT_BIT_MIN = 4096  # bitsandbytes min_8bit_size: smaller tensors keep 32-bit states (8 bytes)
LOSS_BYTES = 12  # per label position x vocab: the fp32 log-softmax kept for backward, its incoming
# and its outgoing gradient, alive together at the start of backward (the loss's peak)
LOSS_CHUNK_BYTES = 128 * 2**20  # fp32 logits of one chunk of label rows (loss.loss_sum): the loss's
# peak is LOSS_BYTES of one chunk, at most 3 x 128 MiB whatever the sequence length and batch
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
MERGE_BLOCK_BYTES = 32 << 20  # merge.BLOCK_BYTES: the rows merge and export's writer take at a time
TOOLS_FRAMEWORK_GB = 0.4  # RSS of python + torch + transformers for merge and export (0.38 GB)
LAYER_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EMBEDDINGS = ("embed_tokens", "lm_head")


@dataclass(frozen=True)
class Settings:
    """What the formulas read from a config, with the machine's compute dtype resolved."""

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
    full: bool = False  # a full fine-tune: no adapter, the weights themselves train (fp32 master weights)
    full_tensors: tuple[tuple[int, int], ...] = ()  # (rows, cols) of a full fine-tune's trainable tensors
    attention: str = "sdpa"  # the attention kernel training runs (tutorforge.plan.planned_attention)


def dtypes(s: Settings, hw: Hardware) -> tuple[int, int, int]:
    """Bytes of: the compute dtype; the stored weights that are not quantised (also the residual
    stream's); the linear layers' outputs."""
    c = s.compute_bytes
    w = c if hw.device == "cuda" and not s.full else 4  # lora.load_base: CUDA stores the compute dtype,
    # CPU fp32; a full fine-tune fp32 everywhere (train.build_run: master weights)
    o = w if s.quant else c  # bitsandbytes returns its input's dtype; autocast returns c
    return c, w, o


# --- what does not move: weights, trainable parameters, optimizer states -----------------------

@dataclass(frozen=True)
class Weights:
    """The base model on the device, in bytes."""

    mapped: int  # CPU: an fp32 checkpoint, memory-mapped by from_pretrained (0 on CUDA)
    quantised: float  # the quantised linear layers (0 without quantisation)
    stored: int  # the weights kept unquantised (all of them without quantisation), unless mapped

    @property
    def total(self) -> float:
        return self.mapped + self.quantised + self.stored


def quant_bytes(s: Settings) -> float:
    """Bytes per weight of a quantised linear layer (0 without quantisation)."""
    return QUANT_BYTES.get((s.quant, s.double_quant), 0.0) if s.quant else 0.0


def weights(s: Settings, shape: Shape, hw: Hardware) -> Weights:
    _, w, _ = dtypes(s, hw)
    linear = shape.layers * shape.layer_linear_params
    quantised = linear * quant_bytes(s)
    if hw.device == "cpu":
        if shape.dtype_bytes == 4:  # from_pretrained maps an fp32 checkpoint, and with a quantised base
            # the mapping stays after quantisation (measured: RssFile = the whole checkpoint)
            return Weights(shape.params * 4, quantised, 0)
        # a 16-bit checkpoint becomes fp32 copies, of the weights that are not quantised; the file's
        # pages it read are page cache the kernel reclaims (measured on the Llama-3-8B shape, QLoRA:
        # RssFile up to 13 GB while loading, 0.15 GB after; bench/qlora_8b_cpu.py)
        return Weights(0, quantised, (shape.params - linear if s.quant else shape.params) * 4)
    if not s.quant:
        return Weights(0, 0.0, shape.params * w)
    scales = shape.layers * sum(out for _, out in shape.linears().values()) * 4 if s.quant == "int8" else 0
    return Weights(0, quantised + scales, (shape.params - linear) * w)


def lora_tensors(s: Settings, shape: Shape) -> list[tuple[int, int]]:
    """(rows, cols) of every LoRA tensor (A and B of each adapted module)."""
    linears = shape.linears()
    out = [t for m in s.targets for t in ((s.lora_r, linears[m][0]), (linears[m][1], s.lora_r))] * s.lora_layers
    return out + [(shape.vocab, s.lora_r), (s.lora_r, shape.hidden)] * len(s.lora_embeddings)


def full_copies(s: Settings, shape: Shape) -> int:
    """Embedding-sized matrices trained in full (modules_to_save; one when they are tied)."""
    return min(len(s.saved_embeddings), 1 if shape.tied else 2)


def param_shapes(shape: Shape) -> dict[str, tuple[int, int]]:
    """(rows, cols) of every parameter, named as transformers' Llama-family models name them
    (model.named_parameters(): what unfrozen_parameters matches); a norm's vector is (1, hidden)."""
    out = {"model.embed_tokens.weight": (shape.vocab, shape.hidden)}
    kinds = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    for layer in range(shape.layers):
        for module, (fan_in, fan_out) in shape.linears().items():
            out[f"model.layers.{layer}.{kinds[module]}.{module}.weight"] = (fan_out, fan_in)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"model.layers.{layer}.{norm}.weight"] = (1, shape.hidden)
    out["model.norm.weight"] = (1, shape.hidden)
    return out if shape.tied else {**out, "lm_head.weight": (shape.vocab, shape.hidden)}


def trainable_bytes(s: Settings, shape: Shape) -> int:
    """The trainable parameters, fp32: LoRA's (peft) and full copies (lora.add_lora), or a full
    fine-tune's. Their gradients take as much again."""
    if s.full:
        return sum(r * k for r, k in s.full_tensors) * 4
    return (sum(r * k for r, k in lora_tensors(s, shape)) + full_copies(s, shape) * shape.embed_params) * 4


def optimizer_bytes(name: str, tensors: list[tuple[int, int]], param_bytes: int) -> float:
    """The optimizer `name`'s state for parameters of these (rows, cols)."""
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


def optimizer_state(s: Settings, shape: Shape) -> float:
    """The optimizer's state for every trainable parameter (all fp32). Adafactor keeps a norm's
    second moment whole (hidden x 4 bytes; (1 + hidden) x 4 here, 4 bytes over)."""
    if s.full:
        return optimizer_bytes(s.optimizer, list(s.full_tensors), 4)
    full = [(shape.vocab, shape.hidden)] * full_copies(s, shape)
    return optimizer_bytes(s.optimizer, lora_tensors(s, shape), 4) + optimizer_bytes(s.optimizer, full, 4)


# --- what moves with the batch: activations, logits and loss -----------------------------------

def loss_chunk_rows(vocab: int) -> int:
    """Label rows per chunk of the LM head and cross-entropy (loss.loss_sum): 128 MiB of fp32
    logits, at least 16 rows."""
    return max(16, LOSS_CHUNK_BYTES // (vocab * 4))


def loss_rows(s: Settings, shape: Shape) -> tuple[int, int]:
    """(rows of the largest chunk, label rows of a micro batch) in the worst case: every position a label."""
    rows = s.micro_batch_size * (s.sequence_len - 1)
    return min(rows, loss_chunk_rows(shape.vocab)), rows


def loss_bytes(s: Settings, shape: Shape) -> int:
    """The loss's peak: one chunk's logits (LOSS_BYTES a row and vocab entry), and the final hidden
    states of every label row gathered for the chunks, fp32, with their gradient."""
    chunk, rows = loss_rows(s, shape)
    return chunk * shape.vocab * LOSS_BYTES + 2 * rows * shape.hidden * 4


def layer_activations(s: Settings, shape: Shape, hw: Hardware, tokens: int) -> int:
    """Bytes autograd keeps for one decoder layer's backward at `tokens` tokens (each term checked
    against torch.autograd.graph.saved_tensors_hooks, tests/test_memory.py)."""
    c, w, o = dtypes(s, hw)
    autocast = c != 4
    h, i, r = shape.hidden, shape.intermediate, s.lora_r
    q_dim = shape.heads * shape.head_dim
    sdpa = c if autocast else o  # SDPA (and eager's matmuls) run in the autocast dtype
    total = 2 * tokens * (h * 4 + 4)  # each RMSNorm keeps its input upcast to fp32, and 1/rms
    eager = s.attention == "eager"
    groups = (  # (modules reading one input, its width, whether another op keeps it already)
        (("q_proj", "k_proj", "v_proj"), h, False),  # the first norm's output
        (("o_proj",), q_dim, not eager),  # the attention output: SDPA keeps it; eager's is a fresh copy
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
    total += attention_saved(s, shape, hw, tokens)
    total += 3 * tokens * i * o  # gate (SiLU's input), silu(gate) and up (the product's inputs)
    total += len(s.targets) * tokens * r * (c if autocast else 4)  # lora_A outputs (lora_B's inputs)
    if s.full:  # the weights' gradients need what each op read (measured, tests/test_memory.py)
        total += 2 * tokens * h * 4  # each norm's normalised input, fp32, for its weight's gradient
        # the linears' inputs: autocast casts the norms' fp32 outputs once for each of q, k, v, gate
        # and up; in fp32 the two outputs are kept once each; o_proj's is SDPA's (counted above)
        total += 5 * tokens * h * c if autocast else 2 * tokens * h * 4
        total += tokens * i * o  # down_proj's input, silu(gate) * up
        total += tokens * q_dim * sdpa if eager else 0  # o_proj's: eager's output is not SDPA's, kept
    if autocast:  # autocast's casts of the weights, kept for backward: LoRA's, and fp32 base ones
        total += sum(r * sum(shape.linears()[m]) for m in s.targets) * c
        total += shape.layer_linear_params * c if not s.quant and w != c else 0
    return total


def attention_probabilities(s: Settings, shape: Shape, hw: Hardware, tokens: int) -> int:
    """Bytes of the attention probabilities (micro batch x heads x seq x seq) one layer keeps for
    backward under eager attention; 0 under the other kernels, which recompute them. Llama's and
    Gemma's eager_attention_forward (transformers 5.23) runs the softmax in fp32 and keeps its
    output; under autocast the second matmul keeps its own 16-bit copy of it as well."""
    if s.attention != "eager":
        return 0
    c = dtypes(s, hw)[0]
    return tokens * shape.heads * s.sequence_len * (4 + (c if c != 4 else 0))


def attention_saved(s: Settings, shape: Shape, hw: Hardware, tokens: int) -> int:
    """Bytes the attention kernel keeps for backward at `tokens` tokens (checked against autograd's
    saved tensors, tests/test_memory.py)."""
    c, _, o = dtypes(s, hw)
    dtype = c if c != 4 else o  # SDPA and eager's matmuls run in the autocast dtype
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if s.attention == "eager":  # repeat_kv copies k and v to every head, mask or not
        return tokens * 3 * q_dim * dtype + attention_probabilities(s, shape, hw, tokens)  # q, k, v
    kv = q_dim if s.packed else kv_dim  # a mask turns SDPA's grouped-query path off: k, v repeated
    total = tokens * (2 * q_dim + 2 * kv) * dtype + tokens * shape.heads * 4  # q, k, v, out, logsumexp
    if s.packed:  # SDPA turns the shared boolean mask into a float copy of its own, in every layer
        total += tokens * s.sequence_len * dtype
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
    c, w, o = dtypes(s, hw)
    tokens = s.micro_batch_size * s.sequence_len
    layer = layer_activations(s, shape, hw, tokens)
    # shared by every layer: the boolean mask of packed samples, which SDPA keeps (eager adds its
    # float mask and keeps nothing of it), rope's cos and sin (fp32)
    mask = tokens * s.sequence_len if s.packed and s.attention != "eager" else 0
    shared = mask + 2 * tokens * shape.head_dim * 4
    # checkpointing: each layer's input (the residual stream) and the final norm's fp32 input;
    # without, each layer's tensors (the lowest layer's input needs none, the final norm's does)
    checkpoints = s.grad_layers * tokens * shape.hidden * w + tokens * shape.hidden * 4 + shared
    biggest = max(a * b for a, b in shape.linears().values())
    # recomputed: the layer's tensors, the MLP's gradients and, quantised, one weight dequantised
    recompute = layer + 3 * tokens * shape.intermediate * o + (biggest * c if s.quant else 0)
    loss = loss_bytes(s, shape)
    copy = shape.embed_params * c if (c != 4 and w != c) else 0
    return Moving(layer, checkpoints, s.grad_layers * layer + shared, recompute, loss, copy)


# --- the peaks ----------------------------------------------------------------------------------

def cpu_slack(s: Settings) -> float:
    """CPU_SLACK's share for these settings: a run of at most 3 micro batches, or a longer one."""
    short = s.max_steps is not None and s.max_steps * s.gradient_accumulation_steps <= 3
    return CPU_SLACK[(s.gradient_checkpointing, short)]


def allocated_gb(s: Settings, shape: Shape, hw: Hardware) -> float:
    """The peak of what training allocates on the device: weights, trainable parameters, their
    gradients and optimizer states, and the moving part at its peak."""
    base, trainable = weights(s, shape, hw), trainable_bytes(s, shape)
    params = 0 if s.full else trainable  # a full fine-tune's trainable parameters are the weights
    static = [base.mapped, base.quantised, base.stored, params, trainable, optimizer_state(s, shape)]
    return sum(x / GB for x in static) + moving(s, shape, hw).peak(s.gradient_checkpointing) / GB


def overhead_gb(s: Settings, shape: Shape, hw: Hardware, allocated: float) -> float:
    """What the device holds beyond the tensors: CUDA's context and allocator reserve; on CPU, the
    imports and data, and glibc's heap slack."""
    if hw.device == "cuda":
        return CUDA_CONTEXT_GB + CUDA_RESERVE * allocated
    return CPU_FRAMEWORK_GB + cpu_slack(s) * s.grad_layers * moving(s, shape, hw).layer / GB


def training_gb(s: Settings, shape: Shape, hw: Hardware) -> float:
    """The peak of training on the device."""
    allocated = allocated_gb(s, shape, hw)
    return allocated + overhead_gb(s, shape, hw, allocated)


@dataclass(frozen=True)
class Streaming:
    """What loading, merging and exporting hold at their peak, one tensor at a time, in bytes."""

    largest: int  # parameters of the largest tensor (an adapted linear layer or the embeddings)
    checkpoint_bytes: int  # per weight of the checkpoint on disk
    adapter: int  # the adapter, fp32
    merged: int  # merge.Workspace: a block of rows (MERGE_BLOCK_BYTES) in the base dtype and in fp32
    write: int  # export's writer: + a block's permuted copy (q/k) and its f16 copy
    quantize: int  # llama.cpp's quantizer: the largest tensor in fp32 + its output (0: no quantisation)

    def loading_gb(self) -> float:
        """CUDA's host RAM while loading; the checkpoint's page cache is reclaimable."""
        return HOST_FRAMEWORK_GB + self.largest * self.checkpoint_bytes / GB

    def merging_gb(self) -> float:
        return TOOLS_FRAMEWORK_GB + (self.adapter + self.merged) / GB

    def exporting_gb(self) -> float:
        return TOOLS_FRAMEWORK_GB + (self.adapter + max(self.write, self.quantize)) / GB


def streaming(s: Settings, shape: Shape, quantizes: bool) -> Streaming:
    b = shape.dtype_bytes
    adapted = max(a * k for a, k in shape.linears().values())
    big = max(adapted, shape.embed_params)
    block = min(big, MERGE_BLOCK_BYTES // b)  # the weights of one block of rows
    merged = block * (b + 4)
    write = merged + block * (b + 2)
    adapter = 0 if s.full else trainable_bytes(s, shape)  # a full fine-tune exports model/ alone
    return Streaming(big, b, adapter, merged, write, big * (4 + 2) if quantizes else 0)


def verifying_gb(shape: Shape, ram_gb: float) -> tuple[float, bool]:
    """verify.reference_model's peak RAM, and whether it holds the fp32 reference in RAM (else it
    reads it from disk a layer at a time)."""
    fp32 = shape.params * 4
    if reference_in_ram(fp32, ram_gb * GB):
        return TOOLS_FRAMEWORK_GB + fp32 * REFERENCE_HEADROOM / GB, True
    tokens = REFERENCE_BATCH_TOKENS  # a batch's hidden states, attention and MLP activations, in fp32
    activations = tokens * (shape.hidden * 6 + shape.intermediate * 3) * 4
    logits = REFERENCE_LOGIT_ROWS * shape.vocab * 4
    return TOOLS_FRAMEWORK_GB + (shape.embed_params * 4 + logits + activations) / GB, False
