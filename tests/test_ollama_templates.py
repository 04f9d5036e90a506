"""ollama_templates.py: for every family, a tokenizer with a real model's chat template is recognised,
and its Ollama TEMPLATE rendered by Go's own text/template equals that chat template byte for byte
on conversations of one to three user turns, with and without a system turn."""
from __future__ import annotations

import datetime
import re

import pytest

from tutorforge.errors import UserError
from tutorforge.formatting import CHAT_TEMPLATES
from tutorforge.go_template import go_renderer
from tutorforge.ollama import family_for, hf_render, modelfile, parse_modelfile, prompt_template, verify_template
from tutorforge.ollama_templates import EMPTY_THINK, TEMPLATES

LLAMA3 = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

# A template written here that renders as Gemma 3's does (llama.cpp's models/templates keeps Gemma 2's
# only): the BOS, a system text opening the first user turn after a blank line, the assistant's role
# named "model", content trimmed, each turn closed by <end_of_turn> and a newline.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}{% set turns = messages %}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set ns.prefix = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% endif %}"
    "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ ns.prefix if loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# A template written here for Phi-4's chat format (microsoft/phi-4's tokenizer_config.json; llama.cpp's
# models/templates keeps none): each system, user or assistant turn is <|im_start|>, the role,
# <|im_sep|>, the content and <|im_end|>, with nothing between turns and no default system turn; the
# answer starts after <|im_start|>assistant<|im_sep|>.
PHI4_TEMPLATE = (
    "{% for turn in messages %}{% if turn['role'] in ('system', 'user', 'assistant') %}"
    "{{ '<|im_start|>' ~ turn['role'] ~ '<|im_sep|>' ~ turn['content'] ~ '<|im_end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")
# Llama 2's chat format (transformers models/llama/tokenization_llama.py B_INST, E_INST, B_SYS, E_SYS;
# llama.cpp's models/templates keeps none), written here.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = '<<SYS>>\\n' + messages[0]['content'] + "
    "'\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
    "(system if loop.first else '') + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + "
    "' ' + eos_token }}{% endif %}{% endfor %}")
# Mistral-7B-Instruct-v0.1's format, written here (llama.cpp's models/templates keeps none): a BOS, then
# "[INST] Q [/INST]" and the answer with the eos token right after; any role but user and assistant raises.
MISTRAL_V1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' ~ m['content'] ~ ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] ~ eos_token }}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
# Mistral-7B-Instruct-v0.2/v0.3's format, written here: "[INST] Q[/INST]", each answer after a space
# with the eos token, an optional leading system text opening the last user turn.
MISTRAL_V3_TEMPLATE = (
    "{% set ns = namespace(system=none) %}{% set turns = messages %}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% endif %}{{ bos_token }}{% for m in turns %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' ~ (ns.system ~ '\n\n' if loop.last and ns.system is not none else '') ~ m['content'] ~ '[/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' ~ m['content'] ~ eos_token }}{% endif %}{% endfor %}")
# OLMo 2's chat format (allenai/OLMo-2-1124-7B-Instruct's tokenizer_config.json; llama.cpp's
# models/templates keeps none), written here: the BOS first (its tokenizer adds none), then each system,
# user or assistant turn as its role marker (plain text, not special tokens) and a newline, the content,
# then a newline, or for an answer the eos token, and a newline unless it is the last message; the
# generation prompt after the last message.
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' or m['role'] == 'user' %}"
    "{{ '<|' ~ m['role'] ~ '|>\n' ~ m['content'] ~ '\n' }}{% elif m['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' ~ m['content'] ~ eos_token }}{% if not loop.last %}{{ '\n' }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}")
WRITTEN_HERE = {"GEMMA3": GEMMA3_TEMPLATE, "PHI4": PHI4_TEMPLATE, "LLAMA2": LLAMA2_TEMPLATE,
                "MISTRAL_V1": MISTRAL_V1_TEMPLATE, "MISTRAL_V3": MISTRAL_V3_TEMPLATE, "OLMO2": OLMO2_TEMPLATE}

