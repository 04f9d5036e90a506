"""The mission's QLoRA step on CPU: one optimizer step on a Llama-3-8B-shaped checkpoint, against the plan.

    python bench/qlora_8b_cpu.py                 # the 8B shape: 16 GB of disk, ~10 GB of RAM, ~5 min
    python bench/qlora_8b_cpu.py --shape tiny    # the same code on a tiny shape, in seconds

Nothing is downloaded: a random bf16 checkpoint of Llama 3 8B's shape is written tensor by tensor
(bench/synthetic.py; kept in --work for the next run), then a fresh process loads it through
tutorforge's own path (lora.load_base, add_lora, build_optimizer, loss.loss_sum) at the mission's
settings: 4-bit NF4 with double quantisation, LoRA r 32 / alpha 16 on every linear layer, 8-bit
AdamW (bitsandbytes' AdamW8bit, which runs on CPU), gradient checkpointing, micro batch 1 of one
full sequence of sequence_len tokens, every position a label (the plan's worst case). Prints the
load time, the time of each step, the peak private RAM (RssAnon: what must fit) and the peak RSS
(with the checkpoint's file pages, page cache the kernel reclaims as RAM fills), against the
memory plan's CPU prediction for the same settings (tutorforge.plan, computed before loading),
and their ratio.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_export import SHAPES, llama_config  # noqa: E402  (bench/ is not a package)
from synthetic import BF16, Peaks, bundled_tokenizer, spawn, tensor_shapes, write_checkpoint  # noqa: E402

GIB = 2**30
LORA_R, LORA_ALPHA = 32, 16  # recipes/python-tutor-llama3-8b-rtx3060.yml
OPTIMIZER = "adamw_bnb_8bit"
BAR = 0.20  # the measured private peak within 20% of the plan's prediction


def settings(base: Path, sequence_len: int, bf16: bool, steps: int) -> dict:
    """The config of what the step runs, as tutorforge reads it (the plan's input)."""
    return {"base_model": str(base), "adapter": "qlora", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0,
            "lora_target_linear": True, "sequence_len": sequence_len, "micro_batch_size": 1,
            "gradient_accumulation_steps": 1, "max_steps": steps, "optimizer": OPTIMIZER,
            "gradient_checkpointing": True, "sample_packing": False, "bf16": bf16}


def predict(base: Path, sequence_len: int, bf16: bool, steps: int) -> dict:
    """The memory plan's CPU peak for these settings, with the part that is the base's weights."""
    import yaml

    from tutorforge.config import parse
    from tutorforge.plan import plan_training

    report = parse(yaml.safe_dump(settings(base, sequence_len, bf16, steps)), "qlora_8b_cpu")
    plan = plan_training(report.config, hardware="cpu")
    return {"plan_gb": plan.peak_gb, "plan_fits": plan.fits, "plan_ram_gb": plan.capacity_gb}


def step(base: Path, sequence_len: int, bf16: bool, steps: int) -> dict:
    """The case (in its own process): load, then `steps` optimizer steps; seconds and peaks."""
    import bitsandbytes as bnb
    import torch

    from tutorforge.lora import add_lora, build_optimizer, load_base
    from tutorforge.loss import loss_sum

    peaks = Peaks()
    start = time.perf_counter()
    dtype = torch.bfloat16 if bf16 else torch.float32
    cpu = torch.device("cpu")
    model = load_base(base, quant="nf4", double_quant=True, dtype=dtype, device=cpu, gradient_checkpointing=True)
    model = add_lora(model, r=LORA_R, alpha=LORA_ALPHA, dropout=0.0, target_linear=True, target_modules=(),
                     modules_to_save=(), fan_in_fan_out=False)
    model.train()  # from_pretrained returns eval mode, where transformers skips gradient checkpointing
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(OPTIMIZER, list(trainable.values()), lr=2e-4, weight_decay=0.0, betas=(0.9, 0.999),
                                eps=1e-8, device=cpu)
    loaded = time.perf_counter() - start
    peaks.sample()
    load_peak = peaks.own
    before = {n: p.detach().clone() for n, p in trainable.items() if "lora_B" in n}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, sequence_len), generator=generator)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(sequence_len).unsqueeze(0)}
    times, losses, phases = [], [], {"load": load_peak / 1024}

    def reached(phase: str) -> None:  # the running peak once `phase` is done
        peaks.sample()
        phases[phase] = max(phases.get(phase, 0.0), peaks.own / 1024)

    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_sum(model, batch) / (sequence_len - 1)
        reached("forward")
        loss.backward()
        reached("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        reached("optimizer")
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    peaks.stop()
    moved = max((trainable[n].detach() - b).abs().max().item() for n, b in before.items())
    q4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # the base's (peft wraps each)
    return {"load_s": loaded, "step_s": times, "loss": losses, "private_peak_gb": peaks.own / 1024,
            "private_peak_by_phase_gb": phases,
            "rss_peak_gb": peaks.rss / 1024, "lora_b_moved": moved, "linear4bit_modules": q4,
            "trainable_params": sum(p.numel() for p in trainable.values())}


def checkpoint(work: Path, shape: str) -> Path:
    """The synthetic bf16 checkpoint of `shape` in `work` (built once, then reused)."""
    base = work / f"base-{shape}"
    if (base / "model.safetensors.index.json").is_file() or (base / "model.safetensors").is_file():
        return base
    tokenizer = bundled_tokenizer()
    config = llama_config(shape, tokenizer)
    need = sum(BF16 * math.prod(s) for s in tensor_shapes(config).values())
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < need + GIB:
        sys.exit(f"{work}: the checkpoint needs {need / GIB:.1f} GiB of disk but {free / GIB:.1f} GiB are free; "
                 "free some space or give --work on another disk")
    shutil.rmtree(base, ignore_errors=True)  # an interrupted build
    start = time.perf_counter()
    write_checkpoint(base, config, tokenizer)
    print(f"built {base} ({need / GIB:.1f} GiB) in {time.perf_counter() - start:.0f} s", flush=True)
    return base


def report(shape: str, sequence_len: int, bf16: bool, predicted: dict, measured: dict) -> dict:
    ratio = measured["private_peak_gb"] / predicted["plan_gb"]
    steps = ", ".join(f"{s:.1f}" for s in measured["step_s"])
    print(f"QLoRA on CPU, Llama-3-{shape.upper()} shape: nf4 double quant, LoRA r {LORA_R} on every linear layer "
          f"({measured['trainable_params'] / 1e6:.1f}M trainable, {measured['linear4bit_modules']} 4-bit linears), "
          f"{OPTIMIZER}, gradient checkpointing, sequence_len {sequence_len}, micro batch 1, "
          f"{'bf16 autocast' if bf16 else 'fp32 compute'}")
    print(f"  load (quantise) {measured['load_s']:.0f} s; seconds per step: {steps} "
          f"({sequence_len / measured['step_s'][-1]:.1f} tokens/s); loss {measured['loss'][0]:.3f}; "
          f"largest LoRA B change {measured['lora_b_moved']:.2e}")
    print(f"  peak private RAM (RssAnon) {measured['private_peak_gb']:.2f} GiB; memory plan (CPU) "
          f"{predicted['plan_gb']:.2f} GiB: measured / plan = {ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= BAR else 'OUTSIDE'} the {BAR:.0%} bar)")
    print(f"  peak RSS with the checkpoint's file pages (reclaimable page cache) {measured['rss_peak_gb']:.2f} GiB "
          f"of {predicted['plan_ram_gb']:.1f} GiB RAM")
    return {"shape": shape, "sequence_len": sequence_len, "bf16": bf16, **predicted, **measured,
            "measured_over_plan": ratio, "within_bar": abs(ratio - 1) <= BAR}


def main() -> None:
    from tutorforge.lora import compute_dtype

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="8b", help="Llama-3-8B's (default), Llama-3.2-1B's or tiny")
    parser.add_argument("--sequence-len", type=int, default=256, help="tokens of the step's one sequence (256)")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps after loading (1)")
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default="auto",
                        help="bf16 autocast: auto (where the CPU has it, as training decides), true, false")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tutorforge-qlora-bench"),
                        help="where the checkpoint is built and kept (/tmp/tutorforge-qlora-bench)")
    parser.add_argument("--case", choices=("step",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    bf16 = compute_dtype({"auto": "auto", "true": True, "false": False}[args.bf16], None,
                         torch.device("cpu")) == torch.bfloat16
    if args.case:
        print(json.dumps(step(checkpoint(args.work, args.shape), args.sequence_len, bf16, args.steps)))
        return
    base = checkpoint(args.work, args.shape)
    predicted = predict(base, args.sequence_len, bf16, args.steps)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    extra = ["--shape", args.shape, "--sequence-len", str(args.sequence_len), "--steps", str(args.steps),
             "--bf16", "true" if bf16 else "false"]
    measured = spawn(__file__, "step", args.work, env, extra)
    print(json.dumps(report(args.shape, args.sequence_len, bf16, predicted, measured)))


if __name__ == "__main__":
    main()
