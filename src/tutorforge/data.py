"""Datasets and prompt formatting: one Alpaca row {instruction, input, output} -> model text.

Instruct models are prompted with the tokenizer's own chat template (instruction and input as the
user turn, an optional system turn); models without one get the Alpaca prompt. Training and
inference both go through `render_prompt`, so they cannot drift apart.
"""
from __future__ import annotations

# The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


def user_turn(instruction: str, input: str = "") -> str:
    """The user message of an Alpaca row: the instruction, then the input after a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def alpaca_prompt(instruction: str, input: str = "") -> str:
    if input:
        return ALPACA_PROMPT.format(ctx=", paired with an input that provides further context",
                                    instruction=instruction, input_block=f"### Input:\n{input}\n\n")
    return ALPACA_PROMPT.format(ctx="", instruction=instruction, input_block="")


def render_prompt(tokenizer, instruction: str, input: str = "", *, system: str | None = None) -> str:
    """The text a model sees before its answer, in the format it was (or will be) trained on."""
    if not getattr(tokenizer, "chat_template", None):
        prefix = f"{system}\n\n" if system else ""
        return prefix + alpaca_prompt(instruction, input)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_turn(instruction, input)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
