"""The loss in chunks against the loss in one piece: training's peak RAM, measured and planned, in one run.

    .venv/bin/python bench/loss_memory.py [--sequence-len 2048] [--steps 2] [--bf16 auto|true|false]

One `tutorforge train` run (train.build_run, train_steps: the bundled SmolLM2-135M-Instruct with
LoRA r 16 on every linear layer, micro batch 1 of one packed sequence of sequence_len tokens,
every position a label, the plan's worst case), in a fresh process for each case: "chunks"
(loss.loss_sum as training runs it: the LM head and cross-entropy one chunk of label rows at a
time) and "whole" (the same loss from the whole logits, loss_sum's chunk_rows=0). Prints each
case's peak RSS (the kernel's high-water mark, ru_maxrss) and peak private RAM (RssAnon, sampled),
the measured drop, the memory plan's peak for each and its predicted drop, and their ratio; once
with glibc's allocator as it is, which keeps freed blocks of up to 32 MiB in its heap (part of RSS,
the plan's CPU slack), and once with MALLOC_MMAP_THRESHOLD_=65536, which returns them to the
kernel, so that RSS follows what training allocates.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import Peaks, spawn  # noqa: E402  (bench/ is not a package)

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
CASES = ("chunks", "whole")


def write_recipe(work: Path, sequence_len: int, steps: int, bf16: bool) -> Path:
    """The config both cases train: the bundled tutor data packed into full sequences."""
    import yaml

    rows = [json.loads(line) for line in (ROOT / "data" / "python_tutor.jsonl").read_text().splitlines() if line]
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = work / "config.yml"
    config.write_text(yaml.safe_dump({
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": "lora", "datasets": [{"path": str(data)}],
        "sequence_len": sequence_len, "sample_packing": True, "train_on_inputs": True, "val_set_size": 0,
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lora_target_linear": True, "micro_batch_size": 1,
        "gradient_accumulation_steps": 1, "max_steps": steps, "optimizer": "adamw_torch", "learning_rate": 1e-4,
        "gradient_checkpointing": True, "bf16": bf16, "output_dir": str(work / "out"), "save_steps": 10_000,
        "evals_per_epoch": 0, "seed": 0}))
    return config


def planned(config: Path) -> dict:
    """The plan's CPU peak with the chunked loss, and with the loss of the whole logits in its place."""
    from unittest import mock

    from tutorforge import memory, plan
    from tutorforge.config import load_config

    p = plan.plan_training(load_config(config), hardware="cpu")
    s, shape, hw = p.settings, p.shape, p.hardware
    rows = s.micro_batch_size * (s.sequence_len - 1)
    with mock.patch.object(memory, "loss_bytes", lambda s, shape: rows * shape.vocab * memory.LOSS_BYTES):
        whole = memory.training_gb(s, shape, hw)
    return {"chunks": p.peak_gb, "whole": whole, "drop": whole - p.peak_gb,
            "chunk_rows": memory.loss_chunk_rows(shape.vocab), "label_rows": rows}


def train(config: Path, case: str) -> dict:
    """The case (in its own process): build the run, train; peaks and seconds."""
    import tutorforge.train as training
    from tutorforge.config import load_config
    from tutorforge.loss import loss_sum

    if case == "whole":
        training.loss_sum = functools.partial(loss_sum, chunk_rows=0)
    peaks = Peaks()
    run = training.build_run(load_config(config), config_dir=config.parent, skip_bad_rows=False)
    Path(run.cfg.output_dir).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    start = time.perf_counter()
    training.train_steps(run, {"step": 0}, progress=lambda step, total, row: rows.append(row))
    seconds = time.perf_counter() - start
    peaks.stop()
    return {"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "anon_mib": peaks.own,
            "seconds": seconds, "losses": [r["loss"] for r in rows], "tokens": sum(r["tokens"] for r in rows)}


ALLOCATORS = {  # name -> glibc's settings in the environment
    "glibc default": {},
    # every freed block over 64 KiB goes back to the kernel at once: RSS follows what is allocated
    "glibc returning": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}


def main() -> None:
    from tutorforge.lora import compute_dtype

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--bf16", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(train(args.work / "config.yml", args.case)))
        return
    import torch

    bf16 = compute_dtype({"auto": "auto", "true": True, "false": False}[args.bf16], None,
                         torch.device("cpu")) == torch.bfloat16
    measured: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = write_recipe(work, args.sequence_len, args.steps, bf16)
        plan = planned(config)
        for allocator, settings in ALLOCATORS.items():
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **settings}
            measured[allocator] = {case: spawn(__file__, case, work, env) for case in CASES}
    predicted = plan["drop"] * 1024
    print(f"training the bundled model, sequence_len {args.sequence_len}, micro batch 1, every position a label, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, {args.steps} steps; the loss in chunks of {plan['chunk_rows']} "
          f"of {plan['label_rows']} label rows")
    print(f"{'allocator':<17}{'case':<8}{'peak RSS MiB':>14}{'RssAnon MiB':>13}{'plan MiB':>10}{'seconds':>9}  losses")
    drops = {}
    for allocator, cases in measured.items():
        for case in CASES:
            m = cases[case]
            print(f"{allocator:<17}{case:<8}{m['maxrss_mib']:>14.0f}{m['anon_mib']:>13.0f}{plan[case] * 1024:>10.0f}"
                  f"{m['seconds']:>9.1f}  {', '.join(f'{x:.4f}' for x in m['losses'])}")
        drop = {k: cases["whole"][k] - cases["chunks"][k] for k in ("maxrss_mib", "anon_mib")}
        drops[allocator] = drop
        print(f"{'':<17}drop: peak RSS {drop['maxrss_mib']:.0f} MiB, RssAnon {drop['anon_mib']:.0f} MiB; the plan's "
              f"{predicted:.0f} MiB: measured / planned {drop['maxrss_mib'] / predicted:.2f} (peak RSS), "
              f"{drop['anon_mib'] / predicted:.2f} (RssAnon)")
    print(json.dumps({"plan": plan, "measured": measured, "drop_mib": drops, "planned_drop_mib": predicted}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
