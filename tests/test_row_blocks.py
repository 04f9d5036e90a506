"""Merge and export read, merge and write each tensor a block of rows at a time: the output is the
same as whole tensors give, and peak RAM does not grow with the largest tensor (embeddings and
lm_head of a 128k vocabulary are 1 GB each in bf16)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tutorforge.merge as m
from tutorforge.gguf_write import Source, write_gguf
from tutorforge.merge import merge


def one_tensor(directory: Path, rows: int, cols: int = 1024, r: int = 4) -> tuple[Path, Path]:
    """A checkpoint of one (rows x cols) bf16 tensor and a LoRA adapter on it."""
    base, adapter = directory / "base", directory / "adapter"
    base.mkdir(parents=True)
    adapter.mkdir()
    gen = torch.Generator().manual_seed(rows)
    save_file({"model.proj.weight": (torch.randn(rows, cols, generator=gen) * 0.02).to(torch.bfloat16)},
              base / "model.safetensors")
    (base / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file({"base_model.model.model.proj.lora_A.weight": torch.randn(r, cols, generator=gen) * 0.1,
               "base_model.model.model.proj.lora_B.weight": torch.randn(rows, r, generator=gen) * 0.1},
              adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 8}))
    return base, adapter


def test_a_merge_in_row_blocks_equals_the_whole_tensor_merge(tmp_path, monkeypatch):
    base, adapter = one_tensor(tmp_path, 1000)
    whole = load_file(merge(base, adapter, tmp_path / "whole") / "model.safetensors")["model.proj.weight"]
    monkeypatch.setattr(m, "BLOCK_BYTES", 48 * 2048)  # 48 rows of 2 KiB: 21 blocks, the last one short
    blocked = load_file(merge(base, adapter, tmp_path / "blocked") / "model.safetensors")["model.proj.weight"]
    assert torch.equal(blocked, whole)
    original = load_file(base / "model.safetensors")["model.proj.weight"]
    assert not torch.equal(blocked, original)  # the update is in it


def test_block_rows_keep_whole_heads():
    ref = m.TensorRef("q", Path("x"), "BF16", (4096, 4096), 0, 4096 * 4096 * 2)
    assert m.block_rows(ref, block_bytes=1 << 20) == 128  # 8 KiB rows
    assert m.block_rows(ref, align=96, block_bytes=1 << 20) == 96  # whole heads of 96 rows
    assert m.block_rows(ref, align=96, block_bytes=1000) == 96  # at least one head
    assert m.block_rows(ref, block_bytes=1 << 40) == 4096  # never more than the tensor


def tiny_llama(directory: Path, tokenizer_dir: Path, hidden: int) -> Path:
    """A 2-layer Llama with the bundled tokenizer (untied lm_head), and a LoRA on q, k and lm_head."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.to(dtype=torch.bfloat16)
    model.save_pretrained(directory / "base")
    tokenizer.save_pretrained(directory / "base")
    head_dim, kv = hidden // 8, 4 * (hidden // 8)
    lora = {}
    for name, rows in [("model.layers.0.self_attn.q_proj", hidden), ("model.layers.1.self_attn.k_proj", kv),
                       ("lm_head", len(tokenizer))]:
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, hidden) * 0.1
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(rows, 4) * 0.1
    (directory / "adapter").mkdir()
    save_file(lora, directory / "adapter" / "adapter_model.safetensors")
    (directory / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                                            "lora_alpha": 8}))
    assert head_dim * 8 == hidden
    return directory


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_an_export_in_row_blocks_is_bit_identical(tmp_path, bundled_tokenizer_dir, monkeypatch, outtype):
    """q/k rows are permuted head by head, q8_0 packs rows: blocks of 3 heads (and of a few vocabulary
    rows) give the same bytes as whole tensors."""
    model = tiny_llama(tmp_path / "model", bundled_tokenizer_dir, 64)
    source = Source(model / "base", model / "adapter")
    whole = gguf.GGUFReader(write_gguf(source, tmp_path / "whole.gguf", outtype))
    monkeypatch.setattr(m, "BLOCK_BYTES", 3 * 8 * 64 * 2)  # 3 heads of 8 rows of 64 bf16 values
    blocked = gguf.GGUFReader(write_gguf(source, tmp_path / "blocked.gguf", outtype))
    assert [t.name for t in blocked.tensors] == [t.name for t in whole.tensors]
    for a, b in zip(whole.tensors, blocked.tensors, strict=True):
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name


