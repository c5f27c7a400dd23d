"""Distributed data parallel set-up for runs launched with ``torchrun`` (gloo on CPU, nccl on GPU).

``torchrun --nproc_per_node=N -m medssm train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them the
run is a single process and every helper here is a no-op. The sampler below is the distributed sampler:
every process draws the same seeded permutation per epoch and takes its share of each global batch, so a
step of an N-process run sees exactly the samples of the same step of a one-process run.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def cleanup_distributed() -> None:
    """Leave the process group, after the objects that use it are gone.

    A ``DistributedDataParallel`` wrapper sits in a reference cycle, so it outlives the function that made
    it until the cycle collector runs; if that is after ``destroy_process_group`` (at interpreter exit), the
    gloo process group it still holds aborts the process ("terminate called without an active exception",
    torch 2.13, about 1 run in 10). Collecting first frees it while the group is alive.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(value, info: DistInfo):
    """Rank 0's ``value`` on every rank."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / info.world_size


class ShardedBatchSampler:
    """Batches of dataset indices for one process: (seed, epoch)-seeded permutation, global batches of
    ``batch_size`` (last partial batch dropped when ``drop_last``), this rank's share ``batch[rank::world]``.

    ``start_batch`` skips batches already consumed (resuming in the middle of an epoch).
    """

    def __init__(self, num_samples: int, batch_size: int, info: DistInfo, seed: int, shuffle: bool = True,
                 drop_last: bool = True) -> None:
        if batch_size % info.world_size:
            raise ValueError(f"train.batch_size ({batch_size}) must be a multiple of the number of processes "
                             f"({info.world_size})")
        if drop_last and num_samples < batch_size:
            raise ValueError(f"the training split has {num_samples} samples, fewer than train.batch_size "
                             f"({batch_size})")
        self.num_samples, self.batch_size, self.info = num_samples, batch_size, info
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.info.rank::self.info.world_size]


def shard_indices(num_samples: int, info: DistInfo) -> list[int]:
    """This rank's share of an evaluation set (every sample on exactly one rank)."""
    return list(range(info.rank, num_samples, info.world_size))
