"""Write a GGUF file from a merged checkpoint, or straight from base + adapter in one streaming pass.

    tutorforge export outputs/python-tutor-smollm2     (merged/ if present, else base + adapter/)

f32, f16, bf16 and q8_0 are written by tutorforge with the `gguf` package (GGUFWriter, TensorNameMap,
its numpy quantizers), tensor by tensor: each tensor is read (and merged with its LoRA update when an
adapter is given), converted and written before the next is read. K-quants (q4_k_m, q5_k_m, q6_k,
...) come from llama.cpp's own quantizer through llama-cpp-python. Every file is written under a
temporary name and renamed when complete; free disk space is checked before writing.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tutorforge.errors import UserError
from tutorforge.fsutil import atomic_write, disk_full, disk_full_says_so
from tutorforge.merge import Workspace, check_free_space, read_adapter, tensor_refs

log = logging.getLogger(__name__)

ARCHS = {  # HF architecture -> (llama.cpp architecture, permute q/k for llama.cpp's rope layout)
    "LlamaForCausalLM": ("llama", True),  # Llama 2, Llama 3/3.x, SmolLM
    "MistralForCausalLM": ("llama", True),  # llama.cpp runs Mistral as llama
    "Qwen2ForCausalLM": ("qwen2", False),  # NEOX rope: no permutation
}
PLAIN_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}  # written here
K_QUANTS = {  # written by llama.cpp's quantizer from the f16 file (llama_model_quantize)
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def permute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF stores q/k rows for rotate-half rope; llama.cpp's llama wants pairs interleaved."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama3_rope_factors(config: dict) -> np.ndarray | None:
    """The `rope_freqs` tensor llama.cpp needs for Llama 3.1+ rope scaling (type llama3), else None."""
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    base = config.get("rope_theta", 10000.0)
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
    """Where tensors come from: a checkpoint directory, optionally with a LoRA adapter merged in."""

    model_dir: Path
    adapter: Path | None = None


def _to_ggml(tensor: torch.Tensor, kind: str) -> np.ndarray:
    """The bytes of one tensor in GGML type `kind` (F32, F16, BF16 or Q8_0, decided by plan_tensors)."""
    import gguf

    if kind == "F32":
        return tensor.float().numpy()
    if kind == "F16":
        return tensor.to(torch.float16).numpy()
    if kind == "BF16":
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return gguf.quants.quantize(tensor.float().numpy(), gguf.GGMLQuantizationType.Q8_0)


def _pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json, from its pre_tokenizer rules."""
    text = json.dumps(tokenizer_json.get("pre_tokenizer"))
    if '"individual_digits": true' in text and '"ByteLevel"' in text:
        return "smollm"  # digits one by one, then GPT-2 byte-level splitting
    if r"\\p{N}{1,3}" in text:
        return "llama-bpe"  # Llama 3: numbers in groups of up to three
    if r"\\p{N}" in text and "Split" in text:
        return "qwen2"
    raise UserError("the tokenizer's pre-tokenizer is not one tutorforge knows how to name for llama.cpp "
                    f"({text[:120]}); export supports Llama 2/3, SmolLM, Mistral and Qwen2 tokenizers")


