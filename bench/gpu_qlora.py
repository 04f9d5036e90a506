"""QLoRA at the mission's settings on a Llama-3-8B-shaped model with random weights, on one GPU.

    python bench/gpu_qlora.py --micro-batch 1     (run by bench/gpu_check.sh)

Nothing is downloaded: a random checkpoint of Llama 3 8B's shape is written once to local disk in
bf16 shards, then loaded through tutorforge's own path (4-bit NF4 with double quantisation,
LoRA r 32 on every linear layer, 8-bit AdamW, sequence_len 1024, accumulation 8). Prints peak VRAM
(allocated and reserved), what the device reports in use, tokens/s, and what tutorforge's memory
plan predicted for the same settings (plan.plan_training on the detected device) before loading.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SHAPE = {  # Meta-Llama-3-8B config.json
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
}


DRY_RUN = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "vocab_size": 1024}  # --dry-run: the same code on CPU, in seconds


def random_checkpoint(path: Path, device: torch.device) -> Path:
    """Write the 8B-shaped checkpoint layer by layer (never the whole model in memory)."""
    from safetensors.torch import save_file

    if (path / "config.json").is_file():
        return path
    path.mkdir(parents=True, exist_ok=True)
    head_dim = SHAPE["hidden_size"] // SHAPE["num_attention_heads"]
    h, i, kv = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_key_value_heads"] * head_dim
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16) * 0.02).cpu()

    index = {}
    for layer in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        tensors = {p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
                   p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
                   p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
                   p + "mlp.down_proj.weight": rnd(h, i),
                   p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                   p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}
        name = f"layer-{layer:02d}.safetensors"
        save_file(tensors, path / name, metadata={"format": "pt"})
        index.update(dict.fromkeys(tensors, name))
    rest = {"model.embed_tokens.weight": rnd(SHAPE["vocab_size"], h), "lm_head.weight": rnd(SHAPE["vocab_size"], h),
            "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    save_file(rest, path / "rest.safetensors", metadata={"format": "pt"})
    index.update(dict.fromkeys(rest, "rest.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (path / "config.json").write_text(json.dumps(SHAPE))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--accum", type=int, default=8)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/llama3-8b-random"))
    parser.add_argument("--dry-run", action="store_true", help="a tiny shape on CPU: checks the script")
    parser.add_argument("--compare", type=Path, help="print the plan against the results in this JSONL file")
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare)
    from tutorforge.lora import add_lora, build_optimizer, load_base
    from tutorforge.loss import loss_sum

    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        SHAPE.update(DRY_RUN)
        args.checkpoint = args.checkpoint.with_name(args.checkpoint.name + "-dry")
        args.seq, args.accum = 64, 2
    path = random_checkpoint(args.checkpoint, device)
    predicted = predict(path, args)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = load_base(path, quant="nf4", double_quant=True, dtype=torch.bfloat16, device=device,
                      gradient_checkpointing=True)
    model = add_lora(model, r=32, alpha=16, dropout=0.0, target_linear=True, target_modules=(),
                     modules_to_save=(), fan_in_fan_out=False)
    model.train()  # from_pretrained returns eval mode, where transformers skips gradient checkpointing
    optimizer = build_optimizer("adamw_bnb_8bit", [p for p in model.parameters() if p.requires_grad],
                                lr=2e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, device=device)
    ids = torch.randint(0, SHAPE["vocab_size"], (args.micro_batch, args.seq), device=device)
    batch = {"input_ids": ids, "labels": ids.clone(),
             "position_ids": torch.arange(args.seq, device=device).expand(args.micro_batch, -1)}
    times = []
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(args.steps + 1):  # the first step warms up
        sync()
        start = time.perf_counter()
        for _ in range(args.accum):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_sum(model, batch) / (args.accum * args.micro_batch * (args.seq - 1))
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
    tokens = args.accum * args.micro_batch * args.seq
    result = {"micro_batch": args.micro_batch, "sequence_len": args.seq, "accumulation": args.accum,
              "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
              "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
              "device_used_gib": round(_device_used() / 2**30, 2) if cuda else None,
              "tokens_per_s": round(tokens / (sum(times[1:]) / args.steps), 1),
              "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)", **predicted}
    print(json.dumps(result))


def predict(path: Path, args) -> dict:
    """The memory plan for exactly what main() runs: no packing, every position a label."""
    import yaml

    from tutorforge.config import parse
    from tutorforge.plan import plan_training

    settings = {"base_model": str(path), "adapter": "qlora", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True, "lora_r": 32, "lora_alpha": 16, "lora_target_linear": True,
                "sequence_len": args.seq, "micro_batch_size": args.micro_batch, "bf16": True,
                "gradient_accumulation_steps": args.accum, "optimizer": "adamw_bnb_8bit",
                "gradient_checkpointing": True, "sample_packing": False}
    report = parse(yaml.safe_dump(settings), "gpu_qlora")
    p = plan_training(report.config, hardware="cpu" if args.dry_run else None)
    return {"predicted_allocated_gib": round(p.allocated_gb, 2),
            "predicted_total_gib": round(p.peak_gb, 2), "plan_hardware": p.hardware.name}


def compare(results: Path) -> None:
    """Predicted vs measured peak VRAM, one line per run; the bar is 10% on the allocated peak."""
    print("memory plan vs measured (QLoRA on the Llama-3-8B shape, sequence_len 1024):")
    for line in results.read_text().splitlines():
        r = json.loads(line)
        alloc = (r["predicted_allocated_gib"] - r["peak_allocated_gib"]) / r["peak_allocated_gib"]
        used = (r["predicted_total_gib"] - r["device_used_gib"]) / r["device_used_gib"]
        print(f"  micro batch {r['micro_batch']}: allocated: predicted {r['predicted_allocated_gib']:.2f} GB, "
              f"measured {r['peak_allocated_gib']:.2f} GB ({alloc:+.1%}, "
              f"{'within' if abs(alloc) <= 0.10 else 'OUTSIDE'} "
              f"the 10% bar); in use on the device: predicted {r['predicted_total_gib']:.2f} GB, "
              f"measured {r['device_used_gib']:.2f} GB ({used:+.1%})")


def _device_used() -> int:
    """Bytes in use on the device as the driver sees it (every process, CUDA context included)."""
    free, total = torch.cuda.mem_get_info()
    return total - free


if __name__ == "__main__":
    main()
