"""Prove a GGUF export with llama.cpp itself: it loads, tokenizes like the PyTorch tokenizer, and
predicts the same next tokens.

    report = verify_gguf(gguf_path, model_dir, texts)   # -> tokenization, top-1 agreement, perplexity

Teacher-forced: llama.cpp and PyTorch see the same token ids; at every position each predicts the
next token, and we count how often their top-1 choices agree. Perplexity is llama.cpp's own, on the
same positions, so a quantised file can be compared with its f16 parent.
"""
from __future__ import annotations

import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the memory plan reads this module's constants without them
    import numpy as np

log = logging.getLogger(__name__)

REFERENCE_HEADROOM = 1.2  # the fp32 reference in RAM: its weights, plus activations and allocator slack
REFERENCE_BATCH_TOKENS = 4096  # tokens per forward pass of the reference (reference_predictions)
REFERENCE_LOGIT_ROWS = 512  # positions per run of the output projection (reference_predictions)


@dataclass(frozen=True)
class Verification:
    path: str
    texts_tokenized: int
    tokenization_mismatches: int
    positions: int
    top1_agreement: float | None  # None: no PyTorch reference
    perplexity: float

    def line(self) -> str:
        agree = f"top-1 agreement {self.top1_agreement:.2%} " if self.top1_agreement is not None else ""
        identical = self.texts_tokenized - self.tokenization_mismatches
        return (f"{Path(self.path).name}: loads in llama.cpp; tokenization {identical}"
                f"/{self.texts_tokenized} texts identical; {agree}over {self.positions} positions: "
                f"perplexity {self.perplexity:.3f}")


def _llama(path: Path, n_ctx: int):
    from tutorforge.llamacpp import open_llama

    # threads and GPU layers: llamacpp's defaults (TUTORFORGE_THREADS, TUTORFORGE_GPU_LAYERS)
    return open_llama(path, n_ctx=n_ctx, logits_all=True)


def tokenization_mismatches(llm, tokenizer, texts: list[str]) -> int:
    """How many texts the loaded llama.cpp model tokenizes differently from `tokenizer`."""
    from tutorforge.gguf_tokenizer import compare_tokenization

    return len(compare_tokenization(llm, tokenizer, texts))


def fp32_bytes(model_dir: Path) -> int:
    """What a checkpoint's weights take in fp32."""
    from tutorforge.safetensors_io import tensor_refs

    return sum(math.prod(r.shape) for r in tensor_refs(model_dir)) * 4


def reference_in_ram(fp32_bytes: float, ram_bytes: float) -> bool:
    """Whether the fp32 reference model is held in RAM; else it is read from disk a layer at a time."""
    return fp32_bytes * REFERENCE_HEADROOM + 2**30 <= ram_bytes


def available_ram() -> int:
    """Bytes of RAM available now (MemAvailable: free memory plus reclaimable page cache)."""
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))


@contextmanager
def reference_model(model_dir: Path, adapter: Path | None, *, scratch: Path, ram_bytes: int | None = None):
    """The PyTorch model the exports must agree with: the merged weights in fp32. When that does not
    fit in RAM, no weight stays in memory: each layer is read from the checkpoint's safetensors in
    turn as the forward pass reaches it (accelerate's disk offload), so the peak is one layer (or the
    embeddings) in fp32 plus activations; an adapter is then merged first, into `scratch`."""
    import torch
    from transformers import AutoModelForCausalLM

    from tutorforge.heap import bound_heap

    bound_heap()  # freed layers go back to the OS (bench/heap.py: a third of the peak of glibc's default)
    fp32, ram = fp32_bytes(model_dir), available_ram() if ram_bytes is None else ram_bytes
    if reference_in_ram(fp32, ram):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        yield model.eval()
        return
    from tutorforge.merge import merge

    log.info("verify: the PyTorch reference is read from disk a layer at a time (in fp32 it takes %.1f GB, "
             "%.1f GB of RAM are available)", fp32 / 2**30, ram / 2**30)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        if adapter:
            model_dir = merge(model_dir, adapter, scratch / "merged")
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, device_map="auto", max_memory={"cpu": 0},
            offload_folder=str(scratch / "offload"))  # unused: a safetensors checkpoint is read in place
        yield model.eval()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def reference_predictions(model, sequences: list[list[int]], *, batch_tokens: int = REFERENCE_BATCH_TOKENS,
                          logit_rows: int = REFERENCE_LOGIT_ROWS) -> list[np.ndarray]:
    """PyTorch's top-1 next token at every position of every sequence. Sequences go through in
    batches of about `batch_tokens` (padded on the right: a causal model's real positions do not see
    the padding), so an offloaded model reads its weights once per batch; the output projection
    runs `logit_rows` positions at a time, so the vocabulary-wide logits never exist all at once."""
    import torch

    decoder, head = model.get_decoder(), model.get_output_embeddings()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: dict[int, np.ndarray] = {}  # sequence index -> its top-1 ids, longest sequences first
    with torch.inference_mode():
        while order:
            width, batch = len(sequences[order[-1]]), []
            while order and (len(batch) + 1) * width <= max(batch_tokens, width):
                batch.append(order.pop())
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, :len(sequences[i])] = 1
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
            top = torch.cat([head(hidden[j:j + logit_rows]).argmax(-1) for j in range(0, len(hidden), logit_rows)])
            for row, i in enumerate(batch):
                start = int(mask[:row].sum())
                out[i] = top[start:start + len(sequences[i])].numpy()
    return [out[i] for i in range(len(sequences))]


