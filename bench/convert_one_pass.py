"""Peak RAM and time of a LoRA export through llama.cpp's converter: one pass (the adapter merged as
the converter reads each tensor, convert_driver) vs merge's checkpoint then the converter, in one run.

    .venv/bin/python bench/convert_one_pass.py [--large] [--repeat 3]

A synthetic Qwen3 checkpoint (random bf16 tensors written shard by shard, ~0.8 GB; --large: the
Qwen3-1.7B shape untied, ~4 GB) with the bundled SmolLM2 tokenizer, and a random LoRA adapter as PEFT
saves one (r 32, alpha 64, every linear layer, nonzero B), are built in a temporary directory under
/tmp. Then each case runs in its own process: (c) the floor, convert_checkpoint on the base alone;
(a) one pass, convert_checkpoint(base, adapter=...); (b) merge.merge into a merged checkpoint, then
convert_checkpoint on it (two processes, reported apart and summed). Peak RAM is private memory
(RssAnon, sampled every 5 ms) of the process that holds the tensors: for a conversion, the
converter's own process (a child of the case process, found through /proc/PID/task/TID/children);
for merge, the case process. Mapped checkpoint pages are page cache, reclaimable, and not counted.
The cases run in rounds (--repeat), each round in a rotated order; a case's time is its fastest
round (the one least disturbed by other work on the machine) and its peak the highest; written files
are flushed to disk before each case, so none pays for the write-back of another's output. (c) and (b2)
do the same work on checkpoints of the same size, so their gap shows the timing noise. (a)'s and
(b)'s GGUF files are then compared tensor by tensor (gguf.GGUFReader).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

# Model shapes. default: small enough for a few minutes on 2 cores; large: Qwen3-1.7B's config.json
# (hidden 2048, intermediate 6144, 28 layers, 16 heads, 8 KV heads, head_dim 128, vocab 151936), untied.
SHAPES = {
    "default": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 16, "vocab_size": 65536},
    "large": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "vocab_size": 151936},
}
HEADS = {"num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128}  # Qwen3-0.6B/1.7B config.json
LORA_R, LORA_ALPHA = 32, 64  # the brief's adapter; scale alpha / r = 2 (peft LoraConfig, no rslora)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # every linear layer
STD = 0.02  # Qwen3Config.initializer_range: the spread of the random weights and LoRA factors
BF16 = 2  # bytes per bf16 element
SHARD_BYTES = 512 << 20  # bytes per written shard: bounds the RAM the build itself needs
CHUNK = 1 << 24  # elements drawn at a time when filling a tensor
SAMPLE_S = 0.005  # RssAnon sampling period, as bench/heap.py
CASES = ("floor", "one_pass", "merge", "convert_merged")


def build_base(directory: Path, shape: dict[str, int], seed: int = 0) -> dict[str, tuple[int, ...]]:
    """A random bf16 Qwen3 checkpoint with the bundled tokenizer in `directory`; its tensor shapes."""
    from transformers import AutoTokenizer, Qwen3Config

    from tutorforge.llamacpp_tools import model_template
    from tutorforge.models import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("smollm2").path)
    tokenizer.chat_template = model_template("Qwen-Qwen3-0.6B")
    vocab = max(shape["vocab_size"], len(tokenizer))  # every token id of the tokenizer has a row
    config = Qwen3Config(hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
                         num_hidden_layers=shape["num_hidden_layers"], vocab_size=vocab,
                         num_attention_heads=HEADS["num_attention_heads"],
                         num_key_value_heads=HEADS["num_key_value_heads"], head_dim=HEADS["head_dim"],
                         tie_word_embeddings=False, architectures=["Qwen3ForCausalLM"], dtype="bfloat16",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    directory.mkdir(parents=True)
    config.to_json_file(directory / "config.json")
    tokenizer.save_pretrained(directory)
    shapes = _tensor_shapes(config)
    _write_shards(directory, shapes, seed)
    return shapes


def _tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensor names and shapes, from the model built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _random(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """N(0, STD) values of `shape` (ones + noise for a norm's 1-D weight), drawn CHUNK at a time."""
    import torch

    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    for start in range(0, flat.numel(), CHUNK):
        flat[start:start + CHUNK].normal_(0.0, STD, generator=generator)
    if len(shape) == 1:
        out += 1.0
    return out


def _write_shards(directory: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """The tensors in shards of about SHARD_BYTES (safetensors save_file each) and their index."""
    import torch
    from safetensors.torch import save_file

    groups, size = [[]], 0
    for name, shape in shapes.items():
        if size and size + BF16 * math.prod(shape) > SHARD_BYTES:
            groups, size = groups + [[]], 0
        groups[-1].append(name)
        size += BF16 * math.prod(shape)
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, names in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: _random(shapes[n], generator, torch.bfloat16) for n in names}, directory / file,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(BF16 * math.prod(s) for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_adapter(directory: Path, base: Path, shapes: dict[str, tuple[int, ...]], seed: int = 1) -> int:
    """A PEFT LoRA adapter (fp32, as PEFT saves one) on every linear layer of `shapes`; its tensor count."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in ((n, s) for n, s in shapes.items()
                                              if n.endswith(tuple(f".{t}.weight" for t in TARGETS))):
        key = "base_model.model." + name.removesuffix(".weight")
        tensors[f"{key}.lora_A.weight"] = _random((LORA_R, in_features), generator, torch.float32)
        tensors[f"{key}.lora_B.weight"] = _random((out_features, LORA_R), generator, torch.float32)
    directory.mkdir(parents=True)
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base), "r": LORA_R,
              "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "modules_to_save": None}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return len(tensors)


def _anon_mb(pid: int | str) -> float:
    """RssAnon of process `pid` in MB; 0 when it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _children(pid: int) -> list[int]:
    """The child processes of every thread of `pid` (/proc/PID/task/TID/children)."""
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


class Peaks:
    """Peak RssAnon of this process, and of its descendants summed (the converter), every SAMPLE_S."""

    def __init__(self) -> None:
        self.own = self.converter = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(SAMPLE_S)

    def sample(self) -> None:
        pending, total = _children(os.getpid()), 0.0
        while pending:
            pid = pending.pop()
            total += _anon_mb(pid)
            pending += _children(pid)
        self.own, self.converter = max(self.own, _anon_mb("self")), max(self.converter, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_case(case: str, work: Path) -> dict[str, float]:
    """One case, in this process (a child of main): its seconds and peaks."""
    from tutorforge.llamacpp_tools import convert_checkpoint

    peaks = Peaks()
    start = time.perf_counter()
    if case == "floor":
        convert_checkpoint(work / "base", work / "c.gguf", outtype="f16")
    elif case == "one_pass":
        convert_checkpoint(work / "base", work / "a.gguf", outtype="f16", adapter=work / "adapter")
    elif case == "merge":
        from tutorforge.merge import merge

        merge(work / "base", work / "adapter", work / "merged")
    else:
        convert_checkpoint(work / "merged", work / "b.gguf", outtype="f16")
    seconds = time.perf_counter() - start
    peaks.stop()
    held = peaks.own if case == "merge" else peaks.converter  # the process that holds the tensors
    return {"seconds": seconds, "peak_mb": held, "case_process_mb": peaks.own}


def spawn(case: str, work: Path, env: dict[str, str]) -> dict[str, float]:
    """run_case in a fresh process; its JSON line back. The files the last case wrote are flushed
    first (os.sync), so that their write-back is not timed as part of this case."""
    os.sync()
    done = subprocess.run([sys.executable, __file__, "--case", case, "--work", str(work)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"case {case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rounds(work: Path, env: dict[str, str], repeat: int) -> dict[str, dict]:
    """Each case `repeat` times, rotating the order of the two pipelines and the floor every round;
    per case its fastest seconds and its highest peaks."""
    pipelines = [("floor",), ("one_pass",), ("merge", "convert_merged")]
    runs: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for i in range(repeat):
        for pipeline in pipelines[i % 3:] + pipelines[:i % 3]:
            for case in pipeline:
                if case == "merge":  # merge skips an output that already holds this merge
                    shutil.rmtree(work / "merged", ignore_errors=True)
                runs[case].append(spawn(case, work, env))
                print(f"  round {i + 1}: {case} {runs[case][-1]['seconds']:.1f} s", flush=True)
    return {case: {"seconds": min(r["seconds"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs),
                   "case_process_mb": max(r["case_process_mb"] for r in rs),
                   "all_seconds": [round(r["seconds"], 2) for r in rs]} for case, rs in runs.items()}


def compare(a: Path, b: Path) -> tuple[int, int]:
    """(tensors, tensors whose type, shape or bytes differ) between GGUF files `a` and `b`."""
    import numpy as np
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    differ = len(set(ta) ^ set(tb))
    for name in set(ta) & set(tb):
        x, y = ta[name], tb[name]
        same = x.tensor_type == y.tensor_type and list(x.shape) == list(y.shape) and np.array_equal(
            np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8))
        differ += not same
    return len(ta), differ


def _sizes(shapes: dict[str, tuple[int, ...]], adapter_file: Path) -> dict[str, float]:
    """The sizes the peaks are to be read against, in MB."""
    largest = max(math.prod(s) for s in shapes.values())
    adapted = max(math.prod(s) for n, s in shapes.items() if n.endswith(tuple(f".{t}.weight" for t in TARGETS)))
    return {"checkpoint_mb": sum(BF16 * math.prod(s) for s in shapes.values()) / 2**20,
            "largest_mb": BF16 * largest / 2**20, "largest_fp32_mb": 4 * largest / 2**20,
            "adapted_fp32_mb": 4 * adapted / 2**20, "adapter_mb": adapter_file.stat().st_size / 2**20}


def report(r: dict[str, dict], sizes: dict[str, float], checks: dict[str, int]) -> dict:
    """Print the table and ratios; the numbers as one dict."""
    two = {"seconds": r["merge"]["seconds"] + r["convert_merged"]["seconds"],
           "peak_mb": max(r["merge"]["peak_mb"], r["convert_merged"]["peak_mb"])}
    rows = [("(c) floor: convert base, no adapter", r["floor"]),
            ("(a) one pass: convert base + adapter", r["one_pass"]),
            ("(b1) merge -> merged checkpoint", r["merge"]), ("(b2) convert merged checkpoint", r["convert_merged"]),
            ("(b) two-step: merge + convert", two)]
    print(f"checkpoint {sizes['checkpoint_mb']:.0f} MB bf16, largest tensor {sizes['largest_mb']:.0f} MB "
          f"({sizes['largest_fp32_mb']:.0f} MB fp32), largest adapted tensor in fp32 "
          f"{sizes['adapted_fp32_mb']:.0f} MB, "
          f"adapter {sizes['adapter_mb']:.0f} MB ({checks['adapter_tensors']} tensors)")
    print(f"{'case':<40}{'seconds':>9}{'peak RssAnon MB':>17}   every round's seconds")
    for label, row in rows:
        each = " ".join(f"{s:.1f}" for s in row.get("all_seconds", []))
        print(f"{label:<40}{row['seconds']:>9.1f}{row['peak_mb']:>17.0f}   {each}")
    ratios = {"a_over_c_time": r["one_pass"]["seconds"] / r["floor"]["seconds"],
              "a_over_c_peak": r["one_pass"]["peak_mb"] / r["floor"]["peak_mb"],
              "a_over_b_time": r["one_pass"]["seconds"] / two["seconds"]}
    print(f"(a)/(c): time {ratios['a_over_c_time']:.2f}, peak {ratios['a_over_c_peak']:.2f};  "
          f"(a)/(b): time {ratios['a_over_b_time']:.2f}")
    print(f"(a) vs (b) GGUF: {checks['tensors']} tensors, {checks['a_vs_b_differ']} differ -> "
          f"{'identical tensor bytes' if not checks['a_vs_b_differ'] else 'NOT IDENTICAL'}; "
          f"(a) vs (c): {checks['a_vs_c_differ']} tensors differ (the adapted ones)")
    print(f"(b2)/(c): time {r['convert_merged']['seconds'] / r['floor']['seconds']:.2f} (the same work: the timing "
          "noise); peak: RssAnon of the converter process for a conversion, of the merge process for merge; "
          "seconds: the fastest round")
    return {"cases": r, "two_step": two, "ratios": ratios, "sizes": sizes, "checks": checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--large", action="store_true", help="the Qwen3-1.7B shape (~4 GB bf16), not ~0.8 GB")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the four cases (default 3)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.work)))
        return
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # each process's heap as it would be run, as bench/heap.py
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="tutorforge-convert-bench-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        shapes = build_base(work / "base", SHAPES["large" if args.large else "default"])
        n_adapter = build_adapter(work / "adapter", work / "base", shapes)
        print(f"built the checkpoint and adapter in {time.perf_counter() - start:.0f} s", flush=True)
        results = rounds(work, env, args.repeat)
        tensors, a_vs_b = compare(work / "a.gguf", work / "b.gguf")
        _, a_vs_c = compare(work / "a.gguf", work / "c.gguf")
        sizes = _sizes(shapes, work / "adapter" / "adapter_model.safetensors")
        checks = {"tensors": tensors, "a_vs_b_differ": a_vs_b, "a_vs_c_differ": a_vs_c, "adapter_tensors": n_adapter}
        numbers = report(results, sizes, checks)
    print(json.dumps({"shape": "large" if args.large else "default", **numbers}))


if __name__ == "__main__":
    main()
