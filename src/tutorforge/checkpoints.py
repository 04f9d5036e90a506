"""Training checkpoints and outputs: what a resumed run needs, metrics.jsonl, loss.png.

A checkpoint (output_dir/checkpoints/step-N) holds the adapter in PEFT format, the trainable
weights, optimizer, scheduler and RNG state, and the loop's state (step, best eval loss, ...). It is
written under a temporary name and renamed when complete, so a kill -9 never leaves a half
checkpoint that a resume would trust.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


# --- checkpoints: everything a resumed run needs to end where an uninterrupted one ends ------------

def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: set[int]) -> Path:
    """Write checkpoints/step-N atomically (temporary directory, then rename); prune old ones."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    torch.save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.glob("step-*"):
        n = int(old.name.split("-")[1])
        if n not in keep and n != step:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    blob = torch.load(path / "state.pt", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return json.loads((path / "trainer_state.json").read_text())


# --- outputs ------------------------------------------------------------------------------------

def read_run_info(run_dir: Path) -> dict | None:
    """The run.json a finished training run leaves in its output_dir, or None."""
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None


def append_metrics(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics a killed run logged after its last checkpoint (they will be logged again)."""
    from tutorforge.fsutil import atomic_write

    rows = [r for r in read_metrics(path) if r["step"] <= step]
    with atomic_write(path) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tutorforge.fsutil import atomic_write

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="#d62728", marker="o", linewidth=1.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def overfitting(metrics: list[dict]) -> str | None:
    """A note when eval loss rose over the last evaluations while train loss kept falling."""
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None and m["step"] > 0]
    if len(evals) < 3:
        return None
    best_step, best = min(evals, key=lambda e: e[1])
    last_step, last = evals[-1]
    if last > best * 1.02 and best_step < last_step:
        return (f"eval loss rose from {best:.3f} (step {best_step}) to {last:.3f} (step {last_step}): "
                "the model is overfitting; use fewer epochs, more data, or early_stopping_patience")
    return None
