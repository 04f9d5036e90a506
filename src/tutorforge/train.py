"""Train a LoRA or QLoRA adapter, or every weight (a full fine-tune), from a config, on CPU or CUDA,
resumable after a kill -9.

    tutorforge train recipes/python-tutor-smollm2-cpu.yml

The loop stands on transformers (model), peft (LoRA), bitsandbytes (4-bit base, 8-bit optimizers)
and accelerate (devices, mixed precision, several processes). What it adds:
- the loss is computed only where there are labels (`logits_to_keep`), so the LM head never runs
  on prompt or padding positions, and there in chunks whose logits backward recomputes (loss.py),
  so they are never all in memory; it is normalised by the label tokens of the whole step;
- packed batches carry position ids and no attention mask: samples never see each other;
- a checkpoint holds the trainable weights, optimizer, scheduler and RNG state, and the data order
  is a function of (seed, epoch), so a killed run resumes to the same final weights;
- on CPU, a no-grad forward in eval mode makes bitsandbytes repack 4-bit weights for an inference
  kernel, after which LoRA gradients are wrong: `guard_cpu_4bit` turns that repacking off;
- before the first step, the disk of output_dir must hold the checkpoints (`check_free_space`).
Outputs in output_dir: adapter/ (PEFT format) or, for a full fine-tune, model/ (a Hugging Face
checkpoint; tutorforge.finetune), metrics.jsonl, loss.png, run.json, checkpoints/.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tutorforge import distributed as dist
from tutorforge.checkpoints import append_metrics, check_free_space, save_checkpoint
from tutorforge.config import Config
from tutorforge.errors import UserError
from tutorforge.eval_code import better, code_runs, prompts_for
from tutorforge.finetune import model_bytes, trainable_model
from tutorforge.hardware import training_attention
from tutorforge.lora import build_optimizer, compute_dtype, load_base
from tutorforge.loss import collate, evaluate, label_count, loss_sum
from tutorforge.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    """How many steps, and when to log, evaluate and save; each automatic choice with its reason."""

    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: tuple[int, int] | None  # (n, span): n evaluations every span steps, spread evenly
    save_every: tuple[int, int]
    decisions: list[str] = field(default_factory=list)

    def evaluates(self, step: int) -> bool:
        return self.eval_every is not None and (_due(self.eval_every, step) or step == self.total_steps)

    def saves(self, step: int) -> bool:
        return _due(self.save_every, step) or step == self.total_steps


def _due(every: tuple[int, int], step: int) -> bool:
    """Whether step (1-based) is one of n evenly spread over each span: 2 per 43 steps fall on 22
    and 43, so the last is the end of the epoch and not a step before it."""
    n, span = every
    return step * n // span != (step - 1) * n // span


def _every(per_epoch: int | None, steps: float | None, steps_per_epoch: int, total: int) -> tuple[int, int] | None:
    if per_epoch:
        return min(per_epoch, steps_per_epoch), steps_per_epoch
    if steps:
        return 1, max(1, round(steps * total) if steps < 1 else int(steps))
    return None


def make_schedule(cfg: Config, n_items: int, has_val: bool, world: int = 1) -> Schedule:
    micro = math.ceil(n_items / cfg.micro_batch_size)
    per_epoch = math.ceil(micro / (cfg.gradient_accumulation_steps * world))
    total = cfg.max_steps or math.ceil(cfg.num_epochs * per_epoch)
    decisions = []
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    else:
        warmup = round((cfg.warmup_ratio or 0.0) * total)
    eval_every = _every(cfg.evals_per_epoch, cfg.eval_steps, per_epoch, total) if has_val else None
    if has_val and eval_every is None:
        eval_every = 1, per_epoch
        decisions.append(f"eval every {per_epoch} steps (once per epoch: val_set_size is set, "
                         "evals_per_epoch and eval_steps are not)")
    save_every = _every(cfg.saves_per_epoch, cfg.save_steps, per_epoch, total)
    if save_every is None:
        save_every = 1, max(1, min(per_epoch, math.ceil(total / 10)))
        decisions.append(f"checkpoint every {save_every[1]} steps (so a killed run loses at most "
                         "a tenth of the run: saves_per_epoch and save_steps are not set)")
    return Schedule(micro, per_epoch, total, warmup, eval_every, save_every, decisions)


def epoch_order(n_items: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a function of (seed, epoch) alone, so a resumed run sees
    exactly the batches the killed run would have seen."""
    order = list(range(n_items))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_batches(sched: Schedule, cfg: Config, n_items: int, step: int, world: int = 1,
                 rank: int = 0) -> list[list[int]]:
    """The micro batches (item indices) of optimizer step `step` (0-based) for process `rank`:
    a step takes accumulation x world micro batches of the epoch's order, dealt round-robin."""
    epoch, within = divmod(step, sched.steps_per_epoch)
    order = epoch_order(n_items, cfg.seed, epoch)
    size, per_step = cfg.micro_batch_size, cfg.gradient_accumulation_steps * world
    first = within * per_step
    last = min(first + per_step, sched.micro_batches_per_epoch)
    return [order[i * size:(i + 1) * size] for i in range(first + rank, last, world)]


