"""Deterministic distributed sampling that can start anywhere in an epoch (for exact resume)."""
import math

import torch
from torch.utils.data import Sampler


class DistributedEpochSampler(Sampler[int]):
    """Each rank gets a disjoint, deterministic share of every epoch's permutation (seeded by seed and
    epoch). When the dataset size is not a multiple of the world size the epoch is completed by wrapping
    around to its first samples, so every rank has the same number of batches (collectives stay aligned).
    `start` skips that many of this rank's samples without reading them."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, shuffle: bool = True):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(num_samples / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.num_samples))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self.epoch_indices(self.epoch)[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
