"""Several training processes through `accelerate launch` (DDP; gloo on CPU, NCCL on CUDA).

    tutorforge train recipe.yml --nproc 2

`launch` re-runs the same command under accelerate's launcher (torch.distributed.run). Inside each
worker, accelerate does the rest: `PartialState` knows the processes and the device, `Accelerator`
wraps the model for DDP and skips the gradient all-reduce of all but a step's last micro batch
(`no_sync`), and accelerate.utils reduces and broadcasts. With one process these calls change
nothing (the model is not wrapped), so the training loop reads the same either way. What this
module adds: the backend's choice (gloo when torch sees no GPU), sums of Python numbers, and the
launch itself.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from functools import cache

import torch


def _cpu() -> bool:
    """Whether processes talk over gloo on the CPU (accelerate's `cpu=True`): no GPU in sight."""
    return not torch.cuda.is_available()


def state():
    """The processes and their device (accelerate's PartialState, which starts the process group)."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu())


@cache
def accelerator():
    """The Accelerator of this process: DDP wrapping and no_sync. Mixed precision stays off: the
    training loop runs its own autocast (train._autocast)."""
    from accelerate import Accelerator

    return Accelerator(cpu=_cpu(), mixed_precision="no")


def world_size() -> int:
    """How many processes train; read from the launcher's environment, so the CLI can ask before
    any process group exists (and whether to launch one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return state().process_index


def is_main() -> bool:
    return state().is_main_process


def barrier() -> None:
    state().wait_for_everyone()


def device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK, or the CPU."""
    found = torch.device(state().device or "cpu")
    return torch.device("cuda", found.index or 0) if found.type == "cuda" else found


def all_sum(value: float) -> float:
    """`value` summed over the processes (in float64, on the device the backend reduces on)."""
    from accelerate.utils import reduce

    total = reduce(torch.tensor([float(value)], dtype=torch.float64, device=device()), "sum")
    assert isinstance(total, torch.Tensor)
    return float(total.item())


def broadcast(obj):
    """rank 0's `obj` on every rank."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def wrap(model):
    """The model wrapped for DDP (gradients averaged across processes), or as it is for one process."""
    return model if world_size() == 1 else accelerator().prepare_model(model)


def no_sync(model, sync: bool):
    """Gradients accumulate without an all-reduce unless `sync` (the last micro batch of a step);
    the number of micro batches varies at an epoch's end, so the loop says which is last rather
    than counting with accelerator.accumulate."""
    import contextlib

    return contextlib.nullcontext() if sync else accelerator().no_sync(model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str]) -> int:
    """Run `tutorforge ARGV` in `nproc` processes under accelerate's launcher; its exit code."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "-m", "tutorforge", *argv]
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // nproc)))
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    return subprocess.run(cmd, env=env).returncode
