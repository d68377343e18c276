"""Clean exits, repeated (issue 14's acceptance): a 2-rank job that trains, saves and finishes exits 0 on every
rank, every time. A finished ZeRO-3 rank once aborted at interpreter exit (`terminate called without an active
exception`, exit -6) on a loaded machine; general_util.dist.teardown/exit_process end each rank in order. As
short as a job can be (2 steps, the final save, no evaluation), started by the launchers users type: ZeRO-1
through `deepspeed --num_gpus 2`, ZeRO-3 through torchrun. CI launches 1 per stage (each a real launcher and
two trainer processes: ~15–30 s of CPU); every other 2-rank job of the suite (the launchers' in
test_deepspeed_multinode.py, and the forked ranks', which end through the same teardown and exit) checks each rank's
exit code too. The acceptance run of ten is `LLAMA_TRAINER_EXIT_REPEATS=10 python -m pytest -q -n0
tests/test_repeated_jobs.py`."""
import os

import pytest

from tests.trainer_runs import FAST, run_trainer

pytestmark = pytest.mark.slow
REPEATS = int(os.environ.get("LLAMA_TRAINER_EXIT_REPEATS", "1"))


@pytest.mark.parametrize("stage, launcher", [("zero1", "deepspeed"), ("zero3", "torchrun")])
def test_two_rank_jobs_exit_zero_every_time(tmp_path, stage, launcher):
    for attempt in range(REPEATS):
        out = tmp_path / f"run{attempt}"
        result = run_trainer(out, FAST + ["max_steps=2", "per_gpu_train_batch_size=2", f"deepspeed@ds_cfg={stage}"],
                             launcher=launcher, nproc=2, check=False)
        assert result.returncode == 0, (attempt, result.stderr[-4000:])
        assert (out / "checkpoint-2" / "model.safetensors").is_file()
