"""K-quants (q4_k_m, q5_k_m, q6_k, ...) of an f16 GGUF by llama.cpp's own quantizer.

    quantize(Path("gguf/model.F16.gguf"), Path("gguf/model.Q4_K_M.gguf"), "q4_k_m")

Through llama-cpp-python (`llama_model_quantize`), its log captured into NAME.log beside the output
instead of stderr, and its per-tensor fallback warnings (a width that is not a multiple of the
K-quant block) summed up in one log line. The output appears under its final name only when
complete; a failure leaves no file.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write, disk_full
from tutorforge.merge import check_free_space

log = logging.getLogger(__name__)

K_QUANTS = {  # written by llama.cpp's quantizer from the f16 file (llama_model_quantize)
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}


def quantize(f16_path: Path, out: Path, kind: str, *, threads: int = 0, tied_embeddings: bool = False) -> Path:
    """A K-quant (q4_k_m, ...) of an f16 GGUF by llama.cpp's own quantizer (llama_model_quantize);
    the output appears under its final name only when complete, and a failure leaves no file."""
    import llama_cpp

    if kind not in K_QUANTS:
        raise UserError(f"quantize: {kind!r} is not one of {', '.join(K_QUANTS)}")
    check_free_space(out.parent, f16_path.stat().st_size // 2 + (64 << 20), f"the {kind} GGUF")
    tmp = out.with_name(f".{out.name}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[kind])
    params.nthread = threads
    if tied_embeddings:  # token_embd is also the output projection: keep it at 8 bits
        params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
    lines: list[str] = []
    try:
        with llama_log(lines):
            code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(),
                                                  params)  # pyright: ignore[reportArgumentType]  (ctypes passes the struct by reference)
        if code != 0:
            _disk_full_check(out.parent, f16_path.stat().st_size // 4, f"the {kind} GGUF {out.name}")
            raise UserError(f"{f16_path}: llama.cpp's quantizer failed (code {code}) making {kind}; its "
                            f"last words: {' | '.join(lines[-3:]).strip() or 'none'}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)  # llama_model_quantize leaves a partial file when it fails
        with atomic_write(out.with_suffix(".log")) as fh:  # the quantizer's own words, kept for reference
            fh.write("".join(lines))
    log.info("quantize: %s (%s, %.1f MiB)%s", out, kind, out.stat().st_size / 2**20, fallback_summary(lines))
    return out


def _disk_full_check(directory: Path, needed: int, what: str) -> None:
    """After a writer failed without saying why: a disk with less than `needed` bytes free is the cause."""
    import shutil

    if shutil.disk_usage(directory).free < needed:
        raise disk_full(directory, what)


FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by (\d+).*falling back to\s+(\w+)")


def fallback_summary(lines: list[str]) -> str:
    """One clause for the quantizer's per-tensor fallback warnings: how many tensors, to which types."""
    found = [m for m in map(FALLBACK.search, "".join(lines).splitlines()) if m]  # pieces joined into lines
    if not found:
        return ""
    widths = sorted({m.group(2) for m in found})
    kinds = Counter(m.group(4) for m in found)
    return (f"; {len(found)} tensors kept a simpler type (width {', '.join(widths)} is not a multiple of "
            f"{found[0].group(3)}): " + ", ".join(f"{n} x {k}" for k, n in kinds.most_common()))


@contextmanager
def llama_log(into: list[str]):
    """llama.cpp's log lines go to `into` (and this module's debug log) instead of stderr."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data) -> None:
        line = text.decode("utf-8", "replace")
        into.append(line)
        log.debug("llama.cpp: %s", line.rstrip())

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield into
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
