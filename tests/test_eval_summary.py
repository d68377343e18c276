"""The evaluation summary (markdown, CSV, plot) and the evaluation speed benchmark's quick mode."""
import csv
import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from post_processors.summary import plot_metric, write_summary
from tests.forked_ranks import run_script

REPO = Path(__file__).resolve().parents[1]
ROWS = [(200, {"acc": 0.5, "acc_norm": 0.375}), (50, {"acc": 0.25}), (100, {"acc": 0.3125, "acc_norm": 0.25})]


def test_summary_table_csv_and_plot_hold_the_rows(tmp_path):
    paths = write_summary(ROWS, tmp_path / "summary", metric="acc")
    assert paths["md"].read_text().splitlines() == [
        "| step | acc | acc_norm |", "|---|---|---|",
        "| 50 | 0.2500 |  |", "| 100 | 0.3125 | 0.2500 |", "| 200 | 0.5000 | 0.3750 |"]
    with open(paths["csv"], newline="") as f:
        assert list(csv.reader(f)) == [["step", "acc", "acc_norm"], ["50", "0.25", ""], ["100", "0.3125", "0.25"],
                                       ["200", "0.5", "0.375"]]
    image = imread(paths["png"])
    assert image.shape[:2] == (400, 600)
    line = plot_metric(ROWS, "acc_norm").axes[0].lines[0]
    assert line.get_xydata().tolist() == [[100, 0.25], [200, 0.375]]  # a step without the metric is not plotted


def test_summary_columns_and_unknown_metric(tmp_path):
    paths = write_summary(ROWS, tmp_path, metric="acc_norm", columns=["acc_norm"], name="norm")
    assert paths["md"].name == "norm.md" and paths["md"].read_text().splitlines()[0] == "| step | acc_norm |"
    with pytest.raises(ValueError, match="metric 'f1' is in none of the 3 rows"):
        write_summary(ROWS, tmp_path, metric="f1")


def test_eval_speed_bench_quick_mode():
    result = run_script("-m bench.eval_speed", ["--quick"], timeout=300)  # forked (tests/forked_ranks.py)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("\n\n|")[0])
    assert set(report["items_per_second"]) == {"one_option_per_forward", "one_item_per_forward", "batched"}
    assert all(v > 0 for v in report["items_per_second"].values())
    assert report["max_abs_score_difference"] < 1e-4
    assert "| batched |" in result.stdout
