"""Peak RAM and time of merging a LoRA and of exporting it as GGUF at Llama scale, against PEFT's
usual path and the disk floor, in one run.

    .venv/bin/python bench/merge_export.py [--shape 1b|8b|tiny] [--repeat 1] [--no-verify]
    .venv/bin/python bench/merge_export.py --shape 8b --dry-run     # the shape, disk and plan; builds nothing

A synthetic Llama checkpoint (LlamaForCausalLM, random bf16 tensors written shard by shard, untied
lm_head, the bundled SmolLM2 tokenizer, vocabulary padded so every token id has a row): --shape 1b is
Llama-3.2-1B's shape (~3 GB), 8b is Llama-3-8B's (~16 GB, in 2 GiB shards), tiny a few MB for the
test. A random LoRA adapter as PEFT saves one (r 32, alpha 64, q, k, v, o, gate, up, down, nonzero B).
Each case runs in its own process, in rounds of rotated order (--repeat; a case's time is its
fastest round, its peak the highest): (a) merge.merge into a merged checkpoint; (b) one pass, base +
adapter into an f16 GGUF (gguf_write.write_gguf, after heap.bound_heap as export does; no
verification); (c) PEFT's usual path: from_pretrained in bf16, PeftModel.from_pretrained,
merge_and_unload, save_pretrained; (d) the disk floor: every byte of the base's shards read and
written once through a 16 MiB buffer. merge fsyncs each shard it writes; (b), (c) and (d) leave
write-back to the kernel; every case starts after os.sync, so none pays for another's write-back.
Then, once each: (e) q4_k_m of (b)'s GGUF by llama.cpp's quantizer (quantize.quantize, in process
through llama-cpp-python); (f) export.export_model (f16, no K-quant) verified on --verify-rows of the
shipped lessons (default 1, the fewest it takes; --no-verify skips it; on 8b the fp32 reference does
not fit in RAM and is read from disk a layer at a time after a merge into scratch). Peak RAM is
private memory (RssAnon, sampled every 5 ms) of the case's process and its children together; VmRSS
(mapped file pages too) is in the JSON as rss_mb. Each output is deleted once measured, so the disk
holds at most the base, one output and (b)'s GGUF (or, in (f), its GGUF and scratch merge); the run
refuses to start on a disk with less free.
Checks: (a)'s merged tensors against (c)'s (every tensor up to a 1 GiB checkpoint, else those of the
first and last layers), and (b)'s GGUF tensors against (a)'s cast to the GGUF's type (q and k
permuted as llama.cpp wants them). The memory plan's peaks (tutorforge.memory) are printed beside.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthetic import (
    BF16,
    LORA_ALPHA,
    LORA_R,
    ROOT,
    SHARD_BYTES,
    Peaks,
    adapted,
    build_adapter,
    bundled_tokenizer,
    rounds,
    spawn,
    tensor_shapes,
    write_checkpoint,
)

# 1b and 8b: the model's config.json on the Hugging Face Hub (the id beside each), lm_head untied; tiny: the test's.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 49152, "max_position_embeddings": 2048},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,  # meta-llama/Llama-3.2-1B
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
           "max_position_embeddings": 131072},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,  # meta-llama/Meta-Llama-3-8B
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
           "max_position_embeddings": 8192},
}
ROPE_THETA = 500000.0  # Llama 3's rope base (both config.json); tiny keeps it too
SHARDS = {"tiny": SHARD_BYTES, "1b": SHARD_BYTES, "8b": 2 << 30}  # 8b: 8 shards; the build holds one
CASES = ("merge", "one_pass", "peft", "floor")
ONCE = ("quantize", "export")
LABELS = {"merge": "(a) merge.merge -> merged checkpoint", "one_pass": "(b) one pass -> f16 GGUF",
          "peft": "(c) PEFT merge_and_unload + save", "floor": "(d) disk floor: read + write",
          "quantize": "(e) q4_k_m of (b)'s GGUF", "export": "(f) export_model f16, verified"}
OUTPUTS = {"merge": "out-merge", "one_pass": "b.gguf", "peft": "out-peft", "floor": "out-floor",
           "quantize": "b.Q4_K_M.gguf", "export": "out-export"}
COPY_BUFFER = 16 << 20  # bytes per read and write of the disk floor
CHECK_ALL_BYTES = 1 << 30  # checkpoints up to this size are compared tensor by tensor in full
GIB = 2**30


def llama_config(shape: str, tokenizer):
    """The LlamaConfig of `shape` with `tokenizer`'s special ids, vocabulary padded to every token id."""
    from transformers import LlamaConfig

    dims = SHAPES[shape]
    return LlamaConfig(**{**dims, "vocab_size": max(dims["vocab_size"], len(tokenizer))},
                       rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
                       dtype="bfloat16", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


def disk_floor(base: Path, out: Path) -> int:
    """Every byte of `base`'s shards read and written once to `out`, COPY_BUFFER at a time; the bytes."""
    view, total = memoryview(bytearray(COPY_BUFFER)), 0
    out.mkdir()
    for shard in sorted(base.glob("*.safetensors")):
        with open(shard, "rb", buffering=0) as src, open(out / shard.name, "wb", buffering=0) as dst:
            while n := src.readinto(view):
                dst.write(view[:n])
                total += n
    return total


def peft_merge(base: Path, adapter: Path, out: Path) -> None:
    """PEFT's usual path: the whole model in bf16, the adapter on it, merged, saved."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out))


def _called(function: Callable, *args) -> dict:
    function(*args)
    return {}


def prepare(case: str, work: Path, verify_rows: int) -> Callable[[], dict]:
    """`case` as a call, its modules imported (the time of importing torch is no case's); the call
    returns what the case has to say beyond its time and peak. The floor imports nothing."""
    base, adapter, out = work / "base", work / "adapter", work / OUTPUTS[case]
    if case == "floor":
        return lambda: {"bytes_copied": disk_floor(base, out)}
    import transformers  # noqa: F401  (imported ahead: the tokenizer and PEFT's path need it)

    if case == "peft":
        import peft  # noqa: F401

        return lambda: _called(peft_merge, base, adapter, out)
    if case == "quantize":
        import llama_cpp  # noqa: F401

        from tutorforge.quantize import quantize

        return lambda: _called(quantize, work / OUTPUTS["one_pass"], out, "q4_k_m")
    if case == "export":
        import llama_cpp  # noqa: F401, I001
        import peft  # noqa: F401

        from tutorforge import export, verify  # noqa: F401

        return lambda: _export(work, verify_rows)
    from tutorforge.gguf_write import Source, write_gguf
    from tutorforge.heap import bound_heap
    from tutorforge.merge import merge

    if case == "merge":
        return lambda: _called(merge, base, adapter, out)

    def one_pass() -> dict:
        bound_heap()  # as export_model does before it writes
        write_gguf(Source(base, adapter), out, "f16")
        return {}

    return one_pass


def _export(work: Path, verify_rows: int) -> dict:
    """(f): export_model on `verify_rows` of the shipped lessons; when writing ended, and the numbers."""
    from tutorforge.export import default_verify_rows, export_model
    from tutorforge.gguf_write import Source

    rows = default_verify_rows()[:verify_rows]
    start, written = time.perf_counter(), [0.0]

    def progress(i: int, n: int) -> None:
        if i == n:
            written[0] = time.perf_counter() - start

    report = export_model(Source(work / "base", work / "adapter"), work / OUTPUTS["export"], name="bench",
                          outtype="f16", quantizations=(), verify_rows=rows,
                          progress=progress)
    result = report["verification"]["f16"]
    return {"write_seconds": written[0], "top1_agreement": result["top1_agreement"],
            "positions": result["positions"], "tokenization_mismatches": result["tokenization_mismatches"],
            "verify_failures": len(report["failures"])}


def run_case(case: str, work: Path, verify_rows: int) -> dict:
    """One case, in this process (a child of main): its seconds, peaks and own numbers."""
    act = prepare(case, work, verify_rows)
    peaks = Peaks()
    start = time.perf_counter()
    extra = act()
    seconds = time.perf_counter() - start
    peaks.stop()
    return {"seconds": seconds, "peak_mb": peaks.total, "own_mb": peaks.own, "children_mb": peaks.converter,
            "rss_mb": peaks.rss, **extra}


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def check_names(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The tensors the checks compare: all of a checkpoint up to CHECK_ALL_BYTES, else the first and
    last decoder layers' and the final norm."""
    if sum(BF16 * math.prod(s) for s in shapes.values()) <= CHECK_ALL_BYTES:
        return list(shapes)
    last = max(int(n.split(".")[2]) for n in shapes if n.startswith("model.layers."))
    keep = ("model.layers.0.", f"model.layers.{last}.", "model.norm.")
    return [n for n in shapes if n.startswith(keep)]


def keep_tensors(checkpoint: Path, names: list[str], dest: Path) -> None:
    """`names`' tensors of a checkpoint directory saved to `dest` (what the checks read later)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    found = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({n: f.get_tensor(n) for n in f.keys() if n in names})  # noqa: SIM118 (safe_open)
    missing = sorted(set(names) - set(found))
    if missing:
        sys.exit(f"{checkpoint}: {len(missing)} tensors missing, e.g. {missing[0]}")
    save_file(found, str(dest))


def measure(work: Path, env: dict[str, str], repeat: int, verify_rows: int, names: list[str]) -> dict[str, dict]:
    """The four cases in rounds, then (e) once; every output deleted once measured but (b)'s GGUF
    of the last round (the checks read it), with the tensors the checks compare kept from round 1."""
    def before(case: str) -> None:
        remove(work / OUTPUTS[case])  # only one of (b)'s GGUFs on disk at a time

    def after(case: str, i: int) -> None:
        if i == 0 and case in ("merge", "peft"):
            keep_tensors(work / OUTPUTS[case], names, work / f"check-{case}.safetensors")
        if case != "one_pass":
            remove(work / OUTPUTS[case])

    results = rounds([(c,) for c in CASES], lambda case: run_once(case, work, env, verify_rows), repeat,
                     before=before, after=after)
    results["quantize"] = run_once("quantize", work, env, verify_rows)
    return results


def run_once(case: str, work: Path, env: dict[str, str], verify_rows: int) -> dict:
    """`case` in its own process; its output deleted afterwards unless it is (b)'s GGUF."""
    result = spawn(__file__, case, work, env, ["--verify-rows", str(verify_rows)])
    if case in ONCE:
        print(f"  {case} {result['seconds']:.1f} s", flush=True)
        remove(work / OUTPUTS[case])
    return result


def ulps(x, y) -> int:
    """The largest distance between two bf16 tensors in units in the last place."""
    import torch

    def ordered(t):
        bits = t.contiguous().view(torch.int16).int()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)

    return int((ordered(x) - ordered(y)).abs().max()) if x.numel() else 0


def compare_merges(work: Path) -> dict:
    """(a)'s kept tensors against (c)'s: how many differ, by how much, in bf16 ulps."""
    from safetensors.torch import load_file

    a, c = load_file(str(work / "check-merge.safetensors")), load_file(str(work / "check-peft.safetensors"))
    if set(a) != set(c):
        return {"tensors": len(a), "differ": len(set(a) ^ set(c)), "max_abs": math.inf, "max_ulps": -1}
    differ, max_abs, max_ulps, elements, unequal = 0, 0.0, 0, 0, 0
    for name, x in a.items():
        y = c[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return {"tensors": len(a), "differ": len(a), "max_abs": math.inf, "max_ulps": -1}
        ne = int((x != y).sum())
        differ, unequal, elements = differ + bool(ne), unequal + ne, elements + x.numel()
        max_abs = max(max_abs, float((x.float() - y.float()).abs().max()))
        max_ulps = max(max_ulps, ulps(x, y))
    return {"tensors": len(a), "differ": differ, "max_abs": max_abs, "max_ulps": max_ulps,
            "unequal_fraction": unequal / elements}


def compare_gguf(work: Path, config: dict) -> dict:
    """(b)'s GGUF tensors against (a)'s kept ones cast to the GGUF tensor's type (f16 for matrices,
    f32 for norms), q and k permuted as llama.cpp's Llama wants: how many differ, by how much."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from tutorforge.gguf_write import permute_qk

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    tensors = {t.name: t for t in gguf.GGUFReader(work / OUTPUTS["one_pass"]).tensors}
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    differ, max_abs = 0, 0.0
    kept = load_file(str(work / "check-merge.safetensors"))
    for name, x in kept.items():
        found = tensors.get(names.get_name(name, try_suffixes=(".weight",)) or "")
        module = name.rsplit(".", 2)[-2]
        if module in heads:
            x = permute_qk(x, heads[module])
        data = np.asarray(found.data) if found is not None else None
        if data is None or data.dtype not in (np.float16, np.float32) or data.size != x.numel():
            differ += 1
            continue
        expected = x.to(torch.float16 if data.dtype == np.float16 else torch.float32).numpy()
        data = data.reshape(expected.shape)
        differ += not np.array_equal(data.view(np.uint8), expected.view(np.uint8))
        max_abs = max(max_abs, float(np.abs(data.astype(np.float32) - expected.astype(np.float32)).max()))
    return {"tensors": len(kept), "differ": differ, "max_abs": max_abs}


def plan_predictions(base: Path) -> dict[str, float]:
    """The memory plan's peaks for this shape and adapter, in MB: the Shape from the checkpoint's
    config.json (shapes.shape_from_config), the Settings from a config of the adapter (plan.settings)."""
    import yaml

    from tutorforge import hardware, memory, plan, shapes
    from tutorforge.config import parse
    from tutorforge.verify import available_ram

    text = yaml.safe_dump({"base_model": str(base), "adapter": "lora", "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
                           "lora_target_linear": True, "datasets": [{"path": str(ROOT / "data" / "python_tutor.jsonl"),
                                                                     "type": "alpaca"}]})
    report = parse(text, "bench.yml")
    if report.errors or report.config is None:
        sys.exit(f"the memory plan's config: {report.render()}")
    shape = shapes.shape_from_config(base / "config.json", "bench")
    s = plan.settings(report.config, hardware.detect(), shape.layers, shape)
    plain, quantizing = memory.streaming(s, shape, False), memory.streaming(s, shape, True)
    verifying, in_ram = memory.verifying_gb(shape, available_ram() / GIB)
    mb = 1024  # the plan's GB are GiB
    return {"merge": plain.merging_gb() * mb, "one_pass": plain.exporting_gb() * mb,
            "quantize": quantizing.exporting_gb() * mb, "export": max(plain.exporting_gb(), verifying) * mb,
            "reference_in_ram": float(in_ram)}


def checkpoint_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(BF16 * math.prod(s) for s in shapes.values())


def check_disk(directory: Path, shapes: dict[str, tuple[int, ...]], free: int | None = None) -> int:
    """The bytes the run needs on `directory`'s disk: the base and two outputs at once (one and
    (b)'s GGUF, or (f)'s GGUF and its scratch merge), 4 GiB to spare (the kept check tensors);
    exits when fewer are free."""
    needed = 3 * checkpoint_bytes(shapes) + 4 * GIB
    free = shutil.disk_usage(directory).free if free is None else free
    if free < needed:
        sys.exit(f"{directory}: the run needs {needed / GIB:.1f} GiB of disk but {free / GIB:.1f} GiB are free; "
                 "free some space or give --dir on another disk")
    return needed


def report(shape: str, r: dict[str, dict], plan_mb: dict[str, float], checks: dict, sizes: dict) -> dict:
    """Print the table, the ratios and the checks; the numbers as one dict."""
    from tutorforge.verify import THRESHOLDS

    print(f"Llama {shape} shape: {sizes['params'] / 1e9:.2f}B parameters, checkpoint {sizes['checkpoint_mb']:.0f} MB "
          f"bf16 in {sizes['shards']} shards; adapter {sizes['adapter_mb']:.0f} MB ({sizes['adapter_tensors']} "
          f"tensors, r {LORA_R}, alpha {LORA_ALPHA})")
    print(f"{'case':<40}{'seconds':>9}{'peak RssAnon MB':>17}{'plan MB':>9}   every round's seconds")
    for case in (*CASES, *ONCE):
        if case not in r:
            print(f"{LABELS[case]:<40}  not run (--no-verify)")
            continue
        plan = f"{plan_mb[case]:>9.0f}" if case in plan_mb else f"{'-':>9}"
        each = " ".join(f"{x:.1f}" for x in r[case].get("all_seconds", []))
        print(f"{LABELS[case]:<40}{r[case]['seconds']:>9.1f}{r[case]['peak_mb']:>17.0f}{plan}   {each}")
    ratios = {f"{x}_over_{y}_{k}": r[cx][key] / r[cy][key]
              for (x, cx), (y, cy) in ((("b", "one_pass"), ("d", "floor")), (("b", "one_pass"), ("c", "peft")),
                                       (("a", "merge"), ("d", "floor")), (("a", "merge"), ("c", "peft")))
              for k, key in (("time", "seconds"), ("peak", "peak_mb"))}
    print("  ".join(f"({p[0]})/({p[-1]}): time {ratios[p + '_time']:.2f}, peak {ratios[p + '_peak']:.2f};"
                    for p in ("b_over_d", "b_over_c", "a_over_d", "a_over_c")))
    m, g = checks["merge_vs_peft"], checks["gguf_vs_merge"]
    print(f"(a) vs (c): {m['tensors']} tensors compared ({checks['compared']}), {m['differ']} differ; max abs "
          f"difference {m['max_abs']:.3g}, at most {m['max_ulps']} bf16 ulp")
    print(f"(b) vs (a) cast to the GGUF's types: {g['tensors']} tensors, {g['differ']} differ; max abs "
          f"difference {g['max_abs']:.3g}")
    if "export" in r:
        f = r["export"]
        print(f"(f) verified on {checks['verify_rows']} row(s) of the shipped lessons ({f['positions']} positions): "
              f"top-1 agreement {f['top1_agreement']:.2%} (export's bar for f16: {THRESHOLDS['f16']:.0%}), "
              f"{f['tokenization_mismatches']} tokenization mismatches, {f['verify_failures']} failures; "
              f"writing took {f['write_seconds']:.1f} s of {f['seconds']:.1f} s")
    in_ram = "in RAM" if plan_mb["reference_in_ram"] else "read from disk a layer at a time"
    print(f"peak: RssAnon of the case's process and its children; seconds: the fastest round; plan: "
          f"tutorforge.memory (merging_gb, exporting_gb; (f): with verifying_gb, reference {in_ram})")
    return {"shape": shape, "cases": r, "ratios": ratios, "plan_mb": plan_mb, "checks": checks, "sizes": sizes}


def build(work: Path, shape: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """The synthetic base and adapter in `work`; the base's tensor shapes and the adapter's tensor count."""
    tokenizer = bundled_tokenizer()
    shapes = write_checkpoint(work / "base", llama_config(shape, tokenizer), tokenizer, shard_bytes=SHARDS[shape])
    return shapes, build_adapter(work / "adapter", work / "base", shapes)


def sizes_of(work: Path, shapes: dict[str, tuple[int, ...]], adapter_tensors: int) -> dict:
    return {"params": sum(math.prod(s) for s in shapes.values()), "checkpoint_mb": checkpoint_bytes(shapes) / 2**20,
            "shards": len(list((work / "base").glob("*.safetensors"))), "adapter_tensors": adapter_tensors,
            "adapter_mb": (work / "adapter" / "adapter_model.safetensors").stat().st_size / 2**20,
            "adapted_tensors": len(adapted(shapes))}


def dry_run(shape: str, directory: Path) -> None:
    """The shape's config, tensors, disk need and the plan's peaks, without building the checkpoint."""
    tokenizer = bundled_tokenizer()
    config = llama_config(shape, tokenizer)
    shapes = tensor_shapes(config)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        config.to_json_file(Path(tmp) / "config.json")
        plan_mb = plan_predictions(Path(tmp))
    params = sum(math.prod(s) for s in shapes.values())
    print(json.dumps({"shape": shape, "config": config.to_dict(), "tensors": len(shapes), "params": params,
                      "checkpoint_gb": checkpoint_bytes(shapes) / GIB, "adapted_tensors": len(adapted(shapes)),
                      "shards": math.ceil(checkpoint_bytes(shapes) / SHARDS[shape]), "plan_mb": plan_mb,
                      "disk_needed_gb": check_disk(directory, shapes) / GIB,
                      "disk_free_gb": shutil.disk_usage(directory).free / GIB}))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="1b", help="Llama-3.2-1B's (default), Llama-3-8B's, or tiny")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the four cases (default 1)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="run (f), the verified export (default: on; --no-verify skips it)")
    parser.add_argument("--verify-rows", type=int, default=1, help="rows (f) verifies on (default 1, the fewest)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the work directory goes (/tmp)")
    parser.add_argument("--dry-run", action="store_true", help="print the shape, disk need and plan; build nothing")
    parser.add_argument("--case", choices=(*CASES, *ONCE), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.work, args.verify_rows)))
        return
    if args.dry_run:
        return dry_run(args.shape, args.dir)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # each process's heap as it would be run, as bench/heap.py
    check_disk(args.dir, tensor_shapes(llama_config(args.shape, bundled_tokenizer())))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="tutorforge-merge-bench-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        shapes, adapter_tensors = build(work, args.shape)
        print(f"built the checkpoint and adapter in {time.perf_counter() - start:.0f} s", flush=True)
        names = check_names(shapes)
        results = measure(work, env, args.repeat, args.verify_rows, names)
        config = json.loads((work / "base" / "config.json").read_text())
        checks = {"merge_vs_peft": compare_merges(work), "gguf_vs_merge": compare_gguf(work, config),
                  "compared": "every tensor" if len(names) == len(shapes) else "the first and last layers' tensors",
                  "verify_rows": args.verify_rows if args.verify else 0}
        if args.verify:
            remove(work / OUTPUTS["one_pass"])  # checked: room for (f)'s GGUF and its scratch merge
            results["export"] = run_once("export", work, env, args.verify_rows)
        numbers = report(args.shape, results, plan_predictions(work / "base"), checks,
                         sizes_of(work, shapes, adapter_tensors))
    print(json.dumps(numbers))


if __name__ == "__main__":
    main()
