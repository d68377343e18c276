"""engine=deepspeed (conf/engine/deepspeed.yaml): ZeRO 1-3, offload, mixed precision, all from `ds_cfg`; the engine
group's choice (`DeepSpeed`) and its TrainingEngine (`DeepSpeedEngine`) behind training/engine.py. DeepSpeed itself is
imported only when one is built, so this module loads (and refuses engine=deepspeed in one line) where it is missing."""
import copy
import importlib.util
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from general_util import faults
from general_util.dist import DistContext
from general_util.imports import deferred_torch_compile, hidden_modules
from modules import sequence_parallel
from modules.sequence_parallel import ParallelLayout
from training.config import deepspeed_config, sharded_memory_bytes, zero_stage
from training.engine import refuse_foreign_checkpoint
from training.optim import lr_scheduler_factory, parameter_groups
from training.saving import RecordedWrites
from training.universal_checkpoint import convert_to_universal, enable_universal_loading

logger = logging.getLogger(__name__)


def set_moe_leaf_modules(model: torch.nn.Module) -> list[str]:
    """ZeRO-3: make every mixture-of-experts block (a module class named `*SparseMoeBlock`: Mixtral, Qwen2-MoE,
    Qwen3-MoE) a leaf (deepspeed.utils.set_z3_leaf_modules), so its parameters are gathered once for the whole
    block instead of expert by expert as the router happens to pick them: ranks whose tokens chose different
    experts would otherwise fetch different parameters and wait on each other. Returns the classes' names."""
    from deepspeed.utils import set_z3_leaf_modules
    classes = sorted({type(m) for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")},
                     key=lambda cls: cls.__name__)
    if classes:
        set_z3_leaf_modules(model, classes)
        logger.info("ZeRO-3 leaf modules: %s", ", ".join(cls.__name__ for cls in classes))
    return [cls.__name__ for cls in classes]


class RecordingCheckpointEngine:
    """DeepSpeed's checkpoint engine with its `save` / `makedirs` (each rank's shards) run through `writes`."""

    def __init__(self, inner, writes: RecordedWrites):
        self.inner, self.writes = inner, writes

    def save(self, state_dict, path):
        self.writes.run(self.inner.save, state_dict, path)

    def makedirs(self, path, exist_ok=False):
        self.writes.run(self.inner.makedirs, path, exist_ok=exist_ok)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def import_deepspeed():
    """`import deepspeed`, without the `import mlflow` its autotuner (never run here) makes when MLflow is
    installed: ~2 s of every process's start-up (MLflow stays importable afterwards, for the tracker). Its Muon
    optimizer module, which ZeRO imports at initialize to recognise that optimizer, is imported here with its
    @torch.compile kernels compiled on first use: loading TorchInductor for them cost ~1 s per rank. On CPU its
    shared-memory collective op, compiled on first use (~35 s), is turned off: gloo is enough there."""
    with hidden_modules("mlflow"):
        import deepspeed
    with deferred_torch_compile():
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def join_process_group():
    """DeepSpeed, its communication layer (deepspeed.comm, which ZeRO and Ulysses' groups use) attached to the
    process group general_util.dist.init_distributed made."""
    import torch.distributed as torch_dist
    deepspeed = import_deepspeed()
    deepspeed.init_distributed(dist_backend=torch_dist.get_backend())  # wraps the existing group
    return deepspeed


class DeepSpeed:
    """engine=deepspeed: the engine group's choice (training.engine.Engine). Its settings are `ds_cfg`
    (conf/deepspeed/, `deepspeed@ds_cfg=zero1|zero2|zero3|zero3_offload`), `torch_adam` and `sequence_parallel_size`;
    its checkpoints are DeepSpeed's own (`*model_states.pt` + each rank's ZeRO partitions), continued at the same
    ZeRO stage."""
    name = "deepspeed"

    def __init__(self) -> None:
        """No keys of its own (conf/engine/deepspeed.yaml): every DeepSpeed setting is in ds_cfg."""

    def problems(self, cfg: DictConfig, world_size: int) -> list[str]:
        if cfg.do_train and importlib.util.find_spec("deepspeed") is None:
            return ["engine=deepspeed: DeepSpeed is not installed here (pip install -r requirements.txt); "
                    "engine=fsdp2 trains without it"]
        return []

    def load_model(self, cfg: DictConfig, tokenizer) -> torch.nn.Module:
        """`cfg.model`, instantiated; under ZeRO-3 `from_pretrained` partitions the weights while loading instead
        of materialising them on every rank."""
        if zero_stage(cfg) < 3:
            return instantiate(cfg.model, tokenizer=tokenizer)
        from transformers.integrations import HfDeepSpeedConfig
        join_process_group()  # ZeRO-3's partitioned loading talks through deepspeed.comm
        dschf = HfDeepSpeedConfig(deepspeed_config(cfg))  # noqa: F841 (must stay alive while loading)
        return instantiate(cfg.model, tokenizer=tokenizer)

    def build(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
              total_steps: int, reshard_from: int | None) -> "DeepSpeedEngine":
        return DeepSpeedEngine(cfg, model, ctx, parallel, total_steps, reshard_from)

    def frozen_copy(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
        """An inference engine (no optimizer): ZeRO-3 partitions it like the policy, any other stage keeps it whole."""
        deepspeed = join_process_group()
        config = copy.deepcopy(deepspeed_config(cfg))
        for key in ("optimizer", "scheduler"):
            config.pop(key, None)
        config["zero_optimization"] = {"stage": 3} if zero_stage(cfg) == 3 else {"stage": 0}
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine

    def describe(self, cfg: DictConfig) -> str:
        return f"ZeRO-{zero_stage(cfg)}"

    def memory_estimate(self, num_params: int, cfg: DictConfig, world_size: int) -> dict[str, float]:
        return sharded_memory_bytes(num_params, cfg.precision, world_size, zero_stage(cfg))

    def checkpoint_layout(self, cfg: DictConfig) -> dict:
        """ZeRO partitions load only into the stage that cut them."""
        return {"engine": self.name, "zero_stage": zero_stage(cfg)}

    @staticmethod
    def holds_state(checkpoint: Path) -> bool:
        return any(checkpoint.glob("*model_states.pt"))


class DeepSpeedEngine:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, ctx: DistContext, parallel: ParallelLayout,
                 total_steps: int, reshard_from: int | None):
        deepspeed = join_process_group()
        self.config = deepspeed_config(cfg)
        if reshard_from is not None and zero_stage(cfg) > 0:
            enable_universal_loading(self.config)  # read by deepspeed.initialize
        self.stage = zero_stage(cfg)
        self.ctx = ctx
        # DeepSpeed means the gradients over the accumulation window and over ranks; the loop's loss is already
        # the global token mean, so `backward` multiplies those back (see sequence_parallel.gradient_mean_size)
        self.loss_scale = sequence_parallel.gradient_mean_size(self.config, parallel) * cfg.gradient_accumulation_steps
        mpu = sequence_parallel.initialize_groups(parallel.sp_size)
        if mpu is not None:
            sequence_parallel.register_attention(model.config, cfg.model.attn_implementation,
                                                 mpu.get_sequence_parallel_group())
        if self.stage >= 3:
            set_moe_leaf_modules(model)
        self.model, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=parameter_groups(model, cfg.weight_decay), config=self.config,
            lr_scheduler=lr_scheduler_factory(cfg, total_steps), mpu=mpu)
        self.module = self.model.module

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss * self.loss_scale)

    def step(self) -> None:
        self.model.step()

    def was_step_applied(self) -> bool:
        return self.model.was_step_applied()

    def grad_norm(self) -> float | None:
        norm = self.model.get_global_grad_norm()
        return None if norm is None else float(norm)

    def lr(self) -> float:
        return self.model.get_lr()[0]

    def save(self, directory: Path, writes: RecordedWrites) -> None:
        """DeepSpeed's save into `directory`, every write of it through `writes`: the checkpoint engine's (each
        rank's shards) and the recovery scripts (`zero_to_fp32.py`, `zero_to_torch.py`), which DeepSpeed copies
        into the save folder's parent (output_dir, 0.19.8 `_copy_recovery_script`): here they go into the
        checkpoint folder, beside the shards they convert. Any other write failure inside DeepSpeed's save is
        recorded too, so that it becomes the save's one-line failure rather than a traceback."""
        model = self.model
        original, copy_scripts = model.checkpoint_engine, type(model)._copy_recovery_script
        model.checkpoint_engine = RecordingCheckpointEngine(original, writes)
        step = int(directory.name.rsplit("-", 1)[1])  # .tmp-checkpoint-<step>

        def copy_into_checkpoint(_output_dir) -> None:
            # test-only: LLAMA_TRAINER_FAULT=enospc@copy=N, DeepSpeed's own copy finding the disk full
            faults.fire("copy", step, str(directory / "zero_to_fp32.py"))
            copy_scripts(model, str(directory))

        model._copy_recovery_script = lambda output_dir: writes.run(copy_into_checkpoint, output_dir)
        try:
            writes.run(model.save_checkpoint, str(directory.parent), tag=directory.name, save_latest=False)
        finally:
            model.checkpoint_engine = original
            del model._copy_recovery_script

    def load(self, directory: Path, saved_world_size: int, weights_only: bool) -> None:
        refuse_foreign_checkpoint(directory, DeepSpeed())
        if weights_only:
            self.model.load_checkpoint(str(directory.parent), tag=directory.name, load_module_only=True,
                                       load_optimizer_states=False, load_lr_scheduler_states=False)
        elif self.stage > 0 and saved_world_size != self.ctx.world_size:
            # ZeRO partitions are cut per rank: re-cut them through DeepSpeed's universal checkpoint
            universal = convert_to_universal(directory, saved_world_size, self.ctx)
            self.model.load_checkpoint(str(directory), tag=universal.name)
        else:
            self.model.load_checkpoint(str(directory.parent), tag=directory.name)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Under ZeRO-3 parameters are gathered one at a time, so no rank builds a full fp32 copy."""
        if self.stage >= 3:
            return self.model._zero3_consolidated_16bit_state_dict()
        if self.model.global_rank != 0:
            return None
        return {name: tensor.detach().cpu() for name, tensor in self.module.state_dict().items()}

    def close(self) -> None:
        self.model.destroy()
