"""Ollama TEMPLATEs as data: one entry per chat-template family, each with its Go TEMPLATE, its
end-of-turn (stop) tokens and the Python renderer that gives the same text.

    family = make_family("llama3.1", first_rendering, bos="", eos="</s>")   # None: not this shape
    family.template                   # the Go TEMPLATE for the Modelfile, filled in
    family.render(messages)           # what Ollama renders from it (chat.py runs models with it)
    TEMPLATES["gemma"].stops          # the family's own end-of-turn and turn-start markers

ollama.detect_family picks the entry whose renderer reproduces the model's own chat template on
probe conversations; ollama.verify_template then proves the Go TEMPLATE equal to the model's
template with Go itself. Each entry names its two sources: Ollama's template for the family
(ollama/ollama template/*.gotmpl, read for the facts, not copied) and the model's chat template it
reproduces (as llama.cpp keeps it: models/templates/NAME.jinja, llamacpp_tools.model_template).

To add a family: an entry in TEMPLATES (a Go TEMPLATE over .Messages, its stops, a renderer giving
the same text, and `defaults` reading what the model's template writes of its own, a default
system text or a preamble, from its rendering of one user turn), and a test in
tests/test_ollama_templates.py that builds a tokenizer with the model's real template.

Go's text/template has no string functions (no trim, no replace), so a TEMPLATE cannot do what
some chat templates do with whitespace around a message (Llama 3 and Gemma trim it, SmolLM3 drops
an answer's leading newlines) or with reasoning text (Qwen3 strips any <think> block of an earlier
answer: the TEMPLATE strips the empty block that a non-thinking answer starts with; SmolLM3 reads
/think and /no_think in the system text). Conversations without those are rendered exactly; the
renderers here do what the Go TEMPLATE does (the old "llama3" family trims, as it always has).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tutorforge.formatting import ALPACA_PROMPT, alpaca_prompt

EMPTY_THINK = "<think>\n\n</think>\n\n"  # what Qwen3's template writes before a non-thinking answer


@dataclass(frozen=True)
class Family:
    name: str  # the key of its entry in TEMPLATES
    template: str  # the Go TEMPLATE, filled in
    default_system: str | None = None  # the system text the template writes when there is none
    preamble: str = ""  # text the template writes before the system text (Llama 3.1's dates)
    bos: str = ""  # a BOS the template writes itself (the tokenizer does not add one)
    eos: str = ""  # the tokenizer's eos_token, for templates that write it after answers (Mistral)
    system_role: bool = True  # False: the model's template raises on a system turn (Gemma 2)
    bos_token: str = ""  # the tokenizer's BOS text, for templates that write it between turns (Llama 2)

    def render(self, messages: list[dict]) -> str:
        """What Ollama renders from this family's TEMPLATE for `messages` (the tests prove the
        equality with Go itself), for running the model outside Ollama with the same prompt."""
        return self.bos + TEMPLATES[self.name].render(messages, self)


@dataclass(frozen=True)
class Entry:
    label: str  # how errors name the family
    go: str  # the Go TEMPLATE; {default_system}, {preamble}, {eos} and {bos} are filled in
    stops: tuple[str, ...]  # the family's end-of-turn and turn-start markers: Ollama stops there
    render: Callable[[list[dict], Family], str]  # the same text in Python
    defaults: Callable[[str], dict | None] = lambda first: {}  # read from one user turn; None: not it


def make_family(name: str, first: str, *, bos: str = "", eos: str = "", system_role: bool = True,
                bos_token: str = "") -> Family | None:
    """The family `name` filled in from `first`, the model's rendering of one user turn (BOS
    removed), or None when that rendering does not have the family's shape."""
    entry = TEMPLATES[name]
    fields = entry.defaults(first)
    if fields is None:
        return None
    filled = {"default_system": fields.get("default_system") or "", "preamble": fields.get("preamble", ""), "eos": eos,
              "bos": bos_token}
    if any("{{" in text or "}}" in text for text in (*filled.values(), bos)):
        return None  # Go would read it as template code
    template = entry.go
    for key, text in filled.items():
        template = template.replace("{" + key + "}", text)
    return Family(name, bos + template, fields.get("default_system"), fields.get("preamble", ""), bos, eos,
                  system_role, bos_token)


def _between(text: str, start: str, end: str) -> str | None:
    """The text after `start` (which `text` begins with) up to the first `end`; None if not there."""
    if not text.startswith(start) or end not in text[len(start):]:
        return None
    return text[len(start):text.index(end, len(start))]


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """(the first message's content if it is a system turn, the other messages)."""
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


