"""Axolotl-style YAML configuration, parsed once into typed, frozen objects.

    tutorforge validate recipe.yml

`load_config(path)` returns a `Config` or raises `ConfigError` listing every problem at once, each
with its YAML path, line, the bad value and the fix. `validate_file(path)` returns the report
without raising. Keys follow Axolotl's names so an Axolotl user's YAML works as it is; keys that
Axolotl knows and tutorforge does not implement are named (an error when they change training, a
warning when they only concern integrations, see `axolotl_keys.py`); keys that tutorforge accepts but
that change nothing here (`axolotl_keys.IGNORED_FIELDS`) warn when set; other keys are errors with a
"did you mean". tutorforge's own settings live under the `tutorforge:` section.

This module holds the dataclasses (a `datasets:` entry's, DatasetSpec, is config_datasets.py's), the
rules that involve several keys, and the entry points. The
YAML is read within size caps by config_yaml.py (a file over MAX_CONFIG_BYTES, or an alias bomb, is
refused before it is built) and turned node by node into the dataclasses by config_build.py.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tutorforge import axolotl_keys as ax
from tutorforge.config_build import build
from tutorforge.config_datasets import CHAT_TEMPLATES, DatasetSpec
from tutorforge.config_fold import attention_checks, fold
from tutorforge.config_yaml import (
    MAX_CONFIG_BYTES,
    CappedLoader,
    TooLarge,
    given_keys,
    read_capped,
    too_large_message,
    too_many_nodes_message,
    top_lines,
)
from tutorforge.errors import UserError
from tutorforge.hardware import PROFILES as HARDWARE_PROFILES
from tutorforge.rules import (
    Bool,
    BoolOr,
    Choice,
    ChoiceOrHub,
    Float,
    Int,
    IntList,
    OutputDir,
    Plugins,
    Str,
    StrList,
    StrMap,
    did_you_mean,
    key,
)
from tutorforge.sources import FORMATS as DATA_SUFFIXES


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit",
              "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                 "polynomial", "inverse_sqrt")
QUANT_TYPES = ("f16", "bf16", "q8_0", "q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q4_0")
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")
BNB_KWARGS = ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "llm_int8_has_fp16_weight",
              "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", "xformers")
# metric_for_best_model -> greater is better (eval_code.py measures code_runs)
BEST_METRICS = {"eval_loss": False, "code_runs": True}


@dataclass(frozen=True)
class ExportSettings:
    """tutorforge.export: GGUF export and quantisation."""

    outtype: str = key("f16", Choice(("f16", "bf16", "f32")), "precision of the unquantised GGUF")
    quantizations: tuple[str, ...] = key(("q4_k_m",), StrList(), f"quantised GGUFs to make: {', '.join(QUANT_TYPES)}")
    verify: bool = key(True, Bool(), "check every GGUF against the PyTorch model with llama.cpp")
    name: str | None = key(None, Str(), "file name stem of the GGUF (default: from base_model)")


@dataclass(frozen=True)
class OllamaSettings:
    """tutorforge.ollama: the Modelfile and deployment."""

    model_name: str | None = key(None, Str(), "name for `ollama create` (default: from output_dir)")
    quantization: str = key("q4_k_m", Choice(QUANT_TYPES), "which GGUF the Modelfile uses")
    temperature: float = key(0.0, Float(0, 2), "PARAMETER temperature in the Modelfile")
    repeat_penalty: float = key(1.1, Float(1, 2), "PARAMETER repeat_penalty (Ollama's default; 1 = off); "
                                "chat and compare decode with it too")
    repeat_last_n: int = key(64, Int(0), "PARAMETER repeat_last_n: how many recent tokens the penalty looks at")
    num_ctx: int | None = key(None, Int(16), "PARAMETER num_ctx (default: sequence_len)")
    license: str | None = key(None, Str(), "LICENSE text (default: the base model's, when known)")


@dataclass(frozen=True)
class CompareSettings:
    """tutorforge.compare: the A/B comparison of base vs tuned."""

    prompts: str | None = key(None, Str(), "JSONL of prompts: Alpaca rows or conversations (messages; the last "
                              "user turn is asked) (default: the held-out split)")
    max_new_tokens: int = key(256, Int(1), "longest answer generated")
    target_words: int | None = key(None, Int(1), "brevity target (default: p90 of training outputs)")
    max_prompts: int | None = key(None, Int(1), "compare at most this many prompts")


@dataclass(frozen=True)
class TutorforgeSettings:
    """tutorforge: settings with no Axolotl equivalent."""

    export: ExportSettings = section(ExportSettings, "GGUF export")
    ollama: OllamaSettings = section(OllamaSettings, "Ollama Modelfile and deployment")
    compare: CompareSettings = section(CompareSettings, "A/B comparison")
    skip_bad_rows: bool = key(False, Bool(), "keep going past unusable dataset rows (they go to rejected.jsonl)")
    auto_fit: bool = key(False, Bool(), "when the memory plan does not fit, train applies its fixes "
                         "(smaller micro batch, more accumulation, checkpointing, ...) and logs each")
    eval_prompts: int = key(8, Int(1), "held-out prompts answered at each evaluation for "
                            "metric_for_best_model: code_runs (the first N of heldout.jsonl)")
    hardware: str | None = key(None, Choice(tuple(HARDWARE_PROFILES)), "plan for this hardware profile "
                               "instead of the machine that runs (`tutorforge plan --gpu` lists them)")


@dataclass(frozen=True)
class Config:
    """A validated configuration. Field names are Axolotl's."""

    # model
    base_model: str = key(None, Str(), "hub id, local HF directory, .gguf file, or `smollm2` (bundled)",
                          required=True)
    base_model_config: str | None = key(None, Str(), "directory or hub id whose config.json the model is "
                                        "built from (default: base_model's)")
    tokenizer_config: str | None = key(None, Str(), "directory or hub id to load the tokenizer from "
                                       "(default: base_model's)")
    model_type: str | None = key(None, Str(), "transformers model class (AutoModelForCausalLM)")
    tokenizer_type: str | None = key(None, Str(), "transformers tokenizer class (AutoTokenizer)")
    trust_remote_code: bool = key(False, Bool(), "run the model's and tokenizer's own Python code "
                                  "(auto_map in config.json); needed by models transformers lacks")
    # adapter and quantisation
    adapter: str | None = key(None, Choice(("lora", "qlora")), "lora, or qlora (4-bit base); unset: full "
                              "fine-tuning (every weight, or those unfrozen_parameters names)")
    lora_model_dir: str | None = key(None, Str(), "a LoRA adapter directory to continue training from "
                                     "(its rank, alpha and target modules are used)")
    unfrozen_parameters: tuple[str, ...] = key((), StrList(), "full fine-tuning: regular expressions of the "
                                               "parameter names to train (re.search); the rest stay frozen "
                                               "(default: train every weight)")
    load_in_4bit: bool = key(False, Bool(), "load the base in 4-bit (QLoRA)")
    load_in_8bit: bool = key(False, Bool(), "load the base in 8-bit")
    bnb_config_kwargs: tuple[tuple[str, str], ...] = key((), StrMap(BNB_KWARGS, scalars=True), "bitsandbytes settings: "
                                                         "bnb_4bit_quant_type and bnb_4bit_use_double_quant "
                                                         "set the keys of those names; llm_int8_has_fp16_weight: "
                                                         "false and bnb_4bit_compute_dtype are what is done anyway")
    bnb_4bit_quant_type: str = key("nf4", Choice(("nf4", "fp4")), "4-bit data type")
    bnb_4bit_use_double_quant: bool = key(True, Bool(), "quantise the quantisation constants too")
    lora_r: int = key(8, Int(1, 4096), "LoRA rank")
    lora_alpha: float = key(16, Float(0, lo_open=True), "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = key(0.0, Float(0, 1, hi_open=True), "dropout on the LoRA input")
    lora_target_linear: bool | None = key(None, Bool(), "LoRA on every linear layer except lm_head")
    lora_target_modules: tuple[str, ...] = key((), StrList(), "module names to adapt")
    lora_modules_to_save: tuple[str, ...] = key((), StrList(), "modules trained in full (embed_tokens, lm_head)")
    lora_fan_in_fan_out: bool = key(False, Bool(), "for Conv1D layers (GPT-2)")
    peft_layers_to_transform: tuple[int, ...] = key((), IntList(0), "LoRA only in these layers (0 = first; "
                                                    "default all); backward stops at the lowest one")
    # data
    datasets: tuple[DatasetSpec, ...] = field(default=(), metadata={"list_of": DatasetSpec,
                                                "doc": "training data (Alpaca rows)"})
    val_set_size: float = key(0.0, Float(0), "held-out fraction (< 1) or row count (>= 1)")
    dataset_prepared_path: str | None = key(None, Str(), "cache of tokenised data")
    sequence_len: int = key(2048, Int(16, 1 << 20), "longest sample in tokens")
    sample_packing: bool = key(False, Bool(), "pack short samples into one sequence")
    eval_sample_packing: bool | None = key(None, Bool(), "pack the evaluation set too")
    pad_to_sequence_len: bool = key(False, Bool(), "pad every training batch to sequence_len (static shapes)")
    train_on_inputs: bool = key(False, Bool(), "also train on prompt tokens")
    excess_length_strategy: str = key("drop", Choice(("drop", "truncate", "raise")),
                                      "a row longer than sequence_len: drop it (counted, written to "
                                      "rejected.jsonl), truncate it to sequence_len, or raise (stop)")
    min_sample_len: int = key(2, Int(1), "a row of fewer tokens than this is dropped (counted, written to "
                              "rejected.jsonl)")
    chat_template: str | None = key(None, Choice(CHAT_TEMPLATES, tuple(ax.CHAT_TEMPLATES.items())),
                                    "prompt format (default: the tokenizer's chat template, else alpaca)")
    chat_template_jinja: str | None = key(None, Str(), "a Jinja chat template (chat_template: jinja, or "
                                          "unset): used instead of the tokenizer's")
    default_system_message: str | None = key(None, Str(), "system prompt for every sample")
    special_tokens: tuple[tuple[str, str], ...] = key((), StrMap(SPECIAL_TOKENS), "bos/eos/pad/unk token "
                                                      "overrides; each must be in the vocabulary")
    # optimisation
    micro_batch_size: int = key(1, Int(1), "samples per forward pass")
    gradient_accumulation_steps: int = key(1, Int(1), "micro batches per optimizer step")
    batch_size: int | None = key(None, Int(1), "samples per optimizer step; when gradient_accumulation_steps "
                                 "is unset, it becomes batch_size / micro_batch_size (as in Axolotl)")
    num_epochs: float = key(1.0, Float(0, lo_open=True), "passes over the data")
    max_steps: int | None = key(None, Int(1), "stop after this many optimizer steps")
    optimizer: str = key("adamw_torch", Choice((*OPTIMIZERS, *ax.OPTIMIZER_SPELLINGS), tuple(ax.OPTIMIZERS.items()),
                                               ax.OPTIMIZER_OTHER), "optimizer")
    learning_rate: float = key(2e-4, Float(0, 1, lo_open=True), "peak learning rate")
    lr_scheduler: str = key("cosine", Choice(LR_SCHEDULERS, tuple(ax.LR_SCHEDULERS.items())), "schedule")
    warmup_steps: int | None = key(None, Float(0), "warmup in optimizer steps; below 1, a fraction of all steps "
                                   "(as transformers reads it: the same as warmup_ratio)")
    warmup_ratio: float | None = key(None, Float(0, 1, hi_open=True), "warmup as a fraction of all steps")
    weight_decay: float = key(0.0, Float(0), "AdamW weight decay")
    max_grad_norm: float = key(1.0, Float(0), "gradient clipping (0 = off)")
    adam_beta1: float = key(0.9, Float(0, 1, hi_open=True), "AdamW beta1")
    adam_beta2: float = key(0.999, Float(0, 1, hi_open=True), "AdamW beta2")
    adam_epsilon: float = key(1e-8, Float(0, lo_open=True), "AdamW epsilon")
    # precision and speed
    bf16: bool | str = key("auto", BoolOr(("auto",)), "bfloat16 compute (auto: where the hardware has it)")
    fp16: bool | None = key(None, Bool(), "float16 compute with loss scaling")
    tf32: bool = key(False, Bool(), "TF32 matmuls on Ampere+ GPUs")
    gradient_checkpointing: bool = key(False, BoolOr(("offload", "offload_disk")), "recompute activations to "
                                       "save memory (offload/offload_disk: plain recomputation, nothing offloaded)")
    attn_implementation: str | None = key(None, ChoiceOrHub(Choice(ATTENTION, tuple(ax.ATTENTION.items()))),
                                          "attention kernel (default: what the model supports, SDPA else eager)")
    flash_attention: bool = key(False, Bool(), "older spelling of attn_implementation: flash_attention_2")
    sdp_attention: bool = key(False, Bool(), "older spelling of attn_implementation: sdpa")
    flex_attention: bool = key(False, Bool(), "older spelling of attn_implementation: flex_attention")
    eager_attention: bool = key(False, Bool(), "older spelling of attn_implementation: eager")
    xformers_attention: bool = key(False, Bool(), "xformers' memory-efficient attention: PyTorch SDPA "
                                   "(its memory-efficient kernel is the same algorithm)")
    # logging, evaluation, checkpoints
    output_dir: str = key("./outputs", OutputDir(), "where the run writes everything")
    logging_steps: int = key(1, Float(0, lo_open=True), "log every N optimizer steps (below 1, a fraction of "
                             "the run in transformers: tutorforge then logs every step)")
    evals_per_epoch: int | None = key(None, Int(0), "evaluations per epoch (0: as unset)")
    eval_steps: float | None = key(None, Float(0, lo_open=True), "evaluate every N steps (< 1: fraction)")
    eval_max_new_tokens: int = key(128, Int(0), "answer length of the code_runs evaluation (metric_for_best_model)")
    saves_per_epoch: int | None = key(None, Int(0), "checkpoints per epoch (0: as unset)")
    save_steps: float | None = key(None, Float(0, lo_open=True), "checkpoint every N steps (< 1: fraction)")
    early_stopping_patience: int | None = key(None, Int(1), "stop after N evaluations without improvement "
                                              "(of metric_for_best_model); the output is then the best one")
    load_best_model_at_end: bool = key(False, Bool(), "the run's output is the best evaluated checkpoint "
                                       "(by metric_for_best_model), not the last step")
    metric_for_best_model: str = key("eval_loss", Choice(tuple(BEST_METRICS)), "what decides the best "
                                     "checkpoint: the held-out loss, or code_runs: the share of "
                                     "tutorforge.eval_prompts held-out prompts whose answer's code runs")
    greater_is_better: bool | None = key(None, Bool(), "must agree with metric_for_best_model (eval_loss: "
                                         "false, code_runs: true); implied by it")
    resume_from_checkpoint: str | None = key(None, Str(), "checkpoint directory to resume from")
    auto_resume_from_checkpoints: bool = key(True, Bool(), "resume from the newest checkpoint in output_dir")
    seed: int = key(42, Int(0, 2**32 - 1), "random seed")
    plugins: tuple[str, ...] = key((), Plugins(), "Axolotl integrations: speed, memory and logging ones "
                                   "(cut-cross-entropy, Liger, kernels, SwanLab, lm-eval) are accepted and "
                                   "ignored with a warning; the others are refused")
    strict: bool = key(False, Bool(), "Axolotl's strict mode (accepted, ignored)")
    # tutorforge's own section
    tutorforge: TutorforgeSettings = section(TutorforgeSettings, "tutorforge's own settings")
    # written by validation, not by the YAML: what the config asked for that tutorforge ignores
    ignored_memory_savings: tuple[str, ...] = field(default=(), metadata={
        "rule": StrList(), "internal": True,
        "doc": "Axolotl keys (and values) of this config that save memory in Axolotl and are ignored here"})


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    path: str
    line: int | None
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        label = f"{self.path}: " if self.path else ""
        tag = "" if self.severity == "error" else "warning: "
        return f"{where}: {tag}{label}{self.message}"


@dataclass
class Report:
    source: str
    problems: list[Problem] = field(default_factory=list)
    config: Config | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    memory_savings: list[str] = field(default_factory=list)

    def add(self, severity: str, path: str, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.problems.append(Problem(severity, path, line, message))

    def ignored_memory_saving(self, path: str) -> None:
        self.memory_savings.append(path)

    def render(self) -> str:
        ordered = sorted(self.problems, key=lambda p: (p.line or 0))
        return "\n".join(p.render(self.source) for p in ordered)


class ConfigError(UserError):
    def __init__(self, report: Report):
        self.report = report
        n = len(report.errors)
        super().__init__(f"{report.render()}\n{report.source}: {n} problem{'s' * (n != 1)}; "
                         "fix them and run `tutorforge validate` again")


def _cross_checks(cfg: Config, report: Report, lines: dict[str, yaml.Node]) -> None:
    """Rules that involve several keys. Each names the keys and how to make them agree."""

    def err(name: str, message: str, severity: str = "error") -> None:
        report.add(severity, name, lines.get(name.split(" ")[0]), message)

    if cfg.adapter is None and (cfg.load_in_4bit or cfg.load_in_8bit):
        err("adapter", "not set (a full fine-tune) with a quantised base: quantised weights cannot be "
            "trained; set adapter: qlora (4-bit) or lora, or load_in_4bit/load_in_8bit: false")
    if cfg.adapter is not None and cfg.unfrozen_parameters:
        err("unfrozen_parameters", f"with adapter: {cfg.adapter} is not supported (it chooses the weights of a "
            "full fine-tune; LoRA trains its adapter alone): remove adapter for a full fine-tune, or remove "
            "unfrozen_parameters")
    for pattern in cfg.unfrozen_parameters:
        try:
            re.compile(pattern)
        except re.error as exc:
            err("unfrozen_parameters", f"{pattern!r}: not a regular expression ({exc})")
            continue
        if re.search(r"\$\[\d*:\d*\]$", pattern):
            err("unfrozen_parameters", f"{pattern!r}: training a slice of a weight (Axolotl's `$[start:end]`) "
                "is not supported; name whole parameters")
    if cfg.adapter is None and cfg.lora_model_dir:
        err("lora_model_dir", "continues a LoRA adapter: set adapter: lora (or qlora)")
    attention_checks(cfg, err)
    if cfg.chat_template == "jinja" and not cfg.chat_template_jinja:
        err("chat_template", "jinja needs the template's text in chat_template_jinja")
    if cfg.chat_template_jinja and cfg.chat_template not in (None, "jinja"):
        err("chat_template_jinja", f"set, but chat_template is {cfg.chat_template}; keep one (chat_template: "
            "jinja uses chat_template_jinja)")
    if cfg.adapter == "qlora" and not cfg.load_in_4bit:
        err("load_in_4bit", "adapter: qlora needs load_in_4bit: true (or use adapter: lora)")
    if cfg.load_in_4bit and cfg.load_in_8bit:
        err("load_in_8bit", "load_in_4bit and load_in_8bit are both true; keep one")
    if cfg.bf16 is True and cfg.fp16:
        err("fp16", "bf16 and fp16 are both true; keep one")
    if cfg.warmup_steps is not None and cfg.warmup_ratio is not None:
        err("warmup_ratio", "warmup_steps and warmup_ratio are both set; keep one")
    if cfg.evals_per_epoch is not None and cfg.eval_steps is not None:
        err("eval_steps", "evals_per_epoch and eval_steps are both set; keep one")
    if cfg.saves_per_epoch is not None and cfg.save_steps is not None:
        err("save_steps", "saves_per_epoch and save_steps are both set; keep one")
    if cfg.val_set_size >= 1 and not float(cfg.val_set_size).is_integer():
        err("val_set_size", f"{cfg.val_set_size:g}: a fraction must be < 1, a row count whole")
    for name in ("early_stopping_patience", "load_best_model_at_end"):
        if getattr(cfg, name) and cfg.val_set_size == 0:
            err(name, "needs evaluation: set val_set_size (e.g. 0.05)")
    higher = BEST_METRICS[cfg.metric_for_best_model]
    if cfg.greater_is_better is not None and cfg.greater_is_better != higher:
        err("greater_is_better", f"{str(cfg.greater_is_better).lower()} contradicts metric_for_best_model: "
            f"{cfg.metric_for_best_model} ({'higher' if higher else 'lower'} is better), so the worst "
            "checkpoint would be kept; remove greater_is_better")
    if cfg.metric_for_best_model == "code_runs" and not cfg.eval_max_new_tokens:
        err("eval_max_new_tokens", "0: metric_for_best_model: code_runs needs answers; set it (e.g. 256)")
    if cfg.metric_for_best_model != "eval_loss" and not (cfg.load_best_model_at_end or cfg.early_stopping_patience):
        err("metric_for_best_model", f"{cfg.metric_for_best_model} is measured but chooses nothing: set "
            "load_best_model_at_end: true (or early_stopping_patience)", "warning")
    if (cfg.evals_per_epoch or cfg.eval_steps) and cfg.val_set_size == 0:
        err("val_set_size", "evaluation is scheduled but val_set_size is 0: nothing to evaluate on",
            "warning")
    for quant in cfg.tutorforge.export.quantizations:
        if quant not in QUANT_TYPES:
            err("tutorforge", f"export.quantizations: {quant!r}: expected some of {', '.join(QUANT_TYPES)}"
                f"{did_you_mean(quant, QUANT_TYPES)}")
    for i, dataset in enumerate(cfg.datasets):
        path = Path(dataset.path).expanduser()
        local = path.suffix.lower() in DATA_SUFFIXES or dataset.path.startswith((".", "/", "~"))
        if local and not path.exists():
            report.add("warning", f"datasets[{i}].path", lines.get("datasets"),
                       f"{dataset.path}: no such file (paths are relative to the current directory, "
                       f"{Path.cwd()}); training will stop here unless it exists")
    if not cfg.datasets:
        err("datasets", "no datasets: validation passes, but training needs at least one "
            "(- path: data/tutor.jsonl, type: alpaca)", "warning")


def parse(text: str, source: str) -> Report:
    """Validate YAML text; the report holds the Config when there is no error."""
    report = Report(source)
    if len(text) > MAX_CONFIG_BYTES // 4 and (size := len(text.encode("utf-8", "replace"))) > MAX_CONFIG_BYTES:
        report.add("error", "", None, too_large_message(size))
        return report
    try:
        loader = CappedLoader(text)
    except yaml.YAMLError as exc:  # a control character: PyYAML refuses the text at once
        report.add("error", "", None, f"not readable as YAML: {exc}")
        return report
    try:
        root = loader.get_single_node()
        if root is None:
            report.add("error", "", None, "the file is empty; start from a recipe in recipes/")
            return report
        config = build(Config, loader, root, "", report, top=True)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        report.problems.append(Problem("error", "", None, f"YAML{line}: {exc.problem or exc.context}; "
                                       "check indentation, colons and quotes"))
        return report
    except TooLarge as exc:
        report.problems.append(Problem("error", "", exc.mark.line + 1, too_many_nodes_message()))
        return report
    except RecursionError:
        report.add("error", "", None, "nested too deeply to be a config; check the brackets")
        return report
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        report.add("error", "", None, f"not readable as YAML: {exc}")
        return report
    finally:
        loader.dispose()
    if config is not None:
        lines = top_lines(root)
        _cross_checks(config, report, lines)
        config = fold(config, report, lines, given_keys(root))
    if not report.errors:
        report.config = config
    return report


def validate_file(path: str | Path) -> Report:
    path = Path(path)
    try:
        raw = read_capped(path)
        if len(raw) > MAX_CONFIG_BYTES:
            report = Report(str(path))
            report.add("error", "", None, too_large_message(max(path.stat().st_size, len(raw))))
            return report
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give the path of a YAML config "
                        "(recipes/ has examples)") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report = Report(str(path))
        report.problems.append(Problem("error", "", None, f"not UTF-8 text (byte {exc.start}); "
                                       "save the file as UTF-8"))
        return report
    return parse(text, str(path))


def load_config(path: str | Path) -> Config:
    """The validated Config of a YAML file; ConfigError (listing every problem) otherwise."""
    report = validate_file(path)
    if report.errors or report.config is None:
        raise ConfigError(report)
    return report.config


def reference() -> list[tuple[str, str, str, str]]:
    """(key, accepted values, default, meaning) for every supported key, for docs and --help."""
    from tutorforge.rules import describe

    rows = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            name = f"{prefix}{f.name}"
            if "section" in f.metadata:
                walk(f.metadata["section"], name + ".")
            elif "list_of" in f.metadata:
                walk(f.metadata["list_of"], name + "[].")
            else:
                default = "required" if f.metadata.get("required") else repr(f.default)
                rows.append((name, describe(f.metadata["rule"]), default, f.metadata["doc"]))

    walk(Config, "")
    return rows
