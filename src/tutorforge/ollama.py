"""An Ollama Modelfile whose TEMPLATE reproduces the training prompt format exactly.

    tutorforge package outputs/python-tutor-smollm2      # -> outputs/python-tutor-smollm2/gguf/Modelfile

The prompt format is recognised by rendering probe conversations with the model's own chat template
(or the Alpaca formatter) and matching them against the known families (ollama_templates.py: ChatML,
Qwen3, SmolLM3, Llama 3 and 3.1-3.3, Llama 2, Mistral, Gemma 2/3, Phi-3, Phi-4, Granite 3, OLMo 2,
Alpaca); a template that matches none is refused, early too (`family_for`, from the tokenizer alone,
for validate and plan).
The family's Ollama TEMPLATE (Go text/template) is then written, and verified: rendered by Go itself (go_template.py)
it must equal the training-time formatter byte for byte, on single-turn prompts and (chat families)
conversations of several turns, with and without a system turn. Deploying it to an Ollama server is
ollama_rest.py.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.errors import UserError
from tutorforge.formatting import PromptFormat
from tutorforge.ollama_templates import EMPTY_THINK, GO_TEMPLATES, TEMPLATES, Family, make_family, supported

if TYPE_CHECKING:
    from tutorforge.rundir import RunDir

log = logging.getLogger(__name__)

# The Modelfile's first line: it says who wrote the file, so that package rewrites only its own
# Modelfile and never one a user wrote (Ollama reads lines starting with # as comments).
MODELFILE_HEADER = "# Modelfile written by tutorforge package (rewritten on each export: edit a copy)"


def hf_render(tokenizer, messages: list[dict]) -> str:
    """The training-time text for a conversation, as llama.cpp will see it (a BOS the tokenizer adds
    by itself is left to the tokenizer, as Ollama does)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


PROBES = [  # conversations whose rendering tells the families apart
    [{"role": "user", "content": "Q1"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "Q2"}],  # Mistral: the system text opens the last user turn only
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": EMPTY_THINK + "A1"},  # Qwen3 drops it
     {"role": "user", "content": "Q2"}],
]


def _render_probes(tokenizer) -> tuple[list[str | None], str | None]:
    """The model's rendering of each probe (None for one with a system turn that its template
    refuses), and the template's words when it refuses one."""
    import jinja2

    rendered: list[str | None] = []
    refusal = None
    for probe in PROBES:
        try:
            rendered.append(hf_render(tokenizer, probe))
        except jinja2.TemplateError as exc:
            if probe[0]["role"] != "system":
                raise UserError(f"the model's chat template fails on a plain conversation of {len(probe)} "
                                f"messages: {exc}; tutorforge cannot train or package with it: fix the "
                                "template (chat_template_jinja) or name one (chat_template: chatml)") from exc
            rendered.append(None)
            refusal = str(exc)
    return rendered, refusal


def detect_family(tokenizer, fmt: PromptFormat) -> Family:
    """The family whose renderer reproduces the model's own template on every probe conversation
    (a BOS the template writes itself, where the tokenizer adds none, is part of the TEMPLATE). A
    template that matches none, or refuses a system turn while fmt.system is set, is refused."""
    if fmt.kind == "alpaca":
        return make_family("alpaca", "") or Family("alpaca", GO_TEMPLATES["alpaca"])
    rendered, refusal = _render_probes(tokenizer)
    family = _matching_family(tokenizer, rendered, system_role=refusal is None)
    if family is None:
        raise UserError("the model's chat template is not one tutorforge can write as an Ollama TEMPLATE "
                        f"(it renders a user turn as {(rendered[0] or '')[:80]!r}); supported families: "
                        f"{supported()}. To add one, add an entry to TEMPLATES in src/tutorforge/"
                        "ollama_templates.py (its Go TEMPLATE, its end-of-turn stop tokens, a Python renderer "
                        "giving the same text as the model's template) and a test in "
                        "tests/test_ollama_templates.py with the model's real template; or train with a "
                        "template tutorforge knows (chat_template: chatml, llama3 or alpaca)")
    if fmt.system and not family.system_role:
        raise UserError(f"default_system_message is set, but this model's chat template "
                        f"({TEMPLATES[family.name].label}) refuses a system turn ({refusal}); remove "
                        "default_system_message (put its text in the instructions), or use a model whose "
                        "template has a system role")
    probe = [{"role": "system", "content": fmt.system or ""}, {"role": "user", "content": "Q1"}]
    if fmt.system and family.render(probe) != hf_render(tokenizer, probe):
        raise UserError(f"default_system_message {fmt.system[:60]!r}: the model's chat template "
                        f"({TEMPLATES[family.name].label}) renders this system text in a way an Ollama TEMPLATE "
                        "cannot (Go templates have no string functions: SmolLM3 reads /think and /no_think in "
                        "it, Llama 3 and Gemma trim spaces around it); remove those from default_system_message")
    return family


