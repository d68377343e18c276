"""The lm-evaluation-harness evaluator (post_processors/lm_eval_harness.py): the same numbers and per-sample
responses as lm-eval's own `simple_evaluate` with its HFLM on the saved weights, in process and after a
2-rank training run (ZeRO-2 and ZeRO-3), over the checkpoint sweep, offline; one-line errors without lm-eval
and for a hub dataset that cannot be fetched. Needs requirements-lm-eval.txt (CI installs it)."""
import csv
import importlib.util
import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

from modules.loss_impl import LossSettings
from tests.trainer_runs import FAST, REPO, read_scalars, run_trainer, train_in_process

if importlib.util.find_spec("lm_eval") is None and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
    pytest.skip("lm-eval absent: pip install -r requirements-lm-eval.txt (CI installs it)", allow_module_level=True)

FIXTURES = REPO / "tests" / "fixtures" / "lm_eval"
TINY = REPO / "models" / "tiny_llama"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # as tests/conftest.py sets them for the session
MC_AND_GENERATION = ("logiqa2_local", "gsm8k_local")
HARNESS = ["+eval@evaluators.harness=lm_eval", f"evaluators.harness.tasks=[{FIXTURES.relative_to(REPO)}]",
           "evaluators.harness.batch_size=3", "evaluators.harness.gen_kwargs={max_gen_toks:8,until:['Answer:']}"]
GEN_KWARGS = {"max_gen_toks": 8, "until": ["Answer:"]}  # as HARNESS sets them


