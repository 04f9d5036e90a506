"""Training's batches and loss: packed or padded items collated into tensors, the summed
next-token cross-entropy over label positions, and the held-out loss. The module doc of train.py
says why packed batches carry position ids and no attention mask.

The LM head runs only at label positions, and there in chunks of `memory.loss_chunk_rows` rows:
the model's forward runs with its head swapped for one that keeps the final hidden states and
returns no logits, then each chunk's logits and cross-entropy are computed from them, under
torch.utils.checkpoint when there is more than one chunk, so backward recomputes a chunk's logits
instead of keeping them. The peak is one chunk's logits, not (positions x vocab): 1.1 GB less for
Llama 3 at sequence_len 1024. The model's forward still runs whole (through DDP's wrapper, whose
gradient hooks depend on it); what its CausalLM forward does to the logits after the head (Gemma's
final soft-capping, Granite's and Cohere's scales) is redone on each chunk (`_after_head`).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from tutorforge.formatting import IGNORE
from tutorforge.memory import loss_chunk_rows


def collate(items: list, pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input ids, labels and position ids; no attention mask (see the module doc).
    Padding gets its own run of position ids, so it is a separate sample nobody attends to.
    Padded to the longest item, or to `pad_to` (pad_to_sequence_len: sequence_len, static shapes)."""
    width = max([len(it.input_ids) for it in items] + [pad_to or 0])
    ids, labels, positions = [], [], []
    for it in items:
        pad = width - len(it.input_ids)
        pos = list(getattr(it, "position_ids", None) or range(len(it.input_ids)))
        ids.append(list(it.input_ids) + [pad_id] * pad)
        labels.append(list(it.labels) + [IGNORE] * pad)
        positions.append(pos + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions)}


def label_count(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def loss_sum(model, batch: dict[str, torch.Tensor], chunk_rows: int | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over the label positions; the LM head runs only there, in
    chunks of `chunk_rows` label rows (default memory.loss_chunk_rows of the vocabulary; 0: one
    piece, the whole logits at once, as the model's own forward computes them)."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)  # positions that predict a label
    if keep.numel() == 0:
        return torch.zeros((), device=labels.device, requires_grad=True)
    targets = targets[:, keep]
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
              "logits_to_keep": keep, "use_cache": False}
    if chunk_rows == 0:
        logits = model(**inputs).logits.float()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")
    core = _transformers_model(model)
    head = core.get_output_embeddings()
    with _hidden_states_of(head) as kept:
        model(**inputs)
    valid = targets != IGNORE
    hidden, targets = kept[0][valid], targets[valid]  # (label rows, hidden), (label rows,)
    rows = chunk_rows or loss_chunk_rows(head.weight.shape[0])
    chunks = list(zip(hidden.split(rows), targets.split(rows), strict=True))
    if len(chunks) == 1 or not torch.is_grad_enabled():
        return torch.stack([_head_loss(head, core.config, h, t) for h, t in chunks]).sum()
    # every chunk but the last recomputes its logits in backward; the last one's backward runs
    # first (autograd goes from the newest node), so keeping its logits does not add to the peak
    parts = [checkpoint(_head_loss, head, core.config, h, t, use_reentrant=False) for h, t in chunks[:-1]]
    return torch.stack([*parts, _head_loss(head, core.config, *chunks[-1])]).sum()


def _transformers_model(model):
    """The transformers model inside DDP's (accelerate unwraps it) and peft's wrappers (its head and config)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the model with LoRA in it


class _hidden_states_of:
    """While in the block, `head` keeps its input (the final hidden states at the positions kept)
    in the list the block gives and returns an empty tensor in place of the logits."""

    def __init__(self, head: torch.nn.Module):
        self.head, self.kept = head, []

    def __enter__(self) -> list:
        self.own = self.head.__dict__.get("forward")  # accelerate's hooks set forward on the instance

        def keep(hidden, *args, **kwargs):
            self.kept.append(hidden)
            return hidden.new_empty(*hidden.shape[:-1], 0)

        self.head.forward = keep
        return self.kept

    def __exit__(self, *exc) -> None:
        if self.own is None:
            del self.head.forward
        else:
            self.head.forward = self.own


def _head_loss(head: torch.nn.Module, config, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one chunk: (rows, hidden) states, (rows,) targets."""
    logits = _after_head(head(hidden), config).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def _after_head(logits: torch.Tensor, config) -> torch.Tensor:
    """What transformers' CausalLM forwards do to the head's output before returning it (5.23):
    Gemma 2/3's final soft-capping, Granite's division by logits_scaling, Cohere's logit_scale."""
    config = getattr(config, "text_config", None) or config
    if (scaling := getattr(config, "logits_scaling", None)) is not None:
        logits = logits / scaling
    if (scale := getattr(config, "logit_scale", None)) is not None:
        logits = logits * scale
    if (cap := getattr(config, "final_logit_softcapping", None)) is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def evaluate(model, items: list, *, micro_batch_size: int, pad_id: int, autocast) -> float:
    """Mean cross-entropy per answer token over the held-out items (no gradients)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), micro_batch_size):
            batch = collate(items[start:start + micro_batch_size], pad_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with autocast():
                total += float(loss_sum(model, batch))
            count += label_count(batch)
    model.train()
    return total / max(count, 1)
