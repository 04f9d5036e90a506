"""Turn a row (Alpaca or a conversation) into model text and token ids with loss labels; split train from held-out.

    fmt = prompt_format(tokenizer, cfg.chat_template, cfg.default_system_message,
                        chat_template_jinja=cfg.chat_template_jinja)
    example = encode_row(tokenizer, fmt, row, train_on_inputs=False)   # input_ids, labels (-100: no loss)

Instruct models are prompted with the tokenizer's own chat template (instruction + input as the user
turn, the output as the assistant turn, an optional system turn), or a named one (CHAT_TEMPLATES), or
the config's chat_template_jinja; base models get the Alpaca prompt. Training (`encode_row`) and
inference (`render_prompt`) share one `PromptFormat`, so they cannot drift apart. The end-of-turn
token is always part of the labels, so the model learns to stop; with train_on_inputs false the
prompt tokens are masked (-100) from the loss.

A conversation row (`Row.turns`) is rendered whole with the chat template and labelled per turn, as
Axolotl's chat_template strategy does: the content of each turn whose role is in the row's
roles_to_train (or whose Turn.train is true; false never) is trained, every turn's content under
train_on_inputs, and the end-of-turn tokens by the row's train_on_eos (see chat_encoding.py); role
headers, separators and untrained turns never are.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass

from tutorforge.chat_encoding import (
    control_tokens,
    encode_segments,
    encode_turns,
    render_segments,
    render_turns,
)
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
# What to do when a conversation meets a model without a chat template (every such error says it).
NEEDS_TEMPLATE = "set chat_template: chatml (or llama3, or chat_template: jinja with chat_template_jinja)"
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


def _use_template(tokenizer, chat_template: str | None, jinja: str | None) -> None:
    """Put the named template (CHAT_TEMPLATES) or the config's Jinja text on the tokenizer. Training
    saves the tokenizer with it (finetune.write_trained), so a later stage that loads the run's
    tokenizer and is given chat_template: jinja without the text finds the template already there."""
    if chat_template == "jinja" and not jinja and getattr(tokenizer, "chat_template", None):
        return
    if chat_template == "jinja" and not jinja:
        raise UserError("chat_template: jinja, but chat_template_jinja is not set; give the Jinja text of "
                        "the template in chat_template_jinja, or name one (chat_template: chatml)")
    if jinja and chat_template not in (None, "jinja"):
        raise UserError(f"chat_template: {chat_template} and chat_template_jinja are both set; remove one "
                        "(chat_template: jinja uses chat_template_jinja)")
    if jinja:
        tokenizer.chat_template = jinja
    elif chat_template in CHAT_TEMPLATES:
        vocab = tokenizer.get_vocab()
        if missing := [t for t in TEMPLATE_TOKENS[chat_template] if t not in vocab]:
            raise UserError(f"chat_template: {chat_template} needs the tokens {', '.join(missing)}, which "
                            "this tokenizer lacks; use chat_template: tokenizer_default or alpaca")
        tokenizer.chat_template = CHAT_TEMPLATES[chat_template]


def prompt_format(tokenizer, chat_template: str | None = None, system: str | None = None, *,
                  chat_template_jinja: str | None = None) -> PromptFormat:
    """Choose the prompt format (config keys chat_template and chat_template_jinja; neither = the
    tokenizer's template, else Alpaca)."""
    _use_template(tokenizer, chat_template, chat_template_jinja)
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
    if chat_template is None and not chat_template_jinja:
        log.info("prompt format: the tokenizer's chat template (an instruct model)")
    return PromptFormat("chat", system, _chat_end_token(tokenizer))


def render_prompt(tokenizer, fmt: PromptFormat, instruction: str, input: str = "") -> str:
    """The text a model sees before its answer."""
    if fmt.kind == "alpaca":
        return alpaca_prompt(instruction, input, fmt.system)
    return tokenizer.apply_chat_template(_messages(fmt.system, instruction, input), tokenize=False,
                                         add_generation_prompt=True)


def encode_row(tokenizer, fmt: PromptFormat, row, *, train_on_inputs: bool = False) -> Example:
    """Token ids of prompt + output + end token, and labels (prompt masked unless train_on_inputs);
    a conversation row (row.turns) is encoded by `encode_conversation`."""
    kind = getattr(row, "kind", "alpaca")
    if getattr(row, "turns", ()):
        return encode_conversation(tokenizer, fmt, row, train_on_inputs=train_on_inputs)
    if kind == "segments":
        return encode_labelled(tokenizer, row, train_on_inputs=train_on_inputs)
    if kind == "completion":
        return encode_text(tokenizer, row)
    if getattr(row, "system", ""):  # alpaca_w_system: the row's own system prompt
        fmt = dataclasses.replace(fmt, system=row.system)
    prompt = render_prompt(tokenizer, fmt, row.instruction, row.input)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=fmt.kind == "alpaca")
    answer_ids = tokenizer.encode(row.output, add_special_tokens=False) + [fmt.end_token_id]
    ids = prompt_ids + answer_ids
    if train_on_inputs:
        labels = [IGNORE] + ids[1:]  # the first token is never predicted
    else:
        labels = [IGNORE] * len(prompt_ids) + answer_ids
    return Example(ids, labels, row.source)


