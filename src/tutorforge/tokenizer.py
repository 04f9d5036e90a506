"""The tokenizer a run trains with: config keys tokenizer_config, special_tokens, trust_remote_code.

    tokenizer = tokenizer_for(model_dir, cfg.tokenizer_config, special_tokens=cfg.special_tokens)
    check_remote_code(model_dir, trust_remote_code=False)   # UserError if it needs its own code
    tokenizer = run_tokenizer(base_dir, run_dir / "adapter", trust_remote_code=cfg.trust_remote_code)
    save_tokenizer(tokenizer, run_dir / "adapter")          # save_pretrained + its tokenizer.model

Training saves the tokenizer it used beside the adapter (train._finish, with save_tokenizer: a
SentencePiece model's tokenizer.model too, which llama.cpp's converter reads, and the base's
tokenizer_class, by which it takes Phi-4's GPT-2 vocabulary); every later stage (merge,
export, package, chat, compare) loads it back with `run_tokenizer`, so special_tokens and
tokenizer_config reach the merged checkpoint, the GGUF and the Modelfile. The tokenizer comes from
the directory tokenizer_config names (resolved as base_model is, by models.resolve_aux) or else from
the base model's; special_tokens must already be in its vocabulary. `check_remote_code` is what the
model loader (lora.load_base) calls too.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TypeVar, cast

from tutorforge.errors import UserError
from tutorforge.models import resolve_aux

log = logging.getLogger(__name__)
T = TypeVar("T")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# every file a tokenizer's save_pretrained may write (transformers tokenization_utils_base,
# PreTrainedTokenizerBase.save_pretrained and the slow tokenizers' save_vocabulary)
SAVED_TOKENIZER_FILES = (*TOKENIZER_FILES, "merges.txt", "special_tokens_map.json", "added_tokens.json",
                         "chat_template.jinja", "chat_template.json")


def tokenizer_dir(model_dir: Path, adapter: Path | None = None) -> Path:
    """Where the tokenizer a run trained with is: its adapter directory when training saved it there
    (train._finish), else the model directory (base or merged)."""
    if adapter is not None and any((Path(adapter) / name).is_file() for name in TOKENIZER_FILES):
        return Path(adapter)
    return Path(model_dir)


def save_tokenizer(tokenizer, directory: Path) -> None:
    """`tokenizer.save_pretrained(directory)` plus what llama.cpp's converter reads of a SentencePiece
    model and transformers 5 no longer writes (TokenizersBackend._save_pretrained): the
    tokenizer.model it was loaded from, copied beside (the converter builds the GGUF vocabulary from
    it, _create_vocab_sentencepiece), and the added tokens in tokenizer_config.json's
    added_tokens_decoder as transformers 4 wrote them (the converter marks turn markers such as
    <start_of_turn> or [INST] as tokens from there; without it llama.cpp splits them into pieces).
    A `vocab_file` path to the directory loaded from is left out of the saved config, and what the
    loaded directory's tokenizer_config.json says that save_pretrained drops is kept (source_settings)."""
    import shutil

    tokenizer.save_pretrained(str(directory))
    target = Path(directory) / "tokenizer.model"
    # where it was loaded from: vocab_file where the class keeps one (LlamaTokenizer, not GemmaTokenizer)
    sources = [getattr(tokenizer, "vocab_file", None), str(Path(tokenizer.name_or_path or ".") / target.name)]
    source = next((Path(s) for s in sources if isinstance(s, str) and Path(s).name == target.name
                   and Path(s).is_file()), None)
    if source is not None and not target.is_file() and source.resolve() != target.resolve():
        shutil.copy2(source, target)
    config_file = Path(directory) / "tokenizer_config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("vocab_file", None)
    config.update(source_settings(Path(tokenizer.name_or_path or "."), config))
    config.setdefault("added_tokens_decoder", {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tokenizer.added_tokens_decoder.items())})
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# What a tokenizer_config.json says that transformers 5's save_pretrained does not write back as it was
# (PreTrainedTokenizerBase.save_pretrained: the class it loaded as, and add_bos_token and
# add_eos_token popped) and llama.cpp's converter reads: tokenizer_class picks Phi-4's GPT-2
# vocabulary (conversion/phi.py, Phi3MiniModel.set_vocab), add_bos_token and add_eos_token the
# GGUF's add-BOS/EOS flags (gguf-py vocab.py, SpecialVocab._try_load_from_tokenizer_json).
KEPT_SETTINGS = ("tokenizer_class", "add_bos_token", "add_eos_token")


