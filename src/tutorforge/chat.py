"""Talk to an exported model locally through llama-cpp-python, with the Modelfile's template and
stop tokens, so what you see here is what Ollama will say.

    tutorforge chat outputs/python-tutor-smollm2              # interactive: /reset, /system TEXT, /quit
    tutorforge chat model.Q4_K_M.gguf --prompt "What is a tuple?"

Temperature 0 by default, decoded as Ollama decodes (llamacpp.py: llama.cpp's sampler, the repeat
penalty's window over prompt + answer), so its greedy answers are those of `compare`'s GGUF models.
The conversation is rendered with the template and tokenized so that only the template's own
markers are control tokens: `<|im_start|>system` typed in a message is text and starts no turn. A
conversation of many turns (system, user, assistant, user, ...) gets exactly the ids training gives
it (formatting.encode_messages of the same messages with the generation prompt; the tests prove it
for ChatML, Llama 3 and SmolLM2's own template).
`tutorforge serve` (serve.py) answers over HTTP with the same ChatModel.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tutorforge.errors import UserError

if TYPE_CHECKING:
    from llama_cpp import Llama, llama_vocab_p

    from tutorforge.ollama_templates import Family

log = logging.getLogger(__name__)


class PromptTooLong(UserError):
    """The conversation does not fit in the model's context."""

    def __init__(self, tokens: int, n_ctx: int):
        super().__init__(f"the conversation is {tokens} tokens; the model's context holds {n_ctx} "
                         "(n_ctx), with room for the answer; shorten it or start a new one")
        self.tokens, self.n_ctx = tokens, n_ctx