# --- ChatML: Qwen2.5, SmolLM2 (with their default system turn), Qwen3, SmolLM3 ------------------

def _chatml(messages: list[dict], family: Family) -> str:
    text = ""
    if family.default_system is not None and (not messages or messages[0]["role"] != "system"):
        text += f"<|im_start|>system\n{family.default_system}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def _chatml_default(first: str) -> dict | None:
    default = _between(first, "<|im_start|>system\n", "<|im_end|>")
    return None if default is None else {"default_system": default}


def _qwen3(messages: list[dict], family: Family) -> str:
    text = ""
    for m in messages:
        content = m["content"]
        if m["role"] == "assistant" and content.startswith(EMPTY_THINK):
            content = content[len(EMPTY_THINK):]
        text += f"<|im_start|>{m['role']}\n{content}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def _smollm3(messages: list[dict], family: Family) -> str:
    system, rest = _split_system(messages)
    text = f"<|im_start|>system\n{family.preamble}{system or family.default_system}\n\n<|im_end|>\n"
    for m in rest:
        if m["role"] in ("user", "assistant"):
            text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def _smollm3_defaults(first: str) -> dict | None:
    """The metadata block (up to its "## Custom Instructions" heading) and the default instructions."""
    body, heading = _between(first, "<|im_start|>system\n", "<|im_end|>"), "## Custom Instructions\n\n"
    if body is None or heading not in body or not body.endswith("\n\n"):
        return None
    preamble, _, default = body.partition(heading)
    return {"preamble": preamble + heading, "default_system": default[:-2]}


# --- Llama 3 (no preamble) and Llama 3.1-3.3 (its system turn always there, with dates) ---------

def _llama3(messages: list[dict], family: Family) -> str:
    body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                   for m in messages)
    return body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _llama31(messages: list[dict], family: Family) -> str:
    system, rest = _split_system(messages)
    text = f"<|start_header_id|>system<|end_header_id|>\n\n{family.preamble}{system or ''}<|eot_id|>"
    text += "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in rest)
    return text + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _llama31_defaults(first: str) -> dict | None:
    preamble = _between(first, "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>")
    return None if preamble is None else {"preamble": preamble}


# --- Llama 2, Mistral, Gemma 2/3, Phi-3/3.5, Phi-4, Granite 3.x, OLMo 2, Alpaca -------------------

def _llama2(messages: list[dict], family: Family) -> str:
    """Each user turn "[INST] Q [/INST]" after a BOS (the first one's is the tokenizer's), the system
    text in <<SYS>> at the head of the first, each answer " A " and the eos token."""
    system, rest = _split_system(messages)
    text = ""
    for i, m in enumerate(rest):
        if m["role"] == "user":
            block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system is not None and i == 0 else ""
            text += ("" if i == 0 else family.bos_token) + f"[INST] {block}{m['content']} [/INST]"
        elif m["role"] == "assistant":
            text += f" {m['content']} {family.eos}"
    return text


def _llama2_defaults(first: str) -> dict | None:
    """Llama 2's shape: "[INST] Q1 [/INST]", spaces inside the markers (Mistral's has none)."""
    return {} if first.startswith("[INST] Q1 [/INST]") else None


# Mistral's spacing by version: (after "[INST]", before "[/INST]", before an answer)
MISTRAL_SPACING = {"mistral": ("", "", ""), "mistral-v3": (" ", "", " "), "mistral-v1": (" ", " ", "")}


def _mistral(messages: list[dict], family: Family) -> str:
    opened, closed, answer = MISTRAL_SPACING[family.name]
    system, rest = _split_system(messages)
    text = ""
    for i, m in enumerate(rest):
        if m["role"] == "user":
            prefix = f"{system}\n\n" if system is not None and i == len(rest) - 1 else ""
            text += f"[INST]{opened}{prefix}{m['content']}{closed}[/INST]"
        elif m["role"] == "assistant":
            text += answer + m["content"] + family.eos
    return text


