"""Training's batches and loss: packed or padded items collated into tensors, the summed
next-token cross-entropy over label positions (the LM head runs only there, `logits_to_keep`), and
the held-out loss. The module doc of train.py says why packed batches carry position ids and no
attention mask.
"""
from __future__ import annotations

import torch

from tutorforge.formatting import IGNORE


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


def loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the label positions; the LM head runs only there."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)  # positions that predict a label
    if keep.numel() == 0:
        return torch.zeros((), device=labels.device, requires_grad=True)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                logits_to_keep=keep, use_cache=False)
    logits = out.logits.float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets[:, keep].reshape(-1), ignore_index=IGNORE,
                                             reduction="sum")


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
