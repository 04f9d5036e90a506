"""memory.py: the formulas against what the libraries keep: optimizer states by type, and one
decoder layer's activations against the tensors autograd saves."""
from __future__ import annotations

import contextlib

import pytest
import torch
import yaml

from test_plan import config
from tutorforge import hardware, memory, plan, shapes
from tutorforge.config import parse


def test_optimizer_states_by_type():
    s = plan.settings(config(), hardware.profile("a100-80gb"), 32)
    tensors = memory.lora_tensors(s, shapes.model_shape("NousResearch/Meta-Llama-3-8B"))
    n = sum(r * c for r, c in tensors)
    assert memory.optimizer_bytes("adamw_torch", tensors, 4) == n * 8
    assert memory.optimizer_bytes("sgd", tensors, 4) == 0
    assert memory.optimizer_bytes("adafactor", tensors, 4) == sum((r + c) * 4 for r, c in tensors)
    small = [(8, 192)]  # under bitsandbytes' min_8bit_size: 32-bit states
    assert memory.optimizer_bytes("adamw_bnb_8bit", small, 4) == 8 * 192 * 8


def tiny_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    return tmp_path


def saved_bytes_per_layer(model, batch, autocast: bool) -> list[int]:
    """Bytes of new tensors autograd keeps, by decoder layer (weights excluded)."""
    from tutorforge.loss import loss_sum

    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for m in model.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        for t in (state.absmax, state.state2.absmax if state.state2 else None) if state else ():
            if t is not None:
                owned.add(t.untyped_storage().data_ptr())
    seen, per, where = set(), {}, [None]

    def pack(x):
        ptr = x.untyped_storage().data_ptr()
        if ptr not in owned and ptr not in seen and where[0] is not None:
            seen.add(ptr)
            per[where[0]] = per.get(where[0], 0) + x.untyped_storage().nbytes()
        return x

    layers = next(m for n, m in model.named_modules() if n.endswith(".layers") and isinstance(m, torch.nn.ModuleList))
    for j, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, j=j: where.__setitem__(0, j))
        layer.register_forward_hook(lambda m, a, o: where.__setitem__(0, None))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), ctx:
        loss_sum(model, batch)
    return [per[j] for j in range(len(layers))]


EAGER = {"attn_implementation": "eager"}


@pytest.mark.parametrize("mode", ["fp32", "fp32 packed", "fp32 dropout", "nf4", "nf4 bf16", "nf4 bf16 packed",
                                  "bf16 autocast", "bf16 weights", "nf4 bf16 dropout q_proj v_proj",
                                  "fp32 eager", "fp32 packed eager", "bf16 autocast eager",
                                  "bf16 autocast packed eager", "bf16 weights eager", "nf4 bf16 eager",
                                  "fp32 eager q_proj v_proj"])
def test_layer_activations_are_what_autograd_keeps(tmp_path, mode):
    """Each term of memory.layer_activations against the tensors autograd saves, on CPU: fp32 and
    bf16 autocast, a 4-bit base, packed samples (a mask), dropout, some modules only; "bf16
    weights" is how CUDA stores a 16-bit base (compute dtype weights); "eager": eager attention,
    which keeps the attention probabilities (the plan reads it from attn_implementation)."""
    from tutorforge.lora import add_lora, load_base

    words = mode.split()
    quant = "nf4" if "nf4" in words else None
    half = "bf16" in words
    targets = tuple(w for w in words if w.endswith("_proj"))
    model = load_base(tiny_llama(tmp_path), quant=quant, double_quant=True,
                      dtype=torch.bfloat16 if half else torch.float32, device=torch.device("cpu"),
                      gradient_checkpointing=False, attention="eager" if "eager" in words else None)
    assert model.config._attn_implementation == ("eager" if "eager" in words else "sdpa")
    if "weights" in words:
        model.to(torch.bfloat16)
    model = add_lora(model, r=4, alpha=8, dropout=0.1 if "dropout" in words else 0.0, target_linear=not targets,
                     target_modules=targets, modules_to_save=(), fan_in_fan_out=False)
    model.train()
    seq, mb = 48, 2
    positions = torch.cat([torch.arange(20), torch.arange(seq - 20)]) if "packed" in words else torch.arange(seq)
    ids = torch.randint(0, 320, (mb, seq))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": positions.expand(mb, -1)}
    measured = saved_bytes_per_layer(model, batch, autocast=half)
    cfg = parse(yaml.safe_dump({"base_model": "x/y", "adapter": "qlora" if quant else "lora",
                                "load_in_4bit": bool(quant), "lora_r": 4, "lora_target_linear": not targets,
                                "lora_target_modules": list(targets), "sequence_len": seq,
                                "lora_dropout": 0.1 if "dropout" in words else 0.0, "micro_batch_size": mb,
                                "sample_packing": "packed" in words, "bf16": half,
                                **(EAGER if "eager" in words else {})}), "t.yml").config
    hw = hardware.Hardware("t", "cuda" if "weights" in words else "cpu", 1, 1, half, "test")
    shape = shapes.shape_from_config(tmp_path / "config.json")
    predicted = memory.layer_activations(plan.settings(cfg, hw, 3), shape, hw, mb * seq)
    assert measured[1:] == [predicted, predicted], (mode, measured, predicted)


@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp32 packed", "bf16 packed", "fp32 eager", "bf16 packed eager"])
def test_full_fine_tune_activations_are_what_autograd_keeps(tmp_path, mode):
    """A full fine-tune (every weight trainable, fp32 master weights, bf16 autocast or fp32): the
    norms' normalised inputs and every linear's input are kept for the weights' gradients."""
    from tutorforge.finetune import unfreeze
    from tutorforge.lora import load_base

    half, packed, eager = "bf16" in mode, "packed" in mode, "eager" in mode
    model = load_base(tiny_llama(tmp_path), quant=None, double_quant=False, dtype=torch.float32,
                      device=torch.device("cpu"), gradient_checkpointing=False, attention="eager" if eager else None)
    unfreeze(model, ())
    model.train()
    seq, mb = 48, 2
    positions = torch.cat([torch.arange(20), torch.arange(seq - 20)]) if packed else torch.arange(seq)
    ids = torch.randint(0, 320, (mb, seq))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": positions.expand(mb, -1)}
    measured = saved_bytes_per_layer(model, batch, autocast=half)
    cfg = parse(yaml.safe_dump({"base_model": "x/y", "sequence_len": seq, "micro_batch_size": mb,
                                "sample_packing": packed, "bf16": half, **(EAGER if eager else {})}), "t.yml").config
    hw = hardware.Hardware("t", "cpu", 1, 1, half, "test")
    shape = shapes.shape_from_config(tmp_path / "config.json")
    s = plan.settings(cfg, hw, 3, shape)
    assert s.full and memory.dtypes(s, hw)[1] == 4 and s.attention == ("eager" if eager else "sdpa")
    predicted = memory.layer_activations(s, shape, hw, mb * seq)
    assert measured[1:] == [predicted, predicted], (mode, measured, predicted)
