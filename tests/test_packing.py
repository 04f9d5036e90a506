"""packing.py: packed samples compute what they compute alone; efficiency is reported."""
from __future__ import annotations

from collections import Counter

import pytest

from conftest import ROOT
from tutorforge.formatting import IGNORE, Example
from tutorforge.packing import pack, packed_efficiency, padded_efficiency


def examples(lengths: list[int]) -> list[Example]:
    out, token = [], 0
    for i, n in enumerate(lengths):
        ids = list(range(token, token + n))
        token += n
        out.append(Example(ids, [IGNORE] * (n // 2) + ids[n // 2:], f"e:{i}"))
    return out


def test_packs_hold_every_example_once_within_sequence_len():
    items = examples([5, 9, 3, 7, 2, 8, 4, 6])
    packs = pack(items, 12)
    assert all(len(p.input_ids) <= 12 for p in packs)
    assert Counter(t for p in packs for t in p.input_ids) == Counter(t for e in items for t in e.input_ids)
    for p in packs:
        assert sum(p.lengths) == len(p.input_ids) == len(p.position_ids) == len(p.labels)
        start = 0
        for n in p.lengths:
            assert p.position_ids[start:start + n] == list(range(n))  # restart per example
            assert p.labels[start] == IGNORE  # no target across a boundary
            start += n
    assert len(packs) < len(items)


def test_too_long_examples_never_reach_packing():
    with pytest.raises(ValueError, match="longer than sequence_len"):
        pack(examples([5, 20]), 12)


def test_efficiency_arithmetic():
    lengths = [4, 8, 2, 2]
    assert padded_efficiency(lengths, 2).ratio == pytest.approx(16 / (2 * 8 + 2 * 2))
    assert padded_efficiency(lengths, 2, sequence_len=10).ratio == pytest.approx(16 / 40)
    packs = pack(examples(lengths), 8)
    assert packed_efficiency(packs, 1).ratio == pytest.approx(16 / 16)


@pytest.mark.slow
def test_packed_logits_equal_one_by_one(bundled):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tutorforge.data import load_files
    from tutorforge.formatting import encode_row, prompt_format

    tokenizer = AutoTokenizer.from_pretrained(bundled.path)
    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    rows = load_files([ROOT / "data" / "python_tutor.jsonl"]).rows[:9]
    fmt = prompt_format(tokenizer, None, "Be brief.")
    packs = pack([encode_row(tokenizer, fmt, r) for r in rows], 512)
    assert max(len(p.lengths) for p in packs) >= 3
    worst = 0.0
    with torch.inference_mode():
        for p in packs[:2]:
            packed = model(input_ids=torch.tensor([p.input_ids]), position_ids=torch.tensor([p.position_ids]),
                           use_cache=False).logits[0]
            start = 0
            for n in p.lengths:
                alone = model(input_ids=torch.tensor([p.input_ids[start:start + n]]), use_cache=False).logits[0]
                worst = max(worst, (alone - packed[start:start + n]).abs().max().item())
                start += n
    assert worst < 1e-4


def test_packing_beats_padding_on_the_shipped_dataset(bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    from tutorforge.data import load_files
    from tutorforge.formatting import encode_row, prompt_format

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    fmt = prompt_format(tokenizer, None, None)
    items = [encode_row(tokenizer, fmt, r) for r in load_files([ROOT / "data" / "python_tutor.jsonl"]).rows]
    padded = padded_efficiency([len(e.input_ids) for e in items], 4, sequence_len=512).ratio
    packed = packed_efficiency(pack(items, 512), 4).ratio
    assert packed > 0.9 > 0.5 > padded


def test_packed_conversations_stay_isolated(bundled_tokenizer):
    """Conversations packed together: position ids restart, labels are each conversation's own, and
    a tiny random model computes for each what it computes alone (no attention across samples)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_chat_masking import CONVERSATIONS
    from tutorforge.data import Row
    from tutorforge.formatting import encode_row, prompt_format

    fmt = prompt_format(bundled_tokenizer, "chatml", None)
    items = [encode_row(bundled_tokenizer, fmt, Row("", "", "", f"t.jsonl:{name}", turns=turns, train_on_eos=eos))
             for name, turns in CONVERSATIONS.items() for eos in ("turn", "all")]
    [p] = pack(items, 512)
    assert len(p.lengths) == len(items) == 6
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(bundled_tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation="sdpa")).eval()
    with torch.inference_mode():
        packed = model(input_ids=torch.tensor([p.input_ids]), position_ids=torch.tensor([p.position_ids]),
                       use_cache=False).logits[0]
        leaky = model(input_ids=torch.tensor([p.input_ids]), use_cache=False).logits[0]  # one sequence
    unpacked = Counter((tuple(e.input_ids), tuple(e.labels)) for e in items)
    worst, leak, start = 0.0, 0.0, 0
    for n in p.lengths:
        ids = p.input_ids[start:start + n]
        assert p.position_ids[start:start + n] == list(range(n))
        unpacked[(tuple(ids), tuple(p.labels[start:start + n]))] -= 1  # the same trained tokens
        with torch.inference_mode():
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        worst = max(worst, (alone - packed[start:start + n]).abs().max().item())
        leak = max(leak, (alone - leaky[start:start + n]).abs().max().item())
        start += n
    assert set(unpacked.values()) == {0}
    assert worst < 1e-4 < leak  # without position ids the samples would see each other
