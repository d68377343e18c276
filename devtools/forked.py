"""A Python script's ranks forked from a warm fork server instead of started as fresh interpreters.

A process that trains the tiny test model spends ~10 s of CPU on interpreter start-up and imports (torch,
transformers, DeepSpeed and what ZeRO imports at initialize) before its first step, and a 2-rank world pays
it twice. multiprocessing's fork server can import that stack once (`use_warm_fork_server`); each rank is
then a child of the server that runs the script exactly as `python <script> <args>` does (runpy as
`__main__`), joining the others through the env:// rendezvous torchrun's environment gives. What is left out
is the launcher itself. The tests' trainer ranks (tests/forked_ranks.py) and the benchmarks' `--fork-workers`
smoke runs (bench/harness.py) start their processes this way. Development machinery, not part of training: nothing
the trainer runs imports devtools/ (tests/test_layers.py).
"""
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from general_util.dist import free_port

TRAINER_STACK = "devtools.trainer_stack"  # what a warm fork server imports for trainer processes


FROZEN_HEAP = "devtools.frozen_heap"  # imported last: the children's garbage collections skip what the server loaded


def use_warm_fork_server(preload: tuple[str, ...] = (TRAINER_STACK,)) -> None:
    """Make this process's fork server import the modules `preload` names (default: the trainer's stack), then
    freeze what they made out of its children's garbage collections (devtools/frozen_heap.py); call it before
    anything starts the server (the first forkserver process or pool). Once the server runs, it keeps what it has."""
    multiprocessing.set_forkserver_preload([*preload, FROZEN_HEAP])


def _rank_main(target: Path | str, args: list[str], env: dict[str, str], cwd: str, stdin_path: str | None,
               stdout_path: str, stderr_path: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path, flags in ((0, stdin_path or os.devnull, os.O_RDONLY), (1, stdout_path, os.O_WRONLY | os.O_CREAT),
                            (2, stderr_path, os.O_WRONLY | os.O_CREAT)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered: a SIGKILL loses no finished line
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    # a forkserver child starts with the server's start method as its default; a fresh interpreter has the
    # platform's (DataLoader workers and pools of the script would otherwise start a fork server of their own)
    multiprocessing.set_start_method(None, force=True)
    if "OMP_NUM_THREADS" in env and "torch" in sys.modules:  # the server's OpenMP read the server's environment
        sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
    try:
        if isinstance(target, Path):
            sys.argv = [str(target), *args]
            runpy.run_path(str(target), run_name="__main__")
        else:
            sys.argv = [target, *args]  # runpy puts the module's file name here, as `python -m` does
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class WorldResult(subprocess.CompletedProcess):
    """A world's outcome as one process's (stdout / stderr: the ranks' in rank order; returncode: the first
    failed rank's) and, in `ranks`, each rank's own."""

    def __init__(self, args: list[str], ranks: list[subprocess.CompletedProcess]):
        super().__init__(args, next((rank.returncode for rank in ranks if rank.returncode != 0), 0),
                         "".join(rank.stdout for rank in ranks), "".join(rank.stderr for rank in ranks))
        self.ranks = ranks


def run_forked(target: Path | str, args: list[str], nproc: int, env: dict[str, str], cwd: Path,
               timeout: float | None = None, stdin: str | None = None, nnodes: int = 1) -> WorldResult:
    """`python <target> <args>` (a script's Path; a module's name str: `python -m <target> <args>`; `stdin`: its
    input, else /dev/null) as one process (nproc 1) or a world of `nproc` ranks on this host (the variables torchrun
    sets: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*; one OpenMP thread per rank unless `env` says; `nnodes` > 1:
    the ranks split into that many "nodes" of nproc / nnodes local ranks, as on several hosts), each a
    child of the fork server, with `env` as its whole environment. A rank's returncode is -N when signal N
    killed it. Past `timeout` every rank is killed and TimeoutExpired raised."""
    context = multiprocessing.get_context("forkserver")
    if nproc % nnodes:
        raise ValueError(f"{nproc} ranks do not split into {nnodes} nodes")
    local_size = nproc // nnodes
    world = {} if nproc == 1 else {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(local_size),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                                   "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        outputs = [(f"{folder}/{rank}.out", f"{folder}/{rank}.err") for rank in range(nproc)]
        stdin_path = None
        if stdin is not None:
            stdin_path = f"{folder}/stdin"
            Path(stdin_path).write_text(stdin)
        ranks = []
        for rank, (out, err) in enumerate(outputs):
            local = {"RANK": str(rank), "LOCAL_RANK": str(rank % local_size), "GROUP_RANK": str(rank // local_size)}
            rank_env = {**env, **world, **(local if nproc > 1 else {})}
            ranks.append(context.Process(target=_rank_main, args=(target, args, rank_env, str(cwd), stdin_path, out, err)))
            ranks[-1].start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for process in ranks:
            process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        timed_out = any(process.exitcode is None for process in ranks)
        for process in ranks:
            if process.exitcode is None:
                process.kill()
                process.join()
        command = [str(target), *args]
        result = WorldResult(command, [subprocess.CompletedProcess(command, process.exitcode, *(
            Path(path).read_text(errors="replace") for path in pair)) for process, pair in zip(ranks, outputs)])
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, output=result.stdout, stderr=result.stderr)
    return result
