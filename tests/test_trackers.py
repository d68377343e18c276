"""`report_to: [tensorboard, wandb, mlflow]`: the same scalars in every store, written by global rank 0 only,
offline (W&B offline mode, MLflow's local file store); a killed run resumed with resume=auto continues the same
W&B and MLflow runs with every step once. The W&B store is read from its offline run files (the LevelDB-style
log of `Record` protobufs that `wandb sync` uploads), applying W&B's rewind as its server does."""
import importlib.util
import os
import struct
from pathlib import Path

import pytest

from general_util.trackers import check_report_to, flat_params
from tests.trainer_runs import FAST, read_scalars, run_trainer

STEPS = 8
RUN = FAST + [f"max_steps={STEPS}", "save_steps=3", "per_gpu_train_batch_size=4",
              "report_to=[tensorboard,wandb,mlflow]", "tracking.wandb_mode=offline", "tracking.run_name=tracked"]


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file (7-byte file header, 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2
    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            position += left
            continue
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(output_dir: Path, key: str) -> tuple[set[str], dict[str, dict], list[tuple[int, float]]]:
    """(run ids, config, [(step, value)] of `key`) over the offline runs in start order, each run that
    resumes from a branch point first dropping the steps after it."""
    import json
    def start_order(run_file: Path):  # offline-run-<time>-<id>, and -<n> when that name was taken in the same second
        _, _, time, *rest = run_file.parent.name.split("-")
        return time, int(rest[1]) if len(rest) > 1 else 0

    ids, config, history = set(), {}, []
    for run_file in sorted(output_dir.glob("wandb/offline-run-*/run-*.wandb"), key=start_order):
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
                if record.run.HasField("branch_point"):
                    history = [(step, value) for step, value in history if step <= record.run.branch_point.value]
            elif kind == "history":
                items = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
                if key in items:
                    history.append((record.history.step.num, items[key]))
    return ids, config, history


def mlflow_history(output_dir: Path, key: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=(output_dir / "mlruns").resolve().as_uri())
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 1, runs  # one run: the resumed job continued it, and only rank 0 opened one
    run = runs[0]
    return run, sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_log_every_step_once_in_every_store(tmp_path):
    missing = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name) is None]
    if missing and not os.environ.get("LLAMA_TRAINER_REQUIRE_OPTIONAL_DEPS"):
        pytest.skip(f"{', '.join(missing)} absent: pip install -r requirements-loggers.txt (CI installs it)")
    out = tmp_path / "run"
    killed = run_trainer(out, RUN, nproc=2, check=False, env={"LLAMA_TRAINER_FAULT": "kill@step=5"})
    assert killed.returncode != 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    run_trainer(out, RUN + ["resume=auto"], nproc=2)

    tensorboard = read_scalars(out)["train/loss"]
    assert [step for step, _ in tensorboard] == list(range(1, STEPS + 1))
    ids, config, wandb_loss = wandb_history(out, "train/loss")
    assert len(ids) == 1  # one run, continued (after each checkpoint and after the resume)
    assert [step for step, _ in wandb_loss] == list(range(1, STEPS + 1))  # every step once
    assert config["learning_rate"] == 3e-3 and config["report_to"] == ["tensorboard", "wandb", "mlflow"]
    run, mlflow_loss = mlflow_history(out, "train/loss")
    assert [step for step, _ in mlflow_loss] == list(range(1, STEPS + 1))
    assert run.data.params["learning_rate"] == "0.003" and run.info.run_name == "tracked"
    # the same values everywhere (TensorBoard stores float32)
    for (_, tb), (_, wb), (_, ml) in zip(tensorboard, wandb_loss, mlflow_loss):
        assert abs(tb - wb) <= 1e-6 * abs(wb) and wb == ml
    import json
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["tracker_runs"] == {"wandb": next(iter(ids)), "mlflow": run.info.run_id}


def test_report_to_problems_are_named():
    assert check_report_to(["tensorboard", "comet"]) == [
        "report_to: unknown tracker 'comet'; use any of tensorboard, wandb, mlflow"]


def test_a_missing_package_is_one_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert check_report_to(["wandb"]) == ["report_to: wandb is not installed; pip install -r requirements-loggers.txt"]


def test_config_becomes_flat_parameters():
    assert flat_params({"a": 1, "b": {"c": [1, 2], "d": {}}}) == {"a": "1", "b.c": "[1, 2]", "b.d": "{}"}
