"""The run's tokenizer reaches every stage after training (tokenizer.run_tokenizer): a run whose
special_tokens set eos to another token of the vocabulary carries that eos in its adapter/, merged/,
GGUF (streamed from base + adapter, or from merged/) and Modelfile; a changed tokenizer makes merged/
stale. On a 2-layer Llama (hidden 64) with the bundled SmolLM2 tokenizer (ChatML, eos <|im_end|> = 2).

    .venv/bin/python -m pytest tests/test_run_tokenizer.py
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

CONFIGURED_EOS = "<|endoftext|>"  # id 0 in SmolLM2's vocabulary; its own eos is <|im_end|> (id 2)


def gguf_eos(path: Path) -> int:
    return int(gguf.GGUFReader(str(path)).fields[gguf.Keys.Tokenizer.EOS_ID].contents())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bundled_tokenizer_dir):
    """A finished two-step training run on the tiny Llama, with special_tokens.eos_token set."""
    import torch

    from test_merge import tiny_llama
    from tutorforge.config import load_config
    from tutorforge.train import train

    root = tmp_path_factory.mktemp("run")
    base = tiny_llama(root / "base", bundled_tokenizer_dir, tied=False)
    rows = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"It is {2 * i}."} for i in range(4)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "c.yml").write_text(
        f"base_model: {base}\nadapter: lora\nsequence_len: 64\nmicro_batch_size: 2\nlora_r: 4\nmax_steps: 2\n"
        f"special_tokens:\n  eos_token: \"{CONFIGURED_EOS}\"\ndatasets:\n  - path: {root / 'rows.jsonl'}\n"
        f"output_dir: {root / 'out'}\n")
    cfg = load_config(root / "c.yml")
    torch.manual_seed(0)
    adapter = train(cfg, config_dir=root)
    return base, adapter, root / "out"


def test_the_configured_eos_reaches_adapter_merged_gguf_and_modelfile(trained, tmp_path):
    from transformers import AutoTokenizer

    from tutorforge.export import Source, export_run, run_source
    from tutorforge.gguf_write import write_gguf
    from tutorforge.merge import merge
    from tutorforge.ollama import package
    from tutorforge.rundir import RunDir
    from tutorforge.tokenizer import run_tokenizer

    base, adapter, run_dir = trained
    eos_id = AutoTokenizer.from_pretrained(base).convert_tokens_to_ids(CONFIGURED_EOS)
    assert (eos_id, AutoTokenizer.from_pretrained(base).eos_token_id) == (0, 2)
    assert run_tokenizer(base, adapter).eos_token_id == eos_id  # what training saved beside the adapter
    assert run_tokenizer(base).eos_token_id == 2  # no adapter: the model directory's own
    streamed = write_gguf(Source(base, adapter), tmp_path / "streamed.F32.gguf", "f32")
    assert gguf_eos(streamed) == eos_id  # the old code wrote the base's eos, 2
    run = RunDir.open(run_dir, "")
    merge(base, adapter, run.merged)
    assert AutoTokenizer.from_pretrained(run.merged).eos_token == CONFIGURED_EOS
    assert run_source(run) == Source(run.merged)  # merged/ is current: exported from it
    report = export_run(run_dir, outtype="f32", quantizations=("f32",), verify=False)
    exported = Path(report["files"]["f32"])
    assert gguf_eos(exported) == eos_id
    modelfile = package(run, exported).read_text()
    stops = [line.split('"')[1] for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ["<|im_end|>", CONFIGURED_EOS, "<|im_start|>"]


def test_a_gpt2_tokenizer_class_survives_the_runs_save_and_reloads_as_the_base(bundled_tokenizer_dir, tmp_path):
    """Phi-4's tokenizer_config.json names GPT2Tokenizer, which llama.cpp's converter needs to take
    its GPT-2 vocabulary (conversion/phi.py); transformers 5 loads it beside a phi3 config.json as
    TokenizersBackend and saves that name. The run's saved tokenizer keeps the base's class and
    add_bos/eos flags, and reloads (from the adapter, without config.json) tokenizing as the base."""
    import shutil

    import transformers
    from transformers import GPT2Tokenizer

    from conftest import parity_texts
    from tutorforge.tokenizer import load_tokenizer, run_tokenizer, save_tokenizer

    base = tmp_path / "base"
    shutil.copytree(bundled_tokenizer_dir, base)
    settings = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps(
        {**settings, "tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "add_eos_token": False}))
    transformers.Phi3Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4).save_pretrained(base)
    tokenizer = load_tokenizer(base)
    save_tokenizer(tokenizer, tmp_path / "adapter")  # as training saves it (finetune.save_output)
    saved = json.loads((tmp_path / "adapter" / "tokenizer_config.json").read_text())
    assert (saved["tokenizer_class"], saved["add_bos_token"], saved["add_eos_token"]) == ("GPT2Tokenizer", False, False)
    reloaded = run_tokenizer(base, tmp_path / "adapter")
    texts = parity_texts(tokenizer)
    assert len(texts) > 1000
    assert sum(tokenizer(t)["input_ids"] != reloaded(t)["input_ids"] for t in texts) == 0
    plain = GPT2Tokenizer.from_pretrained(tmp_path / "adapter")  # transformers' GPT2Tokenizer: no digit split
    assert sum(tokenizer(t)["input_ids"] != plain(t)["input_ids"] for t in texts) > 0


def test_a_changed_tokenizer_makes_merged_stale(trained, tmp_path):
    import shutil

    from tutorforge import outputs
    from tutorforge.merge import merge

    base, adapter, _ = trained
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    merged = merge(base, copy, tmp_path / "merged")
    assert outputs.model_identity(merged) == outputs.model_identity(base, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_end|>"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert outputs.model_identity(merged) != outputs.model_identity(base, copy)  # old code: equal
    (copy / "tokenizer_config.json").unlink()  # an adapter without a tokenizer: only its adapter_* count
    for name in list(p.name for p in copy.iterdir()):
        if not name.startswith("adapter_"):
            (copy / name).unlink()
    (copy / "README.md").write_text("notes")
    before = outputs.model_identity(base, copy)
    (copy / "README.md").write_text("other notes")
    assert outputs.model_identity(base, copy) == before


@pytest.mark.slow  # reads the bundled GGUF's 49,152-token vocabulary several times: 20 s of the fast tier
def test_a_gguf_converted_base_keeps_its_fields_but_takes_the_run_special_ids(bundled_tokenizer_dir, tmp_path):
    """A checkpoint converted from a GGUF (the bundled model; its tokenizer files and the record of its
    source GGUF stand for it here) has its tokenizer fields copied from that GGUF; a tokenizer saved
    with the adapter changes only the special ids it changed (eos here), and an unchanged one nothing."""
    import shutil

    from tutorforge.gguf_vocab import add_tokenizer, changed_special_ids
    from tutorforge.models import bundled_gguf
    from tutorforge.tokenizer import load_tokenizer

    model = tmp_path / "model"
    shutil.copytree(bundled_tokenizer_dir, model)
    (model / "tutorforge.json").write_text(json.dumps({"source_gguf": str(bundled_gguf())}))
    source = gguf.GGUFReader(str(bundled_gguf()))
    assert changed_special_ids(load_tokenizer(model), source) == {}
    saved = tmp_path / "adapter"
    load_tokenizer(model, special_tokens=(("eos_token", CONFIGURED_EOS),)).save_pretrained(saved)
    assert changed_special_ids(load_tokenizer(saved), source) == {"eos": 0}

    def fields(adapter):
        path = tmp_path / f"{adapter is not None}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        add_tokenizer(writer, model, 49152, adapter)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.")}

    plain, run = fields(None), fields(saved)
    assert (plain.pop(gguf.Keys.Tokenizer.EOS_ID), run.pop(gguf.Keys.Tokenizer.EOS_ID)) == (2, 0)
    assert plain == run and len(run[gguf.Keys.Tokenizer.LIST]) == 49152
