"""What the training benchmarks share: synthetic rows, our Trainer built as `python trainer.py` builds it, and how
a measurement's worker processes start."""
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER_STACK = "bench.trainer_stack"  # what a warm fork server imports for trainer processes


class RandomTokens:
    """Fixed-length rows of random token ids, every token trained (no padding)."""

    def __init__(self, rows: int, seq: int, seed: int = 0, vocab: int = 1024):
        import torch
        self.ids = torch.randint(3, vocab, (rows, seq), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index].tolist()
        return {"input_ids": ids, "labels": ids, "index": index}


def timed_trainer(overrides: list[str], train_data):
    """(trainer, log_times): our Trainer composed from conf/demo sft with `overrides` on `train_data`, in this
    rank's process group (joined here), writing no checkpoints; `log_times[step]` is when the log line of `step`
    was written, so a benchmark times the steps between two logs (the logging collective included)."""
    from hydra import compose, initialize_config_dir

    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    with initialize_config_dir(str(REPO / "conf" / "demo"), version_base="1.3"):
        cfg = compose("sft", overrides=overrides)
    log_times: dict[int, float] = {}
    hooks = TrainerHooks(on_log=lambda step, _: log_times.setdefault(step, time.perf_counter()), save_checkpoints=False)
    return build_trainer(cfg, init_distributed(), train_data=train_data, hooks=hooks), log_times


def add_fork_workers_argument(parser) -> None:
    parser.add_argument("--fork-workers", action="store_true",
                        help="start each worker from a fork server that has imported the trainer's stack once "
                             "(general_util/forked.py) instead of a fresh interpreter: ~10 s less per worker "
                             "process; absolute memory figures then include the server's imports (the smoke tests)")


def run_worker_processes(script: str, args: list[str], nproc: int, env: dict[str, str], fork: bool,
                         timeout: float | None = None):
    """`python <script> <args>` (nproc 1; torchrun with `nproc` ranks otherwise) as a fresh process (group), or
    forked from the warm fork server (`fork`, --fork-workers): the same worker code either way. Returns the
    subprocess.CompletedProcess (stdout / stderr as text); raises subprocess.TimeoutExpired past `timeout`."""
    if fork:
        from general_util.forked import run_forked, use_warm_fork_server
        use_warm_fork_server([TRAINER_STACK])
        return run_forked(Path(script), args, nproc, env, REPO, timeout)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    return subprocess.run(launcher + [script, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)
