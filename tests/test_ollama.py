"""ollama.py: the Modelfile TEMPLATE, rendered by Go's own text/template, equals the training-time
formatter byte for byte."""
from __future__ import annotations

import json

import jinja2
import pytest

from conftest import ROOT
from tutorforge.formatting import CHAT_TEMPLATES, alpaca_prompt, prompt_format, render_prompt
from tutorforge.go_template import go_renderer
from tutorforge.ollama import (
    GO_TEMPLATES,
    detect_family,
    hf_render,
    modelfile,
    parse_modelfile,
    stop_tokens,
    verify_template,
)

CONVERSATIONS = [  # one to three user turns, with and without a system turn
    [{"role": "user", "content": "How do I reverse a list?"}],
    [{"role": "system", "content": "You are a concise Python tutor."},
     {"role": "user", "content": "What is a tuple?\n\nx = (1, 2)"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1 with ```python\nprint(1)\n```"},
     {"role": "user", "content": "Q2"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
     {"role": "assistant", "content": "A2"}, {"role": "user", "content": "Q3 — café 🐍\ttabs"}],
]


@pytest.fixture(scope="module")
def go_render():
    """Go's own text/template, built from tutorforge/gotemplate/main.go with the machine's Go."""
    render = go_renderer()
    assert render, "Go is needed to verify Ollama templates: apt-get install golang-go (.ci/run does)"
    return lambda template, **data: render(template, data)


@pytest.fixture
def tokenizer(bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_tokenizer_dir)


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=lambda m: f"{len(m)}-messages")
def test_chat_template_matches_training_byte_for_byte(go_render, tokenizer, messages):
    family = detect_family(tokenizer, prompt_format(tokenizer, None, None))
    assert family.name == "chatml-default-system"
    assert go_render(family.template, messages=messages) == hf_render(tokenizer, messages)


def test_modelfile_system_reproduces_the_training_prompt(go_render, tokenizer):
    """Ollama puts the Modelfile's SYSTEM in front of a conversation that has none: the result is
    exactly what render_prompt gave at training time with default_system_message."""
    system = "You are a concise Python tutor."
    fmt = prompt_format(tokenizer, None, system)
    family = detect_family(tokenizer, fmt)
    for instruction, input in [("How do I reverse a list?", ""), ("What does this print?", "print(2 ** 3)")]:
        user = f"{instruction}\n\n{input}" if input else instruction
        rendered = go_render(family.template, messages=[{"role": "system", "content": system},
                                                        {"role": "user", "content": user}])
        assert rendered == render_prompt(tokenizer, fmt, instruction, input)


@pytest.mark.parametrize("system", [None, "You are a concise Python tutor."])
def test_alpaca_template_matches_the_alpaca_formatter(go_render, tokenizer, system):
    tokenizer.chat_template = None
    fmt = prompt_format(tokenizer, None, system)
    family = detect_family(tokenizer, fmt)
    assert family.name == "alpaca"
    got = go_render(family.template, System=system or "", Prompt="Add two numbers in Python.")
    assert got == alpaca_prompt("Add two numbers in Python.", "", system)
    assert got == render_prompt(tokenizer, fmt, "Add two numbers in Python.")


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=lambda m: f"{len(m)}-messages")
def test_llama3_template_matches_the_llama3_chat_template(go_render, messages):
    expected = jinja2.Template(CHAT_TEMPLATES["llama3"]).render(messages=messages, add_generation_prompt=True,
                                                                bos_token="")  # llama.cpp adds the BOS
    assert go_render(GO_TEMPLATES["llama3"], messages=messages) == expected


def test_a_wrong_template_is_caught(go_render, tokenizer):
    """Control: a plausible hand-written ChatML template without the model's default system turn
    differs from training, and the comparison sees it."""
    messages = CONVERSATIONS[0]
    assert go_render(GO_TEMPLATES["chatml"], messages=messages) != hf_render(tokenizer, messages)