def guard_cpu_4bit(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel (which it does
    on any no-grad eval-mode forward, and which silently breaks LoRA gradients afterwards)."""
    try:
        from bitsandbytes.nn import Linear4bit  # pyright: ignore[reportPrivateImportUsage]
    except ImportError:
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # VmHWM, this process's own high-water mark: ru_maxrss would also carry the RSS of the parent
    # it was forked from (Linux keeps the pre-exec peak), e.g. a test runner holding models
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def step_line(step: int, total: int, loss: float, lr: float, tok_s: float, peak: float, row: dict) -> str:
    """The one greppable line per logged step (with the evaluation's numbers when `row` has them)."""
    line = f"step {step}/{total} | loss {loss:.3f} | lr {lr:.1e} | {tok_s:.0f} tok/s | peak {peak:.1f} GB"
    return line + evaluation_text(row)


def evaluation_text(row: dict) -> str:
    """A metrics row's evaluation, as the step line shows it: " | eval_loss 1.800 | code runs 50%"."""
    text = f" | eval_loss {row['eval_loss']:.3f}" if row.get("eval_loss") is not None else ""
    return text + (f" | code runs {row['eval_code_runs']:.0f}%" if row.get("eval_code_runs") is not None else "")


# --- the loop -----------------------------------------------------------------------------------

@dataclass
class Run:
    """What the loop works on, built once from the config."""

    cfg: Config
    run_dir: Path
    model: torch.nn.Module  # what the loop calls: DDP-wrapped when there are several processes
    core: Any  # the model itself (a PeftModel, or the full fine-tune's): saved, evaluated
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a transformers LR scheduler (torch.optim.lr_scheduler.LambdaLR)
    items: list
    val: list
    sched: Schedule
    pad_id: int
    device: torch.device
    dtype: torch.dtype
    decisions: list[str]
    tokenizer: Any = None  # saved with the adapter: special_tokens and tokenizer_config reach merge and export
    pad_to: int | None = None  # pad_to_sequence_len: every training batch is sequence_len wide
    prompts: list = field(default_factory=list)  # held-out rows answered at evaluations (code_runs)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _accumulate(run: Run, index_batches: list[list[int]], fallback: list[int], autocast) -> tuple[float, int]:
    """Forward and backward over this process's micro batches of one step; (loss, real tokens).
    The loss is normalised by the label tokens of the whole step on all processes. A process
    with no micro batch left at an epoch's end runs one with weight 0, so DDP's collectives match."""
    world = dist.world_size()
    batches = [collate([run.items[i] for i in b], run.pad_id, run.pad_to) for b in index_batches]
    weights = [1.0] * len(batches)
    if not batches:
        batches, weights = [collate([run.items[i] for i in fallback], run.pad_id, run.pad_to)], [0.0]
    n_labels = dist.all_sum(sum(label_count(b) * w for b, w in zip(batches, weights, strict=False)))
    step_loss = 0.0
    for i, (batch, weight) in enumerate(zip(batches, weights, strict=False)):
        batch = {k: v.to(run.device) for k, v in batch.items()}
        with dist.no_sync(run.model, sync=i == len(batches) - 1):  # DDP averages gradients on the last one only
            with autocast():
                loss = loss_sum(run.model, batch) * (weight * world / max(n_labels, 1))
            loss.backward()
        step_loss += loss.item() / world
    real = sum(len(run.items[i].input_ids) for b in index_batches for i in b)  # no padding
    return dist.all_sum(step_loss), int(dist.all_sum(real))


def train_steps(run: Run, state: dict, progress=None) -> dict:
    """Optimizer steps from state["step"] to the end (or an early stop); returns the final state."""
    cfg, sched = run.cfg, run.sched
    autocast = _autocast(run.device, run.dtype)
    params = [p for p in run.model.parameters() if p.requires_grad]
    run.model.train()
    while state["step"] < sched.total_steps and not state.get("stopped_early"):
        start = time.perf_counter()
        mine = step_batches(sched, cfg, len(run.items), state["step"], dist.world_size(), dist.rank())
        fallback = step_batches(sched, cfg, len(run.items), state["step"], dist.world_size(), 0)[:1]
        step_loss, real = _accumulate(run, mine, fallback[0] if fallback else [0], autocast)
        if not math.isfinite(step_loss):
            raise UserError(f"step {state['step'] + 1}: the loss is {step_loss}; lower learning_rate "
                            f"(now {cfg.learning_rate:g}) or check the data")
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        lr = run.scheduler.get_last_lr()[0]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        step = state["step"]
        row = {"step": step, "epoch": round(step / sched.steps_per_epoch, 3), "loss": step_loss, "lr": lr,
               "grad_norm": float(norm), "tokens": real,
               "tokens_per_s": real / (time.perf_counter() - start), "peak_mem_gb": peak_memory_gb(run.device)}
        improved = _maybe_evaluate(run, state, row, autocast)
        if dist.is_main():
            _record(run, state, row, progress)
        if improved or sched.saves(step) or state.get("stopped_early"):
            keep = {step} | ({state["best_step"]} if state.get("best_step") else set())
            if dist.is_main():
                save_checkpoint(run.run_dir, step, run.core, run.optimizer, run.scheduler, state, keep,
                                adapter=cfg.adapter is not None)
            dist.barrier()
    return state


def _record(run: Run, state: dict, row: dict, progress) -> None:
    """The step's log line, its metrics.jsonl row (before any checkpoint, so a resume never loses
    a row), and the caller's progress callback."""
    step, total = state["step"], run.sched.total_steps
    if step % run.cfg.logging_steps == 0 or step == total or "eval_loss" in row:
        log.info(step_line(step, total, row["loss"], row["lr"], row["tokens_per_s"], row["peak_mem_gb"], row))
    append_metrics(run.run_dir / "metrics.jsonl", row)
    if progress:
        progress(step, total, row)


def _measure(run: Run, autocast) -> dict:
    """What an evaluation measures on the model itself (the PEFT model, not its DDP wrapper): the
    held-out loss, and code_runs when metric_for_best_model asks for it; the model is left in train mode."""
    measured = {"eval_loss": evaluate(run.core, run.val, micro_batch_size=run.cfg.micro_batch_size,
                                      pad_id=run.pad_id, autocast=autocast)}
    if run.prompts:
        with autocast():
            measured["eval_code_runs"] = code_runs(run.core, run.tokenizer, run.cfg, run.prompts)
    run.model.train()
    return measured


def _maybe_evaluate(run: Run, state: dict, row: dict, autocast) -> bool:
    """Evaluate when scheduled (the held-out loss; code_runs too when it is metric_for_best_model);
    track the best value of metric_for_best_model and early stopping. True if it improved."""
    step, sched, cfg = state["step"], run.sched, run.cfg
    if not run.val or not sched.evaluates(step):
        return False
    measured = _measure(run, autocast) if dist.is_main() else None  # no DDP collectives in an evaluation
    measured = dist.broadcast(measured)
    row.update(measured)
    value = measured["eval_code_runs" if run.prompts else "eval_loss"]
    if better(cfg, value, state.get("best_eval")):
        state.update(best_eval=value, best_step=step, bad_evals=0)
        return True
    state["bad_evals"] = state.get("bad_evals", 0) + 1
    if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
        state["stopped_early"] = True
        log.info("early stopping at step %d: %s has not improved on %.4f (step %d) for %d evaluations",
                 step, cfg.metric_for_best_model, state["best_eval"], state["best_step"], state["bad_evals"])
    return False


# --- the stage ----------------------------------------------------------------------------------

def _fingerprint(cfg: Config, files: list[Path]) -> dict[str, str]:
    """Content hashes of what determines the trained weights: the config (less where it goes), the
    adapter it continues (lora_model_dir) and the data."""
    import dataclasses
    import hashlib

    from tutorforge.outputs import directory_hashes

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in {"output_dir", "tutorforge"}}
    if cfg.lora_model_dir and Path(cfg.lora_model_dir).is_dir():
        settings["lora_model_dir"] = directory_hashes(Path(cfg.lora_model_dir))
    data = hashlib.sha256()
    for path in files:
        data.update(path.read_bytes())
    return {"config": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
            "data": data.hexdigest()}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "transformers", "peft", "bitsandbytes",
                                                "accelerate", "trl", "tutorforge")}


