"""pipeline.py: `tutorforge run` does every stage, skips what is done, and survives kill -9."""
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
import yaml

from conftest import ROOT
from tutorforge import pipeline
from tutorforge.errors import UserError


def fake_pipeline(tmp_path: Path) -> pipeline.Pipeline:
    (tmp_path / "run.json").write_text(json.dumps({"status": "complete"}))
    p = pipeline.Pipeline(tmp_path / "c.yml", None, tmp_path, set(), pipeline._no_progress)
    return p


def test_a_stage_runs_once_then_is_skipped_until_inputs_or_outputs_change(tmp_path):
    p = fake_pipeline(tmp_path)
    calls = []

    def work(resume: bool) -> Path:
        calls.append(resume)
        (tmp_path / "out.bin").write_bytes(b"x" * (len(calls) + 10))
        return tmp_path / "out.bin"

    outputs = lambda out: [out]  # noqa: E731
    assert pipeline._stage(p, "export", {"a": 1, "q": ("q4_k_m",)}, work, outputs).status == "done"
    p.stages = json.loads((tmp_path / "run.json").read_text())["stages"]  # as the next run reads them
    assert pipeline._stage(p, "export", {"a": 1, "q": ("q4_k_m",)}, work, outputs).status == "skipped"
    assert calls == [False]
    recorded = json.loads((tmp_path / "run.json").read_text())["stages"]["export"]
    assert recorded["status"] == "complete" and recorded["inputs"] == {"a": 1, "q": ["q4_k_m"]}
    assert recorded["files"][str(tmp_path / "out.bin")]["size"] == 11
    assert pipeline._stage(p, "export", {"a": 2}, work, outputs).status == "done"  # inputs changed
    (tmp_path / "out.bin").write_bytes(b"tampered")
    assert pipeline._stage(p, "export", {"a": 2}, work, outputs).status == "done"  # output changed
    (tmp_path / "out.bin").unlink()
    assert pipeline._stage(p, "export", {"a": 2}, work, outputs).status == "done"  # output gone
    p.redo = {"export"}
    assert pipeline._stage(p, "export", {"a": 2}, work, outputs).status == "done"  # --from
    assert calls == [False] * 5


def test_an_interrupted_stage_resumes_only_on_the_same_inputs(tmp_path):
    p = fake_pipeline(tmp_path)
    calls = []

    def dies(resume: bool) -> Path:
        calls.append(resume)
        raise KeyboardInterrupt

    def work(resume: bool) -> Path:
        calls.append(resume)
        (tmp_path / "out.bin").write_bytes(b"ok")
        return tmp_path / "out.bin"

    with pytest.raises(KeyboardInterrupt):
        pipeline._stage(p, "export", {"a": 1}, dies, lambda out: [out])
    assert json.loads((tmp_path / "run.json").read_text())["stages"]["export"]["status"] == "running"
    p.stages = json.loads((tmp_path / "run.json").read_text())["stages"]  # as a new run reads them
    pipeline._stage(p, "export", {"a": 1}, work, lambda out: [out])
    with pytest.raises(KeyboardInterrupt):
        pipeline._stage(p, "export", {"a": 2}, dies, lambda out: [out])
    pipeline._stage(p, "export", {"a": 3}, work, lambda out: [out])
    assert calls == [False, True, False, False]  # True: the same inputs were interrupted, keep its files


def test_an_unknown_stage_names_the_stages(tmp_path):
    with pytest.raises(UserError, match="did you mean `export`"):
        pipeline.run(tmp_path / "c.yml", start="exprot")


@pytest.mark.parametrize("recipe", [  # validate resolves base_model smollm2: the bundled model's conversion
    pytest.param(p, marks=pytest.mark.slow) if "smollm2" in p.name else p
    for p in sorted((ROOT / "recipes").glob("*.yml"))], ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_plans(recipe, capsys):
    from tutorforge import cli

    assert cli.main(["validate", str(recipe)]) == 0
    assert "valid:" in capsys.readouterr().out
    assert cli.main(["plan", str(recipe), "--gpu", "rtx3060-12gb" if "3060" in recipe.name else
                     "rtx4090-24gb" if "4090" in recipe.name else "cpu"]) == 0
    out = capsys.readouterr().out
    assert "fits" in out and "does not fit" not in out, out


# --- end to end on the bundled model ------------------------------------------------------------

def small_recipe(tmp_path: Path) -> Path:
    data = tmp_path / "tutor.jsonl"
    data.write_text("\n".join((ROOT / "data" / "python_tutor.jsonl").read_text().splitlines()[:48]) + "\n")
    settings = yaml.safe_load((ROOT / "recipes" / "python-tutor-smollm2-cpu.yml").read_text())
    settings.update({"datasets": [{"path": str(data), "type": "alpaca"}], "output_dir": str(tmp_path / "run"),
                     "val_set_size": 8, "num_epochs": 1, "max_steps": 8, "micro_batch_size": 1,
                     "gradient_accumulation_steps": 2, "lora_r": 4, "lora_alpha": 8, "save_steps": 1,
                     "evals_per_epoch": None, "saves_per_epoch": None, "eval_steps": 4,
                     "peft_layers_to_transform": [27, 28, 29]})
    settings["tutorforge"]["compare"] = {"max_prompts": 3, "max_new_tokens": 40}
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(settings))
    return path


