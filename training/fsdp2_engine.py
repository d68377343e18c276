"""The PyTorch FSDP2 engine (`torch.distributed.fsdp.fully_shard`) behind training/engine.py.

Each decoder layer, then the whole model, is sharded over all ranks (per-parameter DTensor shards, like ZeRO-3);
the optimizer is torch's AdamW over training/optim.py's groups and schedule, configured by the same top-level
keys DeepSpeed's `ds_cfg` reads (learning_rate, adam_betas, adam_epsilon, weight_decay, max_grad_norm), so one
config means the same under both engines. The resumable state goes through torch.distributed.checkpoint (DCP),
one file per rank, and re-shards on load to any number of ranks.
"""
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard,
                                    register_fsdp_forward_method)
from torch.distributed.tensor import DTensor

from general_util.dist import DistContext
from models.convert import DCP_FOLDER
from models.weights_io import DTYPES
from modules.loss_impl import causal_lm
from modules.sequence_parallel import ParallelLayout
from training.optim import lr_scheduler_factory, parameter_groups
from training.saving import RecordedWrites, is_write_failure


def load_model(cfg: DictConfig, tokenizer) -> torch.nn.Module:
    """`cfg.model` in fp32: the sharded parameters are the fp32 master weights; `precision` only sets the
    dtype forward and backward compute in (the mixed-precision policy)."""
    return instantiate(cfg.model, tokenizer=tokenizer, torch_dtype="fp32")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, found by the classes transformers itself never splits (`_no_split_modules`)."""
    names = set(causal_lm(model)._no_split_modules or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def write_failure_of(error: CheckpointException) -> BaseException | None:
    """DCP gathers every rank's exception into one CheckpointException raised on all ranks: the first write
    failure among them (disk full, quota, permission), if any."""
    failures = [failure[0] if isinstance(failure, tuple) else failure for failure in error.failures.values()]
    return next((failure for failure in failures if is_write_failure(failure)), None)


def save_state(state: dict, directory: Path) -> None:
    """`dcp.save`, with a write failure on any rank raised as that failure (so RecordedWrites keeps it)."""
    try:
        dcp.save(state, checkpoint_id=directory)
    except CheckpointException as error:
        failure = write_failure_of(error)
        if failure is None:
            raise
        raise failure from None


class FSDP2Engine:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
                 total_steps: int, reshard_from: int | None):
        # reshard_from needs nothing here: DCP re-shards the saved state to this world size while loading
        self.ctx, self.max_grad_norm = ctx, cfg.max_grad_norm
        self.accumulation, self.micro_step = cfg.gradient_accumulation_steps, 0
        # FSDP2 averages the gradients over ranks; the loop's loss is already the global token mean, so backward
        # multiplies the average back into the sum (as DeepSpeedEngine does)
        self.loss_scale = parallel.dp_size
        self.compute_dtype = DTYPES[cfg.precision]
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        mixed = MixedPrecisionPolicy(param_dtype=None if cfg.precision == "fp32" else self.compute_dtype,
                                     reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy(pin_memory=ctx.device.type == "cuda") if cfg.fsdp2.cpu_offload else OffloadPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mixed, offload_policy=offload,
                        reshard_after_forward=cfg.fsdp2.reshard_after_forward)
        fully_shard(model, mesh=mesh, mp_policy=mixed, offload_policy=offload)
        register_fsdp_forward_method(model, "generate")  # evaluators generate through the sharded model
        self.model = self.module = model
        self.optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                           betas=tuple(cfg.adam_betas), eps=cfg.adam_epsilon)
        self.scheduler = lr_scheduler_factory(cfg, total_steps)(self.optimizer)
        self.scaler = None
        if cfg.precision == "fp16":  # dynamic loss scaling; its overflow check is all-reduced over the ranks
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            self.scaler = ShardedGradScaler(device=ctx.device.type)
        self.applied, self.last_norm = True, None

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients are reduce-scattered only after the last micro-batch of a step (accumulated locally before)."""
        self.micro_step += 1
        self.model.set_requires_gradient_sync(self.micro_step % self.accumulation == 0)
        loss = loss * self.loss_scale
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> None:
        if self.micro_step % self.accumulation:
            return
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm  # the same global norm on every rank
        self.last_norm = float(norm)
        self.applied = bool(torch.isfinite(norm))
        if self.applied:
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
            if self.scaler:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.scheduler.step()  # as DeepSpeed: a skipped update does not advance the schedule
        if self.scaler:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def was_step_applied(self) -> bool:
        return self.applied

    def grad_norm(self) -> float | None:
        return self.last_norm

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def resumable_state(self) -> dict:
        state = {"model": get_model_state_dict(self.model),
                 "optimizer": get_optimizer_state_dict(self.model, self.optimizer),
                 "scheduler": self.scheduler.state_dict()}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def save(self, directory: Path, writes: RecordedWrites) -> None:
        writes.run(save_state, self.resumable_state(), directory / DCP_FOLDER)

    def load(self, directory: Path, saved_world_size: int, weights_only: bool) -> None:
        """DCP reads each rank's shards of the saved tensors whatever the saved world size was."""
        state = {"model": get_model_state_dict(self.model)} if weights_only else self.resumable_state()
        dcp.load(state, checkpoint_id=directory / DCP_FOLDER)
        set_model_state_dict(self.model, state["model"])
        if weights_only:
            return
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler:
            self.scaler.load_state_dict(state["scaler"])

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Gathered layer by layer into rank 0's CPU memory (the other ranks hold no full copy)."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.ctx.rank != 0:
            return None
        return {name: tensor.to(self.compute_dtype) if tensor.is_floating_point() else tensor
                for name, tensor in full.items()}

    def close(self) -> None:
        """Nothing to release: FSDP2's hooks and shards live in the model, not in the process group."""
