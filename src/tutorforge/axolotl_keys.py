"""What tutorforge does with each key of Axolotl's config schema, and with Axolotl's values it
does not offer. Data only.

`axolotl_schema.tsv` (package data) holds every key of Axolotl's schema at one pinned commit, one a
line, with its status: *implemented* (a Config or DatasetSpec field with Axolotl's meaning),
*ignored* (accepted with a warning, because it changes only speed, memory or logging here, or
nothing at all: `ignored:speed`, `ignored:memory`, `ignored:logging`, `ignored:moot`) or *refused*
(it would change what is trained, and tutorforge does not do it: an error naming the reason and what
to do). `scripts/axolotl_schema.py` lists the schema's keys and checks the table against it;
tests/test_axolotl_schema.py checks that the code handles each key as the table says.

    from tutorforge.axolotl_keys import schema
    schema()["liger_rms_norm"].status    # 'ignored:speed'

Empty values (null, "", false, [], {}) of ignored and refused keys pass silently: Axolotl's example
configs list many keys with no value. The prefix tables catch keys of a known family that the
pinned schema does not list (a newer Axolotl's `dpo_*`, `wandb_*`, ...).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

STATUSES = ("implemented", "ignored:speed", "ignored:memory", "ignored:logging", "ignored:moot", "refused")


@dataclass(frozen=True)
class AxolotlKey:
    """One key of Axolotl's schema: `name` (`datasets[].KEY` inside a dataset entry), `status`
    (one of STATUSES) and `reason` (shown to users; for implemented keys, where tutorforge differs)."""

    name: str
    status: str
    reason: str

    @property
    def ignored(self) -> bool:
        return self.status.startswith("ignored:")

    @property
    def saves_memory(self) -> bool:
        """Axolotl uses it to save memory: ignoring it, tutorforge's memory plan does not count on that."""
        return self.status == "ignored:memory"


SCHEMA_FILE = "axolotl_schema.tsv"


@functools.cache
def schema() -> dict[str, AxolotlKey]:
    """Every key of the pinned Axolotl schema, in the table's order."""
    text = resources.files("tutorforge").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    header, *rows = rows
    assert header == ["key", "status", "reason"], f"{SCHEMA_FILE}: header {header}"
    keys = {}
    for row in rows:
        name, status, reason = (row + [""] * 3)[:3]
        assert status in STATUSES, f"{SCHEMA_FILE}: {name}: status {status!r}"
        keys[name] = AxolotlKey(name, status, reason)
    return keys


def schema_commit() -> str:
    """The Axolotl commit the table lists the keys of (from its header)."""
    text = resources.files("tutorforge").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return next(word for line in text.splitlines() if line.startswith("#") for word in line.split()
                if len(word) == 40 and all(c in "0123456789abcdef" for c in word))


def entry(where: str) -> AxolotlKey | None:
    """What tutorforge does with the key at a config path (`lora_r`, `datasets[2].field_messages`):
    the table's entry, else an older Axolotl's key, else a known family's (by prefix), else None."""
    import re

    name = re.sub(r"\[\d+\]", "[]", where)
    if name in schema():
        return schema()[name]
    found = OLDER_KEYS.get(name) or next((v for p, v in PREFIXES.items() if name.startswith(p)), None)
    return AxolotlKey(name, *found) if found else None


@functools.cache
def ignored_fields() -> dict[str, str]:
    """Axolotl keys that Config accepts and types but that change nothing here, and why
    (tests/test_config_keys.py checks that no stage reads them)."""
    return {name: key.reason for name, key in schema().items() if key.ignored}

