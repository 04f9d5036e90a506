"""Turn an Alpaca row into model text and token ids with loss labels; split train from held-out.

Instruct models are prompted with the tokenizer's own chat template (instruction + input as the user
turn, the output as the assistant turn, an optional system turn); base models get the Alpaca prompt.
Training (`encode_row`) and inference (`render_prompt`) share one `PromptFormat`, so they cannot
drift apart. The end-of-turn token is always part of the labels, so the model learns to stop; with
train_on_inputs false the prompt tokens are masked (-100) from the loss.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tutorforge.errors import UserError

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips

# The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)
ALPACA_INPUT_CTX = ", paired with an input that provides further context"

# chat_template name -> Jinja template, for tokenizers that lack one (tokens must be in the vocab).
CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (  # OpenAI ChatML, as used by SmolLM2 and Qwen2
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}"),
    "llama3": (  # Meta Llama 3 Instruct
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
}
TEMPLATE_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"),
                   "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}


@dataclass(frozen=True)
class PromptFormat:
    kind: str  # "chat" | "alpaca"
    system: str | None
    end_token_id: int  # the token that ends the answer (trained on, and a stop token at inference)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str


def user_turn(instruction: str, input: str = "") -> str:
    """The user message of an Alpaca row: the instruction, then the input after a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def alpaca_prompt(instruction: str, input: str = "", system: str | None = None) -> str:
    prefix = f"{system}\n\n" if system else ""
    if input:
        return prefix + ALPACA_PROMPT.format(ctx=ALPACA_INPUT_CTX, instruction=instruction,
                                             input_block=f"### Input:\n{input}\n\n")
    return prefix + ALPACA_PROMPT.format(ctx="", instruction=instruction, input_block="")


def _messages(system: str | None, instruction: str, input: str, output: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_turn(instruction, input)})
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def _chat_end_token(tokenizer) -> int:
    """The special token the chat template puts right after an assistant answer."""
    sentinel = "QX7sentinelZ"
    text = tokenizer.apply_chat_template(_messages(None, "hi", "", sentinel), tokenize=False)
    suffix = text[text.rindex(sentinel) + len(sentinel):]
    special = set(tokenizer.all_special_ids) | {
        i for t, i in tokenizer.get_added_vocab().items() if t.startswith("<") and t.endswith(">")}
    for token in tokenizer.encode(suffix, add_special_tokens=False):
        if token in special:
            return token
    if tokenizer.eos_token_id is None:
        raise UserError("the chat template ends answers with no special token and the tokenizer has no "
                        "eos_token; set special_tokens: {eos_token: ...} in the config")
    return tokenizer.eos_token_id


def prompt_format(tokenizer, chat_template: str | None = None, system: str | None = None) -> PromptFormat:
    """Choose the prompt format (config key chat_template; None = the tokenizer's, else Alpaca)."""
    if chat_template in CHAT_TEMPLATES:
        vocab = tokenizer.get_vocab()
        if missing := [t for t in TEMPLATE_TOKENS[chat_template] if t not in vocab]:
            raise UserError(f"chat_template: {chat_template} needs the tokens {', '.join(missing)}, which "
                            "this tokenizer lacks; use chat_template: tokenizer_default or alpaca")
        tokenizer.chat_template = CHAT_TEMPLATES[chat_template]
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "tokenizer_default" and not has_template:
        raise UserError("chat_template: tokenizer_default, but this tokenizer has no chat template; "
                        "use chat_template: alpaca for a base model")
    if chat_template == "alpaca" or not has_template:
        if chat_template is None:
            log.info("prompt format: alpaca (the tokenizer has no chat template)")
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no eos_token to end answers with; set special_tokens: "
                            "{eos_token: ...} in the config")
        return PromptFormat("alpaca", system, tokenizer.eos_token_id)
    if chat_template is None:
        log.info("prompt format: the tokenizer's chat template (an instruct model)")
    return PromptFormat("chat", system, _chat_end_token(tokenizer))


def render_prompt(tokenizer, fmt: PromptFormat, instruction: str, input: str = "") -> str:
    """The text a model sees before its answer."""
    if fmt.kind == "alpaca":
        return alpaca_prompt(instruction, input, fmt.system)
    return tokenizer.apply_chat_template(_messages(fmt.system, instruction, input), tokenize=False,
                                         add_generation_prompt=True)