def source_settings(source: Path, saved: dict) -> dict:
    """The KEPT_SETTINGS of the tokenizer_config.json in `source` (the directory the tokenizer was
    loaded from) that `saved` (what save_pretrained wrote) lacks or has otherwise. transformers 5
    loads Phi-4's tokenizer (tokenizer_class GPT2Tokenizer, model_type phi3) as TokenizersBackend
    (tokenization_auto, MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS) and saves that name, which the
    converter does not know; load_tokenizer reads the kept name back as the same tokenizer."""
    path = source / "tokenizer_config.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(settings, dict):
        return {}
    kept = {key: settings[key] for key in KEPT_SETTINGS if key in settings and saved.get(key) != settings[key]}
    if kept:
        log.info("tokenizer saved with %s from %s (transformers wrote %s)", kept, path,
                 {key: saved.get(key) for key in kept})
    return kept


def run_tokenizer(model_dir: Path, adapter: Path | None = None, *, trust_remote_code: bool = False):
    """The tokenizer a run trained with (special_tokens and tokenizer_config applied): the one saved
    in `adapter` when it holds one, else `model_dir`'s. What every stage after training loads."""
    return load_tokenizer(tokenizer_dir(model_dir, adapter), trust_remote_code=trust_remote_code)


def remote_code_needed(directory: Path) -> str | None:
    """What in a model directory needs the model's own Python code (an `auto_map` naming a class
    this transformers lacks), or None. Read from config.json and tokenizer_config.json, as
    transformers itself decides (AutoConfig's `model_type in CONFIG_MAPPING`, tokenizer_class_from_name)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    def read(name: str) -> dict:
        path = directory / name
        value = json.loads(path.read_text()) if path.is_file() else {}
        return value if isinstance(value, dict) else {}

    config, tok = read("config.json"), read("tokenizer_config.json")
    if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        return f"config.json: model_type {config.get('model_type')!r} is defined by the model's own code"
    tok_map = tok.get("auto_map") or {}
    tok_class = tok.get("tokenizer_class")
    if "AutoTokenizer" in tok_map and tok_class and tokenizer_class_from_name(tok_class) is None:
        return f"tokenizer_config.json: tokenizer_class {tok_class!r} is defined by the model's own code"
    return None


def check_remote_code(directory: Path, trust_remote_code: bool) -> None:
    """UserError naming trust_remote_code when `directory` needs code of its own and it is false."""
    if not trust_remote_code and (why := remote_code_needed(Path(directory))):
        raise UserError(f"{directory}/{why}; transformers runs it only with trust_remote_code: true in "
                        "the config (set it only for a model whose code you trust)")


def load_tokenizer(directory: Path, *, special_tokens: tuple[tuple[str, str], ...] = (),
                   trust_remote_code: bool = False):
    """The tokenizer of `directory` with the config's special_tokens set (each must already be in
    the vocabulary: a new token needs embedding rows that nothing here trains or exports)."""
    from transformers import AutoTokenizer

    check_remote_code(directory, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    tokenizer = as_tokenizer_json(tokenizer, Path(directory))
    sentencepiece_prefix(tokenizer, directory)
    set_special_tokens(tokenizer, special_tokens)
    return tokenizer


def as_tokenizer_json(tokenizer: T, directory: Path) -> T:
    """`tokenizer`, or the directory's tokenizer.json as it is (TokenizersBackend) when the class
    transformers 5 built pre-tokenizes otherwise. GPT2Tokenizer builds plain ByteLevel from the
    vocabulary and merges whatever tokenizer.json says (models/gpt2/tokenization_gpt2.py), which
    splits Phi-4's text (and SmolLM2's digits) otherwise than the model was trained with; transformers
    itself loads TokenizersBackend for a phi3 model (tokenization_auto, MODELS_WITH_INCORRECT_HUB_
    TOKENIZER_CLASS), but a directory without its config.json (an adapter's, a tokenizer_config
    directory) names only the class. SentencePiece classes (a Metaspace pre-tokenizer) are left to
    sentencepiece_prefix; a class with remote code is left as it is."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    path = directory / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (type(tokenizer) is TokenizersBackend or not isinstance(tokenizer, TokenizersBackend) or backend is None
            or not path.is_file() or not type(tokenizer).__module__.startswith("transformers.")):
        return tokenizer
    built, saved = json.loads(backend.to_str()), json.loads(path.read_text(encoding="utf-8"))
    parts = ("normalizer", "pre_tokenizer")
    if all(built.get(k) == saved.get(k) for k in parts) or "Metaspace" in json.dumps(built.get("pre_tokenizer")):
        return tokenizer
    log.info("tokenizer %s: its tokenizer.json as it is (TokenizersBackend), not %s, which pre-tokenizes "
             "otherwise (%s)", directory, type(tokenizer).__name__, json.dumps(built.get("pre_tokenizer"))[:120])
    return cast(T, TokenizersBackend.from_pretrained(str(directory)))  # a tokenizer, as `tokenizer` is


