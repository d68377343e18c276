"""The training-objective seam (modules/objectives.py): the default causal-LM objective trains exactly as the
loop did before the seam existed. tests/fixtures/objectives/sft_losses.json holds the per-step losses (float64,
as `float.hex`) that the loop computed before the seam (commit f6bc4c6, `python -m tests.test_objectives`),
on the demo config: the chunked loss (the CPU default), and the full one with accumulation over two micro-batches."""
import json
import sys
from pathlib import Path

import pytest

from tests.trainer_runs import FAST, compose_config

FIXTURE = Path(__file__).parent / "fixtures" / "objectives" / "sft_losses.json"
RUNS = {"chunked": ["loss_impl=chunked", "loss_chunk_tokens=64"],
        "accumulation": ["loss_impl=full", "per_gpu_train_batch_size=4", "gradient_accumulation_steps=2"]}


def sft_losses(output_dir: Path, overrides: list[str]) -> list[str]:
    """The logged float64 training loss of each of 4 optimizer steps, as `float.hex`."""
    from general_util.dist import init_distributed
    from trainer import TrainerHooks, build_trainer
    import torch
    ctx = init_distributed()
    cfg = compose_config(FAST + ["max_steps=4", "data.cache_dir=null"] + overrides, output_dir=output_dir)
    logged = []
    trainer = build_trainer(cfg, ctx, hooks=TrainerHooks(on_log=lambda step, values: logged.append(values["train/loss"]),
                                                        save_checkpoints=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture was recorded
    try:
        trainer.run()
    finally:
        torch.set_num_threads(threads)
    return [float(v).hex() for v in logged]


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
