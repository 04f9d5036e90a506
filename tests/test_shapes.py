"""shapes.py: a model's shape from a local config.json, from GGUF metadata and from the built-in
table, offline; and what an unknown model is told."""
from __future__ import annotations

import dataclasses
import json

import pytest

from tutorforge import shapes


def test_shape_from_a_local_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 3,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True,
        "dtype": "bfloat16"}))
    shape = shapes.model_shape(str(tmp_path))
    assert (shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.kv_heads, shape.head_dim,
            shape.vocab, shape.tied, shape.dtype_bytes) == (256, 688, 3, 8, 2, 32, 1000, True, 2)
    assert shape.source == str(tmp_path / "config.json")
    assert shape.params == 3 * (256 * 256 * 2 + 256 * 64 * 2 + 3 * 256 * 688) + 1000 * 256 + 7 * 256
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    with pytest.raises(shapes.ShapeUnknown, match="model_type 'gpt2'"):
        shapes.model_shape(str(tmp_path))


def test_shape_from_gguf_metadata():
    from tutorforge.models import bundled_gguf

    shape = shapes.shape_from_gguf(bundled_gguf())
    assert (shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.kv_heads, shape.head_dim,
            shape.vocab, shape.tied) == (576, 1536, 30, 9, 3, 64, 49152, True)
    assert shape.params == 134_515_008  # what transformers counts for SmolLM2-135M (DESIGN.md: 134.5M)
    converted = shapes.model_shape("smollm2")  # the cached conversion's config.json, same numbers
    assert converted.source.endswith("config.json") or converted.source == str(bundled_gguf())
    assert dataclasses.replace(converted, name="", source="") == dataclasses.replace(shape, name="", source="")
    table = shapes.shape_from_table("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert dataclasses.replace(table, name="", source="", dtype_bytes=4) == \
        dataclasses.replace(shape, name="", source="")


@pytest.mark.parametrize("hub_id, params", [  # parameter counts published with each model
    ("NousResearch/Meta-Llama-3-8B", 8.03e9), ("meta-llama/Llama-3.2-1B", 1.24e9),
    ("meta-llama/Llama-3.2-3B-Instruct", 3.21e9), ("mistralai/Mistral-7B-v0.1", 7.24e9),
    ("Qwen/Qwen2.5-7B", 7.62e9), ("HuggingFaceTB/SmolLM2-135M", 134.5e6),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", 361.8e6), ("HuggingFaceTB/SmolLM2-1.7B", 1.71e9)])
def test_the_built_in_table_covers_well_known_models(hub_id, params):
    shape = shapes.model_shape(hub_id)  # offline: nothing of these is on this machine
    assert shape.source in ("built-in table", ) or shape.source.endswith("config.json")
    assert shape.params == pytest.approx(params, rel=0.01)


def test_unknown_model_says_how_to_plan_it():
    with pytest.raises(shapes.ShapeUnknown, match="meta-llama-3-8b"):
        shapes.model_shape("someone/Meta-Llama-3-8b-typo")
