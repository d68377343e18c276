"""Fault tolerance: a run killed at any point and resumed with resume=auto continues bitwise exactly."""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer_runs import FAST, REPO, child_env, read_scalars, run_trainer, trainer_command

pytestmark = pytest.mark.slow
STEPS = 12
# accumulation > 1, a dataloader worker, checkpoints every 3 steps; 148 samples / (4 × 2) → 18 steps an epoch,
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


def run_until(output_dir, nproc, marker, sig):
    """Start a run and send `sig` to it as soon as `marker` appears in its rank-0 log; returns the exit code."""
    cmd = trainer_command(launcher(nproc), nproc) + ["-cp", "conf/demo", "-cn", "sft", f"output_dir={output_dir}",
                                                       *RUN, *layout(nproc)]
    env = child_env()
    log = output_dir / "logs" / "rank0.log"
    with open(output_dir.parent / f"{output_dir.name}.stderr", "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if log.exists() and marker in log.read_text():
                os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
                break
            time.sleep(0.02)
        proc.wait(timeout=300)
    assert marker in log.read_text(), log.read_text()[-3000:]
    return proc.returncode


def test_sigkill_then_resume_auto_is_bitwise_identical(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    kill_step = random.Random(nproc).randint(4, 9)  # after the first checkpoint (step 3)
    run_until(tmp_path, nproc, f"step {kill_step}/{STEPS}", signal.SIGKILL)
    resume_point = max(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert 3 <= resume_point <= kill_step
    run_trainer(tmp_path, RUN + layout(nproc) + ["resume=auto"], launcher=launcher(nproc), nproc=nproc)
    assert_identical(run_a, tmp_path)
    if nproc == 2:
        assert len(list((tmp_path / f"checkpoint-{STEPS}").glob("zero_pp_rank_*_optim_states.pt"))) == 2


def test_crash_during_save_resumes_from_the_previous_checkpoint(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    if nproc == 2:
        pytest.skip("the save path is the same for 2 ranks; covered with 1")
    run_until(tmp_path, nproc, "saved " + str(tmp_path / "checkpoint-6"), signal.SIGKILL)
    for later in tmp_path.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 6:
            shutil.rmtree(later)
    # What a crash between two files of the save of step 6 leaves: the temporary folder, half written.
    partial = tmp_path / ".tmp-checkpoint-6"
    (tmp_path / "checkpoint-6").rename(partial)
    (partial / "model.safetensors").unlink()
    (partial / "trainer_state.json").unlink()
    run_trainer(tmp_path, RUN + layout(nproc) + ["resume=auto"])
    log = (tmp_path / "logs" / "rank0.log").read_text()
    assert "resumed from" in log and "checkpoint-3 at step 3" in log
    assert_identical(run_a, tmp_path)


def test_sigterm_saves_exits_zero_and_resumes_identically(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    if nproc == 2:
        pytest.skip("signal handling is per process; covered with 1 rank")
    assert run_until(tmp_path, nproc, f"step 5/{STEPS}", signal.SIGTERM) == 0
    stopped = max(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert 5 <= stopped < STEPS
    assert f"stopping at step {stopped} on request" in (tmp_path / "logs" / "rank0.log").read_text()
    run_trainer(tmp_path, RUN + layout(nproc) + ["resume=auto"])
    assert_identical(run_a, tmp_path)


def test_incompatible_checkpoint_is_refused_unless_weights_only(uninterrupted, tmp_path):
    nproc, run_a = uninterrupted
    if nproc == 2:
        pytest.skip("one refusal test is enough")
    checkpoint = run_a / "checkpoint-6"
    result = run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=2", f"resume={checkpoint}"], check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: cannot resume exactly from") and "per_gpu_train_batch_size 4 → 2" in message
    assert "resume_mode=weights_only" in message
    run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=2", "max_steps=2", f"resume={checkpoint}",
                                 "resume_mode=weights_only"])
    assert "resume_mode=weights_only" in (tmp_path / "logs" / "rank0.log").read_text()
    assert sorted(losses(tmp_path)) == [1, 2]  # a fresh run from step 0 ...
    assert losses(tmp_path)[1] < losses(run_a)[1] - 0.1  # ... starting from the trained weights


def test_retention_keeps_newest_and_the_best(tmp_path):
    best = {"metric": "dev_loss/loss", "measure": -1, "value": 1.0, "step": 3, "checkpoint": "checkpoint-3"}
    from general_util.checkpoint import BestTracker, apply_retention
    for step in (3, 6, 9, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "best_checkpoint.json").write_text(json.dumps(best))
    tracker = BestTracker(tmp_path, "loss", -1)
    deleted = apply_retention(tmp_path, 2, {tracker.best_checkpoint})
    assert sorted(p.name for p in deleted) == ["checkpoint-6"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-3", "checkpoint-9"]
    shutil.rmtree(tmp_path / "checkpoint-3")
