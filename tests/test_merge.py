"""merge.py: the merged checkpoint equals peft's merge_and_unload, in bounded RAM, atomically."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tutorforge.errors import UserError
from tutorforge.merge import merge
from tutorforge.safetensors_io import ShardWriter, read_header, tensor_refs


def synthetic(tmp_path: Path, n_layers: int, width: int, dtype=torch.bfloat16, r: int = 4,
              bad: bool = False) -> tuple[Path, Path]:
    """A base checkpoint of n_layers (width x width) projections, and a LoRA adapter on all of them."""
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors, lora = {}, {}
    for i in range(n_layers):
        name = f"model.layers.{i}.proj"
        tensors[f"{name}.weight"] = (torch.randn(width, width, generator=gen) * 0.02).to(dtype)
        lora[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, width, generator=gen) * 0.1
        lora[f"base_model.model.{name}.lora_B.weight"] = torch.randn(width, r, generator=gen) * 0.1
    tensors["model.norm.weight"] = torch.ones(width, dtype=dtype)
    if bad:
        lora["base_model.model.model.layers.0.proj.lora_B.weight"][0, 0] = float("inf")
    save_file(tensors, base / "model.safetensors")
    (base / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (base / "tokenizer.json").write_text("{}")
    save_file(lora, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 8, "fan_in_fan_out": False}))
    return base, adapter


def test_merge_math_sharding_and_side_files(tmp_path):
    base, adapter = synthetic(tmp_path, 6, 64)
    out = merge(base, adapter, tmp_path / "merged", shard_bytes=3 * 64 * 64 * 2)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # sharded
    merged = {}
    for shard in sorted(out.glob("model-*.safetensors")):
        merged.update(load_file(shard))
    original, lora = load_file(base / "model.safetensors"), load_file(adapter / "adapter_model.safetensors")
    for i in range(6):
        name = f"model.layers.{i}.proj"
        a, b = lora[f"base_model.model.{name}.lora_A.weight"], lora[f"base_model.model.{name}.lora_B.weight"]
        exact = original[f"{name}.weight"].double() + (b.double() @ a.double()) * 2.0
        assert merged[f"{name}.weight"].dtype == torch.bfloat16
        # W + 2 * B @ A rounded once to bf16 from fp32: within half a bf16 step of the exact value
        error = (merged[f"{name}.weight"].double() - exact).abs()
        assert (error <= exact.abs() * 2.0**-8 + 1e-30).all(), error.max()
        assert error.max() > 0  # it was rounded to bf16, not kept in fp32
    assert torch.equal(merged["model.norm.weight"], original["model.norm.weight"])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_merge_is_skipped_when_complete_and_atomic_when_killed(tmp_path, monkeypatch):
    import tutorforge.merge as m

    base, adapter = synthetic(tmp_path, 3, 32)
    calls = []
    real = m.Workspace.blocks

    def dies_midway(self, ref, *args, **kwargs):
        calls.append(ref.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, ref, *args, **kwargs)

    monkeypatch.setattr(m.Workspace, "blocks", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        merge(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()  # nothing under the final name
    monkeypatch.setattr(m.Workspace, "blocks", real)
    out = merge(base, adapter, tmp_path / "merged")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert merge(base, adapter, tmp_path / "merged") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # skipped


def test_non_finite_values_name_the_tensor(tmp_path):
    base, adapter = synthetic(tmp_path, 2, 32, bad=True)
    with pytest.raises(UserError, match=r"model.layers.0.proj.weight: the merged tensor holds NaN or inf"):
        merge(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_wrong_base_is_refused(tmp_path):
    base, adapter = synthetic(tmp_path, 2, 32)
    (tmp_path / "other").mkdir()
    other, _ = synthetic(tmp_path / "other", 2, 48)
    with pytest.raises(UserError, match="the adapter was trained on another base model"):
        merge(other, adapter, tmp_path / "merged")
    (tmp_path / "few").mkdir()
    few, _ = synthetic(tmp_path / "few", 1, 32)
    with pytest.raises(UserError, match="model.layers.1.proj.weight, which .* does not have"):
        merge(few, adapter, tmp_path / "merged2")


def test_disk_space_is_checked_first(tmp_path, monkeypatch):
    import shutil

    base, adapter = synthetic(tmp_path, 2, 32)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 100, 100))
    with pytest.raises(UserError, match=r"needs 0.1 GiB but only 0.0 GiB are free"):
        merge(base, adapter, tmp_path / "merged")


def test_shard_writer_output_loads_in_safetensors(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(5, dtype=torch.bfloat16),
               "c": torch.tensor([1, 2], dtype=torch.int64)}
    writer = ShardWriter(tmp_path / "x.safetensors", [(k, {torch.float32: "F32", torch.bfloat16: "BF16",
                                                           torch.int64: "I64"}[v.dtype], tuple(v.shape))
                                                      for k, v in tensors.items()])
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()
    loaded = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    header, start = read_header(tmp_path / "x.safetensors")
    assert start % 8 == 0 and [r.name for r in tensor_refs(tmp_path)] == ["a", "b", "c"]


RSS_PROBE = """
import json, sys
from pathlib import Path
from tutorforge.merge import merge
base, adapter, out, small_base, small_adapter, small_out = map(Path, sys.argv[1:7])
def peak_kib():  # VmHWM: ru_maxrss would carry the forking parent's RSS across exec
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
merge(small_base, small_adapter, small_out)  # the libraries' own first-use memory, not the merge's
before = peak_kib()
merge(base, adapter, out)
print(json.dumps({"growth_mb": (peak_kib() - before) / 1024}))
"""


@pytest.mark.slow  # merges models of 4 and 48 layers to measure their peak RSS: 13 s of the fast tier
def test_peak_rss_does_not_grow_with_model_size(tmp_path):
    """Merging 12x more tensors of the same size costs the same peak RAM: the workspace's two buffers."""
    (tmp_path / "small").mkdir()
    small_base, small_adapter = synthetic(tmp_path / "small", 2, 64)
    growth = {}
    for layers in (4, 48):
        work = tmp_path / str(layers)
        work.mkdir()
        base, adapter = synthetic(work, layers, 2048, dtype=torch.bfloat16)  # 8 MiB per bf16 tensor
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(base), str(adapter), str(work / "merged"),
                              str(small_base), str(small_adapter), str(work / "small")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        growth[layers] = json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]
    tensor_mb = 2048 * 2048 * 2 / 2**20  # 8 MiB in bf16
    # the workspace is one bf16 tensor and one fp32 one (3 x 8 MiB); the 44 more tensors (352 MiB)
    # add less than one tensor's worth
    assert growth[4] < 3 * tensor_mb + 16, growth
    assert growth[48] - growth[4] < tensor_mb, growth


