"""`prediction_cfg.metric` against what the configured evaluators will report, checked before any model is loaded
(trainer.build_evaluators, training/best.metric_problem): an unlabelled split reports no accuracy, lm-eval's loaded
tasks name their metrics; training that ranks its evaluations stops, a sweep warns and goes on. Problems of several
evaluators are reported together."""
import logging

import pytest

import trainer
from general_util.errors import ConfigError
from tests.trainer_runs import compose_config

TINY = ["model_name_or_path=models/tiny_llama"]


def test_an_unlabelled_split_reports_no_accuracy_so_the_sweep_warns_and_tracks_no_best(caplog):
    cfg = compose_config(TINY + ["evaluators.ceval.reader.split=test"], ("conf/llama/zh", "eval_ceval"))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        evaluators = trainer.build_evaluators(cfg, sweep=True)
    assert evaluators["ceval"].metric_names() == ["n", "labelled", "truncated"]
    assert ("prediction_cfg.metric='ceval/acc' matches nothing in ['ceval/labelled', 'ceval/n', 'ceval/truncated']; "
            "the sweep evaluates every model and writes its summary, but tracks no best checkpoint") in caplog.text
    labelled = compose_config(TINY, ("conf/llama/zh", "eval_ceval"))
    names = trainer.build_evaluators(labelled, sweep=True)["ceval"].metric_names()
    assert {"acc", "acc_norm", "n", "labelled"} <= set(names) and any(n.startswith("subject/") for n in names)
    with pytest.raises(ConfigError, match=r"^prediction_cfg\.metric='ceval/acc' matches nothing"):
        trainer.build_evaluators(compose_config(TINY + ["evaluators.ceval.reader.split=test", "save_best=true"],
                                                ("conf/llama/zh", "eval_ceval")), sweep=True)


def test_training_that_ranks_evaluations_needs_a_reported_metric():
    cfg = compose_config(["prediction_cfg.metric=acc"])
    with pytest.raises(ConfigError, match=r"^prediction_cfg\.metric='acc' matches nothing in \['dev_loss/loss', "
                                          r"'dev_loss/perplexity', 'dev_loss/tokens'\]; set prediction_cfg\.metric"):
        trainer.build_evaluators(cfg, sweep=False)
    assert trainer.build_evaluators(compose_config(["prediction_cfg.metric=acc", "evaluate_during_training=false"]),
                                    sweep=False)  # not ranked: the final evaluation needs no metric
    assert list(trainer.build_evaluators(compose_config([]), sweep=False)) == ["dev_loss"]


def test_lm_eval_tasks_name_their_metrics_before_any_model_is_loaded():
    pytest.importorskip("lm_eval")
    cfg = compose_config(TINY + ["+eval@evaluators.lm=lm_eval", "evaluators.lm.tasks=[tests/fixtures/lm_eval]",
                                 "prediction_cfg.metric=lm/gsm8k_local/exact_match"], ("conf", "eval_only"))
    with pytest.raises(ConfigError, match=r"matches nothing in \['lm/gsm8k_local/exact_match/flexible-extract', "
                                          r"'lm/gsm8k_local/exact_match/strict-match', 'lm/logiqa2_local/acc', "
                                          r"'lm/logiqa2_local/acc_norm'\]") as refused:
        trainer.build_evaluators(with_key(cfg, "save_best", True), sweep=True)
    assert "set prediction_cfg.metric to one of them" in str(refused.value)
    cfg.prediction_cfg.metric = "strict-match"
    assert trainer.build_evaluators(cfg, sweep=True)["lm"].metric_names()[0] == "gsm8k_local/exact_match/strict-match"


def test_every_evaluator_problem_is_listed_at_once():
    cfg = compose_config(TINY + ["+eval@evaluators.reclor=reclor", "evaluators.reclor.batch_size=0",
                                 "evaluators.dev_loss.batch_size=0"])
    with pytest.raises(ConfigError) as refused:
        trainer.build_evaluators(cfg, sweep=False)
    assert str(refused.value) == ("evaluators.dev_loss: batch_size=0: must be ≥ 1; "
                                  "evaluators.reclor: evaluator reclor: batch_size=0; must be ≥ 1")


def with_key(cfg, key, value):
    cfg = cfg.copy()
    cfg[key] = value
    return cfg
