"""The distributed engine as the training loop and the checkpoint code see it.

The loop (trainer.py) computes each micro-batch's loss, already divided by the label tokens of the whole
global batch, and hands it to `backward`; the engine owns what differs between DeepSpeed and other
engines: how gradients are averaged, accumulated, clipped and applied, how weights and optimizer state are
sharded, saved and re-sharded, and how the full weights are gathered for the Hugging Face export.

Which engine runs is the Hydra group `engine` (conf/engine/deepspeed.yaml, conf/engine/fsdp2.yaml, selected in
conf/base.yaml's defaults): its `_target_` is an `Engine`, which owns the rest: how the model is loaded for it,
the checks of its settings (and what it makes of `ds_cfg`), its memory estimate and its checkpoint format.
"""
from pathlib import Path
from typing import Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from general_util.dist import DistContext
from modules.sequence_parallel import ParallelLayout
from training.checkpoints import CheckpointError
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


class Engine(Protocol):
    """The engine group's choice (`conf/engine/<name>.yaml`, its `_target_` instantiated by `engine_of`): it owns
    what differs between engines before and around the TrainingEngine. Everything else asks it; nothing compares
    engine names."""
    name: str  # recorded in each checkpoint's trainer state (a checkpoint continues under the engine that wrote it)

    def problems(self, cfg: DictConfig, world_size: int) -> list[str]:
        """The checks of this engine's settings (its node's keys, what it makes of `ds_cfg`, keys it cannot honour),
        each a one-line problem for training.config.validate."""

    def load_model(self, cfg: DictConfig, tokenizer) -> torch.nn.Module:
        """`cfg.model` loaded as this engine wants it."""

    def build(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
              total_steps: int, reshard_from: int | None) -> TrainingEngine: ...

    def frozen_copy(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
        """`model` (frozen, in eval mode) sharded as this engine shards the policy: the reference model of a
        preference objective (training/reference.py)."""

    def describe(self, cfg: DictConfig) -> str:
        """How the run shards, in a few words (the dry run's memory line, the reference model's log line)."""

    def memory_estimate(self, num_params: int, cfg: DictConfig, world_size: int) -> dict[str, float]:
        """Rough per-GPU bytes of weights, gradients and optimizer states (training.config.sharded_memory_bytes)."""

    def checkpoint_layout(self, cfg: DictConfig) -> dict:
        """What of this engine's checkpoint format must match for a run to continue it exactly (recorded in each
        checkpoint's trainer state, compared by training.state.Layout.differences)."""

    def holds_state(self, checkpoint: Path) -> bool:
        """Whether `checkpoint` holds a resumable state this engine wrote (its format, recognised on disk)."""


def engine_of(cfg: DictConfig) -> Engine:
    """The `engine` node (the engine group's option) instantiated."""
    return instantiate(cfg.engine)


def refuse_foreign_checkpoint(checkpoint: Path, engine: Engine) -> None:
    """Stop in one line before loading a checkpoint whose resumable state `engine` does not recognise (another
    engine's: resume_mode=weights_only does not compare the engines as an exact resume does)."""
    if not engine.holds_state(checkpoint):
        raise CheckpointError(f"{checkpoint} holds no engine={engine.name} state (another engine wrote it): continue "
                              f"it under that engine, or start from its Hugging Face weights with "
                              f"model_name_or_path={checkpoint} resume=null")


def load_model(cfg: DictConfig, tokenizer) -> torch.nn.Module:
    """`cfg.model` as the run's engine wants it loaded (ZeRO-3 partitions it while loading; FSDP2 wants fp32)."""
    return engine_of(cfg).load_model(cfg, tokenizer)


def build_engine(cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
                 total_steps: int, reshard_from: int | None) -> TrainingEngine:
    """The engine for `model`; `reshard_from`: the world size of a checkpoint that will be loaded on another
    number of ranks (None otherwise)."""
    return engine_of(cfg).build(cfg, model, ctx, parallel, total_steps, reshard_from)
