"""A save that cannot be written (disk full, quota, permission) stops every rank with one line naming the
checkpoint, the cause and the free space (exit 2); the partial folder is removed and the previous checkpoint
stays the resume point. The full disk is injected at an exact point of the save (LLAMA_TRAINER_FAULT=enospc@save=N,
general_util/faults.py) and, where a tmpfs can be mounted (root, or a user namespace), is a real one."""
import errno
import re
import shutil
import subprocess

import pytest

from training.saving import RecordedWrites
from general_util.faults import parse
from tests.forked_ranks import run_script
from tests.trainer_runs import FAST, child_env, run_trainer

RUN = FAST + ["max_steps=4", "save_steps=2"]


def test_write_failures_are_kept_and_later_writes_skipped_other_errors_raised():
    writes, calls = RecordedWrites(), []
    writes.run(calls.append, "written")
    writes.run(torch_save_on_a_full_disk)
    writes.run(calls.append, "skipped after the failure")
    assert calls == ["written"] and "unexpected pos" in str(writes.failure)
    with pytest.raises(RuntimeError, match="a bug"):
        RecordedWrites().run(a_bug)
    assert parse("enospc@save=4@rank=1") == (errno.ENOSPC, "save", 4, 1)


def torch_save_on_a_full_disk():
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4544 vs 4432")


def a_bug():
    raise RuntimeError("a bug")


def checkpoints(output_dir):
    return sorted(p.name for p in output_dir.glob("*checkpoint-*"))


def error_lines(result):
    """Each rank's one-line error (rank 0's may follow the progress bar's last redraw on the same line)."""
    return re.findall(r"error: [^\n]*", result.stderr)


@pytest.mark.slow
def test_full_disk_in_a_save_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    result = run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=4"], check=False,
                         env={"LLAMA_TRAINER_FAULT": "enospc@save=4"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.fullmatch(rf"error: could not save checkpoint {tmp_path}/checkpoint-4 \(rank 0: No space left on device "
                        rf"\(injected by LLAMA_TRAINER_FAULT\): {tmp_path}/\.tmp-checkpoint-4; [\d.]+ [MG]iB free on {tmp_path}\); the partial "
                        rf"\.tmp-checkpoint-4 was removed and checkpoint-2 stays the resume point",
                        error_lines(result)[-1]), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert checkpoints(tmp_path) == ["checkpoint-2"]
    run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=4", "resume=auto"])
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    assert "resumed from" in (tmp_path / "logs" / "rank0.log").read_text()


@pytest.mark.slow
def test_one_rank_failing_under_zero3_fails_the_save_on_every_rank(tmp_path):
    # rank 1's write fails; rank 0 still reaches ZeRO-3's weight gather in the save and learns of it there after
    result = run_trainer(tmp_path, RUN + ["per_gpu_train_batch_size=2", "deepspeed@ds_cfg=zero3"], nproc=2,
                         check=False, env={"LLAMA_TRAINER_FAULT": "enospc@save=4@rank=1"})
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 2, result.stderr[-4000:]  # both ranks, the same verdict (each measures the free space)
    assert re.sub(r"[\d.]+ GiB free", "", lines[0]) == re.sub(r"[\d.]+ GiB free", "", lines[1])
    assert lines[0].startswith(f"error: could not save checkpoint {tmp_path}/checkpoint-4 (rank 1: No space left on device")
    assert lines[0].endswith("the partial .tmp-checkpoint-4 was removed and checkpoint-2 stays the resume point")
    assert 'trainer.py", line' not in result.stderr  # no rank died of a traceback (e.g. a collective left hanging)
    assert checkpoints(tmp_path) == ["checkpoint-2"]


def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="no tmpfs mount here (needs root or unprivileged user namespaces)")
@pytest.mark.parametrize("policy", ["warn", "stop"])
def test_a_real_full_disk(tmp_path, policy):
    """A 7 MiB tmpfs as output_dir, in a private mount namespace: checkpoint-2 (about 4.6 MiB) fits, checkpoint-4
    does not. `warn` logs that before the save, then the save fails; `stop` stops before writing."""
    out = tmp_path / "small_disk"
    out.mkdir()
    trainer = ["-cp", "conf/demo", "-cn", "sft", f"output_dir={out}", "per_gpu_train_batch_size=4",
               f"save_space_check={policy}", *RUN]
    result = run_script("-m tests.small_disk", ["7m", str(out), *trainer], env=child_env(), timeout=600)
    assert "rc=2" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    listing = result.stdout.split("rc=2", 1)[1].split("--log--")[0]
    assert "checkpoint-2" in listing and "checkpoint-4" not in listing  # neither checkpoint-4 nor .tmp-checkpoint-4
    line = error_lines(result)[-1]
    warning = re.search(r"checkpoint-4 will likely not fit in \S+: [\d.]+ MiB free, the last checkpoint "
                        r"\(checkpoint-2\) takes [\d.]+ MiB", result.stdout + result.stderr)
    assert warning, result.stdout[-3000:]
    if policy == "stop":
        assert line.startswith(f"error: checkpoint-4 will likely not fit in {out}") and "save_space_check=stop" in line
    else:
        assert "saving anyway (save_space_check=warn)" in result.stdout
        assert line.startswith(f"error: could not save checkpoint {out}/checkpoint-4 (rank 0: ")
        assert line.endswith("the partial .tmp-checkpoint-4 was removed and checkpoint-2 stays the resume point"), line
