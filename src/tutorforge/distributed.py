"""Several training processes through `accelerate launch` (DDP; gloo on CPU, NCCL on CUDA).

    tutorforge train recipe.yml --nproc 2

`launch` re-runs the same command under accelerate's launcher (torch.distributed.run); inside each
worker these helpers are collective-safe no-ops when there is a single process, so the training
loop reads the same either way.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from functools import cache

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@cache
def accelerator():
    """The process group, started by accelerate (gloo on CPU, NCCL on CUDA); None for one process."""
    if world_size() == 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def all_sum(value: float) -> float:
    if world_size() == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


def broadcast(obj):
    """rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model):
    """The model wrapped for DDP (gradients averaged across processes), or as it is."""
    acc = accelerator()
    return model if acc is None else acc.prepare_model(model)


def unwrap(model):
    acc = accelerator()
    return model if acc is None else acc.unwrap_model(model)


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
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // nproc))))
    return subprocess.run(cmd, env=env).returncode
