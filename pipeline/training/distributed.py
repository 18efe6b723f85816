"""PyTorch's own distributed engine, as launched by torchrun: process group, rank, device, barriers.

Under ``torchrun --nproc-per-node N -m pipeline distill RUN_DIR`` every process trains a DDP replica on its
share of each epoch (``DistributedSampler``); only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that writes checkpoints, the manifest and progress output."""
    return rank() == 0


def setup_from_env() -> None:
    """Join the process group torchrun describes in the environment (NCCL with GPUs, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all evaluate the same model."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def device_for(preference: str) -> torch.device:
    """The training device: ``cuda`` (this rank's GPU) when asked for or available under ``auto``."""
    use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    if preference == "cuda" and not torch.cuda.is_available():
        from pipeline.errors import ConfigError

        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU", "use device: auto or cpu")
    if use_cuda:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (a collective: every rank calls it); ``value`` itself without torchrun."""
    if world_size() <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