def _matching_family(tokenizer, rendered: list[str | None], *, system_role: bool) -> Family | None:
    """The first family in TEMPLATES whose renderer gives `rendered` (the model's renderings of
    PROBES, None where it refused), with no BOS in front or the tokenizer's BOS text."""
    bos = tokenizer.bos_token or ""
    prefixes = [""] + ([bos] if bos and all(r.startswith(bos) for r in rendered if r is not None) else [])
    first = rendered[0] or ""
    for prefix in prefixes:
        for name in (name for name in TEMPLATES if name != "alpaca"):
            family = make_family(name, first[len(prefix):], bos=prefix, eos=tokenizer.eos_token or "",
                                 system_role=system_role, bos_token=bos)
            if family and all(r is None or family.render(p) == r for p, r in zip(PROBES, rendered, strict=True)):
                return family
    return None


def family_for(tokenizer, chat_template: str | None, system: str | None, *,
               chat_template_jinja: str | None = None) -> Family:
    """The Ollama family of the prompt format these config values give (chat_template,
    default_system_message, chat_template_jinja), from the tokenizer alone: no GGUF, no weights, so
    `validate` and `plan` can refuse before training a model whose template cannot be packaged
    (the UserError of detect_family)."""
    from tutorforge.formatting import prompt_format

    return detect_family(tokenizer, prompt_format(tokenizer, chat_template, system,
                                                  chat_template_jinja=chat_template_jinja))


def prompt_template(tokenizer, chat_template: str | None, system: str | None) -> tuple[PromptFormat, Family, list[str]]:
    """The training prompt format for these config values, its Ollama family, and its stop tokens."""
    from tutorforge.formatting import prompt_format

    fmt = prompt_format(tokenizer, chat_template, system)
    family = detect_family(tokenizer, fmt)
    return fmt, family, stop_tokens(tokenizer, fmt, family)


def stop_tokens(tokenizer, fmt: PromptFormat, family: Family) -> list[str]:
    """Every token that ends a turn in this format: Ollama must stop there."""
    stops = [tokenizer.convert_ids_to_tokens(fmt.end_token_id)]
    extra = TEMPLATES[family.name].stops  # the family's markers (ollama_templates.py)
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops + [s for s in extra if s not in stops]


def modelfile(gguf_name: str, template: str, *, system: str | None, stops: list[str], num_ctx: int,
              temperature: float, license: str | None, repeat_penalty: float = 1.1,
              repeat_last_n: int = 64) -> str:
    """The Modelfile text (Ollama's documented syntax: FROM, TEMPLATE, SYSTEM, PARAMETER, LICENSE)."""
    for name, text in (("TEMPLATE", template), ("SYSTEM", system or ""), ("LICENSE", license or "")):
        if '"""' in text:
            raise UserError(f'the {name} text contains """, which a Modelfile cannot hold')
    lines = [MODELFILE_HEADER, f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER num_ctx {num_ctx}", f"PARAMETER temperature {temperature:g}",
              f"PARAMETER repeat_penalty {float(repeat_penalty)}", f"PARAMETER repeat_last_n {repeat_last_n}"]
    if license:
        lines.append(f'LICENSE """{license}"""')
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, object]:
    """FROM, TEMPLATE, SYSTEM, LICENSE and the PARAMETERs of a Modelfile written by `modelfile`."""
    parameters: list[tuple[str, ...]] = []  # (name, value) of each PARAMETER line, in order
    out: dict[str, object] = {"PARAMETER": parameters}
    rest = text
    while rest.strip():
        rest = rest.lstrip("\n")
        if rest.startswith("#"):  # a comment line
            rest = rest.partition("\n")[2]
            continue
        word, _, after = rest.partition(" ")
        if after.startswith('"""'):
            value, _, rest = after[3:].partition('"""')
        else:
            value, _, rest = after.partition("\n")
        if word == "PARAMETER":
            parameters.append(tuple(value.split(" ", 1)))
        else:
            out[word] = value
    return out


