"""What the export benchmarks share: synthetic checkpoints and LoRA adapters built tensor by tensor,
a sampler of peak private RAM, and the runner that measures each case in its own process.

    from synthetic import bundled_tokenizer, write_checkpoint, build_adapter, Peaks, spawn, rounds

write_checkpoint saves any transformers config as a random bf16 checkpoint (N(0, STD) weights, norms
around 1) in shards of about `shard_bytes`, so building it needs about one shard of RAM; the tensor
names and shapes come from the model built on the meta device. build_adapter writes a random adapter
as PEFT saves one (fp32, nonzero B). Peaks samples RssAnon of this process and of its descendants
every SAMPLE_S; spawn runs one case of a benchmark script (`--case NAME --work DIR`) in a fresh
process, after flushing written files; rounds runs the cases in rounds of rotated order and keeps
each case's fastest time and highest peaks.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

LORA_R, LORA_ALPHA = 32, 64  # the benchmarks' adapter; scale alpha / r = 2 (peft LoraConfig, no rslora)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # every linear layer
STD = 0.02  # Llama's and Qwen3's initializer_range: the spread of the random weights and LoRA factors
BF16 = 2  # bytes per bf16 element
SHARD_BYTES = 512 << 20  # bytes per written shard: bounds the RAM the build itself needs
CHUNK = 1 << 24  # elements drawn at a time when filling a tensor
SAMPLE_S = 0.005  # RssAnon sampling period, as bench/heap.py


def bundled_tokenizer():
    """The bundled SmolLM2's tokenizer (transformers AutoTokenizer)."""
    from transformers import AutoTokenizer

    from tutorforge.models import resolve_base_model

    return AutoTokenizer.from_pretrained(resolve_base_model("smollm2").path)


def write_checkpoint(directory: Path, config, tokenizer, seed: int = 0,
                     shard_bytes: int = SHARD_BYTES) -> dict[str, tuple[int, ...]]:
    """`config` (a transformers PretrainedConfig) as a random bf16 checkpoint with `tokenizer` in
    `directory`; its tensor shapes."""
    directory.mkdir(parents=True)
    config.to_json_file(directory / "config.json")
    tokenizer.save_pretrained(directory)
    shapes = tensor_shapes(config)
    _write_shards(directory, shapes, seed, shard_bytes)
    return shapes


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
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


def _write_shards(directory: Path, shapes: dict[str, tuple[int, ...]], seed: int, shard_bytes: int) -> None:
    """The tensors in shards of about `shard_bytes` (safetensors save_file each) and their index."""
    import torch
    from safetensors.torch import save_file

    groups, size = [[]], 0
    for name, shape in shapes.items():
        if size and size + BF16 * math.prod(shape) > shard_bytes:
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


def adapted(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The tensors of `shapes` that the adapter updates (every linear layer of TARGETS)."""
    return {n: s for n, s in shapes.items() if n.endswith(tuple(f".{t}.weight" for t in TARGETS))}


def build_adapter(directory: Path, base: Path, shapes: dict[str, tuple[int, ...]], seed: int = 1) -> int:
    """A PEFT LoRA adapter (fp32, as PEFT saves one) on every linear layer of `shapes`; its tensor count."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in adapted(shapes).items():
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


def _status_mb(pid: int | str, field: str = "RssAnon") -> float:
    """`field` of /proc/PID/status (RssAnon, VmRSS) in MB; 0 when the process has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 1024
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
    """Peak RssAnon, every SAMPLE_S: of this process (own), of its descendants summed (converter:
    llama.cpp's converter runs as one), and of both together at one sample (total); and the peak
    VmRSS of this process (rss: mapped file pages included, which the kernel may reclaim)."""

    def __init__(self) -> None:
        self.own = self.converter = self.total = self.rss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(SAMPLE_S)

    def sample(self) -> None:
        pending, children = _children(os.getpid()), 0.0
        while pending:
            pid = pending.pop()
            children += _status_mb(pid)
            pending += _children(pid)
        own = _status_mb("self")
        self.own, self.converter = max(self.own, own), max(self.converter, children)
        self.total, self.rss = max(self.total, own + children), max(self.rss, _status_mb("self", "VmRSS"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def spawn(script: str, case: str, work: Path, env: dict[str, str], extra: Sequence[str] = ()) -> dict:
    """`script --case CASE --work WORK [extra]` in a fresh process; the JSON of its last line. The
    files the last case wrote are flushed first (os.sync), so that their write-back is not timed as
    part of this case."""
    os.sync()
    done = subprocess.run([sys.executable, script, "--case", case, "--work", str(work), *extra],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"case {case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rounds(pipelines: list[tuple[str, ...]], run: Callable[[str], dict], repeat: int, *,
           before: Callable[[str], None] | None = None,
           after: Callable[[str, int], None] | None = None) -> dict[str, dict]:
    """Each pipeline's cases `repeat` times, the order of the pipelines rotated every round, with
    `before(case)` ahead of each case and `after(case, round)` behind it; per case its fastest
    seconds, the highest of each other number, and every round's seconds."""
    runs: dict[str, list[dict]] = {case: [] for pipeline in pipelines for case in pipeline}
    for i in range(repeat):
        k = i % len(pipelines)
        for pipeline in pipelines[k:] + pipelines[:k]:
            for case in pipeline:
                if before:
                    before(case)
                runs[case].append(run(case))
                print(f"  round {i + 1}: {case} {runs[case][-1]['seconds']:.1f} s", flush=True)
                if after:
                    after(case, i)
    return {case: {**{key: (min if key == "seconds" else max)(r[key] for r in rs) for key in rs[0]},
                   "all_seconds": [round(r["seconds"], 2) for r in rs]} for case, rs in runs.items()}
