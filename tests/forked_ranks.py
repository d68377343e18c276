"""Trainer ranks forked from a process that has already imported the trainer's stack.

A `python trainer.py` process spends ~10 s of CPU on interpreter start-up and imports (torch, transformers,
DeepSpeed and what ZeRO imports at initialize) before the first step of a tiny test run, and a 2-rank run
pays it twice. Here each rank is a child of multiprocessing's fork server, which imports that stack
(tests/trainer_stack.py) once per pytest worker; the child then runs trainer.py exactly as `python
trainer.py <args>` does (runpy as __main__: the same argument handling, Hydra composition, one-line errors
and exit codes), joining the others through the env:// rendezvous torchrun's environment gives. What is
left out is the launcher itself: tests of the launchers (deepspeed, torchrun, the DeepSpeed runner) and of
what they do with a rank's exit start them for real (tests/trainer_runs.py).
"""
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STACK = "tests.trainer_stack"
REPO = Path(__file__).resolve().parents[1]


def use_warm_fork_server() -> None:
    """Make this process's fork server (started on first use, by these ranks or by any forkserver pool)
    import the trainer's stack; call it before anything starts the server."""
    multiprocessing.set_forkserver_preload([STACK])


def _rank_main(args: list[str], env: dict[str, str], stdout_path: str, stderr_path: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: a SIGKILL loses no finished line
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    import torch
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))  # the server's OpenMP read its own env
    sys.argv = [str(REPO / "trainer.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")  # ends in os._exit (general_util.dist.exit_process)


def run_ranks(args: list[str], nproc: int, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`python trainer.py <args>` (nproc 1) or a world of `nproc` ranks on this host, as forked children;
    stdout / stderr are the ranks' in rank order, returncode the first failed rank's (0 when all exit 0;
    -N for a rank killed by signal N). Past `timeout` every rank is killed and TimeoutExpired raised."""
    from general_util.dist import free_port
    use_warm_fork_server()
    context = multiprocessing.get_context("forkserver")
    world = {} if nproc == 1 else {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        outputs = [(f"{folder}/{rank}.out", f"{folder}/{rank}.err") for rank in range(nproc)]
        ranks = []
        for rank, (out, err) in enumerate(outputs):
            rank_env = {**env, **world, **({"RANK": str(rank), "LOCAL_RANK": str(rank)} if nproc > 1 else {})}
            ranks.append(context.Process(target=_rank_main, args=(args, rank_env, out, err)))
            ranks[-1].start()
        deadline = time.monotonic() + timeout
        for process in ranks:
            process.join(max(0.0, deadline - time.monotonic()))
        timed_out = any(process.exitcode is None for process in ranks)
        for process in ranks:
            if process.exitcode is None:
                process.kill()
                process.join()
        stdout, stderr = ("".join(Path(pair[i]).read_text(errors="replace") for pair in outputs) for i in (0, 1))
    command = ["trainer.py", *args]
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    codes = [process.exitcode for process in ranks]
    return subprocess.CompletedProcess(command, next((code for code in codes if code != 0), 0), stdout, stderr)
