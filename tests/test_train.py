"""train.py: LoRA/QLoRA training from the config; resume after kill -9; the CPU 4-bit eval guard."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from tutorforge.config import load_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, bundled_tokenizer_dir) -> Path:
    """A 2-layer Llama (hidden 64) with random weights and the bundled tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_config(tmp_path: Path, model: Path, rows: int = 40, **extra) -> Path:
    data = tmp_path / "data.jsonl"
    lines = (ROOT / "data" / "python_tutor.jsonl").read_text().splitlines()[:rows]
    data.write_text("\n".join(lines) + "\n")
    settings = {"base_model": str(model), "adapter": "lora", "datasets": [{"path": str(data)}],
                "sequence_len": 512, "sample_packing": True, "lora_r": 4, "lora_alpha": 8,
                "lora_dropout": 0.1, "lora_target_linear": True, "micro_batch_size": 1,
                "gradient_accumulation_steps": 2, "max_steps": 24, "learning_rate": 0.002,
                "optimizer": "adamw_torch", "output_dir": str(tmp_path / "out"), "save_steps": 1,
                "seed": 3, **extra}
    path = tmp_path / "config.yml"
    import yaml

    path.write_text(yaml.safe_dump(settings))
    return path


def tutorforge(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tutorforge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


def train_and_kill_at(config: Path, metrics: Path, step: int) -> None:
    """Start `tutorforge train config` and kill -9 it once metrics.jsonl has reached `step`."""
    proc = tutorforge("train", str(config))
    deadline = time.time() + 600
    while time.time() < deadline:
        steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()] if metrics.exists() else []
        if steps and max(steps) >= step:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def adapter_weights(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.mark.slow  # spawns training runs
def test_kill_9_then_resume_ends_with_the_same_adapter(tmp_path, tiny_model):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = tiny_config(tmp_path / "a", tiny_model)
    proc = tutorforge("train", str(straight))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    killed = tiny_config(tmp_path / "b", tiny_model)
    metrics = tmp_path / "b" / "out" / "metrics.jsonl"
    train_and_kill_at(killed, metrics, 7)
    assert not (tmp_path / "b" / "out" / "adapter").exists()
    proc = tutorforge("train", str(killed))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    resumed_at = int(re.search(r"resuming from .*step-(\d+)", out).group(1))
    assert 6 <= resumed_at < 24  # the last complete checkpoint before the kill
    a = adapter_weights(tmp_path / "a" / "out" / "adapter")
    b = adapter_weights(tmp_path / "b" / "out" / "adapter")
    assert a.keys() == b.keys() and len(a) >= 8
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 25))  # every step logged once, none lost or doubled


@pytest.mark.slow  # spawns training runs
def test_outputs_and_log_lines(tmp_path, tiny_model):
    config = tiny_config(tmp_path, tiny_model, max_steps=6, val_set_size=5, evals_per_epoch=2)
    proc = tutorforge("train", str(config))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    lines = re.findall(r"^step (\d+)/6 \| loss [\d.]+ \| lr [\d.e+-]+ \| \d+ tok/s \| peak [\d.]+ GB", out, re.M)
    assert [int(n) for n in lines] == [1, 2, 3, 4, 5, 6]
    run = tmp_path / "out"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "eval_loss" in rows[0]
    train_rows = [r for r in rows if r["step"] > 0]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"} <= set(train_rows[0])
    assert any("eval_loss" in r for r in train_rows)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 6
    assert set(info["fingerprint"]) == {"config", "data"} and "peft" in info["versions"]
    assert any("compute dtype" in d for d in info["decisions"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "adapter")
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any("q_proj" in n for n in names) and any("down_proj" in n for n in names)
    assert not any("lm_head" in n or "embed_tokens" in n for n in names)
    again = tutorforge("train", str(config))
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "complete for this config and data; skipped" in out


def _grads(run, batch) -> dict[str, torch.Tensor]:
    from tutorforge.loss import loss_sum

    run.model.zero_grad(set_to_none=True)
    run.model.train()
    loss_sum(run.model, batch).backward()
    return {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("guarded", [True, False])
def test_cpu_qlora_gradients_survive_an_eval_pass(tmp_path, tiny_model, guarded):
    """With the guard, LoRA gradients after an eval pass equal those before it; without it, the
    trap is real on this CPU (the control shows the test can fail)."""
    from tutorforge.loss import collate, evaluate
    from tutorforge.train import build_run

    cfg = load_config(tiny_config(tmp_path, tiny_model, adapter="qlora", load_in_4bit=True, lora_dropout=0.0,
                                  val_set_size=4, bf16=False))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))
    from bitsandbytes.nn import Linear4bit

    layers = [m for m in run.model.modules() if isinstance(m, Linear4bit)]
    assert layers, "QLoRA must put the base in 4-bit"
    if not guarded:
        for m in layers:
            m.support_avx512bf16_for_cpu = True
    batch = collate(run.items[:1], run.pad_id)
    reference = _grads(run, batch)
    import contextlib

    evaluate(run.model, run.val, micro_batch_size=1, pad_id=run.pad_id, autocast=contextlib.nullcontext)
    after = _grads(run, batch)
    worst = max((reference[k] - after[k]).abs().max().item() for k in reference)
    if guarded:
        assert worst == 0.0
    else:
        assert worst > 1e-3, "without the guard the repacked weights must change the gradients here"


