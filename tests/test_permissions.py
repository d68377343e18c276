"""Permissions, for real: the trainer run by an unprivileged user, for whom a read-only folder refuses writes (root's
override would let every write through). The user is created here (useradd) and the trainer run as it, forked,
with what setpriv gives (tests/unprivileged.py): its own uid and gid, no supplementary groups, and only the
capability to read and search (root's home holds the Python installation), not to write where it may not. Needs
root and useradd (CI runs as root); without them the test skips, saying why.

- an output folder it cannot write: one line naming the folder and the cause, exit 2, nothing written;
- a checkpoint folder that turns read-only in the middle of its save (LLAMA_TRAINER_FAULT=readonly@save=4,
  general_util/faults.py): the save fails in one line, exit 2, the partial folder is removed (read-only as it is)
  and the previous checkpoint stays the resume point, from which the run then completes.
"""
import os
import pwd
import re
import shutil
import subprocess

import pytest

from tests.forked_ranks import run_script
from tests.trainer_runs import FAST, child_env

pytestmark = pytest.mark.slow
USER = "llama-unprivileged"
RUN = FAST + ["max_steps=4", "save_steps=2", "per_gpu_train_batch_size=4"]


@pytest.fixture(scope="module")
def unprivileged():
    """(uid, gid) of an unprivileged system user, created when missing."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to run as an unprivileged user")
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def run_as(user: tuple[int, int], tmp_path, output_dir, overrides, env=None):
    """trainer.py run by `user`, forked (tests/unprivileged.py: setpriv's uid, gid, no groups, read-search only)."""
    uid, gid = user
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    os.chown(home, uid, gid)
    args = [str(uid), str(gid), "-cp", "conf/demo", "-cn", "sft", f"output_dir={output_dir}",
            f"data.cache_dir={home / 'cache'}", *overrides]
    return run_script("-m tests.unprivileged", args, env=child_env(HOME=str(home), **(env or {})), timeout=600)


def owned_folder(path, user, mode=0o755):
    path.mkdir(parents=True)
    os.chown(path, *user)
    os.chmod(path, mode)
    return path


def error_lines(result):
    return re.findall(r"error: [^\n]*", result.stderr)


def test_a_read_only_output_folder_is_one_line(tmp_path, unprivileged):
    os.chmod(tmp_path, 0o755)
    out = owned_folder(tmp_path / "read_only", unprivileged, 0o555)
    result = run_as(unprivileged, tmp_path, out, RUN)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(error_lines(result)) == 1, result.stderr[-3000:]
    assert re.fullmatch(rf"error: could not write {out}/logs \(Permission denied; [\d.]+ [MG]iB free on {out}\); no "
                        r"checkpoint stays the resume point: free space or fix the permissions, then continue with "
                        r"resume=auto", error_lines(result)[0])
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert list(out.iterdir()) == []


def test_a_save_refused_by_permissions_is_one_line_and_the_run_resumes(tmp_path, unprivileged):
    os.chmod(tmp_path, 0o755)
    out = owned_folder(tmp_path / "run", unprivileged)
    result = run_as(unprivileged, tmp_path, out, RUN, env={"LLAMA_TRAINER_FAULT": "readonly@save=4"})
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = error_lines(result)
    assert re.fullmatch(rf"error: could not save checkpoint {out}/checkpoint-4 \(rank 0: Permission denied: "
                        rf"{out}/\.tmp-checkpoint-4/\S+; [\d.]+ [MG]iB free on {out}\); the partial \.tmp-checkpoint-4 "
                        r"was removed and checkpoint-2 stays the resume point", line), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    resumed = run_as(unprivileged, tmp_path, out, RUN + ["resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert {p.stat().st_uid for p in out.rglob("*")} == {unprivileged[0]}  # all of it written by that user
