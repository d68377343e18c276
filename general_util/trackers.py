"""Experiment trackers the scalars go to (`report_to`): TensorBoard (the default), Weights & Biases, MLflow.

Only global rank 0 opens them (see `logging.MetricsWriter`). Each gets the same scalars at the same steps;
W&B and MLflow also get the resolved config as the run's parameters. Offline use needs no network:
`WANDB_MODE=offline` (or `tracking.wandb_mode: offline`) writes W&B runs under `output_dir/wandb/`, and
MLflow's default tracking URI here is the local file store `output_dir/mlruns`.

Resume. A run's W&B / MLflow ids are kept in every checkpoint (trainer_state.json), so `resume=auto`
continues the same runs. A killed run may have logged steps past its last checkpoint, which the resumed
run logs again; each store keeps every step once: TensorBoard drops the later events (`purge_step`),
W&B rewinds the run to the checkpoint's step (`resume_from="<id>?_step=<step>"`), and the MLflow tracker
skips the (metric, step) pairs the run already holds (the values are the same: resume is exact).
"""
import importlib.util
import os
import secrets
import time
from pathlib import Path

from general_util import faults
from general_util.errors import ConfigError

REPORTERS = ("tensorboard", "wandb", "mlflow")
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def check_report_to(report_to) -> list[str]:
    """Problems of a `report_to` list: unknown names, trackers whose package is missing."""
    problems = []
    for name in report_to:
        if name not in REPORTERS:
            problems.append(f"report_to: unknown tracker {name!r}; use any of {', '.join(REPORTERS)}")
        elif name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            problems.append(f"report_to: {name} is not installed; pip install -r requirements-loggers.txt")
    return problems


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as flat `a.b.c` → str parameters (what MLflow stores)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class TensorBoardTracker:
    name = "tensorboard"
    run_id = None

    def __init__(self, output_dir: Path, initial_step: int):
        from torch.utils.tensorboard import SummaryWriter
        # after a resume, TensorBoard drops the events the interrupted run wrote past the checkpoint
        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"),
                                    purge_step=initial_step + 1 if initial_step else None)

    def log(self, values: dict[str, float], step: int) -> None:
        # test-only: LLAMA_TRAINER_FAULT=enospc@tensorboard=N (general_util/faults.py)
        faults.fire("tensorboard", step, self.writer.file_writer.get_logdir())
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def checkpoint(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, output_dir: Path, config: dict, run_id: str | None, initial_step: int, settings: dict):
        import wandb
        mode = settings.get("wandb_mode") or os.environ.get("WANDB_MODE") or None
        self.common = {"project": settings.get("project"), "name": settings.get("run_name"), "dir": str(output_dir),
                       "config": config, "mode": mode}
        if run_id:  # rewind the run to the checkpoint: what the killed run logged after it is discarded
            self.run = wandb.init(resume_from=f"{run_id}?_step={initial_step}", **self.common)
        else:
            self.run = wandb.init(id=secrets.token_hex(4), **self.common)
        self.run_id = self.run.id
        self.store = str(output_dir / "wandb")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def checkpoint(self) -> None:
        """W&B holds what it was given in its own process until the run finishes (offline: nothing is on disk
        before), so a killed job would lose every step. At each checkpoint the run is finished and continued:
        the steps up to the resume point are then kept whatever happens next."""
        import wandb
        self.run.finish()
        self.run = wandb.init(id=self.run_id, resume="allow", **self.common)

    def close(self) -> None:
        self.run.finish()


class MLflowTracker:
    name = "mlflow"

    def __init__(self, output_dir: Path, config: dict, run_id: str | None, initial_step: int, settings: dict):
        from mlflow.tracking import MlflowClient
        uri = settings.get("mlflow_tracking_uri") or (output_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store working behind this documented opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.store = uri
        self.resumed_at = initial_step if run_id else None
        self.logged: dict[str, set[int]] = {}  # after a resume: the steps each metric already has
        if run_id is None:
            run_id = self._create_run(config, settings)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _create_run(self, config: dict, settings: dict) -> str:
        from mlflow.entities import Param
        name = settings.get("project") or "default"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run_id = self.client.create_run(experiment_id, run_name=settings.get("run_name")).info.run_id
        params = flat_params(config)
        names = sorted(params)
        for start in range(0, len(names), 100):  # the store's batch limit
            self.client.log_batch(run_id, params=[Param(n, params[n]) for n in names[start:start + 100]])
        return run_id

    def _already_logged(self, key: str, step: int) -> bool:
        if self.resumed_at is None or step <= self.resumed_at:
            return False
        if key not in self.logged:
            self.logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return step in self.logged[key]

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()
                   if not self._already_logged(key, step)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def checkpoint(self) -> None:
        """Nothing to do: the store writes each batch before log_batch returns."""

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackers:
    """The trackers of `report_to`."""

    def __init__(self, report_to, output_dir: Path, initial_step: int, config: dict, run_ids: dict,
                 settings: dict):
        problems = check_report_to(report_to)
        if problems:
            raise ConfigError("; ".join(problems))
        self.trackers = []
        for name in report_to:
            if name == "tensorboard":
                self.trackers.append(TensorBoardTracker(output_dir, initial_step))
            else:
                kind = WandbTracker if name == "wandb" else MLflowTracker
                run_id = run_ids.get(name) if initial_step else None
                self.trackers.append(kind(output_dir, config, run_id, initial_step, settings))

    @property
    def run_ids(self) -> dict[str, str]:
        return {t.name: t.run_id for t in self.trackers if t.run_id}

    def log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            if tracker.name != "tensorboard":  # test-only: LLAMA_TRAINER_FAULT=enospc@tracker=N (general_util/faults.py)
                faults.fire("tracker", step, tracker.store)
            tracker.log(values, step)

    def checkpoint(self) -> None:
        """Make every step logged so far durable (called after each checkpoint is saved)."""
        for tracker in self.trackers:
            tracker.checkpoint()

    def close(self) -> None:
        """Close every tracker, also when one fails (the first failure is raised after)."""
        failures = []
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as error:  # noqa: BLE001 - raised below, after the others are closed
                failures.append(error)
        if failures:
            raise failures[0]
