"""eval_code.py and training's metric_for_best_model: code_runs answers held-out prompts at each
evaluation, runs their code in the sandbox, and load_best_model_at_end keeps the checkpoint where the
most answers' code ran; the Axolotl keys of that choice are validated."""
from __future__ import annotations

import json

import pytest
import torch

from test_train import adapter_weights, tiny_config, tiny_model  # noqa: F401 -- the fixture
from tutorforge.config import load_config, parse
from tutorforge.evaluate import Answer

RUNS = "Use len().\n\n```python\nprint(len([1, 2]))  # 2\n```"
FAILS = "Like this:\n\n```python\nprint(undefined_name)\n```"
NO_CODE = "A list is an ordered sequence."


def test_code_runs_scores_each_answer_in_the_sandbox_and_no_code_counts_against(tmp_path, monkeypatch):
    """The share is of prompts asked: an answer without code counts as one whose code did not run."""
    from tutorforge import eval_code
    from tutorforge.data import Row
    from tutorforge.evaluate import TorchGenerator

    asked = []

    def scripted(self, instruction, input="", *, system=None, max_new_tokens=256, history=()):
        asked.append((instruction, max_new_tokens, self.system, list(history)))
        text = {"a": RUNS, "b": FAILS, "c": NO_CODE, "d": RUNS}[instruction]
        return Answer(text, 10, True)

    monkeypatch.setattr(TorchGenerator, "generate", scripted)
    cfg = load_config(tiny_config(tmp_path, tmp_path, eval_max_new_tokens=77, default_system_message="Be brief."))
    rows = [Row(x, "", "", f"h.jsonl:{i}") for i, x in enumerate("abcd")]
    model = torch.nn.Linear(2, 2)
    assert eval_code.code_runs(model, None, cfg, rows) == 50.0  # a and d run; b fails; c has no code
    assert [a[0] for a in asked] == list("abcd") and {a[1] for a in asked} == {77}
    assert {a[2] for a in asked} == {"Be brief."} and not model.training


def test_the_keys_of_the_choice_are_validated():
    base = "base_model: smollm2\nadapter: lora\ndatasets: [{path: d.jsonl}]\n"
    ok = parse(base + "val_set_size: 0.1\nload_best_model_at_end: true\nmetric_for_best_model: code_runs\n"
               "greater_is_better: true\n", "c.yml")
    assert not ok.errors and ok.config.metric_for_best_model == "code_runs"
    wrong = parse(base + "val_set_size: 0.1\nload_best_model_at_end: true\ngreater_is_better: true\n", "c.yml")
    assert any("greater_is_better" in e.path and "worst checkpoint" in e.message for e in wrong.errors)
    none_held = parse(base + "load_best_model_at_end: true\n", "c.yml")
    assert any(e.path == "load_best_model_at_end" and "val_set_size" in e.message for e in none_held.errors)
    idle = parse(base + "val_set_size: 0.1\nmetric_for_best_model: code_runs\n", "c.yml")
    assert not idle.errors and any("chooses nothing" in w.message for w in idle.warnings)
    silent = parse(base + "val_set_size: 0.1\nload_best_model_at_end: true\nmetric_for_best_model: code_runs\n"
                   "eval_max_new_tokens: 0\n", "c.yml")
    assert any(e.path == "eval_max_new_tokens" for e in silent.errors)
    unknown = parse(base + "val_set_size: 0.1\nmetric_for_best_model: bleu\n", "c.yml")
    assert any(e.path == "metric_for_best_model" for e in unknown.errors)


@pytest.mark.slow  # trains a tiny model for 6 steps, with 3 evaluations
def test_load_best_model_at_end_keeps_the_checkpoint_whose_answers_ran_most(tmp_path, tiny_model,  # noqa: F811
                                                                             monkeypatch):
    """The model in training answers the held-out prompts at step 0 and at each evaluation (scripted
    shares here: 25, then 75 at step 2, 50 at 4, 25 at 6); the run's adapter is step 2's checkpoint,
    not the last step's, and metrics.jsonl and run.json say so."""
    from tutorforge import train as training

    shares = iter([25.0, 75.0, 50.0, 25.0])
    seen = []

    def scripted(model, tokenizer, cfg, rows):
        seen.append(len(rows))
        return next(shares)

    monkeypatch.setattr(training, "code_runs", scripted)
    config = tiny_config(tmp_path, tiny_model, max_steps=6, val_set_size=4, eval_steps=2, save_steps=None,
                         load_best_model_at_end=True, metric_for_best_model="code_runs",
                         tutorforge={"eval_prompts": 3})
    out = training.train(load_config(config), config_dir=tmp_path)
    assert seen == [3] * 4  # the first 3 of the 4 held-out prompts (code_runs puts the model in eval mode)
    run = tmp_path / "out"
    info = json.loads((run / "run.json").read_text())
    assert (info["best_step"], info["best_eval"], info["metric_for_best_model"]) == (2, 75.0, "code_runs")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["eval_code_runs"]) for r in rows if "eval_code_runs" in r] == [
        (0, 25.0), (2, 75.0), (4, 50.0), (6, 25.0)]
    final, kept = adapter_weights(out), adapter_weights(run / "checkpoints" / "step-000002" / "adapter")
    last = adapter_weights(run / "checkpoints" / "step-000006" / "adapter")
    assert all(torch.equal(final[k], kept[k]) for k in final)
    assert not all(torch.equal(final[k], last[k]) for k in final)  # the last step is not the output
