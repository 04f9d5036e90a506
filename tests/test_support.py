"""support.py: a base model that export could not write is refused by validate, plan and run before
any training, with its architecture named; the architectures llama.cpp's converter registers are
read from its source."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tutorforge import cli
from tutorforge.errors import UserError


def tiny_model(directory: Path, architecture: str | None = None) -> Path:
    """A 2-layer Llama (hidden 64) with the bundled model's tokenizer, its config.json naming
    `architecture` instead when given."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tutorforge.gguf_tokenizer import load_gguf_tokenizer
    from tutorforge.models import bundled_gguf

    tokenizer = load_gguf_tokenizer(bundled_gguf())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if architecture:
        settings = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**settings, "architectures": [architecture]}))
    return directory


def config(tmp_path: Path, model: Path) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi", "input": "", "output": "hi"}) + "\n")
    path = tmp_path / "c.yml"
    path.write_text(f"base_model: {model}\nadapter: lora\ndatasets:\n  - path: {data}\n"
                    f"output_dir: {tmp_path / 'run'}\n")
    return path


def test_the_converters_architectures_are_read_from_its_source():
    from tutorforge.llamacpp_tools import converter_architectures

    known = converter_architectures()
    assert {"Qwen3ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "Olmo2ForCausalLM",
            "GraniteForCausalLM", "SmolLM3ForCausalLM"} <= known
    assert len(known) > 200 and "FooForCausalLM" not in known


def test_an_architecture_export_cannot_write_is_refused_before_training(tmp_path, capsys):
    from tutorforge.support import model_problems

    good = tiny_model(tmp_path / "llama")
    assert model_problems(good) == []
    bad = tiny_model(tmp_path / "foo", "FooForCausalLM")
    [problem] = model_problems(bad)
    assert problem.startswith("architecture FooForCausalLM: export cannot write it to GGUF")
    assert "LlamaForCausalLM" in problem and "llama.cpp's converter at llama-cpp-python" in problem
    recipe = config(tmp_path, bad)
    for command in (["validate", str(recipe)], ["plan", str(recipe), "--gpu", "cpu"]):
        assert cli.main(command) == 2, command
        assert "base_model cannot go the whole way:\n  architecture FooForCausalLM" in capsys.readouterr().err
    from tutorforge.pipeline import run

    with pytest.raises(UserError, match="architecture FooForCausalLM: export cannot write it"):
        run(recipe)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "adapter").exists()
    assert cli.main(["validate", str(config(tmp_path, good))]) == 0


def test_a_chat_template_package_cannot_write_is_refused_before_training(tmp_path, capsys):
    model = tiny_model(tmp_path / "odd")
    (model / "chat_template.jinja").write_text("{% for m in messages %}<<{{ m['role'] }}: {{ m['content'] }}>>"
                                               "{% endfor %}{% if add_generation_prompt %}<<assistant: {% endif %}")
    recipe = config(tmp_path, model)
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "base_model cannot go the whole way:\n  the Ollama Modelfile:" in err and "ollama_templates.py" in err
    recipe.write_text(recipe.read_text() + "chat_template: chatml\n")  # a template package can write
    assert cli.main(["validate", str(recipe)]) == 0


def test_run_with_nothing_held_out_and_no_prompts_stops_before_training(tmp_path):
    """val_set_size 0 leaves the compare stage nothing to ask: run says so before training, naming the
    keys, and again when tutorforge.compare.prompts names no file; nothing is trained."""
    from tutorforge.pipeline import run

    recipe = config(tmp_path, tiny_model(tmp_path / "llama"))  # val_set_size: the default, 0
    with pytest.raises(UserError, match="val_set_size is 0.*set tutorforge.compare.prompts"):
        run(recipe)
    recipe.write_text(recipe.read_text() + f"tutorforge: {{compare: {{prompts: {tmp_path / 'asked.jsonl'}}}}}\n")
    with pytest.raises(UserError, match="tutorforge.compare.prompts: .*asked.jsonl is not a file"):
        run(recipe)
    assert not (tmp_path / "run" / "adapter").exists()
