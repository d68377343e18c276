"""Best-checkpoint tracking, and the do_train=false sweep over a run's checkpoints."""
import csv
import json

import pytest

from training.best import BestTracker
from tests.trainer_runs import FAST, read_scalars, train_in_process


@pytest.mark.parametrize("measure, best_step", [(1, 20), (-1, 10)])
def test_best_tracker_follows_the_measure(tmp_path, measure, best_step):
    tracker = BestTracker(tmp_path, "acc", measure)
    for step, acc in ((10, 0.25), (20, 0.5), (30, 0.375)):
        if tracker.update({"logiqa/acc": acc, "logiqa/acc_norm": 0.1}, step, f"checkpoint-{step}"):
            tracker.write()
    record = json.loads((tmp_path / "best_checkpoint.json").read_text())
    assert record["step"] == best_step and record["checkpoint"] == f"checkpoint-{best_step}"
    assert BestTracker(tmp_path, "acc", measure).best_checkpoint == tmp_path / f"checkpoint-{best_step}"


def test_ambiguous_metric_name_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="matches"):
        BestTracker(tmp_path, "acc", 1).lookup({"a/acc": 1.0, "b/acc": 0.5})


def test_standalone_evaluation_of_every_checkpoint(tmp_path, capsys):
    train_in_process(tmp_path, FAST + ["max_steps=6", "save_steps=2", "per_gpu_train_batch_size=4"])
    capsys.readouterr()
    train_in_process(tmp_path, ["do_train=false", "do_eval=true"])
    with open(tmp_path / "eval_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["2", "4", "6"]
    losses = {int(row["step"]): float(row["dev_loss/loss"]) for row in rows}
    best = json.loads((tmp_path / "best_checkpoint.json").read_text())
    assert best["value"] == min(losses.values()) and losses[best["step"]] == best["value"]
    assert (tmp_path / "eval_summary.png").stat().st_size > 1000 and (tmp_path / "eval_summary.md").is_file()
    assert all((tmp_path / "eval" / f"checkpoint-{s}" / "dev_loss" / "metrics.json").is_file() for s in (2, 4, 6))
    assert "evaluated 3 model(s)" in capsys.readouterr().out


def test_benchmark_evaluator_during_training_and_demo_eval_config(tmp_path, capsys):
    run = tmp_path / "run"
    train_in_process(run, FAST + ["max_steps=4", "per_gpu_train_batch_size=4", "+eval@evaluators.logiqa=logiqa_v2_zh",
                                  "evaluators.logiqa.limit=6", "do_eval=true", "evaluate_during_training=true",
                                  "eval_steps=2", "prediction_cfg.metric=logiqa/acc", "prediction_cfg.measure=1"])
    assert [step for step, _ in read_scalars(run)["eval/logiqa/acc"]] == [2, 4]
    predictions = (run / "eval" / "step-4" / "logiqa" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 6
    capsys.readouterr()
    train_in_process(tmp_path / "eval", [], config=("conf/demo", "eval"))
    assert "evaluated 1 model(s)" in capsys.readouterr().out
    header = (tmp_path / "eval" / "eval_summary.csv").read_text().splitlines()[0].split(",")
    assert {"logiqa_v2_zh/acc", "c3_d/acc_norm", "mmlu/acc"} <= set(header)
