"""plan.py: the memory plan of the shipped recipe, component by component, its fixes, auto_fit and
train's refusal, the `plan` command, and (slow) predicted vs measured peak RSS of training. The
formulas against what autograd keeps: test_memory.py; profiles: test_hardware.py; shapes: test_shapes.py."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml

from conftest import ROOT
from tutorforge import cli, hardware, memory, plan
from tutorforge.config import load_config, parse
from tutorforge.errors import UserError

RECIPE = ROOT / "recipes" / "python-tutor-llama3-8b-rtx3060.yml"
GB = 2**30


def config(**changes):
    """The seed recipe with some keys changed (datasets resolved from the repository)."""
    settings = yaml.safe_load(RECIPE.read_text())
    settings["datasets"] = [{"path": str(ROOT / "data" / "python_tutor.jsonl")}]
    tf = settings.setdefault("tutorforge", {})
    tf.update(changes.pop("tutorforge", {}))
    settings.update(changes)
    report = parse(yaml.safe_dump(settings), "test.yml")
    assert not report.errors, report.render()
    return report.config


def line(p: plan.Plan, start: str) -> plan.Line:
    return next(x for x in p.lines if x.name.strip().startswith(start))


# --- hardware profiles in the CLI and the config ------------------------------------------------

def test_unknown_gpu_names_the_closest(capsys):
    assert cli.main(["plan", str(RECIPE), "--gpu", "rtx3060"]) == 2
    err = capsys.readouterr().err
    assert "--gpu rtx3060: unknown hardware profile; did you mean `rtx3060-12gb`?" in err
    with pytest.raises(UserError, match="did you mean `a100-80gb`"):
        hardware.profile("a100-80")


def test_tutorforge_section_keys_validate():
    assert config(tutorforge={"auto_fit": True, "hardware": "t4-16gb"}).tutorforge.hardware == "t4-16gb"
    report = parse("base_model: smollm2\nadapter: lora\ntutorforge:\n  hardware: rtx4090\n", "x.yml")
    assert "tutorforge.hardware" in report.render() and "did you mean `rtx4090-24gb`" in report.render()


# --- the plan's numbers ------------------------------------------------------------------------

def test_seed_config_on_rtx3060(capsys):
    p = plan.plan_training(config(), hardware="rtx3060-12gb")
    print(p.render())
    linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    assert linear == 6_979_321_856
    assert sum(r * c for r, c in memory.lora_tensors(p.settings, p.shape)) == 83_886_080
    assert line(p, "linear weights").gb == pytest.approx(linear * (0.5 + 1 / 64 + 1 / 4096) / GB)
    assert line(p, "embeddings").gb == pytest.approx((2 * 128256 * 4096 + 65 * 4096) * 2 / GB)  # kept 16-bit
    assert line(p, "LoRA parameters").gb == line(p, "gradients").gb == pytest.approx(83_886_080 * 4 / GB)
    assert line(p, "optimizer").gb == pytest.approx(83_886_080 * (2 + 8 / 256) / GB)
    assert line(p, "activations").gb == pytest.approx(
        (32 * 1024 * 4096 * 2 + 1024 * 4096 * 4 + 1024 * 1024 + 2 * 1024 * 128 * 4) / GB)
    # one chunk of 261 label rows (128 MiB of fp32 logits) and the 1023 rows' hidden states; no lm_head copy
    assert line(p, "logits").gb == pytest.approx((261 * 128256 * 12 + 2 * 1023 * 4096 * 4) / GB)
    assert 7 < p.total_gb < 8.5
    assert p.total_gb == pytest.approx(sum(x.gb for x in p.lines if not x.name.startswith("  ")))
    assert p.fits == (p.peak_gb <= 12.0) and p.margin_gb == pytest.approx(12.0 - p.peak_gb)
    out = capsys.readouterr().out
    assert "verdict: " in out and "DOES NOT FIT" not in out
    # the fp32 reference (30 GB) is read from disk a layer at a time: the embeddings (2 GB) + activations
    verifying = next(x for x in p.ram if x.name == "verifying the export")
    assert "read from disk" in verifying.how and 2.9 < verifying.gb < 4.5, verifying


def test_larger_micro_batches_cost_what_their_tokens_cost():
    one, two = (plan.plan_training(config(micro_batch_size=m), hardware="rtx3060-12gb") for m in (1, 2))
    # the loss's chunk is as large at both: only the label rows' hidden states grow
    assert line(two, "logits").gb - line(one, "logits").gb == pytest.approx(2 * 1023 * 4096 * 4 / GB)
    assert line(two, "activations").gb == pytest.approx(2 * line(one, "activations").gb, rel=0.01)
    off = plan.plan_training(config(gradient_checkpointing=False), hardware="rtx3060-12gb")
    assert line(off, "activations").gb > 10 * line(one, "activations").gb  # every layer's tensors


def test_embeddings_trained_in_full_are_counted():
    plain = plan.plan_training(config(), hardware="a100-40gb")
    saved = plan.plan_training(config(lora_modules_to_save=["embed_tokens", "lm_head"]), hardware="a100-40gb")
    extra = line(saved, "LoRA parameters").gb - line(plain, "LoRA parameters").gb
    assert extra == pytest.approx(2 * 128256 * 4096 * 4 / GB)


# --- fixes, auto_fit and train's refusal --------------------------------------------------------

def too_big(**extra):
    return config(micro_batch_size=8, gradient_accumulation_steps=1, gradient_checkpointing=False,
                  sequence_len=4096, **extra)


def test_fixes_keep_the_effective_batch_and_fit():
    p = plan.plan_training(too_big(), hardware="rtx3060-12gb")
    assert not p.fits and p.fixes
    changes = {f.key: f.new for f in p.fixes}
    assert changes["micro_batch_size"] * changes["gradient_accumulation_steps"] == 8
    assert changes["gradient_checkpointing"] is True
    fixed = plan.plan_training(dataclasses.replace(too_big(), **changes), hardware="rtx3060-12gb")
    assert fixed.fits and fixed.peak_gb == pytest.approx(p.fixed_gb)
    assert "the smallest changes that fit" in p.render()
    if "sequence_len" in changes:  # the last resort: only as long as nothing else was enough
        longer = dataclasses.replace(too_big(), **{**changes, "sequence_len": changes["sequence_len"] + 64})
        assert not plan.plan_training(longer, hardware="rtx3060-12gb").fits


def test_micro_batch_alone_when_that_is_enough():
    p = plan.plan_training(config(micro_batch_size=4, gradient_accumulation_steps=2), vram_gb=9)
    assert [f.key for f in p.fixes] == ["micro_batch_size", "gradient_accumulation_steps"]
    m = p.fixes[0].new
    assert p.fixes[1].new == 8 // m and m in (2, 1)
    bigger = plan.plan_training(config(micro_batch_size=m * 2, gradient_accumulation_steps=8 // (m * 2)), vram_gb=9)
    assert not bigger.fits  # the largest micro batch that fits was chosen


def test_auto_fit_applies_the_fixes_and_says_why():
    cfg, decisions = plan.apply_plan(too_big(tutorforge={"auto_fit": True}), hardware="rtx3060-12gb")
    assert cfg.micro_batch_size * cfg.gradient_accumulation_steps == 8 and cfg.gradient_checkpointing
    assert decisions[0].startswith(f"micro_batch_size 8 -> {cfg.micro_batch_size} (plan: ")
    assert " GB > 12.0 GB)" in decisions[0]
    assert any(d.startswith("gradient_checkpointing false -> true") for d in decisions)
    assert plan.plan_training(cfg, hardware="rtx3060-12gb").fits


def test_without_auto_fit_train_refuses_and_the_flag_overrides():
    with pytest.raises(UserError) as refused:
        plan.apply_plan(too_big(), hardware="rtx3060-12gb")
    text = str(refused.value)
    assert "does not fit" in text and "micro_batch_size 8 -> " in text
    assert "auto_fit: true" in text and "--ignore-plan" in text
    cfg, decisions = plan.apply_plan(too_big(), hardware="rtx3060-12gb", ignore=True)
    assert cfg == too_big() and "training anyway (--ignore-plan)" in decisions[0]
    fine, decisions = plan.apply_plan(config(), hardware="a100-40gb")
    assert fine == config() and decisions[0].startswith("memory plan on a100-40gb: fits: ")


def test_train_command_stops_before_loading_anything(tmp_path, capsys, monkeypatch):
    settings = yaml.safe_load(RECIPE.read_text())
    settings.update(micro_batch_size=8, gradient_accumulation_steps=1, gradient_checkpointing=False,
                    sequence_len=4096, output_dir=str(tmp_path / "out"),
                    datasets=[{"path": str(ROOT / "data" / "python_tutor.jsonl")}])
    settings["tutorforge"]["hardware"] = "rtx3060-12gb"
    path = tmp_path / "big.yml"
    path.write_text(yaml.safe_dump(settings))
    assert cli.main(["train", str(path)]) == 2
    assert "memory plan on rtx3060-12gb: training does not fit" in capsys.readouterr().err
    # --ignore-plan goes on to training, which needs the model itself: here it is not downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cli.main(["train", str(path), "--ignore-plan"]) == 2
    assert "NousResearch/Meta-Llama-3-8B is not on this machine" in capsys.readouterr().err


def test_plan_command(capsys):
    code = cli.main(["plan", str(RECIPE), "--gpu", "rtx3060-12gb"])
    out = capsys.readouterr().out
    assert f"memory plan: {RECIPE} on rtx3060-12gb (12.0 GB VRAM, 16.0 GB RAM" in out
    for name in ("linear weights, nf4", "LoRA parameters", "optimizer states, adamw_bnb_8bit", "activations",
                 "logits and loss", "framework", "total", "merging", "exporting"):
        assert name in out
    assert code == (0 if "verdict: fits" in out else 1)
    assert cli.main(["plan", str(RECIPE), "--vram", "24"]) == 0
    assert "verdict: fits: " in capsys.readouterr().out
    assert cli.main(["plan", str(RECIPE), "--gpu", "cpu", "--ram", "8"]) == 1  # 8B on an 8 GB laptop
    assert "GB RAM (" in capsys.readouterr().out


# --- accuracy on this machine -------------------------------------------------------------------

@pytest.mark.slow
def test_predicted_peak_rss_of_training_the_bundled_model_is_within_20_percent(tmp_path, bundled):
    """The mission's QLoRA settings (4-bit NF4, r 32 on every linear layer, 8-bit AdamW, gradient
    checkpointing) on the bundled SmolLM2-135M, on CPU, 3 steps: ru_maxrss against the plan."""
    from test_train import smollm_config, tutorforge

    path = smollm_config(tmp_path, rows=60, adapter="qlora", load_in_4bit=True, lora_r=32, lora_alpha=16,
                         micro_batch_size=1, gradient_accumulation_steps=1, optimizer="adamw_bnb_8bit",
                         gradient_checkpointing=True, max_steps=3, save_steps=100)
    predicted = plan.plan_training(load_config(path), hardware="cpu").total_gb
    proc = tutorforge("train", str(path))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    measured = max(r["peak_mem_gb"] for r in rows)
    print(f"peak RSS: predicted {predicted:.2f} GB, measured {measured:.2f} GB "
          f"({(predicted - measured) / measured:+.1%})")
    assert abs(predicted - measured) / measured <= 0.20
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["decisions"][0].startswith("memory plan on cpu: fits: ")
    assert math.isclose(float(info["decisions"][0].split("fits: ")[1].split(" GB")[0]), predicted, abs_tol=0.05)


def test_embeddings_trained_in_full_are_dropped_before_the_sequence_is_cut():
    p = plan.plan_training(config(lora_modules_to_save=["embed_tokens", "lm_head"]), vram_gb=16)
    assert not p.fits
    assert [f.line() for f in p.fixes] == [
        "lora_modules_to_save [embed_tokens, lm_head] -> [] "
        f"(no embeddings trained; plan: {p.peak_gb:.1f} GB > 16.0 GB)"]
    assert p.fixed_gb == pytest.approx(plan.plan_training(config(), vram_gb=16).peak_gb)


def test_lora_in_the_upper_layers_only():
    full = plan.plan_training(config(gradient_checkpointing=False), hardware="a100-80gb")
    top = plan.plan_training(config(gradient_checkpointing=False, peft_layers_to_transform=[28, 29, 30, 31]),
                             hardware="a100-80gb")
    assert line(top, "LoRA parameters").gb == pytest.approx(line(full, "LoRA parameters").gb / 8)
    layer = memory.moving(full.settings, full.shape, full.hardware).layer
    assert (line(full, "activations").gb - line(top, "activations").gb) * GB == pytest.approx(28 * layer)


def test_a_full_fine_tune_counts_weights_gradients_and_optimizer_states(capsys):
    """Llama 3.2 1B (1,235,814,400 parameters, tied), adapter unset, on an A100 in bf16: fp32 master
    weights (4 bytes), fp32 gradients (4) and AdamW's two fp32 moments (8): 16 bytes a parameter
    before activations, far above LoRA's plan of the same model; 8-bit Adam, SGD and Adafactor as
    their states are; unfrozen_parameters shrink gradients, states and the layers backward runs through."""
    n = 1_235_814_400
    one_b = {"base_model": "meta-llama/Llama-3.2-1B", "load_in_4bit": False, "optimizer": "adamw_torch"}
    full = plan.plan_training(config(**one_b, adapter=None), hardware="a100-80gb")
    lora = plan.plan_training(config(**one_b, adapter="lora"), hardware="a100-80gb")
    assert full.shape.params == n and full.settings.full and sum(r * c for r, c in full.settings.full_tensors) == n
    assert line(full, "weights, fp32 master weights").gb * GB == n * 4
    assert line(full, "gradients (fp32)").gb * GB == n * 4
    assert line(full, "optimizer states, adamw_torch").gb * GB == n * 8
    static = sum(line(full, k).gb for k in ("weights", "gradients", "optimizer")) * GB
    assert static >= 16 * n
    assert full.peak_gb > lora.peak_gb + 15  # LoRA: a 16-bit base (2.3 GB), small adapter, no fp32 copy
    assert not any(x.name == "merging" for x in full.ram)  # model/ is exported as it is
    text = full.render()
    assert "training: full fine-tune, 1.236B of 1.236B params trainable, fp32 master weights" in text
    norms = 33 * 2048  # 33 vectors of 2048 < bitsandbytes' 4096: 32-bit states
    eight = plan.plan_training(config(**{**one_b, "optimizer": "adamw_bnb_8bit"}, adapter=None), hardware="a100-80gb")
    assert line(eight, "optimizer states").gb * GB == pytest.approx((n - norms) * (2 + 8 / 256) + norms * 8)
    sgd = plan.plan_training(config(**{**one_b, "optimizer": "sgd"}, adapter=None), hardware="a100-80gb")
    assert line(sgd, "optimizer states").gb == 0
    top = plan.plan_training(config(**one_b, adapter=None, unfrozen_parameters=[r"layers\.15\."]),
                             hardware="a100-80gb")
    layer = 60_817_408 + 2 * 2048
    assert line(top, "gradients").gb * GB == layer * 4 and line(top, "optimizer states").gb * GB == layer * 8
    assert top.settings.grad_layers == 1 and top.peak_gb < full.peak_gb
    assert cli.main(["plan", "--gpu", "a100-80gb", str(_write_full_config())]) in (0, 1)
    out = capsys.readouterr().out
    for name in ("weights, fp32 master weights", "gradients (fp32)", "optimizer states, adamw_torch", "activations"):
        assert name in out


def test_ignored_memory_savings_are_listed_and_not_counted_on():
    """Axolotl keys that save memory there and do nothing here are named in the plan, which counts
    the memory as if they were absent (the same peak)."""
    text = "base_model: NousResearch/Meta-Llama-3-8B\nadapter: qlora\nload_in_4bit: true\n"
    plain = parse(text, "c.yml").config
    offload = parse(text + "activation_offloading: true\n", "c.yml").config
    assert plain.ignored_memory_savings == () and offload.ignored_memory_savings == ("activation_offloading",)
    with_key, without = (plan.plan_training(c, hardware="rtx3060-12gb") for c in (offload, plain))
    assert with_key.peak_gb == without.peak_gb
    expected = ("ignored, not counted on: activation_offloading (tutorforge does not do what they save; "
                "this plan assumes no saving)")
    assert expected in with_key.render().splitlines()
    assert "ignored, not counted on" not in without.render()


def _write_full_config():
    import tempfile
    from pathlib import Path

    settings = yaml.safe_load(RECIPE.read_text())
    settings.update(base_model="meta-llama/Llama-3.2-1B", load_in_4bit=False, optimizer="adamw_torch",
                    datasets=[{"path": str(ROOT / "data" / "python_tutor.jsonl")}])
    for key in [k for k in settings if k.startswith(("lora_", "bnb_")) or k == "adapter"]:
        settings.pop(key)
    path = Path(tempfile.mkdtemp()) / "full.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_on_cpu_a_16_bit_checkpoint_is_planned_as_fp32_copies_and_an_fp32_one_as_mapped():
    """from_pretrained on CPU maps an fp32 checkpoint (its tensors are the file's pages) but converts a
    16-bit one to fp32 copies, of only the unquantised weights under QLoRA (bench/qlora_8b_cpu.py)."""
    cpu = hardware.profile("cpu")
    p = plan.plan_training(config(), hardware="cpu")
    s, shape = p.settings, p.shape
    assert shape.dtype_bytes == 2  # Llama 3 8B's built-in shape: published in bf16
    linear = shape.layers * shape.layer_linear_params
    w = memory.weights(s, shape, cpu)
    assert (w.mapped, w.stored) == (0, (shape.params - linear) * 4)
    assert w.quantised == pytest.approx(linear * memory.quant_bytes(s))
    assert line(p, "embeddings, norms, lm_head, fp32").gb == pytest.approx(w.stored / GB)
    fp32 = memory.weights(s, dataclasses.replace(shape, dtype_bytes=4), cpu)
    assert (fp32.mapped, fp32.stored) == (shape.params * 4, 0)
    unquantised = memory.weights(dataclasses.replace(s, quant=None), shape, cpu)
    assert (unquantised.mapped, unquantised.stored, unquantised.quantised) == (0, shape.params * 4, 0)
