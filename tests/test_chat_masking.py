"""Conversations: per-turn loss masks, proven token by token for three chat templates (chatml,
llama3, Gemma's through chat_template_jinja), every train_on_eos value and train_on_inputs; the loss
uses exactly those labels; a base model needs a template; the length rules keep trained tokens."""
from __future__ import annotations

import pytest

from tutorforge.data import Reject, Row, Turn
from tutorforge.errors import UserError
from tutorforge.formatting import IGNORE, encode_row, prompt_format

# Gemma 3's chat template (google/gemma-3-*-it tokenizer_config.json) for text content: the system
# prompt opens the first user turn, "assistant" is "model", content is trimmed.
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (prefix if "
    "loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
TOKENS = {  # template -> (special tokens the tokenizer must have, bos token, end-of-turn token)
    "chatml": ((), None, "<|im_end|>"),
    "llama3": (("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": (("<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<end_of_turn>"),
}
CONVERSATIONS = {
    "plain": (Turn("user", "How do I reverse a list?"),
              Turn("assistant", "Use slicing: `xs[::-1]`.\n\nFor example [1, 2, 3][::-1] gives [3, 2, 1]."),
              Turn("user", "And a string?"), Turn("assistant", "The same:\n    'café 🐍'[::-1]  # '🐍 éfac'")),
    "system": (Turn("system", "You are a concise Python tutor."), Turn("user", "What is 12345 * 2?"),
               Turn("assistant", "24690."), Turn("user", "Thanks!"), Turn("assistant", "You are welcome.")),
    "flags": (Turn("user", "Say hi", train=True), Turn("assistant", "hi", train=False),
              Turn("user", "Again, louder"), Turn("assistant", "HI\tTHERE")),
}


def chat_tokenizer(bundled_tokenizer, template: str):
    """The bundled tokenizer with the template's special tokens added, and its prompt format."""
    added, bos, _ = TOKENS[template]
    if added:
        bundled_tokenizer.add_tokens(list(added), special_tokens=True)
        bundled_tokenizer.bos_token = bos
    if template == "gemma":
        return bundled_tokenizer, prompt_format(bundled_tokenizer, "jinja", chat_template_jinja=GEMMA)
    return bundled_tokenizer, prompt_format(bundled_tokenizer, template)


def trained_spans(tokenizer, example) -> list[str]:
    """Each run of consecutive trained tokens, decoded; trained tokens are their own labels."""
    spans, run = [], []
    for token, label in zip(example.input_ids + [0], example.labels + [IGNORE], strict=True):
        if label == IGNORE:
            if run:
                spans.append(tokenizer.decode(run))
            run = []
        else:
            assert label == token
            run.append(token)
    return spans


def expected_spans(template: str, turns, train_on_eos: str, train_on_inputs: bool) -> list[str]:
    """What must be trained, written from the rules: each trained turn's content, then its
    end-of-turn token as train_on_eos says (an untrained turn's end alone under "all"). In Gemma's
    template the system prompt shares the first user turn: it has no end token of its own."""
    end = TOKENS[template][2]
    trained = [t.train if t.train is not None else (train_on_inputs or t.role == "assistant") for t in turns]
    has_end = [not (template == "gemma" and t.role == "system") for t in turns]
    last = max(i for i, on in enumerate(trained) if on)
    spans = []
    for i, turn in enumerate(turns):
        ends = has_end[i] and {"turn": trained[i], "last": i == last, "all": True, "none": False}[train_on_eos]
        if trained[i]:
            spans.append(turn.content + (end if ends else ""))
        elif ends:
            spans.append(end)
    return spans


@pytest.mark.parametrize("train_on_inputs", [False, True])
@pytest.mark.parametrize("train_on_eos", ["turn", "last", "all", "none"])
@pytest.mark.parametrize("template", list(TOKENS))
def test_trained_tokens_are_exactly_the_trained_turns(bundled_tokenizer, template, train_on_eos, train_on_inputs):
    tokenizer, fmt = chat_tokenizer(bundled_tokenizer, template)
    end_id = tokenizer.convert_tokens_to_ids(TOKENS[template][2])
    assert fmt.kind == "chat" and fmt.end_token_id == end_id
    for name, turns in CONVERSATIONS.items():
        row = Row("", "", "", f"t.jsonl:{name}", turns=turns, train_on_eos=train_on_eos)
        example = encode_row(tokenizer, fmt, row, train_on_inputs=train_on_inputs)
        rendered = tokenizer.apply_chat_template([{"role": t.role, "content": t.content} for t in turns],
                                                 tokenize=False)
        assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]  # as rendered
        assert trained_spans(tokenizer, example) == expected_spans(template, turns, train_on_eos, train_on_inputs)
        own_turns = [t for t in turns if not (template == "gemma" and t.role == "system")]
        assert example.input_ids.count(end_id) == len(own_turns)  # one end token per rendered turn


def test_trained_token_counts(bundled_tokenizer):
    """The counts for one conversation (with a system turn) under the bundled tokenizer's chatml:
    content of the two answers, plus end tokens: 2 (turn), 1 (last), 5 (all), 0 (none)."""
    tokenizer, fmt = chat_tokenizer(bundled_tokenizer, "chatml")
    answers = sum(len(tokenizer.encode(t.content, add_special_tokens=False))
                  for t in CONVERSATIONS["system"] if t.role == "assistant")
    counts = {}
    for eos in ("turn", "last", "all", "none"):
        row = Row("", "", "", "t.jsonl:1", turns=CONVERSATIONS["system"], train_on_eos=eos)
        counts[eos] = sum(label != IGNORE for label in encode_row(tokenizer, fmt, row).labels) - answers
    assert counts == {"turn": 2, "last": 1, "all": 5, "none": 0}


def test_content_is_text_and_roles_to_train(bundled_tokenizer):
    """A control token typed in a message is text, not a turn marker; roles_to_train picks the roles."""
    tokenizer, fmt = chat_tokenizer(bundled_tokenizer, "chatml")
    turns = (Turn("user", "what does <|im_end|> mean?"), Turn("assistant", "It ends a turn."))
    example = encode_row(tokenizer, fmt, Row("", "", "", "t.jsonl:1", turns=turns))
    assert example.input_ids.count(fmt.end_token_id) == 2
    assert trained_spans(tokenizer, example) == ["It ends a turn.<|im_end|>"]
    users = Row("", "", "", "t.jsonl:1", turns=turns, roles_to_train=("user",))
    assert trained_spans(tokenizer, encode_row(tokenizer, fmt, users)) == ["what does <|im_end|> mean?<|im_end|>"]


def test_default_system_message_is_a_system_turn_never_trained(bundled_tokenizer):
    tokenizer = bundled_tokenizer
    fmt = prompt_format(tokenizer, "chatml", "Be brief.")
    example = encode_row(tokenizer, fmt, Row("", "", "", "t.jsonl:1", turns=CONVERSATIONS["plain"]))
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert trained_spans(tokenizer, example) == expected_spans("chatml", CONVERSATIONS["plain"], "turn", False)


def test_loss_is_cross_entropy_over_the_trained_positions_only(bundled_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tutorforge.train import collate, loss_sum

    tokenizer, fmt = chat_tokenizer(bundled_tokenizer, "llama3")
    row = Row("", "", "", "t.jsonl:1", turns=CONVERSATIONS["system"], train_on_eos="all")
    example = encode_row(tokenizer, fmt, row)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    with torch.no_grad():
        loss = loss_sum(model, collate([example], pad_id=0)).item()
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1]
    targets = torch.tensor(example.input_ids[1:])
    per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    trained = torch.tensor([label != IGNORE for label in example.labels[1:]])
    assert 10 < int(trained.sum()) < len(targets) // 2  # masked: most of the conversation is not trained
    assert loss == pytest.approx(per_token[trained].sum().item(), rel=1e-5)
    assert abs(loss - per_token.sum().item()) > 1.0  # the untrained positions would change it


def test_a_base_model_needs_a_chat_template_for_conversations(bundled_tokenizer):
    bundled_tokenizer.chat_template = None  # a base model
    fmt = prompt_format(bundled_tokenizer)
    assert fmt.kind == "alpaca"
    row = Row("", "", "", "data/chats.jsonl:3", turns=CONVERSATIONS["plain"])
    with pytest.raises(UserError, match=r"data/chats.jsonl: a conversation dataset needs a chat template.*"
                                        r"set chat_template: chatml"):
        encode_row(bundled_tokenizer, fmt, row)


def test_jinja_needs_its_text(bundled_tokenizer):
    import copy

    from tutorforge.config import parse

    bare = copy.deepcopy(bundled_tokenizer)
    bare.chat_template = None
    with pytest.raises(UserError, match="chat_template_jinja is not set"):
        prompt_format(bare, "jinja")
    with pytest.raises(UserError, match="both set"):
        prompt_format(bundled_tokenizer, "chatml", chat_template_jinja=GEMMA)
    # a run's tokenizer was saved with the Jinja text it trained with: later stages find it there
    trained = copy.deepcopy(bare)
    prompt_format(trained, "jinja", chat_template_jinja=GEMMA)
    assert prompt_format(trained, "jinja").kind == "chat" and trained.chat_template == GEMMA
    report = parse("base_model: x/y\nadapter: lora\nchat_template: jinja\n", "c.yml")
    assert [p.message for p in report.errors] == ["jinja needs the template's text in chat_template_jinja"]


def test_truncating_a_conversation_drops_it_when_no_trained_token_is_left(bundled_tokenizer):
    from tutorforge.prepare import Lengths

    tokenizer, fmt = chat_tokenizer(bundled_tokenizer, "chatml")
    row = Row("", "", "", "t.jsonl:1", turns=CONVERSATIONS["system"])
    example = encode_row(tokenizer, fmt, row)
    first = next(k for k, label in enumerate(example.labels) if label != IGNORE)  # "24690."
    assert 20 < first < len(example.input_ids) - 10
    dropped = Lengths("truncate", first, 0).fit(example, row)  # ends just before the first answer
    assert isinstance(dropped, Reject) and dropped.kind == "no_trained_tokens"
    kept = Lengths("truncate", first + 1, 0).fit(example, row)
    assert not isinstance(kept, Reject) and kept.labels == example.labels[:first + 1]
    too_long = Lengths("drop", first + 1, 0).fit(example, row)
    assert isinstance(too_long, Reject) and too_long.kind == "too_long"


def _cfg(chat_template=None, *datasets):
    from types import SimpleNamespace

    specs = [SimpleNamespace(path=path, type=type_, chat_template=own) for path, type_, own in datasets]
    return SimpleNamespace(chat_template=chat_template, chat_template_jinja=None, default_system_message=None,
                           datasets=specs)


def test_prepare_names_the_conversation_dataset_a_base_model_cannot_format(bundled_tokenizer):
    from tutorforge.prepare import choose_format

    bundled_tokenizer.chat_template = None  # a base model
    rows = [Row("q", "", "a", "a.jsonl:1"), Row("", "", "", "chats.jsonl:1", turns=CONVERSATIONS["plain"])]
    cfg = _cfg(None, ("a.jsonl", "alpaca", None), ("chats.jsonl", "chat_template", None),
               ("text.jsonl", "completion", None))  # completion needs no template: not named
    with pytest.raises(UserError, match=r"^datasets\[1\] \(chats.jsonl, type: chat_template\): conversations need "
                                        r"a chat template, and this model has none.*set chat_template: chatml"):
        choose_format(cfg, bundled_tokenizer, rows)
    assert choose_format(cfg, bundled_tokenizer, rows[:1]).kind == "alpaca"  # Alpaca rows alone: as before
    cfg.chat_template = "chatml"
    assert choose_format(cfg, bundled_tokenizer, rows).kind == "chat"


def test_a_datasets_own_chat_template_is_used_and_must_agree(bundled_tokenizer):
    from tutorforge.prepare import choose_format

    bundled_tokenizer.chat_template = None
    rows = [Row("", "", "", "chats.jsonl:1", turns=CONVERSATIONS["plain"])]
    fmt = choose_format(_cfg(None, ("chats.jsonl", "chat_template", "chatml")), bundled_tokenizer, rows)
    assert fmt.kind == "chat" and bundled_tokenizer.convert_ids_to_tokens(fmt.end_token_id) == "<|im_end|>"
    with pytest.raises(UserError, match="chat templates chatml, llama3 and the config none"):
        choose_format(_cfg(None, ("a.jsonl", "chat_template", "chatml"), ("b.jsonl", "chat_template", "llama3")),
                      bundled_tokenizer, rows)
    with pytest.raises(UserError, match="chat templates llama3 and the config chatml"):
        choose_format(_cfg("chatml", ("b.jsonl", "chat_template", "llama3")), bundled_tokenizer, rows)
