"""The GRPO CPU demo (conf/demo/grpo.yaml) learns from the reward alone: the tiny random LLaMA, rewarded for answering
with the letter the prompt marks (data/samples/marked_letter.jsonl), goes from chance to ≥ 0.9 answer reward. The run
is seeded (sampling included), so the logged curve is the same on every machine of this torch build."""
import pytest

from tests.trainer_runs import read_scalars, train_in_process

pytestmark = pytest.mark.slow  # a 96-step training run (~30 s on one core): the demos' learning curves are slow tier


def test_demo_reward_rises_from_chance_to_at_least_0_9(tmp_path):
    train_in_process(tmp_path, ["evaluate_during_training=false", "objective.rollouts_dir=null"], ("conf/demo", "grpo"))
    scalars = read_scalars(tmp_path)
    answer = [value for _, value in scalars["train/rewards/answer/mean"]]
    reward = [value for _, value in scalars["train/reward"]]  # answer + 0.1 × letter format
    assert len(answer) == 96
    # the start: a uniform policy over 1,024 tokens rarely says a letter, let alone the marked one (chance among
    # letters: 0.25, reached once the format is learnt)
    assert max(answer[:10]) <= 0.05
    assert min(answer[-8:]) >= 0.9 and min(reward[-8:]) >= 0.9 * 1.1
    assert scalars["train/completions/max_length"][-1][1] == 1  # the answer is the first (and only) token
