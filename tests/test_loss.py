"""loss.loss_sum in chunks of label rows against the model's own forward in one piece: the same loss
and the same gradients in fp32 for each family's head (Gemma's soft-capping, Granite's and Cohere's
scales, tied and untied heads, LoRA and a full fine-tune), through DDP's wrapper, and autograd keeps
one chunk's logits, not every label position's."""
from __future__ import annotations

import pytest
import torch
import transformers

from tutorforge import memory
from tutorforge.formatting import IGNORE
from tutorforge.loss import loss_sum

VOCAB = 320
SMALL = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
# family -> (transformers config class, what its head does beyond the linear layer)
HEADS = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "llama tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", {}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "final_logit_softcapping": 2.0}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "final_logit_softcapping": 2.0}),
    "granite": ("GraniteConfig", {"logits_scaling": 4.0}),
    "cohere": ("CohereConfig", {"logit_scale": 0.5}),
    "phi3": ("Phi3Config", {"pad_token_id": 0}),
}


def tiny(family: str, *, lora: bool):
    name, extra = HEADS[family]
    config = getattr(transformers, name)(**SMALL, **extra)
    config._attn_implementation = "eager" if family.startswith("gemma") else "sdpa"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a head far from uniform, so the soft-capping and scales matter
        model.get_output_embeddings().weight.mul_(8.0)
    if lora:
        from tutorforge.lora import add_lora

        model = add_lora(model, r=4, alpha=8, dropout=0.0, target_linear=True, target_modules=(),
                         modules_to_save=(), fan_in_fan_out=False)
        for n, p in model.named_parameters():  # lora_B starts at 0: give it values so its gradient flows on
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model


def batch() -> dict[str, torch.Tensor]:
    """Two rows: the first with a prompt (no labels) then an answer; the second shorter, padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 40), generator=g)
    labels = ids.clone()
    labels[0, :12] = IGNORE
    labels[1, :5] = IGNORE
    labels[1, 30:] = IGNORE
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(40).expand(2, -1)}


def loss_and_grads(model, b, chunk_rows: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_sum(model, b, chunk_rows=chunk_rows)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss), grads


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", list(HEADS))
def test_chunked_loss_and_gradients_equal_the_whole_logits(family, lora):
    model, b = tiny(family, lora=lora), batch()
    whole, whole_grads = loss_and_grads(model, b, chunk_rows=0)
    labelled = int((b["labels"][:, 1:] != IGNORE).sum())
    assert labelled == 28 + 25
    for rows in (7, 16, labelled):  # several chunks with a remainder, and one chunk
        chunked, grads = loss_and_grads(model, b, chunk_rows=rows)
        assert abs(chunked - whole) <= 1e-5 * abs(whole), (family, rows, chunked, whole)
        assert grads.keys() == whole_grads.keys() and len(grads) > 0
        for name, g in grads.items():
            torch.testing.assert_close(g, whole_grads[name], rtol=1e-5, atol=1e-5, msg=f"{family} {rows} {name}")
    if not lora:
        head = next(n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight)
        assert whole_grads[head].abs().sum() > 0  # the head's own gradient was compared


def test_the_soft_capping_is_not_left_out():
    """The chunks redo what the CausalLM forward does after the head: without it the loss differs."""
    model, b = tiny("gemma2", lora=True), batch()
    capped = float(loss_sum(model, b, chunk_rows=7))
    model.config.final_logit_softcapping = None
    uncapped = float(loss_sum(model, b, chunk_rows=0))
    assert abs(capped - uncapped) > 0.01 * abs(uncapped)


def test_through_ddp_the_gradients_are_the_same(tmp_path):
    """DDP's wrapper (one gloo process): the model's forward still runs through it."""
    import torch.distributed as dist

    model, b = tiny("llama", lora=True), batch()
    whole, whole_grads = loss_and_grads(model, b, chunk_rows=0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        chunked, grads = loss_and_grads(wrapped, b, chunk_rows=7)
    finally:
        dist.destroy_process_group()
    assert abs(chunked - whole) <= 1e-5 * abs(whole)
    for name, g in grads.items():
        torch.testing.assert_close(g, whole_grads[name.removeprefix("module.")], rtol=1e-5, atol=1e-5)


def test_autograd_keeps_one_chunk_of_logits_not_every_label_positions():
    """The tensors saved for backward outside the decoder layers: a chunk's log-softmax, against
    every label position's in one piece."""
    model = tiny("llama", lora=True)
    seq = 200
    ids = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(2))
    b = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(seq).unsqueeze(0)}
    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved(chunk_rows: int) -> int:
        seen: set[int] = set()
        total = [0]

        def pack(x):
            ptr = x.untyped_storage().data_ptr()
            if ptr not in owned and ptr not in seen and x.dim() >= 2 and x.shape[-1] == VOCAB:
                seen.add(ptr)
                total[0] += x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss_sum(model, b, chunk_rows=chunk_rows)
        return total[0]

    rows = seq - 1
    assert saved(0) == rows * VOCAB * 4
    assert saved(32) == (rows % 32) * VOCAB * 4  # the last chunk's (its backward runs first); the rest recompute


def test_the_chunk_size_follows_the_vocabulary():
    assert memory.loss_chunk_rows(128256) == memory.LOSS_CHUNK_BYTES // (128256 * 4) == 261
    assert memory.loss_chunk_rows(49152) == 682
    assert memory.loss_chunk_rows(10**9) == 16
