"""Elastic exact resume: the data order depends on the seed, the epoch and the global sample position only,
so a checkpoint written by W ranks continues on W' ranks (ZeRO partitions re-cut through DeepSpeed's universal
checkpoint) with the losses and weights of the uninterrupted run, up to the reduction order (1e-5 relative, fp32).

The sampler tests run in-process; the end-to-end runs kill a job at an exact step with the trainer's fault hook
(general_util/faults.py) and resume it with resume=auto on the other world size, and on the same one (bitwise).
One uninterrupted run and one killed run per ZeRO stage serve every test of the module."""
import shutil
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from data.sampler import DistributedEpochSampler
from training.config import optimizer_steps
from tests.trainer_runs import FAST, REPO, read_scalars, run_trainer

# ---- the sampler: world-size independent by construction ---------------------------------------------------
# (world size, micro batch, accumulation) splits of one global batch G = 8
SPLITS = [(1, 8, 1), (2, 2, 2), (4, 1, 2), (8, 1, 1)]
NUM_SAMPLES = 21  # not a multiple of G: 3 steps an epoch, the last one padded with 3 of the epoch's first samples


def step_samples(world, micro, accumulation, epoch=0, start=0, num_samples=NUM_SAMPLES):
    """The samples (as a sorted multiset) of every optimizer step, from every rank's stream cut as the trainer
    cuts it: `accumulation` micro-batches of `micro` samples per rank and step."""
    streams = []
    for rank in range(world):
        sampler = DistributedEpochSampler(num_samples, rank, world, seed=7, micro_batch_size=micro,
                                          accumulation_steps=accumulation)
        sampler.set_epoch(epoch, start=start)
        streams.append(list(sampler))
        assert len(streams[-1]) == len(sampler)
    per_step = micro * accumulation
    assert len({len(stream) for stream in streams}) == 1  # every rank has as many micro-batches (collectives align)
    return [sorted(i for stream in streams for i in stream[k:k + per_step])
            for k in range(0, len(streams[0]), per_step)]


def test_every_split_of_the_global_batch_trains_the_same_samples_at_every_step():
    for epoch in (0, 1):
        reference = step_samples(*SPLITS[0], epoch=epoch)
        assert len(reference) == 3 and all(len(step) == 8 for step in reference)
        for split in SPLITS[1:]:
            assert step_samples(*split, epoch=epoch) == reference, split
    assert step_samples(*SPLITS[0], epoch=1) != step_samples(*SPLITS[0], epoch=0)  # each epoch its own order


def test_a_mid_epoch_start_continues_at_the_global_sample_position():
    for split in SPLITS:
        whole = step_samples(*split)
        assert step_samples(*split, start=8) == whole[1:]
        assert step_samples(*split, start=16) == whole[2:]
        assert step_samples(*split, start=24) == []  # the epoch is consumed: the trainer moves on to the next
    with pytest.raises(ValueError, match="not a step boundary"):
        DistributedEpochSampler(NUM_SAMPLES, 0, 2, seed=7, micro_batch_size=2, accumulation_steps=2).set_epoch(0, 4)


def test_the_epoch_is_padded_to_whole_steps_with_its_first_samples():
    sampler = DistributedEpochSampler(NUM_SAMPLES, 0, 2, seed=7, micro_batch_size=2, accumulation_steps=2)
    order = sampler.epoch_order(0)
    assert sampler.epoch_length == len(order) == 24
    assert sorted(order[:NUM_SAMPLES]) == list(range(NUM_SAMPLES)) and order[NUM_SAMPLES:] == order[:3]
    for split in SPLITS:
        trained = Counter(i for step in step_samples(*split) for i in step)
        assert trained == Counter(order), split  # every sample once, the 3 padding samples twice
    even = DistributedEpochSampler(16, 1, 2, seed=7, micro_batch_size=4)
    assert even.epoch_length == 16 and sorted(even.epoch_order(0)) == list(range(16))  # no padding needed


def test_optimizer_steps_depend_on_the_global_batch_only():
    for world, micro, accumulation in SPLITS:
        cfg = OmegaConf.create({"per_gpu_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
                                "max_steps": -1, "num_train_epochs": 3})
        assert optimizer_steps(NUM_SAMPLES, cfg, world) == (3 * accumulation, 9)  # 3 epochs × ⌈21 / 8⌉
        assert optimizer_steps(NUM_SAMPLES, OmegaConf.merge(cfg, {"max_steps": 5}), world)[1] == 5


# ---- end to end: killed on 2 ranks, resumed on 1, killed again, resumed on 2 --------------------------------
STEPS = 12
RUN = FAST + [f"max_steps={STEPS}", "save_steps=3", "gradient_accumulation_steps=2", "num_workers=1"]
SPLIT = {1: ["per_gpu_train_batch_size=4"], 2: ["per_gpu_train_batch_size=2"]}  # global batch 8 either way
RELATIVE_TOLERANCE = 1e-5


