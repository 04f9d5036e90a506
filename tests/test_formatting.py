"""formatting.py: one prompt format for training and inference, labels = output + end token."""
from __future__ import annotations

import pytest

from tutorforge.data import Row
from tutorforge.errors import UserError
from tutorforge.formatting import ALPACA_PROMPT, IGNORE, encode_row, prompt_format, render_prompt, split_rows

ROWS = [
    Row("How do I reverse a list?", "", "Use slicing:\n\n```python\nprint([1, 2, 3][::-1])  # [3, 2, 1]\n```", "r:1"),
    Row("What does this print?", "x = 5\nprint(x * 2)", "It prints 10: `x * 2` doubles 5.", "r:2"),
    Row("Explain zip", "", "  zip pairs items; 12345 digits, tabs\tand  spaces, café 🐍.", "r:3"),
]


@pytest.fixture
def tokenizer(bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_tokenizer_dir)


def answer_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=False) if label != IGNORE])


@pytest.mark.parametrize("system", [None, "You are a concise Python tutor."])
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.source)
def test_chat_labels_are_exactly_output_and_end_token(tokenizer, row, system):
    fmt = prompt_format(tokenizer, None, system)
    assert fmt.kind == "chat" and tokenizer.convert_ids_to_tokens(fmt.end_token_id) == "<|im_end|>"
    example = encode_row(tokenizer, fmt, row)
    assert answer_text(tokenizer, example) == row.output + "<|im_end|>"
    assert example.labels[-1] == fmt.end_token_id  # the model learns to stop
    prompt = render_prompt(tokenizer, fmt, row.instruction, row.input)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids  # inference sees the training prompt
    assert set(example.labels[: len(prompt_ids)]) == {IGNORE}
    assert (system or "You are a helpful AI assistant named SmolLM") in prompt
    if row.input:
        assert f"{row.instruction}\n\n{row.input}<|im_end|>" in prompt


def test_chat_template_text_agrees_with_encoding(tokenizer):
    """prompt + output + end token is what the tokenizer's own template renders for the conversation."""
    fmt = prompt_format(tokenizer, None, "Be brief.")
    row = ROWS[0]
    full = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": row.instruction},
         {"role": "assistant", "content": row.output}], tokenize=False)
    ids = encode_row(tokenizer, fmt, row).input_ids
    assert full.startswith(tokenizer.decode(ids))
    assert full[len(tokenizer.decode(ids)):] == "\n"  # only the newline after <|im_end|> is not trained


def test_train_on_inputs(tokenizer):
    fmt = prompt_format(tokenizer, None, None)
    example = encode_row(tokenizer, fmt, ROWS[1], train_on_inputs=True)
    assert example.labels[0] == IGNORE and example.labels[1:] == example.input_ids[1:]


def test_alpaca_format_for_base_models(tokenizer):
    tokenizer.chat_template = None  # a base model: no chat template
    fmt = prompt_format(tokenizer, None, None)
    assert fmt.kind == "alpaca" and fmt.end_token_id == tokenizer.eos_token_id
    for row in ROWS:
        example = encode_row(tokenizer, fmt, row)
        assert answer_text(tokenizer, example) == row.output + tokenizer.eos_token
    prompt = render_prompt(tokenizer, fmt, "Add numbers", "1 and 2")
    assert prompt == ("Below is an instruction that describes a task, paired with an input that provides "
                      "further context. Write a response that appropriately completes the request.\n\n"
                      "### Instruction:\nAdd numbers\n\n### Input:\n1 and 2\n\n### Response:\n")
    assert render_prompt(tokenizer, fmt, "Say hi").endswith("### Instruction:\nSay hi\n\n### Response:\n")
    assert ALPACA_PROMPT.startswith("Below is an instruction")


def test_named_templates(tokenizer):
    assert prompt_format(tokenizer, "alpaca", None).kind == "alpaca"
    assert prompt_format(tokenizer, "chatml", None).kind == "chat"
    with pytest.raises(UserError, match="needs the tokens <|start_header_id|>"):
        prompt_format(tokenizer, "llama3", None)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="has no chat template"):
        prompt_format(tokenizer, "tokenizer_default", None)


def test_split_is_deterministic_disjoint_and_complete():
    rows = list(range(100))
    train, val = split_rows(rows, 0.1, seed=42)
    assert len(val) == 10 and sorted(train + val) == rows and not set(train) & set(val)
    assert split_rows(rows, 0.1, seed=42) == (train, val)
    assert split_rows(rows, 0.1, seed=7)[1] != val
    assert len(split_rows(rows, 25, seed=1)[1]) == 25  # a count
    assert split_rows(rows, 0, seed=1) == (rows, [])
    with pytest.raises(UserError, match="leaving nothing to train on"):
        split_rows(rows, 100, seed=1)


def test_chat_template_jinja_formats_alpaca_rows_too(tokenizer):
    """The config's chat_template_jinja replaces the tokenizer's template; the answer ends with the
    template's token after an answer ("<|im_end|>" here, not the eos that the template never writes)."""
    jinja = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says:\n' + m['content'] + '<|im_end|>\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\n' }}{% endif %}")
    fmt = prompt_format(tokenizer, "jinja", None, chat_template_jinja=jinja)
    assert fmt.kind == "chat" and tokenizer.convert_ids_to_tokens(fmt.end_token_id) == "<|im_end|>"
    prompt = render_prompt(tokenizer, fmt, "Say hi")
    assert prompt == "<|im_start|>user says:\nSay hi<|im_end|>\n<|im_start|>assistant says:\n"
    assert answer_text(tokenizer, encode_row(tokenizer, fmt, ROWS[1])) == ROWS[1].output + "<|im_end|>"
