"""Held-out loss / perplexity of a tokenized dataset (e.g. the dev split of the training data)."""
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from data.collators import model_inputs
from general_util.dist import all_reduce, current, shard_range
from general_util.errors import ConfigError
from general_util.logging import progress_bar
from modules.loss import count_label_tokens, next_token_targets
from modules.loss_impl import LossSettings, causal_lm_loss_sum


class LossEvaluator:
    """`dataset` is a partial (`_partial_: true` in YAML) called with `tokenizer=`; `collator` likewise.
    Every rank scores a disjoint share of the items (no duplicates); ranks with fewer batches run the
    same number of forward calls on a repeated batch whose result is discarded, as ZeRO-3 requires."""

    def __init__(self, dataset, collator, batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be ≥ 1")
        self.dataset_factory, self.collator_factory = dataset, collator
        self.batch_size = batch_size
        self._dataset = None

    def metric_names(self) -> list[str]:
        """What each call reports (known before any model is loaded)."""
        return ["loss", "perplexity", "tokens"]

    def __call__(self, model, tokenizer, output_dir, loss: LossSettings) -> dict[str, float]:
        ctx = current()
        if self._dataset is None:
            self._dataset = self.dataset_factory(tokenizer=tokenizer)
        share = Subset(self._dataset, list(shard_range(len(self._dataset), ctx.rank, ctx.world_size)))
        batches = list(DataLoader(share, batch_size=self.batch_size, collate_fn=self.collator_factory(tokenizer=tokenizer)))
        num_batches = all_reduce(torch.tensor([len(batches)], device=ctx.device), "max").item()
        totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, label tokens
        with torch.no_grad(), progress_bar("eval loss", len(self._dataset), ctx) as bar:
            for i in range(num_batches):
                batch = batches[min(i, len(batches) - 1)] if batches else None
                if batch is None:  # this rank has no items at all: any input keeps the forward count aligned
                    batch = next(iter(DataLoader(Subset(self._dataset, [0]), collate_fn=self.collator_factory(tokenizer=tokenizer))))
                loss_sum = causal_lm_loss_sum(model, model_inputs(batch, ctx.device), next_token_targets(batch["labels"]),
                                              loss)
                if i < len(batches):
                    totals[0] += loss_sum.double()
                    totals[1] += count_label_tokens(batch["labels"]).double()
                    bar.update(min(len(batch["labels"]) * ctx.world_size, bar.total - bar.n))  # ranks step together
        all_reduce(totals)
        mean = (totals[0] / totals[1].clamp(min=1)).item()
        metrics = {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": totals[1].item()}
        if ctx.is_main:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
