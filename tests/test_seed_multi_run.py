"""seed_multi_run.sh: one run per seed, then a mean ± std table of the final metrics."""
import csv
import json
import statistics
import subprocess

import pytest

from post_processors.seed_summary import summarize
from tests.trainer_runs import REPO

pytestmark = pytest.mark.slow


def test_summary_of_hand_made_results(tmp_path):
    for seed, loss in ((1, 2.0), (2, 4.0)):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "eval_results.json").write_text(json.dumps({"step": 5, "dev/loss": loss}))
    header, rows = summarize([tmp_path / "seed1", tmp_path / "seed2"])
    assert header == ["metric", "seed1", "seed2", "mean", "std"]
    assert rows == [["dev/loss", 2.0, 4.0, 3.0, statistics.stdev([2.0, 4.0])]]


def test_two_seeds_on_the_demo_config(tmp_path):
    result = subprocess.run(["bash", "seed_multi_run.sh", "conf/demo/sft.yaml", "1", "2", "--", f"output_dir={tmp_path}",
                             "max_steps=4", "evaluate_during_training=false", "save_steps=-1", "logging_steps=2"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "seed_summary.csv") as f:
        rows = {row["metric"]: row for row in csv.DictReader(f)}
    assert {"dev_loss/loss", "dev_loss/perplexity"} <= set(rows)
    losses = [float(rows["dev_loss/loss"][f"seed{s}"]) for s in (1, 2)]
    assert losses[0] != losses[1]  # different seeds, different data order
    assert float(rows["dev_loss/loss"]["mean"]) == pytest.approx(sum(losses) / 2)
    assert "dev_loss/loss" in (tmp_path / "seed_summary.md").read_text() and "±" in result.stdout
