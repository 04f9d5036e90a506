"""finetune.py: a full fine-tune (adapter unset) trains every weight or those unfrozen_parameters
names, saves model/ as a whole checkpoint in the base model's dtype, resumes exactly; lora_model_dir
continues an adapter; model/ flows through RunDir, merge, export and the pipeline."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_train import tiny_config, tiny_model, train_and_kill_at, tutorforge  # noqa: F401  (tiny_model: a fixture)
from tutorforge.config import load_config
from tutorforge.errors import UserError


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory, tiny_model) -> Path:  # noqa: F811
    """The tiny Llama stored in bfloat16, as SmolLM2 and most hub checkpoints are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-bf16")
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def full_config(tmp_path: Path, model: Path, **extra) -> Path:
    """tiny_config without an adapter and its lora_* keys: a full fine-tune."""
    path = tiny_config(tmp_path, model, **extra)
    settings = {k: v for k, v in yaml.safe_load(path.read_text()).items() if not k.startswith("lora_")}
    settings.pop("adapter")
    settings.update({"learning_rate": 1e-3, **{k: v for k, v in extra.items() if k != "rows"}})
    path.write_text(yaml.safe_dump(settings))
    return path


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        out |= load_file(file)
    return out


def test_adapter_unset_trains_every_weight_and_saves_the_model_in_the_base_dtype(tmp_path, tiny_bf16):
    from tutorforge.rundir import RunDir
    from tutorforge.train import build_run, train

    cfg = load_config(full_config(tmp_path, tiny_bf16, max_steps=3, rows=12, bf16=True))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))
    params = dict(run.core.named_parameters())
    assert not hasattr(run.core, "peft_config")
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params.values())  # fp32 master weights
    assert run.dtype == torch.bfloat16  # autocast, as LoRA on CPU
    assert sum(p.numel() for p in run.optimizer.param_groups[0]["params"]) == sum(p.numel() for p in params.values())
    out = train(cfg, config_dir=tmp_path)
    assert out == tmp_path / "out" / "model"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names, names
    assert not (tmp_path / "out" / "adapter").exists() and not list((tmp_path / "out").glob(".*tmp"))
    base, tuned = _weights(tiny_bf16), _weights(out)
    assert base.keys() == tuned.keys() and all(t.dtype == torch.bfloat16 for t in tuned.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    size = (out / "model.safetensors").stat().st_size
    assert size < 1.01 * (tiny_bf16 / "model.safetensors").stat().st_size  # the base's size, not fp32's
    unchanged = [k for k in base if torch.equal(base[k], tuned[k])]
    assert all("norm" in k for k in unchanged), unchanged  # an update under bf16's step at 1.0 rounds away
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["output"] == "model" and info["saved_dtype"] == "torch.bfloat16"
    assert any("model/ saved in bfloat16: the base model's own dtype" in d for d in info["decisions"])
    assert any(d.startswith("full fine-tune of every weight") for d in info["decisions"])
    checkpoint = max((tmp_path / "out" / "checkpoints").glob("step-*"))
    assert not (checkpoint / "adapter").exists()
    trained = torch.load(checkpoint / "state.pt", weights_only=False)["trainable"]
    assert trained.keys() == params.keys()
    assert all(not torch.equal(trained[k].to(torch.bfloat16), base[k]) or "norm" in k for k in base)
    assert all(not torch.equal(trained[k], base[k].float()) for k in base)  # fp32: every weight moved, norms too
    run_dir = RunDir.open(tmp_path / "out")
    assert run_dir.full and run_dir.trained == out and run_dir.tuned() == (out, None)
    assert train(cfg, config_dir=tmp_path) == out  # complete: skipped


def test_unfrozen_parameters_train_only_what_they_match(tmp_path, tiny_model):  # noqa: F811
    from tutorforge.train import build_run, train

    cfg = load_config(full_config(tmp_path, tiny_model, max_steps=2, rows=8,
                                  unfrozen_parameters=[r"layers\.1\.mlp\.", r"^model\.norm\."]))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))
    trainable = sorted(n for n, p in run.core.named_parameters() if p.requires_grad)
    assert trainable == ["model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight",
                         "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    assert any("3 parameters" not in d and "(4 tensors)" in d for d in run.decisions)
    out = train(cfg, config_dir=tmp_path)
    base, tuned = _weights(tiny_model), _weights(out)
    assert sorted(k for k in base if not torch.equal(base[k], tuned[k])) == trainable
    blob = torch.load(max((tmp_path / "out" / "checkpoints").glob("step-*")) / "state.pt", weights_only=False)
    assert sorted(blob["trainable"]) == trainable  # a checkpoint holds the trainable weights only
    (tmp_path / "x").mkdir()
    wrong = load_config(full_config(tmp_path / "x", tiny_model, unfrozen_parameters=[r"layers\.1\.", r"mlp\.gate\b"]))
    with pytest.raises(UserError, match=r"unfrozen_parameters: 'mlp\\\\.gate\\\\b' matches no parameter of the "
                                        r"model; its 20 parameters are named like model\.embed_tokens\.weight, "):
        build_run(wrong, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))


