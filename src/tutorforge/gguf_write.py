"""Write a GGUF file (f32, f16, bf16, q8_0) from a checkpoint, merging a LoRA adapter on the fly.

    write_gguf(Source(Path("base"), Path("adapter")), Path("gguf/model.F16.gguf"), "f16", name="tutor")

Tensor by tensor with the `gguf` package (GGUFWriter, TensorNameMap, its numpy quantizers): every
tensor's GGUF name, type and shape is planned before any data is read (plan_tensors), then each is
read a block of rows at a time (merge.Workspace: merged with its LoRA update when an adapter is
given), converted and written before the next block is read, so that peak RAM does not depend on
the size of the largest tensor. Metadata keys are gguf-py's (GGUFWriter's add_* methods, gguf.Keys); the tokenizer is
gguf_vocab's. The file is written under a temporary name and renamed when complete; free disk space
is checked before writing. K-quants are quantize.py's.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import gguf
import numpy as np
import torch

from tutorforge.errors import UserError
from tutorforge.fsutil import disk_full_says_so
from tutorforge.gguf_vocab import add_tokenizer
from tutorforge.merge import Buffers, Workspace, adapter_updates, check_free_space
from tutorforge.quantize import K_QUANTS
from tutorforge.safetensors_io import TensorRef, tensor_refs

log = logging.getLogger(__name__)

ARCHS = {  # HF architecture -> (llama.cpp architecture, permute q/k for llama.cpp's rope layout)
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),  # Llama 2, Llama 3/3.x, SmolLM
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),  # llama.cpp runs Mistral as llama
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),  # NEOX rope: no permutation
}
PLAIN_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}  # written here
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
TOKEN_EMBD = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"  # gguf-py's tensor names
ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"


def permute_qk(weight: torch.Tensor, n_head: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """HF stores q/k rows for rotate-half rope; llama.cpp's llama wants pairs interleaved. Into `out`
    (of weight's shape, any dtype: the conversion happens in the same copy) when it is given."""
    pairs = weight.reshape(n_head, 2, -1, *weight.shape[1:]).swapaxes(1, 2)
    if out is None:
        return pairs.reshape(weight.shape)
    return out.view(pairs.shape).copy_(pairs).view(weight.shape)


def rope_scaling(config: dict) -> dict:
    """The rope scaling of a config.json: `rope_scaling` as model repositories have it, or
    `rope_parameters`, where transformers 5 saves it (with rope_theta)."""
    return config.get("rope_scaling") or config.get("rope_parameters") or {}


def llama3_rope_factors(config: dict) -> np.ndarray | None:
    """The `rope_freqs` tensor llama.cpp needs for Llama 3.1+ rope scaling (type llama3), else None."""
    scaling = rope_scaling(config)
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    base = config.get("rope_theta", scaling.get("rope_theta", 10000.0))
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    factor, low, high = scaling["factor"], scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling["original_max_position_embeddings"]
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


@dataclass(frozen=True)
class Source:
    """Where tensors come from: a checkpoint directory, optionally with a LoRA adapter merged in; the
    tokenizer is the run's (tokenizer.run_tokenizer: the adapter's when it holds one)."""

    model_dir: Path
    adapter: Path | None = None
    trust_remote_code: bool = False  # config key: for a tokenizer defined by the model's own code


def _to_ggml(tensor: torch.Tensor, kind: str, buffers: Buffers, heads: int | None = None) -> np.ndarray:
    """The bytes of one tensor (or block of rows) in GGML type `kind` (F32, F16, BF16 or Q8_0, decided
    by plan_tensors), its q/k rows permuted for `heads` heads in the same copy (permute_qk)."""
    if kind == "F32" and tensor.dtype == torch.float32 and heads is None:
        return tensor.numpy()
    dtype = {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind, torch.float32)
    out = buffers.get(dtype, tuple(tensor.shape))  # export's own, apart from the workspace's
    if heads:
        permute_qk(tensor, heads, out)
    else:
        out.copy_(tensor)
    if kind == "BF16":
        return out.view(torch.int16).numpy().view(np.uint16)
    if kind == "Q8_0":
        return gguf.quants.quantize(out.numpy(), gguf.GGMLQuantizationType.Q8_0)
    return out.numpy()


def add_metadata(writer: gguf.GGUFWriter, source: Source, config: dict, outtype: str, name: str) -> None:
    """Architecture hyperparameters (rope included), the run's tokenizer and chat template."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_key_length(head_dim)  # as llama.cpp's converter writes them (its TextModel.set_gguf_parameters)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    scaling = rope_scaling(config)
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
    add_tokenizer(writer, source.model_dir, config["vocab_size"], source.adapter,
                  trust_remote_code=source.trust_remote_code)


@dataclass(frozen=True)
class Planned:
    gguf_name: str
    ref: TensorRef
    heads: int | None  # permute q/k rows for this many heads
    ggml_type: str
    byte_shape: tuple[int, ...]
    np_dtype: type[np.generic]  # np.uint8 (quantized bytes), np.float32, np.float16, np.uint16 (BF16 bits)

    @property
    def nbytes(self) -> int:
        return math.prod(self.byte_shape) * np.dtype(self.np_dtype).itemsize


def _ggml_type(shape: tuple[int, ...], outtype: str) -> str:
    if len(shape) == 1 or outtype == "f32":
        return "F32"
    if outtype == "q8_0" and shape[-1] % 32:
        return "F16"  # Q8_0 packs rows in blocks of 32
    return PLAIN_TYPES[outtype]


def plan_tensors(model_dir: Path, config: dict, arch: gguf.MODEL_ARCH, permute: bool, outtype: str) -> list[Planned]:
    """Every tensor's GGUF name, type and on-disk shape, known before any data is read."""
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    plan = []
    for ref in tensor_refs(model_dir):
        if ref.name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(ref.name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"{model_dir}: tensor {ref.name} has no llama.cpp name for architecture "
                            f"{gguf.MODEL_ARCH_NAMES[arch]}")
        n_heads = None
        if permute and ref.name.endswith("q_proj.weight"):
            n_heads = heads
        elif permute and ref.name.endswith("k_proj.weight"):
            n_heads = kv
        kind = _ggml_type(ref.shape, outtype)
        if kind == "Q8_0" and new == TOKEN_EMBD and config.get("tie_word_embeddings"):
            kind = "F16"  # tied: it is also the output projection, where 8-bit error flips top-1 tokens
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        if kind == "Q8_0":
            shape, dtype = gguf.quants.quant_shape_to_byte_shape(ref.shape, qtype), np.uint8
        else:
            shape, dtype = ref.shape, {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[kind]
        plan.append(Planned(new, ref, n_heads, kind, tuple(shape), dtype))
    return plan


def _ggml_blocks(workspace: Workspace, buffers: Buffers, p: Planned, lora: dict, full: dict
                 ) -> Iterator[np.ndarray]:
    """`p`'s tensor in its GGML type, block of rows by block (merge.block_rows: whole heads for
    q/k, whose rows are permuted within each head): every type written here is row-wise."""
    head_rows = p.ref.shape[0] // p.heads if p.heads else 1
    for block in workspace.blocks(p.ref, lora.get(p.ref.name), full.get(p.ref.name), align=head_rows):
        yield _to_ggml(block, p.ggml_type, buffers, block.shape[0] // head_rows if p.heads else None)


class _Streamed:
    """One tensor's bytes for GGUFWriter.write_tensor_data, which asks an array for its nbytes and
    then writes it with tofile: here each block is made as the one before it has been written."""

    def __init__(self, blocks: Iterator[np.ndarray], nbytes: int):
        self.blocks, self.nbytes = blocks, nbytes

    def tofile(self, fout) -> None:
        written = 0
        for block in self.blocks:
            block.tofile(fout)
            written += block.nbytes
        if written != self.nbytes:
            raise RuntimeError(f"{written} bytes written for a tensor of {self.nbytes}")


def _as_array(blocks: Iterator[np.ndarray], nbytes: int) -> np.ndarray:
    return cast(np.ndarray, _Streamed(blocks, nbytes))


def write_gguf(source: Source, out: Path, outtype: str = "f16", *, name: str = "model",
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Stream `source` (merging its adapter on the fly) into a GGUF file at `out`, atomically."""
    if outtype not in PLAIN_TYPES:
        raise UserError(f"export: {outtype!r} is not written directly; use one of {', '.join(PLAIN_TYPES)} "
                        f"(K-quants come from quantize(): {', '.join(K_QUANTS)})")
    from tutorforge.heap import bound_heap

    bound_heap()  # each block freed goes back to the OS
    config = json.loads((source.model_dir / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in ARCHS:
        raise UserError(f"{source.model_dir}: architecture {architecture} is not supported by export; "
                        f"supported: {', '.join(ARCHS)}")
    arch, permute = ARCHS[architecture]
    plan = plan_tensors(source.model_dir, config, arch, permute, outtype)
    refs = [p.ref for p in plan]
    lora, full = adapter_updates(source.model_dir, refs, source.adapter) if source.adapter else ({}, {})
    rope_freqs = llama3_rope_factors(config) if arch == gguf.MODEL_ARCH.LLAMA else None
    check_free_space(out.parent, sum(p.nbytes for p in plan) + (64 << 20), f"the {outtype} GGUF")
    with disk_full_says_so(out.parent, f"the {outtype} GGUF {out.name}"):
        tmp = out.with_name(f".{out.name}.tmp")
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        try:
            add_metadata(writer, source, config, outtype, name)
            for p in plan:
                writer.add_tensor_info(p.gguf_name, p.byte_shape, np.dtype(p.np_dtype), p.nbytes,
                                       raw_dtype=getattr(gguf.GGMLQuantizationType, p.ggml_type))
            if rope_freqs is not None:
                writer.add_tensor_info(ROPE_FREQS, rope_freqs.shape, rope_freqs.dtype, rope_freqs.nbytes,
                                       raw_dtype=gguf.GGMLQuantizationType.F32)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            workspace, buffers = Workspace(), Buffers()
            for i, p in enumerate(plan, start=1):
                writer.write_tensor_data(_as_array(_ggml_blocks(workspace, buffers, p, lora, full), p.nbytes))
                if progress:
                    progress(i, len(plan))
            if rope_freqs is not None:
                writer.write_tensor_data(rope_freqs)
            writer.close()
            tmp.replace(out)
        except BaseException:
            with suppress(OSError):  # closing flushes, which fails again on a full disk
                if writer.fout:
                    writer.close()
            tmp.unlink(missing_ok=True)
            raise
    log.info("export: %s (%s, %.1f MiB)", out, outtype, out.stat().st_size / 2**20)
    return out
