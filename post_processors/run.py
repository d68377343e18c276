"""Running the configured evaluators: the one place both the training loop and the checkpoint sweep call."""
import logging
from pathlib import Path
from typing import Protocol

from modules.loss_impl import LossSettings

logger = logging.getLogger(__name__)


class Evaluator(Protocol):
    """What an `evaluators:` node builds (its `_target_`, called with the node's keys): a callable that every
    rank calls with the same model. It scores its share of the items in lockstep with the other ranks
    (`post_processors.gathering.evaluate_in_lockstep`: ZeRO-3 and FSDP2 gather weights inside forward, so every
    rank must make as many model calls), writes its files under `output_dir` on global rank 0, and returns the
    same metrics on every rank. Implementations: LossEvaluator (post_processors/loss.py),
    MultipleChoiceEvaluator (multiple_choice.py), LMEvalHarnessEvaluator (lm_eval_harness.py)."""

    def __call__(self, model, tokenizer, output_dir: Path, loss: LossSettings) -> dict[str, float]:
        """`model`: what runs forward (an engine or a plain model); `loss`: how log-probabilities and losses
        are computed (loss_impl); returns metric name -> value."""

    def metric_names(self) -> list[str]:
        """The metric names each call will report, known before any model is loaded (preflight checks
        `prediction_cfg.metric` against them)."""


def run_evaluators(evaluators: dict[str, Evaluator], model, tokenizer, output_dir: Path, tag: str,
                   loss: LossSettings) -> dict[str, float]:
    """Every evaluator on `model`, its loss and log-probabilities computed as `loss` says (called on all ranks;
    each writes its files under `output_dir/<name>`); the metrics keyed `<evaluator>/<metric>`, logged as one
    line `eval <tag>: ...`."""
    metrics = {}
    for name, evaluator in evaluators.items():
        result = evaluator(model, tokenizer, output_dir / name, loss)
        metrics.update({f"{name}/{key}": value for key, value in result.items()})
    logger.info("eval %s: %s", tag, " ".join(f"{k}={v:.6g}" for k, v in metrics.items()))
    return metrics


def reported_metrics(evaluators: dict) -> list[str]:
    """The names `run_evaluators` will return (`<evaluator>/<metric>`), known before any model is loaded: each
    evaluator's `metric_names()`."""
    return [f"{name}/{metric}" for name, evaluator in evaluators.items() for metric in evaluator.metric_names()]