def train(output_dir, stage, nproc, extra=(), **kwargs):
    return run_trainer(output_dir, RUN + SPLIT[nproc] + [f"deepspeed@ds_cfg=zero{stage}"] + list(extra),
                       nproc=nproc, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(stage)`: the output folder of a 2-rank run that never stopped (once per stage and module)."""
    runs = {}

    def run(stage):
        if stage not in runs:
            runs[stage] = tmp_path_factory.mktemp(f"uninterrupted_zero{stage}")
            train(runs[stage], stage, 2)
        return runs[stage]
    return run


@pytest.fixture(scope="module")
def killed_on_two_ranks(tmp_path_factory):
    """`killed_on_two_ranks(stage)`: (the launch's result, its output folder) of a 2-rank run killed after step 4,
    its one checkpoint checkpoint-3 (once per stage and module). Each test resumes a copy of the folder."""
    runs = {}

    def run(stage):
        if stage not in runs:
            out = tmp_path_factory.mktemp(f"killed_zero{stage}")
            runs[stage] = train(out, stage, 2, check=False, env={"LLAMA_TRAINER_FAULT": "kill@step=4"}), out
        return runs[stage]
    return run


def resumable_copy(killed_on_two_ranks, stage, tmp_path):
    """A copy of the killed 2-rank run's folder in tmp_path, after checking how the kill left it."""
    killed, folder = killed_on_two_ranks(stage)
    log = (folder / "logs" / "rank0.log").read_text()
    assert killed.returncode == -9, killed.returncode
    assert f"step 4/{STEPS}" in log and f"step 5/{STEPS}" not in log, log[-3000:]
    assert checkpoint_steps(folder) == [3]
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    return out


def losses(output_dir):
    return dict(read_scalars(output_dir)["train/loss"])


def assert_close_runs(reference, resumed):
    """Every logged loss within the tolerance (relative), and every final weight tensor too (relative norm)."""
    expected, actual = losses(reference), losses(resumed)
    assert sorted(actual) == sorted(expected) == list(range(1, STEPS + 1))  # no duplicated or missing steps
    for step, loss in expected.items():
        assert abs(actual[step] - loss) <= RELATIVE_TOLERANCE * abs(loss), (step, loss, actual[step])
    weights_a = load_file(reference / f"checkpoint-{STEPS}" / "model.safetensors")
    weights_b = load_file(resumed / f"checkpoint-{STEPS}" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        difference = (weights_b[name] - tensor).norm() / tensor.norm()
        assert difference <= RELATIVE_TOLERANCE, (name, difference.item())
    initial = load_file(REPO / "models" / "tiny_llama" / "model.safetensors")
    assert not torch.equal(weights_a["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])  # it trained


def checkpoint_steps(output_dir):
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


def assert_resumed_on_another_world_size(output_dir, step, saved, resumed):
    """The run's log shows the one conversion of checkpoint-<step> and the resume from it."""
    checkpoint = output_dir / f"checkpoint-{step}"
    log = (output_dir / "logs" / "rank0.log").read_text()
    assert log.count(f"converted {checkpoint} (saved at world size {saved}) to DeepSpeed's universal checkpoint "
                     f"{checkpoint / 'universal'}, to resume at world size {resumed}") == 1, log[-3000:]
    assert (f"resumed from {checkpoint} at step {step} (epoch 0, sample {8 * step} of the epoch; saved at world "
            f"size {saved}, now {resumed})") in log
    assert (checkpoint / "universal" / "zero").is_dir() and not (checkpoint / ".tmp-universal").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3], ids=["zero1", "zero3"])
def test_killed_runs_resume_on_another_world_size(uninterrupted, killed_on_two_ranks, tmp_path, stage):
    """2 ranks killed after step 4 → resumed on 1 rank from checkpoint-3, killed after step 7 → resumed on 2
    ranks from checkpoint-6 (written by 1 rank): every logged loss and the final weights are the
    uninterrupted 2-rank run's, up to the reduction order. Mid-epoch throughout (19 steps an epoch)."""
    reference = uninterrupted(stage)
    out = resumable_copy(killed_on_two_ranks, stage, tmp_path)
    killed = train(out, stage, 1, ["resume=auto"], check=False, env={"LLAMA_TRAINER_FAULT": "kill@step=7"})
    assert killed.returncode == -9 and checkpoint_steps(out) == [3, 6]
    assert_resumed_on_another_world_size(out, 3, saved=2, resumed=1)
    train(out, stage, 2, ["resume=auto"])
    assert_resumed_on_another_world_size(out, 6, saved=1, resumed=2)
    assert_close_runs(reference, out)
    assert len(list((out / f"checkpoint-{STEPS}").glob("*optim_states.pt"))) == 2  # partitioned over 2 again


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_on_two_ranks_is_bitwise_identical(uninterrupted, killed_on_two_ranks, tmp_path):
    """The same world size continues exactly: every logged loss and every final weight bitwise equal (ZeRO-1,
    killed between the first and second checkpoints; the 1-rank faults are in test_resume.py)."""
    reference = uninterrupted(1)
    out = resumable_copy(killed_on_two_ranks, 1, tmp_path)
    train(out, 1, 2, ["resume=auto"])
    log = (out / "logs" / "rank0.log").read_text()
    assert f"resumed from {out / 'checkpoint-3'} at step 3" in log and "universal" not in log, log[-3000:]
    expected, actual = losses(reference), losses(out)
    assert sorted(actual) == list(range(1, STEPS + 1)) and actual == expected
    weights_a = load_file(reference / f"checkpoint-{STEPS}" / "model.safetensors")
    weights_b = load_file(out / f"checkpoint-{STEPS}" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert len(list((out / f"checkpoint-{STEPS}").glob("zero_pp_rank_*_optim_states.pt"))) == 2


@pytest.mark.slow
def test_another_global_batch_is_refused_on_another_world_size(uninterrupted, tmp_path):
    """Also the refusal test_resume.py's weights_only run follows: exit 2, one line that names the way out."""
    checkpoint = uninterrupted(1) / "checkpoint-6"
    overrides = RUN + ["deepspeed@ds_cfg=zero1", "per_gpu_train_batch_size=2", f"resume={checkpoint}"]
    result = run_trainer(tmp_path, overrides, check=False)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: cannot resume exactly from {checkpoint}: global_batch_size 8 → 4 (the world "
                              "size, micro batch and accumulation may change, not their product)"), message
    assert message.endswith("; pass resume_mode=weights_only to start from its weights with a fresh optimizer"), message
    assert not (checkpoint / "universal").exists()  # refused before anything was converted
