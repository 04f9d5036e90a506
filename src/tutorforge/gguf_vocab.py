"""The tokenizer of a GGUF file: tokens, merges, pre-tokenizer, special ids and chat template.

    add_tokenizer(writer, Path("merged"), vocab_size=49152)    # writer: a gguf.GGUFWriter
    add_tokenizer(writer, base_dir, 49152, adapter_dir)       # the tokenizer training saved there

The tokenizer is the run's (tokenizer.run_tokenizer): the one training saved in the adapter
directory when it holds one, else the model directory's. A checkpoint converted from a GGUF file (the
bundled model) gets that file's tokenizer fields copied as they are, but for the special token ids
the run's tokenizer changed (config key special_tokens). Any other checkpoint's Hugging Face BPE
tokenizer is written the way llama.cpp's converter (convert_hf_to_gguf.py) writes it: tokens and
their types from the tokenizer; merges, special token ids and chat template by gguf-py's
`SpecialVocab` (which also encodes merges saved as pairs whose tokens hold spaces); the
pre-tokenizer named by the sha256 of the token ids of the converter's probe text, looked up in
`PRE_TOKENIZER_HASHES`, or for a vocabulary llama.cpp does not know, by its splitting rules
(`SPLIT_REGEXES`: Llama 3's, Qwen2's, Tekken's, GPT-4o's).
"""
from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path

import gguf

from tutorforge.errors import UserError

log = logging.getLogger(__name__)

# The probe text llama.cpp's converter tokenizes to tell pre-tokenizers apart
# (convert_hf_to_gguf.py, get_vocab_base_pre: chktxt).
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256 of str(tokenizer.encode(PROBE_TEXT)) -> llama.cpp's `tokenizer.ggml.pre`, for BPE tokenizers
# of the families export writes (Llama, Mistral, Qwen2); values from llama.cpp convert_hf_to_gguf.py
# get_vocab_base_pre, each computed there for the model named.
PRE_TOKENIZER_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # abacusai/Smaug-Llama-3-70B

    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # mistralai/Mistral-Nemo-Base-2407
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",  # tiiuae/Falcon3-7B-Base
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}

# the tokenizer fields a GGUF file holds (gguf-py's Keys.Tokenizer), copied from a source GGUF
TOKENIZER_KEYS = {value for name, value in vars(gguf.Keys.Tokenizer).items() if name.isupper()}


def probe_hash(tokenizer) -> str:
    """llama.cpp's chkhsh: the sha256 of the token ids (special tokens added) of PROBE_TEXT."""
    return sha256(str(tokenizer.encode(PROBE_TEXT)).encode()).hexdigest()


# tokenizer.json's splitting regex -> llama.cpp's `tokenizer.ggml.pre`, for a pre-tokenizer that is that
# one Split followed by byte-level mapping without a regex of its own; each regex as llama.cpp's
# src/llama-vocab.cpp quotes the original tokenizer.json's (llm_tokenizer_bpe, the pre-type's case).
_CASED = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+%s"  # Word, word
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*%s"  # WORD, WOrd
          r"|\p{N}%s| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLIT_REGEXES = {
    _LLAMA3 % "{1,3}": "llama-bpe",  # LLAMA_VOCAB_PRE_TYPE_LLAMA3: meta-llama/Meta-Llama-3-8B (and DBRX's, the same)
    _LLAMA3 % "": "qwen2",  # LLAMA_VOCAB_PRE_TYPE_QWEN2: Qwen/Qwen1.5-7B (each digit alone)
    _CASED % ("", "", ""): "tekken",  # LLAMA_VOCAB_PRE_TYPE_TEKKEN: mistralai/Mistral-Nemo-Base-2407
    # LLAMA_VOCAB_PRE_TYPE_GPT4O: Xenova/gpt-4o (contractions kept with their word, numbers in threes)
    _CASED % (_CONTRACTIONS + "?", _CONTRACTIONS + "?", "{1,3}"): "gpt-4o",
}