PEAK_PROBE = """
import json, sys
from pathlib import Path
import tutorforge.merge as m
from tutorforge.gguf_write import Source, write_gguf
mode, block, warm, big, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
m.BLOCK_BYTES = block
def peak_kib():  # VmHWM: ru_maxrss would carry the forking parent's RSS across exec
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
def run(model, target):
    if mode == "merge":
        m.merge(model / "base", model / "adapter", target)
    else:
        write_gguf(Source(model / "base", model / "adapter"), target, "f16")
run(warm, out.with_name("warmup-" + out.name))  # the libraries' own first-use memory, not the stage's
before = peak_kib()
run(big, out)
print(json.dumps({"growth_mb": (peak_kib() - before) / 1024}))
"""


def peak_growth(mode: str, block: int, warm: Path, big: Path, out: Path) -> float:
    result = subprocess.run([sys.executable, "-c", PEAK_PROBE, mode, str(block), str(warm), str(big), str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["growth_mb"]


@pytest.mark.slow  # four processes, each importing torch: 30 s of the fast tier
def test_peak_rss_does_not_grow_with_the_largest_tensor(tmp_path, bundled_tokenizer_dir):
    """A tensor 64x larger than the block merges at the peak of a tensor of one block, and exports at
    the peak of one 8x smaller."""
    block = 4 << 20
    growth = {}
    for blocks in (1, 64):  # one tensor of 4 MiB, then of 256 MiB (2048 and 131072 rows of 2 KiB)
        base, _ = one_tensor(tmp_path / f"t{blocks}", 2048 * blocks)
        growth[blocks] = peak_growth("merge", block, tmp_path / "t1", base.parent, tmp_path / f"t{blocks}" / "out")
    # the workspace is a block in bf16 and in fp32 (12 MiB); a whole-tensor merge of the 256 MiB
    # tensor would need 256 MiB more for its bytes and 512 MiB for its fp32 sum
    assert growth[1] < 12 + 8, growth
    # less than two blocks more (the larger adapter's B is 2 MiB, the rest is the allocator's noise);
    # holding the larger tensor whole would be 256 MiB more
    assert growth[64] - growth[1] < 8, growth
    warm = tiny_llama(tmp_path / "warm", bundled_tokenizer_dir, 32)
    lm_head = {hidden: 49152 * hidden * 2 / 2**20 for hidden in (64, 512)}  # 6 and 48 MiB in bf16
    block = int(lm_head[64] * 2**20) // 64
    export = {hidden: peak_growth("export", block, warm, tiny_llama(tmp_path / str(hidden), bundled_tokenizer_dir,
                                                                      hidden), tmp_path / f"{hidden}.gguf")
              for hidden in lm_head}
    # whole tensors would hold lm_head's bytes, its fp32 sum and its f16 copy: 4x its size, 168 MiB
    # more for the wider model, and even one bf16 copy of it 42 MiB more; blocks of 96 KiB cost the
    # same for both (each export run also keeps ~20 MiB of its own, the tokenizer's vocabulary among
    # it, whatever the tensors, and its peak varies by a few MiB from run to run)
    assert export[512] - export[64] < 12, export


def test_the_memory_plan_models_the_blocks_merge_uses():
    from tutorforge import memory

    assert memory.MERGE_BLOCK_BYTES == m.BLOCK_BYTES