def test_the_disk_check_sizes_a_full_fine_tune(tmp_path, tiny_model, monkeypatch):  # noqa: F811
    """The tiny Llama: 2 layers of 7 linears (hidden 64, intermediate 128, k and v 32 wide): 73,728
    weights, 5 norms of 64, the tied embeddings 49,152 x 64: 3,219,776 parameters. A checkpoint is the
    fp32 trainable weights and Adam's two moments, 12 bytes each, and 1 MiB of other files: 39,685,888
    bytes; one kept while the next is written (2); model/ in fp32 last (12,879,104 + 1 MiB):
    93,299,456 bytes in all."""
    import shutil

    from tutorforge.train import train

    config = full_config(tmp_path, tiny_model, max_steps=1, rows=4)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=93_299_456 - 1))
    with pytest.raises(UserError) as caught:
        train(load_config(config), config_dir=tmp_path)
    assert "needs about 93.3 MB of free disk for its checkpoints (2 checkpoints of 39.7 MB: trainable " \
           "weights and optimizer state; and the final model, 13.9 MB)" in str(caught.value), str(caught.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=93_299_456))
    assert train(load_config(config), config_dir=tmp_path) == tmp_path / "out" / "model"


def test_a_resumed_full_fine_tune_ends_with_the_same_weights(tmp_path, tiny_model):  # noqa: F811
    """Checkpoints of a full fine-tune resume exactly: a run stopped in step 4 (before its checkpoint)
    and trained again from step 3 ends bit for bit where the uninterrupted run ended."""
    from tutorforge.train import train

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = _weights(train(load_config(full_config(tmp_path / "a", tiny_model, max_steps=6, rows=12,
                                                      bf16=True)), config_dir=tmp_path))
    cfg = load_config(full_config(tmp_path / "b", tiny_model, max_steps=6, rows=12, bf16=True))

    def stop(step, total, row):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, config_dir=tmp_path, progress=stop)
    out = tmp_path / "b" / "out"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000003"] and not (out / "model").exists()
    resumed = _weights(train(cfg, config_dir=tmp_path))
    assert max((straight[k].float() - resumed[k].float()).abs().max().item() for k in straight) == 0.0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # spawns training runs
def test_kill_9_then_resume_of_a_full_fine_tune_ends_with_the_same_weights(tmp_path, tiny_model):  # noqa: F811
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proc = tutorforge("train", str(full_config(tmp_path / "a", tiny_model, max_steps=16)))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    killed = full_config(tmp_path / "b", tiny_model, max_steps=16)
    train_and_kill_at(killed, tmp_path / "b" / "out" / "metrics.jsonl", 5)
    assert not (tmp_path / "b" / "out" / "model").exists()
    proc = tutorforge("train", str(killed))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert 4 <= int(re.search(r"resuming from .*step-(\d+)", out).group(1)) < 16
    a, b = _weights(tmp_path / "a" / "out" / "model"), _weights(tmp_path / "b" / "out" / "model")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_lora_model_dir_continues_that_adapter(tmp_path, tiny_model):  # noqa: F811
    """The loaded adapter's own rank, alpha and targets (the config's differ, a decision says so);
    the first step starts from its weights, and training moves them on."""
    from transformers import AutoModelForCausalLM

    from conftest import random_lora
    from tutorforge.train import build_run, train

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft = random_lora(model, r=2, alpha=5, targets=["q_proj", "v_proj"], std=0.05, seed=1)
    source = tmp_path / "previous"
    peft.save_pretrained(source)
    saved = load_file(source / "adapter_model.safetensors")
    cfg = load_config(tiny_config(tmp_path, tiny_model, lora_model_dir=str(source), max_steps=2, rows=8))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))
    config = run.core.peft_config["default"]
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (2, 5, {"q_proj", "v_proj"})
    text = " ".join(run.decisions)
    assert "the adapter's own settings are used" in text and "lora_r 4 (adapter: 2)" in text
    assert "lora_alpha 8 (adapter: 5)" in text and "target modules all-linear" in text
    loaded = {n.replace(".default", ""): p for n, p in run.core.named_parameters() if p.requires_grad}
    assert len(loaded) == len(saved) == 8
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)  # the first step starts from it
    out = train(cfg, config_dir=tmp_path)
    after = load_file(out / "adapter_model.safetensors")
    assert after.keys() == saved.keys() and json.loads((out / "adapter_config.json").read_text())["r"] == 2
    assert all(not torch.equal(after[k], saved[k]) for k in saved if "lora_B" in k)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model) -> Path:  # noqa: F811
    """A finished full fine-tune of the tiny Llama (3 steps)."""
    from tutorforge.train import train

    where = tmp_path_factory.mktemp("full-run")
    train(load_config(full_config(where, tiny_model, max_steps=3, rows=8)), config_dir=where)
    return where / "out"