# model -> (its chat template: llama.cpp's models/templates name, a CHAT_TEMPLATES name, GEMMA3, PHI4, or
# None for the bundled tokenizer's own; the turn markers added as special tokens; (bos, eos, whether
# the tokenizer adds the BOS itself) or None to keep the bundled tokenizer's; the family; the tokens
# that end an answer, each of which must be a PARAMETER stop)
MODELS = {
    "smollm2": (None, (), None, "chatml-default-system", ("<|im_end|>", "<|im_start|>")),
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct", (), None, "chatml-default-system", ("<|im_end|>", "<|im_start|>")),
    "chatml": ("chatml", (), None, "chatml", ("<|im_end|>", "<|im_start|>")),
    "qwen3": ("Qwen-Qwen3-0.6B", (), None, "qwen3", ("<|im_end|>", "<|im_start|>")),
    "smollm3": ("HuggingFaceTB-SmolLM3-3B", (), None, "smollm3", ("<|im_end|>", "<|im_start|>")),
    "llama3": ("llama3", LLAMA3, ("<|begin_of_text|>", None, True), "llama3", ("<|eot_id|>", "<|start_header_id|>")),
    "llama3.1": ("meta-llama-Llama-3.1-8B-Instruct", LLAMA3, ("<|begin_of_text|>", None, True), "llama3.1",
                 ("<|eot_id|>", "<|start_header_id|>")),
    "llama3.2": ("meta-llama-Llama-3.2-3B-Instruct", LLAMA3, ("<|begin_of_text|>", None, True), "llama3.1",
                 ("<|eot_id|>", "<|start_header_id|>")),
    "llama3.3": ("meta-llama-Llama-3.3-70B-Instruct", LLAMA3, ("<|begin_of_text|>", None, True), "llama3.1",
                 ("<|eot_id|>", "<|start_header_id|>")),
    "llama2": ("LLAMA2", ("<s>", "</s>"), ("<s>", "</s>", True), "llama2", ("</s>", "[INST]")),
    "mistral-v0.1": ("MISTRAL_V1", ("<s>", "</s>"), ("<s>", "</s>", True), "mistral-v1", ("</s>", "[INST]")),
    "mistral-v0.3": ("MISTRAL_V3", ("[INST]", "[/INST]", "<s>", "</s>"), ("<s>", "</s>", True), "mistral-v3",
                     ("</s>", "[INST]")),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407", ("[INST]", "[/INST]", "<s>", "</s>"),
                     ("<s>", "</s>", True), "mistral", ("</s>", "[INST]")),
    # Gemma 2 with the bundled tokenizer's BOS, which it does not add: the TEMPLATE writes it
    "gemma2": ("google-gemma-2-2b-it", ("<start_of_turn>", "<end_of_turn>"), None, "gemma",
               ("<end_of_turn>", "<start_of_turn>")),
    "gemma3": ("GEMMA3", ("<bos>", "<start_of_turn>", "<end_of_turn>"), ("<bos>", None, True), "gemma",
               ("<end_of_turn>", "<start_of_turn>")),
    "phi3.5": ("microsoft-Phi-3.5-mini-instruct", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), None,
               "phi3", ("<|end|>", "<|user|>")),
    # Phi-4's tokenizer: bos <|endoftext|> (which it does not add), eos <|im_end|>
    "phi4": ("PHI4", ("<|im_start|>", "<|im_sep|>", "<|im_end|>"), ("<|endoftext|>", "<|im_end|>", False), "phi4",
             ("<|im_end|>", "<|im_start|>", "<|im_sep|>")),
    # OLMo 2's tokenizer: bos = eos = <|endoftext|>, which its template writes first (the tokenizer adds none)
    "olmo2": ("OLMO2", (), ("<|endoftext|>", "<|endoftext|>", False), "olmo2", ("<|endoftext|>", "<|user|>")),
    "granite3.3": ("ibm-granite-granite-3.3-2B-Instruct", ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
                   None, "granite", ("<|end_of_text|>", "<|start_of_role|>")),
}
NO_SYSTEM_ROLE = {"gemma2", "mistral-v0.1"}  # their templates raise on a system turn

