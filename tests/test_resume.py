"""Fault tolerance: a run killed at any point and resumed with resume=auto continues bitwise exactly. The faults
are real (SIGKILL, SIGTERM) and struck at exact points by the trainer's test-only hook (general_util/faults.py),
so no outcome depends on timing."""
import json
import shutil
import signal
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_runs import FAST, read_scalars, run_trainer, train_in_process
from training.checkpoints import CheckpointError

STEPS = 12
# accumulation > 1, a dataloader worker, checkpoints every 3 steps; ⌈148 samples / (4 × 2)⌉ = 19 steps an epoch,
# so every resume point is in the middle of an epoch.
RUN = FAST + [f"max_steps={STEPS}", "save_steps=3", "gradient_accumulation_steps=2", "num_workers=1"]
LAYOUT = ["per_gpu_train_batch_size=4"]  # 1 rank (2 ranks killed and resumed: test_elastic_resume.py)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The uninterrupted 1-rank run every resumed run is compared with."""
    out = tmp_path_factory.mktemp("run_a")
    run_trainer(out, RUN + LAYOUT)
    return out


def losses(output_dir):
    return {step: value for step, value in read_scalars(output_dir)["train/loss"]}


def assert_identical(run_a, run_b, from_step=1):
    a, b = losses(run_a), losses(run_b)
    assert sorted(b) == list(range(1, STEPS + 1))  # no duplicated or missing steps after the resumes
    assert [a[s] for s in range(from_step, STEPS + 1)] == [b[s] for s in range(from_step, STEPS + 1)]
    weights_a = load_file(run_a / f"checkpoint-{STEPS}" / "model.safetensors")
    weights_b = load_file(run_b / f"checkpoint-{STEPS}" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def checkpoint_steps(output_dir):
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


@dataclass
class Leg:
    """What one launch of the faulted run left: its exit code, the rank-0 log lines it added, the checkpoints
    after it and the files of the partial `.tmp-checkpoint-*` folders then."""
    returncode: int
    log: str
    checkpoints: list[int]
    partial: dict[str, list[str]]


# The faults met in turn by one 1-rank run, each launch resuming the previous one with resume=auto
# (LLAMA_TRAINER_FAULT, general_util/faults.py: a real SIGKILL or SIGTERM at an exact step or inside an exact
# save, not a signal timed from outside). Each test reads its fault's leg and the resume after it; every step
# of the finished run is compared with run_a, so each resume is checked bitwise.
FAULTS = {
    "crash_in_save": "kill@save=6",  # SIGKILL between two files of the save of step 6 → resumes from checkpoint-3
    "sigterm": "sigterm@step=7",     # asks to stop after step 7: step 8 completes and is saved → from checkpoint-8
    "sigkill": "kill@step=10",       # killed between checkpoint-9 and checkpoint-12 → from checkpoint-9
    "finish": None,
}


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    """{leg: Leg} of the faulted run (FAULTS, in order), and its folder."""
    out = tmp_path_factory.mktemp("faulted")
    legs, log_length = {}, 0
    for index, (name, fault) in enumerate(FAULTS.items()):
        result = run_trainer(out, RUN + LAYOUT + (["resume=auto"] if index else []), check=False,
                             env={"LLAMA_TRAINER_FAULT": fault} if fault else None)
        log = (out / "logs" / "rank0.log").read_text()
        partial = {p.name: sorted(f.name for f in p.iterdir()) for p in out.glob(".tmp-checkpoint-*")}
        legs[name] = Leg(result.returncode, log[log_length:], checkpoint_steps(out), partial)
        log_length = len(log)
    return legs, out


@pytest.mark.slow
def test_crash_during_save_resumes_from_the_previous_checkpoint(run_a, faulted):
    legs, out = faulted
    crash = legs["crash_in_save"]
    assert crash.returncode == -9, crash.returncode
    assert f"step 6/{STEPS}" in crash.log and f"step 7/{STEPS}" not in crash.log, crash.log[-3000:]
    assert crash.checkpoints == [3]
    # the DeepSpeed state is written, the weights are not
    assert "rng_state_rank0.pt" in crash.partial[".tmp-checkpoint-6"]
    assert "model.safetensors" not in crash.partial[".tmp-checkpoint-6"]
    assert "trainer_state.json" not in crash.partial[".tmp-checkpoint-6"]
    resumed = legs["sigterm"].log
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in resumed, resumed[-3000:]
    assert legs["sigterm"].partial == {}  # the next save of step 6 replaced the partial folder
    assert_identical(run_a, out)


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes_identically(run_a, faulted):
    legs, out = faulted
    sigterm = legs["sigterm"]
    assert sigterm.returncode == 0, sigterm.log[-3000:]
    assert "stopping at step 8 on request" in sigterm.log and f"step 9/{STEPS}" not in sigterm.log
    assert sigterm.checkpoints == [3, 6, 8]  # step 8 is saved although it is not a save step
    assert f"resumed from {out / 'checkpoint-8'} at step 8" in legs["sigkill"].log
    assert_identical(run_a, out)


@pytest.mark.slow
def test_sigkill_then_resume_auto_is_bitwise_identical(run_a, faulted):
    legs, out = faulted
    killed = legs["sigkill"]
    assert killed.returncode == -9, killed.returncode
    assert f"step 10/{STEPS}" in killed.log and f"step 11/{STEPS}" not in killed.log, killed.log[-3000:]
    assert killed.checkpoints == [3, 6, 8, 9]
    finish = legs["finish"]
    assert finish.returncode == 0, finish.log[-3000:]
    assert f"resumed from {out / 'checkpoint-9'} at step 9" in finish.log
    assert_identical(run_a, out)


@pytest.mark.slow
def test_incompatible_checkpoint_continues_with_weights_only(run_a, tmp_path):
    """Another global batch cannot continue exactly (that refusal, exit 2 and its line naming
    resume_mode=weights_only: test_elastic_resume.py); resume_mode=weights_only starts from the weights."""
    checkpoint = run_a / "checkpoint-6"
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


def test_another_zero_stage_or_engine_is_refused_in_one_line(tmp_path):
    """DeepSpeed's optimizer state of one ZeRO stage does not load into another: refused with the reason
    (it used to fail inside DeepSpeed's loader with a bare AssertionError)."""
    train_in_process(tmp_path, FAST + ["max_steps=2", "save_steps=2", "deepspeed@ds_cfg=zero1"])
    with pytest.raises(CheckpointError, match=r"cannot resume exactly from .*checkpoint-2: zero_stage 1 → 3 \(the ZeRO"):
        train_in_process(tmp_path, FAST + ["max_steps=4", "deepspeed@ds_cfg=zero3", "resume=auto"])
    with pytest.raises(CheckpointError, match=r"checkpoint-2: engine deepspeed → fsdp2"):
        train_in_process(tmp_path, FAST + ["max_steps=4", "engine=fsdp2", "resume=auto"])
