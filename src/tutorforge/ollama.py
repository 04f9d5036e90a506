"""An Ollama Modelfile whose TEMPLATE reproduces the training prompt format exactly.

    tutorforge package outputs/python-tutor-smollm2      # -> outputs/python-tutor-smollm2/gguf/Modelfile

The prompt format is recognised by rendering probe conversations with the model's own chat template
(or the Alpaca formatter) and matching them against the known families below; the family's Ollama
TEMPLATE (Go text/template) is then written. The tests render that TEMPLATE with Go itself and
compare it byte for byte with the training-time formatter.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tutorforge.errors import UserError
from tutorforge.fsutil import sha256_file
from tutorforge.formatting import ALPACA_PROMPT, PromptFormat, alpaca_prompt

log = logging.getLogger(__name__)

# Ollama TEMPLATE per prompt-format family (Go text/template over .Messages, or .System/.Prompt).
# {default_system} is filled in for ChatML models whose template adds a system turn of its own.
GO_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"),
    "chatml-default-system": (
        "{{- if or (not .Messages) (ne (index .Messages 0).Role \"system\") }}<|im_start|>system\n"
        "{default_system}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"),
    "llama3": (  # the tokenizer adds <|begin_of_text|> itself (add_bos_token)
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "alpaca": (  # single-turn, as trained: the user's message is the instruction
        "{{ if .System }}{{ .System }}\n\n{{ end }}"
        + ALPACA_PROMPT.format(ctx="", instruction="{{ .Prompt }}", input_block="")),
}


# The Modelfile's first line: it says who wrote the file, so that package rewrites only its own
# Modelfile and never one a user wrote (Ollama reads lines starting with # as comments).
MODELFILE_HEADER = "# Modelfile written by tutorforge package (rewritten on each export: edit a copy)"


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # the Go TEMPLATE, filled in
    default_system: str | None = None  # the system turn a ChatML template adds when there is none

    def render(self, messages: list[dict]) -> str:
        """What Ollama renders from this family's TEMPLATE for `messages` (the tests prove the
        equality with Go itself), for running the model outside Ollama with the same prompt."""
        if self.name == "alpaca":
            system = next((m["content"] for m in messages if m["role"] == "system"), None)
            user = [m["content"] for m in messages if m["role"] == "user"][-1]
            return alpaca_prompt(user, "", system)
        if self.name == "llama3":
            return _llama3(messages)
        return _chatml(messages, self.default_system)


def _chatml(messages: list[dict], default_system: str | None = None) -> str:
    text = ""
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        text += f"<|im_start|>system\n{default_system}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def _llama3(messages: list[dict]) -> str:
    body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                   for m in messages)
    return body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def hf_render(tokenizer, messages: list[dict]) -> str:
    """The training-time text for a conversation, as llama.cpp will see it (a BOS the tokenizer adds
    by itself is left to the tokenizer, as Ollama does)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


