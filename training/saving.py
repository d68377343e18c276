"""Writing a checkpoint so that it appears whole or not at all, and what happens when the disk says no."""
import errno
import logging
import os
import shutil
from pathlib import Path

from general_util import faults
from general_util.dist import DistContext, barrier, broadcast_object, decided_by_rank0, gather_objects
from general_util.files import write_json_atomic
from training.checkpoints import TRAINER_STATE, CheckpointError, checkpoint_dir, list_checkpoints
from training.state import TrainerState
from training.hf_export import HFExport, write_hf_weights
from training.rng_state import save_rng_state

logger = logging.getLogger(__name__)


def is_write_failure(error: BaseException) -> bool:
    """A failed write (disk full, quota, permission): an OSError, or torch.save's own RuntimeError when the
    disk fills under it (`[enforce fail at inline_container.cc] . unexpected pos`, `file write failed`)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and any(
        mark in str(error) for mark in ("inline_container", "PytorchStreamWriter", "file write failed")))


class RecordedWrites:
    """Runs this rank's writes of a save, keeping the first failure instead of raising it, so that every rank
    still reaches the save's collectives (the engine's barriers, a sharded weight gather) and all ranks can
    agree on the outcome afterwards. Engines route the writes of their own state through `run`."""

    def __init__(self):
        self.failure = None

    def run(self, write, *args, **kwargs) -> None:
        if self.failure is not None:
            return  # after a failure, nothing more is written (the folder is removed anyway)
        try:
            write(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - only write failures are kept; anything else is a bug
            if not is_write_failure(error):
                raise
            self.failure = error


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}  # the disk (or its owner) says no


def write_failure(error: BaseException, output_dir: Path) -> CheckpointError | None:
    """A write that failed outside a checkpoint save (the rank logs, TensorBoard, a tracker's files,
    data_<name>.json, the lock: disk full, quota, permission, read-only) as the one-line error to stop with:
    the file, the cause, the free space and the resume point; None for any other error. Looked for along the
    chain of causes (Hydra's instantiate wraps what a dataset raises)."""
    seen = set()
    while error is not None and id(error) not in seen and not (
            isinstance(error, OSError) and error.errno in WRITE_ERRNOS):
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    if error is None or id(error) in seen:
        return None
    checkpoints = list_checkpoints(output_dir) if os.access(output_dir, os.R_OK | os.X_OK) else []
    filename = f" {error.filename}" if error.filename else ""
    return CheckpointError(f"could not write{filename} ({error.strerror or error}; {free_space(output_dir)} free on "
                           f"{output_dir}); {checkpoints[-1].name if checkpoints else 'no checkpoint'} stays the resume "
                           f"point: free space or fix the permissions, then continue with resume=auto")


def free_space(path: Path) -> str:
    """The free space of the filesystem holding `path` (or its nearest existing parent)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return human_size(shutil.disk_usage(path).free)


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


def save_checkpoint(engine, output_dir: Path, step: int, trainer_state: TrainerState, export: HFExport,
                    ctx: DistContext) -> Path:
    """Called on every rank: the engine's resumable state, each rank's RNG state, the Hugging Face export and
    `trainer_state`, into `.tmp-checkpoint-<step>`, renamed when complete; returns the final folder. A write
    that fails on any rank (disk full, quota, permission) fails the save on every rank: the partial folder is
    removed, the previous checkpoints stay, and a CheckpointError names the checkpoint, the cause and the
    free space."""
    final = checkpoint_dir(output_dir, step)
    tmp = output_dir / f".tmp-{final.name}"
    if ctx.is_main and tmp.exists():
        shutil.rmtree(tmp)  # left over by a crash during an earlier save
    barrier()
    writes = RecordedWrites()
    engine.save(tmp, writes)
    writes.run(save_rng_state, tmp, ctx.rank)
    # test-only: LLAMA_TRAINER_FAULT=kill@save=N / enospc@save=N, a crash or full disk mid-save (general_util/faults.py)
    writes.run(faults.fire, "save", step, str(tmp))
    state_dict = engine.consolidated_state_dict()  # a collective when the weights are sharded: every rank takes part
    if ctx.is_main:
        writes.run(write_hf_weights, engine.module, state_dict, tmp, export)
        writes.run(write_json_atomic, tmp / TRAINER_STATE, trainer_state.to_json())
    failures = [f"rank {rank}: {text}" for rank, text in
                enumerate(gather_objects(describe_failure(writes.failure) if writes.failure else None)) if text]
    if not failures:
        renamed = None
        if ctx.is_main:
            try:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)  # the checkpoint appears whole, or not at all
                logger.info("saved %s", final)
            except OSError as error:
                renamed = f"rank 0: {describe_failure(error)}"
        failures = [text for text in [broadcast_object(renamed)] if text]  # every rank learns how the rename went
    if failures:
        if ctx.is_main:
            remove_partial(tmp)
        free = free_space(output_dir)
        previous = list_checkpoints(output_dir)
        raise CheckpointError(f"could not save checkpoint {final} ({'; '.join(failures)}; {free} free on "
                              f"{output_dir}); the partial {tmp.name} was removed and "
                              f"{previous[-1].name if previous else 'no earlier checkpoint'} stays the resume point")
    barrier()
    return final


def remove_partial(folder: Path) -> None:
    """Remove a partly written checkpoint, also one whose folders were left read-only."""
    def writable_again(function, path, _):
        os.chmod(os.path.dirname(path), 0o755)
        function(path)

    if folder.exists():
        os.chmod(folder, 0o755)
        shutil.rmtree(folder, onerror=writable_again)