@pytest.mark.parametrize("optimizer", ["adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit",
                                       "paged_adamw_32bit", "adafactor", "sgd"])
def test_every_offered_optimizer_steps(tmp_path, tiny_model, optimizer):
    from tutorforge.train import build_run, train_steps

    cfg = load_config(tiny_config(tmp_path, tiny_model, optimizer=optimizer, max_steps=2, rows=8))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    (tmp_path / "out").mkdir(exist_ok=True)
    train_steps(run, {"step": 0})
    changed = [n for n, p in run.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed


@pytest.mark.slow  # spawns a training run
def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_model):
    config = tiny_config(tmp_path, tiny_model, rows=16, val_set_size=4, num_epochs=40, max_steps=None,
                         learning_rate=0.05, evals_per_epoch=1, early_stopping_patience=2, save_steps=None,
                         lora_dropout=0.0)
    proc = tutorforge("train", str(config))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["stopped_early"] and info["steps"] < info["total_steps"]
    best = tmp_path / "out" / "checkpoints" / f"step-{info['best_step']:06d}" / "adapter"
    final, kept = adapter_weights(tmp_path / "out" / "adapter"), adapter_weights(best)
    assert all(torch.equal(final[k], kept[k]) for k in final)
    evals = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [e["eval_loss"] for e in evals if e.get("eval_loss") is not None]
    assert min(evals) == pytest.approx(info["best_eval"]) and info["metric_for_best_model"] == "eval_loss"


def test_overfitting_note():
    from tutorforge.checkpoints import overfitting

    rising = [{"step": 0, "eval_loss": 3.0}] + [{"step": s, "eval_loss": e, "loss": 2.0 - s / 10}
                                                for s, e in [(1, 2.0), (2, 1.8), (3, 1.9), (4, 2.1)]]
    assert "eval loss rose from 1.800 (step 2) to 2.100 (step 4)" in overfitting(rising)
    falling = [{"step": s, "eval_loss": 2.0 - s / 10, "loss": 1.0} for s in range(1, 6)]
    assert overfitting(falling) is None


def smollm_config(tmp_path: Path, rows: int, **extra) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join((ROOT / "data" / "python_tutor.jsonl").read_text().splitlines()[:rows]) + "\n")
    settings = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "datasets": [{"path": str(data)}],
                "sequence_len": 512, "sample_packing": True, "lora_target_linear": True,
                "output_dir": str(tmp_path / "out"), "seed": 42, **extra}
    import yaml

    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.slow
def test_seed_qlora_settings_lower_eval_loss_on_the_bundled_model(tmp_path, bundled):
    """The mission's QLoRA recipe (4-bit NF4 base, r 32 on all linear layers, micro batch 1,
    accumulation 8, 8-bit AdamW, lr 2e-4) on SmolLM2 and the tutor dataset, on CPU."""
    config = smollm_config(tmp_path, rows=72, adapter="qlora", load_in_4bit=True, lora_r=32, lora_alpha=16,
                           micro_batch_size=1, gradient_accumulation_steps=8, optimizer="adamw_bnb_8bit",
                           learning_rate=0.0002, max_steps=4, val_set_size=8, eval_steps=2)
    proc = tutorforge("train", str(config))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    evals = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [(e["step"], e["eval_loss"]) for e in evals if e.get("eval_loss") is not None]
    assert [s for s, _ in evals] == [0, 2, 4]
    assert evals[2][1] < evals[1][1] < evals[0][1], evals  # eval loss falls
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    from bitsandbytes.functional import has_avx512bf16

    # the repacking (and so the guard) exists only on CPUs with avx512_bf16
    assert any("repacking off" in d for d in info["decisions"]) == has_avx512bf16()


