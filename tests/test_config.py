"""config.py (with config_yaml.py and config_build.py): Axolotl-style YAML into typed, frozen objects;
every problem reported at once."""
from __future__ import annotations

import dataclasses
import re
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MISSION_CONFIG, ROOT, tutorforge_imports
from tutorforge.config import Config, ConfigError, load_config, parse, reference, validate_file
from tutorforge.errors import UserError

# Every key the foundation must accept, each with a value a user would write.
SUPPORTED = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
base_model_config: HuggingFaceTB/SmolLM2-135M-Instruct
tokenizer_config: HuggingFaceTB/SmolLM2-135M-Instruct
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
adapter: qlora
load_in_4bit: true
load_in_8bit: false
bnb_4bit_quant_type: nf4
bnb_4bit_use_double_quant: true
sequence_len: 512
sample_packing: true
pad_to_sequence_len: false
datasets:
  - path: {data}
    type: alpaca
    data_files: [tutor.jsonl]
    split: train
val_set_size: 0.1
dataset_prepared_path: ./prepared
output_dir: ./out
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_linear: true
lora_target_modules: [q_proj, v_proj]
lora_modules_to_save: [embed_tokens]
micro_batch_size: 2
gradient_accumulation_steps: 4
num_epochs: 3
max_steps: 100
optimizer: paged_adamw_8bit
learning_rate: 0.0005
lr_scheduler: linear
warmup_steps: 5
weight_decay: 0.01
max_grad_norm: 0.5
train_on_inputs: false
bf16: auto
fp16: false
tf32: false
gradient_checkpointing: true
flash_attention: false
sdp_attention: true
logging_steps: 5
evals_per_epoch: 2
saves_per_epoch: 1
early_stopping_patience: 3
resume_from_checkpoint: ./out/checkpoint-10
auto_resume_from_checkpoints: true
seed: 7
special_tokens:
  pad_token: "<|im_end|>"
chat_template: tokenizer_default
strict: false
default_system_message: You are a concise Python tutor.
tutorforge:
  export:
    outtype: f16
    quantizations: [q4_k_m, q8_0]
  ollama:
    model_name: python-tutor
    temperature: 0
  compare:
    max_new_tokens: 128