def build_run(cfg: Config, *, config_dir: Path | None, skip_bad_rows: bool, device: torch.device | None = None,
              decisions: Sequence[str] = ()) -> Run:
    """Resolve the model, prepare the data and build model, optimizer and schedule. `decisions`
    are choices made before (the memory plan's): they lead run.json's list and the log."""
    import transformers

    from tutorforge.models import model_config_dir, resolve_base_model
    from tutorforge.prepare import prepare
    from tutorforge.tokenizer import tokenizer_for

    device = device or dist.device()
    resolved = resolve_base_model(cfg.base_model)
    tokenizer = tokenizer_for(resolved.path, cfg.tokenizer_config, special_tokens=cfg.special_tokens,
                              trust_remote_code=cfg.trust_remote_code)
    prepared = prepare(cfg, tokenizer, skip_bad_rows=skip_bad_rows, config_dir=config_dir)
    log.info("%s", prepared.summary())
    if dist.is_main():  # the held-out rows, never trained on: export verifies and compare asks on them
        from tutorforge.prepare import write_rows

        write_rows(prepared.val_rows, RunDir.for_config(cfg).heldout)
    items = prepared.packs if prepared.packs is not None else prepared.train
    sched = make_schedule(cfg, len(items), bool(prepared.val), dist.world_size())
    dtype = compute_dtype(cfg.bf16, cfg.fp16, device)
    decisions = [*decisions, *sched.decisions]
    if dist.world_size() > 1:
        decisions.append(f"{dist.world_size()} processes (DDP): effective batch = micro_batch_size x "
                         f"gradient_accumulation_steps x {dist.world_size()}")
    decisions.append(f"compute dtype {str(dtype).removeprefix('torch.')} on {device.type} "
                     f"(bf16: {cfg.bf16}, fp16: {cfg.fp16})")
    if cfg.fp16 and device.type != "cuda":
        decisions.append("fp16: true needs CUDA (loss scaling); on CPU the compute dtype follows bf16")
    config_dir = model_config_dir(cfg.base_model_config)
    attention, why = training_attention(cfg, device.type, config_dir or resolved.path)
    decisions += why
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    quant = cfg.bnb_4bit_quant_type if cfg.load_in_4bit else "int8" if cfg.load_in_8bit else None
    torch.manual_seed(cfg.seed)
    model = load_base(resolved.path, quant=quant, double_quant=cfg.bnb_4bit_use_double_quant,
                      dtype=torch.float32 if cfg.adapter is None else dtype,  # a full fine-tune: fp32 master weights
                      device=device, gradient_checkpointing=cfg.gradient_checkpointing, attention=attention,
                      trust_remote_code=cfg.trust_remote_code, config_dir=config_dir)
    chosen = getattr(model.config, "_attn_implementation", None)
    decisions.append(f"attention {chosen}" + ("" if attention else " (the model's default)"))
    model, chosen_weights = trainable_model(model, cfg)
    decisions += chosen_weights
    if quant and device.type == "cpu" and (n := guard_cpu_4bit(model)):
        decisions.append(f"bitsandbytes CPU inference repacking off on {n} 4-bit layers (it corrupts "
                         "LoRA gradients after an evaluation pass)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, device=device)
    scheduler = transformers.get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=sched.warmup_steps,
                                           num_training_steps=sched.total_steps)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for decision in decisions:
        log.info("decision: %s", decision)
    return Run(cfg, Path(cfg.output_dir), dist.wrap(model), model, optimizer, scheduler, items, prepared.val,
               sched, pad_id, device, dtype, decisions, tokenizer,
               cfg.sequence_len if cfg.pad_to_sequence_len else None)