@pytest.mark.slow
def test_a_config_that_overfits_is_reported(tmp_path, bundled):
    config = smollm_config(tmp_path, rows=12, adapter="lora", lora_r=16, lora_alpha=32, micro_batch_size=1,
                           gradient_accumulation_steps=1, learning_rate=0.003, num_epochs=10,
                           val_set_size=4, evals_per_epoch=1, save_steps=100,
                           peft_layers_to_transform=[26, 27, 28, 29])  # backward stops at layer 26
    proc = tutorforge("train", str(config))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["overfitting"] and "overfitting" in out


@pytest.mark.slow  # spawns training runs
def test_two_processes_over_gloo_match_one_with_the_same_effective_batch(tmp_path, tiny_model):
    """DDP (accelerate, gloo on CPU): 2 processes x accumulation 1 train the same adapter as one
    process x accumulation 2 (same micro batches per step, loss normalised over the whole step)."""
    common = {"lora_dropout": 0.0, "bf16": False, "max_steps": 6, "rows": 24}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = tiny_config(tmp_path / "one", tiny_model, gradient_accumulation_steps=2, **common)
    two = tiny_config(tmp_path / "two", tiny_model, gradient_accumulation_steps=1, **common)
    proc = tutorforge("train", str(one))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    proc = tutorforge("train", str(two), "--nproc", "2")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "2 processes (DDP)" in out
    info = json.loads((tmp_path / "two" / "out" / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 6
    a = adapter_weights(tmp_path / "one" / "out" / "adapter")
    b = adapter_weights(tmp_path / "two" / "out" / "adapter")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    moved = max(v.abs().max().item() for k, v in b.items() if "lora_B" in k)
    assert moved > 1e-3  # the adapters did train


@pytest.mark.slow  # spawns a training run
def test_progress_bar_with_eta_on_a_terminal(tmp_path, tiny_model):
    import pty

    config = tiny_config(tmp_path, tiny_model, max_steps=8, rows=12)
    main, replica = pty.openpty()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "tutorforge", "train", str(config)],
                            stdin=replica, stdout=replica, stderr=replica, env=env)
    os.close(replica)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=600)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen[-2000:]
    assert "ETA" in screen and "training" in screen and "tok/s" in screen


def test_lora_and_precision_keys_reach_the_model(tmp_path, tiny_model):
    from tutorforge.train import build_run

    cfg = load_config(tiny_config(tmp_path, tiny_model, lora_r=6, lora_alpha=3, lora_dropout=0.2,
                                  lora_target_linear=None, lora_target_modules=["q_proj", "v_proj"],
                                  lora_modules_to_save=["lm_head"], flash_attention=True, fp16=True,
                                  bf16=False, gradient_checkpointing=True, weight_decay=0.1,
                                  rows=8, max_steps=2))
    run = build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))
    peft = run.core.peft_config["default"]
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (6, 3, 0.2)
    assert set(peft.target_modules) == {"q_proj", "v_proj"} and peft.modules_to_save == ["lm_head"]
    trainable = [n for n, p in run.core.named_parameters() if p.requires_grad]
    assert any("lm_head" in n for n in trainable)
    assert not any("k_proj" in n or "up_proj" in n for n in trainable)
    assert run.core.base_model.model.is_activation_checkpointing
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.1
    assert run.dtype == torch.float32
    text = " ".join(run.decisions)
    assert "attn_implementation flash_attention_2 needs CUDA" in text and "fp16: true needs CUDA" in text
    assert "attention sdpa" in text  # the tiny Llama supports SDPA: the default falls back to it