# Keys of older Axolotl versions that the pinned schema no longer lists: real configs still carry
# them (source: Axolotl's docs/config.qmd and examples/ before the keys were removed).
OLDER_KEYS: dict[str, tuple[str, str]] = {
    "gptq_groupsize": ("refused", "GPTQ base models are not supported; use a 16-bit base with load_in_4bit"),
    "gptq_model_v1": ("refused", "GPTQ base models are not supported; use a 16-bit base with load_in_4bit"),
    "gptq_disable_exllama": ("refused", "GPTQ base models are not supported; use a 16-bit base with load_in_4bit"),
    "relora_steps": ("refused", "ReLoRA is not supported"),
    "torch_dtype": ("refused", "choosing the weights' dtype is not supported; tutorforge picks it from bf16/fp16 "
                    "and the hardware"),
    "sample_packing_seq_len_multiplier": ("ignored:moot", "packing fills sequence_len from the data itself"),
    "debug": ("ignored:moot", "use --debug on the command line"),
    "eval_table_max_new_tokens": ("ignored:logging", "prediction tables are for W&B; use `tutorforge compare`"),
    "rl_adapter_ref_model": ("refused", "preference training (DPO/KTO/ORPO/GRPO) is not supported"),
    "gpu": ("ignored:moot", "devices are chosen by tutorforge and `accelerate launch`"),
    "hub_private_repo": ("ignored:logging", "pushing to the Hugging Face Hub is not supported"),
    "flash_attn_fuse_qkv": ("ignored:speed", "fused flash-attn kernels are not used"),
    "unsloth_lora_mlp": ("ignored:speed", "Unsloth's kernels are not used; the model's own PyTorch modules run"),
    "unsloth_lora_qkv": ("ignored:speed", "Unsloth's kernels are not used; the model's own PyTorch modules run"),
    "unsloth_lora_o": ("ignored:speed", "Unsloth's kernels are not used; the model's own PyTorch modules run"),
    "unsloth_cross_entropy_loss": ("ignored:moot", "accepted: tutorforge computes the loss in chunks already"),
    "unsloth_rms_norm": ("ignored:speed", "Unsloth's kernels are not used; the model's own PyTorch modules run"),
    "unsloth_rope": ("ignored:speed", "Unsloth's kernels are not used; the model's own PyTorch modules run"),
}

# Refused keys whose given value is what tutorforge does anyway (Axolotl's default): no error then.
REFUSED_DONE_VALUES: dict[str, tuple] = {
    "shuffle_merged_datasets": (True,),  # tutorforge always shuffles the rows of all datasets together
    "tokenizer_use_fast": (True,),       # AutoTokenizer loads the fast tokenizer
}

# Prefixes of families of keys that the pinned schema does not list (a newer Axolotl's): status, reason.
PREFIXES: dict[str, tuple[str, str]] = {
    "dpo_": ("refused", "DPO is not supported"),
    "kto_": ("refused", "KTO is not supported"),
    "grpo_": ("refused", "GRPO is not supported"),
    "relora_": ("refused", "ReLoRA is not supported"),
    "lisa_": ("refused", "LISA is not supported"),
    "fsdp_": ("refused", "FSDP through Axolotl's keys is not supported; use `accelerate launch` with an FSDP config"),
    "liger_": ("ignored:speed", "Liger's fused kernels are not used; the model's own PyTorch modules run"),
    "unsloth_": ("ignored:speed", "Unsloth's kernels are not used; the model's own PyTorch modules run"),
    "wandb_": ("ignored:logging", "Weights & Biases logging is not built in; metrics go to metrics.jsonl and loss.png"),
    "mlflow_": ("ignored:logging", "MLflow logging is not built in; metrics go to metrics.jsonl and loss.png"),
    "hf_mlflow_": ("ignored:logging", "MLflow logging is not built in"),
    "comet_": ("ignored:logging", "Comet logging is not built in; metrics go to metrics.jsonl and loss.png"),
    "swanlab_": ("ignored:logging", "SwanLab logging is not built in"),
    "trackio_": ("ignored:logging", "Trackio logging is not built in; metrics go to metrics.jsonl and loss.png"),
}


def ignored_text(reason: str) -> str:
    """How an ignored key or plugin is told: its reason as it is when it says tutorforge does that
    already ("accepted: ..."), else "ignored (reason)"."""
    return reason if reason.startswith("accepted:") else f"ignored ({reason})"


# Values of ignored fields that ask for what tutorforge does anyway: no warning.
IGNORED_VALUES_DONE: dict[str, tuple] = {
    "model_type": ("AutoModelForCausalLM",),
    "tokenizer_type": ("AutoTokenizer",),
    "chunked_cross_entropy": (True,),  # tutorforge.loss computes the loss in chunks
    "cut_cross_entropy": (True,),
    "liger_fused_linear_cross_entropy": (True,),
    "unsloth_cross_entropy_loss": (True,),
}

