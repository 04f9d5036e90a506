"""The Hugging Face tokenizer of a GGUF file, checked to split text exactly as llama.cpp does.

    tokenizer = load_gguf_tokenizer(Path("model.gguf"))
    bad = tokenizer_mismatches(tokenizer, Path("model.gguf"), PARITY_PROBES)   # [] when they agree

transformers' GGUF reader drops some pre-tokenizer rules (SmolLM's digit splitting), so
`PRE_TOKENIZERS` restores them; every conversion (models.gguf_to_checkpoint) is checked against
llama.cpp's own tokenizer before it is cached. `gguf_field` reads one metadata value of a GGUF
file (here tokenizer.ggml.pre; ollama reads general.license with it).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _smollm_pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


# GGUF `tokenizer.ggml.pre` -> the HF pre-tokenizer that splits as llama.cpp does.
# Only types verified against llama.cpp token for token are listed.
PRE_TOKENIZERS: dict[str, Callable[[], object]] = {
    "smollm": _smollm_pre_tokenizer,  # llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM: digits one by one
}


def gguf_field(gguf: Path, key: str) -> str | None:
    """The value of metadata key `key` in a GGUF file, or None when the file lacks it."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get(key)
    return None if field is None else field.contents()


def load_gguf_tokenizer(gguf: Path):
    """The HF tokenizer described by a GGUF file, with llama.cpp's pre-tokenizer restored."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    pre = gguf_field(gguf, "tokenizer.ggml.pre")
    if pre in PRE_TOKENIZERS:
        tokenizer.backend_tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
    else:
        log.warning("%s: tokenizer pre-type %r is not in tutorforge's verified table; "
                    "its tokenization is checked against llama.cpp below", gguf.name, pre)
    return tokenizer


PARITY_PROBES = [  # texts where HF and llama.cpp tokenizers have been seen to disagree
    "12345 67890 3.14159 x2 0xFF 1e-4",
    "def f(x):\n\treturn x  *  2\n\n\n",
    "héllo wörld 日本語 🤖 naïve café",
    "    four spaces, then\ttab\t\tand  two",
    "print('Hello, World!')  # Output: Hello, World!",
]


def compare_tokenization(llm, tokenizer, texts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    """(text, ours, llama.cpp's) for every text whose token ids differ between `tokenizer` and the
    loaded llama.cpp model `llm` (special tokens parsed on both sides, no BOS added)."""
    bad = []
    for text in texts:
        ours = tokenizer.encode(text, add_special_tokens=False)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if ours != theirs:
            bad.append((text, ours, theirs))
    return bad


def tokenizer_mismatches(tokenizer, gguf: Path, texts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    """Texts whose token ids differ between `tokenizer` and llama.cpp's tokenizer of `gguf`."""
    from tutorforge.llamacpp import open_llama

    llm = open_llama(gguf, n_ctx=512, gpu_layers=0, vocab_only=True)  # the vocabulary only: no weights load
    try:
        return compare_tokenization(llm, tokenizer, texts)
    finally:
        llm.close()
