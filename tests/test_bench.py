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


@pytest.mark.slow  # the bundled model's tokenizer (resolve_base_model), ~15 s on 2 cores
def test_qlora_cpu_bench_quantises_every_linear_and_steps_the_adapter(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "qlora_8b_cpu.py"), "--shape", "tiny", "--steps", "2",
                          "--sequence-len", "64", "--bf16", "false", "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    config = json.loads((tmp_path / "base-tiny" / "config.json").read_text())
    layers, hidden, inter = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    assert result["linear4bit_modules"] == 7 * layers  # the base's every linear layer in NF4
    # LoRA r 32 on all seven: A (r x in) and B (out x r) of q, k, v, o, gate, up, down
    fans = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter),
            (inter, hidden)]
    assert result["trainable_params"] == layers * sum(32 * (i + o) for i, o in fans)
    assert len(result["step_s"]) == 2 and all(s > 0 for s in result["step_s"])
    # a random model's loss is about ln(vocab); the 8-bit AdamW moved B off zero (lr 2e-4 a step)
    assert abs(result["loss"][0] - math.log(config["vocab_size"])) < 1.0
    assert 1e-4 < result["lora_b_moved"] < 1e-2
    assert result["private_peak_gb"] > 0.2 and result["plan_gb"] > 0.2 and result["plan_fits"]
    assert result["measured_over_plan"] == pytest.approx(result["private_peak_gb"] / result["plan_gb"])