def encode_row(tokenizer, fmt: PromptFormat, row, *, train_on_inputs: bool = False) -> Example:
    """Token ids of prompt + output + end token, and labels (prompt masked unless train_on_inputs)."""
    prompt = render_prompt(tokenizer, fmt, row.instruction, row.input)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=fmt.kind == "alpaca")
    answer_ids = tokenizer.encode(row.output, add_special_tokens=False) + [fmt.end_token_id]
    ids = prompt_ids + answer_ids
    if train_on_inputs:
        labels = [IGNORE] + ids[1:]  # the first token is never predicted
    else:
        labels = [IGNORE] * len(prompt_ids) + answer_ids
    return Example(ids, labels, row.source)


def split_rows(rows: list, val_set_size: float, seed: int) -> tuple[list, list]:
    """(train, held-out): val_set_size is a fraction (< 1) or a row count; the same seed, the same split."""
    if val_set_size <= 0:
        return list(rows), []
    n_val = round(len(rows) * val_set_size) if val_set_size < 1 else int(val_set_size)
    n_val = max(n_val, 1)
    if n_val >= len(rows):
        raise UserError(f"val_set_size: {val_set_size:g} holds out {n_val} of {len(rows)} rows, leaving "
                        "nothing to train on; use a smaller fraction or count")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return ([r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held])


# --- tokenizing a rendered prompt: the template's markers are control tokens, content is text ---

_HOLE = re.compile("\ue000(\\d+)\ue001")  # a placeholder for message i (private-use characters)


def render_segments(render: Callable[[list[dict]], str], messages: list[dict]) -> list[tuple[str, bool]]:
    """`render(messages)` cut into (text, is_content) pieces: the template's own text, and each
    message's content as the template placed it (trimmed or not). Found by rendering with a
    placeholder for every content, then with one real content at a time, so it works for any
    template that places content without looking inside it; the pieces always join to
    `render(messages)` (checked)."""
    holes = [dict(m, content=f"\ue000{i}\ue001") for i, m in enumerate(messages)]
    skeleton = render(holes)
    pieces: list[tuple[str, bool]] = []
    at = 0
    for match in _HOLE.finditer(skeleton):
        i = int(match.group(1))
        if skeleton.count(match.group(0)) != 1:
            raise UserError("the chat template writes a message's content twice; tutorforge cannot tell "
                            "its content from its control tokens (please report this template)")
        one = render([messages[j] if j == i else h for j, h in enumerate(holes)])
        tail = len(skeleton) - match.end()
        pieces += [(skeleton[at:match.start()], False), (one[match.start():len(one) - tail], True)]
        at = match.end()
    pieces.append((skeleton[at:], False))
    pieces = [(text, is_content) for text, is_content in pieces if text]
    if "".join(text for text, _ in pieces) != render(messages):
        raise UserError("the chat template renders a message differently depending on its content; "
                        "tutorforge cannot tell its content from its control tokens (please report it)")
    return pieces


def encode_segments(pieces: list[tuple[str, bool]], markers: Iterable[str],
                    encode: Callable[[str, bool], list[int]]) -> list[int]:
    """Token ids of rendered (text, is_content) pieces. `markers` (the tokenizer's control-token
    strings) are control tokens only where the template's own text has them, `encode(marker, True)`;
    everything between two markers (template text and content, joined) is `encode(text, False)`,
    plain text. Tokenizers cut the text at control tokens before anything else, so for content
    without markers the ids equal those of the whole text tokenized with special parsing."""
    markers = sorted(set(markers), key=len, reverse=True)  # the longest match first, as tokenizers do
    split = re.compile("(" + "|".join(map(re.escape, markers)) + ")") if markers else None
    ids: list[int] = []
    text = ""
    for piece, is_content in pieces:
        parts = [piece] if is_content or split is None else split.split(piece)
        for k, part in enumerate(parts):
            if k % 2 == 0:
                text += part
                continue
            if text:
                ids += encode(text, False)
            ids += encode(part, True)
            text = ""
    if text:
        ids += encode(text, False)
    return ids


def control_tokens(tokenizer) -> list[str]:
    """The strings a Hugging Face tokenizer reads as special tokens."""
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]


def encode_prompt(tokenizer, fmt: PromptFormat, instruction: str, input: str = "") -> list[int]:
    """The token ids of `render_prompt(...)`, with the system prompt, instruction and input
    tokenized as text: a special token typed in them is ordinary text, not a turn marker. For
    ordinary text the ids equal `tokenizer.encode(render_prompt(...))` as training tokenizes it."""
    if fmt.kind == "alpaca":  # no control tokens in the Alpaca prompt: all of it is text
        prompt = render_prompt(tokenizer, fmt, instruction, input)
        return tokenizer(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(text: str, special: bool) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    pieces = render_segments(render, _messages(fmt.system, instruction, input))
    return encode_segments(pieces, control_tokens(tokenizer), encode)
