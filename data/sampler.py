"""Deterministic distributed sampling by global sample position: the same data order for any world size,
and an exact start anywhere in an epoch (for exact resume, also on another number of ranks)."""
import math

import torch
from torch.utils.data import Sampler


class DistributedEpochSampler(Sampler[int]):
    """This rank's share of every epoch, cut by global sample position.

    An epoch's order is a permutation seeded by (seed, epoch) alone. Optimizer step k of the epoch trains
    its positions [k·G, (k+1)·G), G = world_size × micro_batch_size × accumulation_steps (the global
    batch); within the step, accumulation micro-step a gives rank r the positions starting at
    k·G + (a·world_size + r)·micro_batch_size. So which samples a step trains depends on the seed, the
    epoch and G only, never on how G is split into ranks, micro batches and accumulation. The epoch is
    padded to a whole number of steps (⌈N / G⌉) by wrapping around to its first samples, so every rank
    has the same number of micro-batches.

    The sampler owns the data position: the epoch and the global samples of it trained (`state_dict`). Iteration
    starts there and skips what came before without reading it; the loop moves it on after each optimizer step
    (`advance`), not the iteration, which data-loader workers run ahead of training. The position is the same
    for every split of the global batch, so one saved by W ranks continues on W' ranks.

    `rank` and `world_size` are those of data parallelism: ranks that share a batch (sequence parallelism)
    pass the same rank."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, micro_batch_size: int = 1,
                 accumulation_steps: int = 1, shuffle: bool = True):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.micro_batch_size, self.accumulation_steps = micro_batch_size, accumulation_steps
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.samples_in_epoch = 0, 0  # the data position
        self.global_batch = world_size * micro_batch_size * accumulation_steps
        self.steps_per_epoch = math.ceil(num_samples / self.global_batch)
        self.epoch_length = self.steps_per_epoch * self.global_batch  # global positions, padding included

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate `epoch` from the global position `start`, a step boundary."""
        if start % self.global_batch or not 0 <= start <= self.epoch_length:
            raise ValueError(f"start={start} is not a step boundary of an epoch of {self.epoch_length} positions "
                             f"in steps of {self.global_batch}")
        self.epoch, self.samples_in_epoch = epoch, start

    def advance(self) -> None:
        """One optimizer step trained: a global batch more of the epoch; at its end the next epoch begins."""
        self.samples_in_epoch += self.global_batch
        if self.samples_in_epoch == self.epoch_length:
            self.epoch, self.samples_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples_in_epoch": self.samples_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """A position `state_dict` gave, on any split of the same global batch (inside an epoch: `advance` moves
        an epoch's end on to the next epoch)."""
        if state["samples_in_epoch"] == self.epoch_length:
            raise ValueError(f"samples_in_epoch={self.epoch_length} is the end of epoch {state['epoch']}, not a "
                             f"position inside it")
        self.set_epoch(state["epoch"], state["samples_in_epoch"])

    def epoch_order(self, epoch: int) -> list[int]:
        """The sample at every global position of `epoch`, padding included."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        return (order * math.ceil(self.epoch_length / self.num_samples))[:self.epoch_length]

    def epoch_indices(self, epoch: int, start: int = 0) -> list[int]:
        """This rank's samples of `epoch` from global position `start` on, micro-batch after micro-batch."""
        order, micro = self.epoch_order(epoch), self.micro_batch_size
        indices = []
        for step_start in range(start, self.epoch_length, self.global_batch):
            for micro_step in range(self.accumulation_steps):
                offset = step_start + (micro_step * self.world_size + self.rank) * micro
                indices.extend(order[offset:offset + micro])
        return indices

    def __iter__(self):
        return iter(self.epoch_indices(self.epoch, self.samples_in_epoch))

    def __len__(self) -> int:
        return (self.epoch_length - self.samples_in_epoch) // self.world_size
