"""Running the configured evaluators: the one place both the training loop and the checkpoint sweep call."""
import logging
from pathlib import Path

from modules.loss_impl import LossSettings

logger = logging.getLogger(__name__)


def run_evaluators(evaluators: dict, model, tokenizer, output_dir: Path, tag: str,
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
