"""The reference model of a preference objective (modules/preference.py: `needs_reference`), attached before
training as `objective.reference(inputs, targets) -> float64 log-probabilities per row`, and as
`objective.with_reference(score) -> score(reference model)` for objectives that score otherwise (GRPO: per token):

    LoRA (model.use_peft)   the policy itself with its adapter disabled: the base weights, no second copy
    full weights            a frozen copy of the starting weights (`model_name_or_path`, also after a resume) under
                            the run's engine: DeepSpeed: an engine without optimizer, partitioned like the policy
                            under ZeRO-3 (stage 0 otherwise: the copy is whole on each rank, as TRL prepares it);
                            FSDP2: fully_shard per decoder layer on the same mesh; gradients are never computed
    objective.reference=precomputed: computed once before training by the starting weights in one pass over the
                            pairs (`precompute_reference`), stored beside the token cache, and carried by the rows
                            (`ref_logps`): the reference costs no memory and no forward pass during training
"""
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from data.collators import model_inputs
from general_util.dist import DistContext, all_reduce, barrier, gather_objects, shard_range
from general_util.fingerprints import data_fingerprint, tokenizer_fingerprint
from modules.loss_impl import LossSettings
from modules.preference import pair_targets, reference_logps
from training.engine import engine_of, load_model

logger = logging.getLogger(__name__)


def attach_reference(objective, cfg: DictConfig, tokenizer, engine, ctx: DistContext, settings: LossSettings,
                     dataset, collator):
    """Give `objective` its reference (see the module docstring); returns the training data (with `ref_logps`
    when they are precomputed). Nothing changes for objectives without a reference."""
    if not getattr(objective, "needs_reference", False):
        return dataset
    if objective.reference_kind == "precomputed":
        return precompute_reference(cfg, dataset, collator, tokenizer, engine, ctx, settings)
    if hasattr(engine.module, "disable_adapter"):
        logger.info("reference model: the policy with its LoRA adapter disabled")

        def base_logps(inputs, targets):
            with engine.module.disable_adapter():
                return reference_logps(engine.model, inputs, targets, settings)

        def with_base(score):
            with engine.module.disable_adapter():
                return score(engine.model)
        objective.reference, objective.with_reference = base_logps, with_base
        return dataset
    frozen = frozen_copy(cfg, tokenizer, ctx)
    logger.info("reference model: a frozen copy of %s under engine=%s", cfg.model_name_or_path, engine_of(cfg).name)
    objective.reference = lambda inputs, targets: reference_logps(frozen, inputs, targets, settings)
    objective.with_reference = lambda score: score(frozen)
    return dataset


def frozen_copy(cfg: DictConfig, tokenizer, ctx: DistContext) -> torch.nn.Module:
    """The starting weights, frozen, sharded by the run's engine as the policy is (training.engine.Engine.frozen_copy)."""
    model = load_model(cfg, tokenizer)
    model.requires_grad_(False)
    model.eval()
    return engine_of(cfg).frozen_copy(cfg, model, ctx)


class WithReference(Dataset):
    """The training rows with their precomputed reference log-probabilities (`ref_logps`: chosen, rejected)."""

    def __init__(self, dataset, logps: np.ndarray):
        self.dataset, self.logps = dataset, logps
        self.fingerprint = data_fingerprint(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "ref_logps": self.logps[index].tolist()}

    def __getattr__(self, name):
        return getattr(self.__dict__["dataset"], name)


def reference_file(cfg: DictConfig, dataset, tokenizer, settings: LossSettings) -> Path:
    """Where the precomputed log-probabilities live: beside the token cache (`data.cache_dir`, else output_dir),
    keyed by the data, the tokenizer, the starting model's files (path, size, mtime) and how they are scored, so a
    changed model or data computes them again."""
    model_dir = Path(cfg.model_name_or_path)
    files = sorted(p for p in model_dir.iterdir() if p.is_file()) if model_dir.is_dir() else []
    key = {"data": data_fingerprint(dataset), "tokenizer": tokenizer_fingerprint(tokenizer),
           "model": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
           "precision": cfg.precision, "loss_impl": settings.impl, "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cfg.data.cache_dir or cfg.output_dir) / "reference_logps" / f"{digest}.npy"


def precompute_reference(cfg: DictConfig, dataset, collator, tokenizer, engine, ctx: DistContext,
                         settings: LossSettings) -> WithReference:
    """One pass of the starting weights over the training pairs (each rank a share, as many forward calls on
    every rank, as ZeRO-3 needs), gathered, written once by global rank 0, read by every rank; reused while the
    model and data are unchanged."""
    path = reference_file(cfg, dataset, tokenizer, settings)
    if not path.exists():
        logger.info("precomputing the reference log-probabilities of %d pairs into %s", len(dataset), path)
        share = list(shard_range(len(dataset), ctx.rank, ctx.world_size))
        size = cfg.per_gpu_train_batch_size
        batches = [share[i:i + size] for i in range(0, len(share), size)] or [[0]]
        count = int(all_reduce(torch.tensor([len(batches)], device=ctx.device), "max").item())
        found = {}
        was_training = engine.model.training
        engine.eval()
        for number in range(count):
            indices = batches[min(number, len(batches) - 1)]
            batch = collator([dataset[i] for i in indices])
            inputs = model_inputs(batch, ctx.device)
            logps = reference_logps(engine.model, inputs, pair_targets(batch).to(ctx.device), settings).cpu()
            pairs = len(indices)
            if number < len(batches) and share:
                found.update({i: (logps[k].item(), logps[pairs + k].item()) for k, i in enumerate(indices)})
        if was_training:
            engine.train()
        table = np.zeros((len(dataset), 2), dtype=np.float64)
        for part in gather_objects(found):
            for index, values in part.items():
                table[index] = values
        if ctx.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp-{os.getpid()}.npy")
            np.save(temporary, table)
            os.replace(temporary, path)
        barrier()
    else:
        logger.info("reference log-probabilities read from %s", path)
    return WithReference(dataset, np.load(path))
