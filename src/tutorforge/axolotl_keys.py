"""Axolotl configuration keys that tutorforge knows of but does not implement.

Data only. `config_build.py` consults these tables for every top-level key it does not support:
- TRAINING_KEYS change what training does: setting one is an error (tutorforge would otherwise
  train something other than what the config asks for).
- INTEGRATION_KEYS only concern logging, hubs or performance knobs: setting one is a warning and
  the key is ignored.
- IGNORED_FIELDS are keys tutorforge accepts and types (real configs set them) but that change
  nothing here: a value other than the default is a warning naming the reason.
Empty values (null, "", false, [], {}) are accepted silently for both: Axolotl's example configs
list many keys with no value. Source of the key names: Axolotl's config reference
(docs/config-reference.qmd) and its examples/.
"""
from __future__ import annotations

TRAINING_KEYS: dict[str, str] = {
    "deepspeed": "DeepSpeed is not supported; on several GPUs use `accelerate launch` (DDP/FSDP)",
    "fsdp": "FSDP through Axolotl's keys is not supported; use `accelerate launch` with an FSDP config",
    "fsdp_config": "FSDP through Axolotl's keys is not supported; use `accelerate launch` with an FSDP config",
    "fsdp_version": "FSDP through Axolotl's keys is not supported",
    "rl": "preference training (DPO/KTO/ORPO/GRPO) is not supported; tutorforge does supervised fine-tuning",
    "rl_beta": "preference training is not supported",
    "trl": "preference training is not supported",
    "orpo_alpha": "ORPO is not supported",
    "simpo_gamma": "SimPO is not supported",
    "cpo_alpha": "CPO is not supported",
    "reward_model": "reward-model training is not supported",
    "process_reward_model": "reward-model training is not supported",
    "gptq": "GPTQ base models are not supported; use a 16-bit base with load_in_4bit",
    "lora_model_dir": "continuing from an existing adapter is not supported yet",
    "peft_use_dora": "DoRA is not supported",
    "peft_use_rslora": "rsLoRA is not supported",
    "peft_init_lora_weights": "custom LoRA initialisation is not supported",
    "loraplus_lr_ratio": "LoRA+ is not supported",
    "loraplus_lr_embedding": "LoRA+ is not supported",
    "relora_steps": "ReLoRA is not supported",
    "lisa_n_layers": "LISA is not supported",
    "unfrozen_parameters": "full fine-tuning of chosen parameters is not supported; use LoRA",
    "neftune_noise_alpha": "NEFTune is not supported",
    "noisy_embedding_alpha": "NEFTune is not supported",
    "tokens": "adding tokens to the vocabulary is not supported",
    "added_tokens_overrides": "changing the vocabulary is not supported",
    "resize_token_embeddings_to_32x": "resizing the embeddings is not supported",
    "shrink_embeddings": "resizing the embeddings is not supported",
    "rope_scaling": "overriding the model's RoPE scaling is not supported",
    "overrides_of_model_config": "overriding the model's config is not supported",
    "model_config": "overriding the model's config is not supported",
    "pretraining_dataset": "streaming pretraining datasets are not supported; use datasets: with type: alpaca",
    "test_datasets": "a separate test dataset is not supported; use val_set_size",
    "torch_compile": "torch.compile is not supported",
    "s2_attention": "shifted-sparse attention is not supported",
    "sequence_parallel_degree": "sequence parallelism is not supported",
    "context_parallel_size": "context parallelism is not supported",
    "tensor_parallel_size": "tensor parallelism is not supported",
    "curriculum_sampling": "curriculum sampling is not supported",
    "lr_quadratic_warmup": "quadratic warmup is not supported",
    "cosine_min_lr_ratio": "a minimum-LR cosine schedule is not supported; use lr_scheduler: cosine",
    "cosine_constant_lr_ratio": "a constant-tail cosine schedule is not supported",
    "lr_div_factor": "one-cycle schedules are not supported",
    "optim_args": "optimizer arguments are not supported",
    "optim_target_modules": "GaLore-style optimizer targets are not supported",
    "plugins": "Axolotl plugins are not supported",
    "max_memory": "a per-device memory map is not supported; tutorforge plans memory itself",
    "gpu_memory_limit": "a per-device memory map is not supported; tutorforge plans memory itself",
    "unsloth_lora_mlp": "Unsloth kernels are not supported",
    "unsloth_lora_qkv": "Unsloth kernels are not supported",
    "unsloth_lora_o": "Unsloth kernels are not supported",
    "unsloth_cross_entropy_loss": "Unsloth kernels are not supported",
    "unsloth_rms_norm": "Unsloth kernels are not supported",
    "unsloth_rope": "Unsloth kernels are not supported",
    "chat_template_jinja": "a custom Jinja chat template is not supported yet; use chat_template",
    "dataset_exact_deduplication": "deduplication happens in `tutorforge data lint`, not while training",
}

