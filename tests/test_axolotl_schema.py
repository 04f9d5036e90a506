"""Every key of Axolotl's schema (src/tutorforge/axolotl_schema.tsv) is handled as the table says:
an implemented key is a field with a rule, a refused key set to a value is an error naming the
reason, an ignored key a warning (one that saves memory in Axolotl is recorded for the memory plan),
and no key of the schema is ever "unknown".
"""
from __future__ import annotations

import dataclasses
import re

import pytest

from tutorforge import axolotl_keys as ax
from tutorforge.config import Config, DatasetSpec, parse

HEAD = "base_model: smollm2\nadapter: lora\ndatasets:\n  - path: data.jsonl\n"
CANDIDATES = (True, 7, "x", ["x"], {"a": "b"})  # a value of some type each key's rule accepts


def fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def where(name: str) -> tuple[type, str]:
    """The dataclass holding an Axolotl key, and the key's name in it."""
    return (DatasetSpec, name.removeprefix("datasets[].")) if name.startswith("datasets[].") else (Config, name)


def yaml_with(name: str, value) -> str:
    import yaml

    cls, key = where(name)
    if cls is DatasetSpec:
        entry = yaml.safe_dump({"path": "data.jsonl", key: value}, default_flow_style=True).strip()
        return f"base_model: smollm2\nadapter: lora\ndatasets: [{entry}]\n"
    return HEAD + yaml.safe_dump({key: value}, default_flow_style=False)


def test_the_table_is_whole_and_well_formed():
    table = ax.schema()
    assert len(table) > 500  # 571 keys at the pinned commit
    assert re.fullmatch(r"[0-9a-f]{40}", ax.schema_commit())
    statuses = {k.status for k in table.values()}
    assert statuses <= set(ax.STATUSES) and {"implemented", "refused", "ignored:speed", "ignored:memory"} <= statuses
    for key in table.values():
        if key.status != "implemented":
            assert len(key.reason) > 10, f"{key.name}: {key.status} needs a reason a user can act on"
        assert "\t" not in key.reason


def test_every_implemented_key_is_a_field_with_a_rule():
    missing = []
    for name, key in ax.schema().items():
        cls, field_name = where(name)
        if key.status == "implemented" and field_name not in fields(cls):
            missing.append(name)
    assert not missing, f"implemented in the table, but no Config/DatasetSpec field: {missing}"


def test_a_field_named_as_an_axolotl_key_has_its_status_in_the_table():
    """Config's Axolotl-named fields are implemented or (accepted and) ignored, never refused."""
    for cls, prefix in ((Config, ""), (DatasetSpec, "datasets[].")):
        for name in fields(cls):
            key = ax.schema().get(prefix + name)
            assert key is None or key.status != "refused", f"{prefix}{name} is a field, yet refused"


def test_every_refused_key_is_an_error_naming_its_reason():
    for name, key in ax.schema().items():
        cls, field_name = where(name)
        if key.status != "refused" or field_name in fields(cls):
            continue
        report = parse(yaml_with(name, "on"), "c.yml")
        errors = [p.message for p in report.errors if p.path.endswith(field_name)]
        assert errors and key.reason in errors[0] and "not implemented by tutorforge" in errors[0], (name, errors)


def test_every_ignored_key_is_a_warning_and_memory_savers_reach_the_plan():
    for name, key in ax.schema().items():
        cls, field_name = where(name)
        if not key.ignored:
            continue
        for value in CANDIDATES:
            report = parse(yaml_with(name, value), "c.yml")
            if not [p for p in report.errors if p.path.endswith(field_name)]:
                break
        else:
            pytest.fail(f"{name}: no value of {CANDIDATES} is accepted")
        assert not report.errors, (name, report.render())
        warned = [p.message for p in report.warnings if p.path.endswith(field_name)]
        if field_name in fields(cls) and value == fields(cls)[field_name].default or \
                value in ax.IGNORED_VALUES_DONE.get(name, ()):
            assert not warned, (name, warned)
            continue  # the default value, or one asking for what tutorforge does anyway
        said = "accepted: tutorforge" if key.reason.startswith("accepted:") else "ignored"
        assert warned and key.reason in warned[0] and said in warned[0], (name, report.render())
        assert report.config is not None
        recorded = any(field_name in s for s in report.config.ignored_memory_savings)
        assert recorded == key.saves_memory, name
        assert ("memory plan does not count on" in warned[0]) == key.saves_memory, name


