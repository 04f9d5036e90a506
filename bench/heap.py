"""Peak RAM and speed with glibc's default heap vs tutorforge's bounded heap (heap.bound_heap),
in one run: each case in its own process.

    .venv/bin/python bench/heap.py [--steps 6]

Two workloads on the bundled SmolLM2-135M-Instruct: training (as bench/train_throughput.py: LoRA
r 16 on all linear layers, micro batch 4 x 2, packed 512-token rows of ../shared/data/code_alpaca_2k.json)
and the export's PyTorch reference read from disk layer by layer (verify.reference_model as on a
machine without the RAM for it: 10 sequences of 256 tokens). Peak RAM is the process's private
memory (RssAnon, sampled every 5 ms): pages of a mapped checkpoint are page cache, reclaimable.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, os, sys, tempfile, threading, time
from pathlib import Path
sys.path[:0] = [sys.argv[1] + "/src", sys.argv[1] + "/bench"]
workload, bounded, steps = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
from tutorforge.heap import bound_heap
if bounded:
    assert bound_heap()
def anon_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024
peak = [anon_mb()]
def sample():
    while True:
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
with tempfile.TemporaryDirectory() as tmp:
    if workload == "train":
        import train_throughput as tt
        tokens, seconds = tt.run_tutorforge(tt.rows(400), steps, Path(tmp))
        rate = tokens / seconds
    else:
        import torch
        from tutorforge import verify
        from tutorforge.models import resolve_base_model
        torch.manual_seed(0)
        sequences = [torch.randint(0, 49000, (256,)).tolist() for _ in range(10)]
        start = time.perf_counter()
        with verify.reference_model(Path(resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct").path), None,
                                    scratch=Path(tmp) / "scratch", ram_bytes=1) as model:
            verify.reference_predictions(model, sequences)
        rate = 2560 / (time.perf_counter() - start)
print(json.dumps({"peak_mb": max(peak[0], anon_mb()), "tok_s": rate}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    print(f"{'workload':<26}{'heap':<10}{'peak RAM MB':>12}{'tok/s':>9}{'RAM ratio':>11}{'speed ratio':>13}")
    for workload in ("train", "reference"):
        results = {}
        for bounded in (False, True):
            out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), workload, str(int(bounded)), str(args.steps)],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            results[bounded] = json.loads(out.stdout.strip().splitlines()[-1])
        base = results[False]
        for bounded, r in results.items():
            print(f"{workload:<26}{'bounded' if bounded else 'glibc':<10}{r['peak_mb']:>12.0f}{r['tok_s']:>9.1f}"
                  f"{r['peak_mb'] / base['peak_mb']:>11.2f}{r['tok_s'] / base['tok_s']:>13.2f}")
    print(f"(training: steps 2..{args.steps}; reference: the bundled model read from disk, 10 x 256 tokens; "
          "ratios are bounded / glibc's default)")


if __name__ == "__main__":
    main()
