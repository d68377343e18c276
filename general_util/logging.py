"""Rank-aware logging: one log file per rank, console output from global rank 0, TensorBoard and the
tqdm bar only on global rank 0 (never once per node)."""
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from general_util import faults
from general_util.dist import DistContext
from general_util.trackers import Trackers

LOG_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"


class RankFileHandler(logging.FileHandler):
    """A rank's log file. A write that fails (disk full, quota, permission) is raised to the code that logged,
    so that the run stops with the one-line write failure instead of printing logging's own traceback for every
    later line and going on without its log."""

    failed = False

    def emit(self, record):
        if self.failed:
            return  # the first failure was raised; the lines after it cannot be kept either
        # test-only: LLAMA_TRAINER_FAULT=enospc@log=N, the line of step N's training log (general_util/faults.py)
        step = getattr(record, "step", None)
        if step is not None:
            faults.fire("log", step, self.baseFilename)
        super().emit(record)

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.failed = True
            raise error
        super().handleError(record)


class TqdmHandler(logging.StreamHandler):
    """Console lines that do not tear the progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(output_dir: Path, ctx: DistContext) -> logging.Logger:
    """Configure the root logger: `output_dir/logs/rank<r>.log` on every rank, stderr on rank 0."""
    log_dir = output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)

    class RankFilter(logging.Filter):
        def filter(self, record):
            record.rank = ctx.rank
            return True

    handlers = [RankFileHandler(log_dir / f"rank{ctx.rank}.log", encoding="utf-8")]
    if ctx.is_main:
        handlers.append(TqdmHandler())
    for handler in handlers:
        handler.addFilter(RankFilter())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("trainer")


class MetricsWriter:
    """Scalars to the trackers of `report_to` (general_util/trackers.py) + the progress bar. Inert on every
    rank but global rank 0. `run_ids`: the W&B / MLflow runs to continue after a resume."""

    def __init__(self, output_dir: Path, ctx: DistContext, total_steps: int, initial_step: int = 0,
                 report_to=("tensorboard",), config: dict | None = None, run_ids: dict | None = None,
                 tracking: dict | None = None):
        self.active = ctx.is_main
        self.trackers = None
        self.bar = None
        if self.active:
            self.trackers = Trackers(list(report_to), output_dir, initial_step, config or {}, run_ids or {},
                                     tracking or {})
            self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

    @property
    def run_ids(self) -> dict[str, str]:
        return self.trackers.run_ids if self.active else {}

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.active:
            self.trackers.log(values, step)

    def checkpoint(self) -> None:
        if self.active:
            self.trackers.checkpoint()

    def advance(self, steps: int = 1, postfix: dict | None = None) -> None:
        if self.active:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.active:
            self.bar.close()
            self.trackers.close()


def progress_bar(description: str, total: int, ctx: DistContext, unit: str = "item", **options) -> tqdm:
    """A bar on global rank 0 only (done of all, rate, ETA); inert elsewhere. `options`: more tqdm settings."""
    settings = {"dynamic_ncols": True, "mininterval": 1.0, "leave": False, **options}
    return tqdm(total=total, desc=description, unit=unit, disable=not ctx.is_main, **settings)