def test_no_key_of_the_schema_is_unknown():
    unknown = []
    for name in ax.schema():
        for value in CANDIDATES:
            report = parse(yaml_with(name, value), "c.yml")
            if any(p.message.startswith("unknown key") for p in report.problems):
                unknown.append(name)
                break
    assert not unknown


@pytest.mark.parametrize(("key", "hint"), [("lora_rr", "lora_r"), ("lora_dropuot", "lora_dropout"),
                                           ("attn_implementaton", "attn_implementation"),
                                           ("datasets[].field_mesages", "field_messages")])
def test_a_key_nobody_knows_gets_did_you_mean(key, hint):
    report = parse(yaml_with(key, 1), "c.yml")
    assert [p.message for p in report.errors] == [f"unknown key; did you mean `{hint}`?"]


def test_an_empty_value_of_a_refused_key_passes_silently():
    report = parse(HEAD + "deepspeed:\nrl: null\nfsdp: []\n", "c.yml")
    assert not report.errors and not [p for p in report.warnings if p.path in ("deepspeed", "rl", "fsdp")]


def test_internal_fields_cannot_be_set_from_yaml():
    report = parse(HEAD + "ignored_memory_savings: [x]\n", "c.yml")
    assert report.config is not None and report.config.ignored_memory_savings == ()
    assert [p.message for p in report.warnings if p.path == "ignored_memory_savings"] == [
        "unknown key, ignored: neither tutorforge nor Axolotl's schema has it"]


def test_a_key_of_a_known_family_that_the_schema_lacks_follows_its_family():
    report = parse(HEAD + "liger_new_kernel: true\ndpo_new_loss: sigmoid\n", "c.yml")
    assert [p.path for p in report.warnings if "ignored (Liger" in p.message] == ["liger_new_kernel"]
    assert [p.path for p in report.errors] == ["dpo_new_loss"]


@pytest.mark.parametrize(("plugin", "outcome"), [
    ("axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin", "chunks"),
    ("axolotl.integrations.liger.LigerPlugin", "ignored"),
    ("axolotl.integrations.kd.KDPlugin", "knowledge distillation is not supported"),
    ("my_package.MyPlugin", "a third-party plugin's code is not run")])
def test_plugins_that_change_only_speed_memory_or_logging_are_ignored_and_others_refused(plugin, outcome):
    report = parse(HEAD + f"plugins:\n  - {plugin}\n", "c.yml")
    if outcome == "chunks":  # what the plugin does, tutorforge does already: no memory saving forgone
        assert not report.errors and report.config is not None and report.config.ignored_memory_savings == ()
        assert [p.message for p in report.warnings if p.path == "plugins"] == [
            f"{plugin}: accepted: tutorforge computes the loss in chunks already"]
    elif outcome == "ignored":
        assert not report.errors and report.config is not None
        assert any(plugin in p.message and "ignored" in p.message for p in report.warnings)
        assert report.config.ignored_memory_savings == ()
    else:
        assert len(report.errors) == 1 and outcome in report.errors[0].message


def test_axolotl_spellings_fold_into_one_key():
    cfg = parse(HEAD + "micro_batch_size: 2\nbatch_size: 16\nflash_attention: true\n"
                "gradient_checkpointing: offload\noptimizer: adamw_torch_8bit\n"
                "bnb_config_kwargs: {bnb_4bit_quant_type: fp4, bnb_4bit_use_double_quant: false}\n", "c.yml").config
    assert cfg is not None
    assert (cfg.gradient_accumulation_steps, cfg.attn_implementation, cfg.gradient_checkpointing, cfg.optimizer) \
        == (8, "flash_attention_2", True, "adamw_bnb_8bit")
    assert (cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant) == ("fp4", False)
    assert cfg.ignored_memory_savings == ("gradient_checkpointing: offload",)
    given = parse(HEAD + "micro_batch_size: 2\nbatch_size: 16\ngradient_accumulation_steps: 3\n", "c.yml")
    assert given.config is not None and given.config.gradient_accumulation_steps == 3
    assert any("batch_size" in p.path and "ignored" in p.message for p in given.warnings)


