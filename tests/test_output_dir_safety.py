"""The output folder is one run's: a fresh start refuses another run's results (or replaces them when asked), a
second job refuses a folder in use, a dead job's lock is taken over (training/run_folder.py)."""
import json
import multiprocessing
import socket
import subprocess
import sys

import pytest

from training.run_folder import LOCK_NAME, OutputDirError, OutputDirLock, check_fresh_start
from tests.trainer_runs import FAST, read_scalars, run_trainer

RUN = FAST + ["max_steps=2", "per_gpu_train_batch_size=4"]


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, **record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"started": "2026-01-01 00:00:00 UTC", "flock": False, **record}))


def hold_lock(folder, connection) -> None:
    lock = OutputDirLock(folder)
    lock.acquire()
    connection.send("locked")
    connection.recv()
    lock.release()


class LockHolder:
    """Another process (forked from this one) holding the lock of `folder` until `release()` (it says when it holds
    it: no timing)."""

    def __init__(self, folder):
        context = multiprocessing.get_context("fork")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=hold_lock, args=(folder, theirs))
        self.process.start()
        theirs.close()
        assert self.connection.recv() == "locked"
        self.pid = self.process.pid
        self.record = json.loads((folder / LOCK_NAME).read_text())

    def release(self):
        self.connection.send("release")
        self.process.join(timeout=60)
        assert self.process.exitcode == 0


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    holder = LockHolder(tmp_path)
    with pytest.raises(OutputDirError, match=rf"in use by pid {holder.pid} on host {socket.gethostname()}"):
        OutputDirLock(tmp_path).acquire()
    holder.release()
    assert not (tmp_path / LOCK_NAME).exists()
    write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid())
    taker = OutputDirLock(tmp_path)
    taker.acquire()
    assert "took over the stale lock" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == taker.record["pid"]
    taker.release()


def test_lock_of_another_host_is_refused_unless_its_flock_is_free(tmp_path):
    write_lock(tmp_path, host="node-17", pid=4242)
    with pytest.raises(OutputDirError, match=f"pid 4242 on host node-17 .*cannot be checked.*delete {tmp_path / LOCK_NAME}"):
        OutputDirLock(tmp_path).acquire()
    write_lock(tmp_path, host="node-17", pid=4242, flock=True)  # an flock that nobody holds: its holder died
    taker = OutputDirLock(tmp_path)
    taker.acquire()
    taker.release()


def test_fresh_start_refuses_a_previous_run_or_replaces_it(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "model.safetensors").write_text("x")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_text("x")
    (tmp_path / "logs").mkdir()
    with pytest.raises(OutputDirError, match="holds another run .checkpoint-10, tensorboard.; continue it with "
                                             "resume=auto, pick a new output_dir, or pass overwrite_output_dir=true"):
        check_fresh_start(tmp_path, overwrite=False)
    check_fresh_start(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # the logs are appended to, not replaced
    check_fresh_start(tmp_path, overwrite=False)  # nothing left to refuse


@pytest.mark.slow
def test_rerun_refused_overwritten_and_a_folder_in_use_refused(tmp_path):
    run_trainer(tmp_path, RUN + ["save_steps=1"])
    result = run_trainer(tmp_path, RUN, check=False)  # the same command again, without resume
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_line(result) == (f"error: output_dir={tmp_path} already holds another run (checkpoint-1, checkpoint-2, "
                                 f"tensorboard); continue it with resume=auto, pick a new output_dir, or pass "
                                 f"overwrite_output_dir=true to replace it")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    run_trainer(tmp_path, RUN + ["max_steps=1", "overwrite_output_dir=true"])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]  # checkpoint-2 went with the old run
    assert [step for step, _ in read_scalars(tmp_path)["train/loss"]] == [1]  # one run's events only
    assert "removed the previous run's checkpoint-1, checkpoint-2, tensorboard" in (tmp_path / "logs" / "rank0.log").read_text()
    # a job still holding the folder (a live process on this host plays it)
    holder = LockHolder(tmp_path)
    for overrides in (RUN + ["resume=auto"], ["do_train=false", "do_eval=true"]):
        result = run_trainer(tmp_path, overrides, check=False)
        assert result.returncode == 2 and last_line(result).startswith(
            f"error: output_dir={tmp_path} is in use by pid {holder.pid} on host {socket.gethostname()} "
            f"(started {holder.record['started']})"), result.stderr[-3000:]
    assert "optimizer steps: 2" in run_trainer(tmp_path, RUN + ["dry_run=true"]).stdout  # reads nothing there
    holder.release()


@pytest.mark.slow
def test_every_rank_refuses_together(tmp_path):
    """Two ranks without a launcher (forked: a launcher would stop the second as soon as the first exits): rank 0
    decides, and both exit 2 with its line."""
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    world = run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=2"], nproc=2, check=False)
    results = [(rank.returncode, rank.stderr) for rank in world.ranks]
    expected = (f"error: output_dir={tmp_path} already holds another run (checkpoint-3); continue it with resume=auto, "
                f"pick a new output_dir, or pass overwrite_output_dir=true to replace it")
    assert [(code, stderr.strip().splitlines()[-1]) for code, stderr in results] == [(2, expected)] * 2, results
    assert not (tmp_path / LOCK_NAME).exists()  # released at teardown
