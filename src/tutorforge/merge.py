"""Merge a LoRA adapter into its 16-bit base, tensor by tensor, in bounded RAM.

    tutorforge merge outputs/python-tutor-smollm2            (a training output_dir)
    tutorforge merge --base DIR --adapter DIR --out DIR

Each base tensor is read from the safetensors shards a block of rows at a time with a positioned
read (no mmap, so the page cache is not counted against us), merged as W + scale * B @ A in fp32,
checked for non-finite values, cast back to the base dtype and streamed into the output shard, all
in two buffers reused for every block (see Workspace). LoRA on Linear layers and on the token
embeddings (PEFT's lora.Embedding, whose update is (B @ A).T) is merged; the safetensors I/O is
safetensors_io's. Peak RSS is a block of rows (BLOCK_BYTES) in the base dtype and in fp32, plus
the adapter and a fixed overhead, whatever the model's size or its largest tensor. A QLoRA adapter
is merged onto the original 16-bit weights it was trained against, never into a 4-bit model. The
output (sharded
safetensors with index, config, and the run's tokenizer and chat template: the adapter's when
training saved one there, else the base's) is written under a temporary name and
renamed when complete.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tutorforge.errors import UserError
from tutorforge.fsutil import disk_full_says_so
from tutorforge.safetensors_io import DTYPES, ShardWriter, TensorRef, pread_into, read_tensor, tensor_refs

log = logging.getLogger(__name__)

WEIGHT_FILES = re.compile(r".*\.(safetensors|bin|pt|pth|gguf)$|.*\.safetensors\.index\.json$|^tutorforge\.json$")
# one tensor of a PEFT adapter file: a LoRA factor of a Linear (lora_A/lora_B.weight) or of an
# Embedding (lora_embedding_A/B, no .weight), after the peft/tuners/lora/layer.py parameter names
LORA_KEY = re.compile(r"(.*)\.lora_(embedding_)?([AB])(?:\.default)?(?:\.weight)?")
# a module PEFT saved whole: modules_to_save, or the base layer of an adapted Embedding (save_embedding_layers)
SAVED_WHOLE = re.compile(r"\.modules_to_save\.default(?=\.)|\.base_layer(?=\.)")


@dataclass(frozen=True)
class LoraPair:
    a: torch.Tensor
    b: torch.Tensor
    scale: float
    transposed: bool  # the update is (B @ A).T: a fan_in_fan_out (Conv1D) layer, or an Embedding
    embedding: bool = False  # PEFT's lora.Embedding: A is (r, vocab), B is (dim, r)


def read_adapter(adapter_dir: Path) -> tuple[dict[str, LoraPair], dict[str, torch.Tensor]]:
    """LoRA pairs by base tensor name, and full replacements (modules_to_save, an adapted Embedding's
    saved base layer) by tensor name."""
    config = adapter_config(adapter_dir)
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise UserError(f"{adapter_dir}: only plain LoRA adapters can be merged (this is "
                        f"{'DoRA' if config.get('use_dora') else config.get('peft_type')})")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError(f"{adapter_dir}: per-module rank or alpha patterns are not supported by merge")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    embeddings: set[str] = set()
    full: dict[str, torch.Tensor] = {}
    for ref in tensor_refs(adapter_dir):
        name = ref.name.removeprefix("base_model.model.")
        if match := LORA_KEY.fullmatch(name):
            target = match.group(1) + ".weight"
            pairs.setdefault(target, {})[match.group(3)] = read_tensor(ref)
            if match.group(2):
                embeddings.add(target)
        else:
            full[SAVED_WHOLE.sub("", name)] = read_tensor(ref)
    lora = {}
    for target, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise UserError(f"{adapter_dir}: {target} has lora_{'A' if 'A' not in ab else 'B'} missing")
        embedding = target in embeddings  # peft lora.Embedding.get_delta_weight: (B @ A).T * scaling
        lora[target] = LoraPair(ab["A"], ab["B"], scale, embedding or bool(config.get("fan_in_fan_out")),
                                embedding)
    return lora, full


def adapter_config(adapter_dir: Path) -> dict:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; point --adapter at a PEFT adapter directory")
    return json.loads(config_path.read_text())


def adapter_updates(base_dir: Path, refs: list[TensorRef], adapter_dir: Path
                    ) -> tuple[dict[str, LoraPair], dict[str, torch.Tensor]]:
    """read_adapter's updates, checked against the base they go into: each names a tensor the base has,
    and a LoRA on embeddings that the output projection is tied to is merged only when PEFT trained the
    two tied (ensure_weight_tying; its lm_head copy is then the same update and is dropped)."""
    lora, full = read_adapter(adapter_dir)
    base_config = base_dir / "config.json"
    tied = base_config.is_file() and bool(json.loads(base_config.read_text()).get("tie_word_embeddings"))
    names = {r.name for r in refs}
    if tied and "lm_head.weight" not in names and any(p.embedding for p in lora.values()):
        if not adapter_config(adapter_dir).get("ensure_weight_tying"):
            raise UserError(f"{adapter_dir}: a LoRA on the input embeddings of {base_dir}, whose output "
                            "projection (lm_head) is tied to them, trained without PEFT's ensure_weight_tying: "
                            "the trained model used the update on input only, and one merged tensor cannot do "
                            "that; train again with ensure_weight_tying=True, or without embed_tokens in "
                            "target_modules")
        lora.pop("lm_head.weight", None)  # PEFT's tied copy: lora_A = B_emb.T, lora_B = A_emb.T, the same update
        full.pop("lm_head.weight", None)
    if missing := sorted(set(lora) - names) + sorted(set(full) - names):
        raise UserError(f"{adapter_dir}: adapts {missing[0]}, which {base_dir} does not have; merge the "
                        "adapter into the base model it was trained on")
    return lora, full


BLOCK_BYTES = 32 << 20  # the rows of a tensor read, merged and written at a time


def block_rows(ref: TensorRef, align: int = 1, block_bytes: int | None = None) -> int:
    """How many of `ref`'s rows make one block: about `block_bytes` (BLOCK_BYTES) of them, a
    multiple of `align` (export permutes q/k rows head by head), at least one `align`."""
    rows = ref.shape[0] if ref.shape else 1
    row_bytes = max(1, (ref.end - ref.start) // max(rows, 1))
    per_block = max(align, (block_bytes or BLOCK_BYTES) // row_bytes // align * align)
    return min(rows, per_block)


class Buffers:
    """Reused buffers, one per dtype, grown when a larger one is asked for: a fresh tensor per block
    would be fresh pages from the OS each time (bound_heap maps every block above 1 MiB on its own),
    and faulting them in costs more than the arithmetic done in them."""

    def __init__(self) -> None:
        self.held: dict[torch.dtype, torch.Tensor] = {}

    def get(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A buffer of `shape`, valid until the next call for the same dtype."""
        n = math.prod(shape)
        held = self.held.get(dtype)
        if held is None or n > held.numel():
            self.held.pop(dtype, None)  # the old buffer goes before the new one comes
            del held
            self.held[dtype] = torch.empty(n, dtype=dtype)
        return self.held[dtype][:n].view(shape)


