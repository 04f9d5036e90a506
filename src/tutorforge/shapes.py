"""A model's shape in numbers, known before anything is loaded and without a download: what the
memory plan computes with.

    model_shape("NousResearch/Meta-Llama-3-8B") -> Shape(hidden=4096, layers=32, vocab=128256, ...)
    model_shape("smollm2")                      -> the bundled model's shape, from its GGUF metadata

A shape comes, in this order, from a local config.json (a model directory, or the Hugging Face
cache), from GGUF metadata (a .gguf file, the bundled model), or from the built-in table of
well-known models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.rules import did_you_mean


class ShapeUnknown(UserError):
    """The model's shape cannot be known offline (or it is not a Llama-family decoder)."""


@dataclass(frozen=True)
class Shape:
    """A decoder-only Llama-family model (Llama, Mistral, Qwen2, SmolLM), in numbers."""

    name: str
    source: str  # the config.json, the GGUF file, or "built-in table"
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # lm_head shares the embedding matrix
    dtype_bytes: int  # of the checkpoint on disk (what merge reads)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of the linear layers of one decoder layer, by module name."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.layers * self.layer_linear_params + self.embed_params * (1 if self.tied else 2) + norms


# basename of the hub id, lower case: (hidden, intermediate, layers, heads, kv heads, head_dim, vocab, tied)
# Each from the model's config.json on the Hugging Face Hub (the id in the comment).
SHAPES: dict[str, tuple[int, int, int, int, int, int, int, bool]] = {
    "meta-llama-3-8b": (4096, 14336, 32, 32, 8, 128, 128256, False),  # meta-llama/Meta-Llama-3-8B (NousResearch mirror)
    "meta-llama-3-8b-instruct": (4096, 14336, 32, 32, 8, 128, 128256, False),  # meta-llama/Meta-Llama-3-8B-Instruct
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128, 128256, False),  # meta-llama/Llama-3.1-8B
    "llama-3.1-8b-instruct": (4096, 14336, 32, 32, 8, 128, 128256, False),  # meta-llama/Llama-3.1-8B-Instruct
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 64, 128256, True),  # meta-llama/Llama-3.2-1B
    "llama-3.2-1b-instruct": (2048, 8192, 16, 32, 8, 64, 128256, True),  # meta-llama/Llama-3.2-1B-Instruct
    "llama-3.2-3b": (3072, 8192, 28, 24, 8, 128, 128256, True),  # meta-llama/Llama-3.2-3B
    "llama-3.2-3b-instruct": (3072, 8192, 28, 24, 8, 128, 128256, True),  # meta-llama/Llama-3.2-3B-Instruct
    "mistral-7b-v0.1": (4096, 14336, 32, 32, 8, 128, 32000, False),  # mistralai/Mistral-7B-v0.1
    "mistral-7b-instruct-v0.2": (4096, 14336, 32, 32, 8, 128, 32000, False),  # mistralai/Mistral-7B-Instruct-v0.2
    "mistral-7b-v0.3": (4096, 14336, 32, 32, 8, 128, 32768, False),  # mistralai/Mistral-7B-v0.3
    "mistral-7b-instruct-v0.3": (4096, 14336, 32, 32, 8, 128, 32768, False),  # mistralai/Mistral-7B-Instruct-v0.3
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 128, 152064, False),  # Qwen/Qwen2.5-7B
    "qwen2.5-7b-instruct": (3584, 18944, 28, 28, 4, 128, 152064, False),  # Qwen/Qwen2.5-7B-Instruct
    "smollm2-135m": (576, 1536, 30, 9, 3, 64, 49152, True),  # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m-instruct": (576, 1536, 30, 9, 3, 64, 49152, True),  # HuggingFaceTB/SmolLM2-135M-Instruct (bundled)
    "smollm2-360m": (960, 2560, 32, 15, 5, 64, 49152, True),  # HuggingFaceTB/SmolLM2-360M
    "smollm2-360m-instruct": (960, 2560, 32, 15, 5, 64, 49152, True),  # HuggingFaceTB/SmolLM2-360M-Instruct
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 64, 49152, True),  # HuggingFaceTB/SmolLM2-1.7B
    "smollm2-1.7b-instruct": (2048, 8192, 24, 32, 32, 64, 49152, True),  # HuggingFaceTB/SmolLM2-1.7B-Instruct
}
TABLE_DTYPE_BYTES = 2  # every model in SHAPES is published in bf16
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}  # config.json's dtype / torch_dtype
ARCHITECTURES = {"llama", "mistral", "qwen2"}  # config.json model_type / GGUF general.architecture