@pytest.mark.parametrize("system", [None, "You are a concise Python tutor."])
@pytest.mark.parametrize("alpaca", [False, True])
def test_package_time_verification_passes_for_the_right_template(go_render, tokenizer, system, alpaca):
    from tutorforge.ollama import VERIFY_CONVERSATIONS, VERIFY_PROMPTS

    if alpaca:
        tokenizer.chat_template = None
    fmt = prompt_format(tokenizer, None, system)
    family = detect_family(tokenizer, fmt)
    checked = verify_template(tokenizer, fmt, family, render=lambda t, d: go_render(t, **d))
    assert checked == (1 if alpaca else len(VERIFY_PROMPTS) + len(VERIFY_CONVERSATIONS))  # Alpaca: single-turn


def family_tokenizer(tokenizer, template: str | None):
    """The bundled tokenizer with a chat family's template: its own (SmolLM2's ChatML with a default
    system turn), chatml, or llama3 (its tokens added, a BOS the tokenizer adds itself, as Llama 3's)."""
    if template == "llama3":
        tokenizer.add_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                             special_tokens=True)
        tokenizer.bos_token = "<|begin_of_text|>"
        tokenizer.add_bos_token = True
    return tokenizer


@pytest.mark.parametrize("system", [None, "You are a concise Python tutor."])
@pytest.mark.parametrize("template, name", [(None, "chatml-default-system"), ("chatml", "chatml"),
                                            ("llama3", "llama3")])
def test_every_chat_family_is_verified_on_conversations_of_several_turns(go_render, tokenizer, template, name,
                                                                         system):
    """Go renders each family's TEMPLATE as training renders the conversations of VERIFY_CONVERSATIONS
    (system + several turns; one without a system turn, where the Modelfile's SYSTEM goes first)."""
    from tutorforge.formatting import prompt_messages
    from tutorforge.ollama import VERIFY_CONVERSATIONS, VERIFY_PROMPTS

    tokenizer = family_tokenizer(tokenizer, template)
    fmt = prompt_format(tokenizer, template, system)
    family = detect_family(tokenizer, fmt)
    assert family.name == name
    assert verify_template(tokenizer, fmt, family, render=lambda t, d: go_render(t, **d)) == len(VERIFY_PROMPTS) + 2
    earlier, question = VERIFY_CONVERSATIONS[1]  # no system turn of its own
    messages = prompt_messages(fmt, earlier, question)
    assert [m["role"] for m in messages] == (["system"] if system else []) + ["user", "assistant", "user"]
    text = go_render(family.template, messages=messages)
    assert "\twith open('notes.txt') as fh:" in text and text.count("And write one?") == 1
    assert (system or "SmolLM" if name == "chatml-default-system" else system or "How do I") in text


def test_a_template_right_on_one_turn_but_wrong_on_several_is_caught(go_render, tokenizer):
    """A Go template that drops the earlier assistant turns renders every single-turn prompt as
    training does; the conversations of several turns catch it."""
    import dataclasses

    from tutorforge.errors import UserError
    from tutorforge.formatting import user_turn
    from tutorforge.ollama import VERIFY_PROMPTS

    fmt = prompt_format(tokenizer, None, "Be brief.")
    family = detect_family(tokenizer, fmt)
    body = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    assert body in family.template
    dropping = family.template.replace(body, "{{- range .Messages }}{{ if ne .Role \"assistant\" }}<|im_start|>"
                                             "{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}")
    for instruction, input in VERIFY_PROMPTS:
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": user_turn(instruction, input)}]
        assert go_render(dropping, messages=messages) == hf_render(tokenizer, messages)
    wrong = dataclasses.replace(family, template=dropping)
    with pytest.raises(UserError, match=r"renders 'user\\nAnd a tuple\?.* where training had "
                                        r"'assistant\\nOrdered.*conversation 4 of 5, 6 messages"):
        verify_template(tokenizer, fmt, wrong, render=lambda t, d: go_render(t, **d))


def test_package_time_verification_refuses_a_wrong_template(go_render, tokenizer):
    import dataclasses

    from tutorforge.errors import UserError

    fmt = prompt_format(tokenizer, None, None)
    wrong = dataclasses.replace(detect_family(tokenizer, fmt), template=GO_TEMPLATES["chatml"])
    with pytest.raises(UserError, match=r"renders 'user\\n.* where training had 'system\\n"):
        verify_template(tokenizer, fmt, wrong, render=lambda t, d: go_render(t, **d))


