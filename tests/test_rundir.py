"""The typed run directory: run.json's config comes back as the frozen Config it was, and no other
module reads run.json's config as a dict."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest

from tutorforge.config import Config, parse
from tutorforge.errors import UserError
from tutorforge.rundir import RunDir, config_from_dict, config_to_dict, write_training

SRC = Path(__file__).resolve().parent.parent / "src" / "tutorforge"

RICH = """\
base_model: smollm2
adapter: lora
datasets:
  - path: data/python_tutor.jsonl
    type: alpaca
    data_files: [a.jsonl, b.jsonl]
  - path: data/python_tutor.jsonl
val_set_size: 0.1
sequence_len: 512
lora_target_modules: [q_proj, v_proj]
peft_layers_to_transform: [0, 1]
special_tokens:
  pad_token: "<|im_end|>"
bf16: false
output_dir: ./outputs/rich
tutorforge:
  export:
    quantizations: [q8_0, q4_k_m]
    name: tutor
  ollama:
    quantization: q8_0
    model_name: my-tutor
    repeat_penalty: 1.2
  compare:
    max_new_tokens: 99
"""


def _cfg(text: str = RICH) -> Config:
    report = parse(text, "test.yml")
    assert not report.errors, report.render()
    assert report.config is not None
    return report.config


def test_the_stored_config_comes_back_equal_and_typed(tmp_path):
    cfg = _cfg()
    write_training(tmp_path, cfg, {"status": "complete", "fingerprint": {"config": "x"}})
    run = RunDir.open(tmp_path)
    assert run.cfg == cfg  # frozen dataclasses: every field, nested sections and datasets
    assert run.cfg.datasets[0].data_files == ("a.jsonl", "b.jsonl")
    assert run.cfg.special_tokens == (("pad_token", "<|im_end|>"),)
    assert run.cfg.peft_layers_to_transform == (0, 1)
    assert run.info["status"] == "complete"
    assert run.gguf() == tmp_path / "gguf" / "tutor.Q8_0.gguf"
    assert run.gguf("f16") == tmp_path / "gguf" / "tutor.F16.gguf"
    assert run.model_name == "my-tutor"
    assert (run.adapter, run.merged, run.modelfile, run.heldout) == (
        tmp_path / "adapter", tmp_path / "merged", tmp_path / "gguf" / "Modelfile", tmp_path / "heldout.jsonl")


def test_a_run_json_written_before_a_key_existed_gets_its_default(tmp_path):
    stored = config_to_dict(_cfg())
    del stored["tutorforge"]["ollama"]["repeat_last_n"], stored["sequence_len"]
    stored["a_key_of_a_later_version"] = 1
    cfg = config_from_dict(stored)
    assert cfg.tutorforge.ollama.repeat_last_n == Config().tutorforge.ollama.repeat_last_n == 64
    assert cfg.sequence_len == 2048 and cfg.tutorforge.ollama.repeat_penalty == 1.2


def test_stage_records_leave_the_training_record_as_it_was(tmp_path):
    cfg = _cfg()
    write_training(tmp_path, cfg, {"status": "complete", "steps": 7})
    RunDir(tmp_path, cfg).save_stages({"merge": {"status": "complete"}})
    run = RunDir.open(tmp_path)
    assert run.stages == {"merge": {"status": "complete"}}
    assert run.training()["steps"] == 7 and run.cfg == cfg


def test_a_directory_that_is_not_a_run_is_named_with_what_to_give(tmp_path):
    with pytest.raises(UserError, match=r"no complete training run here \(run.json missing\).*--base"):
        RunDir.open(tmp_path, "--base")
    (tmp_path / "run.json").write_text("{not json")
    assert RunDir.find(tmp_path) is None
    (tmp_path / "run.json").write_text(json.dumps({"config": {"lora_r": [1, 2]}}))
    with pytest.raises(UserError, match="its config cannot be read"):
        RunDir.find(tmp_path)


def _reads_of_stored_config(tree: ast.AST) -> list[int]:
    """Lines that take "config" out of a dict: x["config"] or x.get("config")."""
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant)
                and node.slice.value == "config"):
            lines.append(node.lineno)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "config"):
            lines.append(node.lineno)
    return lines


def test_only_the_run_directory_reads_run_json():
    offenders = []
    for path in sorted(SRC.glob("*.py")):
        if path.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text())
        offenders += [f"{path.name}:{line} reads a stored config as a dict" for line in _reads_of_stored_config(tree)]
        for node in ast.walk(tree):  # a path built to run.json: opening it is RunDir's job
            if (isinstance(node, ast.BinOp) and isinstance(node.right, ast.Constant)
                    and node.right.value == "run.json"):
                offenders.append(f"{path.name}:{node.lineno} opens run.json")
    assert offenders == []


def test_every_cfg_parameter_is_a_typed_config():
    untyped = []
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    if arg.arg == "cfg" and annotation not in ("Config", "Config | None"):
                        untyped.append(f"{path.name}:{node.lineno} {node.name}({arg.arg}: {annotation or '?'})")
    assert untyped == []


def test_the_stored_dict_is_plain_json():
    stored = config_to_dict(_cfg())
    assert json.loads(json.dumps(stored)) == stored
    assert stored["datasets"][0]["data_files"] == ["a.jsonl", "b.jsonl"]
    assert set(stored) == {f.name for f in dataclasses.fields(Config)}