# Axolotl's plugins (`plugins:` entries, src/axolotl/integrations/*), by the integration's package
# name: those that change only speed, memory or logging are accepted and ignored (status, reason);
# the others change training and are refused.
PLUGINS: dict[str, tuple[str, str]] = {
    "cut_cross_entropy": ("ignored:moot", "accepted: tutorforge computes the loss in chunks already"),
    "liger": ("ignored:speed", "Liger's fused kernels are not used; the model's own PyTorch modules run "
              "(its fused linear cross-entropy is not needed: tutorforge computes the loss in chunks already)"),
    "kernels": ("ignored:speed", "hub kernels are not downloaded; the model's own PyTorch modules run"),
    "swanlab": ("ignored:logging", "SwanLab logging is not built in; metrics go to metrics.jsonl and loss.png"),
    "lm_eval": ("ignored:logging", "lm-eval benchmarks after training are not run; `tutorforge compare` "
                "compares base and tuned"),
    "densemixer": ("refused", "DenseMixer changes how MoE routers are trained"),
    "diffusion": ("refused", "diffusion language-model training is not supported"),
    "expert_parallel": ("refused", "expert parallelism is not supported; use `accelerate launch` (DDP/FSDP)"),
    "grokfast": ("refused", "Grokfast changes the gradients"),
    "hatchery": ("refused", "the hatchery integration is not supported"),
    "kd": ("refused", "knowledge distillation is not supported"),
    "llm_compressor": ("refused", "LLM Compressor (sparsity/quantisation-aware training) is not supported"),
    "mora": ("refused", "MoRA adapters are not supported; use adapter: lora"),
    "nemo_gym": ("refused", "NeMo Gym (RL environments) is not supported"),
    "spectrum": ("refused", "Spectrum's choice of layers is not supported; list them in unfrozen_parameters"),
}
PLUGIN_OTHER = "only Axolotl's own integrations are known; a third-party plugin's code is not run"

# Axolotl's `ds_type` file formats that tutorforge does not read (it reads json, jsonl, csv, parquet,
# arrow: sources.py).
DS_TYPES: dict[str, str] = {
    "text": "plain-text completion data is not supported; tutorforge trains on Alpaca rows",
}

# Axolotl dataset types other than alpaca, and what to do instead.
DATASET_TYPES: dict[str, str] = {
    "oasst": "convert the rows to {instruction, input, output}",
    "pretrain": "pretraining data is not supported",
    "context_qa": "convert the rows to {instruction, input, output}",
}

# The older sharegpt key `conversation` (a FastChat conversation template, fastchat/conversation.py
# names) -> the chat_template that renders the same turns.
CONVERSATIONS: dict[str, str] = {
    "chatml": "chatml",
    "llama-3": "llama3",
    "llama3": "llama3",
}
CONVERSATION_OTHER = ("FastChat's other conversation templates are not offered; set chat_template (tokenizer_default, "
                      "chatml, llama3, or jinja with chat_template_jinja) and remove conversation")

