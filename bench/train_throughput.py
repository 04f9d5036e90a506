"""Training throughput: tutorforge vs TRL's SFTTrainer (its default settings), in one run.

    .venv/bin/python bench/train_throughput.py [--steps 8] [--rows 400]

Same model (the bundled SmolLM2-135M-Instruct), data (../shared/data/code_alpaca_2k.json), LoRA
(r 16, alpha 32, all linear layers), sequence_len (512) and effective batch (micro batch 4 x
accumulation 2), on CPU. The measure is real (non-padding) tokens per second over the steps after
the first (warm-up) one. tutorforge's levers: packing, the LM head only where there are labels,
bf16 autocast where the CPU has it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "code_alpaca_2k.json"
SYSTEM = "You are a concise Python tutor."
LORA = {"r": 16, "alpha": 32}
SEQ, MBS, ACCUM, LR = 512, 4, 2, 2e-4


def rows(n: int) -> list[dict]:
    data = [r for r in json.loads(DATA.read_text()) if r["output"].strip()]
    return data[:n]


def run_tutorforge(data: list[dict], steps: int, workdir: Path) -> tuple[int, float]:
    import yaml

    from tutorforge.config import load_config
    from tutorforge.train import build_run, train_steps

    path = workdir / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    config = workdir / "config.yml"
    config.write_text(yaml.safe_dump({
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": "lora", "datasets": [{"path": str(path)}],
        "default_system_message": SYSTEM, "sequence_len": SEQ, "sample_packing": True,
        "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_target_linear": True,
        "micro_batch_size": MBS, "gradient_accumulation_steps": ACCUM, "max_steps": steps,
        "learning_rate": LR, "output_dir": str(workdir / "out"), "save_steps": 10_000}))
    run = build_run(load_config(config), config_dir=workdir, skip_bad_rows=True)
    (workdir / "out").mkdir(exist_ok=True)
    timed = []
    train_steps(run, {"step": 0}, progress=lambda step, total, row: timed.append(row))
    measured = timed[1:]
    return sum(r["tokens"] for r in measured), sum(r["tokens"] / r["tokens_per_s"] for r in measured)


def run_trl(data: list[dict], steps: int, workdir: Path) -> tuple[int, float]:
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

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    config = SFTConfig(output_dir=str(workdir / "trl"), use_cpu=True, max_length=SEQ, max_steps=steps,
                       per_device_train_batch_size=MBS, gradient_accumulation_steps=ACCUM, learning_rate=LR,
                       report_to=[], save_strategy="no", logging_steps=1, seed=42,
                       include_num_input_tokens_seen="non_padding")
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft, callbacks=[Clock()])
    trainer.train()
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return n1 - n0, t1 - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = rows(args.rows)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("trl SFTTrainer (defaults)", run_trl), ("tutorforge", run_tutorforge)):
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            tokens, seconds = fn(data, args.steps, work)
            results[name] = (tokens, seconds, tokens / seconds)
    base = results["trl SFTTrainer (defaults)"][2]
    print(f"\n{'trainer':<28}{'tokens':>10}{'seconds':>10}{'tok/s':>10}{'ratio':>8}")
    for name, (tokens, seconds, rate) in results.items():
        print(f"{name:<28}{tokens:>10}{seconds:>10.1f}{rate:>10.1f}{rate / base:>8.2f}")
    print(f"(steps 2..{args.steps} of each, micro batch {MBS} x accumulation {ACCUM}, sequence_len {SEQ}, "
          f"LoRA r {LORA['r']}, {len(data)} rows of {DATA.name}, "
          f"torch threads {__import__('torch').get_num_threads()})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