def train(cfg: Config, *, config_dir: Path | None = None, skip_bad_rows: bool = False, resume: bool = True,
          progress=None, decisions: Sequence[str] = ()) -> Path:
    """Train the config's adapter into output_dir/adapter (a full fine-tune: the model into
    output_dir/model); resume from the newest checkpoint."""
    from tutorforge.checkpoints import latest_checkpoint, load_checkpoint, read_metrics, truncate_metrics
    from tutorforge.data import dataset_files

    run_dir = Path(cfg.output_dir)
    fingerprint = _fingerprint(cfg, dataset_files(cfg.datasets, config_dir))
    done = _completed(run_dir, fingerprint)
    if done:
        log.info("training: %s is complete for this config and data; skipped", done)
        return done
    run = build_run(cfg, config_dir=config_dir, skip_bad_rows=skip_bad_rows, decisions=decisions)
    check_free_space(run.run_dir, run.core, keep_best=bool(run.val), final_bytes=model_bytes(run.core, run.cfg))
    state = {"step": 0, "fingerprint": fingerprint}
    checkpoint = Path(cfg.resume_from_checkpoint) if cfg.resume_from_checkpoint else (
        latest_checkpoint(run_dir) if resume and cfg.auto_resume_from_checkpoints else None)
    if checkpoint:
        state = load_checkpoint(checkpoint, run.core, run.optimizer, run.scheduler)
        if state.get("fingerprint") != fingerprint:
            raise UserError(f"{checkpoint}: a checkpoint of another config or dataset; use a new output_dir "
                            "(or delete this one) to start over")
        if dist.is_main():
            truncate_metrics(run_dir / "metrics.jsonl", state["step"])
        log.info("resuming from %s (step %d of %d)", checkpoint, state["step"], run.sched.total_steps)
    elif (run_dir / "metrics.jsonl").exists() and dist.is_main():
        (run_dir / "metrics.jsonl").unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.metric_for_best_model == "code_runs" and run.val and dist.is_main():
        run.prompts = prompts_for(cfg)
    dist.barrier()
    started = time.time()
    if state["step"] == 0 and run.val and dist.is_main():  # the baseline the eval curve starts from
        row = {"step": 0, **_measure(run, _autocast(run.device, run.dtype))}
        append_metrics(run_dir / "metrics.jsonl", row)
        log.info("step 0/%d%s (before training)", run.sched.total_steps, evaluation_text(row))
    state = train_steps(run, state, progress)
    if not dist.is_main():
        dist.barrier()
        return run_dir / ("adapter" if cfg.adapter else "model")
    output = _finish(run, state, fingerprint, started, read_metrics(run_dir / "metrics.jsonl"))
    dist.barrier()
    return output