def _mistral_go(name: str) -> str:
    """The Go TEMPLATE of a Mistral version: the system text opens the last user turn."""
    opened, closed, answer = MISTRAL_SPACING[name]
    return (_SYSTEM_VARS + "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            "{{ if eq $m.Role \"user\" }}[INST]" + opened + "{{ if and $last $hasSystem }}{{ $system }}\n\n{{ end }}"
            "{{ $m.Content }}" + closed + "[/INST]{{ else if eq $m.Role \"assistant\" }}" + answer
            + "{{ $m.Content }}{eos}{{ end }}{{ end }}")


def _gemma(messages: list[dict], family: Family) -> str:
    system, rest = _split_system(messages)
    text = ""
    for i, m in enumerate(rest):
        role = "model" if m["role"] == "assistant" else m["role"]
        prefix = f"{system}\n\n" if system is not None and i == 0 else ""
        text += f"<start_of_turn>{role}\n{prefix}{m['content']}<end_of_turn>\n"
    return text + "<start_of_turn>model\n"


def _phi3(messages: list[dict], family: Family) -> str:
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages
                   if m["role"] in ("user", "assistant") or (m["role"] == "system" and m["content"]))
    return text + "<|assistant|>\n"


def _phi4(messages: list[dict], family: Family) -> str:
    text = "".join(f"<|im_start|>{m['role']}<|im_sep|>{m['content']}<|im_end|>" for m in messages
                   if m["role"] in ("system", "user", "assistant"))
    return text + "<|im_start|>assistant<|im_sep|>"


def _phi4_defaults(first: str) -> dict | None:
    """Phi-4's shape: the user turn first (no default system turn), closed with no newline."""
    return {} if first.startswith("<|im_start|>user<|im_sep|>Q1<|im_end|><|im_start|>") else None


def _granite(messages: list[dict], family: Family) -> str:
    system, rest = _split_system(messages)
    system = family.default_system if system is None else system
    text = f"<|start_of_role|>system<|end_of_role|>{system}<|end_of_text|>\n"
    text += "".join(f"<|start_of_role|>{m['role']}<|end_of_role|>{m['content']}<|end_of_text|>\n" for m in rest)
    return text + "<|start_of_role|>assistant<|end_of_role|>"


def _granite_defaults(first: str) -> dict | None:
    default = _between(first, "<|start_of_role|>system<|end_of_role|>", "<|end_of_text|>")
    return None if default is None else {"default_system": default}


def _olmo2(messages: list[dict], family: Family) -> str:
    """OLMo 2's Tulu format: each turn its role marker on a line of its own and its text, a system or
    user turn closed by a newline, an answer by the eos token (and a newline unless it is the last message)."""
    text = ""
    for i, m in enumerate(messages):
        if m["role"] in ("system", "user"):
            text += f"<|{m['role']}|>\n{m['content']}\n"
        elif m["role"] == "assistant":
            text += f"<|assistant|>\n{m['content']}{family.eos}" + ("\n" if i < len(messages) - 1 else "")
    return text + "<|assistant|>\n"


def _olmo2_defaults(first: str) -> dict | None:
    """OLMo 2's shape: the user turn first (no default system turn), "<|user|>" on a line of its own."""
    return {} if first.startswith("<|user|>\nQ1\n<|assistant|>\n") else None


def _alpaca(messages: list[dict], family: Family) -> str:
    """Single-turn, as trained: the last user message is the instruction."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return alpaca_prompt(user, "", system)


# Go snippets shared by the TEMPLATEs below: whether message $i is the leading system turn.
_LEAD = '(and (eq $i 0) (eq $m.Role "system"))'
_SYSTEM_VARS = ('{{ $hasSystem := false }}{{ $system := "" }}{{ range $i, $m := .Messages }}{{ if ' + _LEAD
                + ' }}{{ $hasSystem = true }}{{ $system = $m.Content }}{{ end }}{{ end }}')

TEMPLATES: dict[str, Entry] = {
    # Ollama template/chatml.gotmpl; Qwen-Qwen2.5-7B-Instruct and SmolLM2 without their default system
    "chatml": Entry("ChatML", (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"), ("<|im_end|>", "<|im_start|>"), _chatml),
    # Ollama template/chatml.gotmpl; Qwen-Qwen2.5-7B-Instruct ("You are Qwen, ..."), SmolLM2's own
    "chatml-default-system": Entry("ChatML with a default system turn (Qwen2.5, SmolLM2)", (
        "{{- if or (not .Messages) (ne (index .Messages 0).Role \"system\") }}<|im_start|>system\n"
        "{default_system}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"), ("<|im_end|>", "<|im_start|>"), _chatml, _chatml_default),
    # Ollama template/chatml.gotmpl (Ollama's repository has no Qwen3 template); Qwen-Qwen3-0.6B: an
    # earlier answer loses its reasoning block (here: the empty one a non-thinking answer starts with)
    "qwen3": Entry("Qwen3", (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ if and (eq .Role \"assistant\") (ge (len .Content) 19) }}"
        "{{ if eq (slice .Content 0 19) \"" + EMPTY_THINK.replace("\n", "\\n") + "\" }}{{ slice .Content 19 }}"
        "{{ else }}{{ .Content }}{{ end }}{{ else }}{{ .Content }}{{ end }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"), ("<|im_end|>", "<|im_start|>"), _qwen3),
    # Ollama template/chatml.gotmpl; HuggingFaceTB-SmolLM3-3B: its "## Metadata" system block always,
    # the system text as its custom instructions (reasoning mode /think, the template's default)
    "smollm3": Entry("SmolLM3", (
        "<|im_start|>system\n{preamble}" + _SYSTEM_VARS + "{{ if $system }}{{ $system }}{{ else }}"
        "{default_system}{{ end }}\n\n<|im_end|>\n{{ range .Messages }}{{ if eq .Role \"user\" }}<|im_start|>user\n"
        "{{ .Content }}<|im_end|>\n{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n{{ .Content }}"
        "<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n"), ("<|im_end|>", "<|im_start|>"), _smollm3,
        _smollm3_defaults),
    # Ollama template/llama3-instruct.gotmpl; formatting.CHAT_TEMPLATES["llama3"] (Meta Llama 3
    # Instruct); the tokenizer adds <|begin_of_text|> itself (add_bos_token)
    "llama3": Entry("Llama 3", (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"), ("<|eot_id|>", "<|start_header_id|>"),
        _llama3),
    # Ollama template/llama3-instruct.gotmpl; meta-llama-Llama-3.1-8B-Instruct, -3.3-70B- (date_string
    # "26 Jul 2024"), -3.2-3B- (today's date, strftime_now: the date the Modelfile is written)
    "llama3.1": Entry("Llama 3.1-3.3", (
        "<|start_header_id|>system<|end_header_id|>\n\n{preamble}{{ range $i, $m := .Messages }}{{ if " + _LEAD
        + " }}{{ $m.Content }}{{ end }}{{ end }}<|eot_id|>{{ range $i, $m := .Messages }}{{ if not " + _LEAD
        + " }}<|start_header_id|>{{ $m.Role }}<|end_header_id|>\n\n{{ $m.Content }}<|eot_id|>{{ end }}{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"), ("<|eot_id|>", "<|start_header_id|>"), _llama31,
        _llama31_defaults),
    # Ollama template/llama2-chat.gotmpl; Llama 2's chat format as transformers wrote it for
    # meta-llama/Llama-2-*-chat-hf (models/llama/tokenization_llama.py: B_INST, B_SYS): a BOS opens
    # every user turn, the system text sits in <<SYS>> inside the first one
    "llama2": Entry("Llama 2", (
        _SYSTEM_VARS + "{{ $first := true }}{{ range $i, $m := .Messages }}{{ if eq $m.Role \"user\" }}"
        "{{ if not $first }}{bos}{{ end }}[INST] {{ if and $first $hasSystem }}<<SYS>>\n{{ $system }}\n<</SYS>>\n\n"
        "{{ end }}{{ $m.Content }} [/INST]{{ $first = false }}{{ else if eq $m.Role \"assistant\" }} {{ $m.Content }} "
        "{eos}{{ $first = false }}{{ end }}{{ end }}"),
        ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"), _llama2, _llama2_defaults),
    # mistralai-Mistral-Nemo-Instruct-2407 (Nemo, Small 3): no spaces inside the markers, the system
    # text opens the last user turn ("[INST]S\n\nQ[/INST]"), answers end with the eos token
    "mistral": Entry("Mistral (Nemo, Small 3)", _mistral_go("mistral"), ("[INST]", "[/INST]"), _mistral),
    # Ollama template/mistral-instruct.gotmpl; Mistral-7B-Instruct-v0.2/v0.3's template: "[INST] Q[/INST] A</s>"
    "mistral-v3": Entry("Mistral v0.2/v0.3", _mistral_go("mistral-v3"), ("[INST]", "[/INST]"), _mistral),
    # Mistral-7B-Instruct-v0.1's template: "[INST] Q [/INST]A</s>", and no system role (it raises)
    "mistral-v1": Entry("Mistral v0.1", _mistral_go("mistral-v1"), ("[INST]", "[/INST]"), _mistral),
    # Ollama template/gemma3-instruct.gotmpl; Gemma 3 (google/gemma-3-*-it): the system text opens
    # the first user turn; google-gemma-2-2b-it raises on a system turn ("System role not supported")
    "gemma": Entry("Gemma 2/3", (
        "{{ range $i, $m := .Messages }}{{ if not " + _LEAD + " }}<start_of_turn>"
        "{{ if eq $m.Role \"assistant\" }}model{{ else }}{{ $m.Role }}{{ end }}\n"
        "{{ if and (eq $i 1) (eq (index $.Messages 0).Role \"system\") }}{{ (index $.Messages 0).Content }}\n\n"
        "{{ end }}{{ $m.Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n"),
        ("<end_of_turn>", "<start_of_turn>"), _gemma),
    # Ollama template/phi-3.gotmpl (and phi-3.json's stops); microsoft-Phi-3.5-mini-instruct
    "phi3": Entry("Phi-3/3.5", (
        "{{ range .Messages }}{{ if eq .Role \"system\" }}{{ if .Content }}<|system|>\n{{ .Content }}<|end|>\n"
        "{{ end }}{{ else if eq .Role \"user\" }}<|user|>\n{{ .Content }}<|end|>\n{{ else if eq .Role \"assistant\" }}"
        "<|assistant|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n"),
        ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>"), _phi3),
    # Ollama's library phi4 (its Modelfile's TEMPLATE and stops <|im_start|>, <|im_end|>, <|im_sep|>: the
    # ollama/ollama repository has no phi-4.gotmpl); microsoft/phi-4's chat_template, which writes
    # nothing between turns where Ollama's writes newlines: the TEMPLATE follows the model's
    "phi4": Entry("Phi-4", (
        "{{ range .Messages }}{{ if or (eq .Role \"system\") (eq .Role \"user\") (eq .Role \"assistant\") }}"
        "<|im_start|>{{ .Role }}<|im_sep|>{{ .Content }}<|im_end|>{{ end }}{{ end }}<|im_start|>assistant<|im_sep|>"),
        ("<|im_end|>", "<|im_start|>", "<|im_sep|>"), _phi4, _phi4_defaults),
    # Ollama template/granite-instruct.gotmpl is the older "Question:/Answer:" format, so the model's
    # own is the source: ibm-granite-granite-3.3-2B-Instruct, with its default system text
    # ("Knowledge Cutoff Date: April 2024. Today's Date: <today>. ...") when there is none
    "granite": Entry("Granite 3.x", (
        "<|start_of_role|>system<|end_of_role|>" + _SYSTEM_VARS + "{{ if $hasSystem }}{{ $system }}{{ else }}"
        "{default_system}{{ end }}<|end_of_text|>\n{{ range $i, $m := .Messages }}{{ if not " + _LEAD + " }}"
        "<|start_of_role|>{{ $m.Role }}<|end_of_role|>{{ $m.Content }}<|end_of_text|>\n{{ end }}{{ end }}"
        "<|start_of_role|>assistant<|end_of_role|>"), ("<|end_of_text|>", "<|start_of_role|>"), _granite,
        _granite_defaults),
    # The ollama/ollama repository has no OLMo 2 template (its zephyr.gotmpl, the nearest, closes every turn),
    # so the model's own is the source: allenai/OLMo-2-1124-7B-Instruct's chat_template (Tulu's format), its
    # BOS first (bos_token, which the tokenizer does not add: Family.bos), <|system|>, <|user|> and
    # <|assistant|> as plain text on a line of their own, each answer closed by the eos token <|endoftext|>
    "olmo2": Entry("OLMo 2", (
        "{{ range $i, $m := .Messages }}{{ if eq $m.Role \"system\" }}<|system|>\n{{ $m.Content }}\n"
        "{{ else if eq $m.Role \"user\" }}<|user|>\n{{ $m.Content }}\n{{ else if eq $m.Role \"assistant\" }}"
        "<|assistant|>\n{{ $m.Content }}{eos}{{ if lt $i (len (slice $.Messages 1)) }}\n{{ end }}{{ end }}{{ end }}"
        "<|assistant|>\n"), ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"), _olmo2, _olmo2_defaults),
    # Ollama template/alpaca.gotmpl; the Stanford Alpaca prompt (formatting.ALPACA_PROMPT), single-turn
    "alpaca": Entry("Alpaca", (
        "{{ if .System }}{{ .System }}\n\n{{ end }}"
        + ALPACA_PROMPT.format(ctx="", instruction="{{ .Prompt }}", input_block="")), ("### Instruction:",),
        _alpaca),
}

# Each family's Go TEMPLATE as written above ({default_system}, {preamble}, {eos} not filled in).
GO_TEMPLATES: dict[str, str] = {name: entry.go for name, entry in TEMPLATES.items()}


def supported() -> str:
    """The families, named for an error message."""
    return ", ".join(entry.label for entry in TEMPLATES.values())
