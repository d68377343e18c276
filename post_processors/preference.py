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

from data.collators import model_inputs
from general_util.dist import current
from general_util.errors import ConfigError
from models.loading import load_causal_lm
from modules.loss_impl import LossSettings
from modules.preference import pair_targets, reference_logps
from post_processors.gathering import evaluate_in_lockstep


class PreferenceEvaluator:
    """`dataset` and `collator` are partials (`_partial_: true`) called with `tokenizer=`: a
    data.datasets.PreferenceDataset and a data.collators.PreferenceCollator. Every rank scores a disjoint share
    in lockstep with the others (`post_processors.gathering.evaluate_in_lockstep`: ranks with fewer batches
    repeat one, result discarded, so all run the same forward calls under ZeRO-3), and every rank gets all
    pairs' scores."""

    def __init__(self, dataset, collator, batch_size: int = 4, beta: float = 0.1, reference_model: str | None = None,
                 precision: str = "fp32"):
        if batch_size < 1 or beta <= 0:
            raise ConfigError(f"batch_size={batch_size}, beta={beta}: both must be positive")
        self.dataset_factory, self.collator_factory = dataset, collator
        self.batch_size, self.beta = batch_size, beta
        self.reference_model, self.precision = reference_model, precision
        self._dataset, self._collator, self._reference = None, None, None

    def _prepare(self, tokenizer, ctx, loss: LossSettings) -> None:
        self._dataset = self.dataset_factory(tokenizer=tokenizer)
        self._collator = self.collator_factory(tokenizer=tokenizer)
        if self.reference_model is None:
            return
        reference = load_causal_lm(self.reference_model, self.precision, tokenizer=tokenizer).to(ctx.device).eval()
        self._reference = self._scores(reference, loss, "reference log-probabilities")
        del reference

    def _scores(self, model, loss: LossSettings, description: str) -> torch.Tensor:
        """float64 [pairs, 2]: every pair's summed log-probability of its chosen and its rejected response."""
        device = current().device

        def run(items: list[int]) -> list[tuple[float, float]]:
            batch = self._collator([self._dataset[i] for i in items])
            with torch.no_grad():
                logps = reference_logps(model, model_inputs(batch, device), pair_targets(batch).to(device), loss)
            pairs = logps.numel() // 2  # the collator puts the chosen rows first, then the rejected
            return list(zip(logps[:pairs].tolist(), logps[pairs:].tolist()))

        scores = evaluate_in_lockstep(range(len(self._dataset)), run, self.batch_size, description, unit="pair")
        return torch.tensor(scores, dtype=torch.float64).reshape(-1, 2)

    def metric_names(self) -> list[str]:
        """What each call reports (known before any model is loaded)."""
        return ["accuracy", "margins", "chosen", "rejected", "loss", "pairs"]

    def __call__(self, model, tokenizer, output_dir, loss: LossSettings) -> dict[str, float]:
        ctx = current()
        if self._dataset is None:
            self._prepare(tokenizer, ctx, loss)
        logps = self._scores(model, loss, "preference pairs")
        rewards = self.beta * (logps - (self._reference if self._reference is not None else 0))
        chosen, rejected = rewards[:, 0], rewards[:, 1]
        margins = chosen - rejected
        count = max(len(rewards), 1)
        metrics = {"accuracy": (margins > 0).double().sum().item() / count, "margins": margins.sum().item() / count,
                   "chosen": chosen.sum().item() / count, "rejected": rejected.sum().item() / count,
                   "loss": -F.logsigmoid(margins).sum().item() / count, "pairs": float(len(rewards))}
        if ctx.is_main:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
