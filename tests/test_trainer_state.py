"""training/state.py: the trainer state of a checkpoint, read from the JSON each version of the trainer wrote
(tests/fixtures/trainer_state: real files), written back unchanged, and checked against the resuming run."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from training.checkpoints import TRAINER_STATE, CheckpointError
from training.state import Layout, Split, TrainerState

FIXTURES = Path(__file__).parent / "fixtures" / "trainer_state"
# the demo SFT run the fixtures were written by, as a run with the current code lays it out
DEMO = Layout(global_batch_size=8, sequence_parallel_size=1, engine="deepspeed", zero_stage=1, seed=42,
              data_fingerprint="0ade2bf7c3aa3f58", tokenizer_fingerprint="cf8cfec5d289c3d0")


def checkpoint_with(tmp_path, fixture: str) -> Path:
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    shutil.copy(FIXTURES / fixture, checkpoint / TRAINER_STATE)
    return checkpoint


def test_the_format_before_the_dataclass_reads_and_writes_back_byte_for_byte():
    text = (FIXTURES / "100d4c2.json").read_text()
    state = TrainerState.from_json(json.loads(text))
    assert state == TrainerState(step=2, epoch=0, samples_in_epoch=16, tracker_runs={},
                                 split=Split(world_size=1, per_gpu_train_batch_size=8, gradient_accumulation_steps=1),
                                 layout=DEMO)
    assert json.dumps(state.to_json(), indent=2) == text.rstrip("\n")  # as training/saving.py writes it


def test_the_oldest_format_that_continues_takes_the_defaults_of_its_time():
    state = TrainerState.from_json(json.loads((FIXTURES / "5463548.json").read_text()))
    assert (state.step, state.data_position) == (2, {"epoch": 0, "samples_in_epoch": 16})
    assert state.layout == replace(DEMO, zero_stage=None)  # DeepSpeed, no sequence parallelism, stage not recorded
    assert state.layout.differences(DEMO) == []
    assert state.layout.differences(replace(DEMO, zero_stage=3)) == []  # any stage continues it, as before
    assert state.layout.differences(replace(DEMO, engine="fsdp2", sequence_parallel_size=2)) == [
        "sequence_parallel_size 1 → 2", "engine deepspeed → fsdp2"]


def test_a_round_trip_keeps_every_field():
    state = TrainerState(step=37, epoch=2, samples_in_epoch=48, tracker_runs={"wandb": "abc123", "mlflow": "f00"},
                         split=Split(world_size=4, per_gpu_train_batch_size=2, gradient_accumulation_steps=3),
                         layout=Layout(24, 2, "fsdp2", 3, 7, "d" * 16, "t" * 16))
    assert TrainerState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert list(state.to_json()) == list(json.loads((FIXTURES / "100d4c2.json").read_text()))  # keys, in order


def test_read_accepts_a_matching_run_and_refuses_another_in_one_line(tmp_path):
    checkpoint = checkpoint_with(tmp_path, "100d4c2.json")
    assert TrainerState.read(checkpoint, DEMO).layout == DEMO
    with pytest.raises(CheckpointError) as refusal:
        TrainerState.read(checkpoint, replace(DEMO, global_batch_size=4, zero_stage=3))
    assert str(refusal.value) == (
        f"cannot resume exactly from {checkpoint}: global_batch_size 8 → 4 (the world size, micro batch and "
        f"accumulation may change, not their product), zero_stage 1 → 3 (the ZeRO stage of ds_cfg); pass "
        f"resume_mode=weights_only to start from its weights with a fresh optimizer")


def test_read_refuses_the_format_before_elastic_resume(tmp_path):
    checkpoint = checkpoint_with(tmp_path, "439d71b.json")
    with pytest.raises(CheckpointError, match=rf"^cannot resume exactly from {checkpoint}: it was written by an "
                                              r"earlier version of the trainer, whose data order depended on the "
                                              r"world size; pass resume_mode=weights_only"):
        TrainerState.read(checkpoint, DEMO)


def test_a_damaged_state_is_named(tmp_path):
    checkpoint = checkpoint_with(tmp_path, "100d4c2.json")
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    del state["seed"], state["world_size"]
    (checkpoint / TRAINER_STATE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=f"{TRAINER_STATE} lacks world_size, seed;"):
        TrainerState.read(checkpoint, DEMO)
    (checkpoint / TRAINER_STATE).write_text('{"global_step": 2,')
    with pytest.raises(CheckpointError, match=rf"^cannot resume from {checkpoint}: its {TRAINER_STATE} is unreadable "
                                              r"\(Expecting"):
        TrainerState.read(checkpoint, DEMO)
