"""Answer prompts with a model, greedily (temperature 0), behind one `Generator` interface.

    tutorforge generate recipes/python-tutor-smollm2-cpu.yml --prompt "How do I reverse a list?"

`TorchGenerator` runs a Hugging Face checkpoint with PyTorch. The A/B comparison of base vs tuned
holds two Generators and does not care which kind each one is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    text: str
    new_tokens: int
    stopped: bool  # True: ended by an end-of-turn token; False: cut at max_new_tokens


class Generator(Protocol):
    name: str

    def generate(self, instruction: str, input: str = "", *, system: str | None = None,
                 max_new_tokens: int = 256) -> Answer: ...


class TorchGenerator:
    """Greedy decoding with a local Hugging Face checkpoint on CPU (or the given device)."""

    def __init__(self, model_dir: Path, *, name: str | None = None, device: str = "cpu",
                 chat_template: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name or model_dir.name
        self.device = device
        self.chat_template = chat_template
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.to(device).eval()

    def generate(self, instruction: str, input: str = "", *, system: str | None = None,
                 max_new_tokens: int = 256) -> Answer:
        import torch

        from tutorforge.formatting import prompt_format, render_prompt

        fmt = prompt_format(self.tokenizer, self.chat_template, system)
        prompt = render_prompt(self.tokenizer, fmt, instruction, input)
        ids = self.tokenizer(prompt, return_tensors="pt",
                             add_special_tokens=fmt.kind == "alpaca").to(self.device)
        eos = fmt.end_token_id
        with torch.inference_mode():
            out = self.model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens,
                                      eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id or eos)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        stopped = bool(new) and new[-1] == eos
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Answer(text.strip(), len(new), stopped)
