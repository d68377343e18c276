"""The best evaluation so far, kept in `output_dir/best_checkpoint.json` (the training loop and the sweep)."""
import json
from pathlib import Path

from general_util.files import write_json_atomic
from training.checkpoints import BEST_RECORD


class BestTracker:
    """Tracks the best evaluation by `metric` (`measure` +1: higher is better, −1: lower) in
    `output_dir/best_checkpoint.json`."""

    def __init__(self, output_dir: Path, metric: str, measure: int):
        self.path = output_dir / BEST_RECORD
        self.metric, self.measure = metric, measure
        self.record = json.loads(self.path.read_text()) if self.path.exists() else None

    def key(self, metrics: dict[str, float]) -> str:
        """The full name (`<evaluator>/<metric>`) that `prediction_cfg.metric` designates in `metrics`."""
        if self.metric in metrics:
            return self.metric
        matches = [k for k in metrics if k.endswith("/" + self.metric)]
        if len(matches) != 1:
            raise KeyError(f"prediction_cfg.metric={self.metric!r} matches {matches or 'nothing'} in {sorted(metrics)}")
        return matches[0]

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
