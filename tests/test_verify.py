"""verify.py: the PyTorch reference the GGUF files are checked against, in RAM or read from disk."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tutorforge import verify


def tiny_llama(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def one_by_one(model, sequences):
    with torch.inference_mode():
        return [model(torch.tensor([s])).logits[0].argmax(-1).numpy() for s in sequences]


def test_batched_predictions_equal_one_sequence_at_a_time(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama(tmp_path)), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 500, (int(n),), generator=gen).tolist() for n in (5, 130, 64, 1, 200, 64, 17)]
    expected = one_by_one(model, sequences)
    # small batches and logit chunks: padding, several batches and a chunk boundary inside a sequence
    got = verify.reference_predictions(model, sequences, batch_tokens=300, logit_rows=50)
    assert [len(g) for g in got] == [len(s) for s in sequences]
    assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=False))


def test_the_reference_fits_or_not_by_its_fp32_size(tmp_path):
    model_dir = tiny_llama(tmp_path)
    from transformers import AutoModelForCausalLM

    size = verify.fp32_bytes(model_dir)
    assert size == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(model_dir)).parameters()) * 4
    assert verify.reference_in_ram(size, (1 << 30) + size * 1.2) and not verify.reference_in_ram(size, 1 << 30)


PEAK_PROBE = """
import json, sys, threading, time, torch
from pathlib import Path
from tutorforge import verify
def anon_mb():  # private memory: pages of the mapped checkpoint are page cache, reclaimable
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024
peak, done = [anon_mb()], threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], anon_mb())
threading.Thread(target=sample, daemon=True).start()
model_dir, adapter, scratch, ram = sys.argv[1], sys.argv[2] or None, Path(sys.argv[3]), int(sys.argv[4]) or None
torch.manual_seed(0)
sequences = [torch.randint(0, 49000, (n,)).tolist() for n in (200, 150, 256, 90)]
with verify.reference_model(Path(model_dir), adapter and Path(adapter), scratch=scratch, ram_bytes=ram) as model:
    top = verify.reference_predictions(model, sequences)
    offloaded = any(p.device.type == "meta" for p in model.parameters())
done.set()
print(json.dumps({"top": [t.tolist() for t in top], "peak_mb": max(peak[0], anon_mb()), "offloaded": offloaded,
                  "scratch_left": scratch.exists()}))
"""


@pytest.mark.slow
def test_a_reference_too_big_for_ram_is_read_from_disk_and_predicts_the_same(bundled, adapter, tmp_path):
    """The bundled model and a LoRA adapter, as if RAM were 100 MB: the adapter is merged on disk, the
    layers are read one by one, the predictions are those of the model held in RAM, at a lower peak."""
    runs = {}
    for mode, ram in (("ram", 0), ("disk", 100 << 20)):
        out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(bundled.path), str(adapter),
                              str(tmp_path / f"scratch-{mode}"), str(ram)], capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert not runs["ram"]["offloaded"] and runs["disk"]["offloaded"]
    assert runs["disk"]["top"] == runs["ram"]["top"]
    assert not runs["disk"]["scratch_left"]  # the merged copy and offload folder are removed
    fp32_mb = verify.fp32_bytes(Path(bundled.path)) / 2**20  # 513 MiB
    print(f"reference peak RAM: in RAM {runs['ram']['peak_mb']:.0f} MB, "
          f"read from disk {runs['disk']['peak_mb']:.0f} MB")
    assert runs["disk"]["peak_mb"] < runs["ram"]["peak_mb"] - fp32_mb / 2, runs