def _copy_tokenizer_from_gguf(writer, gguf_path: Path) -> None:
    """Tokenizer metadata copied field by field from the GGUF the checkpoint was converted from."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        value = field.contents()
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)


def _tokenizer_from_hf(writer, model_dir: Path, vocab_size: int) -> None:
    """Tokens, types, merges, pre-tokenizer and special ids from the Hugging Face tokenizer (BPE)."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    if spec["model"]["type"] != "BPE":
        raise UserError(f"{model_dir}: a {spec['model']['type']} tokenizer; export writes BPE tokenizers "
                        "(Llama 3, SmolLM, Qwen2); export Llama 2 / Mistral v0.1 with llama.cpp's converter")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added.get(token) else
                         gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = spec["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bool(bos is not None and tokenizer("a")["input_ids"][:1] == [bos]))


def add_metadata(writer, model_dir: Path, config: dict, outtype: str, name: str) -> None:
    """Architecture hyperparameters (rope included), tokenizer and chat template."""
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
    from tutorforge.models import source_gguf

    source = source_gguf(model_dir)
    if source:
        _copy_tokenizer_from_gguf(writer, source)
    else:
        _tokenizer_from_hf(writer, model_dir, config["vocab_size"])
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        writer.add_chat_template(template.read_text())
    else:
        tok_config = json.loads((model_dir / "tokenizer_config.json").read_text()) \
            if (model_dir / "tokenizer_config.json").is_file() else {}
        if isinstance(tok_config.get("chat_template"), str):
            writer.add_chat_template(tok_config["chat_template"])


@dataclass(frozen=True)
class Planned:
    gguf_name: str
    ref: object  # merge.TensorRef
    heads: int | None  # permute q/k rows for this many heads
    ggml_type: str
    byte_shape: tuple[int, ...]
    np_dtype: object

    @property
    def nbytes(self) -> int:
        return math.prod(self.byte_shape) * np.dtype(self.np_dtype).itemsize


def _ggml_type(shape: tuple[int, ...], outtype: str) -> str:
    if len(shape) == 1 or outtype == "f32":
        return "F32"
    if outtype == "q8_0" and shape[-1] % 32:
        return "F16"  # Q8_0 packs rows in blocks of 32
    return PLAIN_TYPES[outtype]


def plan_tensors(model_dir: Path, config: dict, arch: str, permute: bool, outtype: str) -> list[Planned]:
    """Every tensor's GGUF name, type and on-disk shape, known before any data is read."""
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, config["num_hidden_layers"])
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    plan = []
    for ref in tensor_refs(model_dir):
        if ref.name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(ref.name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"{model_dir}: tensor {ref.name} has no llama.cpp name for architecture {arch}")
        n_heads = None
        if permute and ref.name.endswith("q_proj.weight"):
            n_heads = heads
        elif permute and ref.name.endswith("k_proj.weight"):
            n_heads = kv
        kind = _ggml_type(ref.shape, outtype)
        if kind == "Q8_0" and new == "token_embd.weight" and config.get("tie_word_embeddings"):
            kind = "F16"  # tied: it is also the output projection, where 8-bit error flips top-1 tokens
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        if kind == "Q8_0":
            shape, dtype = gguf.quants.quant_shape_to_byte_shape(ref.shape, qtype), np.uint8
        else:
            shape, dtype = ref.shape, {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[kind]
        plan.append(Planned(new, ref, n_heads, kind, tuple(shape), dtype))
    return plan


def write_gguf(source: Source, out: Path, outtype: str = "f16", *, name: str = "model",
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Stream `source` (merging its adapter on the fly) into a GGUF file at `out`, atomically."""
    import gguf

    if outtype not in PLAIN_TYPES:
        raise UserError(f"export: {outtype!r} is not written directly; use one of {', '.join(PLAIN_TYPES)} "
                        f"(K-quants come from quantize(): {', '.join(K_QUANTS)})")
    config = json.loads((source.model_dir / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in ARCHS:
        raise UserError(f"{source.model_dir}: architecture {architecture} is not supported by export; "
                        f"supported: {', '.join(ARCHS)}")
    arch, permute = ARCHS[architecture]
    lora, full = read_adapter(source.adapter) if source.adapter else ({}, {})
    plan = plan_tensors(source.model_dir, config, arch, permute, outtype)
    rope_freqs = llama3_rope_factors(config) if arch == "llama" else None
    check_free_space(out.parent, sum(p.nbytes for p in plan) + (64 << 20), f"the {outtype} GGUF")
    with disk_full_says_so(out.parent, f"the {outtype} GGUF {out.name}"):
        tmp = out.with_name(f".{out.name}.tmp")
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            add_metadata(writer, source.model_dir, config, outtype, name)
            for p in plan:
                writer.add_tensor_info(p.gguf_name, p.byte_shape, np.dtype(p.np_dtype), p.nbytes,
                                       raw_dtype=getattr(gguf.GGMLQuantizationType, p.ggml_type))
            if rope_freqs is not None:
                writer.add_tensor_info("rope_freqs.weight", rope_freqs.shape, rope_freqs.dtype, rope_freqs.nbytes,
                                       raw_dtype=gguf.GGMLQuantizationType.F32)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            workspace = Workspace([p.ref for p in plan], lora)
            for i, p in enumerate(plan, start=1):
                tensor = workspace.merged(p.ref, lora.get(p.ref.name), full.get(p.ref.name))
                if p.heads:
                    tensor = permute_qk(tensor, p.heads)
                writer.write_tensor_data(_to_ggml(tensor, p.ggml_type))
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
            code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), params)
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


def gguf_path(directory: Path, name: str, kind: str) -> Path:
    """Where the GGUF of this name and type goes: NAME.KIND.gguf (model.Q4_K_M.gguf)."""
    return directory / f"{name}.{kind.upper()}.gguf"


def run_gguf(run_dir: Path, config: dict) -> Path:
    """The GGUF of a training run that Ollama, chat and serve load (tutorforge.ollama.quantization)."""
    settings = config["tutorforge"]
    return gguf_path(run_dir / "gguf", settings["export"].get("name") or "model", settings["ollama"]["quantization"])


def default_verify_rows() -> list:
    """Rows of the shipped Python-tutor dataset, as verification text when a run has no held-out split."""
    from tutorforge.data import load_files

    path = Path(__file__).resolve().parents[2] / "data" / "python_tutor.jsonl"
    if not path.is_file():
        raise UserError("export: no held-out rows to verify with; run it on a training output_dir")
    return load_files([path]).rows


def export_model(source: Source, out_dir: Path, *, name: str, outtype: str = "f16",
                 quantizations: tuple[str, ...] = ("q4_k_m",), verify_rows: list | None = None,
                 system: str | None = None, progress=None) -> dict:
    """Write the GGUF files (f16 or the asked outtype, q8_0 if asked, then K-quants from the f16),
    verify each with llama.cpp when rows are given, and record it all in export.json. A file is
    reused only when it was made from this same model (outputs.model_identity); files made from
    another model, and the Modelfile that pointed at them, are deleted first."""
    from tutorforge import outputs
    from tutorforge.hardware import bound_heap

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
            write_gguf(source, path, kind, name=name, progress=progress)
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


def _verification(source: Source, files: dict[str, Path], out_dir: Path, rows: list, system: str | None) -> dict:
    """Every file checked by llama.cpp against the PyTorch model: the report's verification,
    failures and warnings (each file's numbers logged)."""
    from transformers import AutoTokenizer

    from tutorforge import verify

    tokenizer = AutoTokenizer.from_pretrained(str(source.model_dir))
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
                        f"{out_dir / 'export.json'}); a model outside {', '.join(ARCHS)} or a tokenizer llama.cpp "
                        "does not know are the usual causes")


def verify_rows(rows: list | None, minimum: int = 40) -> list:
    """Rows to verify an export with: the given (held-out) rows, topped up with the shipped lessons
    to at least `minimum` rows (~2,000 teacher-forced positions)."""
    rows = list(rows or [])
    return rows + default_verify_rows()[: max(0, minimum - len(rows))]


def run_source(run_dir: Path, config: dict, adapter: Path | None = None) -> Source:
    """What a training output_dir's export reads: its merged/ checkpoint when that was merged from
    the run's current base and adapter, else base + adapter/ in one streaming pass (a merged/ left
    from an earlier training is stale and is not used)."""
    from tutorforge import outputs
    from tutorforge.models import resolve_base_model

    base = resolve_base_model(config["base_model"]).path
    adapter = adapter or run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no trained adapter here; run `tutorforge train` first")
    merged = run_dir / "merged"
    if merged.is_dir():
        if outputs.model_identity(merged) == outputs.model_identity(base, adapter):
            return Source(merged)
        log.info("export: %s was merged from another adapter or base (stale); exporting from the base "
                 "and %s in one pass", merged, adapter)
    return Source(base, adapter)


def export_run(run_dir: Path, *, adapter: Path | None = None, out: Path | None = None, outtype: str | None = None,
               quantizations: tuple[str, ...] | None = None, verify: bool = True, progress=None) -> dict:
    """Export a training output_dir (see run_source); settings from its config unless given;
    verified on its held-out rows."""
    from tutorforge.checkpoints import read_run_info
    from tutorforge.data import load_files

    info = read_run_info(run_dir)
    if info is None or "config" not in info:
        raise UserError(f"{run_dir}: no complete training run here (run.json missing); train first, or "
                        "give --base (and --adapter) with --out")
    config = info["config"]
    settings = config["tutorforge"]["export"]
    source = run_source(run_dir, config, adapter)
    heldout = run_dir / "heldout.jsonl"
    rows = verify_rows(load_files([heldout]).rows if heldout.is_file() else None) if verify else None
    return export_model(source, out or run_dir / "gguf", name=settings.get("name") or "model",
                        outtype=outtype or settings.get("outtype", "f16"),
                        quantizations=quantizations or tuple(settings.get("quantizations", ("q4_k_m",))),
                        verify_rows=rows, system=config.get("default_system_message"), progress=progress)