def test_evaluations_and_saves_are_spread_evenly_and_end_the_run():
    from types import SimpleNamespace

    from tutorforge.train import make_schedule

    def steps(**keys):
        cfg = SimpleNamespace(**{"micro_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": None,
                                 "num_epochs": 1, "warmup_steps": None, "warmup_ratio": None,
                                 "evals_per_epoch": None, "eval_steps": None, "saves_per_epoch": None,
                                 "save_steps": None, **keys})
        sched = make_schedule(cfg, 172, has_val=True)  # 43 steps an epoch
        return ([s for s in range(1, sched.total_steps + 1) if sched.evaluates(s)],
                [s for s in range(1, sched.total_steps + 1) if sched.saves(s)])

    assert steps(evals_per_epoch=2, save_steps=100) == ([22, 43], [43])  # not 21, 42 and 43
    assert steps(evals_per_epoch=4, saves_per_epoch=1)[0] == [11, 22, 33, 43]
    assert steps(eval_steps=10, save_steps=20, num_epochs=2) == ([10, 20, 30, 40, 50, 60, 70, 80, 86],
                                                                 [20, 40, 60, 80, 86])
    assert steps(evals_per_epoch=2, num_epochs=2)[0] == [22, 43, 65, 86]
    assert steps()[0] == [43]  # once per epoch by default
    assert steps()[1] == [5, 10, 15, 20, 25, 30, 35, 40, 43]  # a tenth of the run


def test_train_refuses_up_front_when_the_disk_cannot_hold_its_checkpoints(tmp_path, tiny_model, monkeypatch,
                                                                          capsys):
    """LoRA r 4 on the 7 linears of 2 layers (hidden 64): 8,192 fp32 weights, 32,768 bytes. A checkpoint
    is the adapter, the trainable copy and Adam's two moments (131,072) and 1 MiB of other files:
    1,179,648 bytes; with evaluation the latest and the best are kept while the next is written (3),
    and the final adapter (32,768 + 1 MiB) comes last: 4,620,288 bytes."""
    import shutil

    from tutorforge import cli
    from tutorforge.errors import UserError
    from tutorforge.train import train

    config = tiny_config(tmp_path, tiny_model, max_steps=2, val_set_size=5)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=50_000))
    with pytest.raises(UserError) as caught:
        train(load_config(config), config_dir=tmp_path)
    text = str(caught.value)
    out = tmp_path / "out"
    assert text.startswith(f"{out}: training needs about 4.6 MB of free disk for its checkpoints "
                           "(3 checkpoints of 1.2 MB: adapter, trainable weights and optimizer state; "
                           "and the final adapter, 1.1 MB), but its disk has 50.0 kB free"), text
    assert "free some space" in text and "output_dir" in text
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "training needs about 4.6 MB of free disk" in err and "50.0 kB free" in err
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4_620_288 - 1))
    with pytest.raises(UserError, match="needs about 4.6 MB"):  # a byte short
        train(load_config(config), config_dir=tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4_620_288))
    assert train(load_config(config), config_dir=tmp_path) == out / "adapter"  # enough: it trains


def test_train_names_a_truncated_base_model(tmp_path, tiny_model, capsys):
    import shutil

    from tutorforge import cli

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size - 4096])
    config = tiny_config(tmp_path, model, max_steps=2)
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: truncated: its tensors need {size:,} bytes, the file has {size - 4096:,}" in err


def test_a_disk_that_fills_mid_run_stops_with_a_message_and_the_run_resumes(tmp_path, tiny_model, monkeypatch):
    """torch.save on a full disk raises an obscure RuntimeError (seen on /dev/full): the run stops with
    a message, leaves no half checkpoint, and the next train resumes from the last complete one."""
    import shutil

    from tutorforge.errors import UserError
    from tutorforge.train import train

    config = tiny_config(tmp_path, tiny_model, max_steps=4)
    real_save, real_usage, full = torch.save, shutil.disk_usage, []

    def save(obj, f, *args, **kwargs):
        if "step-000003" in str(f):
            full.append(f)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=0) if full
                        else real_usage(path))
    with pytest.raises(UserError) as caught:
        train(load_config(config), config_dir=tmp_path)
    checkpoints = tmp_path / "out" / "checkpoints"
    assert str(caught.value).startswith(f"{checkpoints}: the disk filled while writing the checkpoint of "
                                        "step 3 (0 bytes free); free some space and run train again: it "
                                        "resumes from the last complete checkpoint"), str(caught.value)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002"]
    monkeypatch.undo()
    assert train(load_config(config), config_dir=tmp_path) == tmp_path / "out" / "adapter"
    steps = [json.loads(x)["step"] for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