ANSWER = "Ordered, changeable:\n```python\nxs = [1, 2]\nprint(xs[0])  # 1\n```"
TURNS = [{"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": ANSWER},
         {"role": "user", "content": "And a tuple — café 🐍?\tBriefly."}, {"role": "assistant", "content": "`(1, 2)`."},
         {"role": "user", "content": "Which is faster?\n\nx = (1, 2)"}]
SYSTEM = {"role": "system", "content": "You are a patient Python tutor."}
CONVERSATIONS = [system + TURNS[:n] for n in (1, 3, 5) for system in ([], [SYSTEM])]  # 1-3 user turns


@pytest.fixture(scope="module")
def go_render():
    """Go's own text/template, built from tutorforge/gotemplate/main.go with the machine's Go."""
    render = go_renderer()
    assert render, "Go is needed to verify Ollama templates: apt-get install golang-go (.ci/run does)"
    return lambda template, messages: render(template, {"messages": messages})


def model_tokenizer(bundled_tokenizer_dir, model: str):
    """The bundled tokenizer with `model`'s real chat template and turn markers (special tokens)."""
    from transformers import AutoTokenizer

    from tutorforge.llamacpp_tools import model_template

    template, markers, special, _, _ = MODELS[model]
    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": list(markers)})
    if special:
        bos, eos, adds_bos = special
        tokenizer.bos_token, tokenizer.add_bos_token = bos, adds_bos
        if eos:
            tokenizer.eos_token = eos
    if template in WRITTEN_HERE:
        tokenizer.chat_template = WRITTEN_HERE[template]
    elif template in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[template]
    elif template:
        tokenizer.chat_template = model_template(template)
    return tokenizer


def conversations(model: str) -> list[list[dict]]:
    return [c for c in CONVERSATIONS if model not in NO_SYSTEM_ROLE or c[0]["role"] != "system"]


@pytest.mark.parametrize("model", MODELS)
def test_detection_picks_the_family(bundled_tokenizer_dir, model):
    tokenizer = model_tokenizer(bundled_tokenizer_dir, model)
    family = family_for(tokenizer, None, None)
    assert family.name == MODELS[model][3]
    assert family.system_role == (model not in NO_SYSTEM_ROLE)


@pytest.mark.parametrize("model", MODELS)
def test_go_renders_the_models_own_template(go_render, bundled_tokenizer_dir, model):
    """The Modelfile's TEMPLATE, rendered by Go, and the family's Python renderer (chat.py's) both
    give exactly what the model's chat template gives, on 1-3 user turns with and without a system turn."""
    tokenizer = model_tokenizer(bundled_tokenizer_dir, model)
    family = family_for(tokenizer, None, None)
    checked = conversations(model)
    assert len(checked) == (3 if model in NO_SYSTEM_ROLE else 6)
    for messages in checked:
        expected = hf_render(tokenizer, messages)
        assert go_render(family.template, messages) == expected, (model, len(messages))
        assert family.render(messages) == expected, (model, len(messages))
        assert expected.count("Which is faster?") == (messages[-1] is TURNS[4])  # the third user turn


@pytest.mark.parametrize("model", MODELS)
def test_the_modelfile_stops_at_every_end_of_turn_token(bundled_tokenizer_dir, model):
    tokenizer = model_tokenizer(bundled_tokenizer_dir, model)
    fmt, family, stops = prompt_template(tokenizer, None, None)
    text = modelfile("m.gguf", family.template, system=fmt.system, stops=stops, num_ctx=512, temperature=0.0,
                     license=None)
    parsed = parse_modelfile(text)
    assert parsed["TEMPLATE"] == family.template
    stop_lines = {value for name, value in parsed["PARAMETER"] if name == "stop"}  # pyright: ignore[reportGeneralTypeIssues]
    assert {f'"{token}"' for token in MODELS[model][4]} <= stop_lines
    assert {f'"{token}"' for token in TEMPLATES[family.name].stops} <= stop_lines
    assert tokenizer.convert_ids_to_tokens(fmt.end_token_id) == MODELS[model][4][0]  # what ends an answer


