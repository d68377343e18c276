"""Non-finite losses: nan_policy=skip drops the update and counts it; stop writes diagnostics and exits."""
import json

import pytest

from tests.trainer_runs import FAST, read_scalars, run_trainer, train_in_process
from trainer import TrainingError
NAN_MODEL = ["model._target_=tests.nan_injection.load_with_nan_on_calls", "+model.nan_calls=[3]",
             "max_steps=5", "per_gpu_train_batch_size=4"]


def test_skip_policy_skips_the_step_and_continues(tmp_path):
    train_in_process(tmp_path, FAST + NAN_MODEL + ["nan_policy=skip"])
    scalars = read_scalars(tmp_path)
    assert [step for step, _ in scalars["train/nan_skips"]] == [3]
    losses = dict(scalars["train/loss"])
    assert losses[3] != losses[3] and all(losses[s] == losses[s] for s in (1, 2, 4, 5))  # NaN only at step 3
    assert "update skipped (1 of at most 10" in (tmp_path / "logs" / "rank0.log").read_text()
    assert (tmp_path / "checkpoint-5" / "model.safetensors").is_file()


def test_skip_policy_gives_up_after_max_nan_skips(tmp_path):
    with pytest.raises(TrainingError, match="^2 non-finite steps exceed max_nan_skips=1"):
        train_in_process(tmp_path, FAST + NAN_MODEL[:1] + ["+model.nan_calls=[2,3]", "max_steps=5",
                                                           "nan_policy=skip", "max_nan_skips=1"])


@pytest.mark.slow
def test_stop_policy_writes_diagnostics_and_exits_nonzero(tmp_path):
    """Through the command line: a TrainingError is one `error:` line and a non-zero exit, like every user error."""
    result = run_trainer(tmp_path, FAST + NAN_MODEL + ["nan_policy=stop"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: non-finite loss or gradient norm at step 3 (nan_policy=stop)")
    diagnostics = json.loads((tmp_path / "nan_diagnostics.json").read_text())
    assert diagnostics["step"] == 3 and len(diagnostics["sample_indices"]) == 4