def test_chat_template_default_is_chat_template():
    report = parse("base_model: smollm2\nadapter: lora\ndatasets:\n  - path: d.jsonl\n"
                   "    type: chat_template.default\n", "c.yml")
    assert not report.errors and report.config is not None and report.config.datasets[0].type == "chat_template"


@pytest.mark.parametrize(("value", "expected"), [
    ("chat_template.argilla", "tutorforge reads Alpaca rows"),
    ("alpaca:chatml_v2", "tutorforge reads Alpaca rows"),
    ("my_module.transform", "tutorforge reads Alpaca rows"),
    ("alpacca", "did you mean `alpaca`")])
def test_axolotl_dataset_types_are_named_not_supported(value, expected):
    report = parse(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: d.jsonl\n    type: {value}\n", "c.yml")
    assert len(report.errors) == 1 and expected in report.errors[0].message


AXOLOTL_STYLE = """\
base_model: Qwen/Qwen3-8B
# written as Axolotl's examples are: speed, memory and logging keys beside the training ones
plugins:
  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin
  - axolotl.integrations.liger.LigerPlugin
liger_rms_norm: true
liger_glu_activation: true
load_in_4bit: true
adapter: qlora
lora_r: 16
lora_alpha: 32
lora_target_linear: true
lora_mlp_kernel: true
lora_qkv_kernel: true
lora_o_kernel: true
attn_implementation: flash_attention_2
datasets:
  - path: data/tutor.jsonl
    type: alpaca
skip_prepare_dataset: false
dataset_prepared_path: last_run_prepared
sequence_len: 2048
sample_packing: true
micro_batch_size: 1
gradient_accumulation_steps: 8
num_epochs: 1
optimizer: adamw_torch_8bit
lr_scheduler: cosine
learning_rate: 2e-4
bf16: auto
tf32: false
gradient_checkpointing: true
activation_offloading: true
warmup_ratio: 0.1
evals_per_epoch: 0
saves_per_epoch: 1
weight_decay: 0.0
wandb_project:
trackio_project_name: tutor
special_tokens:
"""


def test_an_axolotl_style_config_validates_with_a_warning_for_each_ignored_key():
    report = parse(AXOLOTL_STYLE, "qwen3.yml")
    assert report.errors == [], report.render()
    cfg = report.config
    assert cfg is not None and (cfg.adapter, cfg.attn_implementation, cfg.optimizer) == \
        ("qlora", "flash_attention_2", "adamw_bnb_8bit")
    warned = {p.path for p in report.warnings}
    assert {"plugins", "liger_rms_norm", "lora_mlp_kernel", "activation_offloading", "trackio_project_name",
            "optimizer", "dataset_prepared_path"} <= warned
    assert "wandb_project" not in warned  # no value: nothing to ignore
    assert set(cfg.ignored_memory_savings) == {"activation_offloading"}


def test_chunked_cross_entropy_is_what_tutorforge_does_already():
    quiet = parse(HEAD + "chunked_cross_entropy: true\nliger_fused_linear_cross_entropy: true\n"
                  "cut_cross_entropy: true\n", "c.yml")
    assert not quiet.errors and quiet.config is not None
    assert [p.path for p in quiet.warnings] == ["datasets[0].path"]  # data.jsonl is not there: nothing else
    assert quiet.config.ignored_memory_savings == ()
    counted = parse(HEAD + "chunked_cross_entropy: true\nchunked_cross_entropy_num_chunks: 8\n", "c.yml")
    assert [(p.path, p.message.split(" (")[0]) for p in counted.warnings if p.path != "datasets[0].path"] == [
        ("chunked_cross_entropy_num_chunks", "accepted: tutorforge computes the loss in chunks already, sized by "
         "the vocabulary")]
