"""`objective: grpo` through the trainer (conf/demo/grpo_logiqa.yaml, 4 steps of 2 prompts × 4 completions): rollouts
written per step; the KL to the frozen reference (beta); num_iterations=2 updates per generation batch; 2 ranks (ZeRO-3, FSDP2) equal 1 rank given the same completions (the objective's test hook
feeds them); a run killed after step 3 and resumed with resume=auto is bitwise the uninterrupted one, sampling
included."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tests.forked_ranks import REPO
from tests.trainer_runs import FAST, read_scalars, run_trainer, scalar_values

pytestmark = pytest.mark.slow  # the end-to-end tier: trainer.py in forked ranks, 2 ranks, kill and resume

GRPO = ("conf/demo", "grpo_logiqa")
STEPS = 4
RUN = FAST + [f"max_steps={STEPS}"]
HOOK = ["objective.completion_hook=tests.test_grpo_training:fixed_completions", "objective.beta=0.04",
        "objective.num_iterations=2"]
METRICS = ("reward", "reward_std", "rewards/answer/mean", "rewards/answer/std", "completions/mean_length",
           "completions/max_length", "completions/clipped_ratio", "entropy", "clip_ratio/region_mean", "kl")


def fixed_completions(records, completion_ids, tokenizer):
    """Completion j of each group of four answers letter j (exactly one of them is right) and grows by j tokens,
    whatever was sampled."""
    return [tokenizer(" " + "ABCD"[j % 4] + " ." * (j % 4), add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id] for j, _ in enumerate(records)]


def batch(nproc: int) -> list[str]:
    return [f"per_gpu_train_batch_size={2 // nproc}"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_1")
    run_trainer(out, RUN + HOOK + batch(1) + ["deepspeed@ds_cfg=zero3"], config=GRPO)
    return out


def test_rollouts_rewards_and_metrics(one_rank):
    rows = [json.loads(line) for line in (one_rank / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sorted(rows[0]) == ["advantage", "completion", "prompt", "reward", "rewards"]
    assert [row["completion"].split()[0] for row in rows[:4]] == list("ABCD")
    gold = [row["rewards"]["answer"] for row in rows[:4]]
    assert sorted(gold) == [0.0, 0.0, 0.0, 1.0]
    advantages = [row["advantage"] for row in rows[:4]]
    assert advantages[gold.index(1.0)] == pytest.approx(1.5, rel=1e-3)  # (1 - 1/4) / std(1,0,0,0) = 0.75 / 0.5
    assert sum(advantages) == pytest.approx(0, abs=1e-6)
    assert sorted(p.name for p in (one_rank / "rollouts").iterdir()) == [f"step-{n}.jsonl" for n in range(1, 5)]
    scalars = read_scalars(one_rank)
    for name in METRICS:
        assert len(scalars[f"train/{name}"]) == STEPS, name
    assert scalar_values(one_rank, "train/reward") == pytest.approx([0.25] * STEPS)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "models/tiny_llama")
    longest = max(len(tokens) for tokens in fixed_completions([None] * 4, None, tokenizer))  # the same every step
    assert scalar_values(one_rank, "train/completions/max_length") == [longest] * STEPS
    assert all(mean < longest for mean in scalar_values(one_rank, "train/completions/mean_length"))
    assert all(loss != 0 for loss in scalar_values(one_rank)) and all(g > 0 for g in scalar_values(one_rank, "train/grad_norm"))
    kl = scalar_values(one_rank, "train/kl")  # the reference is the starting policy: KL 0 until the first update ...
    assert 0 < kl[0] < kl[1] < kl[2]  # ... which the second of step 1's two updates (num_iterations=2) follows
    # that second update's ratios are those of the updated policy over the sampling one: some are clipped
    assert scalar_values(one_rank, "train/clip_ratio/region_mean")[0] > 0


@pytest.mark.parametrize("engine", [["deepspeed@ds_cfg=zero3"], ["engine=fsdp2"]], ids=["zero3", "fsdp2"])
def test_two_ranks_equal_one_rank_given_the_same_completions(one_rank, tmp_path, engine):
    run_trainer(tmp_path, RUN + HOOK + batch(2) + engine, nproc=2, config=GRPO)
    assert scalar_values(tmp_path) == pytest.approx(scalar_values(one_rank), rel=1e-5)
    for tag in ("train/entropy", "train/kl", "train/completions/max_length"):  # the maximum over both ranks
        assert scalar_values(tmp_path, tag) == pytest.approx(scalar_values(one_rank, tag), rel=1e-5, abs=1e-9), tag
    assert (tmp_path / "rollouts" / "step-4.jsonl").read_text() == (one_rank / "rollouts" / "step-4.jsonl").read_text()


def test_killed_and_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    whole, faulted = tmp_path / "whole", tmp_path / "faulted"
    save = ["save_steps=2", "objective.num_iterations=2"] + batch(1)
    run_trainer(whole, RUN + save, config=GRPO)
    killed = run_trainer(faulted, RUN + save, config=GRPO, check=False, env={"LLAMA_TRAINER_FAULT": "kill@step=3"})
    assert killed.returncode == -9
    run_trainer(faulted, RUN + save + ["resume=auto"], config=GRPO)
    for tag in ("train/loss", "train/entropy", "train/completions/mean_length"):
        assert dict(read_scalars(faulted)[tag]) == dict(read_scalars(whole)[tag]), tag
    for step in (3, 4):  # sampled after the resume: the sampling RNG continued
        name = f"rollouts/step-{step}.jsonl"
        assert (faulted / name).read_text() == (whole / name).read_text()
    final = [load_file(out / f"checkpoint-{STEPS}" / "model.safetensors") for out in (whole, faulted)]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
