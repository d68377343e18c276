"""engine=fsdp2 (conf/engine/fsdp2.yaml): the PyTorch FSDP2 engine (`torch.distributed.fsdp.fully_shard`) behind
training/engine.py: the engine group's choice (`FSDP2`) and its TrainingEngine (`FSDP2Engine`).

Each decoder layer, then the whole model, is sharded over all ranks (per-parameter DTensor shards, like ZeRO-3);
the optimizer is torch's AdamW over training/optim.py's groups and schedule, configured by the same top-level
keys DeepSpeed's `ds_cfg` reads (learning_rate, adam_betas, adam_epsilon, weight_decay, max_grad_norm), so one
config means the same under both engines. The resumable state goes through torch.distributed.checkpoint (DCP),
one file per rank, and re-shards on load to any number of ranks.

A task config's `ds_cfg` keeps its meaning: ZeRO-3 is FSDP2's full sharding, ZeRO-2 its `reshard_after_forward=False`
(the layers stay gathered from forward to backward: parameters whole during the step, gradients and optimizer
states sharded, the correspondence of FSDP's SHARD_GRAD_OP to ZeRO-2), ZeRO-3 offload its CPUOffloadPolicy. FSDP2 has
no optimizer-only sharding: stages 0 and 1 shard fully.
"""
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
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
from training.config import sharded_memory_bytes, zero_stage
from training.engine import refuse_foreign_checkpoint
from training.optim import lr_scheduler_factory, parameter_groups
from training.saving import RecordedWrites, is_write_failure


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


OFFLOADS = ("offload_param", "offload_optimizer")  # ds_cfg.zero_optimization's offload keys (DeepSpeed's ZeRO-Offload)


def shard_model(model: torch.nn.Module, mesh, mixed: MixedPrecisionPolicy, offload: OffloadPolicy | None = None,
                reshard_after_forward: bool = True) -> None:
    """`fully_shard` on each decoder layer, then on the whole model (the embeddings, final norm and head)."""
    offload = offload or OffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mixed, offload_policy=offload, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mixed, offload_policy=offload)