def verify_gguf(path: Path, tokenizer, texts: list[str], sequences: list[list[int]],
                reference: list[np.ndarray] | None) -> Verification:
    """Load `path` in llama.cpp; compare tokenization on `texts` and predictions on `sequences`."""
    import numpy as np

    n_ctx = max(len(s) for s in sequences) + 8
    llm = _llama(path, n_ctx)
    try:
        bad = tokenization_mismatches(llm, tokenizer, texts)
        agree = positions = 0
        nll = 0.0
        for i, ids in enumerate(sequences):
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
            top = logits.argmax(-1)
            if reference is not None:
                agree += int((top == reference[i]).sum())
            shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
            positions += len(ids)
        ppl = math.exp(nll / sum(len(s) - 1 for s in sequences))
    finally:
        llm.close()
    return Verification(str(path), len(texts), bad, positions,
                        agree / positions if reference is not None else None, ppl)


THRESHOLDS = {"f16": 0.99, "bf16": 0.99, "f32": 0.99, "q8_0": 0.97}  # top-1 agreement with PyTorch
PPL_TOLERANCE = 0.05  # a K-quant's perplexity may exceed its f16 parent's by at most 5%


def failures(results: dict[str, Verification]) -> list[str]:
    """What makes an export wrong: tokenization must be identical, and an unquantised or q8_0 file
    must predict like the PyTorch model (top-1 agreement above)."""
    bad = []
    for kind, v in results.items():
        if v.tokenization_mismatches:
            bad.append(f"{kind}: {v.tokenization_mismatches} of {v.texts_tokenized} texts tokenize differently")
        if kind in THRESHOLDS and v.top1_agreement is not None and v.top1_agreement < THRESHOLDS[kind]:
            bad.append(f"{kind}: top-1 agreement {v.top1_agreement:.2%} < {THRESHOLDS[kind]:.0%}")
    return bad


def quality_warnings(results: dict[str, Verification]) -> list[str]:
    """What llama.cpp's own K-quant loses beyond the 5% bar: the file is correct (llama.cpp made it
    and runs it) but answers worse; the fix is a larger quantisation."""
    base = results.get("f16") or results.get("bf16")
    notes = []
    for kind, v in results.items():
        if kind not in THRESHOLDS and base and v.perplexity > base.perplexity * (1 + PPL_TOLERANCE):
            notes.append(f"{kind}: perplexity {v.perplexity:.3f} is {v.perplexity / base.perplexity - 1:.1%} above "
                         f"f16's {base.perplexity:.3f} (bar {PPL_TOLERANCE:.0%}); small or narrow models lose more "
                         "to 4-bit: try q5_k_m, q6_k or q8_0 (tutorforge.export.quantizations)")
    return notes


def probe_texts(tokenizer, rows: list, system: str | None, limit_tokens: int = 256, positions: int = 2500,
                extra_texts: tuple[str, ...] = ()) -> tuple[list[str], list[list[int]]]:
    """Texts for the tokenization check (fields, chat renderings, digits, unicode, whitespace, and
    `extra_texts`) and token sequences (prompt + answer) for the prediction check: rows in order
    until there are at least `positions` positions."""
    from tutorforge.formatting import encode_row, prompt_format

    fmt = prompt_format(tokenizer, None, system)
    texts = [t for r in rows for t in (r.instruction, r.input, r.output) if t] + [t for t in extra_texts if t]
    texts += ["2024-11-28 12:34:56.789", "x = 10**18 + 7", "naïve café 日本語 🐍", "\ta\t\tb", "a     b",
              "  indented\n\n\nlines", "0x1F 1e-9 3.14159"]
    sequences: list[list[int]] = []
    for row in rows:
        if sum(len(s) for s in sequences) >= positions:
            break
        ids = encode_row(tokenizer, fmt, row).input_ids[:limit_tokens]
        sequences.append(ids)
        texts.append(tokenizer.decode(ids))
    return texts, sequences