def reference(checkpoint: Path, tasks: list[str], include_path: Path, **options) -> dict:
    """lm-eval's own run: simple_evaluate with HFLM on the saved weights (CPU, float32)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(checkpoint), device="cpu", dtype="float32", batch_size=4,
              max_length=options.pop("max_length", None))
    # its report's environment section (torch's collect_env: `pip list`, lsb_release, ldconfig; 0.6 s of CPU a
    # call, 1.7 s the first) is metadata no comparison reads
    with mock.patch("lm_eval.evaluator.add_env_info"):
        return simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(include_path),
                                                                               include_defaults=False),
                               bootstrap_iters=0, **options)


def read_samples(folder: Path, task: str) -> list[dict]:
    with open(folder / f"samples_{task}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def assert_same_as_lm_eval(metrics: dict[str, float], folder: Path, theirs: dict, prefix: str = "") -> None:
    """Metrics (every key, within 1e-6; perplexities relatively) and every sample's responses: generations
    identical, log-likelihoods within 1e-4 with the same greedy flags."""
    from post_processors.lm_eval_harness import flat_metrics

    expected = flat_metrics(theirs["results"])
    assert {f"{prefix}{k}" for k in expected} == set(metrics)
    for key, value in expected.items():
        assert metrics[f"{prefix}{key}"] == pytest.approx(value, rel=1e-4 if "perplexity" in key else 0, abs=1e-6), key
    for task, samples in theirs["samples"].items():
        ours = {(s["doc_id"], s["filter"]): s for s in read_samples(folder, task)}
        assert len(ours) == len(samples)
        for sample in samples:
            mine = ours[sample["doc_id"], sample["filter"]]
            assert mine["arguments"] == json.loads(json.dumps(sample["arguments"], default=str))
            for a, b in zip(mine["filtered_resps"], sample["filtered_resps"], strict=True):
                if isinstance(b, str):
                    assert a == b
                elif isinstance(b, (tuple, list)):  # (log-likelihood, is greedy)
                    assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1]
                else:  # a rolling log-likelihood
                    assert a == pytest.approx(b, abs=1e-4)


def test_multiple_choice_and_generation_equal_lm_eval(tmp_path):
    """One-shot prompts from the tasks' train splits, a context shorter than the prompts (lm-eval's truncation
    of both request kinds), batches of 3."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from post_processors.lm_eval_harness import LMEvalHarnessEvaluator

    evaluator = LMEvalHarnessEvaluator("harness", [str(FIXTURES)], num_fewshot=1, batch_size=3, max_length=96)
    assert sorted(evaluator.task_dict["tasks"]) == sorted(MC_AND_GENERATION)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    metrics = evaluator(model, AutoTokenizer.from_pretrained(TINY), tmp_path, LossSettings())
    assert set(metrics) == {"logiqa2_local/acc", "logiqa2_local/acc_norm", "gsm8k_local/exact_match/strict-match",
                            "gsm8k_local/exact_match/flexible-extract"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert len(read_samples(tmp_path, "logiqa2_local")) == 8 and len(read_samples(tmp_path, "gsm8k_local")) == 2 * 6
    theirs = reference(TINY, list(MC_AND_GENERATION), FIXTURES, num_fewshot=1, max_length=96)
    assert_same_as_lm_eval(metrics, tmp_path, theirs)
    # a second evaluation is the same (few-shot examples re-drawn from the same seed)
    assert evaluator(model, AutoTokenizer.from_pretrained(TINY), tmp_path / "again", LossSettings()) == metrics


def test_chat_template_equals_lm_eval(tmp_path):
    """apply_chat_template with a system instruction and the one-shot example as an earlier turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from post_processors.lm_eval_harness import LMEvalHarnessEvaluator

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    tokenizer.chat_template = (REPO / "tests" / "fixtures" / "chat_templates" / "llama2_chat.jinja").read_text()
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    chat_model = tmp_path / "chat_model"
    model.save_pretrained(chat_model)
    tokenizer.save_pretrained(chat_model)
    options = dict(num_fewshot=1, apply_chat_template=True, fewshot_as_multiturn=True,
                   system_instruction="Answer briefly.")
    evaluator = LMEvalHarnessEvaluator("harness", [str(FIXTURES)], batch_size=4, **options)
    metrics = evaluator(model, tokenizer, tmp_path / "out", LossSettings())
    prompt = read_samples(tmp_path / "out", "gsm8k_local")[0]["arguments"][0][0]  # (context, generation kwargs)
    assert prompt.startswith("<s>[INST] <<SYS>>\nAnswer briefly.") and prompt.count("[INST]") == 2
    assert_same_as_lm_eval(metrics, tmp_path / "out", reference(chat_model, list(MC_AND_GENERATION), FIXTURES, **options))


def test_rolling_loglikelihood_equals_lm_eval(tmp_path):
    """Perplexity over documents longer than the context: lm-eval's disjoint rolling windows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from post_processors.lm_eval_harness import LMEvalHarnessEvaluator

    evaluator = LMEvalHarnessEvaluator("harness", [str(FIXTURES / "rolling" / "wikitext_local.yaml")], max_length=32)
    metrics = evaluator(AutoModelForCausalLM.from_pretrained(TINY).eval(), AutoTokenizer.from_pretrained(TINY), tmp_path,
                        LossSettings())
    assert set(metrics) == {"wikitext_local/word_perplexity", "wikitext_local/byte_perplexity",
                            "wikitext_local/bits_per_byte"}
    assert_same_as_lm_eval(metrics, tmp_path, reference(TINY, ["wikitext_local"], FIXTURES / "rolling", max_length=32))


def test_without_lm_eval_configuring_it_is_one_line(monkeypatch):
    """The trainer imports nothing of lm-eval; building the evaluator names the requirements file."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from general_util.errors import one_line

    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if it were not installed
    import trainer  # noqa: F401
    with initialize_config_dir(config_dir=str(REPO / "conf" / "demo"), version_base="1.3"):
        cfg = compose("sft", overrides=HARNESS)
    with pytest.raises(Exception) as error:
        instantiate(cfg.evaluators)
    line = one_line(error.value)
    assert line.startswith("error: evaluators.harness: evaluator lm_eval: lm-evaluation-harness is not installed")
    assert line.endswith("pip install -r requirements-lm-eval.txt") and "\n" not in line
    assert "lm_eval" not in sys.modules or sys.modules["lm_eval"] is None


def test_unreachable_hub_dataset_is_one_line(tmp_path):
    """A named hub task offline: the run stops before training with one line naming the dataset (a user error:
    exit 2, as test_cli_errors checks for the command line)."""
    from general_util.errors import find_user_error, one_line
    from post_processors.lm_eval_harness import DatasetUnavailable

    with pytest.raises(Exception) as error:  # offline: tests/conftest.py
        train_in_process(tmp_path, FAST + ["max_steps=2", "do_eval=true", "+eval@evaluators.harness=lm_eval",
                                           "evaluators.harness.tasks=[logiqa2]"])
    assert isinstance(find_user_error(error.value), DatasetUnavailable)
    line = one_line(error.value)  # what trainer.py prints
    assert line.startswith("error: evaluator lm_eval: task logiqa2: dataset baber/logiqa2 (name logiqa2) could not "
                           "be loaded"), line
    assert "HF_HUB_OFFLINE" in line and "\n" not in line
    assert not (tmp_path / "checkpoint-2").exists()


def test_missing_local_data_and_unknown_task_are_one_line(tmp_path):
    from general_util.errors import ConfigError, one_line
    from post_processors.lm_eval_harness import DatasetUnavailable, LMEvalHarnessEvaluator

    task = (FIXTURES / "logiqa2_local.yaml").read_text().replace("tests/fixtures/lm_eval/data/logiqa2_validation.jsonl",
                                                                  str(tmp_path / "gone.jsonl"))
    (tmp_path / "logiqa2_gone.yaml").write_text(task)
    with pytest.raises(DatasetUnavailable) as error:
        LMEvalHarnessEvaluator("harness", [str(tmp_path / "logiqa2_gone.yaml")])
    line = one_line(error.value)
    assert line.startswith("error: evaluator harness: task logiqa2_local: dataset json (files {") and "gone.jsonl" in line
    assert "\n" not in line
    with pytest.raises(ConfigError, match=r"^evaluator harness: Spec 'no_such_task' is not a registered task"):
        LMEvalHarnessEvaluator("harness", ["no_such_task"])  # indexes lm-eval's tasks too


def train_with_harness(run: Path, stage: str, config: str = "sft") -> None:
    """2 ranks, 4 steps, the harness evaluator on both local tasks at steps 2 and 4, best by logiqa2_local/acc."""
    run_trainer(run, FAST + HARNESS + [
        "max_steps=4", "per_gpu_train_batch_size=2", f"deepspeed@ds_cfg={stage}", "do_eval=true",
        "evaluate_during_training=true", "eval_steps=2", "save_steps=2",
        "prediction_cfg.metric=harness/logiqa2_local/acc", "prediction_cfg.measure=1"],
        nproc=2, config=("conf/demo", config), env=OFFLINE)


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("harness_zero2")
    train_with_harness(run, "zero2")
    return run


def assert_training_run(run: Path, weights: str = "") -> None:
    """`weights`: where in a checkpoint the full model is (a LoRA checkpoint's merged/)."""
    scalars = read_scalars(run)
    tags = [f"eval/harness/{key}" for key in ("logiqa2_local/acc", "logiqa2_local/acc_norm",
                                               "gsm8k_local/exact_match/strict-match",
                                               "gsm8k_local/exact_match/flexible-extract")]
    for tag in tags:
        assert [step for step, _ in scalars[tag]] == [2, 4], tag
    accuracies = dict(scalars["eval/harness/logiqa2_local/acc"])
    best = json.loads((run / "best_checkpoint.json").read_text())
    best_step = min(step for step, acc in accuracies.items() if acc == max(accuracies.values()))
    assert best["metric"] == "harness/logiqa2_local/acc" and best["step"] == best_step
    assert best["checkpoint"] == f"checkpoint-{best_step}"
    for step in (2, 4):  # every evaluation: lm-eval's own numbers on the checkpoint saved at that step
        folder = run / "eval" / f"step-{step}" / "harness"
        metrics = json.loads((folder / "metrics.json").read_text())
        for tag in tags:
            assert dict(scalars[tag])[step] == pytest.approx(metrics[tag.removeprefix("eval/harness/")], abs=1e-6)
        assert_same_as_lm_eval(metrics, folder, reference(run / f"checkpoint-{step}" / weights, list(MC_AND_GENERATION),
                                                         FIXTURES, gen_kwargs=GEN_KWARGS))
        generation = read_samples(folder, "gsm8k_local")[0]["arguments"][0][1]
        assert generation["max_gen_toks"] == 8 and generation["until"] == ["Answer:"]


@pytest.mark.slow
def test_two_rank_training_zero2(zero2_run):
    assert_training_run(zero2_run)


@pytest.mark.slow
def test_two_rank_training_zero3(tmp_path):
    """ZeRO-3: parameters gathered inside forward, generation with synced_gpus; ranks in lockstep."""
    train_with_harness(tmp_path, "zero3")
    assert_training_run(tmp_path)


@pytest.mark.slow
def test_two_rank_training_lora(tmp_path):
    """A peft model inside the engine: the adapter's live forward; lm-eval reads the merged copy."""
    train_with_harness(tmp_path, "zero2", config="lora")
    assert_training_run(tmp_path, weights="merged")


@pytest.mark.slow
def test_checkpoint_sweep(zero2_run):
    """do_train=false over the run's checkpoints: the same metrics as during training, per checkpoint."""
    result = run_trainer(zero2_run, HARNESS + ["do_train=false", "do_eval=true",
                                               "prediction_cfg.metric=harness/logiqa2_local/acc", "prediction_cfg.measure=1"],
                         env=OFFLINE)
    assert "evaluated 2 model(s)" in result.stdout
    with open(zero2_run / "eval_summary.csv") as f:
        rows = {int(row["step"]): row for row in csv.DictReader(f)}
    assert sorted(rows) == [2, 4]
    for step, row in rows.items():
        swept = json.loads((zero2_run / "eval" / f"checkpoint-{step}" / "harness" / "metrics.json").read_text())
        trained = json.loads((zero2_run / "eval" / f"step-{step}" / "harness" / "metrics.json").read_text())
        assert swept.keys() == trained.keys()
        assert all(swept[k] == pytest.approx(trained[k], abs=1e-6) for k in swept)
        assert float(row["harness/logiqa2_local/acc"]) == pytest.approx(swept["logiqa2_local/acc"], abs=1e-6)
        assert len(read_samples(zero2_run / "eval" / f"checkpoint-{step}" / "harness", "gsm8k_local")) == 12


@pytest.mark.slow
def test_ready_task_sets_name_lm_eval_tasks():
    """conf/eval/lm_eval_zh.yaml and lm_eval_reasoning.yaml, composed by their task configs, name tasks and
    groups that lm-eval 0.4.13 has (their datasets need the hub, so they are not run here)."""
    from hydra import compose, initialize_config_dir

    from post_processors.lm_eval_harness import task_manager

    expected = {("zh", "eval_lm_eval_zh", "lm_eval_zh"): ["cmmlu", "ceval-valid"],
                ("wiki", "eval_lm_eval_reasoning", "lm_eval_reasoning"): ["gsm8k", "logiqa2"]}
    known = set(task_manager((), include_defaults=True).all_tasks)  # lm-eval's TaskManager(), built once here
    for (folder, config, key), tasks in expected.items():
        with initialize_config_dir(config_dir=str(REPO / "conf" / "llama" / folder), version_base="1.3"):
            cfg = compose(config, overrides=["model_name_or_path=models/tiny_llama"])
        node = cfg.evaluators[key]
        assert node._target_ == "post_processors.lm_eval_harness.LMEvalHarnessEvaluator" and list(node.tasks) == tasks
        assert cfg.prediction_cfg.metric.startswith(f"{key}/{tasks[0]}/") and set(tasks) <= known
