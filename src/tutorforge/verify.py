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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    path: str
    texts_tokenized: int
    tokenization_mismatches: int
    positions: int
    top1_agreement: float | None  # None: no PyTorch reference
    perplexity: float

    def line(self) -> str:
        agree = f"top-1 agreement {self.top1_agreement:.2%}" if self.top1_agreement is not None else ""
        return (f"{Path(self.path).name}: loads in llama.cpp; tokenization {self.texts_tokenized - self.tokenization_mismatches}"
                f"/{self.texts_tokenized} texts identical; {agree} over {self.positions} positions; "
                f"perplexity {self.perplexity:.3f}")


def _llama(path: Path, n_ctx: int):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=1, verbose=False)


def tokenization_mismatches(llm, tokenizer, texts: list[str]) -> int:
    """How many texts the loaded llama.cpp model tokenizes differently from `tokenizer`."""
    from tutorforge.models import compare_tokenization

    return len(compare_tokenization(llm, tokenizer, texts))


def reference_predictions(model, sequences: list[list[int]]) -> list[np.ndarray]:
    """PyTorch's top-1 next token at every position of every sequence."""
    out = []
    with torch.inference_mode():
        for ids in sequences:
            out.append(model(torch.tensor([ids])).logits[0].argmax(-1).numpy())
    return out


def verify_gguf(path: Path, tokenizer, texts: list[str], sequences: list[list[int]],
                reference: list[np.ndarray] | None) -> Verification:
    """Load `path` in llama.cpp; compare tokenization on `texts` and predictions on `sequences`."""
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