# Axolotl optimizers that tutorforge does not offer.
OPTIMIZERS: dict[str, str] = {
    "lion_8bit": "Lion is not offered",
    "paged_lion_8bit": "Lion is not offered",
    "paged_lion_32bit": "Lion is not offered",
    "ademamix": "AdEMAMix is not offered",
    "ademamix_8bit": "AdEMAMix is not offered",
    "paged_ademamix_8bit": "AdEMAMix is not offered",
    "galore_adamw": "GaLore is not offered",
    "galore_adamw_8bit": "GaLore is not offered",
    "optimi_adamw": "torch-optimi is not offered",
    "ao_adamw_4bit": "torchao optimizers are not offered",
    "ao_adamw_8bit": "torchao optimizers are not offered",
    "ao_adamw_fp8": "torchao optimizers are not offered",
    "schedule_free_adamw": "schedule-free AdamW is not offered",
    "muon": "Muon is not offered",
    "came_pytorch": "CAME is not offered",
    "adopt_adamw": "ADOPT is not offered",
    "adamw_anyprecision": "AnyPrecision AdamW is not offered",
    "adamw_apex_fused": "Apex is not offered",
    "adamw_torch_xla": "XLA is not offered",
    "adagrad": "Adagrad is not offered",
    "rmsprop": "RMSprop is not offered",
    "dion": "Dion is not offered",
    # transformers' other OptimizerNames (training_args.py), which Axolotl accepts too
    "adamw_torch_4bit": "torchao's 4-bit AdamW is not offered; adamw_bnb_8bit is the smallest AdamW offered",
    "adamw_torch_npu_fused": "NPU optimizers are not offered",
    "lion_32bit": "Lion is not offered",
    "paged_ademamix_32bit": "AdEMAMix is not offered",
    "rmsprop_bnb": "RMSprop is not offered",
    "rmsprop_bnb_8bit": "RMSprop is not offered",
    "rmsprop_bnb_32bit": "RMSprop is not offered",
    "galore_adafactor": "GaLore is not offered",
    "galore_adamw_layerwise": "GaLore is not offered",
    "galore_adamw_8bit_layerwise": "GaLore is not offered",
    "galore_adafactor_layerwise": "GaLore is not offered",
    "lomo": "LOMO is not offered",
    "adalomo": "AdaLOMO is not offered",
    "grokadamw": "GrokAdamW is not offered",
    "schedule_free_radam": "schedule-free optimizers are not offered",
    "schedule_free_sgd": "schedule-free optimizers are not offered",
    "apollo_adamw": "APOLLO is not offered",
    "apollo_adamw_layerwise": "APOLLO is not offered",
    "stable_adamw": "StableAdamW is not offered",
    # Axolotl's CustomSupportedOptimizers (utils/schemas/enums.py) not listed above
    "sinkgd": "SinkGD is not offered",
    "flash_adamw": "flash-optim optimizers are not offered",
    "flash_adam": "flash-optim optimizers are not offered",
    "flash_sgd": "flash-optim optimizers are not offered",
    "flash_sgdw": "flash-optim optimizers are not offered",
    "flash_lion": "flash-optim optimizers are not offered",
    "q_galore_adamw8bit": "Q-GaLore is not offered",
}

LR_SCHEDULERS: dict[str, str] = {
    "one_cycle": "one-cycle schedules are not offered",
    "rex": "the REX schedule is not offered",
    "log_sweep": "LR sweeps are not offered",
    "warmup_stable_decay": "warmup-stable-decay is not offered",
}

# Axolotl chat_template names that tutorforge does not carry: the model's own template is used.
CHAT_TEMPLATES: dict[str, str] = {  # Axolotl's ChatTemplate enum (utils/schemas/enums.py) at the pinned commit
    name: "tutorforge carries only tokenizer_default, alpaca, chatml and llama3; "
          "tokenizer_default uses the model's own template"
    for name in ("mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "gemma", "cohere",
                 "llama3_2_vision", "llama4", "phi_3", "phi_35", "deepseek_v2", "deepseek_v3", "jamba",
                 "qwen_25", "qwen3", "qwen3_5", "falcon_h1", "nemotron_h", "exaone", "exaone4",
                 "metharme", "pixtral", "llava", "qwen2_vl", "gemma3", "gemma3n", "gemma4", "gemma4_unified",
                 "command_a", "command_a_tool_use", "command_a_rag", "aya")
}

# Axolotl's optimizer values that tutorforge runs with another implementation of the same method.
OPTIMIZER_SPELLINGS: dict[str, tuple[str, str]] = {
    "adamw_torch_8bit": ("adamw_bnb_8bit", "torchao's 8-bit AdamW: bitsandbytes' 8-bit AdamW is used "
                         "(the same 8-bit block-wise moments)"),
    "adamw_hf": ("adamw_torch", "transformers' own AdamW is gone from transformers; torch's AdamW is used"),
}
OPTIMIZER_OTHER = "tutorforge offers AdamW (torch, fused, bitsandbytes 8-bit and paged), Adafactor and SGD"
DATASET_TYPE_OTHER = ("tutorforge reads Alpaca rows (type: alpaca and Axolotl's other Alpaca spellings), "
                      "conversations (type: chat_template or sharegpt), completion and input_output; convert "
                      "the rows, or use Axolotl for this prompt strategy")

# Axolotl's attn_implementation values that tutorforge does not offer.
ATTENTION: dict[str, str] = {
    "sage": "SageAttention (quantised attention) is not offered; use sdpa or flash_attention_2",
    "fp8": "FP8 attention is not offered; use sdpa or flash_attention_2",
}
