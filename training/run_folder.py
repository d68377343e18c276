"""Whose `output_dir` it is: one job at a time (a lock held by global rank 0), and no fresh start over another
run's results unless asked (`overwrite_output_dir=true`).

The lock is `output_dir/.trainer.lock`, created with O_CREAT|O_EXCL (atomic on local filesystems and NFS) and
holding {"host", "pid", "started", "flock"}; global rank 0 also holds an flock on it where the filesystem
supports one. A second job finds the file and refuses, naming the holder. A lock left by a job that died
(SIGKILL, a lost node) is stale and is taken over with a warning when that can be told for sure:
- same host: the holder's pid no longer runs;
- another host: the holder had an flock and it is free now (the filesystem releases a dead client's locks).
Otherwise (another host, no flock there) liveness cannot be checked from here: the job refuses, names the
holder and says to delete the lock file if that job is gone. No heartbeat: a timestamp that stops moving
cannot tell a dead job from a stalled filesystem, and guessing wrong interleaves two runs.
"""
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from training.checkpoints import BEST_RECORD, PREFIX
from general_util import faults
from general_util.dist import pid_alive
from general_util.errors import UserError

logger = logging.getLogger(__name__)
LOCK_NAME = ".trainer.lock"
# what a run leaves in its output_dir (besides logs/, which runs append to): the contents a fresh start
# refuses to mix with its own, and that overwrite_output_dir=true removes
RUN_OUTPUTS = (f"{PREFIX}*", f".tmp-{PREFIX}*", "tensorboard", "best", BEST_RECORD, "eval_results.json", "eval",
               "mlruns", "wandb", "nan_diagnostics.json")


class OutputDirError(UserError, RuntimeError):
    """The output folder is in use or holds another run; the message is one line."""


def previous_run_outputs(output_dir: Path) -> list[Path]:
    """The results of an earlier run in `output_dir` (an empty tensorboard/ folder does not count)."""
    found = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(output_dir.glob(pattern)):
            if not (path.is_dir() and not any(path.iterdir())):
                found.append(path)
    return found


def check_fresh_start(output_dir: Path, overwrite: bool) -> None:
    """A run starting at step 0: refuse an output_dir with another run's results, or remove them when
    `overwrite` (called on global rank 0 only, before anything is written)."""
    found = previous_run_outputs(output_dir)
    if not found:
        return
    names = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
    if not overwrite:
        raise OutputDirError(f"output_dir={output_dir} already holds another run ({names}); continue it with "
                             f"resume=auto, pick a new output_dir, or pass overwrite_output_dir=true to replace it")
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    logger.warning("overwrite_output_dir=true: removed the previous run's %s from %s", names, output_dir)


class OutputDirLock:
    """The lock of the job using `output_dir` (taken by global rank 0; see the module docstring)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_NAME
        self.fd: int | None = None
        self.record: dict | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock is moved away once; a race with another job ends in a refusal
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.take_over_if_stale()
                continue
            self.fd = fd
            self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "flock": try_flock(fd)}
            try:
                faults.fire("lock", 0, str(self.path))  # test-only: LLAMA_TRAINER_FAULT=enospc@lock=0
                os.write(fd, json.dumps(self.record).encode())
                os.fsync(fd)
            except OSError:  # disk full, quota: no half-written lock is left behind
                os.close(fd)
                self.fd = None
                self.path.unlink(missing_ok=True)
                raise
            return
        raise OutputDirError(f"output_dir={self.path.parent}: could not take the lock {self.path}; "
                             f"another job is starting in it")

    def take_over_if_stale(self) -> None:
        """Move a dead job's lock out of the way, or refuse, naming the live (or uncheckable) holder."""
        holder = read_record(self.path)
        if holder is None:  # vanished, or being written by a job that is starting right now
            if self.path.exists():
                raise OutputDirError(f"output_dir={self.path.parent} is being claimed by another job "
                                     f"(lock file {self.path} is being written)")
            return
        who = f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"
        same_host = holder.get("host") == socket.gethostname()
        if same_host:  # our own pid: a container restarted with the same pids, the holder is gone
            stale = holder.get("pid") == os.getpid() or not pid_alive(int(holder.get("pid", -1)))
        elif holder.get("flock"):
            stale = flock_is_free(self.path)
        else:
            raise OutputDirError(f"output_dir={self.path.parent} is in use by {who}, whose liveness cannot be "
                                 f"checked from {socket.gethostname()}; if that job is gone, delete {self.path}")
        if not stale:
            raise OutputDirError(f"output_dir={self.path.parent} is in use by {who} (lock file {self.path}); "
                                 f"wait for that job to end or pick another output_dir")
        moved = self.path.with_name(f"{LOCK_NAME}.stale-{socket.gethostname()}-{os.getpid()}")
        try:  # a rename succeeds for one job only, so two jobs cannot both take the same stale lock over
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        if read_record(moved) != holder:  # another job took the stale lock over first: give its lock back
            with contextlib.suppress(FileExistsError):
                os.link(moved, self.path)
            moved.unlink()
            raise OutputDirError(f"output_dir={self.path.parent} is being claimed by another job (lock file {self.path})")
        moved.unlink()
        logger.warning("output_dir=%s: took over the stale lock of %s, which no longer runs", self.path.parent, who)

    def release(self) -> None:
        """Remove the lock if it is still this job's; idempotent."""
        if self.fd is None:
            return
        if read_record(self.path) == self.record:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def read_record(path: Path) -> dict | None:
    """The holder recorded in a lock file (None: no file, or one still being written)."""
    try:
        record = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def try_flock(fd: int) -> bool:
    """An exclusive flock on `fd`, where the filesystem supports one (False where it does not)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # ENOLCK / EOPNOTSUPP: no flock on this filesystem; the O_EXCL file alone is the lock
        return False


def flock_is_free(path: Path) -> bool:
    """Whether nobody holds an flock on `path` (its holder is dead: the lock went with its process)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