def test_modelfile_fields(tokenizer):
    fmt = prompt_format(tokenizer, None, "Be brief.")
    family = detect_family(tokenizer, fmt)
    text = modelfile("tutor.Q4_K_M.gguf", family.template, system="Be brief.",
                     stops=stop_tokens(tokenizer, fmt, family), num_ctx=512, temperature=0.0, license="apache-2.0")
    parsed = parse_modelfile(text)
    assert parsed["FROM"] == "./tutor.Q4_K_M.gguf"
    assert parsed["TEMPLATE"] == family.template and parsed["SYSTEM"] == "Be brief."
    assert ("stop", '"<|im_end|>"') in parsed["PARAMETER"] and ("num_ctx", "512") in parsed["PARAMETER"]
    assert ("temperature", "0") in parsed["PARAMETER"] and parsed["LICENSE"] == "apache-2.0"
    assert ("repeat_penalty", "1.1") in parsed["PARAMETER"] and ("repeat_last_n", "64") in parsed["PARAMETER"]
    from tutorforge.ollama_rest import create_request

    parameters = create_request("tutor", parsed, "tutor.Q4_K_M.gguf", "0" * 64)["parameters"]
    assert parameters["repeat_penalty"] == 1.1 and parameters["repeat_last_n"] == 64


@pytest.mark.slow
def test_package_command_writes_the_modelfile(tmp_path, capsys, bundled):
    import dataclasses

    from tutorforge import cli
    from tutorforge.config import load_config

    cfg = load_config(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml")
    (tmp_path / "run.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}, default=list))
    (tmp_path / "gguf").mkdir()
    assert cli.main(["package", str(tmp_path)]) == 2  # no GGUF yet
    assert "run `tutorforge export" in capsys.readouterr().err
    (tmp_path / "gguf" / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    assert cli.main(["package", str(tmp_path)]) == 0
    assert "ollama create python-tutor -f Modelfile" in capsys.readouterr().out
    parsed = parse_modelfile((tmp_path / "gguf" / "Modelfile").read_text())
    assert parsed["FROM"] == "./model.Q4_K_M.gguf" and parsed["SYSTEM"] == cfg.default_system_message
    assert ("num_ctx", "512") in parsed["PARAMETER"] and ("stop", '"<|im_end|>"') in parsed["PARAMETER"]
    assert parsed["LICENSE"] == "apache-2.0"


class FakeOllama:
    """The documented REST endpoints of an Ollama server, checking what they receive."""

    def __init__(self):
        import hashlib
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.blobs: dict[str, bytes] = {}
        self.created: list[dict] = []
        self.uploads = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body=b"", kind="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._reply(200, b'{"version": "test"}') if self.path == "/api/version" else self._reply(404)

            def do_HEAD(self):
                digest = self.path.rsplit("sha256:", 1)[-1]
                self._reply(200 if digest in fake.blobs else 404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.startswith("/api/blobs/sha256:"):
                    digest = self.path.rsplit(":", 1)[1]
                    if hashlib.sha256(body).hexdigest() != digest:
                        return self._reply(400, b'{"error": "digest mismatch"}')
                    fake.blobs[digest] = body
                    fake.uploads += 1
                    return self._reply(201)
                if self.path == "/api/create":
                    request = json.loads(body)
                    missing = [d for d in request["files"].values() if d.removeprefix("sha256:") not in fake.blobs]
                    if missing:
                        return self._reply(400, json.dumps({"error": f"unknown blob {missing[0]}"}).encode())
                    fake.created.append(request)
                    lines = [{"status": "using existing layer"}, {"status": "writing manifest"}, {"status": "success"}]
                    ndjson = "".join(json.dumps(x) + "\n" for x in lines).encode()
                    return self._reply(200, ndjson, "application/x-ndjson")
                self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.slow
def test_deploy_through_the_rest_api(tmp_path, capsys, monkeypatch, bundled):
    import dataclasses
    import hashlib

    from tutorforge import cli
    from tutorforge.config import load_config

    cfg = load_config(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml")
    (tmp_path / "run.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}, default=list))
    (tmp_path / "gguf").mkdir()
    gguf_bytes = b"GGUF" + bytes(range(256)) * 64
    (tmp_path / "gguf" / "model.Q4_K_M.gguf").write_bytes(gguf_bytes)
    assert cli.main(["package", str(tmp_path)]) == 0
    fake = FakeOllama()
    monkeypatch.setenv("OLLAMA_HOST", fake.host)
    monkeypatch.setenv("PATH", "/nonexistent")  # no ollama CLI: the REST path
    try:
        assert cli.main(["deploy", str(tmp_path), "--name", "tutor"]) == 0
        out = capsys.readouterr().out
        assert "uploading" in out and "success" in out and "ollama run tutor" in out
        digest = hashlib.sha256(gguf_bytes).hexdigest()
        assert fake.blobs == {digest: gguf_bytes}
        request = fake.created[0]
        modelfile_text = parse_modelfile((tmp_path / "gguf" / "Modelfile").read_text())
        assert request["model"] == "tutor" and request["files"] == {"model.Q4_K_M.gguf": f"sha256:{digest}"}
        assert request["template"] == modelfile_text["TEMPLATE"] and request["system"] == cfg.default_system_message
        assert request["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]
        assert request["parameters"]["num_ctx"] == 512 and request["parameters"]["temperature"] == 0.0
        assert cli.main(["deploy", str(tmp_path), "--name", "tutor"]) == 0
        assert "blob already on the server" in capsys.readouterr().out and fake.uploads == 1
    finally:
        fake.server.shutdown()
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing listens: print the commands
    assert cli.main(["deploy", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ollama create python-tutor -f Modelfile" in out and "no server answers" in out


@pytest.mark.slow
def test_export_writes_the_modelfile_with_the_gguf(tmp_path, capsys, bundled, adapter):
    import dataclasses
    import shutil

    from tutorforge import cli
    from tutorforge.config import load_config

    config = dataclasses.asdict(load_config(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml"))
    config["base_model"] = str(bundled.path)
    config["tutorforge"]["ollama"]["quantization"] = "f16"
    (tmp_path / "run.json").write_text(json.dumps({"config": config}, default=list))
    shutil.copytree(adapter, tmp_path / "adapter")
    assert cli.main(["export", str(tmp_path), "--quantize", "f16", "--no-verify"]) == 0
    parsed = parse_modelfile((tmp_path / "gguf" / "Modelfile").read_text())
    assert parsed["FROM"] == "./model.F16.gguf" and (tmp_path / "gguf" / "model.F16.gguf").is_file()


@pytest.mark.slow
def test_package_never_overwrites_a_modelfile_it_did_not_write(tmp_path, capsys, bundled):
    import dataclasses

    from tutorforge import cli
    from tutorforge.config import load_config

    cfg = load_config(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml")
    (tmp_path / "run.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}, default=list))
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    mine = 'FROM ./model.Q4_K_M.gguf\nTEMPLATE """my own"""\n'
    (tmp_path / "gguf" / "Modelfile").write_text(mine)
    assert cli.main(["package", str(tmp_path)]) == 2
    assert "a Modelfile that tutorforge did not write is in the way" in capsys.readouterr().err
    assert (tmp_path / "gguf" / "Modelfile").read_text() == mine
    (tmp_path / "gguf" / "Modelfile").unlink()
    assert cli.main(["package", str(tmp_path)]) == 0
    written = (tmp_path / "gguf" / "Modelfile").read_text()
    assert written.startswith("# Modelfile written by tutorforge")
    assert cli.main(["package", str(tmp_path)]) == 0  # its own Modelfile it rewrites
    assert (tmp_path / "gguf" / "Modelfile").read_text() == written


@pytest.mark.slow
def test_package_refuses_a_gguf_that_failed_its_verification(tmp_path, capsys, bundled):
    import dataclasses

    from tutorforge import cli, outputs
    from tutorforge.config import load_config

    cfg = load_config(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml")
    (tmp_path / "run.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}, default=list))
    gguf = outputs.claim(tmp_path / "gguf", "gguf")
    gguf.begin("export", {"model": "m", "name": "model"})
    (tmp_path / "gguf" / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    gguf.add("export", tmp_path / "gguf" / "model.Q4_K_M.gguf")
    gguf.finish("export", verified=True, failures=["q4_k_m: 7 of 1200 texts tokenize differently"])
    assert cli.main(["package", str(tmp_path)]) == 2
    assert "failed its verification (q4_k_m: 7 of 1200 texts" in capsys.readouterr().err
    assert not (tmp_path / "gguf" / "Modelfile").exists()
