"""evaluate.py: PyTorch and llama.cpp generators answer alike, perplexity is the answers' own, and
open_generator picks the right one for a GGUF file, a training run or a model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tutorforge.data import Row
from tutorforge.errors import UserError
from tutorforge.evaluate import GGUFGenerator, TorchGenerator, open_generator

SYSTEM = "You are a concise Python tutor."


@pytest.fixture(scope="module")
def rows():
    from tutorforge.export import default_verify_rows

    return default_verify_rows()[:3]


@pytest.fixture(scope="module")
def torch_gen(bundled):
    return TorchGenerator(bundled.path, name="torch")


@pytest.fixture(scope="module")
def gguf_gen(bundled):
    from transformers import AutoTokenizer

    from tutorforge.models import bundled_gguf

    gen = GGUFGenerator(bundled_gguf(), tokenizer=AutoTokenizer.from_pretrained(str(bundled.path)), n_ctx=1024)
    yield gen
    gen.close()


@pytest.mark.slow
def test_gguf_and_torch_give_the_same_greedy_tokens(torch_gen, gguf_gen, rows):
    """The bundled GGUF (Q4_1, run by llama.cpp) and its dequantised PyTorch checkpoint: the same
    first 12 greedy tokens for every prompt (they drift apart later: llama.cpp quantises activations)."""
    for row in rows:
        a = torch_gen.generate(row.instruction, row.input, system=SYSTEM, max_new_tokens=12)
        b = gguf_gen.generate(row.instruction, row.input, system=SYSTEM, max_new_tokens=12)
        assert a.token_ids == b.token_ids and len(a.token_ids) == 12, row.instruction
        assert a.text == b.text and (a.stopped, b.stopped) == (False, False)


@pytest.mark.slow
def test_gguf_and_torch_perplexities_agree(torch_gen, gguf_gen, rows):
    ours, theirs = torch_gen.perplexity(rows, system=SYSTEM), gguf_gen.perplexity(rows, system=SYSTEM)
    assert 1.5 < ours < 40
    assert abs(theirs - ours) / ours < 0.03, (ours, theirs)


@pytest.mark.slow
def test_generation_stops_on_the_end_token(gguf_gen):
    answer = gguf_gen.generate("What is the capital of France?", system=SYSTEM, max_new_tokens=64)
    assert answer.stopped and answer.token_ids[-1] == gguf_gen.formats[SYSTEM].end_token_id
    assert answer.new_tokens == len(answer.token_ids) < 64 and "<|im_end|>" not in answer.text
    assert "Paris" in answer.text


@pytest.mark.slow
def test_perplexity_is_the_answer_tokens_own(torch_gen, rows):
    """Teacher-forced NLL over the answer (and end) tokens only: the same number as transformers'
    own loss with the prompt masked, and it falls when the answer is one the model expects."""
    from tutorforge.formatting import encode_row, prompt_format

    fmt = prompt_format(torch_gen.tokenizer, None, SYSTEM)
    example = encode_row(torch_gen.tokenizer, fmt, rows[0])
    with torch.inference_mode():
        loss = torch_gen.model(torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
    assert torch_gen.perplexity(rows[:1], system=SYSTEM) == pytest.approx(float(torch.exp(loss)), rel=1e-4)
    plain = Row("Say hello.", "", "Hello!", "t:1")
    garbled = Row("Say hello.", "", "Purple seventeen umbrella quantum.", "t:2")
    assert torch_gen.perplexity([plain], system=SYSTEM) < torch_gen.perplexity([garbled], system=SYSTEM)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, bundled) -> Path:
    """A training output_dir: run.json naming the bundled base and an adapter with non-zero updates."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("run")
    peft.save_pretrained(out / "adapter")
    config = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "chat_template": None,
              "default_system_message": SYSTEM}
    (out / "run.json").write_text(json.dumps({"status": "complete", "config": config}))
    return out


@pytest.mark.slow
def test_a_run_directory_opens_as_base_plus_adapter(run_dir, torch_gen, rows, bundled):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = open_generator(run_dir)
    assert isinstance(tuned, TorchGenerator) and tuned.name == run_dir.name and tuned.system == SYSTEM
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32),
                                          str(run_dir / "adapter")).eval()  # unmerged: the adapter as trained
    ids = torch.tensor([torch_gen.tokenizer.encode("def add(a, b):\n    return a + b")])
    with torch.inference_mode():
        ours, theirs, base = tuned.model(ids).logits, reference(ids).logits, torch_gen.model(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert (ours - base).abs().max() > 1e-2  # the adapter changed the model
    assert tuned.perplexity(rows, system=SYSTEM) != pytest.approx(torch_gen.perplexity(rows, system=SYSTEM), rel=1e-3)


@pytest.mark.slow
def test_open_generator_dispatch_and_errors(run_dir, bundled):
    from tutorforge.models import bundled_gguf

    gen = open_generator(bundled_gguf(), tokenizer_dir=bundled.path, system=SYSTEM)
    assert isinstance(gen, GGUFGenerator) and gen.name == bundled_gguf().name
    gen.close()
    with pytest.raises(UserError, match="takes no adapter"):
        open_generator(bundled_gguf(), adapter=run_dir / "adapter")
    with pytest.raises(UserError, match="--tuned-adapter"):
        open_generator(run_dir / "adapter")
    with pytest.raises(UserError, match="no such GGUF"):
        open_generator(run_dir / "missing.gguf")
    (run_dir / "empty").mkdir()
    (run_dir / "empty" / "run.json").write_text(json.dumps({"config": {"base_model": "smollm2"}}))
    with pytest.raises(UserError, match="no adapter"):
        open_generator(run_dir / "empty")


def test_the_repeat_penalty_is_llama_cpp_s():
    """Each distinct recent token once: positive logits divided, negative ones multiplied."""
    import numpy as np

    from tutorforge.evaluate import penalize_repeats

    logits = np.array([2.0, -1.0, 0.5, 3.0])
    out = penalize_repeats(logits, [0, 1, 1, 0], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]
    assert int(np.argmax(penalize_repeats(np.array([3.0, 2.9]), [0], 1.1))) == 1  # a repeat loses a near tie
