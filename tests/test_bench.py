"""bench/: the prepared GPU check runs its own code path on CPU (a tiny shape), so it cannot rot
while no GPU is at hand to run it on; the merge and export benchmark runs every case on a tiny Llama
and its checks hold: merge equals PEFT's merge, the one-pass GGUF equals the merge in f16."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT


def test_gpu_qlora_script_dry_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_qlora.py"), "--dry-run", "--steps", "2",
                          "--checkpoint", str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu (dry run)" and result["tokens_per_s"] > 0
    assert (tmp_path / "ckpt-dry" / "model.safetensors.index.json").is_file()


@pytest.mark.slow  # the bundled model's tokenizer (resolve_base_model), ~80 s of cases on 2 cores
def test_merge_export_bench_runs_every_case_and_its_merges_agree():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "merge_export.py"), "--shape", "tiny", "--repeat", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cases = result["cases"]
    assert sorted(cases) == ["export", "floor", "merge", "one_pass", "peft", "quantize"]
    assert all(c["seconds"] > 0 and c["peak_mb"] > 0 for c in cases.values())
    assert cases["floor"]["bytes_copied"] > result["sizes"]["checkpoint_mb"] * 2**20  # + the safetensors header
    assert len(result["ratios"]) == 8 and all(math.isfinite(r) and r > 0 for r in result["ratios"].values())
    checks = result["checks"]
    tensors = 2 * 9 + 3  # 2 layers of 7 linears and 2 norms; embeddings, final norm, lm_head
    assert checks["compared"] == "every tensor"
    # the tiny shape's merge is bit-identical to PEFT's (measured: 0 ulp; see the bench for larger shapes)
    assert checks["merge_vs_peft"] == {"tensors": tensors, "differ": 0, "max_abs": 0.0, "max_ulps": 0,
                                       "unequal_fraction": 0.0}
    assert checks["gguf_vs_merge"] == {"tensors": tensors, "differ": 0, "max_abs": 0.0}
    f = cases["export"]
    assert checks["verify_rows"] == 1 and f["positions"] > 0 and f["tokenization_mismatches"] == 0
    assert f["top1_agreement"] >= 0.99 and f["verify_failures"] == 0
    assert 0 < f["write_seconds"] < f["seconds"]