class Workspace:
    """The two buffers a merge reuses for every block of rows of every tensor: the bytes read, and
    an fp32 matrix for W + scale * B @ A. Each is one block (BLOCK_BYTES of the base's rows) or the
    largest tensor if smaller, so peak RAM is the same whatever the size of the model or of its
    largest tensor (embeddings and lm_head of a 128k vocabulary are 1 GB each in bf16), and nothing
    is left for the heap to pile up."""

    def __init__(self) -> None:
        self.buffers = Buffers()

    def read(self, ref: TensorRef, rows: slice | None = None) -> torch.Tensor:
        """`ref`'s tensor, or its `rows`, read into the workspace: valid until the next read."""
        dtype = DTYPES[ref.dtype]
        if rows is None or not ref.shape:
            start, n, shape = 0, ref.end - ref.start, ref.shape
        else:
            row_bytes = (ref.end - ref.start) // ref.shape[0]
            start, n = rows.start * row_bytes, (rows.stop - rows.start) * row_bytes
            shape = (rows.stop - rows.start, *ref.shape[1:])
        raw = self.buffers.get(torch.uint8, (n,))
        pread_into(ref, raw.numpy().data, start)  # ndarray.data: a memoryview of its buffer
        return raw.view(dtype).reshape(shape)

    def blocks(self, ref: TensorRef, pair: LoraPair | None, replacement: torch.Tensor | None,
               align: int = 1) -> Iterator[torch.Tensor]:
        """`ref`'s tensor merged (merged_into), as consecutive blocks of rows (block_rows), each in
        the workspace and valid until the next is asked for."""
        if replacement is not None:
            _check_shape(ref.name, replacement.shape, ref.shape)
        if pair is not None:
            _check_shape(ref.name, update_shape(pair), ref.shape)
        if not ref.shape or not ref.shape[0]:
            yield self.read(ref)
            return
        step = block_rows(ref, align)
        for start in range(0, ref.shape[0], step):
            rows = slice(start, min(start + step, ref.shape[0]))
            base = self.read(ref, rows)
            if pair is None and replacement is None:
                yield base
                continue
            work = self.buffers.get(torch.float32, tuple(base.shape))
            yield merged_into(ref.name, base, pair, replacement, work, rows)


