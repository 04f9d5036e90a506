"""The export stage: GGUF files of a model (f16 or another outtype, q8_0, K-quants), each verified.

    tutorforge export outputs/python-tutor-smollm2     (merged/ if present, else base + adapter/;
                                                        a full fine-tune's model/ as it is)

f32, f16, bf16 and q8_0 are written in one streaming pass from base + adapter, or from a merged
checkpoint: by gguf_write for the Llama and Qwen2 families with a BPE tokenizer, by llama.cpp's own
converter for every other architecture and for SentencePiece tokenizers (llamacpp_tools.py and
convert_driver.py; see write_plain); K-quants (q4_k_m, ...)
by llama.cpp's quantizer from the f16 file (quantize.py).
Every file is checked by llama.cpp against the PyTorch model (verify.py) on the run's held-out rows
and the shipped lessons (package data, read with importlib.resources), and recorded in export.json.
"""
from __future__ import annotations

import gzip
import json
import logging
from importlib import resources
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write
from tutorforge.gguf_write import ARCHS, PLAIN_TYPES, Source, write_gguf
from tutorforge.quantize import K_QUANTS, quantize
from tutorforge.rundir import RunDir
from tutorforge.rundir import gguf_file as gguf_path

log = logging.getLogger(__name__)

LESSONS = "lessons.jsonl.gz"  # the shipped lessons: data/python_tutor.jsonl, gzip -9n (package data)


def default_verify_rows() -> list:
    """Rows of the shipped Python-tutor lessons, as verification text when a run has no held-out
    split: package data, so an installed tutorforge verifies as a checkout does."""
    from tutorforge.data import Row

    lessons = resources.files("tutorforge").joinpath(LESSONS)
    try:
        lines = gzip.decompress(lessons.read_bytes()).decode().splitlines()
    except FileNotFoundError:
        raise UserError(f"{lessons}: missing from the installed tutorforge; reinstall it (the lessons that "
                        "verify an export ship inside the package)") from None
    return [Row(r["instruction"], r["input"], r["output"], f"{LESSONS}:{i}", line)
            for i, (line, r) in enumerate(((line, json.loads(line)) for line in lines), start=1)]


def export_model(source: Source, out_dir: Path, *, name: str, outtype: str = "f16",
                 quantizations: tuple[str, ...] = ("q4_k_m",), verify_rows: list | None = None,
                 system: str | None = None, progress=None) -> dict:
    """Write the GGUF files (f16 or the asked outtype, q8_0 if asked, then K-quants from the f16),
    verify each with llama.cpp when rows are given, and record it all in export.json. A file is
    reused only when it was made from this same model (outputs.model_identity); files made from
    another model, and the Modelfile that pointed at them, are deleted first."""
    from tutorforge import outputs
    from tutorforge.heap import bound_heap

    claimed = outputs.claim(out_dir, "gguf", protect=[source.model_dir, source.adapter])
    inputs = {"model": outputs.model_identity(source.model_dir, source.adapter), "name": name}
    claimed.begin("export", inputs, invalidates=("package",))
    bound_heap()  # each freed tensor goes back to the OS: RAM is what exporting is short of
    files: dict[str, Path] = {}
    direct = [outtype] + [q for q in quantizations if q in PLAIN_TYPES and q != outtype]
    if any(q in K_QUANTS for q in quantizations) and "f16" not in direct:
        direct.insert(0, "f16")  # the quantizer's input
    tied = bool(json.loads((source.model_dir / "config.json").read_text()).get("tie_word_embeddings"))
    for kind in [*direct, *(q for q in quantizations if q in K_QUANTS)]:
        path = gguf_path(out_dir, name, kind)
        if claimed.reusable("export", inputs, path.name):
            log.info("export: %s was made from this same model; kept", path.name)
        elif kind in PLAIN_TYPES:
            write_plain(source, path, kind, name=name, progress=progress)
        else:
            quantize(files["f16"], path, kind, tied_embeddings=tied)
        files[kind] = path
        claimed.add("export", path)
    report = {"files": {k: str(v) for k, v in files.items()},
              "sizes_mib": {k: round(v.stat().st_size / 2**20, 1) for k, v in files.items()}}
    if verify_rows:
        report.update(_verification(source, files, out_dir, verify_rows, system))
    with atomic_write(out_dir / "export.json") as fh:
        json.dump(report, fh, indent=1)
    claimed.add("export", out_dir / "export.json")
    claimed.finish("export", verified=bool(verify_rows), failures=report.get("failures", []))
    return report


def sentencepiece_model(source: Source) -> Path | None:
    """The SentencePiece model (tokenizer.model) of the tokenizer a source was trained with, or None
    (none there, or a tokenizer.model that is not SentencePiece's, as Llama 3's tiktoken file is)."""
    from tutorforge.tokenizer import tokenizer_dir

    path = tokenizer_dir(source.model_dir, source.adapter) / "tokenizer.model"
    if not path.is_file():
        return None
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor().LoadFromFile(str(path))  # what llama.cpp's converter calls
    except (OSError, RuntimeError):
        return None
    return path


