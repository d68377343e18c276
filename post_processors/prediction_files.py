"""What an evaluation leaves in its output folder: `predictions.jsonl` (one line per item, with its
prompt, scores, prediction and gold), `metrics.json` and, for a split without labels (the ReClor test
set), the leaderboard submission `predictions.npy`."""
import json
from pathlib import Path

import numpy as np

SUBMISSION = "predictions.npy"


def write_outputs(output_dir: str | Path, predictions: list[dict], metrics: dict) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if predictions and all(p["gold"] is None for p in predictions):
        write_submission(output_dir / SUBMISSION, predictions)


def write_submission(path: Path, predictions: list[dict]) -> None:
    """The predicted option indices in item (file) order, as ReClor's leaderboard takes them
    (`np.save`); an unparsable generated answer is -1."""
    write_prediction_indices(path, predictions, -1)


def write_prediction_indices(path: Path, predictions: list[dict], unparsable: int) -> None:
    """`np.save` of the predicted option index of every item in item order (`unparsable` where none)."""
    np.save(path, np.array([unparsable if p["prediction"] is None else p["prediction"] for p in predictions],
                           dtype=np.int64))
