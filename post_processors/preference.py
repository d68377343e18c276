"""Held-out preference pairs: reward accuracy and margins (TRL's evaluation metrics of DPO), usable as
`prediction_cfg.metric` (e.g. `prefs/accuracy`, measure +1) to rank checkpoints.

A pair's implicit reward is β·(log p(response) - ref log p(response)), log p summed over the response's tokens
(modules/preference.py); accuracy is the share of pairs whose chosen reward exceeds the rejected one; `loss` is the
DPO sigmoid loss. The reference log-probabilities of the split are computed once, at the first call, by
`reference_model` (a model folder, e.g. ${model_name_or_path}: the starting weights) loaded on each rank, then
freed; `reference_model: null` scores without a reference (rewards β·log p, as ORPO and SimPO log them).
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from data.collators import model_inputs
from general_util.dist import all_reduce, current, shard_range
from general_util.errors import ConfigError
from models.loading import load_causal_lm
from modules.loss_impl import LossSettings
from modules.preference import pair_targets, reference_logps


class PreferenceEvaluator:
    """`dataset` and `collator` are partials (`_partial_: true`) called with `tokenizer=`: a
    data.datasets.PreferenceDataset and a data.collators.PreferenceCollator. Every rank scores a disjoint share;
    ranks with fewer batches repeat one (result discarded), so all run the same forward calls (ZeRO-3)."""

    def __init__(self, dataset, collator, batch_size: int = 4, beta: float = 0.1, reference_model: str | None = None,
                 precision: str = "fp32"):
        if batch_size < 1 or beta <= 0:
            raise ConfigError(f"batch_size={batch_size}, beta={beta}: both must be positive")
        self.dataset_factory, self.collator_factory = dataset, collator
        self.batch_size, self.beta = batch_size, beta
        self.reference_model, self.precision = reference_model, precision
        self._batches, self._reference = None, None

    def _prepare(self, tokenizer, ctx, loss: LossSettings) -> None:
        dataset = self.dataset_factory(tokenizer=tokenizer)
        share = Subset(dataset, list(shard_range(len(dataset), ctx.rank, ctx.world_size)))
        self._batches = list(DataLoader(share, batch_size=self.batch_size, collate_fn=self.collator_factory(tokenizer=tokenizer)))
        self._count = int(all_reduce(torch.tensor([len(self._batches)], device=ctx.device), "max").item())
        if not self._batches:  # no pairs on this rank: any batch keeps the forward count aligned
            self._batches, self._empty = [next(iter(DataLoader(Subset(dataset, [0]), collate_fn=self.collator_factory(tokenizer=tokenizer))))], True
        else:
            self._empty = False
        if self.reference_model is None:
            self._reference = [None] * len(self._batches)
            return
        reference = load_causal_lm(self.reference_model, self.precision, tokenizer=tokenizer).to(ctx.device).eval()
        self._reference = [reference_logps(reference, model_inputs(b, ctx.device), pair_targets(b).to(ctx.device), loss)
                           for b in self._batches]
        del reference

    def __call__(self, model, tokenizer, output_dir, loss: LossSettings) -> dict[str, float]:
        ctx = current()
        if self._batches is None:
            self._prepare(tokenizer, ctx, loss)
        totals = torch.zeros(6, dtype=torch.float64, device=ctx.device)  # pairs, correct, margins, chosen, rejected, loss
        with torch.no_grad():
            for number in range(self._count):
                index = min(number, len(self._batches) - 1)
                batch = self._batches[index]
                logps = reference_logps(model, model_inputs(batch, ctx.device), pair_targets(batch).to(ctx.device), loss)
                if number >= len(self._batches) or self._empty:
                    continue
                reference = self._reference[index]
                rewards = self.beta * (logps - (reference if reference is not None else 0))
                pairs = rewards.numel() // 2
                chosen, rejected = rewards[:pairs], rewards[pairs:]
                margins = chosen - rejected
                totals += torch.stack([torch.tensor(float(pairs), dtype=torch.float64, device=ctx.device),
                                       (margins > 0).double().sum(), margins.sum(), chosen.sum(), rejected.sum(),
                                       -F.logsigmoid(margins).sum()])
        all_reduce(totals)
        count = max(totals[0].item(), 1.0)
        metrics = {"accuracy": totals[1].item() / count, "margins": totals[2].item() / count,
                   "chosen": totals[3].item() / count, "rejected": totals[4].item() / count,
                   "loss": totals[5].item() / count, "pairs": totals[0].item()}
        if ctx.is_main:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
