"""Answer prompts with a model, greedily (temperature 0), behind one `Generator` interface.

    tutorforge generate recipes/python-tutor-smollm2-cpu.yml --prompt "How do I reverse a list?"
    gen = open_generator("outputs/python-tutor-smollm2")      # base + the run's adapter
    gen = open_generator("model.Q4_K_M.gguf")                  # llama.cpp

`TorchGenerator` runs a Hugging Face checkpoint (optionally with a PEFT adapter) with PyTorch;
`GGUFGenerator` runs a GGUF file with llama.cpp (opened and decoded by llamacpp.py as `tutorforge chat`
decodes: llama.cpp's sampler, Ollama's repeat-penalty window). Both render the prompt with the
training-time formatter and tokenize it with the Hugging Face tokenizer as training did (`formatting.encode_prompt`:
the same ids, except that a special token typed in a prompt is text, not a turn marker), decode
greedily, stop on the format's end token, and measure the teacher-forced perplexity of reference
answers (answer tokens and the end token only). A follow-up question comes with its `history` (the
conversation's earlier turns): the whole conversation is rendered with the chat template and the
generation prompt (`formatting.encode_chat_prompt`), and a conversation row's perplexity scores
the turns training labels (`formatting.encode_row`). The A/B comparison holds two Generators and does
not care which kind each one is.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tutorforge.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    text: str
    new_tokens: int
    stopped: bool  # True: ended by an end-of-turn token; False: cut at max_new_tokens
    token_ids: tuple[int, ...] = ()  # the generated ids, end token included when stopped


class Generator(Protocol):
    name: str

    def generate(self, instruction: str, input: str = "", *, system: str | None = None,
                 max_new_tokens: int = 256, history: Sequence[dict] = ()) -> Answer: ...

    def perplexity(self, rows: list, *, system: str | None = None) -> float: ...


def _answer(tokenizer, new: list[int], eos: int) -> Answer:
    stopped = bool(new) and new[-1] == eos
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Answer(text.strip(), len(new), stopped, tuple(new))


def _format(gen, system: str | None):
    """The generator's prompt format for this system prompt (its own when None), chosen once."""
    from tutorforge.formatting import prompt_format

    system = system if system is not None else gen.system
    if system not in gen.formats:
        gen.formats[system] = prompt_format(gen.tokenizer, gen.chat_template, system)
    return gen.formats[system]


def _encode_reference(tokenizer, fmt, row):
    """`encode_row` of a reference row; a conversation of one exchange (a system turn at most before
    its user turn) asked of an Alpaca model is its Alpaca row, as generation asks it."""
    import dataclasses

    from tutorforge.formatting import encode_row

    turns = getattr(row, "turns", ())
    if fmt.kind == "alpaca" and turns and [t.role for t in turns if t.role != "system"] == ["user", "assistant"]:
        system = next((t.content for t in turns if t.role == "system"), fmt.system)
        return encode_row(tokenizer, dataclasses.replace(fmt, system=system), dataclasses.replace(row, turns=()))
    return encode_row(tokenizer, fmt, row)