@pytest.mark.slow
def test_merged_bundled_model_matches_peft_merge_and_unload(tmp_path, bundled):
    """A trained adapter on the bundled model: merged logits equal peft's merge_and_unload (fp32)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():  # a trained-looking adapter: B is no longer zero
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 1351, 30, 2, 198, 1, 4093, 198]])
    with torch.no_grad():
        expected = peft.merge_and_unload()(ids).logits
    out = merge(bundled.path, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = merged(ids).logits
    base_logits = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32)(ids).logits
    assert (got - base_logits).abs().max() > 0.1  # the adapter changes the model
    assert (got - expected).abs().max() < 1e-4


def test_merge_never_writes_over_what_it_did_not_make(tmp_path, capsys):
    from tutorforge import cli

    base, adapter = synthetic(tmp_path, 2, 32)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    for out, says in ((mine, "not written by tutorforge"), (base, "is .*base, which this command reads from"),
                      (tmp_path, "holds .*base, which this command reads from"),
                      (base / "merged", "lies inside .*base"), (adapter, "is .*adapter")):
        assert cli.main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert re.search(says, err), err
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before  # the base is untouched
    file = tmp_path / "file"
    file.write_text("x")
    assert cli.main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(file)]) == 2
    assert "is a file" in capsys.readouterr().err and file.read_text() == "x"
    merged = tmp_path / "merged"  # a merge of its own is replaced by the next one
    assert cli.main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(merged)]) == 0
    assert cli.main(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(merged)]) == 0


def test_a_merge_of_another_adapter_is_rebuilt_not_reused(tmp_path):
    base, adapter = synthetic(tmp_path, 2, 32)
    out = merge(base, adapter, tmp_path / "merged")
    first = load_file(out / "model.safetensors")["model.layers.0.proj.weight"]
    lora = load_file(adapter / "adapter_model.safetensors")  # training again: another adapter, same place
    lora = {k: v * 2 if "lora_B" in k else v for k, v in lora.items()}
    save_file(lora, adapter / "adapter_model.safetensors")
    out = merge(base, adapter, tmp_path / "merged")
    second = load_file(out / "model.safetensors")["model.layers.0.proj.weight"]
    original = load_file(base / "model.safetensors")["model.layers.0.proj.weight"]
    # the update doubled: (second - W) = 2 (first - W), to bf16 rounding
    assert torch.allclose((second.float() - original.float()), 2 * (first.float() - original.float()), atol=2e-3)
    assert not torch.equal(first, second)


def test_a_disk_that_fills_mid_merge_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import tutorforge.merge as m

    base, adapter = synthetic(tmp_path, 3, 32)
    written = []
    real = m.ShardWriter.write_blocks

    def fills(self, name, blocks):
        written.append(name)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, blocks)

    monkeypatch.setattr(m.ShardWriter, "write_blocks", fills)  # safetensors_io's class, as merge holds it
    with pytest.raises(UserError, match=r"the disk filled up while writing the merged model \(\d+ MiB free now\)"):
        merge(base, adapter, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]  # no partial output anywhere


def tiny_llama(directory: Path, tokenizer_dir: Path, *, tied: bool) -> Path:
    """A 2-layer Llama (hidden 64) with random weights, peaked enough (initializer_range 0.2) that its
    top-1 predictions do not hang on rounding, and the tokenizer of `tokenizer_dir`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tied, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def embedding_adapter(model_dir: Path, out: Path, *, ensure_weight_tying: bool = False,
                      embedding_only: bool = False):
    """A LoRA on embed_tokens (PEFT's lora.Embedding: lora_embedding_A/B) and q/v projections, with
    non-zero updates (PEFT starts lora_embedding_A and lora_B at zero); saved in `out`, returned."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["embed_tokens"] if embedding_only else ["embed_tokens", "q_proj", "v_proj"]
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                            ensure_weight_tying=ensure_weight_tying))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_embedding_A" in name:
                p.normal_(0, 1.0)
            elif "lora_embedding_B" in name or "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(out)
    return peft.eval()


IDS = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 1351, 30, 2, 198, 1, 4093, 198, 504, 2079]])


@pytest.mark.parametrize("tied", [False, True])
def test_an_embedding_lora_merges_like_peft(tmp_path, bundled_tokenizer_dir, tied):
    """lora_embedding_A/B (and the base layer PEFT saves beside them) merge as W + scale * (B @ A).T:
    the merged model's logits are PEFT's, on an untied model and on one whose lm_head is tied to the
    embeddings (trained with ensure_weight_tying, so the update is the output projection's too). Tied,
    the reference is the unmerged adapter: peft 0.21's merge_and_unload adds the update to the one
    shared tensor twice, once for embed_tokens and once for lm_head (logits off by 2.8 here)."""
    from transformers import AutoModelForCausalLM

    base = tiny_llama(tmp_path / "base", bundled_tokenizer_dir, tied=tied)
    peft = embedding_adapter(base, tmp_path / "adapter", ensure_weight_tying=tied)
    with torch.no_grad():
        expected = peft(IDS).logits  # the adapter as trained, unmerged
        merged_by_peft = peft.merge_and_unload()(IDS).logits
    out = merge(base, tmp_path / "adapter", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        got = model(IDS).logits
        base_logits = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(IDS).logits
    assert (got - base_logits).abs().max() > 0.5  # the adapter changes the model
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()
    if not tied:
        assert torch.allclose(got, merged_by_peft, atol=1e-4, rtol=0), (got - merged_by_peft).abs().max()
    original = load_file(base / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(load_file(out / "model.safetensors")["model.embed_tokens.weight"], original)


def test_an_embedding_lora_on_tied_embeddings_trained_untied_is_refused(tmp_path, bundled_tokenizer_dir):
    """Trained without ensure_weight_tying, the update reached the input embeddings only; one tied
    tensor cannot hold that, so merge says so instead of changing the output projection too."""
    base = tiny_llama(tmp_path / "base", bundled_tokenizer_dir, tied=True)
    embedding_adapter(base, tmp_path / "adapter", embedding_only=True)
    with pytest.raises(UserError, match=r"tied to them, trained without PEFT's ensure_weight_tying.*"
                                        r"train again with ensure_weight_tying=True"):
        merge(base, tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
