"""Fault tolerance: a run killed at any point and resumed with resume=auto continues bitwise exactly. The faults
are real (SIGKILL, SIGTERM) and struck at exact points by the trainer's test-only hook (general_util/faults.py),
so no outcome depends on timing."""
import json
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_runs import FAST, read_scalars, run_trainer, train_in_process
from training.checkpoints import CheckpointError

pytestmark = pytest.mark.slow
STEPS = 12
# accumulation > 1, a dataloader worker, checkpoints every 3 steps; ⌈148 samples / (4 × 2)⌉ = 19 steps an epoch,
# so every resume point is in the middle of an epoch.
RUN = FAST + [f"max_steps={STEPS}", "save_steps=3", "gradient_accumulation_steps=2", "num_workers=1"]


def layout(nproc):
    return ["per_gpu_train_batch_size=2" if nproc == 2 else "per_gpu_train_batch_size=4"]


def launcher(nproc):
    return "torchrun" if nproc == 2 else "python"


@pytest.fixture(scope="module", params=[1, 2], ids=["1rank", "2ranks_zero1"])
def uninterrupted(request, tmp_path_factory):
    nproc = request.param
    out = tmp_path_factory.mktemp(f"run_a_{nproc}")
    run_trainer(out, RUN + layout(nproc), launcher=launcher(nproc), nproc=nproc)
    return nproc, out


def losses(output_dir):
    return {step: value for step, value in read_scalars(output_dir)["train/loss"]}