@pytest.mark.parametrize("system", [None, "You are a concise Python tutor."])
@pytest.mark.parametrize("model", MODELS)
def test_package_time_verification_passes(go_render, bundled_tokenizer_dir, model, system):
    from tutorforge.ollama import VERIFY_CONVERSATIONS, VERIFY_PROMPTS

    tokenizer = model_tokenizer(bundled_tokenizer_dir, model)
    if system and model in NO_SYSTEM_ROLE:
        label = TEMPLATES[MODELS[model][3]].label
        with pytest.raises(UserError, match=rf"default_system_message is set, but this model's chat template "
                                            rf"\({re.escape(label)}\) refuses a system turn \(.*supported.*\)"):
            prompt_template(tokenizer, None, system)
        return
    fmt, family, _ = prompt_template(tokenizer, None, system)
    checked = verify_template(tokenizer, fmt, family, render=lambda t, d: go_render(t, d["messages"]))
    assert checked == len(VERIFY_PROMPTS) + len(VERIFY_CONVERSATIONS)  # Gemma 2's without their system turns


def test_a_qwen3_answer_with_its_empty_think_block_is_rendered_as_qwen3_renders_it(go_render, bundled_tokenizer_dir):
    """A Qwen3 model trained without thinking answers "<think>\\n\\n</think>\\n\\n..."; its template drops
    that block from an earlier answer, and so do the TEMPLATE and chat's renderer."""
    tokenizer = model_tokenizer(bundled_tokenizer_dir, "qwen3")
    family = family_for(tokenizer, None, None)
    messages = [SYSTEM, TURNS[0], {"role": "assistant", "content": EMPTY_THINK + ANSWER}, TURNS[2]]
    expected = hf_render(tokenizer, messages)
    assert "<think>" not in expected
    assert go_render(family.template, messages) == family.render(messages) == expected
    chatml = family_for(model_tokenizer(bundled_tokenizer_dir, "chatml"), None, None)
    assert go_render(chatml.template, messages).count("<think>") == 1  # control: plain ChatML keeps it


def test_llama_3_1_and_3_2_write_their_dates(bundled_tokenizer_dir):
    """Llama 3.1 and 3.3 write "Today Date: 26 Jul 2024" (their date_string default); Llama 3.2 today's
    date (strftime_now): the TEMPLATE holds the date the Modelfile is written."""
    template = family_for(model_tokenizer(bundled_tokenizer_dir, "llama3.1"), None, None).template
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in template
    today = datetime.date.today().strftime("%d %b %Y")
    llama32 = family_for(model_tokenizer(bundled_tokenizer_dir, "llama3.2"), None, None)
    assert f"Today Date: {today}\n\n" in llama32.template


