"""Held-out loss / perplexity of a tokenized dataset (e.g. the dev split of the training data)."""
import json
import math
from pathlib import Path

import torch

from data.collators import model_inputs
from general_util.dist import current
from general_util.errors import ConfigError
from modules.loss import count_label_tokens, next_token_targets
from modules.loss_impl import LossSettings, causal_lm_loss_sum
from post_processors.gathering import evaluate_in_lockstep


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
        collate = self.collator_factory(tokenizer=tokenizer)

        def run(indices: list[int]) -> list[tuple[float, float]]:
            batch = collate([self._dataset[i] for i in indices])
            loss_sum = causal_lm_loss_sum(model, model_inputs(batch, ctx.device), next_token_targets(batch["labels"]),
                                          loss)
            return [(loss_sum.double().item(), count_label_tokens(batch["labels"]).double().item())]

        with torch.no_grad():
            sums = evaluate_in_lockstep(range(len(self._dataset)), run, self.batch_size, "eval loss")
        loss_sum, tokens = math.fsum(s for s, _ in sums), math.fsum(n for _, n in sums)  # exact, in any order
        mean = loss_sum / max(tokens, 1.0)
        metrics = {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": tokens}
        if ctx.is_main:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