def sentencepiece_prefix(tokenizer, directory: Path) -> None:
    """Give a SentencePiece-style tokenizer SentencePiece's own dummy prefix: "▁" before every text
    segment (the text, and the text after each special or added token), even one that begins with a
    space. transformers 5 rebuilds LlamaTokenizer (Llama 2, Mistral v0.1, Phi-3) with a Metaspace
    pre-tokenizer whatever tokenizer.json says (models/llama/tokenization_llama.py), and Metaspace
    adds no "▁" to a segment that starts with one, and with legacy: false none after a special
    token; SentencePiece (tokenizer.model, which these models were trained with) and llama.cpp's
    tokenizer of the GGUF (llama-vocab.cpp, SPM: a space before each raw-text fragment at the start
    and after a token) do. The normalizer here is the one transformers 4's LlamaConverter wrote into
    these models' tokenizer.json (Prepend + Replace, no pre-tokenizer). Other tokenizers are left as
    they are."""
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if (backend is None or not isinstance(pre, pre_tokenizers.Metaspace) or pre.split
            or pre.prepend_scheme == "never" or backend.normalizer is not None):
        return
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(pre.replacement),
                                               normalizers.Replace(" ", pre.replacement)])
    backend.pre_tokenizer = None
    log.info("tokenizer %s: SentencePiece's prefix (%r before every text segment, as tokenizer.model and "
             "llama.cpp tokenize) instead of transformers' Metaspace (prepend_scheme %s)", directory,
             pre.replacement, pre.prepend_scheme)


def tokenizer_for(model_dir: Path, tokenizer_config: str | None = None, *,
                  special_tokens: tuple[tuple[str, str], ...] = (), trust_remote_code: bool = False,
                  allow_download: bool = True):
    """The tokenizer a run trains with: from `tokenizer_config` (config key) when set, else from the
    base model's directory, with the config's special_tokens set."""
    directory = (resolve_aux("tokenizer_config", tokenizer_config, needs=TOKENIZER_FILES,
                             allow_download=allow_download) if tokenizer_config else model_dir)
    return load_tokenizer(directory, special_tokens=special_tokens, trust_remote_code=trust_remote_code)


def set_special_tokens(tokenizer, special_tokens: tuple[tuple[str, str], ...]) -> None:
    """Set bos/eos/pad/unk tokens (config key special_tokens) on a tokenizer; UserError naming the
    key for a token the vocabulary lacks."""
    vocab = tokenizer.get_vocab()
    for kind, token in special_tokens:
        if token not in vocab:
            now = getattr(tokenizer, kind, None)
            raise UserError(f"special_tokens.{kind}: {token!r} is not in the tokenizer's vocabulary "
                            f"({len(vocab):,} tokens; its {kind} is {now!r}); a new token would need new "
                            "embedding rows, which tutorforge does not add: pick a token the vocabulary has")
        if getattr(tokenizer, kind, None) != token:
            log.info("special_tokens.%s: %r -> %r (id %d)", kind, getattr(tokenizer, kind, None), token,
                     vocab[token])
            setattr(tokenizer, kind, token)
