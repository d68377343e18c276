"""The reference model of a preference objective (modules/preference.py: `needs_reference`), attached before
training as `objective.reference(inputs, targets) -> float64 log-probabilities per row`, and as
`objective.with_reference(score) -> score(reference model)` for objectives that score otherwise (GRPO: per token):

    LoRA (model.use_peft)   the policy itself with its adapter disabled: the base weights, no second copy
    full weights            a frozen copy of the starting weights (`model_name_or_path`, also after a resume) under
                            the run's engine: DeepSpeed: an engine without optimizer, partitioned like the policy
                            under ZeRO-3 (stage 0 otherwise: the copy is whole on each rank, as TRL prepares it);
                            FSDP2: fully_shard per decoder layer on the same mesh; gradients are never computed
    objective.reference=precomputed: none here; the rows carry `ref_logps` (training/reference_cache.py)
"""
import copy
import logging

import torch
from omegaconf import DictConfig

from general_util.dist import DistContext
from modules.loss_impl import LossSettings
from modules.preference import reference_logps
from training.config import deepspeed_config, zero_stage
from training.engine import load_model

logger = logging.getLogger(__name__)


def attach_reference(objective, cfg: DictConfig, tokenizer, engine, ctx: DistContext, settings: LossSettings) -> None:
    """Give `objective` its reference (see the module docstring); nothing for objectives without one."""
    if not getattr(objective, "needs_reference", False) or objective.reference_kind == "precomputed":
        return
    if hasattr(engine.module, "disable_adapter"):
        logger.info("reference model: the policy with its LoRA adapter disabled")

        def base_logps(inputs, targets):
            with engine.module.disable_adapter():
                return reference_logps(engine.model, inputs, targets, settings)

        def with_base(score):
            with engine.module.disable_adapter():
                return score(engine.model)
        objective.reference, objective.with_reference = base_logps, with_base
        return
    frozen = frozen_copy(cfg, tokenizer, ctx)
    logger.info("reference model: a frozen copy of %s under %s", cfg.model_name_or_path,
                "FSDP2" if cfg.engine == "fsdp2" else f"DeepSpeed ZeRO-{3 if zero_stage(cfg) == 3 else 0}")
    objective.reference = lambda inputs, targets: reference_logps(frozen, inputs, targets, settings)
    objective.with_reference = lambda score: score(frozen)


def frozen_copy(cfg: DictConfig, tokenizer, ctx: DistContext) -> torch.nn.Module:
    model = load_model(cfg, tokenizer)
    model.requires_grad_(False)
    model.eval()
    if cfg.engine == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from models.weights_io import DTYPES
        from training.fsdp2_engine import decoder_layers
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        mixed = MixedPrecisionPolicy(param_dtype=None if cfg.precision == "fp32" else DTYPES[cfg.precision])
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mixed)
        fully_shard(model, mesh=mesh, mp_policy=mixed)
        return model
    import deepspeed
    config = copy.deepcopy(deepspeed_config(cfg))
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"] = {"stage": 3} if zero_stage(cfg) == 3 else {"stage": 0}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
