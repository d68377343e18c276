"""Each rank's python / numpy / torch RNG states, saved in a checkpoint and restored at an exact resume."""
import random
from pathlib import Path

import numpy as np
import torch

from training.checkpoints import CheckpointError


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