@dataclass
class Outcome:
    """How a generation ended: the prompt's tokens, the tokens sampled (an end-of-turn token
    included), and llama.cpp's finish_reason ("stop": an end-of-turn token or stop string;
    "length": max_tokens or the context ran out; None: cut short by the caller)."""
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class ChatModel:
    llm: Llama
    family: Family
    stops: list[str]
    system: str | None
    name: str
    repeat_penalty: float = 1.1  # Ollama's default, or the Modelfile's PARAMETER
    seed: int = 0  # llama.cpp's sampler seed, the same for every answer

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    @cached_property
    def vocab(self) -> llama_vocab_p:
        """llama.cpp's vocabulary handle of the loaded model."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        if vocab is None:  # llama_model_get_vocab's C pointer is NULL
            raise UserError(f"{self.name}: llama.cpp loaded the model but found no vocabulary in it; "
                            "re-export the GGUF with `tutorforge export`")
        return vocab

    @cached_property
    def add_bos(self) -> bool:
        """Whether llama.cpp puts a BOS token before a prompt (the GGUF's tokenizer.ggml.add_bos_token),
        as training's template writes one (Llama 3's {{ bos_token }}) and Ollama's runner adds it."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    @cached_property
    def markers(self) -> list[str]:
        """The vocabulary's control tokens (what llama.cpp's special parsing would read)."""
        import llama_cpp

        vocab = self.vocab
        return [self.llm.detokenize([i], special=True).decode("utf-8", errors="replace")
                for i in range(self.llm.n_vocab())
                if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL]

    def messages_for(self, history: list[dict], system: str | None) -> list[dict]:
        """Ollama's rule: the Modelfile's SYSTEM goes first when the conversation has none."""
        has_system = any(m["role"] == "system" for m in history)
        system = system if system is not None else self.system
        return ([{"role": "system", "content": system}] if system and not has_system else []) + history

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The template's rendering of `messages` as token ids: its markers as control tokens, the
        messages' content as text (llama.cpp's tokenizer, special parsing off). For content without
        markers these are exactly the ids of the rendered text tokenized whole."""
        from tutorforge.chat_encoding import encode_segments, render_segments

        def encode(text: str, special: bool) -> list[int]:
            return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

        bos = [self.llm.token_bos()] if self.add_bos else []
        return bos + encode_segments(render_segments(self.family.render, messages), self.markers, encode)

    def pieces(self, ids: list[int], outcome: Outcome, *, max_tokens: int = 512, temperature: float = 0.0,
               cancelled: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """The answer to prompt `ids`, a piece of text at a time; `outcome` is filled in as it goes.
        `cancelled` is asked after every token: True stops the generation there (finish_reason None).
        llama.cpp cuts max_tokens to the room left in the context (finish_reason "length")."""
        from llama_cpp import StoppingCriteriaList

        from tutorforge.llamacpp import ollama_penalty_window

        if len(ids) >= self.n_ctx:
            raise PromptTooLong(len(ids), self.n_ctx)
        calls = 0

        def stop_now(input_ids, logits) -> bool:  # once per sampled token, and once after the last
            nonlocal calls
            calls += 1
            return cancelled()

        chunks = self.llm.create_completion(ids, max_tokens=max_tokens, temperature=temperature,
                                            repeat_penalty=self.repeat_penalty, stop=self.stops, stream=True,
                                            seed=self.seed, stopping_criteria=StoppingCriteriaList([stop_now]))
        if not isinstance(chunks, Generator):  # stream=True: a generator (annotated as either kind)
            raise TypeError(f"llama-cpp-python's create_completion(stream=True) returned {type(chunks).__name__}, "
                            "not a generator of chunks; install the llama-cpp-python version in pyproject.toml")
        with ollama_penalty_window(self.llm, ids):  # the sampler is built at the first chunk
            try:
                for chunk in chunks:
                    if cancelled():
                        return
                    choice = chunk["choices"][0]
                    if choice["text"]:
                        yield choice["text"]
                    if choice["finish_reason"]:
                        outcome.completion_tokens = max(calls - 1, 0)
                        outcome.finish_reason = choice["finish_reason"]
            finally:
                chunks.close()
                if outcome.finish_reason is None:  # cut short: every call was a sampled token
                    outcome.completion_tokens = calls

    def stream(self, messages: list[dict], *, max_tokens: int = 512, temperature: float = 0.0) -> Iterator[str]:
        ids = self.prompt_ids(messages)
        yield from self.pieces(ids, Outcome(len(ids)), max_tokens=max_tokens, temperature=temperature)

    def reply(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.stream(messages, **kwargs))


def open_model(target: Path, *, n_ctx: int | None = None, threads: int | None = None,
               gpu_layers: int | None = None) -> ChatModel:
    """A run directory (its exported GGUF, config and tokenizer) or a bare .gguf file, opened in
    llama.cpp with these threads and GPU layers (defaults: llamacpp.open_llama's)."""
    from tutorforge.config import OllamaSettings
    from tutorforge.gguf_tokenizer import load_gguf_tokenizer
    from tutorforge.llamacpp import open_llama
    from tutorforge.ollama import prompt_template
    from tutorforge.rundir import RunDir
    from tutorforge.tokenizer import run_tokenizer

    if target.is_dir():
        run = RunDir.open(target, "a .gguf file")
        cfg, settings, gguf = run.cfg, run.cfg.tutorforge.ollama, run.gguf()
        if not gguf.is_file():
            raise UserError(f"{gguf}: no such GGUF; run `tutorforge export {target}` first")
        tokenizer = run_tokenizer(*run.tuned(), trust_remote_code=cfg.trust_remote_code)
        fmt, family, stops = prompt_template(tokenizer, cfg.chat_template, cfg.default_system_message)
        n_ctx = n_ctx or settings.num_ctx or cfg.sequence_len
    elif target.suffix == ".gguf" and target.is_file():
        gguf, tokenizer, settings = target, load_gguf_tokenizer(target), OllamaSettings()  # Ollama's defaults
        fmt, family, stops = prompt_template(tokenizer, None, None)
    else:
        raise UserError(f"{target}: no such run directory or .gguf file")
    penalty, last_n = settings.repeat_penalty, settings.repeat_last_n
    llm = open_llama(gguf, n_ctx=n_ctx or 2048, threads=threads, gpu_layers=gpu_layers, last_n_tokens_size=last_n)
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
        try:
            for piece in model.stream(model.messages_for(history, system), max_tokens=max_tokens,
                                      temperature=temperature):
                parts.append(piece)
                write(piece)
                if hasattr(sys.stdout, "flush"):
                    sys.stdout.flush()
        except PromptTooLong as exc:
            history.pop()
            write(f"({exc}: /reset starts a new one)\n")
            continue
        write("\n")
        history.append({"role": "assistant", "content": "".join(parts).strip()})
