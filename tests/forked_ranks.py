"""Trainer ranks forked from a process that has already imported the trainer's stack (devtools/forked.py):
each rank runs trainer.py as `python trainer.py <args>` does (the same argument handling, Hydra composition,
one-line errors and exit codes) without the ~10 s of start-up a fresh interpreter costs. Tests of the launchers
(deepspeed, torchrun, the DeepSpeed runner) and of what they do with a rank's exit start them for real
(tests/trainer_runs.py)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from devtools import forked
from devtools.bench_output import report_and_table

REPO = Path(__file__).resolve().parents[1]


# ~3 s of imports each that the tracker tests' ranks would pay per run. wandb.init imports W&B Launch's staged inputs
# (wandb.sdk.launch.inputs.internal, through wandb.apis.public's pydantic models, whose attribute docstrings pydantic
# finds with inspect.getmodule over every loaded module): ~2 s of CPU per W&B run beside the trainer's stack, 4 s and
# more on a loaded machine.
OPTIONAL_TRACKERS = ("wandb", "wandb.sdk.launch.inputs.internal", "mlflow.tracking")


def use_warm_fork_server() -> None:
    """Make this process's fork server (started on first use, by these ranks or by any forkserver pool) import
    the trainer's stack, and the optional trackers' packages where installed; call it before anything starts
    the server."""
    trackers = [name for name in OPTIONAL_TRACKERS if importlib.util.find_spec(name.split(".")[0])]
    forked.use_warm_fork_server((forked.TRAINER_STACK, *trackers))


def run_ranks(args: list[str], nproc: int, env: dict[str, str], timeout: float,
              nnodes: int = 1) -> forked.WorldResult:
    """`python trainer.py <args>` (nproc 1) or a world of `nproc` ranks (on `nnodes` "nodes"), as forked children
    (devtools.forked.run_forked); the result's args are `["trainer.py", *args]`."""
    use_warm_fork_server()
    result = forked.run_forked(REPO / "trainer.py", args, nproc, env, REPO, timeout, nnodes=nnodes)
    result.args = ["trainer.py", *args]
    return result


def run_script(target: str, args: list[str], stdin: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 600, nproc: int = 1) -> forked.WorldResult:
    """`python <target> <args>` run from the repository root as a forked child ("generate.py", a script's path
    relative to the root; "-m models.convert", a module), or as a world of `nproc` such ranks, for tests of what
    a command prints and writes. `env`: its whole environment (default: this process's)."""
    use_warm_fork_server()
    script = target.removeprefix("-m ") if target.startswith("-m ") else REPO / target
    return forked.run_forked(script, args, nproc, dict(os.environ) if env is None else env, REPO, timeout, stdin)


def run_quick(module: str, extra: tuple[str, ...] = (), forked_child: bool = True) -> tuple[object, str]:
    """`python -m <module> --quick <extra>` (a bench), checked to exit 0: its JSON report and its table
    (bench.harness.report_and_table). Forked (`run_script`), or in a fresh interpreter for a bench whose
    multiprocessing pools start their own fork server."""
    if forked_child:
        result = run_script(f"-m {module}", ["--quick", *extra])
    else:
        result = subprocess.run([sys.executable, "-m", module, "--quick", *extra], cwd=REPO, capture_output=True,
                                text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return report_and_table(result.stdout)