class FSDP2:
    """engine=fsdp2: the engine group's choice (training.engine.Engine). Its settings are the two keys of
    conf/engine/fsdp2.yaml, each null by default: then read from the task config's `ds_cfg` (module docstring). Its
    checkpoints are DCP folders (`checkpoint-<step>/dcp/`), re-sharded on load to any world size and sharding."""
    name = "fsdp2"

    def __init__(self, reshard_after_forward: bool | None = None, cpu_offload: bool | None = None):
        self.reshard_after_forward, self.cpu_offload = reshard_after_forward, cpu_offload

    @staticmethod
    def offloaded(cfg: DictConfig) -> dict[str, str]:
        """ds_cfg's offloaded parts and their devices ({"offload_param": "cpu", ...}; "none" offloads nothing)."""
        zero = OmegaConf.select(cfg, "ds_cfg.zero_optimization", default=None) or {}
        devices = {key: str(OmegaConf.select(zero, f"{key}.device", default="none") or "none") for key in OFFLOADS if key in zero}
        return {key: device for key, device in devices.items() if device != "none"}

    def sharding(self, cfg: DictConfig) -> tuple[bool, bool]:
        """(reshard_after_forward, cpu_offload): the node's own values, or what ds_cfg's ZeRO settings mean here."""
        reshard = self.reshard_after_forward if self.reshard_after_forward is not None else zero_stage(cfg) != 2
        offload = self.cpu_offload if self.cpu_offload is not None else bool(self.offloaded(cfg))
        return reshard, offload

    def problems(self, cfg: DictConfig, world_size: int) -> list[str]:
        problems = [f"engine.{key}={value!r}: use true, false or null (null: from ds_cfg)"
                    for key, value in (("reshard_after_forward", self.reshard_after_forward),
                                       ("cpu_offload", self.cpu_offload)) if value is not None and not isinstance(value, bool)]
        offloaded = self.offloaded(cfg)
        if self.cpu_offload is None and offloaded and offloaded != dict.fromkeys(OFFLOADS, "cpu"):
            key, device = next(iter(offloaded.items()))
            problems.append(f"ds_cfg.zero_optimization.{key}.device={device}: engine=fsdp2 offloads parameters, gradients "
                            "and optimizer states together, to CPU memory (CPUOffloadPolicy); use "
                            "deepspeed@ds_cfg=zero3_offload, or set engine.cpu_offload=true or false")
        if cfg.torch_adam != "auto":
            problems.append(f"torch_adam={cfg.torch_adam!r}: chooses DeepSpeed's Adam; engine=fsdp2 always uses torch "
                            "AdamW (leave it auto)")
        if cfg.sequence_parallel_size != 1:
            problems.append(f"sequence_parallel_size={cfg.sequence_parallel_size}: DeepSpeed Ulysses sequence "
                            "parallelism needs engine=deepspeed")
        return problems

    def load_model(self, cfg: DictConfig, tokenizer) -> torch.nn.Module:
        """`cfg.model` in fp32: the sharded parameters are the fp32 master weights; `precision` only sets the
        dtype forward and backward compute in (the mixed-precision policy)."""
        return instantiate(cfg.model, tokenizer=tokenizer, torch_dtype="fp32")

    def build(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
              total_steps: int, reshard_from: int | None) -> "FSDP2Engine":
        # reshard_from needs nothing here: DCP re-shards the saved state to this world size while loading
        return FSDP2Engine(cfg, model, ctx, parallel, total_steps, *self.sharding(cfg))

    def frozen_copy(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
        """Sharded like the policy, computing in `precision`."""
        shard_model(model, init_device_mesh(ctx.device.type, (ctx.world_size,)),
                    MixedPrecisionPolicy(param_dtype=None if cfg.precision == "fp32" else DTYPES[cfg.precision]))
        return model

    def describe(self, cfg: DictConfig) -> str:
        reshard, offload = self.sharding(cfg)
        return "FSDP2" + ("" if reshard else " reshard_after_forward=false") + (" cpu_offload" if offload else "")

    def memory_estimate(self, num_params: int, cfg: DictConfig, world_size: int) -> dict[str, float]:
        """Fully sharded like ZeRO-3; with reshard_after_forward=false every layer is whole at once, like ZeRO-2."""
        return sharded_memory_bytes(num_params, cfg.precision, world_size, 3 if self.sharding(cfg)[0] else 2)

    def checkpoint_layout(self, cfg: DictConfig) -> dict:
        """DCP re-shards on load: any sharding (and ds_cfg) continues it, so no ZeRO stage is recorded."""
        return {"engine": self.name, "zero_stage": None}

    @staticmethod
    def holds_state(checkpoint: Path) -> bool:
        return (checkpoint / DCP_FOLDER / ".metadata").is_file()


class FSDP2Engine:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
                 total_steps: int, reshard_after_forward: bool, cpu_offload: bool):
        self.ctx, self.max_grad_norm = ctx, cfg.max_grad_norm
        self.accumulation, self.micro_step = cfg.gradient_accumulation_steps, 0
        # FSDP2 averages the gradients over ranks; the loop's loss is already the global token mean, so backward
        # multiplies the average back into the sum (as DeepSpeedEngine does)
        self.loss_scale = parallel.dp_size
        self.compute_dtype = DTYPES[cfg.precision]
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        mixed = MixedPrecisionPolicy(param_dtype=None if cfg.precision == "fp32" else self.compute_dtype,
                                     reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy(pin_memory=ctx.device.type == "cuda") if cpu_offload else OffloadPolicy()
        shard_model(model, mesh, mixed, offload, reshard_after_forward)
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
        refuse_foreign_checkpoint(directory, FSDP2())
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
