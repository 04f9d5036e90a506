"""Every key a config accepts has an effect, or Axolotl's schema table marks it ignored
(axolotl_keys.schema; validation then warns that it is ignored): no key is accepted, typed,
documented and never read.

A field counts as read when some module of the library other than the config parser itself
(config.py, config_yaml.py, config_build.py, rules.py, axolotl_keys.py) reads an attribute of that
name (`x.sequence_len`), names it in `getattr(x, "name")`, or reads it as a key of the config written
out as a dict (`x["num_ctx"]`, `x.get("num_ctx")`, as stages that read run.json do). A method call
(`text.split(...)`) is not a read of a field.
"""
from __future__ import annotations

import ast
import dataclasses

from conftest import ROOT
from tutorforge import axolotl_keys as ax
from tutorforge.config import Config

PACKAGE = ROOT / "src" / "tutorforge"
PARSER = {"config.py", "config_yaml.py", "config_build.py", "rules.py", "axolotl_keys.py"}


def config_fields(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Dotted path (datasets[].split, tutorforge.export.name) -> attribute name, for every leaf field."""
    out = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            out |= config_fields(f.metadata["section"], f"{prefix}{f.name}.")
        elif f.metadata.get("internal"):
            continue  # set by validation, not a key of the YAML
        elif "list_of" in f.metadata:
            out[prefix + f.name] = f.name
            out |= config_fields(f.metadata["list_of"], f"{prefix}{f.name}[].")
        else:
            out[prefix + f.name] = f.name
    return out


def attributes_read(*, keys: bool = True) -> set[str]:
    """Names read anywhere in the library outside the parser: attributes (not called as methods),
    getattr's names, and (with `keys`) string keys of subscripts and `.get(...)`."""
    names: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in PARSER:
            continue
        tree = ast.parse(path.read_text(), str(path))
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in called:
                names.add(node.attr)
            elif isinstance(node, ast.Call) and (name := _named(node, keys)) is not None:
                names.add(name)
            elif keys and isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.add(str(node.slice.value))
    return names


def _named(call: ast.Call, keys: bool) -> str | None:
    """The constant name of getattr(x, "name"[, default]), or (with `keys`) of x.get("name"[, default])."""
    func, args = call.func, call.args
    if isinstance(func, ast.Name) and func.id == "getattr" and len(args) in (2, 3):
        return str(args[1].value) if isinstance(args[1], ast.Constant) else None
    if keys and isinstance(func, ast.Attribute) and func.attr == "get" and len(args) in (1, 2):
        return str(args[0].value) if isinstance(args[0], ast.Constant) else None
    return None


def ignored_fields() -> set[str]:
    """The config fields whose Axolotl key the table marks ignored."""
    return set(ax.ignored_fields()) & set(config_fields())


def unread_fields() -> set[str]:
    read = attributes_read()
    return {path for path, attr in config_fields().items() if attr not in read}


def test_the_walk_finds_fields_and_reads():
    fields = config_fields()
    assert {"sequence_len", "datasets[].path", "tutorforge.export.quantizations"} <= set(fields)
    assert len(fields) >= 80
    read = attributes_read()
    assert {"sequence_len", "lora_r", "micro_batch_size"} <= read
    assert "rpartition" not in read  # str methods are called, not read: `text.split(...)` reads no field


def test_every_accepted_key_is_read_or_declared_ignored():
    unread = unread_fields() - ignored_fields()
    assert unread == set(), (f"accepted config keys that nothing reads: {sorted(unread)}; make them "
                             "do what Axolotl does, or mark them ignored in axolotl_schema.tsv with a reason")


def test_ignored_keys_are_config_fields_that_nothing_reads():
    """The ignored list names real fields, and none that the code reads as an attribute (the warning
    would then be false). `name` is every Path's attribute, so it cannot be told apart."""
    fields = config_fields()
    assert {"model_type", "strict", "tokenizer_type"} <= ignored_fields()
    read = attributes_read(keys=False)
    assert {k for k in ignored_fields() if fields[k] in read and fields[k] != "name"} == set()


# --- the keys reach training: a tiny Llama and a word-level tokenizer, built here ----------------

def tiny_run(tmp_path, extra: str = ""):
    """build_run on a 2-layer Llama (hidden 64) whose tokenizer's eos is </s>, with special_tokens
    setting eos to <end>, a dataset file named without extension (ds_type: json) and `extra` keys."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_models import WORDS, tiny_tokenizer
    from tutorforge.config import load_config
    from tutorforge.train import build_run

    model_dir = tmp_path / "tiny"
    config = LlamaConfig(vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tiny_tokenizer(model_dir)
    rows = [{"instruction": "hello " * (i + 1), "input": "", "output": "world " * (3 - i)} for i in range(3)]
    (tmp_path / "rows").write_text(json.dumps(rows))
    (tmp_path / "c.yml").write_text(
        f"base_model: {model_dir}\nadapter: lora\nsequence_len: 64\nmicro_batch_size: 2\nlora_r: 4\n"
        f"special_tokens:\n  eos_token: <end>\n  pad_token: <pad>\ndatasets:\n  - path: {tmp_path / 'rows'}\n"
        f"    ds_type: json\noutput_dir: {tmp_path / 'out'}\n{extra}")
    cfg = load_config(tmp_path / "c.yml")
    return build_run(cfg, config_dir=tmp_path, skip_bad_rows=False, device=torch.device("cpu"))


def test_special_tokens_and_ds_type_reach_training(tmp_path):
    run = tiny_run(tmp_path)
    assert (run.tokenizer.eos_token_id, run.pad_id, run.pad_to) == (3, 4, None)
    assert len(run.items) == 3
    assert {tuple(it.input_ids[-2:]) for it in run.items} == {(6, 3)}  # "world" then the configured eos
    assert all(it.labels[-1] == 3 for it in run.items)


def test_pad_to_sequence_len_pads_every_batch_and_leaves_the_loss_alone(tmp_path, monkeypatch):
    import torch

    from tutorforge.formatting import IGNORE
    from tutorforge.train import collate, loss_sum

    run = tiny_run(tmp_path, "pad_to_sequence_len: true\n")
    assert run.pad_to == 64
    items = run.items[:2]
    natural = collate(items, run.pad_id)
    padded = collate(items, run.pad_id, run.pad_to)
    width = max(len(it.input_ids) for it in items)
    assert width < 64 and natural["input_ids"].shape == (2, width)
    assert {k: tuple(v.shape) for k, v in padded.items()} == {"input_ids": (2, 64), "labels": (2, 64),
                                                              "position_ids": (2, 64)}
    for row, it in enumerate(items):
        n = len(it.input_ids)
        assert padded["input_ids"][row, n:].eq(4).all() and padded["labels"][row, n:].eq(IGNORE).all()
        assert padded["position_ids"][row, n:].tolist() == list(range(64 - n))  # a sample of its own
    with torch.no_grad():
        a, b = float(loss_sum(run.core, natural)), float(loss_sum(run.core, padded))
    print(f"loss sum: {a:.6f} at width {width}, {b:.6f} at width 64")
    assert a > 1.0 and abs(a - b) < 1e-4 * a
    import tutorforge.train as train

    batches = []  # the training loop's own batches are sequence_len wide
    monkeypatch.setattr(train, "collate", lambda *args: batches.append(collate(*args)) or batches[-1])
    loss, real = train._accumulate(run, [[0, 1]], [0], train._autocast(run.device, run.dtype))
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 64)]
    assert real == sum(len(it.input_ids) for it in items)  # padding is not counted as tokens
