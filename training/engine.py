"""The distributed engine as the training loop and the checkpoint code see it.

The loop (trainer.py) computes each micro-batch's loss, already divided by the label tokens of the whole
global batch, and hands it to `backward`; the engine owns what differs between DeepSpeed and other
engines: how gradients are averaged, accumulated, clipped and applied, how weights and optimizer state are
sharded, saved and re-sharded, and how the full weights are gathered for the Hugging Face export.
"""
from pathlib import Path
from typing import Protocol

import torch
from omegaconf import DictConfig

from general_util.dist import DistContext
from modules.sequence_parallel import ParallelLayout
from training.saving import RecordedWrites


class TrainingEngine(Protocol):
    model: torch.nn.Module   # what runs the forward pass (the loop's and the evaluators'); may wrap `module`
    module: torch.nn.Module  # the transformers (or peft) model: its config, save_pretrained, generate

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` so that, summed over the micro-batches of a step and all
        data-parallel ranks, the step's gradient is that of the global batch's token-mean loss."""

    def step(self) -> None:
        """Called after every micro-batch's backward; at the end of an accumulation window it clips to
        max_grad_norm and applies the update and the learning-rate schedule, unless the gradient norm is not
        finite (then the update is skipped on every rank)."""

    def was_step_applied(self) -> bool: ...

    def grad_norm(self) -> float | None:
        """The global gradient norm (before clipping) of the last step."""

    def lr(self) -> float: ...

    def save(self, directory: Path, writes: RecordedWrites) -> None:
        """Called on every rank: the sharded resumable state (weights, optimizer, scheduler) into `directory`,
        every file written through `writes.run` so that a failed write is recorded, not raised."""

    def load(self, directory: Path, saved_world_size: int, weights_only: bool) -> None:
        """Called on every rank: the state `save` wrote (by `saved_world_size` ranks), or only its weights."""

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Called on every rank: the full weights in the training dtype on global rank 0, None elsewhere."""

    def close(self) -> None:
        """Release hooks and buffers before the process group goes (general_util.dist.teardown)."""


def load_model(cfg: DictConfig, tokenizer) -> torch.nn.Module:
    """`cfg.model` as `cfg.engine` wants it loaded (ZeRO-3 partitions it while loading; FSDP2 wants fp32)."""
    if cfg.engine == "fsdp2":
        from training.fsdp2_engine import load_model as fsdp2_load
        return fsdp2_load(cfg, tokenizer)
    from training.deepspeed_engine import load_model as deepspeed_load
    return deepspeed_load(cfg, tokenizer)


def build_engine(cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
                 total_steps: int, reshard_from: int | None) -> TrainingEngine:
    """The engine for `model`; `reshard_from`: the world size of a checkpoint that will be loaded on another
    number of ranks (None otherwise)."""
    if cfg.engine == "fsdp2":
        from training.fsdp2_engine import FSDP2Engine
        return FSDP2Engine(cfg, model, ctx, parallel, total_steps, reshard_from)
    from training.deepspeed_engine import DeepSpeedEngine
    return DeepSpeedEngine(cfg, model, ctx, parallel, total_steps, reshard_from)
