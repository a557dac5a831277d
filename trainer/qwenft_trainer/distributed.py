"""Where this process sits in a torchrun job, and starting and ending the process group.

torchrun (and the operator's Indexed Job around it) describes the job in environment
variables: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``. A plain
``python -m qwenft_trainer.train`` has none of them and runs as a world of one. The
process group must exist before a ZeRO-3 model is built (``deepspeed.zero.Init`` reads
the world size), so it is started here, before the model loads, and torn down with a
barrier at the end so no rank exits while another still writes.

    env = DistributedEnv.from_environ()
    init_process_group(env, deepspeed=True, cpu=not cuda)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# DeepSpeed compiles its ops at first use; a persistent cache saves minutes per start.
TORCH_EXTENSIONS_CACHE = Path("~/.cache/qwenft/torch_extensions")


@dataclass(frozen=True)
class DistributedEnv:
    """Rank and world size of this process, as torchrun sets them."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistributedEnv:
        env = os.environ if environ is None else environ

        def read(name: str, default: int) -> int:
            value = env.get(name, "")
            return int(value) if value.strip().lstrip("-").isdigit() else default

        world = read("WORLD_SIZE", 1)
        return cls(
            rank=read("RANK", 0),
            local_rank=read("LOCAL_RANK", 0),
            world_size=world,
            local_world_size=read("LOCAL_WORLD_SIZE", world),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def ensure_extensions_cache(environ: dict[str, str] | None = None) -> str:
    """Point ``TORCH_EXTENSIONS_DIR`` at the persistent cache unless it is already set."""
    env = os.environ if environ is None else environ
    if not env.get("TORCH_EXTENSIONS_DIR"):
        env["TORCH_EXTENSIONS_DIR"] = str(TORCH_EXTENSIONS_CACHE.expanduser())
    return env["TORCH_EXTENSIONS_DIR"]


def device_of(env: DistributedEnv, *, cuda: bool) -> str:
    """The device this rank trains on."""
    return f"cuda:{env.local_rank}" if cuda else "cpu"


def init_process_group(env: DistributedEnv, *, deepspeed: bool, cuda: bool) -> None:
    """Start the process group (NCCL on GPUs, gloo on CPUs) when there is more than one rank.

    Under DeepSpeed the group is started through ``deepspeed.init_distributed`` so that
    DeepSpeed's communication layer knows it before ``zero.Init`` partitions the model;
    on CPUs DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``) then talks over gloo.
    """
    if not env.distributed:
        return
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if cuda else "gloo"
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend)
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("process group up: rank %d of %d (%s)", env.rank, env.world_size, backend)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank (the value itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box: list[int] = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def broadcast_texts(values: list[str]) -> list[str]:
    """Rank 0's ``values`` on every rank (the values themselves without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    box: list[list[str]] = [list(values)]
    dist.broadcast_object_list(box, src=0)
    return [str(value) for value in box[0]]


def finish(*, deepspeed: bool) -> None:
    """Wait for every rank, drop transformers' global DeepSpeed config, end the group."""
    import torch.distributed as dist

    barrier()
    if deepspeed:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
