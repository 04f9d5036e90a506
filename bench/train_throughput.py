"""Training throughput: tutorforge vs TRL's SFTTrainer, with its defaults and with packing, in one run.

    .venv/bin/python bench/train_throughput.py [--steps 8] [--rows 400] [--precision fp32,bf16]

Same model (the bundled SmolLM2-135M-Instruct), data (../shared/data/code_alpaca_2k.json), LoRA
(r 16, alpha 32, all linear layers), sequence_len (512), effective batch (micro batch 4 x
accumulation 2), learning rate, gradient checkpointing (off for all) and precision (fp32, or bf16
autocast: each given with --precision), on CPU. Cases, each in a fresh process:

- tutorforge: packing to sequence_len, the LM head only at label positions, in chunks;
- trl: SFTTrainer with its defaults (no packing: each micro batch padded to its longest row);
- trl packing: SFTConfig(packing=True), whose default strategy (bfd) is padding-free: each micro
  batch's packed rows flattened into one row with position ids, no padding at all.

The measure is real (non-padding) tokens per second over the steps after the first (warm-up) one,
and the peak RSS (ru_maxrss) of the process; the ratios are tutorforge's over each TRL case's.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import spawn  # noqa: E402  (bench/ is not a package)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "code_alpaca_2k.json"
SYSTEM = "You are a concise Python tutor."
LORA = {"r": 16, "alpha": 32}
SEQ, MBS, ACCUM, LR = 512, 4, 2, 2e-4
CASES = {"tutorforge": "tutorforge", "trl": "trl SFTTrainer (defaults)",
         "trl-packing": "trl SFTTrainer (packing=True)"}


def rows(n: int) -> list[dict]:
    data = [r for r in json.loads(DATA.read_text()) if r["output"].strip()]
    return data[:n]


def run_tutorforge(data: list[dict], steps: int, workdir: Path, bf16: bool) -> tuple[int, float]:
    import yaml

    from tutorforge.config import load_config
    from tutorforge.train import build_run, train_steps

    path = workdir / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    config = workdir / "config.yml"
    config.write_text(yaml.safe_dump({
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": "lora", "datasets": [{"path": str(path)}],
        "default_system_message": SYSTEM, "sequence_len": SEQ, "sample_packing": True,
        "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_target_linear": True, "lora_dropout": 0.0,
        "micro_batch_size": MBS, "gradient_accumulation_steps": ACCUM, "max_steps": steps, "bf16": bf16,
        "gradient_checkpointing": False, "learning_rate": LR, "output_dir": str(workdir / "out"),
        "save_steps": 10_000, "val_set_size": 0}))
    run = build_run(load_config(config), config_dir=workdir, skip_bad_rows=True)
    (workdir / "out").mkdir(exist_ok=True)
    timed = []
    train_steps(run, {"step": 0}, progress=lambda step, total, row: timed.append(row))
    measured = timed[1:]
    return sum(r["tokens"] for r in measured), sum(r["tokens"] / r["tokens_per_s"] for r in measured)


def run_trl(data: list[dict], steps: int, workdir: Path, bf16: bool, packing: bool) -> tuple[int, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tutorforge.formatting import user_turn
    from tutorforge.models import resolve_base_model

    path = resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = Dataset.from_list([{
        "prompt": [{"role": "system", "content": SYSTEM},
                   {"role": "user", "content": user_turn(r["instruction"], r["input"])}],
        "completion": [{"role": "assistant", "content": r["output"]}]} for r in data])
    marks: list[tuple[float, int]] = []
    seen = [0]

    class Counting(SFTTrainer):
        """Counts the real tokens of every micro batch: the attention mask's ones when padded,
        every position when padding-free (one flattened row, no padding)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            seen[0] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), seen[0]))

    config = SFTConfig(output_dir=str(workdir / "trl"), use_cpu=True, max_length=SEQ, max_steps=steps,
                       per_device_train_batch_size=MBS, gradient_accumulation_steps=ACCUM, learning_rate=LR,
                       report_to=[], save_strategy="no", logging_steps=1, seed=42, bf16=bf16,
                       gradient_checkpointing=False, packing=packing)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = Counting(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                       peft_config=peft, callbacks=[Clock()])
    if packing:
        assert trainer.padding_free, "TRL's packing=True is expected to be padding-free (packing_strategy bfd)"
    trainer.train()
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return n1 - n0, t1 - t0


def case(name: str, data: list[dict], steps: int, work: Path, bf16: bool) -> dict:
    start = time.perf_counter()
    if name == "tutorforge":
        tokens, seconds = run_tutorforge(data, steps, work, bf16)
    else:
        tokens, seconds = run_trl(data, steps, work, bf16, packing=name == "trl-packing")
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (default both)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = rows(args.rows)
    precisions = [p.strip() for p in args.precision.split(",")]
    if args.case:
        print(json.dumps(case(args.case, data, args.steps, args.work, precisions == ["bf16"])))
        return
    import torch

    from tutorforge.hardware import cpu_has_bf16

    results: dict[str, dict[str, dict]] = {}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    for precision in precisions:
        results[precision] = {}
        for name in CASES:
            with tempfile.TemporaryDirectory() as tmp:
                extra = ["--steps", str(args.steps), "--rows", str(args.rows), "--precision", precision]
                results[precision][name] = spawn(__file__, name, Path(tmp), env, extra)
            r = results[precision][name]
            print(f"  {precision} {name}: {r['tokens_per_s']:.1f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
    for precision, cases in results.items():
        ours = cases["tutorforge"]
        print(f"\n{precision}: {'trainer':<32}{'tokens':>9}{'seconds':>9}{'tok/s':>9}{'peak RSS MiB':>14}"
              f"{'tutorforge / this':>19}")
        for name, r in cases.items():
            ratio = ours["tokens_per_s"] / r["tokens_per_s"]
            print(f"{'':<{len(precision) + 2}}{CASES[name]:<32}{r['tokens']:>9}{r['seconds']:>9.1f}"
                  f"{r['tokens_per_s']:>9.1f}{r['peak_rss_mib']:>14.0f}{ratio:>19.2f}")
    print(f"(steps 2..{args.steps} of each, micro batch {MBS} x accumulation {ACCUM}, sequence_len {SEQ}, "
          f"LoRA r {LORA['r']}, gradient checkpointing off, {len(data)} rows of {DATA.name}, "
          f"torch threads {torch.get_num_threads()}, CPU bf16 {'yes' if cpu_has_bf16() else 'no (emulated)'})")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