PROBES = [
    [{"role": "user", "content": "Q1"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
]


def detect_family(tokenizer, fmt: PromptFormat) -> Family:
    """The family whose renderer reproduces the model's own template on every probe conversation."""
    if fmt.kind == "alpaca":
        return Family("alpaca", GO_TEMPLATES["alpaca"])
    rendered = [hf_render(tokenizer, p) for p in PROBES]
    first = rendered[0]
    default = None
    if first.startswith("<|im_start|>system\n"):
        default = first[len("<|im_start|>system\n"):first.index("<|im_end|>")]
    candidates = [("chatml-default-system", lambda m: _chatml(m, default)) if default is not None else
                  ("chatml", _chatml), ("llama3", _llama3)]
    for name, render in candidates:
        if all(render(p) == r for p, r in zip(PROBES, rendered)):
            template = GO_TEMPLATES[name].replace("{default_system}", default or "")
            return Family(name, template, default)
    raise UserError("the model's chat template is not one tutorforge can write as an Ollama TEMPLATE "
                    f"(it renders a user turn as {first[:80]!r}); supported: ChatML, Llama 3, Alpaca")


def prompt_template(tokenizer, chat_template: str | None, system: str | None) -> tuple[PromptFormat, Family, list[str]]:
    """The training prompt format for these config values, its Ollama family, and its stop tokens."""
    from tutorforge.formatting import prompt_format

    fmt = prompt_format(tokenizer, chat_template, system)
    family = detect_family(tokenizer, fmt)
    return fmt, family, stop_tokens(tokenizer, fmt, family)


def stop_tokens(tokenizer, fmt: PromptFormat, family: Family) -> list[str]:
    """Every token that ends a turn in this format: Ollama must stop there."""
    stops = [tokenizer.convert_ids_to_tokens(fmt.end_token_id)]
    extra = {"chatml": ["<|im_start|>"], "chatml-default-system": ["<|im_start|>"],
             "llama3": ["<|start_header_id|>"], "alpaca": ["### Instruction:"]}[family.name]
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
    out: dict[str, object] = {"PARAMETER": []}
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
            out["PARAMETER"].append(tuple(value.split(" ", 1)))
        else:
            out[word] = value
    return out


def base_license(model_dir: Path) -> str | None:
    """The base model's license, when known: its GGUF metadata, or `license:` in its model card."""
    import re

    from tutorforge.models import gguf_field, source_gguf

    source = source_gguf(model_dir)
    if source and (license := gguf_field(source, "general.license")) is not None:
        return str(license)
    card = model_dir / "README.md"
    match = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.M) if card.is_file() else None
    return match.group(1) if match else None


def decoding(ollama_settings: dict) -> tuple[float, int]:
    """(repeat_penalty, repeat_last_n) of a run's tutorforge.ollama settings; the defaults (Ollama's)
    where a run.json written before these keys existed has none."""
    from tutorforge.config import OllamaSettings

    default = OllamaSettings()
    return (ollama_settings.get("repeat_penalty", default.repeat_penalty),
            ollama_settings.get("repeat_last_n", default.repeat_last_n))


def package(run_dir: Path, config: dict, gguf_path: Path | None = None) -> Path:
    """Write the Modelfile of a finished run (config: run.json's) beside its GGUF (default: the
    config's tutorforge.ollama.quantization); returns its path. Refused for a GGUF that failed its
    verification or was exported from another adapter than the run's, and where a Modelfile that
    tutorforge did not write is in the way."""
    from transformers import AutoTokenizer

    from tutorforge.export import run_gguf
    from tutorforge.models import resolve_base_model

    gguf_path = gguf_path or run_gguf(run_dir, config)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF; run `tutorforge export {run_dir}` first")
    model_dir = resolve_base_model(config["base_model"]).path
    _check_exported(gguf_path, run_dir, model_dir)
    path = gguf_path.parent / "Modelfile"
    if path.exists() and not _ours(path):
        raise UserError(f"{path}: a Modelfile that tutorforge did not write is in the way; tutorforge never "
                        "overwrites it. Move it away (or rename it) and run `tutorforge package` again")
    settings = config["tutorforge"]["ollama"]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fmt, family, stops = prompt_template(tokenizer, config.get("chat_template"), config.get("default_system_message"))
    penalty, last_n = decoding(settings)
    text = modelfile(gguf_path.name, family.template, system=fmt.system, stops=stops,
                     num_ctx=settings.get("num_ctx") or config["sequence_len"],
                     temperature=settings.get("temperature", 0.0),
                     repeat_penalty=penalty, repeat_last_n=last_n,
                     license=settings.get("license") or base_license(model_dir))
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


def _check_exported(gguf_path: Path, run_dir: Path, model_dir: Path) -> None:
    """A GGUF that tutorforge exported must have passed its verification and come from the run's
    current adapter (a GGUF from elsewhere, with no export record, is the user's to vouch for)."""
    from tutorforge import outputs

    stage = ((outputs.read_record(gguf_path.parent) or {}).get("stages") or {}).get("export")
    if not stage or gguf_path.name not in stage.get("files", {}):
        return
    if stage.get("status") != "complete":
        raise UserError(f"{gguf_path}: its export did not finish; run `tutorforge export {run_dir}` again")
    kind = gguf_path.name.rsplit(".", 2)[-2].lower()
    if failed := [f for f in stage.get("failures", []) if f.startswith(f"{kind}:")]:
        raise UserError(f"{gguf_path}: failed its verification ({failed[0]}); it does not behave like the "
                        "trained model, so no Modelfile is written for it. See export.json beside it")
    adapter = run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file() and \
            stage["inputs"]["model"] != outputs.model_identity(model_dir, adapter):
        raise UserError(f"{gguf_path}: exported from another adapter than {adapter} (the run was trained "
                        f"again since); run `tutorforge export {run_dir}`, which writes the Modelfile too")


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

def go_renderer() -> Callable[[str, dict], str] | None:
    """A function rendering (TEMPLATE, data) with Go's text/template, built once from
    gotemplate/main.go and cached; None when Go is not installed."""
    import hashlib
    import os
    import shutil
    import subprocess

    from tutorforge.models import cache_root

    go = shutil.which("go")
    if go is None:
        return None
    source = Path(__file__).with_name("gotemplate") / "main.go"
    binary = cache_root() / "go" / f"render-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}"
    if not binary.is_file():
        work = binary.parent / f".build-{os.getpid()}"
        env = {"HOME": str(work), "GOCACHE": str(work / "cache"), "GOPATH": str(work / "gopath"),
               "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GO111MODULE": "off"}
        work.mkdir(parents=True, exist_ok=True)
        try:
            built = subprocess.run([go, "build", "-o", str(work / "render"), str(source)], env=env,
                                   capture_output=True, text=True)
            if built.returncode != 0:
                raise UserError(f"go build {source}: {built.stderr.strip()[-300:]}")
            (work / "render").replace(binary)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def render(template: str, data: dict) -> str:
        data = dict(data)
        data["Messages"] = [{"Role": m["role"], "Content": m["content"]} for m in data.pop("messages", [])]
        out = subprocess.run([str(binary)], input=json.dumps({"template": template, "data": data}).encode(),
                             capture_output=True)
        if out.returncode != 0:
            raise UserError(f"the Ollama TEMPLATE does not render in Go: {out.stderr.decode()[-300:]}")
        return out.stdout.decode()

    return render


VERIFY_PROMPTS = [("How do I reverse a list?", ""), ("What does this print?", "print(2 ** 3)"),
                  ("Explain f-strings — café 🐍", "name = 'Ada'\n\tprint(f'{name}')")]


def verify_template(tokenizer, fmt: PromptFormat, family: Family, render=None) -> int:
    """Render the family's TEMPLATE with Go as Ollama does (the Modelfile's SYSTEM in front of a
    conversation that has none) and compare it byte for byte with the training formatter; the number
    of prompts checked (0: Go is not installed). A difference is an error showing where."""
    from tutorforge.formatting import render_prompt, user_turn

    render = render or go_renderer()
    if render is None:
        return 0
    # an Alpaca Modelfile is single-turn: the user's one message is the instruction, with no input
    prompts = [p for p in VERIFY_PROMPTS if family.name != "alpaca" or not p[1]]
    for instruction, input in prompts:
        expected = render_prompt(tokenizer, fmt, instruction, input)
        if family.name == "alpaca":
            got = render(family.template, {"System": fmt.system or "", "Prompt": user_turn(instruction, input)})
        else:
            system = [{"role": "system", "content": fmt.system}] if fmt.system else []
            got = render(family.template, {"messages": system + [{"role": "user",
                                                                 "content": user_turn(instruction, input)}]})
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise UserError(f"the Ollama TEMPLATE ({family.name}) renders {got[at:at + 40]!r} where training "
                            f"had {expected[at:at + 40]!r} (character {at}); the model would not see its "
                            "training prompt in Ollama; please report this template")
    return len(prompts)


def create_request(name: str, parsed: dict, gguf_name: str, digest: str) -> dict:
    """The body of Ollama's POST /api/create for a Modelfile written by `modelfile`."""
    parameters: dict[str, object] = {}
    for key, value in parsed["PARAMETER"]:
        if key == "stop":
            parameters.setdefault("stop", []).append(value.strip('"'))
        else:
            parameters[key] = float(value) if "." in value or key == "temperature" else int(value)
    body = {"model": name, "files": {gguf_name: f"sha256:{digest}"}, "template": parsed["TEMPLATE"],
            "parameters": parameters, "stream": True}
    if parsed.get("SYSTEM"):
        body["system"] = parsed["SYSTEM"]
    if parsed.get("LICENSE"):
        body["license"] = parsed["LICENSE"]
    return body


def deploy_rest(host: str, name: str, modelfile_path: Path, *, say=print, timeout: float = 600) -> None:
    """Upload the GGUF as a blob (HEAD, then POST /api/blobs/sha256:<digest>) and create the model
    (POST /api/create), as Ollama's REST API documents; progress lines go to `say`."""
    import urllib.error
    import urllib.request

    parsed = parse_modelfile(modelfile_path.read_text())
    gguf = modelfile_path.parent / str(parsed["FROM"]).removeprefix("./")
    say(f"hashing {gguf.name} ...")
    digest = sha256_file(gguf)
    blob = f"{host}/api/blobs/sha256:{digest}"
    try:
        urllib.request.urlopen(urllib.request.Request(blob, method="HEAD"), timeout=30)
        say("blob already on the server")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise UserError(f"{host}: HEAD /api/blobs answered {exc.code}") from None
        say(f"uploading {gguf.stat().st_size / 2**20:.1f} MiB ...")
        with gguf.open("rb") as fh:
            request = urllib.request.Request(blob, data=fh, method="POST",
                                             headers={"Content-Length": str(gguf.stat().st_size)})
            urllib.request.urlopen(request, timeout=timeout)
    body = json.dumps(create_request(name, parsed, gguf.name, digest)).encode()
    request = urllib.request.Request(f"{host}/api/create", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for line in response:
            status = json.loads(line or b"{}")
            if "error" in status:
                raise UserError(f"ollama create {name}: {status['error']}")
            say(status.get("status", ""))


def ollama_host() -> str:
    import os

    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    return host if host.startswith("http") else f"http://{host}"


def server_answers(host: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(f"{host}/api/version", timeout=2)
        return True
    except OSError:
        return False