def assert_identical(run_a, run_b, from_step=1):
    a, b = losses(run_a), losses(run_b)
    assert sorted(b) == list(range(1, STEPS + 1))  # no duplicated or missing steps after the resume
    assert [a[s] for s in range(from_step, STEPS + 1)] == [b[s] for s in range(from_step, STEPS + 1)]
    weights_a = load_file(run_a / f"checkpoint-{STEPS}" / "model.safetensors")
    weights_b = load_file(run_b / f"checkpoint-{STEPS}" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def run_with_fault(output_dir, nproc, fault):
    """A run that meets `fault` (LLAMA_TRAINER_FAULT, general_util/faults.py: a real SIGKILL or SIGTERM at an
    exact step or inside an exact save, on every rank) instead of a signal timed from outside; returns the
    exit code and the rank-0 log."""
    result = run_trainer(output_dir, RUN + layout(nproc), launcher=launcher(nproc), nproc=nproc, check=False,
                         env={"LLAMA_TRAINER_FAULT": fault})
    return result.returncode, (output_dir / "logs" / "rank0.log").read_text()


def checkpoint_steps(output_dir):
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


# killed after these steps: 1 rank between the second and third checkpoints, 2 ranks between the first and second
KILL_STEP = {1: 7, 2: 5}


def test_sigkill_then_resume_auto_is_bitwise_identical(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    kill_step = KILL_STEP[nproc]
    returncode, log = run_with_fault(tmp_path, nproc, f"kill@step={kill_step}")
    assert returncode == -9 if nproc == 1 else returncode != 0, returncode  # torchrun reports a failed worker
    assert f"step {kill_step}/{STEPS}" in log and f"step {kill_step + 1}/{STEPS}" not in log, log[-3000:]
    resume_point = kill_step // 3 * 3
    assert checkpoint_steps(tmp_path) == list(range(3, resume_point + 1, 3))
    run_trainer(tmp_path, RUN + layout(nproc) + ["resume=auto"], launcher=launcher(nproc), nproc=nproc)
    assert f"resumed from {tmp_path / f'checkpoint-{resume_point}'} at step {resume_point}" in \
        (tmp_path / "logs" / "rank0.log").read_text()
    assert_identical(run_a, tmp_path)
    if nproc == 2:
        assert len(list((tmp_path / f"checkpoint-{STEPS}").glob("zero_pp_rank_*_optim_states.pt"))) == 2


def test_crash_during_save_resumes_from_the_previous_checkpoint(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    if nproc == 2:
        pytest.skip("the save path is the same for 2 ranks; covered with 1")
    # SIGKILL between two files of the save of step 6: the DeepSpeed state is written, the weights are not.
    returncode, log = run_with_fault(tmp_path, nproc, "kill@save=6")
    assert returncode == -9, returncode
    assert f"step 6/{STEPS}" in log and f"step 7/{STEPS}" not in log, log[-3000:]
    assert checkpoint_steps(tmp_path) == [3]
    partial = tmp_path / ".tmp-checkpoint-6"
    assert (partial / "rng_state_rank0.pt").is_file()
    assert not (partial / "model.safetensors").exists() and not (partial / "trainer_state.json").exists()
    run_trainer(tmp_path, RUN + layout(nproc) + ["resume=auto"])
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "resumed from" in log and "checkpoint-3 at step 3" in log
    assert_identical(run_a, tmp_path)


def test_sigterm_saves_exits_zero_and_resumes_identically(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    if nproc == 2:
        pytest.skip("signal handling is per process; covered with 1 rank")
    # SIGTERM after step 4: the stop request is agreed in step 5, which completes and is saved (not a save step)
    returncode, log = run_with_fault(tmp_path, nproc, "sigterm@step=4")
    assert returncode == 0, log[-3000:]
    assert "stopping at step 5 on request" in log and f"step 6/{STEPS}" not in log
    assert checkpoint_steps(tmp_path) == [3, 5]
    run_trainer(tmp_path, RUN + layout(nproc) + ["resume=auto"])
    assert f"resumed from {tmp_path / 'checkpoint-5'} at step 5" in (tmp_path / "logs" / "rank0.log").read_text()
    assert_identical(run_a, tmp_path)


def test_incompatible_checkpoint_is_refused_unless_weights_only(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    if nproc == 2:
        pytest.skip("one refusal test is enough")
    checkpoint = run_a / "checkpoint-6"
    result = run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=2", f"resume={checkpoint}"], check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: cannot resume exactly from") and "global_batch_size 8 → 4" in message
    assert "resume_mode=weights_only" in message
    run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=2", "max_steps=2", f"resume={checkpoint}",
                                 "resume_mode=weights_only"])
    assert "resume_mode=weights_only" in (tmp_path / "logs" / "rank0.log").read_text()
    assert sorted(losses(tmp_path)) == [1, 2]  # a fresh run from step 0 ...
    assert losses(tmp_path)[1] < losses(run_a)[1] - 0.1  # ... starting from the trained weights


def test_retention_keeps_newest_and_the_best(tmp_path):
    best = {"metric": "dev_loss/loss", "measure": -1, "value": 1.0, "step": 3, "checkpoint": "checkpoint-3"}
    from training.best import BestTracker
    from training.checkpoints import apply_retention
    for step in (3, 6, 9, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "best_checkpoint.json").write_text(json.dumps(best))
    tracker = BestTracker(tmp_path, "loss", -1)
    deleted = apply_retention(tmp_path, 2, {tracker.best_checkpoint})
    assert sorted(p.name for p in deleted) == ["checkpoint-6"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-3", "checkpoint-9"]
    shutil.rmtree(tmp_path / "checkpoint-3")


def test_fault_spec_is_parsed_or_refused():
    from general_util.faults import parse
    assert parse("kill@step=5") == (signal.SIGKILL, "step", 5, None)
    assert parse("sigterm@save=6@rank=1") == (signal.SIGTERM, "save", 6, 1)
    assert parse(None) is None and parse("") is None
    for bad in ("crash@step=5", "kill@step=x", "kill@epoch=1", "kill@step=5@node=1", "kill"):
        with pytest.raises(ValueError, match="LLAMA_TRAINER_FAULT"):
            parse(bad)


def test_another_zero_stage_is_refused_in_one_line(tmp_path):
    """DeepSpeed's optimizer state of one ZeRO stage does not load into another: refused with the reason
    (it used to fail inside DeepSpeed's loader with a bare AssertionError)."""
    train_in_process(tmp_path, FAST + ["max_steps=2", "save_steps=2", "deepspeed@ds_cfg=zero1"])
    with pytest.raises(CheckpointError, match=r"cannot resume exactly from .*checkpoint-2: zero_stage 1 → 3 \(the ZeRO"):
        train_in_process(tmp_path, FAST + ["max_steps=4", "deepspeed@ds_cfg=zero3", "resume=auto"])
