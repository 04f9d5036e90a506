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
import tempfile
import time
from pathlib import Path

from synthetic import BF16, TARGETS, Peaks, build_adapter, bundled_tokenizer, rounds, spawn, write_checkpoint

# Model shapes. default: small enough for a few minutes on 2 cores; large: Qwen3-1.7B's config.json
# (hidden 2048, intermediate 6144, 28 layers, 16 heads, 8 KV heads, head_dim 128, vocab 151936), untied.
SHAPES = {
    "default": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 16, "vocab_size": 65536},
    "large": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "vocab_size": 151936},
}
HEADS = {"num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128}  # Qwen3-0.6B/1.7B config.json
CASES = ("floor", "one_pass", "merge", "convert_merged")


def build_base(directory: Path, shape: dict[str, int], seed: int = 0) -> dict[str, tuple[int, ...]]:
    """A random bf16 Qwen3 checkpoint with the bundled tokenizer in `directory`; its tensor shapes."""
    from transformers import Qwen3Config

    from tutorforge.llamacpp_tools import model_template

    tokenizer = bundled_tokenizer()
    tokenizer.chat_template = model_template("Qwen-Qwen3-0.6B")
    vocab = max(shape["vocab_size"], len(tokenizer))  # every token id of the tokenizer has a row
    config = Qwen3Config(hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
                         num_hidden_layers=shape["num_hidden_layers"], vocab_size=vocab,
                         num_attention_heads=HEADS["num_attention_heads"],
                         num_key_value_heads=HEADS["num_key_value_heads"], head_dim=HEADS["head_dim"],
                         tie_word_embeddings=False, architectures=["Qwen3ForCausalLM"], dtype="bfloat16",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return write_checkpoint(directory, config, tokenizer, seed)


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


def run_rounds(work: Path, env: dict[str, str], repeat: int) -> dict[str, dict]:
    """Each case `repeat` times, rotating the order of the two pipelines and the floor every round;
    per case its fastest seconds and its highest peaks."""
    def before(case: str) -> None:
        if case == "merge":  # merge skips an output that already holds this merge
            shutil.rmtree(work / "merged", ignore_errors=True)

    pipelines = [("floor",), ("one_pass",), ("merge", "convert_merged")]
    return rounds(pipelines, lambda case: spawn(__file__, case, work, env), repeat, before=before)


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
        results = run_rounds(work, env, args.repeat)
        tensors, a_vs_b = compare(work / "a.gguf", work / "b.gguf")
        _, a_vs_c = compare(work / "a.gguf", work / "c.gguf")
        sizes = _sizes(shapes, work / "adapter" / "adapter_model.safetensors")
        checks = {"tensors": tensors, "a_vs_b_differ": a_vs_b, "a_vs_c_differ": a_vs_c, "adapter_tensors": n_adapter}
        numbers = report(results, sizes, checks)
    print(json.dumps({"shape": "large" if args.large else "default", **numbers}))


if __name__ == "__main__":
    main()
