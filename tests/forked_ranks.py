"""Trainer ranks forked from a process that has already imported the trainer's stack (general_util/forked.py):
each rank runs trainer.py as `python trainer.py <args>` does (the same argument handling, Hydra composition,
one-line errors and exit codes) without the ~10 s of start-up a fresh interpreter costs. Tests of the launchers
(deepspeed, torchrun, the DeepSpeed runner) and of what they do with a rank's exit start them for real
(tests/trainer_runs.py)."""
import subprocess
from pathlib import Path

from general_util import forked

STACK = "bench.trainer_stack"
REPO = Path(__file__).resolve().parents[1]


def use_warm_fork_server() -> None:
    """Make this process's fork server (started on first use, by these ranks or by any forkserver pool) import
    the trainer's stack; call it before anything starts the server."""
    forked.use_warm_fork_server([STACK])


def run_ranks(args: list[str], nproc: int, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`python trainer.py <args>` (nproc 1) or a world of `nproc` ranks, as forked children (general_util.forked.
    run_forked); the result's args are `["trainer.py", *args]`."""
    use_warm_fork_server()
    result = forked.run_forked(REPO / "trainer.py", args, nproc, env, REPO, timeout)
    result.args = ["trainer.py", *args]
    return result