class TorchGenerator:
    """Greedy decoding with a local Hugging Face checkpoint (plus an optional PEFT adapter, merged
    in memory) on CPU or the given device."""

    def __init__(self, model_dir: Path, *, adapter: Path | None = None, name: str | None = None,
                 device: str = "cpu", chat_template: str | None = None, system: str | None = None,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        from tutorforge.tokenizer import run_tokenizer

        self.name = name or (f"{Path(model_dir).name}+{Path(adapter).name}" if adapter else Path(model_dir).name)
        self.device, self.chat_template, self.system = device, chat_template, system
        self.formats: dict = {}
        self.tokenizer = run_tokenizer(model_dir, adapter, trust_remote_code=trust_remote_code)  # as trained
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            if not (Path(adapter) / "adapter_config.json").is_file():
                raise UserError(f"{adapter}: not a PEFT adapter (adapter_config.json missing); give the "
                                "adapter/ directory of a training run, or the run's output_dir")
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
            log.info("%s: adapter %s merged in memory", self.name, adapter)
        # transformers wraps PreTrainedModel.to in functools.wraps, which pyright sees as unbound
        self.model = model.to(device).eval()  # pyright: ignore[reportArgumentType] -- device is not self

    @classmethod
    def wrapping(cls, model, tokenizer, *, name: str = "in training", chat_template: str | None = None,
                 system: str | None = None) -> TorchGenerator:
        """A Generator over a model already in memory (training's, between two steps), used as it is:
        on its own device, not copied, not put in eval mode."""
        gen = cls.__new__(cls)
        gen.name, gen.chat_template, gen.system, gen.formats = name, chat_template, system, {}
        gen.tokenizer, gen.model, gen.device = tokenizer, model, next(model.parameters()).device
        return gen

    def _prompt_ids(self, fmt, instruction: str, input: str, history: Sequence[dict]):
        import torch

        from tutorforge.formatting import encode_chat_prompt

        ids = torch.tensor([encode_chat_prompt(self.tokenizer, fmt, instruction, input, history=history)],
                           device=self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def generate(self, instruction: str, input: str = "", *, system: str | None = None,
                 max_new_tokens: int = 256, history: Sequence[dict] = ()) -> Answer:
        """The greedy answer to the user turn `instruction` (+ `input`), after the conversation's
        earlier turns `history` ({"role", "content"} dicts; its system turn replaces `system`)."""
        import torch

        fmt = _format(self, system)
        ids = self._prompt_ids(fmt, instruction, input, history)
        eos = fmt.end_token_id
        with torch.inference_mode():
            # GenerationMixin.generate types `self` as a Protocol (transformers._typing) no model class meets
            out = self.model.generate(  # pyright: ignore[reportAttributeAccessIssue] -- transformers' self type
                **ids, do_sample=False, max_new_tokens=max_new_tokens,
                eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id or eos)
        return _answer(self.tokenizer, out[0, ids["input_ids"].shape[1]:].tolist(), eos)

    def perplexity(self, rows: list, *, system: str | None = None) -> float:
        """exp(mean NLL) of the reference answers' tokens (and end token) given their prompts."""
        import torch
        import torch.nn.functional as F

        fmt = _format(self, system)
        nll, count = 0.0, 0
        with torch.inference_mode():
            for row in rows:
                example = _encode_reference(self.tokenizer, fmt, row)
                ids = torch.tensor([example.input_ids], device=self.device)
                labels = torch.tensor(example.labels[1:], device=self.device)
                logits = self.model(ids).logits[0, :-1].float()
                nll += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
                count += int((labels != -100).sum())
        return _ppl(nll, count)


def _ppl(nll: float, count: int) -> float:
    if count == 0:
        raise UserError("perplexity: no reference answers to score (every row's output is empty)")
    return math.exp(nll / count)


class GGUFGenerator:
    """Greedy decoding with a GGUF file in llama.cpp (llamacpp.open_llama: threads and GPU layers as
    configured there), through llama.cpp's own sampler chain with Ollama's repeat-penalty window
    (llamacpp.greedy), as `tutorforge chat` decodes. The prompt is tokenized by the Hugging Face
    tokenizer (given, else rebuilt from the GGUF)."""

    def __init__(self, gguf: Path, *, tokenizer=None, chat_template: str | None = None,
                 system: str | None = None, n_ctx: int = 2048, name: str | None = None,
                 repeat_penalty: float = 1.0, repeat_last_n: int = 64, threads: int | None = None,
                 gpu_layers: int | None = None):
        from tutorforge.gguf_tokenizer import load_gguf_tokenizer
        from tutorforge.llamacpp import open_llama

        gguf = Path(gguf)
        if not gguf.is_file():
            raise UserError(f"{gguf}: no such GGUF file")
        self.name = name or gguf.name
        self.chat_template, self.system, self.n_ctx = chat_template, system, n_ctx
        self.repeat_penalty = repeat_penalty  # as Ollama decodes (its window: last_n_tokens_size)
        self.formats: dict = {}
        self.tokenizer = tokenizer if tokenizer is not None else load_gguf_tokenizer(gguf)
        # logits_all: perplexity needs every position's logits (n_ctx x vocab floats of memory)
        self.llm = open_llama(gguf, n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers, logits_all=True,
                              seed=0, last_n_tokens_size=repeat_last_n)

    def generate(self, instruction: str, input: str = "", *, system: str | None = None,
                 max_new_tokens: int = 256, history: Sequence[dict] = ()) -> Answer:
        """As TorchGenerator.generate, decoded by llama.cpp."""
        from tutorforge.formatting import encode_chat_prompt
        from tutorforge.llamacpp import greedy

        fmt = _format(self, system)
        ids = encode_chat_prompt(self.tokenizer, fmt, instruction, input, history=history)
        if len(ids) >= self.n_ctx:
            raise UserError(f"{self.name}: the prompt is {len(ids)} tokens, n_ctx is {self.n_ctx}; "
                            "shorten the prompt or raise n_ctx")
        eos = fmt.end_token_id
        new = list(greedy(self.llm, ids, max_tokens=max_new_tokens, end=eos, repeat_penalty=self.repeat_penalty))
        if new and len(new) < max_new_tokens and new[-1] != eos:
            log.warning("%s: answer cut at n_ctx %d tokens", self.name, self.n_ctx)
        return _answer(self.tokenizer, new, eos)

    def perplexity(self, rows: list, *, system: str | None = None) -> float:
        """As TorchGenerator.perplexity, from llama.cpp's logits. Rows longer than n_ctx are cut
        there (counted in a warning)."""
        import numpy as np

        fmt = _format(self, system)
        nll, count, cut = 0.0, 0, 0
        for row in rows:
            example = _encode_reference(self.tokenizer, fmt, row)
            ids, labels = example.input_ids[: self.n_ctx], example.labels[: self.n_ctx]
            cut += len(ids) < len(example.input_ids)
            self.llm.reset()
            self.llm.eval(ids)
            target = np.asarray(labels[1:])
            at = np.flatnonzero(target != -100)  # positions that predict an answer token
            logits = np.asarray(self.llm.scores[at], dtype=np.float64)
            peak = logits.max(-1, keepdims=True)
            logp = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
            nll -= float(logp[np.arange(len(at)), target[at]].sum())
            count += len(at)
        if cut:
            log.warning("%s: perplexity: %d reference answers cut at n_ctx %d tokens", self.name, cut, self.n_ctx)
        return _ppl(nll, count)

    def close(self) -> None:
        self.llm.close()


def open_generator(spec: str | Path, *, adapter: Path | None = None, tokenizer_dir: Path | None = None,
                   chat_template: str | None = None, system: str | None = None,
                   name: str | None = None, threads: int | None = None,
                   gpu_layers: int | None = None, trust_remote_code: bool = False,
                   repeat_penalty: float = 1.0, repeat_last_n: int = 64) -> Generator:
    """A Generator for a .gguf file (llama.cpp, with these threads and GPU layers: see llamacpp;
    prompted with the tokenizer in `tokenizer_dir` when given; decoded with this repeat penalty over
    the last repeat_last_n tokens, as Ollama does), a training output_dir (its base +
    adapter/), or anything base_model accepts (a model directory, a hub id, `smollm2`), optionally +
    `adapter`; a model's tokenizer is the run's (tokenizer.run_tokenizer)."""
    from tutorforge.models import resolve_base_model
    from tutorforge.rundir import RunDir

    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if adapter is not None:
            raise UserError(f"{spec}: a GGUF file takes no adapter; export base + adapter to GGUF "
                            "(`tutorforge export`), or give the base model directory with the adapter")
        tokenizer = None
        if tokenizer_dir is not None:
            from tutorforge.tokenizer import run_tokenizer

            tokenizer = run_tokenizer(Path(tokenizer_dir), trust_remote_code=trust_remote_code)
        return GGUFGenerator(path, tokenizer=tokenizer, chat_template=chat_template, system=system, name=name,
                             threads=threads, gpu_layers=gpu_layers, repeat_penalty=repeat_penalty,
                             repeat_last_n=repeat_last_n)
    if (run := RunDir.find(path)) is not None:
        model_dir, trained = run.tuned()
        adapter = adapter or trained
        if adapter is None and not (model_dir / "config.json").is_file():
            raise UserError(f"{model_dir}: no trained model in this training output_dir; run `tutorforge train` first")
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: no adapter in this training output_dir; run `tutorforge train` first")
        return TorchGenerator(model_dir, adapter=adapter,
                              name=name or path.name, chat_template=chat_template or run.cfg.chat_template,
                              system=system if system is not None else run.cfg.default_system_message,
                              trust_remote_code=run.cfg.trust_remote_code)
    if path.is_dir() and (path / "adapter_config.json").is_file() and adapter is None:
        raise UserError(f"{spec}: a PEFT adapter, not a model; give the base model and pass the adapter "
                        "with --tuned-adapter (or give the training output_dir)")
    resolved = resolve_base_model(str(spec))
    return TorchGenerator(resolved.path, adapter=adapter, name=name or str(spec), chat_template=chat_template,
                          system=system, trust_remote_code=trust_remote_code)