def _completed(run_dir: Path, fingerprint: dict) -> Path | None:
    from tutorforge.rundir import read_run_json

    info = read_run_json(run_dir) or {}
    ok = info.get("status") == "complete" and info.get("fingerprint") == fingerprint
    for output, marker in (("adapter", "adapter_config.json"), ("model", "config.json")):
        if ok and (run_dir / output / marker).is_file() and info.get("output", "adapter") == output:
            return run_dir / output
    return None


def _finish(run: Run, state: dict, fingerprint: dict, started: float, metrics: list[dict]) -> Path:
    """Write the trained model (the best evaluated one when early stopping): adapter/, or model/
    for a full fine-tune; then loss.png and run.json."""
    from tutorforge.checkpoints import overfitting, plot_losses
    from tutorforge.finetune import write_trained
    from tutorforge.rundir import write_training

    best = state.get("best_step")
    chooses = run.cfg.early_stopping_patience or run.cfg.load_best_model_at_end
    source = run.run_dir / "checkpoints" / f"step-{best:06d}" if best and chooses else None
    output, saved, note = write_trained(run.core, run.tokenizer, run.run_dir, run.cfg, best=source)
    run.decisions += [note] if note else []
    plot_losses(metrics, run.run_dir / "loss.png")
    note = overfitting(metrics)
    if note:
        log.warning("%s", note)
    info = {"status": "complete", "fingerprint": fingerprint, "output": output.name,
            "decisions": run.decisions, "steps": state["step"], "total_steps": run.sched.total_steps,
            "stopped_early": bool(state.get("stopped_early")), "metric_for_best_model": run.cfg.metric_for_best_model,
            "best_eval": state.get("best_eval"),
            "best_step": best, "overfitting": note, "final_loss": metrics[-1]["loss"] if metrics else None,
            "seconds": round(time.time() - started, 1), "device": run.device.type,
            "dtype": str(run.dtype), "saved_dtype": str(saved) if saved else None, "versions": _versions()}
    write_training(run.run_dir, run.cfg, info)
    return output