"""


def problems(text: str) -> list[str]:
    report = parse(text, "c.yml")
    return [p.render("c.yml") for p in report.problems]


def errors(text: str) -> list[str]:
    report = parse(text, "c.yml")
    return [p.render("c.yml") for p in report.errors]


def test_mission_config_validates_as_written(write_config):
    cfg = load_config(write_config(MISSION_CONFIG))
    assert (cfg.adapter, cfg.load_in_4bit, cfg.sequence_len, cfg.sample_packing) == ("qlora", True, 1024, True)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_target_linear) == (32, 16, True)
    assert (cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.num_epochs) == (1, 8, 50)
    assert (cfg.optimizer, cfg.learning_rate) == ("adamw_bnb_8bit", 0.0002)


def test_every_supported_key_is_accepted_and_typed(tmp_path):
    report = parse(SUPPORTED.replace("{data}", str(tmp_path)), "c.yml")
    assert report.errors == []  # accepted; the two that change nothing here say so
    assert [p.render("c.yml") for p in report.warnings] == [
        "c.yml:20: warning: dataset_prepared_path: './prepared': ignored (the data is tokenised afresh on "
        "every run (seconds); nothing is cached)"]
    assert report.config is not None and report.config.attn_implementation == "sdpa"  # sdp_attention: true
    cfg = report.config
    assert cfg.datasets[0].data_files == ("tutor.jsonl",)
    assert cfg.lora_target_modules == ("q_proj", "v_proj")
    assert cfg.special_tokens == (("pad_token", "<|im_end|>"),)
    assert cfg.tutorforge.export.quantizations == ("q4_k_m", "q8_0")
    assert cfg.tutorforge.ollama.model_name == "python-tutor"
    assert cfg.tutorforge.compare.max_new_tokens == 128
    assert isinstance(cfg.max_steps, int) and isinstance(cfg.learning_rate, float)


def test_ignored_keys_warn_with_their_reason_unless_they_ask_for_what_is_done():
    report = parse("base_model: smollm2\nadapter: lora\nstrict: true\neval_max_new_tokens: 64\n"
                   "eval_sample_packing: false\nmodel_type: LlamaForCausalLM\ntokenizer_type: AutoTokenizer\n"
                   "datasets:\n  - path: d.jsonl\n    split: validation\n    name: main\n"
                   "  - path: e.jsonl\n    split: train\n", "c.yml")
    assert report.errors == [] and report.config is not None
    ignored = {p.path: p.message for p in report.warnings if "ignored (" in p.message}
    assert sorted(ignored) == ["model_type", "strict"]  # split and name are read
    idle = [p.message for p in report.warnings if p.path == "eval_max_new_tokens"]
    assert idle == ["64: no effect: evaluation generates answers only for metric_for_best_model: code_runs "
                    "(`tutorforge compare` answers up to tutorforge.compare.max_new_tokens)"]
    assert ignored["strict"] == ("True: ignored (in Axolotl it lets the command line override the YAML; "
                                 "tutorforge reads the YAML alone)")


@pytest.mark.slow  # validate resolves base_model smollm2: the bundled model's conversion
def test_validate_shows_ignored_keys(write_config, capsys):
    from tutorforge.cli import validate

    assert validate(write_config("base_model: smollm2\nadapter: lora\nliger_rms_norm: true\n"
                                 "dataset_prepared_path: last_run_prepared\n")) == 0
    out = capsys.readouterr().out
    assert "config.yml:3: warning: liger_rms_norm: ignored (Liger's fused kernels are not used" in out
    assert "config.yml:4: warning: dataset_prepared_path: 'last_run_prepared': ignored (the data is" in out


@pytest.mark.slow  # validate resolves base_model smollm2: the bundled model's conversion
def test_validate_refuses_a_special_token_outside_the_vocabulary(write_config, capsys):
    from tutorforge.cli import validate

    good = "base_model: smollm2\nadapter: lora\nspecial_tokens:\n  pad_token: <|endoftext|>\n"
    assert validate(write_config(good)) == 0
    with pytest.raises(UserError, match=r"special_tokens\.eos_token: '<\|mine\|>' is not in the tokenizer's "
                                        r"vocabulary \(49,152 tokens; its eos_token is '<\|im_end\|>'\)"):
        validate(write_config("base_model: smollm2\nadapter: lora\nspecial_tokens:\n  eos_token: <|mine|>\n"))


def test_config_objects_are_frozen(write_config):
    cfg = load_config(write_config(MISSION_CONFIG))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lora_r = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tutorforge.export.outtype = "bf16"


def test_bad_values_are_all_reported_with_line_value_and_fix():
    text = MISSION_CONFIG.replace("lora_r: 32", "lora_r: 0").replace(
        "micro_batch_size: 1", "micro_batch_size: -1").replace(
        "learning_rate: 0.0002", 'learning_rate: "fast"')
    found = errors(text)
    assert len(found) == 3
    assert found[0].startswith("c.yml:6: lora_r: 0: must be >= 1")
    assert found[1].startswith("c.yml:9: micro_batch_size: -1: must be >= 1")
    assert found[2].startswith("c.yml:13: learning_rate: 'fast': expected a number > 0")


@pytest.mark.parametrize("line, expected", [
    ("lora_r: 8.5", "lora_r: 8.5: expected a whole number"),
    ("lora_dropout: 1.5", "lora_dropout: 1.5: must be >= 0 and < 1"),
    ("sample_packing: maybe", "sample_packing: 'maybe': expected true or false"),
    ("num_epochs: 0", "num_epochs: 0: must be > 0"),
    ("learning_rate: .nan", "learning_rate: nan: expected a finite number"),
    ("sequence_len: [1024]", "sequence_len: [1024]: expected a whole number"),
    ("optimizer: adamw", "optimizer: 'adamw': expected one of"),
    ("bf16: sometimes", "bf16: 'sometimes': expected true, false or auto"),
    ("lora_target_modules: {q: 1}", "lora_target_modules: {'q': 1}: expected a list of names"),
    ("special_tokens: {pad: x}", "special_tokens: {'pad': 'x'}: unknown key `pad`; did you mean `pad_token`?"),
    ("seed: -3", "seed: -3: must be >= 0"),
])
def test_wrong_types_and_impossible_values_are_errors(line, expected):
    found = errors("base_model: x/y\nadapter: lora\n" + line + "\n")
    assert len(found) == 1, found
    assert f"c.yml:3: {expected}" in found[0]


def test_numbers_written_as_strings_are_accepted():
    cfg = parse(MISSION_CONFIG.replace("learning_rate: 0.0002", "learning_rate: 2e-4"), "c").config
    assert cfg.learning_rate == pytest.approx(2e-4)


def test_unknown_key_has_did_you_mean():
    report = parse(MISSION_CONFIG + "lora_alpah: 16\ngradient_acumulation_steps: 2\nzzz_qqq: 1\n", "c.yml")
    found = [p.render("c.yml") for p in report.errors]
    assert "lora_alpah: unknown key; did you mean `lora_alpha`?" in found[0]
    assert "did you mean `gradient_accumulation_steps`?" in found[1]
    # a key that misspells no known key is ignored, as Axolotl ignores it, but never silently
    assert len(found) == 2 and [p.message for p in report.warnings if p.path == "zzz_qqq"] == [
        "unknown key, ignored: neither tutorforge nor Axolotl's schema has it"]


def test_axolotl_training_keys_are_errors_integrations_warnings():
    report = parse(MISSION_CONFIG + "deepspeed: zero2.json\nrl: dpo\nwandb_project: tutor\n"
                   "hub_model_id: me/tutor\nneftune_noise_alpha: 5\n", "c.yml")
    assert [p.path for p in report.errors] == ["deepspeed", "rl", "neftune_noise_alpha"]
    assert [p.path for p in report.warnings if p.path != "datasets"] == ["wandb_project", "hub_model_id"]
    assert "DeepSpeed is not supported" in report.errors[0].message
    assert report.config is None


def test_empty_values_of_unsupported_keys_are_fine():
    report = parse(MISSION_CONFIG + "deepspeed:\nfsdp: []\nfsdp_config: {}\nwandb_project: ''\n"
                   "peft_use_dora: false\nlora_model_dir:\n", "c.yml")
    assert report.errors == [] and report.config is not None
    assert [p.path for p in report.warnings] == ["datasets"]  # only "no datasets"


def test_cross_key_rules():
    found = errors("base_model: x/y\nload_in_4bit: true\nwarmup_steps: 3\n"
                   "warmup_ratio: 0.1\nbf16: true\nfp16: true\nearly_stopping_patience: 2\n")
    text = "\n".join(found)
    assert "adapter: not set (a full fine-tune) with a quantised base" in text
    assert "warmup_steps and warmup_ratio are both set" in text
    assert "bf16 and fp16 are both true" in text
    assert "early_stopping_patience: needs evaluation" in text
    full = parse("base_model: x/y\n", "c.yml")  # adapter unset: a full fine-tune, as in Axolotl
    assert not full.errors and full.config is not None and full.config.adapter is None
    assert "continues a LoRA adapter" in "\n".join(errors("base_model: x/y\nlora_model_dir: a\n"))
    assert "with adapter: lora is not supported" in "\n".join(
        errors("base_model: x/y\nadapter: lora\nunfrozen_parameters: [lm_head]\n"))
    assert "training a slice of a weight" in "\n".join(
        errors("base_model: x/y\nunfrozen_parameters: ['embed_tokens.weight$[:32000]']\n"))


def test_lora_on_a_4bit_base_is_qlora_as_in_axolotl():
    report = parse("base_model: x/y\nadapter: lora\nload_in_4bit: true\n", "c.yml")
    assert not report.errors and report.config is not None and report.config.adapter == "qlora"
    assert any(p.path == "adapter" and "which is QLoRA" in p.message for p in report.warnings)


def test_dataset_entries_are_checked_by_path():
    found = errors(MISSION_CONFIG + "datasets:\n  - path: a.jsonl\n    type: pretrain\n"
                   "  - type: alpaca\n  - path: b.jsonl\n    feild_input: x\n")
    assert "c.yml:16: datasets[0].type: 'pretrain': `pretrain` is not supported" in found[0]
    assert "c.yml:17: datasets[1].path: required" in found[1]
    assert "datasets[2].feild_input: unknown key; did you mean `field_input`?" in found[2]


def test_a_key_given_twice_takes_the_last_value_and_says_so():
    report = parse(MISSION_CONFIG + "lora_r: 8\n", "c.yml")
    assert not report.errors and report.config is not None and report.config.lora_r == 8
    assert [p.render("c.yml") for p in report.warnings if p.path == "lora_r"] == [
        "c.yml:14: warning: lora_r: appears twice (lines 6 and 14): the value on line 14 is used, as in Axolotl; "
        "remove the other"]


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- a\n- b\n", "expected a mapping of keys"),
    ("just text", "expected a mapping of keys"),
    ("base_model: [unclosed\n", "YAML:"),
    ("a: 1\n\tb: 2\n", "YAML:"),
    ("a: 1\n---\nb: 2\n", "YAML:"),
    ("? [a, b]\n: 1\nbase_model: x/y\n", "keys must be names"),
    ("base_model: !!python/object:os.system x\n", "YAML:"),
    ("a: " + "[" * 3000 + "]" * 3000, "nested too deeply"),
    ("&a [*a]\n", "recursive"),
    ("\x00\x01", "not readable as YAML"),
    ("base_model: x/y\nadapter: lora\nlora_r: 1e999\n", "expected a whole number"),
])
def test_broken_yaml_gives_messages_not_tracebacks(text, expected):
    found = problems(text)
    assert found and expected in "\n".join(found)


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        validate_file(tmp_path / "missing.yml")
    bad = tmp_path / "latin1.yml"
    bad.write_bytes("base_model: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in validate_file(bad).render()
    bom = tmp_path / "bom.yml"
    bom.write_bytes(b"\xef\xbb\xbf" + MISSION_CONFIG.encode())
    assert validate_file(bom).config is not None
    two = tmp_path / "two.yml"
    two.write_text("lora_r: 0\n")
    with pytest.raises(ConfigError, match="two.yml: 2 problems; fix them") as caught:
        load_config(two)
    assert "two.yml:1: lora_r: 0: must be >= 1" in str(caught.value)
    assert "base_model: required" in str(caught.value)


WILD = sorted((ROOT / "tests" / "configs").glob("*-wild.yml"))
WILD_EXPECTED = {  # config -> the keys its errors must name (empty: valid)
    "anchors-wild.yml": [],
    "llama3-qlora-wild.yml": [],
    "mistral-lora-wild.yml": [],
    "chat-dataset-wild.yml": ["chat_template"],  # qwen_25: tutorforge uses the model's own template
    "multi-gpu-dpo-wild.yml": ["rl", "dpo_beta", "deepspeed", "fsdp", "fsdp_config", "lr_scheduler",
                               "optimizer", "datasets[0].type"],
}


@pytest.mark.parametrize("path", WILD, ids=lambda p: p.name)
def test_configs_in_the_wild(path):
    report = validate_file(path)
    assert [p.path for p in report.errors] == WILD_EXPECTED[path.name]
    assert (report.config is not None) == (not WILD_EXPECTED[path.name])


def test_anchors_and_merge_keys():
    cfg = validate_file(ROOT / "tests" / "configs" / "anchors-wild.yml").config
    assert cfg.tutorforge.ollama.num_ctx == cfg.sequence_len == 512
    assert [d.split for d in cfg.datasets] == ["train", "train"]
    assert cfg.datasets[1].path == cfg.datasets[0].path
    assert (cfg.num_epochs, cfg.micro_batch_size) == (3.0, 2)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    report = validate_file(recipe)
    assert report.errors == [] and report.config is not None
    assert [p for p in report.warnings if "no such file" in p.message] == []


def test_reference_lists_every_key():
    names = {row[0] for row in reference()}
    assert {"base_model", "lora_r", "datasets[].path", "tutorforge.export.quantizations"} <= names
    flat = {f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")} - {"datasets", "tutorforge"}
    assert flat <= names


# Fuzzing: whatever is thrown at the validator ends in "valid" or in messages, never a traceback.
KEY_POOL = [row[0] for row in reference() if "." not in row[0] and "[" not in row[0]] + [
    "deepspeed", "wandb_project", "datasets", "tutorforge", "rl", "fsdp", "lora_alpah", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(),
                    st.text(max_size=20), st.sampled_from(["auto", "qlora", "lora", "2e-4", "nf4"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEY_POOL + ["path", "type", "export"]),
                                                 inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEY_POOL), values, max_size=10))
def test_fuzz_structures_never_crash(doc):
    report = parse(yaml.safe_dump(doc), "fuzz.yml")
    assert report.errors or report.config is not None
    for problem in report.problems:
        assert problem.message and problem.render("fuzz.yml").startswith("fuzz.yml")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:- \n\t[]{}&*!|>'\"#%@`,?<=~0.9e\x00\x85\ufeff\U0001f40d")),
               max_size=80))
def test_fuzz_text_never_crashes(text):
    report = parse(text, "fuzz.yml")
    assert report.errors or report.config is not None


def test_problem_render_format():
    line = errors("base_model: x/y\nadapter: lora\nlora_r: -1\n")[0]
    assert re.fullmatch(r"c\.yml:3: lora_r: -1: must be >= 1 and <= 4096 \(LoRA rank\)", line)


# --- limits: a config is a few kB; what is not is refused at once, with the file named -------------

def _alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each anchor is a list of nine aliases of the one before (9**9 leaves)."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    lines.append(f"lora_target_modules: *a{levels - 1}")  # a key whose rule looks at every value
    return "base_model: smollm2\nadapter: lora\n" + "\n".join(lines) + "\n"


def _merge_bomb(levels: int = 9) -> str:
    """The same through merge keys: each mapping merges nine copies of the one before."""
    lines = ["m0: &m0 {k: v}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, levels)]
    return "base_model: smollm2\nadapter: lora\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [_alias_bomb(), _merge_bomb()], ids=["aliases", "merge-keys"])
def test_alias_bombs_are_refused_at_once(write_config, text, capsys):
    from tutorforge import cli

    path = write_config(text)
    start = time.perf_counter()
    report = validate_file(path)
    assert time.perf_counter() - start < 1.0
    assert report.config is None and len(report.errors) == 1
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: the YAML expands to more than 10,000 values .*",
                        report.render())
    assert cli.main(["validate", str(path)]) == 2
    assert f"{path}:" in capsys.readouterr().out


def test_an_oversized_config_is_refused_by_its_size(write_config, capsys):
    from tutorforge import cli

    path = write_config("base_model: smollm2\nadapter: lora\n" + "# padding to 3 MB\n" * 170_000)
    size = path.stat().st_size
    start = time.perf_counter()
    report = validate_file(path)
    assert time.perf_counter() - start < 1.0
    assert report.config is None
    assert report.render() == (f"{path}: {size:,} bytes: too large for a config (at most 1,048,576 bytes, "
                               "1 MB; a config is a few kB); is this the right file?")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {size:,} bytes: too large")):
        load_config(path)
    assert cli.main(["validate", str(path)]) == 2
    assert f"{path}: {size:,} bytes: too large" in capsys.readouterr().out
    start = time.perf_counter()
    assert "too large for a config" in "\n".join(errors("# " + "x" * 3_000_000 + "\nbase_model: smollm2\n"))
    assert time.perf_counter() - start < 1.0


def test_too_many_values_are_refused_quickly(write_config):
    path = write_config("base_model: smollm2\nadapter: lora\nlora_target_modules:\n" + "  - q_proj\n" * 60_000)
    assert path.stat().st_size < 1 << 20  # under the size limit: the node limit refuses it
    start = time.perf_counter()
    report = validate_file(path)
    assert time.perf_counter() - start < 1.0
    assert report.config is None
    assert "the YAML expands to more than 10,000 values" in report.render()
    assert re.search(rf"^{re.escape(str(path))}:99\d\d: ", report.render())  # where the limit is passed


def test_a_config_with_a_few_thousand_values_is_fine():
    modules = "".join(f"  - m{i}\n" for i in range(5000))
    assert errors(f"base_model: smollm2\nadapter: lora\nlora_target_modules:\n{modules}") == []


def _output_dir_errors(value: str) -> list[str]:
    return [e for e in errors(f"base_model: smollm2\nadapter: lora\noutput_dir: {value}\n")
            if "output_dir" in e]


@pytest.mark.parametrize("value", ["/", "/etc", "/etc/tutorforge", "/usr/local/share/run", "/bin", "/boot",
                                   "/dev", "/proc/self", "/sys/kernel", "/lib", "/sbin", "/var", "/home",
                                   "/tmp", "/..", "/tmp/../etc"])
def test_output_dir_in_a_system_place_is_refused(value):
    [found] = _output_dir_errors(value)
    assert found.startswith(f"c.yml:3: output_dir: {value!r}: ")
    assert ("filesystem root" in found or "system directory" in found or "shared by every" in found), found
    assert "use a directory of the run's own, e.g. ./outputs/my-run" in found


def test_home_itself_is_refused_as_output_dir(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    for value in ("~/", str(home), ".", "./"):
        [found] = _output_dir_errors(value)
        assert found.startswith("c.yml:3: output_dir: ")
        assert f": {home}: your home directory itself; use a directory of the run's own" in found, found
    assert _output_dir_errors("~/runs/tutor") == [] and _output_dir_errors("./outputs") == []


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    from tutorforge import cli

    notes = tmp_path / "notes.txt"
    notes.write_text("not a directory")
    [found] = _output_dir_errors(str(notes))
    assert found.startswith("c.yml:3: output_dir: ")
    assert found.endswith(f": {notes} is a file, not a directory; give a directory (it is made when missing) "
                          "(where the run writes everything)")
    [found] = _output_dir_errors(str(notes / "run"))
    assert f": {notes} is a file, so no directory can be made inside it" in found
    assert _output_dir_errors(str(tmp_path / "run")) == [] and _output_dir_errors(str(tmp_path)) == []
    config = tmp_path / "c.yml"
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "input": "", "output": "a"}\n')
    config.write_text(f"base_model: smollm2\nadapter: lora\ndatasets:\n  - path: {data}\n"
                      f"output_dir: {notes}\n")
    assert cli.main(["data", "prepare", str(config)]) == 2  # refused before anything is read or written
    assert re.search(rf"{re.escape(str(config))}:5: output_dir: .*: {re.escape(str(notes))} is a file",
                     capsys.readouterr().err)
    assert notes.read_text() == "not a directory"


def test_validate_refuses_the_filesystem_root_as_output_dir(write_config, capsys):
    from tutorforge import cli

    path = write_config("base_model: smollm2\nadapter: lora\noutput_dir: /\n")
    assert cli.main(["validate", str(path)]) == 2
    out = capsys.readouterr().out
    assert f"{path}:3: output_dir: '/': /: the filesystem root" in out


def test_config_imports_its_reader_and_builder_and_neither_imports_config():
    assert {"tutorforge.config_yaml", "tutorforge.config_build"} <= tutorforge_imports("config")
    assert tutorforge_imports("config_yaml") == set()  # YAML only: no config key, no other module
    assert tutorforge_imports("config_build") == {"tutorforge.axolotl_keys", "tutorforge.rules"}
    assert "tutorforge.config" not in tutorforge_imports("rules") | tutorforge_imports("axolotl_keys")
