"""chat.py: one-shot and interactive chat, and the OpenAI-compatible server, through llama.cpp with
the Modelfile's template and stop tokens."""
from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bundled) -> Path:
    """A run directory with an exported f16 GGUF of the bundled model (no training needed)."""
    from tutorforge.config import load_config
    from tutorforge.export import Source, write_gguf

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(ROOT / "recipes" / "python-tutor-smollm2-cpu.yml")
    config = dataclasses.asdict(cfg)
    config["tutorforge"]["ollama"]["quantization"] = "f16"
    (run / "run.json").write_text(json.dumps({"config": config}, default=list))
    write_gguf(Source(bundled.path), run / "gguf" / "model.F16.gguf", "f16")
    return run


def tutorforge(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "tutorforge", *args], capture_output=True, text=True,
                          env=env, timeout=600, **kwargs)


def test_one_shot_answer_is_greedy_and_stops_at_the_end_of_turn(run_dir, bundled):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from tutorforge.formatting import prompt_format, render_prompt

    question = "How do I reverse a list in Python?"
    first = tutorforge("chat", str(run_dir), "--prompt", question, "--max-tokens", "40")
    assert first.returncode == 0, first.stderr
    second = tutorforge("chat", str(run_dir), "--prompt", question, "--max-tokens", "40")
    assert first.stdout == second.stdout and first.stdout.strip()
    # the same prompt the training formatter builds (system turn included), decoded greedily
    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    system = json.loads((run_dir / "run.json").read_text())["config"]["default_system_message"]
    prompt = render_prompt(tokenizer, prompt_format(tokenizer, None, system), question)
    llm = Llama(model_path=str(run_dir / "gguf" / "model.F16.gguf"), n_ctx=512, n_threads=1, verbose=False)
    try:
        expected = llm.create_completion(prompt, max_tokens=40, temperature=0, repeat_penalty=1.1,  # as Ollama
                                         stop=["<|im_end|>"])
    finally:
        llm.close()
    assert first.stdout.strip() == expected["choices"][0]["text"].strip()
    assert "<|im_" not in first.stdout


def test_interactive_chat_through_a_terminal(run_dir):
    main, replica = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tutorforge", "chat", str(run_dir), "--max-tokens", "16"],
                            stdin=replica, stdout=replica, stderr=replica,
                            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    os.close(replica)
    screen = b""

    def until(text: bytes, count: int = 1, timeout: float = 300) -> None:
        nonlocal screen
        deadline = time.time() + timeout
        while screen.count(text) < count:
            assert time.time() < deadline, f"waited for {text!r}; the screen: {screen[-500:]!r}"
            if select.select([main], [], [], 0.5)[0]:
                try:
                    screen += os.read(main, 4096)
                except OSError:
                    break

    until(b">>> ")
    os.write(main, b"What is a list?\n")
    until(b">>> ", 2)
    os.write(main, b"/system Answer in one word.\n")
    until(b"(system prompt set")
    os.write(main, b"/reset\n")
    until(b"(conversation cleared)")
    os.write(main, b"/quit\n")
    assert proc.wait(timeout=60) == 0
    text = screen.decode(errors="replace")
    answer = text.split("What is a list?", 1)[1].split(">>>", 1)[0].strip()
    assert answer and "<|im_" not in answer
    assert "(system prompt set; conversation cleared)" in text and "(conversation cleared)" in text


def test_openai_compatible_server(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "tutorforge", "serve", str(run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    try:
        port = None
        for line in proc.stdout:
            match = re.search(r"serving on http://127.0.0.1:(\d+)/v1", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "the server did not start"
        base = f"http://127.0.0.1:{port}/v1"
        models = json.loads(urllib.request.urlopen(f"{base}/models", timeout=30).read())
        assert models["data"][0]["id"] == "model.F16.gguf"
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "What is a tuple?"}],
                           "max_tokens": 24, "temperature": 0}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=300).read())
        text = answer["choices"][0]["message"]["content"]
        assert answer["choices"][0]["message"]["role"] == "assistant" and text and "<|im_" not in text
        bad = urllib.request.Request(f"{base}/chat/completions", data=b'{"nope": 1}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(bad, timeout=30)
        assert caught.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chat_target_errors(tmp_path):
    out = tutorforge("chat", str(tmp_path), "--prompt", "hi")
    assert out.returncode == 2 and "not a training output_dir" in out.stderr
    out = tutorforge("chat", str(tmp_path / "missing.gguf"), "--prompt", "hi")
    assert out.returncode == 2 and "no such run directory or .gguf file" in out.stderr