def _split_regexes(pre: object) -> list[str] | None:
    """The regexes of the Split steps of a pre_tokenizer, or None when a step other than Split and
    byte-level mapping without a regex (use_regex false) is in it."""
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    regexes = []
    for step in steps:
        if not isinstance(step, dict):
            return None
        if step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            regexes.append((step.get("pattern") or {}).get("Regex"))
        elif step.get("type") != "ByteLevel" or step.get("use_regex", True):
            return None
    return regexes


def pre_tokenizer_by_rules(tokenizer_json: dict) -> str | None:
    """The pre-tokenizer read off tokenizer.json's pre_tokenizer rules, for tokenizers whose probe
    hash llama.cpp's table lacks (a vocabulary of its own with a known family's splitting rules):
    a splitting regex of SPLIT_REGEXES as it is, else the rules told apart by their digits."""
    pre = tokenizer_json.get("pre_tokenizer")
    regexes = _split_regexes(pre)
    if regexes is not None and len(regexes) == 1 and regexes[0] in SPLIT_REGEXES:
        return SPLIT_REGEXES[regexes[0]]
    text = json.dumps(pre)
    if '"individual_digits": true' in text and '"ByteLevel"' in text:
        return "smollm"  # digits one by one, then GPT-2 byte-level splitting
    if r"\\p{Lu}" in text:
        return None  # letters split by case (Tekken's, GPT-4o's) in a regex other than theirs
    if r"\\p{N}{1,3}" in text:
        return "llama-bpe"  # Llama 3: numbers in groups of up to three
    if r"\\p{N}" in text and "Split" in text:
        return "qwen2"
    return None


def pre_tokenizer(tokenizer, tokenizer_json: dict, model_dir: Path) -> str:
    """llama.cpp's pre-tokenizer name: by probe hash (PRE_TOKENIZER_HASHES), else by the rules of
    tokenizer.json (logged as an assumption), else an error."""
    chkhsh = probe_hash(tokenizer)
    if chkhsh in PRE_TOKENIZER_HASHES:
        return PRE_TOKENIZER_HASHES[chkhsh]
    assumed = pre_tokenizer_by_rules(tokenizer_json)
    if assumed is None:
        raise UserError(f"{model_dir}/tokenizer.json: its pre-tokenizer (probe hash {chkhsh}) is not one "
                        "llama.cpp's converter knows, nor one tutorforge can name from its rules "
                        f"({json.dumps(tokenizer_json.get('pre_tokenizer'))[:120]}); export supports Llama 2/3, "
                        "SmolLM, Mistral and Qwen2 tokenizers")
    log.warning("export: %s: tokenizer probe hash %s is not in llama.cpp's table; pre-tokenizer %r assumed "
                "from tokenizer.json's pre_tokenizer rules (verification checks the tokenization)",
                model_dir, chkhsh, assumed)
    return assumed


def copy_tokenizer_from_gguf(writer: gguf.GGUFWriter, reader: gguf.GGUFReader,
                             special_ids: dict[str, int] | None = None) -> None:
    """Tokenizer metadata copied field by field from the GGUF the checkpoint was converted from
    (the chat template excepted: it comes from the checkpoint's own files), with `special_ids`
    ({"eos": 7, ...}: the run's special_tokens) in place of the file's own."""
    special_ids = special_ids or {}
    replaced = {_special_key(kind) for kind in special_ids}
    for key, field in reader.fields.items():
        if key not in TOKENIZER_KEYS or key == gguf.Keys.Tokenizer.CHAT_TEMPLATE or key in replaced:
            continue
        value = field.contents()
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for kind, token_id in special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)


def _special_key(kind: str) -> str:
    """gguf-py's key of a special token id: bos -> tokenizer.ggml.bos_token_id (Keys.Tokenizer)."""
    return getattr(gguf.Keys.Tokenizer, {"pad": "PAD_ID"}.get(kind, f"{kind.upper()}_ID"))


