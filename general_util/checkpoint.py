"""Checkpoints: DeepSpeed state for resume plus consolidated Hugging Face weights, written atomically.

Layout: `output_dir/checkpoint-<step>/` holds the DeepSpeed tag folder content (model/optimizer shards),
`config.json` + `model.safetensors` (loadable by `from_pretrained`), the tokenizer and the resolved
`training_config.yaml`. A checkpoint is first written as `.tmp-checkpoint-<step>` and renamed when
complete, so a folder named `checkpoint-*` is always whole.
"""
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from general_util import faults
from general_util.dist import DistContext, barrier, decided_by_rank0, gather_objects
from general_util.errors import UserError

logger = logging.getLogger(__name__)
PREFIX = "checkpoint-"
BEST_RECORD = "best_checkpoint.json"
TRAINER_STATE = "trainer_state.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written or continued; the message is one line."""


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"{PREFIX}{step}"


def step_of(path: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder (None for any other name)."""
    match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: Path, pattern: str = f"{PREFIX}*") -> list[Path]:
    """Complete checkpoints (`checkpoint-<step>` folders matching the glob `pattern`), oldest step first."""
    return sorted((p for p in output_dir.glob(pattern) if p.is_dir() and step_of(p) is not None), key=step_of)


def consolidated_state_dict(engine, zero_stage: int) -> dict | None:
    """Full model weights in the training dtype, on global rank 0 only (None elsewhere). Under ZeRO-3
    parameters are gathered one at a time, so no rank builds a full fp32 copy."""
    if zero_stage >= 3:
        return engine._zero3_consolidated_16bit_state_dict()
    if engine.global_rank != 0:
        return None
    return {name: tensor.detach().cpu() for name, tensor in engine.module.state_dict().items()}


def save_hf_weights(engine, directory: Path, tokenizer, config_yaml: str, zero_stage: int, ctx: DistContext) -> None:
    """Called on every rank: `from_pretrained`-loadable safetensors weights, tokenizer and the resolved
    training config, written by global rank 0 (see `write_hf_weights`)."""
    state_dict = consolidated_state_dict(engine, zero_stage)
    if ctx.is_main:
        write_hf_weights(engine.module, state_dict, directory, tokenizer, config_yaml)


def write_hf_weights(module, state_dict: dict, directory: Path, tokenizer, config_yaml: str) -> None:
    """Rank 0's part of `save_hf_weights`. A peft model writes its adapter alone (adapter_model.safetensors +
    adapter_config.json) and, with `model.save_merged`, the merged full model into `directory/merged`."""
    module.save_pretrained(directory, state_dict=state_dict)
    if getattr(module, "save_merged", False):
        from models.lora import merged_copy
        merged_copy(module, state_dict).save_pretrained(directory / "merged")
        tokenizer.save_pretrained(directory / "merged")
    tokenizer.save_pretrained(directory)
    (directory / "training_config.yaml").write_text(config_yaml, encoding="utf-8")
    logger.info("wrote Hugging Face weights to %s", directory)


def is_write_failure(error: BaseException) -> bool:
    """A failed write (disk full, quota, permission): an OSError, or torch.save's own RuntimeError when the
    disk fills under it (`[enforce fail at inline_container.cc] . unexpected pos`, `file write failed`)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and any(
        mark in str(error) for mark in ("inline_container", "PytorchStreamWriter", "file write failed")))


