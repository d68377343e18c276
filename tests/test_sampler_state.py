"""The sampler owns the data position (data/sampler.py): the loop advances it after each optimizer step, its
state_dict is the same for every split of the global batch, and a sampler loaded with it continues the stream
exactly, across epochs and on another world size. Every rank's stream is cut as trainer.py cuts it: a
DataLoader over the sampler, one pass per epoch, `accumulation` micro-batches per rank and step."""
import pytest
from torch.utils.data import DataLoader

from data.sampler import DistributedEpochSampler

# (world size, micro batch, accumulation) splits of one global batch G = 8
SPLITS = [(1, 8, 1), (2, 2, 2), (4, 1, 2)]
NUM_SAMPLES = 21  # 3 steps an epoch (the last padded)
STEPS = 8  # into the third epoch


def micro_batches(sampler, micro):
    while True:  # as Trainer.micro_batches: a pass ends with the sampler at the next epoch's start
        yield from (batch.tolist() for batch in DataLoader(range(NUM_SAMPLES), batch_size=micro, sampler=sampler))


def train(split, steps, position=None):
    """(the samples of each step, sorted; the position after each step) for `steps` steps from `position`."""
    world, micro, accumulation = split
    samplers = [DistributedEpochSampler(NUM_SAMPLES, rank, world, seed=7, micro_batch_size=micro,
                                        accumulation_steps=accumulation) for rank in range(world)]
    if position is not None:
        for sampler in samplers:
            sampler.load_state_dict(position)
    streams = [micro_batches(sampler, micro) for sampler in samplers]
    trained, positions = [], []
    for _ in range(steps):
        trained.append(sorted(i for stream in streams for _ in range(accumulation) for i in next(stream)))
        for sampler in samplers:
            sampler.advance()
        assert len({str(sampler.state_dict()) for sampler in samplers}) == 1  # every rank at one position
        positions.append(samplers[0].state_dict())
    return trained, positions


def test_the_position_counts_global_samples_across_epochs_for_every_split():
    reference, positions = train(SPLITS[0], STEPS)
    assert positions == [{"epoch": (k + 1) // 3, "samples_in_epoch": 8 * ((k + 1) % 3)} for k in range(STEPS)]
    assert reference[3] != reference[0]  # each epoch its own order
    for split in SPLITS[1:]:
        assert train(split, STEPS) == (reference, positions), split


@pytest.mark.parametrize("saved", SPLITS, ids=lambda split: "x".join(map(str, split)))
def test_a_loaded_position_continues_the_stream_on_every_split(saved):
    reference, positions = train(SPLITS[0], STEPS)
    for stop in range(1, STEPS):  # mid-epoch and at epoch starts
        position = train(saved, stop)[1][-1]
        for resumed in SPLITS:
            assert train(resumed, STEPS - stop, position)[0] == reference[stop:], (saved, stop, resumed)


def test_a_position_is_refused_off_a_step_boundary_or_at_an_epochs_end():
    sampler = DistributedEpochSampler(NUM_SAMPLES, 0, 2, seed=7, micro_batch_size=2, accumulation_steps=2)
    with pytest.raises(ValueError, match="not a step boundary"):
        sampler.load_state_dict({"epoch": 1, "samples_in_epoch": 4})
    with pytest.raises(ValueError, match="end of epoch 1"):
        sampler.load_state_dict({"epoch": 1, "samples_in_epoch": 24})
    assert sampler.state_dict() == {"epoch": 0, "samples_in_epoch": 0}