def write_plain(source: Source, path: Path, kind: str, *, name: str, progress=None) -> Path:
    """One unquantised (or q8_0) GGUF: tutorforge's own streaming writer for the architectures it
    writes (gguf_write.ARCHS: base + adapter in one pass), else llama.cpp's converter
    (llamacpp_tools) with the adapter merged as the converter reads each tensor (convert_driver:
    one pass too, no merged copy on disk). Both write atomically and in bounded RAM.

    Why two writers: llama.cpp's converter knows every architecture llama.cpp runs, and is the
    reference its GGUFs are checked against; tutorforge's writer, which came first, covers the Llama
    and Qwen2 families in process, with its own progress (bit-identical to the converter on the
    bundled model, tests/test_llamacpp_tools.py).
    A SentencePiece tokenizer (a tokenizer.model beside the run's tokenizer: Llama 2, Mistral v0.1,
    Gemma, Phi-3) goes to the converter whatever the architecture: tutorforge's vocabulary writer
    writes BPE vocabularies only (gguf_vocab), and the converter writes llama.cpp's "llama"
    tokenizer from tokenizer.model itself (pieces, scores, token types), which llama.cpp then
    tokenizes as SentencePiece does; re-implementing that reader would only copy it."""
    from tutorforge.support import architecture

    if architecture(source.model_dir) in ARCHS and not sentencepiece_model(source):
        return write_gguf(source, path, kind, name=name, progress=progress)
    from tutorforge.llamacpp_tools import convert_checkpoint

    return convert_checkpoint(source.model_dir, path, outtype=kind, adapter=source.adapter)


def _verification(source: Source, files: dict[str, Path], out_dir: Path, rows: list, system: str | None) -> dict:
    """Every file checked by llama.cpp against the PyTorch model: the report's verification,
    failures and warnings (each file's numbers logged)."""
    from tutorforge import verify
    from tutorforge.tokenizer import run_tokenizer

    tokenizer = run_tokenizer(source.model_dir, source.adapter, trust_remote_code=source.trust_remote_code)
    lessons = tuple(t for r in default_verify_rows() for t in (r.instruction, r.input, r.output))
    texts, sequences = verify.probe_texts(tokenizer, rows, system, extra_texts=lessons)
    with verify.reference_model(source.model_dir, source.adapter, scratch=out_dir / ".reference") as model:
        reference = verify.reference_predictions(model, sequences)
    results = {k: verify.verify_gguf(p, tokenizer, texts, sequences,
                                     reference if k in verify.THRESHOLDS else None) for k, p in files.items()}
    for result in results.values():
        log.info("verify: %s", result.line())
    report = {"verification": {k: vars(v) for k, v in results.items()}, "failures": verify.failures(results),
              "warnings": verify.quality_warnings(results)}
    for note in report["warnings"]:
        log.warning("verify: %s", note)
    return report


def check_verification(report: dict, out_dir: Path) -> None:
    """A failed verification stops here, once for `export` and `run` alike (export_model has logged
    every file's numbers and warnings)."""
    if report.get("failures"):
        raise UserError(f"{out_dir}: export verification failed:\n  " + "\n  ".join(report["failures"]) +
                        "\nthese files do not behave like the PyTorch model: do not deploy them (numbers in "
                        f"{out_dir / 'export.json'}); a tokenizer or architecture llama.cpp does not know is "
                        "the usual cause")


def verify_rows(rows: list | None, minimum: int = 40) -> list:
    """Rows to verify an export with: the given (held-out) rows, topped up with the shipped lessons
    to at least `minimum` rows (~2,000 teacher-forced positions)."""
    rows = list(rows or [])
    return rows + default_verify_rows()[: max(0, minimum - len(rows))]


def run_source(run: RunDir, adapter: Path | None = None) -> Source:
    """What a training output_dir's export reads: a full fine-tune's model/ (no merge: it is the
    whole model, and the reference verification compares with); else its merged/ checkpoint when
    that was merged from the run's current base and adapter, else base + adapter/ in one streaming
    pass (a merged/ left from an earlier training is stale and is not used)."""
    from tutorforge import outputs
    from tutorforge.models import resolve_base_model

    trust = run.cfg.trust_remote_code
    if run.full and adapter is None:
        if not (run.model / "config.json").is_file():
            raise UserError(f"{run.model}: no trained model here; run `tutorforge train` first")
        return Source(run.model, trust_remote_code=trust)
    base = resolve_base_model(run.cfg.base_model).path
    adapter = adapter or run.adapter
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no trained adapter here; run `tutorforge train` first")
    if run.merged.is_dir():
        if outputs.model_identity(run.merged) == outputs.model_identity(base, adapter):
            return Source(run.merged, trust_remote_code=trust)
        log.info("export: %s was merged from another adapter, tokenizer or base (stale); exporting from the "
                 "base and %s in one pass", run.merged, adapter)
    return Source(base, adapter, trust_remote_code=trust)


def export_run(run_dir: Path, *, adapter: Path | None = None, out: Path | None = None, outtype: str | None = None,
               quantizations: tuple[str, ...] | None = None, verify: bool = True, progress=None) -> dict:
    """Export a training output_dir (see run_source); settings from its config unless given;
    verified on its held-out rows."""
    from tutorforge.data import load_files

    run = RunDir.open(run_dir, "give --base (and --adapter) with --out")
    settings = run.cfg.tutorforge.export
    rows = verify_rows(load_files([run.heldout]).rows if run.heldout.is_file() else None) if verify else None
    return export_model(run_source(run, adapter), out or run.gguf_dir, name=run.gguf_name,
                        outtype=outtype or settings.outtype, quantizations=quantizations or settings.quantizations,
                        verify_rows=rows, system=run.cfg.default_system_message, progress=progress)