def changed_special_ids(tokenizer, reader: gguf.GGUFReader) -> dict[str, int] | None:
    """The run tokenizer's bos/eos/unk/pad ids where they differ from the source GGUF's, or None when
    its vocabulary is not the GGUF's (tokenizer_config named another tokenizer)."""
    tokens = reader.fields[gguf.Keys.Tokenizer.LIST].contents()
    if tokenizer.convert_ids_to_tokens(list(range(len(tokens)))) != tokens or len(tokenizer) > len(tokens):
        return None
    changed = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        field = reader.fields.get(_special_key(kind))
        if token_id is not None and (field is None or field.contents() != token_id):
            changed[kind] = token_id
    return changed


def _tokens_and_types(tokenizer, vocab_size: int) -> tuple[list[str], list[gguf.TokenType]]:
    """Every id's token and type (CONTROL for special added tokens, USER_DEFINED for other added ones,
    UNUSED padding up to the model's vocab_size)."""
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
    return tokens, types


def tokenizer_from_hf(writer: gguf.GGUFWriter, tokenizer, directory: Path, vocab_size: int,
                      config_dir: Path | None = None) -> gguf.SpecialVocab:
    """Tokens, types and pre-tokenizer from the Hugging Face tokenizer (BPE) saved in `directory`;
    merges, special ids and add_bos by SpecialVocab, which is returned (its chat template is not
    written yet). Special ids the tokenizer files lack come from `config_dir`'s config.json, as
    SpecialVocab reads them from a model directory."""
    spec = json.loads((directory / "tokenizer.json").read_text())
    if spec["model"]["type"] != "BPE":
        raise UserError(f"{directory}: a {spec['model']['type']} tokenizer; export writes BPE tokenizers "
                        "(Llama 3, SmolLM, Qwen2); export Llama 2 / Mistral v0.1 with llama.cpp's converter")
    tokens, types = _tokens_and_types(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer, spec, directory))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    vocab = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    config = config_dir / "config.json" if config_dir is not None and config_dir != directory else None
    if config is not None and config.is_file():  # the saved tokenizer has no config.json beside it:
        model = json.loads(config.read_text())  # SpecialVocab._try_load_from_config_json's fallback
        for kind in vocab.special_token_types:
            token_id = model.get(f"{kind}_token_id")
            if isinstance(token_id, int) and 0 <= token_id < vocab_size:
                vocab.special_token_ids.setdefault(kind, token_id)
    bos = tokenizer.bos_token_id
    # what the PyTorch tokenizer does, which verification compares against (SpecialVocab reads a
    # flag in tokenizer_config.json or guesses from the post-processor; both can disagree with it)
    vocab.add_special_token["bos"] = bool(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])
    template, vocab.chat_template = vocab.chat_template, None
    vocab.add_to_gguf(writer, quiet=True)
    vocab.chat_template = template
    return vocab


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int, adapter: Path | None = None, *,
                  trust_remote_code: bool = False) -> None:
    """The tokenizer fields and chat template of the run's tokenizer: the one training saved in
    `adapter` when it holds one, else `model_dir`'s (see the module doc)."""
    from tutorforge.models import source_gguf
    from tutorforge.tokenizer import load_tokenizer, tokenizer_dir

    directory = tokenizer_dir(model_dir, adapter)
    source = source_gguf(model_dir)
    reader = gguf.GGUFReader(str(source)) if source else None
    own = directory == Path(model_dir)  # no tokenizer saved with the adapter
    tokenizer = None if reader and own else load_tokenizer(directory, trust_remote_code=trust_remote_code)
    if reader is not None:  # the source GGUF's tokens, with these special ids in place of its own
        special = {} if own else changed_special_ids(tokenizer, reader)
        if special:
            log.info("export: special token ids of %s in place of the source GGUF's: %s", directory, special)
        copy_tokenizer_from_gguf(writer, reader, special)
        template = gguf.SpecialVocab(directory, special_token_types=()).chat_template
    else:  # the tokens of the Hugging Face tokenizer
        template = tokenizer_from_hf(writer, tokenizer, directory, vocab_size, Path(model_dir)).chat_template
    if template is None and (directory / "chat_template.jinja").is_file():  # no tokenizer_config.json
        template = (directory / "chat_template.jinja").read_text()
    if template is not None:
        writer.add_chat_template(template)
