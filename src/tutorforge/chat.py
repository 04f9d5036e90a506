"""Talk to an exported model locally through llama-cpp-python, with the Modelfile's template and
stop tokens, so what you see here is what Ollama will say.

    tutorforge chat outputs/python-tutor-smollm2              # interactive: /reset, /system TEXT, /quit
    tutorforge chat model.Q4_K_M.gguf --prompt "What is a tuple?"
    tutorforge serve outputs/python-tutor-smollm2             # OpenAI-compatible HTTP on 127.0.0.1

Temperature 0 by default. `serve` answers POST /v1/chat/completions and GET /v1/models (standard
library HTTP server, one request at a time, loopback only).
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tutorforge.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ChatModel:
    llm: object  # llama_cpp.Llama
    family: object  # ollama.Family
    stops: list[str]
    system: str | None
    name: str
    repeat_penalty: float = 1.1  # Ollama's default, or the Modelfile's PARAMETER

    def messages_for(self, history: list[dict], system: str | None) -> list[dict]:
        """Ollama's rule: the Modelfile's SYSTEM goes first when the conversation has none."""
        has_system = any(m["role"] == "system" for m in history)
        system = system if system is not None else self.system
        return ([{"role": "system", "content": system}] if system and not has_system else []) + history

    def stream(self, messages: list[dict], *, max_tokens: int = 512, temperature: float = 0.0) -> Iterator[str]:
        prompt = self.family.render(messages)
        for chunk in self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature,
                                                repeat_penalty=self.repeat_penalty, stop=self.stops,
                                                stream=True, seed=0):
            yield chunk["choices"][0]["text"]

    def reply(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.stream(messages, **kwargs))


def open_model(target: Path, *, n_ctx: int | None = None) -> ChatModel:
    """A run directory (its exported GGUF, config and tokenizer) or a bare .gguf file."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from tutorforge.checkpoints import read_run_info
    from tutorforge.export import run_gguf
    from tutorforge.models import load_gguf_tokenizer, resolve_base_model
    from tutorforge.ollama import decoding, prompt_template

    if target.is_dir():
        info = read_run_info(target)
        if info is None:
            raise UserError(f"{target}: not a training output_dir (run.json missing); give a run directory "
                            "or a .gguf file")
        config = info["config"]
        gguf = run_gguf(target, config)
        if not gguf.is_file():
            raise UserError(f"{gguf}: no such GGUF; run `tutorforge export {target}` first")
        tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_model(config["base_model"]).path))
        fmt, family, stops = prompt_template(tokenizer, config.get("chat_template"),
                                             config.get("default_system_message"))
        n_ctx = n_ctx or config["tutorforge"]["ollama"].get("num_ctx") or config["sequence_len"]
        penalty, last_n = decoding(config["tutorforge"]["ollama"])
    elif target.suffix == ".gguf" and target.is_file():
        gguf, tokenizer = target, load_gguf_tokenizer(target)
        fmt, family, stops = prompt_template(tokenizer, None, None)
        penalty, last_n = decoding({})  # Ollama's defaults
    else:
        raise UserError(f"{target}: no such run directory or .gguf file")
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx or 2048, n_threads=1, last_n_tokens_size=last_n,
                verbose=False)  # 1 thread: stable here
    return ChatModel(llm, family, stops, fmt.system, gguf.name, penalty)


def repl(model: ChatModel, *, read: Callable[[str], str] = input, write=sys.stdout.write,
         max_tokens: int = 512, temperature: float = 0.0) -> None:
    """An interactive chat: streams each answer; /reset, /system TEXT, /quit."""
    history: list[dict] = []
    system: str | None = None
    write(f"chatting with {model.name} (temperature {temperature:g}); /reset, /system TEXT, /quit\n")
    while True:
        try:
            line = read(">>> ").strip()
        except EOFError:
            write("\n")
            return
        if not line:
            continue
        if line in {"/quit", "/exit", "/bye"}:
            return
        if line == "/reset":
            history = []
            write("(conversation cleared)\n")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            history = []
            write(f"(system prompt {'set' if system else 'back to the default'}; conversation cleared)\n")
            continue
        history.append({"role": "user", "content": line})
        parts = []
        for piece in model.stream(model.messages_for(history, system), max_tokens=max_tokens,
                                  temperature=temperature):
            parts.append(piece)
            write(piece)
            if hasattr(sys.stdout, "flush"):
                sys.stdout.flush()
        write("\n")
        history.append({"role": "assistant", "content": "".join(parts).strip()})


def serve(model: ChatModel, *, port: int = 8000, ready: Callable[[int], None] | None = None) -> None:
    """An OpenAI-compatible endpoint on 127.0.0.1 (chat completions, non-streaming)."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = [{"role": m["role"], "content": m["content"]} for m in request["messages"]]
            except (ValueError, KeyError, TypeError) as exc:
                return self._send(400, {"error": {"message": f"expected {{messages: [{{role, content}}]}}: {exc}"}})
            text = model.reply(model.messages_for(messages, None), max_tokens=int(request.get("max_tokens", 512)),
                               temperature=float(request.get("temperature", 0.0)))
            self._send(200, {"object": "chat.completion", "model": model.name, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text.strip()}, "finish_reason": "stop"}]})

        def log_message(self, fmt: str, *args) -> None:
            log.info("serve: %s", fmt % args)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    log.info("serving %s on http://127.0.0.1:%d/v1 (OpenAI-compatible); Ctrl-C stops", model.name,
             server.server_address[1])
    if ready:
        ready(server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