def encode_labelled(tokenizer, row, *, train_on_inputs: bool = False) -> Example:
    """An input_output row: each segment's text tokenised alone with no special tokens added (what
    the text holds is what the model sees), trained where its label is true (every segment under
    train_on_inputs), as Axolotl's RawInputOutputStrategy does."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in row.segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained or train_on_inputs else [IGNORE] * len(piece)
    if labels:
        labels[0] = IGNORE  # the first token is never predicted
    return Example(ids, labels, row.source)


def encode_text(tokenizer, row) -> Example:
    """A completion row: its text with the tokenizer's special tokens (a BOS where it adds one) and
    the end-of-text token, every token trained, as Axolotl's CompletionPromptTokenizingStrategy
    tokenises it; `text_chunks` cuts it to sequence_len."""
    ids = tokenizer(row.output, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return Example(ids, [IGNORE] + ids[1:], row.source)


def text_chunks(example: Example, sequence_len: int) -> list[Example]:
    """A completion's example cut into pieces of sequence_len tokens (the last one shorter), each
    trained whole but its first token, as Axolotl cuts completion texts; one piece when it fits."""
    if len(example.input_ids) <= sequence_len:
        return [example]
    return [Example(example.input_ids[i:i + sequence_len], [IGNORE] + example.input_ids[i + 1:i + sequence_len],
                    f"{example.source} (tokens {i + 1}-{min(i + sequence_len, len(example.input_ids))})")
            for i in range(0, len(example.input_ids), sequence_len)]


def encode_conversation(tokenizer, fmt: PromptFormat, row, *, train_on_inputs: bool = False) -> Example:
    """The conversation rendered whole with the chat template and tokenised as `encode_prompt` does
    (content as text), labelled per turn: trained turns' content and the end-of-turn tokens that
    row.train_on_eos names (fmt.end_token_id: <|im_end|> for chatml, <|eot_id|> for llama3, the
    template's token after an answer otherwise). fmt.system is a system turn first when the row has
    none (trained only under train_on_inputs, like any turn)."""
    if fmt.kind != "chat":
        raise UserError(f"{row.source.rpartition(':')[0] or row.source}: a conversation dataset needs a "
                        f"chat template, and this model has none (a base model); {NEEDS_TEMPLATE}")
    turns = list(row.turns)
    messages = [{"role": t.role, "content": t.content} for t in turns]
    trained = [t.trained(row.roles_to_train, train_on_inputs) for t in turns]
    if fmt.system and not any(t.role == "system" for t in turns):
        messages.insert(0, {"role": "system", "content": fmt.system})
        trained.insert(0, train_on_inputs)

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False)

    encoded = encode_turns(tokenizer, render_turns(render, messages))
    mask = encoded.mask(trained, fmt.end_token_id, row.train_on_eos)
    labels = [t if m else IGNORE for t, m in zip(encoded.ids, mask, strict=True)]
    labels[0] = IGNORE  # the first token is never predicted
    return Example(encoded.ids, labels, row.source)


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


def encode_prompt(tokenizer, fmt: PromptFormat, instruction: str, input: str = "") -> list[int]:
    """The token ids of `render_prompt(...)`, with the system prompt, instruction and input
    tokenized as text: a special token typed in them is ordinary text, not a turn marker. For
    ordinary text the ids equal `tokenizer.encode(render_prompt(...))` as training tokenizes it."""
    if fmt.kind == "alpaca":  # no control tokens in the Alpaca prompt: all of it is text
        prompt = render_prompt(tokenizer, fmt, instruction, input)
        return tokenizer(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]

    return encode_messages(tokenizer, fmt, _messages(fmt.system, instruction, input))


def prompt_messages(fmt: PromptFormat, history, instruction: str, input: str = "") -> list[dict]:
    """The messages of a prompt asked after earlier turns (`history`: {"role", "content"} dicts, a
    conversation's turns before its last user turn): fmt.system first where the history has no
    system turn (as encode_conversation puts it), the history, then the user turn."""
    messages = [{"role": m["role"], "content": m["content"]} for m in history]
    if fmt.system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": fmt.system})
    return messages + [{"role": "user", "content": user_turn(instruction, input)}]


def encode_messages(tokenizer, fmt: PromptFormat, messages: list[dict]) -> list[int]:
    """The token ids of `messages` rendered with the chat template and its generation prompt,
    tokenized as training tokenizes a conversation (chat_encoding: the template's markers are control
    tokens, every message's content is text)."""
    if fmt.kind != "chat":
        raise UserError(f"a conversation of {len(messages)} messages needs a chat template, and this model "
                        f"has none (its Alpaca prompt is single-turn); {NEEDS_TEMPLATE}")

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(text: str, special: bool) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    return encode_segments(render_segments(render, messages), control_tokens(tokenizer), encode)


def encode_chat_prompt(tokenizer, fmt: PromptFormat, instruction: str, input: str = "", *,
                       history=()) -> list[int]:
    """`encode_prompt` asked after a conversation's earlier turns (`history`, as prompt_messages
    takes it): the whole conversation with the generation prompt. Without history, encode_prompt's
    ids; an Alpaca format takes a history of one system turn at most (it replaces fmt.system), and
    any other is an error saying a chat template is needed."""
    if not history:
        return encode_prompt(tokenizer, fmt, instruction, input)
    if fmt.kind == "alpaca":
        if [m["role"] for m in history] != ["system"]:
            raise UserError(f"a follow-up question (after {len(history)} earlier turns) needs a chat template, "
                            f"and this model has none (its Alpaca prompt is single-turn); {NEEDS_TEMPLATE}")
        return encode_prompt(tokenizer, dataclasses.replace(fmt, system=history[0]["content"]), instruction, input)
    return encode_messages(tokenizer, fmt, prompt_messages(fmt, history, instruction, input))
