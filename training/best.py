"""The best evaluation so far, kept in `output_dir/best_checkpoint.json` (the training loop and the sweep)."""
import json
from pathlib import Path

from general_util.files import write_json_atomic
from training.checkpoints import BEST_RECORD


def match_metric(metric: str, names) -> tuple[str | None, str | None]:
    """(the full name `<evaluator>/<metric>` that `metric`, full or bare, designates among `names`, None) or (None,
    why it designates none: no name, or several)."""
    if metric in names:
        return metric, None
    matches = [name for name in names if name.endswith("/" + metric)]
    if len(matches) == 1:
        return matches[0], None
    return None, f"prediction_cfg.metric={metric!r} matches {matches or 'nothing'} in {sorted(names)}"


def metric_problem(cfg, reported: list[str], sweep: bool) -> tuple[str | None, str | None]:
    """Before any model is loaded: (a problem, a warning) of `prediction_cfg.metric` against the metrics the
    configured evaluators will `reported` (an unlabelled split reports no accuracy). Training that evaluates
    needs it to rank its evaluations: a problem. A sweep without a match still evaluates every checkpoint and
    writes its summary, tracking no best (a warning), unless a best checkpoint is asked for (`save_best`)."""
    _, mismatch = match_metric(cfg.prediction_cfg.metric, reported)
    if mismatch is None or not reported or not (sweep or cfg.evaluate_during_training):
        return None, None
    if sweep and not cfg.save_best:
        return None, (f"{mismatch}; the sweep evaluates every model and writes its summary, but tracks no best "
                      f"checkpoint (set prediction_cfg.metric to one of them to have one)")
    return f"{mismatch}; set prediction_cfg.metric to one of them (and prediction_cfg.measure: 1 higher is better, " \
           f"-1 lower)", None


class BestTracker:
    """Tracks the best evaluation by `metric` (`measure` +1: higher is better, −1: lower) in
    `output_dir/best_checkpoint.json`."""

    def __init__(self, output_dir: Path, metric: str, measure: int):
        self.path = output_dir / BEST_RECORD
        self.metric, self.measure = metric, measure
        self.record = json.loads(self.path.read_text()) if self.path.exists() else None

    def key(self, metrics: dict[str, float]) -> str:
        """The full name (`<evaluator>/<metric>`) that `prediction_cfg.metric` designates in `metrics`."""
        key, problem = match_metric(self.metric, metrics)
        if problem:
            raise KeyError(problem)
        return key

    def lookup(self, metrics: dict[str, float]) -> float:
        return metrics[self.key(metrics)]

    def update(self, metrics: dict[str, float], step: int, checkpoint: str | None) -> bool:
        """Record `metrics` of `step`; True when they are the new best (written by the caller's rank 0)."""
        value = self.lookup(metrics)
        if self.record is not None and value * self.measure <= self.record["value"] * self.measure:
            return False
        self.record = {"metric": self.metric, "measure": self.measure, "value": value, "step": step,
                       "checkpoint": checkpoint}
        return True

    def write(self) -> None:
        write_json_atomic(self.path, self.record)

    @property
    def best_checkpoint(self) -> Path | None:
        if self.record and self.record.get("checkpoint"):
            return self.path.parent / self.record["checkpoint"]
        return None