def test_a_full_fine_tune_has_nothing_to_merge_and_exports_its_model(full_run, capsys):
    from tutorforge import cli, compare, outputs, pipeline
    from tutorforge.export import export_run, run_source
    from tutorforge.rundir import RunDir

    run = RunDir.open(full_run)
    assert cli.main(["merge", str(full_run)]) == 0
    assert "nothing to merge" in capsys.readouterr().out and not run.merged.exists()
    source = run_source(run)
    assert source.model_dir == full_run / "model" and source.adapter is None
    assert compare.model_inputs(full_run) == {"model": outputs.model_identity(full_run / "model")}
    p = pipeline.Pipeline(Path("c.yml"), run.cfg, full_run, set(), pipeline._no_progress,
                          stages={"train": {"files": {"x": {"sha256": "1", "size": 1, "mtime_ns": 1}}}})
    outcome = pipeline._merge(p)
    assert (outcome.status, outcome.reason) == ("skipped", pipeline.NOTHING_TO_MERGE)
    assert run.stages["merge"] == {"inputs": {"x": "1"}, "status": "skipped", "reason": pipeline.NOTHING_TO_MERGE}
    report = export_run(full_run, quantizations=("f16",), verify=False)
    gguf = Path(report["files"]["f16"])
    record = outputs.read_record(gguf.parent)["stages"]["export"]
    assert record["inputs"]["model"] == outputs.model_identity(full_run / "model")  # made from model/
    from gguf import GGUFReader
    from safetensors.torch import load_file as load

    tensors = {t.name: t for t in GGUFReader(gguf).tensors}
    tuned = load(full_run / "model" / "model.safetensors")["model.layers.1.mlp.down_proj.weight"]
    written = torch.from_numpy(tensors["blk.1.ffn_down.weight"].data.copy()).float().reshape(tuned.shape)
    assert torch.allclose(written, tuned, atol=1e-3)  # the trained weights, in f16


@pytest.mark.slow  # the bundled model
def test_the_bundled_model_trains_in_full_on_cpu_and_its_export_verifies(tmp_path, bundled):
    from tutorforge.export import export_run
    from tutorforge.train import train

    config = full_config(tmp_path, bundled.path, max_steps=3, rows=12, sequence_len=256, sample_packing=False,
                         excess_length_strategy="truncate",
                         gradient_accumulation_steps=1, learning_rate=5e-5, base_model="smollm2")
    started = time.monotonic()
    out = train(load_config(config), config_dir=tmp_path)
    trained = time.monotonic() - started
    base, tuned = _weights(bundled.path), _weights(out)
    assert base.keys() == tuned.keys() and any(not torch.equal(base[k], tuned[k]) for k in base)
    report = export_run(tmp_path / "out", quantizations=("f16",))
    v = report["verification"]["f16"]
    assert report["failures"] == [] and v["tokenization_mismatches"] == 0 and v["positions"] >= 2000
    assert v["top1_agreement"] >= 0.99, v
    print(f"full fine-tune of the bundled model: 3 steps in {trained:.0f} s; f16 export top-1 agreement "
          f"{v['top1_agreement']:.4f} over {v['positions']} positions")


def test_a_full_fine_tune_is_compared_and_packaged_as_its_model(full_run, tmp_path):
    """compare's generator, package's stale-GGUF check and its tokenizer read model/, not an adapter."""
    import shutil

    from safetensors.torch import save_file

    from tutorforge.evaluate import open_generator
    from tutorforge.export import export_run
    from tutorforge.ollama import package
    from tutorforge.rundir import RunDir

    run_dir = tmp_path / "run"
    shutil.copytree(full_run, run_dir)
    generator = open_generator(str(run_dir))
    trained = _weights(run_dir / "model")
    weight = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(dict(generator.model.named_parameters())[weight].detach().float(), trained[weight].float())
    gguf = Path(export_run(run_dir, quantizations=("f16",), verify=False)["files"]["f16"])
    run = RunDir.open(run_dir)
    assert package(run, gguf).read_text().startswith("# Modelfile written by tutorforge")
    trained[weight] = trained[weight] * 2  # trained again into the same output_dir
    save_file(trained, run_dir / "model" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="exported from another model than .*model"):
        package(run, gguf)
