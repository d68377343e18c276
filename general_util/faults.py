"""Test-only fault injection: a real kill or signal at an exact point of training, so that the
fault-tolerance tests do not depend on timing.

`LLAMA_TRAINER_FAULT=<action>@<point>=<step>[@rank=<r>]`, read from the environment at each fault point
(a process forked from one that imported this module still sees its own setting):

    kill@step=5      SIGKILL this process once optimizer step 5 is complete (with its logging, evaluation
                     and checkpoint, where due), before step 6 starts
    sigterm@step=4   SIGTERM to this process at the same point (what a scheduler sends before preemption):
                     the trainer's handler asks to stop, so it stops and saves after step 5
    kill@save=6      SIGKILL inside the save of step 6, after the DeepSpeed state and RNG files are written
                     and before the Hugging Face weights and trainer_state.json: a crash mid-save, which
                     leaves `.tmp-checkpoint-6` half written
    enospc@save=6    at the same point, raise OSError(ENOSPC) as a write that found the disk full would
    enospc@copy=6    ... inside DeepSpeed's own copy of its recovery scripts during the save of step 6
    eacces@save=6    ... OSError(EACCES) (also edquot, erofs: a quota, a read-only filesystem)
    readonly@save=6  at the same point, make the folder being written read-only (chmod 555): the writes after it
                     really fail with EACCES, for a user without root's override (tests/test_permissions.py)
    enospc@log=3     ... when a rank's log file takes the line of step 3's training log (logs/rank<r>.log)
    enospc@tensorboard=3  ... when TensorBoard's event file takes step 3's scalars
    enospc@tracker=3      ... when W&B or MLflow takes step 3's scalars (their files under output_dir)
    enospc@data_stats=0   ... when output_dir/data_<name>.json is written (before training; step 0)
    enospc@lock=0         ... when output_dir/.trainer.lock is written (at start-up; step 0)
    kill@piece=2     SIGKILL in a token-cache build once piece 2's shards are written, before its marker
                     (data/cache.py): a build killed with a piece half done
    ...@rank=1       only on global rank 1 (RANK); without it, on every rank

Unset (always, outside tests), `fire()` does nothing. A malformed value raises at the first fault point
(step 1), so that a typo cannot quietly turn a fault test into a normal run. Imports nothing else of the project.
"""
import errno
import os
import signal

VARIABLE = "LLAMA_TRAINER_FAULT"
ACTIONS = {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "enospc": errno.ENOSPC, "edquot": errno.EDQUOT,
           "eacces": errno.EACCES, "erofs": errno.EROFS, "readonly": "readonly"}
POINTS = ("step", "save", "copy", "log", "tensorboard", "tracker", "data_stats", "lock", "piece")


def parse(spec: str | None) -> tuple[signal.Signals | int | str, str, int, int | None] | None:
    """(signal, errno or "readonly", point, step, rank or None) of a fault spec; None when there is none."""
    if not spec:
        return None
    try:
        action, where, *rest = spec.split("@")
        point, step = where.split("=")
        rank = None
        if rest:
            (key, value), = [part.split("=") for part in rest]
            if key != "rank":
                raise ValueError
            rank = int(value)
        if action not in ACTIONS or point not in POINTS:
            raise ValueError
        return ACTIONS[action], point, int(step), rank
    except ValueError:
        raise ValueError(f"{VARIABLE}={spec!r}: expected <{'|'.join(ACTIONS)}>@<{'|'.join(POINTS)}>=<step>"
                         f"[@rank=<r>], e.g. kill@step=5") from None


def fire(point: str, step: int, filename: str | None = None) -> None:
    """Strike the configured fault (a signal to this process, or an OSError raised here, naming `filename`, the
    file being written) if it is set for (`point`, `step`) and this rank."""
    fault = parse(os.environ.get(VARIABLE))
    if fault is None:
        return
    action, at_point, at_step, rank = fault
    if (point, step) == (at_point, at_step) and rank in (None, int(os.environ.get("RANK", 0))):
        if action == "readonly":
            os.chmod(filename, 0o555)
            return
        if not isinstance(action, signal.Signals):
            raise OSError(action, f"{os.strerror(action)} (injected by {VARIABLE})", filename)
        signal.raise_signal(action)  # synchronous: SIGKILL never returns; SIGTERM's Python handler runs right after
