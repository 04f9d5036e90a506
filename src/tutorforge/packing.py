"""Sample packing: several short examples in one sequence of at most sequence_len tokens.

Packing is TRL's best-fit-decreasing (`trl.pack_dataset`, strategy "bfd"), which never splits an
example. Each pack carries position ids that restart at 0 for every example; given position ids
and no attention mask (and use_cache=False: with a KV cache transformers does not look for packed
sequences), transformers' SDPA attention isolates the examples from each other (a block-diagonal
mask), so a packed example computes what it computes alone. Examples longer than
sequence_len never reach packing: prepare.py drops or truncates them first (excess_length_strategy)
and reports it; packing itself never cuts one.
"""
from __future__ import annotations

from dataclasses import dataclass

from tutorforge.formatting import IGNORE, Example


@dataclass(frozen=True)
class Pack:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    lengths: list[int]  # the examples inside, in order


def pack(examples: list[Example], sequence_len: int) -> list[Pack]:
    """Pack examples (each at most sequence_len long) into sequences of at most sequence_len."""
    from datasets import Dataset, disable_progress_bars
    from trl import pack_dataset  # pyright: ignore[reportPrivateImportUsage]

    too_long = [e.source for e in examples if len(e.input_ids) > sequence_len]
    if too_long:
        raise ValueError(f"examples longer than sequence_len reached packing: {too_long[:3]}")
    if not examples:
        return []
    disable_progress_bars()
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                                 "labels": [e.labels for e in examples]})
    packed = pack_dataset(dataset, sequence_len, strategy="bfd")
    out = []
    for ids, labels, lengths in zip(packed["input_ids"], packed["labels"], packed["seq_lengths"], strict=False):
        labels = list(labels)
        start = 0
        for n in lengths:  # an example's first token is never a target across a boundary
            labels[start] = IGNORE
            start += n
        out.append(Pack(list(ids), labels, [i for n in lengths for i in range(n)], list(lengths)))
    return out


@dataclass(frozen=True)
class Efficiency:
    real_tokens: int
    slots: int

    @property
    def ratio(self) -> float:
        return self.real_tokens / self.slots if self.slots else 0.0


def padded_efficiency(lengths: list[int], micro_batch_size: int, *, sequence_len: int | None = None) -> Efficiency:
    """Real tokens / token slots when examples are batched in order, each batch padded to its
    longest example (or to sequence_len when given: pad_to_sequence_len)."""
    slots = 0
    for start in range(0, len(lengths), micro_batch_size):
        batch = lengths[start:start + micro_batch_size]
        slots += len(batch) * (sequence_len or max(batch))
    return Efficiency(sum(lengths), slots)


def packed_efficiency(packs: list[Pack], micro_batch_size: int, *, sequence_len: int | None = None) -> Efficiency:
    """Real tokens / token slots for packs batched micro_batch_size at a time, padded to the longest
    (or to sequence_len when given: pad_to_sequence_len)."""
    return padded_efficiency([len(p.input_ids) for p in packs], micro_batch_size, sequence_len=sequence_len)