def update_shape(pair: LoraPair) -> tuple[int, int]:
    """The shape of the base tensor `pair` updates: B @ A's, or (B @ A).T's."""
    rows, cols = pair.b.shape[0], pair.a.shape[1]
    return (cols, rows) if pair.transposed else (rows, cols)


def merged_into(name: str, base: torch.Tensor, pair: LoraPair | None, replacement: torch.Tensor | None,
                work: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """`base` (a writable tensor: the whole tensor, or its `rows`) overwritten with W + scale * B @ A,
    computed in fp32 in `work` (an fp32 tensor of base's shape) and cast back to W's dtype, where W
    is the base tensor or its replacement (a module trained or saved in full) in W's dtype.
    Non-finite values are an error. The one merge arithmetic, for merge's shards and export's
    writer (row by row block) and for llama.cpp's converter (convert_driver: whole tensors)."""
    rows = rows or slice(None)
    if replacement is not None:
        _check_shape(name, replacement[rows].shape, base.shape)
        base.copy_(replacement[rows])
    if pair is not None:
        a, b = pair.a.float(), pair.b.float()
        if pair.transposed:  # (B @ A).T = A.T @ B.T
            a, b = b.T, a.T
        b = b[rows]  # the update's rows: those of B
        _check_shape(name, (b.shape[0], a.shape[1]), base.shape)
        work.copy_(base)  # converted in place: no temporary fp32 copy of W
        work.addmm_(b, a, alpha=pair.scale)
        base.copy_(work)
    _check_finite(name, base)
    return base


def _check_shape(name: str, update: tuple[int, ...], base: tuple[int, ...]) -> None:
    if tuple(update) != tuple(base):
        raise UserError(f"{name}: the adapter's update has shape {tuple(update)} but the base tensor "
                        f"{tuple(base)}; the adapter was trained on another base model")


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and tensor.numel():
        low, high = torch.aminmax(tensor)  # NaN propagates to both
        if not (math.isfinite(low.item()) and math.isfinite(high.item())):
            raise UserError(f"{name}: the merged tensor holds NaN or inf; the adapter is broken (check its "
                            "training loss) or too large for the base dtype")


def _shards(refs: list[TensorRef], shard_bytes: int) -> Iterator[list[TensorRef]]:
    shard, size = [], 0
    for ref in refs:
        n = ref.end - ref.start
        if shard and size + n > shard_bytes:
            yield shard
            shard, size = [], 0
        shard.append(ref)
        size += n
    if shard:
        yield shard


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """Refuse before writing when the disk holding `directory` has less than `needed` bytes free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise UserError(f"{directory}: {what} needs {needed / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB "
                        "are free on that disk; free some space or choose another output directory")


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path, *, shard_bytes: int = 2 << 30,
          progress: Callable[[int, int], None] | None = None) -> Path:
    """Write base + adapter as a merged checkpoint in `out_dir`: skipped when it already holds this
    very merge, rebuilt when it holds a merge of other inputs; refused when it holds anything else
    (see outputs.claim) or is the base or adapter directory."""
    from tutorforge import outputs
    from tutorforge.heap import bound_heap

    claimed = outputs.claim(out_dir, "merged", protect=[base_dir, adapter_dir], create=False)
    inputs = {"model": outputs.model_identity(base_dir, adapter_dir)}
    if claimed.reusable("merge", inputs):
        log.info("merge: %s is complete for this base and adapter; skipped", out_dir)
        return out_dir
    bound_heap()  # each freed tensor goes back to the OS: RAM is what merging is short of
    refs = tensor_refs(base_dir)
    lora, full = adapter_updates(base_dir, refs, adapter_dir)
    check_free_space(out_dir.parent, sum(r.end - r.start for r in refs) + (64 << 20), "the merged model")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with disk_full_says_so(out_dir.parent, "the merged model"):
            _write_shards(tmp, refs, lora, full, shard_bytes, progress)
            copy_files(base_dir, adapter_dir, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a merge starts over: a partial one only takes space
        raise
    record = outputs.OutputDir(tmp, "merged", {"kind": "merged", "stages": {}})
    record.begin("merge", inputs)
    record.add("merge", *(path for path in sorted(tmp.iterdir()) if path.name != outputs.RECORD))
    record.finish("merge", base=str(base_dir), adapter=str(adapter_dir), lora_tensors=len(lora),
                  replaced_tensors=len(full))
    outputs.replace_dir(tmp, out_dir)
    log.info("merge: %d LoRA updates and %d replaced tensors merged into %d tensors -> %s",
             len(lora), len(full), len(refs), out_dir)
    return out_dir


def copy_files(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """The base's files beside its weights (config, generation config, license, tokenizer and chat
    template), the tokenizer files taken from the adapter instead when training saved its tokenizer
    there (tokenizer.run_tokenizer: special_tokens, tokenizer_config)."""
    from tutorforge import outputs
    from tutorforge.tokenizer import SAVED_TOKENIZER_FILES, tokenizer_dir

    own_tokenizer = tokenizer_dir(base_dir, adapter_dir) != Path(base_dir)
    for path in base_dir.iterdir():
        if path.is_file() and not WEIGHT_FILES.fullmatch(path.name) and path.name != outputs.RECORD and not (
                own_tokenizer and path.name in SAVED_TOKENIZER_FILES):
            shutil.copy2(path, out / path.name)
    if own_tokenizer:
        for name in SAVED_TOKENIZER_FILES:
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, out / name)
        log.info("merge: the tokenizer training saved in %s (not the base's)", adapter_dir)


def _write_shards(directory: Path, refs: list[TensorRef], lora: dict[str, LoraPair],
                  full: dict[str, torch.Tensor], shard_bytes: int, progress) -> None:
    """The merged tensors as safetensors shards (with an index when there are several)."""
    shards = list(_shards(refs, shard_bytes))
    workspace = Workspace()
    weight_map, done = {}, 0
    for i, shard in enumerate(shards, start=1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        writer = ShardWriter(directory / name, [(r.name, r.dtype, r.shape) for r in shard])
        for ref in shard:
            writer.write_blocks(ref.name, workspace.blocks(ref, lora.get(ref.name), full.get(ref.name)))
            weight_map[ref.name] = name
            done += 1
            if progress:
                progress(done, len(refs))
        writer.close()
    if len(shards) > 1:
        total = sum(r.end - r.start for r in refs)
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
