"""Where this process sits in a torchrun job, and starting and ending the process group.

torchrun (and the operator's Indexed Job around it) describes the job in environment
variables: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``. A plain
``python -m qwenft_trainer.train`` has none of them and runs as a world of one. The
process group must exist before a ZeRO-3 model is built (``deepspeed.zero.Init`` reads
the world size), so it is started here, before the model loads, and torn down with a
barrier at the end so no rank exits while another still writes.

A rank whose peer is lost (its process, pod or node died) must leave rather than wait:
the ranks of a multi-node run restart together (the operator's gang restart). On CPUs
gloo raises at the next collective once the peer's connection closes; NCCL surfaces
errors because torchrun starts the ranks with ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` (a
failed or timed-out collective tears the process down), and every collective is bounded by
the process group's timeout, :data:`COLLECTIVE_TIMEOUT_ENV` seconds (default
:data:`DEFAULT_COLLECTIVE_TIMEOUT`, NCCL's own default; gloo's is 30 minutes). Such an
error is reported as ``PeerLost`` (:func:`is_communication_error`), and the broken group is
left without the final barrier, which would wait for the lost rank too.

    env = DistributedEnv.from_environ()
    init_process_group(env, deepspeed=True, cuda=torch.cuda.is_available())
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds a collective may wait for the other ranks before it fails (env override).
COLLECTIVE_TIMEOUT_ENV = "QWENFT_COLLECTIVE_TIMEOUT_SECONDS"
DEFAULT_COLLECTIVE_TIMEOUT = 600
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


def collective_timeout(environ: Mapping[str, str] | None = None) -> timedelta:
    """How long a collective waits for the other ranks (see :data:`COLLECTIVE_TIMEOUT_ENV`)."""
    value = (os.environ if environ is None else environ).get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if not value:
        return timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{COLLECTIVE_TIMEOUT_ENV}={value!r}: expected a whole number of seconds >= 1"
        )
    return timedelta(seconds=int(value))


def is_communication_error(err: BaseException) -> bool:
    """Whether ``err`` says a collective failed: a peer is gone, or stopped answering.

    ``torch.distributed``'s own errors (backend, network, store) and gloo's transport
    errors (a RuntimeError from ``gloo/transport``: "Connection reset by peer", "Connection
    closed by peer").
    """
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("gloo/transport" in text or "NCCL" in text)


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
    timeout = collective_timeout()
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend, timeout=timeout)
    elif not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    log.info(
        "process group up: rank %d of %d (%s, collectives time out after %ds)",
        env.rank, env.world_size, backend, timeout.total_seconds(),
    )  # fmt: skip


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


def finish(*, deepspeed: bool, broken: bool = False) -> None:
    """Wait for every rank, drop transformers' global DeepSpeed config, end the group.

    ``broken``: a collective failed (a peer is lost): no barrier, which would wait for the
    lost rank as well, and the group is left to the process exit.
    """
    import torch.distributed as dist

    if not broken:
        barrier()
    if deepspeed:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if not broken and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
