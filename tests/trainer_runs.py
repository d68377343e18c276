"""Run the trainer as users do (python / deepspeed / torchrun), as forked ranks (tests/forked_ranks.py), or in this
process, and read back what it wrote."""
import os
import subprocess
import sys
from pathlib import Path

from general_util.dist import free_port
from tests.forked_ranks import REPO, run_ranks

FAST = ["logging_steps=1", "evaluate_during_training=false", "do_eval=false", "save_steps=-1"]
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child trainer: this process's, minus any rendezvous variables, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


WITHOUT_MLFLOW = REPO / "tests" / "fixtures" / "without_mlflow"  # an `mlflow` package whose import fails


def launcher_env(**extra: str) -> dict[str, str]:
    """child_env for a job started through DeepSpeed's launcher (`deepspeed`, its multi-node runner), with MLflow
    unimportable, as where requirements-loggers.txt is not installed: each launcher process imports DeepSpeed, whose
    autotuner (never run) imports MLflow when it can, 1.5 s of CPU per process (the trainer's ranks leave it out
    themselves: training/deepspeed_engine.py import_deepspeed). These jobs log to TensorBoard only. DeepSpeed's
    runner passes PYTHONPATH on to the other nodes."""
    env = child_env(**extra)
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(WITHOUT_MLFLOW), env.get("PYTHONPATH")]))}


def trainer_command(launcher: str, nproc: int) -> list[str]:
    if launcher == "python":
        return [sys.executable, "trainer.py"]
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), "trainer.py"]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "trainer.py"]
    raise ValueError(launcher)


def run_trainer(output_dir: Path, overrides: list[str], launcher: str = "forked", nproc: int = 1,
                config: tuple[str, str] = ("conf/demo", "sft"), check: bool = True, timeout: int = 600,
                env: dict[str, str] | None = None, nnodes: int = 1):
    """`launcher`: python, deepspeed, torchrun, or forked (ranks forked from a process with the trainer's stack
    already imported, tests/forked_ranks.py: for tests of what the ranks do, not of a launcher). `env`: extra
    variables for the ranks, e.g. {"LLAMA_TRAINER_FAULT": "kill@step=5"} (general_util/faults.py). `nnodes`
    (forked): the ranks' environment of that many single-host "nodes" (LOCAL_RANK counts within a node)."""
    args = ["-cp", config[0], "-cn", config[1], f"output_dir={output_dir}"] + overrides
    if launcher == "forked":
        result = run_ranks(args, nproc, child_env(**(env or {})), timeout, nnodes)
        cmd = result.args
    else:
        assert nnodes == 1, "several nodes: forked ranks, or the launchers' own multi-node commands"
        cmd = trainer_command(launcher, nproc) + args
        environment = (launcher_env if launcher == "deepspeed" else child_env)(**(env or {}))
        result = subprocess.run(cmd, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def train_in_process(output_dir: Path, overrides: list[str], config: tuple[str, str] = ("conf/demo", "sft")) -> None:
    """What `python trainer.py -cp <config[0]> -cn <config[1]> output_dir=<output_dir> <overrides>` does, in this
    process as a world of one (trainer.run: validation, the job, the teardown), without the ~10 s of interpreter
    start-up and imports a subprocess costs. For tests of what a 1-rank run computes and writes; the command
    line, exit codes, kills and several ranks need `run_trainer`. A user error raises (as UserError)."""
    import logging

    import torch

    import trainer
    cfg = compose_config(overrides, config, output_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as child_env's OMP_NUM_THREADS=1 for a subprocess
    try:
        trainer.run(cfg, keep_process_group=True)
    finally:
        torch.set_num_threads(threads)
        for handler in logging.getLogger().handlers:  # the run's log files
            handler.close()
        logging.getLogger().handlers.clear()


def compose_config(overrides: list[str], config: tuple[str, str] = ("conf/demo", "sft"), output_dir: Path | None = None):
    """The config `trainer.py -cp <config[0]> -cn <config[1]> <overrides>` would run with, composed in-process."""
    from hydra import compose, initialize_config_dir

    import trainer  # noqa: F401 - registers the config resolvers the trainer's YAML uses
    output = [f"output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(REPO / config[0]), version_base="1.3"):
        return compose(config_name=config[1], overrides=output + overrides)


def read_scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars as {tag: [(step, value), ...]} read with tensorboard's EventAccumulator (all the
    event files of the run, as TensorBoard shows them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(output_dir / "tensorboard"))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def scalar_values(output_dir: Path, tag: str = "train/loss") -> list[float]:
    """The values of one TensorBoard scalar, in step order (`read_scalars`)."""
    return [value for _, value in read_scalars(output_dir)[tag]]