# Prefixes of families of training keys (dpo_beta, kto_desirable_weight, relora_*, ...).
TRAINING_PREFIXES: dict[str, str] = {
    "dpo_": "DPO is not supported",
    "kto_": "KTO is not supported",
    "grpo_": "GRPO is not supported",
    "relora_": "ReLoRA is not supported",
    "lisa_": "LISA is not supported",
    "liger_": "Liger kernels are not supported",
    "unsloth_": "Unsloth kernels are not supported",
    "fsdp_": "FSDP through Axolotl's keys is not supported; use `accelerate launch` with an FSDP config",
}

INTEGRATION_KEYS: dict[str, str] = {
    "hub_model_id": "pushing to the Hugging Face Hub is not supported",
    "hub_strategy": "pushing to the Hugging Face Hub is not supported",
    "hub_private_repo": "pushing to the Hugging Face Hub is not supported",
    "push_dataset_to_hub": "pushing to the Hugging Face Hub is not supported",
    "hf_use_auth_token": "tutorforge uses the token of `huggingface-cli login` when it downloads",
    "use_tensorboard": "metrics go to metrics.jsonl and loss.png",
    "eval_table_size": "prediction tables are for W&B; use `tutorforge compare`",
    "eval_causal_lm_metrics": "generation metrics come from `tutorforge compare`",
    "do_causal_lm_eval": "generation metrics come from `tutorforge compare`",
    "local_rank": "set by the launcher",
    "debug": "use --debug on the command line",
    "is_llama_derived_model": "the architecture is read from the model's own config",
    "is_mistral_derived_model": "the architecture is read from the model's own config",
    "is_falcon_derived_model": "the architecture is read from the model's own config",
    "is_qwen_derived_model": "the architecture is read from the model's own config",
    "xformers_attention": "attention uses PyTorch SDPA (or flash_attention on CUDA)",
    "flash_attn_cross_entropy": "fused flash-attn kernels are not used",
    "flash_attn_rms_norm": "fused flash-attn kernels are not used",
    "flash_attn_fuse_qkv": "fused flash-attn kernels are not used",
    "flash_attn_fuse_mlp": "fused flash-attn kernels are not used",
    "flash_optimum": "BetterTransformer is not used",
    "dataset_processes": "tokenisation runs in-process",
    "dataset_num_proc": "tokenisation runs in-process",
    "dataset_keep_in_memory": "datasets are small enough to keep in memory",
    "dataloader_num_workers": "the data loader runs in-process",
    "dataloader_pin_memory": "the data loader runs in-process",
    "dataloader_prefetch_factor": "the data loader runs in-process",
    "ddp_timeout": "set through `accelerate launch`",
    "ddp_bucket_cap_mb": "set through `accelerate launch`",
    "ddp_broadcast_buffers": "set through `accelerate launch`",
    "ddp_find_unused_parameters": "set through `accelerate launch`",
    "save_safetensors": "adapters are always saved as safetensors",
    "save_total_limit": "tutorforge keeps the checkpoints it needs to resume",
    "save_strategy": "use saves_per_epoch or save_steps",
    "save_only_model": "checkpoints always hold what resuming needs",
    "evaluation_strategy": "use evals_per_epoch or eval_steps",
    "eval_strategy": "use evals_per_epoch or eval_steps",
    "eval_batch_size": "evaluation uses micro_batch_size",
    "max_packed_sequence_len": "deprecated in Axolotl; use sample_packing with sequence_len",
    "sample_packing_eff_est": "packing is planned from the data itself",
    "total_num_tokens": "counted from the data itself",
    "pretrain_multipack_attn": "packing isolates samples through position_ids",
    "loss_watchdog_threshold": "a non-finite loss always stops training",
    "loss_watchdog_patience": "a non-finite loss always stops training",
    "gc_steps": "garbage collection is left to Python",
    "low_cpu_mem_usage": "models are always loaded lazily",
    "lora_on_cpu": "device placement is planned by tutorforge",
    "remove_unused_columns": "only instruction, input and output are used",
    "include_tokens_per_second": "tokens/s is always in metrics.jsonl",
    "profiler_steps": "profiling is not built in",
    "group_by_length": "batches follow the dataset order (or packing)",
    "shuffle_merged_datasets": "merged datasets are always shuffled with the seed",
    "gradient_checkpointing_kwargs": "non-reentrant checkpointing is always used",
    "ddp": "set through `accelerate launch`",
    "gpu": "devices are chosen by tutorforge and `accelerate launch`",
    "torchdistx_path": "not used",
    "hub_revision": "pushing to the Hugging Face Hub is not supported",
    "revision_of_model": "the base model's default revision is used",
}

INTEGRATION_PREFIXES: dict[str, str] = {
    "wandb_": "Weights & Biases logging is not built in; metrics go to metrics.jsonl and loss.png",
    "mlflow_": "MLflow logging is not built in; metrics go to metrics.jsonl and loss.png",
    "hf_mlflow_": "MLflow logging is not built in",
    "comet_": "Comet logging is not built in; metrics go to metrics.jsonl and loss.png",
    "swanlab_": "SwanLab logging is not built in",
}

