"""The trainer's state kept in every checkpoint (`trainer_state.json`): where the run stands and what another
run must match to continue it exactly. Read and checked once per run, before anything big is built."""
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from training.checkpoints import TRAINER_STATE, CheckpointError

WEIGHTS_ONLY = "pass resume_mode=weights_only to start from its weights with a fresh optimizer"
# keys that checkpoints of earlier versions lack, and what those were written with
OLDER_CHECKPOINTS = {"tracker_runs": {}, "sequence_parallel_size": 1, "engine": "deepspeed",
                     "zero_stage": None}  # None: not recorded; continued under any stage


@dataclass(frozen=True)
class Split:
    """How a run splits its global batch (free to change at resume)."""
    world_size: int
    per_gpu_train_batch_size: int
    gradient_accumulation_steps: int


@dataclass(frozen=True)
class Layout:
    """What must match for a checkpoint to continue a run exactly. The world size, micro batch and accumulation
    may change: the data order and the loss depend on their product (the global batch) only. The engine and the
    ZeRO stage may not: neither's optimizer state loads into another."""
    global_batch_size: int
    sequence_parallel_size: int
    engine: str
    zero_stage: int | None  # None: not recorded (OLDER_CHECKPOINTS) or not the engine's concern (FSDP2)
    seed: int
    data_fingerprint: str
    tokenizer_fingerprint: str

    def differences(self, run: "Layout") -> list[str]:
        """What differs in `run` from this (recorded) layout, each as `key recorded → run's (why it matters)`."""
        notes = {"global_batch_size": " (the world size, micro batch and accumulation may change, not their product)",
                 "zero_stage": " (the ZeRO stage of ds_cfg)"}
        recorded, wanted = asdict(self), asdict(run)
        return [f"{key} {value} → {wanted[key]}{notes.get(key, '')}" for key, value in recorded.items()
                if value != wanted[key] and not (key == "zero_stage" and None in (value, wanted[key]))]


@dataclass(frozen=True)
class TrainerState:
    """Step, data position (the sampler's, data/sampler.py), W&B / MLflow run ids to continue, and the run's
    split and layout. Its JSON is flat, as every checkpoint since elastic resume has written it."""
    step: int
    epoch: int
    samples_in_epoch: int  # global samples of `epoch` trained
    tracker_runs: dict[str, str]
    split: Split
    layout: Layout

    @property
    def data_position(self) -> dict[str, int]:
        """For the sampler's `load_state_dict`."""
        return {"epoch": self.epoch, "samples_in_epoch": self.samples_in_epoch}

    def to_json(self) -> dict:
        return {"global_step": self.step, **self.data_position, "tracker_runs": self.tracker_runs,
                **asdict(self.split), **asdict(self.layout)}

    @classmethod
    def from_json(cls, data: dict) -> "TrainerState":
        """A state as `to_json` writes it, or as an earlier version did (OLDER_CHECKPOINTS); CheckpointError for one
        written before the data position was global (its data order depended on the world size)."""
        if "samples_in_epoch" not in data:
            raise CheckpointError("it was written by an earlier version of the trainer, whose data order depended on "
                                  "the world size")
        data = {**OLDER_CHECKPOINTS, **data}
        names = ["global_step", "epoch", "tracker_runs", *(f.name for f in fields(Split) + fields(Layout))]
        missing = [name for name in names if name not in data]
        if missing:
            raise CheckpointError(f"its {TRAINER_STATE} lacks {', '.join(missing)}")
        return cls(data["global_step"], data["epoch"], data["samples_in_epoch"], dict(data["tracker_runs"]),
                   Split(**{f.name: data[f.name] for f in fields(Split)}),
                   Layout(**{f.name: data[f.name] for f in fields(Layout)}))

    @classmethod
    def read(cls, checkpoint: Path, run: Layout) -> "TrainerState":
        """The state of `checkpoint`, which this run (its `run` layout) must be able to continue exactly."""
        try:
            data = json.loads((checkpoint / TRAINER_STATE).read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            raise CheckpointError(f"cannot resume from {checkpoint}: its {TRAINER_STATE} is unreadable "
                                  f"({error})") from None
        try:
            state = cls.from_json(data)
            different = state.layout.differences(run)
            if different:
                raise CheckpointError(", ".join(different))
        except CheckpointError as error:
            raise CheckpointError(f"cannot resume exactly from {checkpoint}: {error}; {WEIGHTS_ONLY}") from None
        return state