class RecordedWrites:
    """Runs this rank's writes of a save, keeping the first failure instead of raising it, so that every rank
    still reaches the save's collectives (DeepSpeed's barriers, the ZeRO-3 weight gather) and all ranks can
    agree on the outcome afterwards. Also wraps DeepSpeed's checkpoint engine (`engine.checkpoint_engine`),
    whose `save` / `makedirs` write each rank's shards."""

    def __init__(self, inner=None):
        self.inner, self.failure = inner, None

    def run(self, write, *args, **kwargs) -> None:
        if self.failure is not None:
            return  # after a failure, nothing more is written (the folder is removed anyway)
        try:
            write(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - only write failures are kept; anything else is a bug
            if not is_write_failure(error):
                raise
            self.failure = error

    def save(self, state_dict, path):
        self.run(self.inner.save, state_dict, path)

    def makedirs(self, path, exist_ok=False):
        self.run(self.inner.makedirs, path, exist_ok=exist_ok)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def describe_failure(error: BaseException) -> str:
    """The cause of a failed write (errno text, or torch's message) and the file."""
    cause = error.strerror if isinstance(error, OSError) and error.strerror else " ".join(str(error).split())[:160]
    filename = getattr(error, "filename", None)
    return f"{cause}{f': {filename}' if filename else ''}"


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_free_space(output_dir: Path, step: int, policy: str, ctx: DistContext) -> None:
    """Before a save: warn (policy `warn`) or stop every rank (`stop`) when the free space of output_dir's
    filesystem is below the size of the newest checkpoint, i.e. the next one will likely not fit."""
    def decide() -> None:
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            return
        needed, free = folder_size(checkpoints[-1]), shutil.disk_usage(output_dir).free
        if free >= needed:
            return
        message = (f"checkpoint-{step} will likely not fit in {output_dir}: {human_size(free)} free, the last "
                   f"checkpoint ({checkpoints[-1].name}) takes {human_size(needed)}")
        if policy == "stop":
            raise CheckpointError(f"{message} (save_space_check=stop); free space or lower save_total_limit, "
                                  f"then continue with resume=auto")
        logger.warning("%s; saving anyway (save_space_check=warn)", message)

    decided_by_rank0(decide)


def human_size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB" if num_bytes < 2**30 else f"{num_bytes / 2**30:.2f} GiB"


def save_checkpoint(engine, output_dir: Path, step: int, client_state: dict, tokenizer, config_yaml: str,
                    zero_stage: int, ctx: DistContext) -> Path:
    """Called on every rank. Returns the final checkpoint folder. A write that fails on any rank (disk full,
    quota, permission) fails the save on every rank: the partial folder is removed, the previous checkpoints
    stay, and a CheckpointError names the checkpoint, the cause and the free space."""
    final = checkpoint_dir(output_dir, step)
    tmp_tag = f".tmp-{final.name}"
    tmp = output_dir / tmp_tag
    if ctx.is_main and tmp.exists():
        shutil.rmtree(tmp)  # left over by a crash during an earlier save
    barrier()
    writes = RecordedWrites(engine.checkpoint_engine)
    engine.checkpoint_engine = writes
    try:
        engine.save_checkpoint(str(output_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    finally:
        engine.checkpoint_engine = writes.inner
    writes.run(save_rng_state, tmp, ctx.rank)
    # test-only: LLAMA_TRAINER_FAULT=kill@save=N / enospc@save=N, a crash or full disk mid-save (general_util/faults.py)
    writes.run(faults.fire, "save", step)
    state_dict = consolidated_state_dict(engine, zero_stage)  # a collective under ZeRO-3: every rank takes part
    if ctx.is_main:
        writes.run(write_hf_weights, engine.module, state_dict, tmp, tokenizer, config_yaml)
        writes.run(write_json_atomic, tmp / TRAINER_STATE, client_state)
    failures = [f"rank {rank}: {text}" for rank, text in
                enumerate(gather_objects(describe_failure(writes.failure) if writes.failure else None)) if text]
    if failures:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        free = human_size(shutil.disk_usage(output_dir).free)
        previous = list_checkpoints(output_dir)
        raise CheckpointError(f"could not save checkpoint {final} ({'; '.join(failures)}; {free} free on "
                              f"{output_dir}); the partial {tmp_tag} was removed and "
                              f"{previous[-1].name if previous else 'no earlier checkpoint'} stays the resume point")
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # the checkpoint appears whole, or not at all
        logger.info("saved %s", final)
    barrier()
    return final


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_rng_state(directory: Path, rank: int) -> None:
    """This rank's python / numpy / torch RNG states (tensors and plain lists: loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
             pos, has_gauss, cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, directory / f"rng_state_rank{rank}.pt")


def restore_rng_state(checkpoint: Path, rank: int) -> None:
    path = checkpoint / f"rng_state_rank{rank}.pt"
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint was written by a different number of ranks")
    state = torch.load(path, weights_only=True)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """`resume: auto` → the newest complete checkpoint in output_dir (None if there is none yet);
    a path → that checkpoint, which must exist."""
    if resume is None:
        return None
    if resume == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"resume={resume}: not a complete checkpoint folder (no {TRAINER_STATE})")
    return path


def read_trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def check_resumable(checkpoint: Path, state: dict, layout: dict) -> None:
    """Refuse a checkpoint that this run cannot continue exactly (`layout`: what must match)."""
    weights_only = "pass resume_mode=weights_only to start from its weights with a fresh optimizer"
    if "samples_in_epoch" not in state:
        raise CheckpointError(f"cannot resume exactly from {checkpoint}: it was written by an earlier version of the "
                              f"trainer, whose data order depended on the world size; {weights_only}")
    notes = {"global_batch_size": " (the world size, micro batch and accumulation may change, not their product)"}
    different = [f"{key} {state.get(key)} → {value}{notes.get(key, '')}" for key, value in layout.items()
                 if state.get(key) != value]
    if different:
        raise CheckpointError(f"cannot resume exactly from {checkpoint}: {', '.join(different)}; {weights_only}")


def apply_retention(output_dir: Path, limit: int, protected: set[Path]) -> list[Path]:
    """Delete the oldest checkpoints beyond the newest `limit`, never one in `protected` (the best)."""
    if limit <= 0:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [p for p in checkpoints[:-limit] if p.resolve() not in {q.resolve() for q in protected}]
    for path in doomed:
        shutil.rmtree(path)
        logger.info("deleted %s (save_total_limit=%d)", path, limit)
    return doomed


class BestTracker:
    """Tracks the best evaluation by `metric` (`measure` +1: higher is better, −1: lower) in
    `output_dir/best_checkpoint.json`."""

    def __init__(self, output_dir: Path, metric: str, measure: int):
        self.path = output_dir / BEST_RECORD
        self.metric, self.measure = metric, measure
        self.record = json.loads(self.path.read_text()) if self.path.exists() else None

    def key(self, metrics: dict[str, float]) -> str:
        """The full name (`<evaluator>/<metric>`) that `prediction_cfg.metric` designates in `metrics`."""
        if self.metric in metrics:
            return self.metric
        matches = [k for k in metrics if k.endswith("/" + self.metric)]
        if len(matches) != 1:
            raise KeyError(f"prediction_cfg.metric={self.metric!r} matches {matches or 'nothing'} in {sorted(metrics)}")
        return matches[0]

    def lookup(self, metrics: dict[str, float]) -> float:
        return metrics[self.key(metrics)]

    def update(self, metrics: dict[str, float], step: int, checkpoint: str | None) -> bool:
        """Record `metrics` of `step`; True when they are the new best (written by the caller's rank 0)."""
        value = self.lookup(metrics)
        if self.record is not None and value * self.measure <= self.record["value"] * self.measure:
            return False
        self.record = {"metric": self.metric, "measure": self.measure, "value": value, "step": step,
                       "checkpoint": checkpoint}
        return True

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2))
        os.replace(tmp, self.path)

    @property
    def best_checkpoint(self) -> Path | None:
        if self.record and self.record.get("checkpoint"):
            return self.path.parent / self.record["checkpoint"]
        return None