# Accepted config fields (dotted paths as `tutorforge validate` prints them, `[]` for any list
# entry) that have no effect in tutorforge, and why. tests/test_config_keys.py checks that every
# other field is read by the library, and that these are not.
IGNORED_FIELDS: dict[str, str] = {
    "model_type": "the model is always loaded with AutoModelForCausalLM from its own config",
    "tokenizer_type": "the tokenizer class is read from the tokenizer's own files (AutoTokenizer)",
    "eval_sample_packing": "the held-out set is evaluated unpacked, a row per sample",
    "eval_max_new_tokens": "evaluation during training is a loss, not generations; `tutorforge compare` "
                           "generates up to tutorforge.compare.max_new_tokens",
    "dataset_prepared_path": "the data is tokenised afresh on every run (seconds); nothing is cached",
    "sdp_attention": "attention is PyTorch SDPA already (flash_attention: true picks flash-attn 2 on CUDA)",
    "strict": "unknown keys are always errors",
    "datasets[].split": "tutorforge reads local files, which have no splits; hold rows out with val_set_size",
    "datasets[].name": "tutorforge reads local files; a hub dataset's configuration name does not apply",
}

# Values of ignored fields that ask for what tutorforge does anyway: no warning.
IGNORED_VALUES_DONE: dict[str, tuple] = {
    "model_type": ("AutoModelForCausalLM",),
    "tokenizer_type": ("AutoTokenizer",),
}

# Keys of one `datasets:` entry that Axolotl knows and tutorforge does not implement.
DATASET_KEYS: dict[str, str] = {
    "field_instruction": "column renaming is not supported; rows must have instruction, input, output",
    "field_input": "column renaming is not supported; rows must have instruction, input, output",
    "field_output": "column renaming is not supported; rows must have instruction, input, output",
    "field_system": "column renaming is not supported",
    "field_messages": "chat-format datasets are not supported; use type: alpaca",
    "message_field_role": "chat-format datasets are not supported; use type: alpaca",
    "message_field_content": "chat-format datasets are not supported; use type: alpaca",
    "roles_to_train": "chat-format datasets are not supported; use type: alpaca",
    "conversation": "chat-format datasets are not supported; use type: alpaca",
    "format": "custom prompt formats are not supported; use type: alpaca",
    "no_input_format": "custom prompt formats are not supported; use type: alpaca",
    "system_prompt": "set default_system_message at the top level instead",
    "shards": "dataset sharding is not supported",
    "preprocess_shards": "dataset sharding is not supported",
    "revision": "the dataset's default revision is used",
    "trust_remote_code": "remote dataset code is never run",
}

# Axolotl's `ds_type` file formats that tutorforge does not read (it reads JSON and JSON lines).
DS_TYPES: dict[str, str] = {
    "csv": "CSV files are not read; convert the rows to JSON lines {instruction, input, output}",
    "parquet": "Parquet files are not read; convert the rows to JSON lines {instruction, input, output}",
    "arrow": "Arrow files are not read; convert the rows to JSON lines {instruction, input, output}",
    "text": "plain-text completion data is not supported; tutorforge trains on Alpaca rows",
}

# Axolotl dataset types other than alpaca, and what to do instead.
DATASET_TYPES: dict[str, str] = {
    "chat_template": "chat-format rows are not supported yet; convert them to {instruction, input, output}",
    "sharegpt": "ShareGPT rows are not supported; convert them to {instruction, input, output}",
    "completion": "raw-text completion is not supported; tutorforge trains instruction following",
    "alpaca_chat": "use type: alpaca (the chat template comes from the tokenizer)",
    "alpaca_w_system": "use type: alpaca with default_system_message",
    "oasst": "convert the rows to {instruction, input, output}",
    "input_output": "convert the rows to {instruction, input, output}",
    "pretrain": "pretraining data is not supported",
    "context_qa": "convert the rows to {instruction, input, output}",
}

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
}

LR_SCHEDULERS: dict[str, str] = {
    "one_cycle": "one-cycle schedules are not offered",
    "rex": "the REX schedule is not offered",
    "log_sweep": "LR sweeps are not offered",
    "warmup_stable_decay": "warmup-stable-decay is not offered",
}

# Axolotl chat_template names that tutorforge does not carry: the model's own template is used.
CHAT_TEMPLATES: dict[str, str] = {
    name: "tutorforge carries only tokenizer_default, alpaca, chatml and llama3; "
          "tokenizer_default uses the model's own template"
    for name in ("qwen_25", "qwen3", "gemma", "gemma3", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken",
                 "mistral_v7_tekken", "phi_3", "phi_35", "phi_4", "llama2", "llama3_2_vision", "llama4",
                 "zephyr", "deepseek_v2", "deepseek_v3", "cohere", "falcon_h1", "jamba", "jinja",
                 "metharme", "pixtral", "exaone", "command_a")
}
