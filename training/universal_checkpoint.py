"""Resume on another world size through DeepSpeed's universal checkpoint.

A ZeRO checkpoint is partitioned among the ranks that wrote it. DeepSpeed's `ds_to_universal` rewrites it
as one folder per parameter (fp32 weights and Adam moments, whole), which any number of ranks loads
exactly with `"checkpoint": {"load_universal": true}` in the DeepSpeed config (ZeRO stages 1-3). The
conversion is done once, by global rank 0 while the others wait, into `checkpoint-<step>/universal`
(written as `.tmp-universal` and renamed when complete, so a crash cannot leave a half conversion that
a later resume would trust); retention deletes it with its checkpoint. A folder converted beforehand
with `python -m deepspeed.checkpoint.ds_to_universal --inject_missing_state --input_folder checkpoint-<step>
--output_folder checkpoint-<step>/universal` (which can use several worker processes) is used as it is.
"""
import contextlib
import io
import logging
import os
import shutil
from argparse import Namespace
from pathlib import Path

from training.checkpoints import CheckpointError
from general_util.dist import DistContext, barrier

logger = logging.getLogger(__name__)
FOLDER = "universal"


def enable_universal_loading(ds_config: dict) -> None:
    """The DeepSpeed config switch that makes `engine.load_checkpoint` read the universal layout."""
    ds_config.setdefault("checkpoint", {})["load_universal"] = True


def convert_to_universal(checkpoint: Path, saved_world_size: int, ctx: DistContext) -> Path:
    """Called on every rank; returns the universal folder inside `checkpoint` (converted on first use)."""
    target = checkpoint / FOLDER
    if ctx.is_main and not target.is_dir():
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
        tmp = checkpoint / f".tmp-{FOLDER}"
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash during an earlier conversion
        # one worker: no process pool forked from a process that holds a process group (and CUDA);
        # inject_missing_state: the version record that Megatron-DeepSpeed clients add to their checkpoints
        args = Namespace(input_folder=str(checkpoint), output_folder=str(tmp), num_extract_workers=1,
                         num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):  # its progress lines, bars
                ds_to_universal(args)
            (checkpoint / "latest_universal").unlink(missing_ok=True)  # names the .tmp folder; the tag is passed
            os.replace(tmp, target)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot convert {checkpoint} (saved at world size {saved_world_size}) to "
                                  f"DeepSpeed's universal checkpoint to resume at world size {ctx.world_size} "
                                  f"({error.strerror or error}: {error.filename or tmp}); copy the checkpoint to a "
                                  "writable folder") from None
        finally:
            logger.debug("ds_to_universal:\n%s", output.getvalue())
        logger.info("converted %s (saved at world size %d) to DeepSpeed's universal checkpoint %s, to resume at "
                    "world size %d", checkpoint, saved_world_size, target, ctx.world_size)
    barrier()
    return target