def shape_from_table(name: str) -> Shape | None:
    base = name.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    if base not in SHAPES:
        return None
    return Shape(name, "built-in table", *SHAPES[base], dtype_bytes=TABLE_DTYPE_BYTES)


def shape_from_config(path: Path, name: str | None = None) -> Shape:
    """The shape in a Hugging Face config.json."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the model config ({exc}); point base_model at a model "
                        "directory with a valid config.json") from None
    if config.get("model_type") not in ARCHITECTURES:
        raise ShapeUnknown(f"{path}: model_type {config.get('model_type')!r} is not one the memory plan knows "
                        f"({', '.join(sorted(ARCHITECTURES))}); pass --ignore-plan to train without a plan")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if not isinstance(config.get(k), int)]
    if missing:
        raise UserError(f"{path}: {missing[0]} missing or not a number; the memory plan needs it")
    heads = config["num_attention_heads"]
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"  # transformers' default
    return Shape(name or str(path.parent), str(path), config["hidden_size"], config["intermediate_size"],
                 config["num_hidden_layers"], heads, config.get("num_key_value_heads") or heads,
                 config.get("head_dim") or config["hidden_size"] // heads, config["vocab_size"],
                 # LlamaConfig, MistralConfig and Qwen2Config default to untied embeddings
                 bool(config.get("tie_word_embeddings", False)), DTYPE_BYTES.get(dtype, 4))


def shape_from_gguf(path: Path, name: str | None = None) -> Shape:
    """The shape in a GGUF file's metadata. Its tensors are dequantised to fp32 when tutorforge
    converts it for training (models.gguf_to_checkpoint), so that is its checkpoint dtype."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields

    def value(key: str, default: int | None = None) -> int:
        if key in fields:
            return int(fields[key].contents())
        if default is None:
            raise UserError(f"{path}: GGUF metadata {key} missing; the memory plan needs it")
        return default

    arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
    if arch not in ARCHITECTURES:
        raise ShapeUnknown(f"{path}: GGUF architecture {arch!r} is not one the memory plan knows "
                        f"({', '.join(sorted(ARCHITECTURES))}); pass --ignore-plan to train without a plan")
    hidden, heads = value(f"{arch}.embedding_length"), value(f"{arch}.attention.head_count")
    tokens = len(fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in fields else None
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    return Shape(name or str(path), str(path), hidden, value(f"{arch}.feed_forward_length"),
                 value(f"{arch}.block_count"), heads, value(f"{arch}.attention.head_count_kv", heads),
                 value(f"{arch}.attention.key_length", hidden // heads), value(f"{arch}.vocab_size", tokens),
                 tied, 4)


def shape_of_gguf(path: Path, name: str) -> Shape:
    """A GGUF base model's shape: from the checkpoint tutorforge converted it to, when that is
    cached (models.gguf_to_checkpoint, keyed on the file's hash: fast), else from its metadata."""
    from tutorforge.models import converted_dir, is_converted

    converted = converted_dir(path)
    if is_converted(converted) and (converted / "config.json").is_file():
        return shape_from_config(converted / "config.json", name)
    return shape_from_gguf(path, name)


def _cached_config(hub_id: str) -> Path | None:
    """config.json of a hub model already in the local Hugging Face cache (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def model_shape(base_model: str, model_config: str | None = None) -> Shape:
    """The shape of `base_model` (or of `model_config`, the config's base_model_config), offline."""
    from tutorforge.models import bundled_gguf, is_bundled

    name = model_config or base_model
    if is_bundled(name):
        return shape_of_gguf(bundled_gguf(), name)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"base_model: {name}: a directory without config.json; the memory plan "
                            "reads the model's shape from it")
        return shape_from_config(local / "config.json", name)
    if local.is_file() and local.suffix == ".gguf":
        from tutorforge.model_files import DamagedModel, check_model_files

        try:  # a cut-short file is named with what is wrong, before gguf-py reads it
            check_model_files(local)
        except DamagedModel as exc:
            raise exc.named(name) from None
        return shape_of_gguf(local, name)
    if local.is_file() and local.name == "config.json":
        return shape_from_config(local, name)
    cached = _cached_config(name) if "/" in name and not name.startswith((".", "/", "~")) else None
    if cached is not None:
        return shape_from_config(cached, name)
    table = shape_from_table(name)
    if table is not None:
        return table
    base = name.rsplit("/", 1)[-1].lower()
    raise ShapeUnknown(f"base_model: {name}: its shape is not known here (no local config.json or .gguf, "
                    f"not in the Hugging Face cache, not in the built-in table{did_you_mean(base, SHAPES)}); "
                    "download it once (`huggingface-cli download` the config.json is enough) or point "
                    "base_model at a local copy")


TABLE_CLASSES = {  # start of a built-in table model's name -> (model_type, class), config.json on the Hub
    "meta-llama": ("llama", "LlamaForCausalLM"),  # meta-llama/Meta-Llama-3-8B
    "llama": ("llama", "LlamaForCausalLM"),  # meta-llama/Llama-3.1-8B, Llama-3.2-1B, -3B
    "mistral": ("mistral", "MistralForCausalLM"),  # mistralai/Mistral-7B-v0.1, -v0.3
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),  # Qwen/Qwen2.5-7B
    "smollm2": ("llama", "LlamaForCausalLM"),  # HuggingFaceTB/SmolLM2-135M, -360M, -1.7B
}


def model_class(shape: Shape | None) -> tuple[str | None, str | None]:
    """(model_type, class name) of the model training builds: from its config.json (model_type,
    architectures), its GGUF architecture (llama.cpp's names are transformers' model types for the
    families it converts), or the table model's family; None for what is not known."""
    if shape is None:
        return None, None
    if shape.source == "built-in table":
        base = shape.name.rstrip("/").rsplit("/", 1)[-1].lower()
        return next((found for start, found in TABLE_CLASSES.items() if base.startswith(start)), (None, None))
    source = Path(shape.source)
    if source.suffix == ".gguf":
        from gguf import GGUFReader

        fields = GGUFReader(str(source)).fields
        arch = fields["general.architecture"].contents() if "general.architecture" in fields else None
        return (str(arch) if arch else None), None
    return model_class_of(source)


def model_class_of(config_json: Path) -> tuple[str | None, str | None]:
    """(model_type, class name) from a config.json, or a model directory's; None for what is not there."""
    path = Path(config_json)
    try:
        config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    except (OSError, ValueError):
        return None, None
    architectures = config.get("architectures") or [None]
    return config.get("model_type"), architectures[0]


def default_attention(model_type: str | None, name: str | None) -> tuple[str | None, str | None]:
    """(sdpa or eager, the class) as transformers defaults for this model: its modeling file's
    `_supports_sdpa`, read as text, not imported (importing it imports torch: seconds); None where
    transformers here has no such model."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("transformers")
    if not model_type or spec is None or not spec.submodule_search_locations:
        return None, name
    file = Path(spec.submodule_search_locations[0]) / "models" / model_type / f"modeling_{model_type}.py"
    text = file.read_text(encoding="utf-8") if re.fullmatch(r"\w+", model_type) and file.is_file() else ""
    found = re.search(r"^class (\w+ForCausalLM)\(", text, re.M)
    if not found or (name and f"class {name}(" not in text):
        return None, name
    return ("sdpa" if re.search(r"^\s+_supports_sdpa = True", text, re.M) else "eager"), name or found.group(1)


def runnable_attention(wanted: str | None, model_type: str | None, name: str | None) -> tuple[str | None, str | None]:
    """(`wanted`, None), or (eager, why) when `wanted` is SDPA and the model's class has none
    (Gemma 2: SDPA cannot softcap attention logits, modeling_gemma2's _supports_sdpa): Axolotl's
    configs often say sdp_attention for every model, and eager is what the class runs by default."""
    if wanted != "sdpa":
        return wanted, None
    kernel, found = default_attention(model_type, name)
    if kernel != "eager":
        return wanted, None
    return "eager", f"attn_implementation sdpa: {found} has no SDPA in transformers; using eager, its default"
