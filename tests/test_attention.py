"""Attention kernels: a kernel the model cannot run is named before any weight is read
(lora.load_base), Gemma 2 (no SDPA in transformers) trains under its default, eager, and the memory
plan predicts the kernel training runs (plan.planned_attention) and counts eager's probabilities."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from test_plan import config, line
from test_train import tiny_config
from tutorforge import plan, shapes
from tutorforge.config import load_config
from tutorforge.errors import UserError

GB = 2**30
CPU = torch.device("cpu")
FROZEN = {"quant": None, "double_quant": False, "dtype": torch.float32, "device": CPU,
          "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory, bundled_tokenizer_dir) -> Path:
    """A 2-layer Gemma 2 (hidden 64) with random weights and the bundled tokenizer."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("gemma2")
    Gemma2ForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)
    return out


def test_sdpa_asked_of_gemma2_trains_eager_and_says_so(tmp_path, tiny_gemma2):
    """Axolotl's configs say sdp_attention for any model: on a class with no SDPA, training runs its
    default (eager) and says why; loading it with SDPA directly is still the named error."""
    from tutorforge.lora import load_base
    from tutorforge.train import build_run

    cfg = load_config(tiny_config(tmp_path, tiny_gemma2, sdp_attention=True, rows=8, max_steps=2))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=CPU)
    assert "attn_implementation sdpa: Gemma2ForCausalLM has no SDPA in transformers; using eager, its default" \
        in run.decisions
    assert "attention eager" in run.decisions and run.model.config._attn_implementation == "eager"
    with pytest.raises(UserError) as raised:
        load_base(tiny_gemma2, attention="sdpa", **FROZEN)
    text = str(raised.value)
    assert text.startswith("attn_implementation: sdpa: Gemma2ForCausalLM cannot run it here"), text
    assert "it runs eager, flash_attention_2, flash_attention_3, flex_attention" in text
    assert "remove attn_implementation to use the model's default (eager), or name one it supports" in text


def test_flex_attention_where_torch_lacks_it(tiny_llama, monkeypatch):
    from transformers import modeling_utils

    from tutorforge.lora import load_base

    assert load_base(tiny_llama, attention="flex_attention", **FROZEN).config._attn_implementation == "flex_attention"
    monkeypatch.setattr(modeling_utils, "is_torch_flex_attn_available", lambda: False)
    with pytest.raises(UserError, match=r"attn_implementation: flex_attention: LlamaForCausalLM cannot run it "
                                        r"here \(this torch has no flex attention; it runs eager, sdpa, "
                                        r"flash_attention_2, flash_attention_3\); remove attn_implementation "
                                        r"to use the model's default \(sdpa\)"):
        load_base(tiny_llama, attention="flex_attention", **FROZEN)


def test_gemma2_trains_under_its_default_eager(tmp_path, tiny_gemma2):
    from tutorforge.train import build_run, train_steps

    cfg = load_config(tiny_config(tmp_path, tiny_gemma2, rows=8, max_steps=2, sequence_len=256))
    assert cfg.attn_implementation is None
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=CPU)
    assert "attention eager (the model's default)" in run.decisions
    before = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    (tmp_path / "out").mkdir(exist_ok=True)
    train_steps(run, {"step": 0})
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["step"] > 0] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    changed = [n for n, p in run.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before) > 0  # every LoRA tensor moved


# --- the memory plan's kernel --------------------------------------------------------------------

def test_the_plan_predicts_the_kernel_without_loading_weights(tmp_path, tiny_gemma2, tiny_llama):
    from tutorforge.hardware import profile

    hw, cfg = profile("rtx3060-12gb"), config()
    table = shapes.shape_from_table("NousResearch/Meta-Llama-3-8B")
    assert table is not None
    assert plan.planned_attention(cfg, hw, table) == ("sdpa", "the model's default: LlamaForCausalLM supports SDPA")
    gemma = dataclasses.replace(table, source=str(tiny_gemma2 / "config.json"))
    assert plan.planned_attention(cfg, hw, gemma) == ("eager", "the model's default: Gemma2ForCausalLM has no SDPA")
    assert plan.planned_attention(cfg, hw, shapes.shape_from_config(tiny_llama / "config.json"))[0] == "sdpa"
    odd = tmp_path / "config.json"
    odd.write_text(json.dumps({**json.loads((tiny_llama / "config.json").read_text()),
                               "architectures": ["MyOwnForCausalLM"]}))
    kernel, why = plan.planned_attention(cfg, hw, dataclasses.replace(table, source=str(odd)))
    assert kernel == "sdpa" and why.startswith("assumed: MyOwnForCausalLM is not a class transformers has here")
    assert plan.planned_attention(config(attn_implementation="eager"), hw, gemma) == (
        "eager", "attn_implementation: eager")
    assert plan.planned_attention(config(attn_implementation="sdpa"), hw, gemma) == (
        "eager", "attn_implementation sdpa: Gemma2ForCausalLM has no SDPA in transformers; using eager, its default")
    assert plan.planned_attention(config(attn_implementation="sdpa"), hw, table) == (
        "sdpa", "attn_implementation: sdpa")
    kernel, why = plan.planned_attention(config(attn_implementation="flash_attention_2"), profile("cpu"), gemma)
    assert kernel == "eager" and why.startswith("attn_implementation flash_attention_2 needs CUDA")


def test_eager_attention_costs_its_probabilities_in_the_plan(capsys, write_config):
    """The seed recipe (Llama 3 8B, 32 layers of 32 heads, sequence_len 1024, packed, bf16 compute)
    with checkpointing off: eager keeps 1024 x 32 x 1024 probabilities a layer in fp32 and bf16
    (192 MiB), q, k and v for every head, and no SDPA output, logsumexp or mask copies."""
    sdpa = plan.plan_training(config(gradient_checkpointing=False), hardware="a100-80gb")
    eager = plan.plan_training(config(gradient_checkpointing=False, attn_implementation="eager"),
                               hardware="a100-80gb")
    assert (sdpa.settings.attention, eager.settings.attention) == ("sdpa", "eager")
    tokens, q_dim = 1024, 4096
    per_layer_sdpa = tokens * 4 * q_dim * 2 + tokens * 32 * 4 + tokens * 1024 * 2
    per_layer_eager = tokens * 3 * q_dim * 2 + tokens * 32 * 1024 * (4 + 2)
    extra = 32 * (per_layer_eager - per_layer_sdpa) - tokens * 1024  # the shared boolean mask: SDPA's only
    assert extra == 6_101_663_744
    assert (line(eager, "activations").gb - line(sdpa, "activations").gb) * GB == pytest.approx(extra, abs=1)
    assert "eager attention's probabilities 192.0 MiB a layer" in line(eager, "activations").how
    assert "attention: eager (attn_implementation: eager); eager keeps the attention probabilities" in eager.render()
    path = write_config(yaml.safe_dump({"base_model": "NousResearch/Meta-Llama-3-8B", "adapter": "qlora",
                                        "load_in_4bit": True, "eager_attention": True}))
    from tutorforge import cli

    assert cli.main(["plan", str(path), "--gpu", "a100-80gb"]) == 0
    assert "\nattention: eager (attn_implementation: eager)" in capsys.readouterr().out