def base_license(model_dir: Path) -> str | None:
    """The base model's license, when known: its GGUF metadata, or `license:` in its model card."""
    import re

    from tutorforge.gguf_tokenizer import gguf_field
    from tutorforge.models import source_gguf

    source = source_gguf(model_dir)
    if source and (license := gguf_field(source, "general.license")) is not None:
        return str(license)
    card = model_dir / "README.md"
    match = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.M) if card.is_file() else None
    return match.group(1) if match else None


def package(run: RunDir, gguf_path: Path | None = None) -> Path:
    """Write the Modelfile of a finished run beside its GGUF (default: the config's
    tutorforge.ollama.quantization); returns its path. Refused for a GGUF that failed its
    verification or was exported from another model than the run's, and where a Modelfile that
    tutorforge did not write is in the way."""
    from tutorforge.models import resolve_base_model
    from tutorforge.tokenizer import run_tokenizer

    cfg, settings = run.cfg, run.cfg.tutorforge.ollama
    gguf_path = gguf_path or run.gguf()
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF; run `tutorforge export {run.path}` first")
    model_dir, trained = run.tuned()
    _check_exported(gguf_path, run, model_dir, trained)
    path = gguf_path.parent / "Modelfile"
    if path.exists() and not _ours(path):
        raise UserError(f"{path}: a Modelfile that tutorforge did not write is in the way; tutorforge never "
                        "overwrites it. Move it away (or rename it) and run `tutorforge package` again")
    tokenizer = run_tokenizer(model_dir, trained, trust_remote_code=cfg.trust_remote_code)  # as trained
    fmt, family, stops = prompt_template(tokenizer, cfg.chat_template, cfg.default_system_message)
    text = modelfile(gguf_path.name, family.template, system=fmt.system, stops=stops,
                     num_ctx=settings.num_ctx or cfg.sequence_len, temperature=settings.temperature,
                     repeat_penalty=settings.repeat_penalty, repeat_last_n=settings.repeat_last_n,
                     license=settings.license or base_license(resolve_base_model(cfg.base_model).path))
    from tutorforge.fsutil import atomic_write

    checked = verify_template(tokenizer, fmt, family)
    with atomic_write(path) as fh:
        fh.write(text)
    _record(path, gguf_path)
    log.info("package: %s (%s template, %s)", path, family.name, gguf_path.name)
    if checked:
        log.info("package: TEMPLATE rendered by Go's text/template equals the training prompt on %d "
                 "conversations", checked)
    else:
        log.warning("package: TEMPLATE not verified: Go is not installed (apt-get install golang-go); "
                    "Ollama renders it with Go's text/template")
    return path


def _ours(modelfile_path: Path) -> bool:
    with modelfile_path.open(encoding="utf-8", errors="replace") as fh:
        return fh.readline().rstrip("\n") == MODELFILE_HEADER


def _check_exported(gguf_path: Path, run: RunDir, model_dir: Path, trained: Path | None) -> None:
    """A GGUF that tutorforge exported must have passed its verification and come from the run's
    current trained model: base + adapter/, or model/ of a full fine-tune (a GGUF from elsewhere,
    with no export record, is the user's to vouch for)."""
    from tutorforge import outputs

    stage = ((outputs.read_record(gguf_path.parent) or {}).get("stages") or {}).get("export")
    if not stage or gguf_path.name not in stage.get("files", {}):
        return
    if stage.get("status") != "complete":
        raise UserError(f"{gguf_path}: its export did not finish; run `tutorforge export {run.path}` again")
    kind = gguf_path.name.rsplit(".", 2)[-2].lower()
    if failed := [f for f in stage.get("failures", []) if f.startswith(f"{kind}:")]:
        raise UserError(f"{gguf_path}: failed its verification ({failed[0]}); it does not behave like the "
                        "trained model, so no Modelfile is written for it. See export.json beside it")
    present = (trained / "adapter_config.json").is_file() if trained else (model_dir / "config.json").is_file()
    if present and stage["inputs"]["model"] != outputs.model_identity(model_dir, trained):
        raise UserError(f"{gguf_path}: exported from another model than {run.trained} (the run was trained "
                        f"again since); run `tutorforge export {run.path}`, which writes the Modelfile too")


