"""Where a run's checkpoints are, and whether one can be continued.

Layout: `output_dir/checkpoint-<step>/` holds the engine's resumable state (training/engine.py), `config.json` +
`model.safetensors` (loadable by `from_pretrained`), the tokenizer, the resolved `training_config.yaml` and
`trainer_state.json` (training/state.py). A checkpoint is first written as `.tmp-checkpoint-<step>` and renamed
when complete (training/saving.py), so a folder named `checkpoint-*` is always whole.
"""
import logging
import re
import shutil
from pathlib import Path

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