def start(recipe: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tutorforge", "run", str(recipe), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def kill_when(proc: subprocess.Popen, marker: str, delay: float = 0.0, timeout: float = 600) -> str:
    """Read the run's output until `marker` appears, wait `delay` s, then kill -9 its process group."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "".join(seen)
        assert time.monotonic() < deadline, "".join(seen[-30:])
    raise AssertionError(f"the run ended before {marker!r}:\n" + "".join(seen[-40:]))


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def summary(out: str) -> dict[str, str]:
    """stage -> done/skipped, from the table `run` ends with."""
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in pipeline.STAGES and words[1] in ("done", "skipped"):
            rows[words[0]] = words[1]
    return rows


@pytest.mark.slow
def test_run_survives_kill_9_in_training_and_in_export_and_redoes_no_finished_stage(tmp_path):
    recipe = small_recipe(tmp_path)
    run_dir = tmp_path / "run"
    kill_when(start(recipe), "step 3/8")
    assert not (run_dir / "adapter").exists() and (run_dir / "checkpoints").is_dir()

    out = kill_when(start(recipe), "== export", delay=4)
    assert "resuming from" in out and "step 1/8" not in out  # training went on from its checkpoint
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 9)), steps  # no step lost or logged twice across the kill
    assert not list((run_dir / "gguf").glob("*.gguf")) or all(
        p.stat().st_size > 1 << 20 for p in (run_dir / "gguf").glob("*.gguf"))  # nothing half-written
    adapter_mtime = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns

    out = finish(start(recipe))
    assert summary(out) == {"validate": "done", "plan": "done", "train": "skipped", "merge": "skipped",
                            "export": "done", "package": "done", "compare": "done"}, out[-3000:]
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter_mtime
    assert "tutorforge chat" in out and "ollama create python-tutor" in out and "brevity" in out
    for name in ("gguf/model.Q4_K_M.gguf", "gguf/Modelfile", "compare/report.html", "loss.png"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "gguf" / "export.json").read_text())
    assert report["verification"]["f16"]["tokenization_mismatches"] == 0
    assert report["verification"]["f16"]["top1_agreement"] >= 0.99
    # the tuned f16 export answered beside the shipped q4_k_m: quantisation's drift in code runs
    assert re.search(r"tuned, code runs: .* with its unquantised export \(f16 GGUF\), .* with q4_k_m GGUF", out)
    compared = json.loads((run_dir / "compare" / "summary.json").read_text())
    assert compared["names"]["tuned_unquantized"] == "f16 GGUF" and "code_runs_pct" in compared["aggregates"][
        "tuned_unquantized"]

    out = finish(start(recipe))
    assert set(summary(out).values()) == {"done", "skipped"}
    assert all(summary(out)[s] == "skipped" for s in ("train", "merge", "export", "package", "compare")), out[-2000:]

    out = finish(start(recipe, "--from", "package"))
    assert [summary(out)[s] for s in ("export", "package", "compare")] == ["skipped", "done", "done"]


@pytest.mark.slow
def test_the_chat_recipe_runs_end_to_end_and_compares_follow_up_questions(tmp_path):
    """The shipped multi-turn recipe, cut small: conversations in, a verified GGUF and Modelfile out,
    and an A/B report whose prompts are follow-up questions asked after their conversations."""
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join((ROOT / "data" / "python_tutor_chat.jsonl").read_text().splitlines()[:30]) + "\n")
    settings = yaml.safe_load((ROOT / "recipes" / "python-tutor-smollm2-chat-cpu.yml").read_text())
    settings["datasets"][0]["path"] = str(data)
    settings.update({"output_dir": str(tmp_path / "run"), "val_set_size": 3, "num_epochs": 1, "max_steps": 3,
                     "gradient_accumulation_steps": 1, "lora_r": 4, "lora_alpha": 8, "evals_per_epoch": None,
                     "saves_per_epoch": None, "peft_layers_to_transform": [28, 29]})
    settings["tutorforge"]["compare"] = {"max_prompts": 3, "max_new_tokens": 32}
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump(settings))
    out = finish(start(recipe))
    assert set(summary(out).values()) == {"done"}, out[-3000:]
    held = [json.loads(line) for line in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 3 and all(sum(m["role"] == "user" for m in h["messages"]) >= 2 for h in held)
    records = [json.loads(line) for line in (tmp_path / "run" / "compare" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record, row in zip(records, held, strict=True):  # the last user turn, asked after the turns before it
        asked = max(i for i, m in enumerate(row["messages"]) if m["role"] == "user")
        assert record["instruction"] == row["messages"][asked]["content"]
        assert record["history"] == [{"role": m["role"], "content": m["content"]} for m in row["messages"][:asked]]
    assert "## Follow-up questions in their conversations" in (tmp_path / "run" / "compare" / "report.md").read_text()
    assert re.search(r"TEMPLATE rendered by Go's text/template equals the training prompt on [5-9] conversations", out)
    report = json.loads((tmp_path / "run" / "gguf" / "export.json").read_text())
    assert report["verification"]["f16"]["tokenization_mismatches"] == 0
