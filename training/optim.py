"""The optimizer's parameter groups and the learning-rate schedule, the same under every engine."""
import torch
from omegaconf import DictConfig


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and normalisation weights (all 1-d parameters)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_steps(cfg: DictConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_proportion * total_steps)


def lr_scheduler_factory(cfg: DictConfig, total_steps: int):
    """`optimizer -> scheduler` for deepspeed.initialize. The shapes of DeepSpeed's linear WarmupDecayLR /
    WarmupLR, but without warmup the first step already gets the full learning rate (DeepSpeed's own
    schedulers start every run at warmup_min_lr)."""
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup
    warmup = warmup_steps(cfg, total_steps)
    if cfg.lr_scheduler == "WarmupDecayLR":
        return lambda optimizer: get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return lambda optimizer: get_constant_schedule_with_warmup(optimizer, warmup)