def test_the_default_system_texts_are_the_models(bundled_tokenizer_dir):
    granite = family_for(model_tokenizer(bundled_tokenizer_dir, "granite3.3"), None, None)
    today = datetime.date.today().strftime("%B %d, %Y")
    assert granite.default_system == (f"Knowledge Cutoff Date: April 2024. Today's Date: {today}. You are Granite, "
                                      "developed by IBM. You are a helpful AI assistant.")
    smollm3 = family_for(model_tokenizer(bundled_tokenizer_dir, "smollm3"), None, None)
    assert smollm3.preamble == ("## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n"
                                "## Custom Instructions\n\n")
    assert smollm3.default_system is not None and smollm3.default_system.startswith(
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role")
    qwen = family_for(model_tokenizer(bundled_tokenizer_dir, "qwen2.5"), None, None)
    assert qwen.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_a_template_of_no_known_family_is_refused(bundled_tokenizer):
    """Vicuna's "USER: ... ASSISTANT:" format: refused, naming the families and how to add one."""
    bundled_tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}{% elif m['role'] == 'user' %}"
        "{{ 'USER: ' + m['content'] + '\n' }}{% else %}{{ 'ASSISTANT: ' + m['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
    with pytest.raises(UserError) as caught:
        family_for(bundled_tokenizer, None, None)
    message = str(caught.value)
    assert "renders a user turn as 'USER: Q1\\nASSISTANT:'" in message
    for label in ("ChatML", "Qwen3", "SmolLM3", "Llama 3.1-3.3", "Llama 2", "Mistral", "Gemma 2/3", "Phi-3/3.5",
                  "Phi-4", "Granite 3.x", "OLMo 2", "Alpaca"):
        assert label in message
    assert "TEMPLATES in src/tutorforge/ollama_templates.py" in message and "stop tokens" in message


def test_family_for_reads_the_configs_template_without_a_model(bundled_tokenizer):
    """From the config's values alone (chat_template: jinja with chat_template_jinja), as validate
    and plan call it before training."""
    from tutorforge.llamacpp_tools import model_template

    family = family_for(bundled_tokenizer, "jinja", None, chat_template_jinja=model_template("Qwen-Qwen3-0.6B"))
    assert family.name == "qwen3"
    assert family_for(bundled_tokenizer, "alpaca", "Be brief.").name == "alpaca"


@pytest.mark.parametrize("model", ["mistral-nemo", "gemma2", "qwen3", "granite3.3", "phi4", "olmo2"])
def test_chat_gets_the_training_ids_of_a_conversation(bundled_tokenizer_dir, model):
    """chat.py's ChatModel.prompt_ids with the family's renderer: formatting.encode_messages of the
    same messages with the generation prompt (a BOS once: the tokenizer's, or the template's own)."""
    from test_chat import TokenizerLlama
    from tutorforge.chat import ChatModel
    from tutorforge.chat_encoding import control_tokens
    from tutorforge.formatting import encode_messages, prompt_messages

    tokenizer = model_tokenizer(bundled_tokenizer_dir, model)
    fmt, family, stops = prompt_template(tokenizer, None, None)
    chat = ChatModel(TokenizerLlama(tokenizer), family, stops, fmt.system, "test")  # pyright: ignore[reportArgumentType]
    chat.__dict__.update(markers=control_tokens(tokenizer),
                         add_bos=tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id)
    history = conversations(model)[-1]
    ids = chat.prompt_ids(chat.messages_for(history, None))
    assert ids == encode_messages(tokenizer, fmt, prompt_messages(fmt, history[:-1], history[-1]["content"]))
    if model in {"mistral-nemo", "gemma2"}:  # Mistral's tokenizer adds it; Gemma 2's template writes it
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    if model == "olmo2":  # its template writes the BOS, which is its eos too: once, and after each answer
        answers = sum(m["role"] == "assistant" for m in history)
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1 + answers == 3


@pytest.mark.parametrize("model, system", [("smollm3", "Be brief. /no_think"), ("llama3.1", "Be brief.\n")])
def test_a_system_text_the_template_alters_is_refused_early(go_render, bundled_tokenizer_dir, model, system):
    """SmolLM3's template reads /no_think out of the system text, Llama 3.1's trims it; Go cannot:
    refused before training (family_for), where package-time verification would refuse it later."""
    tokenizer = model_tokenizer(bundled_tokenizer_dir, model)
    messages = [{"role": "system", "content": system}, TURNS[0]]
    family = family_for(model_tokenizer(bundled_tokenizer_dir, model), None, None)
    assert go_render(family.template, messages) != hf_render(tokenizer, messages)  # what would go wrong
    with pytest.raises(UserError, match=r"renders this system text in a way an Ollama TEMPLATE cannot"):
        family_for(tokenizer, None, system)
    assert family_for(tokenizer, None, "Be brief.").name == MODELS[model][3]
