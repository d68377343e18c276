"""The training-objective seam (modules/objectives.py): the default causal-LM objective trains exactly as the
loop did before the seam existed. tests/fixtures/objectives/sft_losses.json holds the per-step losses (float64,
as `float.hex`) that the loop computed before the seam (commit f6bc4c6, `python -m tests.test_objectives`),
on the demo config: the chunked loss (the CPU default), and the full one with accumulation over two micro-batches."""
import json
import sys
from pathlib import Path

import pytest

from tests.objective_runs import logged_values
from tests.trainer_runs import FAST

FIXTURE = Path(__file__).parent / "fixtures" / "objectives" / "sft_losses.json"
RUNS = {"chunked": ["loss_impl=chunked", "loss_chunk_tokens=64"],
        "accumulation": ["loss_impl=full", "per_gpu_train_batch_size=4", "gradient_accumulation_steps=2"]}


def sft_losses(output_dir: Path, overrides: list[str]) -> list[str]:
    """The logged float64 training loss of each of 4 optimizer steps, as `float.hex`."""
    values = logged_values(output_dir, FAST + ["max_steps=4", "data.cache_dir=null"] + overrides)
    return [float(v["train/loss"]).hex() for v in values]


@pytest.mark.parametrize("name", RUNS)
def test_causal_lm_objective_losses_are_bitwise_those_before_the_seam(name, tmp_path):
    expected = json.loads(FIXTURE.read_text())[name]
    assert len(expected) == 4
    assert sft_losses(tmp_path, RUNS[name]) == expected


if __name__ == "__main__":  # records the fixture (run on the commit named in the docstring)
    import tempfile
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.write_text(json.dumps({name: sft_losses(Path(tmp) / name, overrides) for name, overrides in RUNS.items()},
                                      indent=1) + "\n")
    sys.exit(0)