def _record(modelfile_path: Path, gguf_path: Path) -> None:
    """The Modelfile as the package stage's output in the GGUF directory's record, when it has one
    (so that an export of another model removes it with the GGUFs it named)."""
    from tutorforge import outputs

    directory = modelfile_path.parent
    record = outputs.read_record(directory)
    if record is None or record.get("kind") != "gguf":
        return
    claimed = outputs.OutputDir(directory, "gguf", record)
    made_from = (record["stages"].get("export") or {}).get("inputs", {}).get("model")
    claimed.record["stages"]["package"] = {  # replaces the entry: the file was just rewritten
        "inputs": {"gguf": gguf_path.name, "model": made_from}, "status": "running"}
    claimed.add("package", modelfile_path)
    claimed.finish("package")


# --- verification with Go's own text/template (Ollama's template language) ---------------------

VERIFY_PROMPTS = [("How do I reverse a list?", ""), ("What does this print?", "print(2 ** 3)"),
                  ("Explain f-strings — café 🐍", "name = 'Ada'\n\tprint(f'{name}')")]
VERIFY_CONVERSATIONS = [  # (earlier turns, the follow-up question): chat families only
    ([{"role": "system", "content": "You are a patient Python tutor."},
      {"role": "user", "content": "What is a list?"},
      {"role": "assistant", "content": "Ordered, changeable:\n```python\nxs = [1, 2]\nprint(xs[0])  # 1\n```"},
      {"role": "user", "content": "And a tuple?"},
      {"role": "assistant", "content": "The same, but it cannot change: `(1, 2)`."}],
     "Which one is faster — café 🐍?"),
    ([{"role": "user", "content": "How do I read a file?"},  # no system turn: the Modelfile's SYSTEM goes first
      {"role": "assistant", "content": "Use open:\n\twith open('notes.txt') as fh:\n\t\ttext = fh.read()"}],
     "And write one?"),
]


def _verify_cases(tokenizer, fmt: PromptFormat, family: Family) -> list[tuple[str, dict]]:
    """(what training renders, the data Ollama gives the TEMPLATE) for every conversation checked:
    an Alpaca Modelfile's single-turn prompts (the user's one message is the instruction, no input);
    a chat family's single-turn prompts and VERIFY_CONVERSATIONS, with the Modelfile's SYSTEM in front
    of a conversation that has none (as Ollama puts it, and training puts default_system_message);
    their system turns left out for a template that refuses one (Gemma 2)."""
    from tutorforge.formatting import prompt_messages, render_prompt, user_turn

    if family.name == "alpaca":
        return [(render_prompt(tokenizer, fmt, instruction), {"System": fmt.system or "", "Prompt": instruction})
                for instruction, input in VERIFY_PROMPTS if not input]
    conversations = [([], user_turn(instruction, input)) for instruction, input in VERIFY_PROMPTS]
    cases = []
    for earlier, question in conversations + VERIFY_CONVERSATIONS:
        messages = prompt_messages(fmt, earlier, question)
        if not family.system_role:  # the model's template raises on a system turn: training never has one
            messages = [m for m in messages if m["role"] != "system"]
        cases.append((hf_render(tokenizer, messages), {"messages": messages}))
    return cases


def verify_template(tokenizer, fmt: PromptFormat, family: Family, render=None) -> int:
    """Render the family's TEMPLATE with Go as Ollama does and compare it byte for byte with the
    training template (`_verify_cases`: single-turn prompts, and for chat families conversations of
    several turns, with and without a system turn); the number of conversations checked (0: Go is
    not installed). A difference is an error showing where."""
    from tutorforge.go_template import go_renderer

    render = render or go_renderer()
    if render is None:
        return 0
    cases = _verify_cases(tokenizer, fmt, family)
    for n, (expected, data) in enumerate(cases, start=1):
        got = render(family.template, data)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                      min(len(got), len(expected)))
            turns = f"{len(data['messages'])} messages" if "messages" in data else "one prompt"
            raise UserError(f"the Ollama TEMPLATE ({family.name}) renders {got[at:at + 40]!r} where training "
                            f"had {expected[at:at + 40]!r} (character {at} of conversation {n} of {len(cases)}, "
                            f"{turns}); the model would not see its training prompt in Ollama; please report "
                            "this template")
    return len(cases)
