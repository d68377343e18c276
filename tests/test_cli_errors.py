"""The command line's error contract: a user error, wherever it is raised (preflight, or inside a dataset or
evaluator that Hydra's instantiate builds and wraps), prints exactly one line `error: ...` and exits 2;
HYDRA_FULL_ERROR=1 shows the whole traceback. The original trainer's `--key=value` habit works."""
import re
from functools import partial

import pytest

from tests.trainer_runs import FAST, run_trainer

# the whole command, interpreter start-up included (nothing but the error line may reach stderr: test_bad_record);
# the other cases run trainer.py's same __main__, its sys.argv as given, in forked ranks (tests/forked_ranks.py)
run_command = partial(run_trainer, launcher="python")

GOOD = '{"instruction": "a", "output": "b"}\n'


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[rank \d+\] |^tokenizing |^$")


def one_line_error(result) -> str:
    """The error line. Before it, rank 0's log and progress lines (the run had started); nothing else."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert not any(word in result.stderr for word in ("Traceback", "Error executing job", "HYDRA_FULL_ERROR"))
    assert lines[-1].startswith("error: ") and all(LOG_LINE.match(line) for line in lines[:-1]), result.stderr
    return lines[-1]


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(GOOD + '{"instruction": "a", "output": "b"\n', encoding="utf-8")
    return path


def test_bad_record(tmp_path, bad_file):
    line = one_line_error(run_command(tmp_path / "out", FAST + [f"train_file={bad_file}", "data.cache_dir=null"],
                                      check=False))
    assert line.startswith(f"error: {bad_file}:2: malformed JSON")


def test_no_usable_records(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"oops"\n{"question": "q"}\n', encoding="utf-8")
    line = one_line_error(run_trainer(tmp_path / "out", FAST + [f"train_file={path}", "data.on_bad_record=skip",
                                                                 "train_dataset.on_bad_record=skip", "data.cache_dir=null"],
                                      check=False))
    assert line.startswith(f"error: {path}: no usable records: all 2 skipped")


def test_unknown_template(tmp_path):
    line = one_line_error(run_trainer(tmp_path / "out", FAST + ["train_dataset.template=fr"], check=False))
    assert line.startswith("error: train_dataset: template='fr': unknown prompt template"), line


def test_bad_evaluator_setting(tmp_path):
    line = one_line_error(run_trainer(tmp_path / "out", ["evaluators.dev_loss.batch_size=0", "max_steps=1"],
                                      check=False))
    assert line == "error: evaluators.dev_loss: batch_size=0: must be ≥ 1", line


def test_nested_key_typo_is_caught_by_preflight(tmp_path):
    line = one_line_error(run_trainer(tmp_path / "out", ["+model.gradient_checkpoint=true"], check=False))
    assert line == ("error: model.gradient_checkpoint: not a parameter of models.loading.load_causal_lm; "
                    "did you mean 'gradient_checkpointing'?"), line
    assert not (tmp_path / "out" / "logs").exists()  # stopped before anything was set up


def test_full_error_for_debugging(tmp_path):
    result = run_trainer(tmp_path / "out", FAST + ["train_dataset.template=fr"], check=False,
                         env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_legacy_double_dash_overrides(tmp_path):
    result = run_trainer(tmp_path / "out", ["--learning_rate=1e-4", "--per_gpu_train_batch_size", "4", "--dry_run"])
    assert "learning_rate: 0.0001" in result.stdout and "per_gpu_train_batch_size: 4" in result.stdout
    assert "optimizer steps: 296" in result.stdout  # 148 samples, batch 4, 8 epochs: the overrides took effect
    assert result.stderr.count("note: converted to Hydra overrides: --learning_rate=1e-4 → learning_rate=1e-4, "
                               "--per_gpu_train_batch_size 4 → per_gpu_train_batch_size=4, --dry_run → dry_run=true") == 1


def test_target_keys_are_checked_against_signatures_through_kwargs_forwarding():
    from omegaconf import OmegaConf

    from training.config import target_key_problems
    cfg = OmegaConf.create({"evaluators": {"dev": {
        "_target_": "post_processors.loss.LossEvaluator", "batch_sise": 8,
        "dataset": {"_target_": "data.sft.InstructionDataset", "_partial_": True, "files": "x", "truncation": "drop",
                    "truncaton": "drop"}}},
        "model": {"_target_": "models.loading.load_causal_lm", "name_or_path": "${model_name_or_path}",
                  "loss_impl": "chunked"}})
    assert target_key_problems(cfg) == [
        "evaluators.dev.batch_sise: not a parameter of post_processors.loss.LossEvaluator; did you mean 'batch_size'?",
        # InstructionDataset forwards **options to TokenizedDataset: `truncation` is accepted, the typo is not
        "evaluators.dev.dataset.truncaton: not a parameter of data.sft.InstructionDataset; did you mean 'truncation'?",
        "model.loss_impl: now the top-level key 'loss_impl'; write loss_impl=chunked"]  # moved out of model:
