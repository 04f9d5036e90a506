"""Training checkpoints and outputs: what a resumed run needs, metrics.jsonl, loss.png.

A checkpoint (output_dir/checkpoints/step-N) holds the adapter in PEFT format (LoRA only), the
trainable weights (of a full fine-tune: only those, fp32; with unfrozen_parameters a small part of the
model), optimizer, scheduler and RNG state, and the loop's state (step, best eval loss, ...). It is
written under a temporary name and renamed when complete, so a kill -9 never leaves a half
checkpoint that a resume would trust. Before the first step, `check_free_space` makes sure the disk
can hold them.
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import torch

from tutorforge.errors import UserError

log = logging.getLogger(__name__)


# --- checkpoints: everything a resumed run needs to end where an uninterrupted one ends ------------

def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: set[int], *,
                    adapter: bool = True) -> Path:
    """Write checkpoints/step-N atomically (temporary directory, then rename); prune old ones. With
    `adapter` (LoRA) it holds the adapter in PEFT format too; a full fine-tune's holds its
    trainable weights in state.pt only."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if adapter:
            model.save_pretrained(tmp / "adapter")
        # written as they are, no copy: torch.save serialises them now (a full fine-tune's weights
        # are the whole model, a copy of them a second model in RAM)
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"trainable": trainable, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    except (OSError, RuntimeError) as exc:  # torch.save says only "unexpected pos" on a full disk
        free = shutil.disk_usage(root).free
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and free >= FILES_BYTES:
            raise
        raise UserError(f"{root}: the disk filled while writing the checkpoint of step {step} ({_size(free)} "
                        "free); free some space and run train again: it resumes from the last complete "
                        f"checkpoint ({str(exc).strip()[:120]})") from None
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.glob("step-*"):
        n = int(old.name.split("-")[1])
        if n not in keep and n != step:
            shutil.rmtree(old, ignore_errors=True)
    return final


FILES_BYTES = 1 << 20  # what a checkpoint or adapter holds besides the weights: adapter_config.json,
# README.md, RNG and scheduler state, safetensors and zip headers (measured: 52 kB on 2 layers)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n:.0f} bytes"


def check_free_space(run_dir: Path, model, *, keep_best: bool, final_bytes: int | None = None) -> None:
    """Refuse to start a run whose checkpoints its disk cannot hold (UserError with both numbers).
    Sizes come from the model's trainable weights: a checkpoint holds the adapter (LoRA), the same
    weights again (state.pt) and the optimizer state, at most Adam's two moments in the weights'
    dtype (8-bit and factored optimizers write less), and FILES_BYTES of other files. The latest
    and, with evaluation (`keep_best`), the best are kept while the next is written; the final
    output comes last: the adapter, or (`final_bytes`, a full fine-tune) the whole model as saved.
    Checkpoints already in run_dir (a resumed run) are space the run holds already."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    copies = 4 if final_bytes is None else 3  # (adapter/ +) state.pt's copy + two optimizer moments
    checkpoint = copies * weights + FILES_BYTES
    kept = 2 if keep_best else 1
    adapter = (weights if final_bytes is None else final_bytes) + FILES_BYTES
    need = (kept + 1) * checkpoint + adapter
    held = sum(f.stat().st_size for f in (run_dir / "checkpoints").rglob("*") if f.is_file())
    disk = next(d for d in (run_dir, *run_dir.absolute().parents) if d.is_dir())
    free = shutil.disk_usage(disk).free
    log.info("disk: checkpoints need about %s (%s held already), %s free on the disk of %s",
             _size(need), _size(held), _size(free), disk)
    if need - held > free:
        raise UserError(f"{run_dir}: training needs about {_size(need - held)} of free disk for its "
                        f"checkpoints ({kept + 1} checkpoints of {_size(checkpoint)}: "
                        f"{'adapter, ' if final_bytes is None else ''}trainable weights and optimizer state; "
                        f"and the final {'adapter' if final_bytes is None else 'model'}, {_size(adapter)}), "
                        "but its disk "
                        f"has {_size(free)} free; free some space there, or set output_dir to a disk with "
                        "more room")


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def load_weights(path: Path, model) -> dict:
    """Copy a checkpoint's trainable weights into the model; the checkpoint's whole state.pt."""
    blob = torch.load(path / "state.pt", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value)
    return blob


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    blob = load_weights(path, model)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return json.loads((path / "trainer_state.json").read_text())


# --- outputs ------------------------------------------------------------------------------------

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
        ax.plot(*zip(*train, strict=False), label="train loss", color="#1f77b4", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=False), label="eval loss", color="#d62728", marker="o", linewidth=1.6)
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
