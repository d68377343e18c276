"""Verifiable rewards (post_processors/rewards.py) and RL prompt sources (data/rl_prompts.py)."""
import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data.rl_prompts import AnswerPrompts
from general_util.errors import ConfigError
from modules.grpo import group_advantages, reward_table, weighted_rewards
from post_processors.rewards import ChoiceReward, FormatReward, FunctionReward, NumericReward
from tests.trainer_runs import REPO


def length_reward(prompts, completions, answer, **columns):
    """A user reward (imported by path below): 1 for a completion as long as the answer, None without answer."""
    return [None if a is None else float(len(c) == len(a)) for c, a in zip(completions, answer)]


def test_choice_reward_reads_the_letter_as_the_evaluators_do():
    reward = ChoiceReward(answer_trigger="答案是")
    samples = [{"gold": 1, "num_options": 4}] * 4 + [{"answer": "C"}, {"answer": "free text"}]
    completions = ["答案是 B。", "答案是：Ｂ", "我想答案是 A", "B", "答案是 C", "答案是 C"]
    # the trigger is required (the 4th has none); full-width letters fold to ASCII; `answer` letters work as gold
    assert reward([""] * 6, completions, samples) == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    three_options = ChoiceReward()([""], ["D"], [{"gold": 0, "num_options": 3}])
    assert three_options == [0.0]  # D is past a three-option item's letters: no letter read


def test_numeric_reward_matches_the_final_number():
    reward = NumericReward(answer_trigger="####")
    gsm8k = {"answer": "Natalia sold 48/2 = 24 clips in May.\n#### 1,072"}
    assert reward(["", "", "", ""], ["so #### 1072", "#### 1,072.", "1072 #### 1071", "1072"], [gsm8k] * 4) \
        == [1.0, 1.0, 0.0, 0.0]
    assert NumericReward()([""] * 3, ["x = 3/4", "it is 0.75 then 2", "none"], [{"answer": "0.75"}] * 3) \
        == [1.0, 0.0, 0.0]
    assert NumericReward()([""], ["1"], [{"answer": "no number"}]) == [None]


def test_format_reward_and_user_function_by_import_path():
    assert FormatReward(r"^<think>.*</think>\s*[A-D]$", match="fullmatch")(
        ["", ""], ["<think>a\nb</think> C", "C"], [{}, {}]) == [1.0, 0.0]
    reward = FunctionReward("tests.test_grpo_rewards:length_reward", name="length", weight=0.5)
    assert reward(["p", "q"], ["ab", "abc"], [{"answer": "xy"}, {"answer": None}]) == [1.0, None]
    with pytest.raises(ConfigError, match=r"rewards.x.function='tests.nowhere:f': cannot import"):
        FunctionReward("tests.nowhere:f", name="x")
    with pytest.raises(ConfigError, match="not a regular expression"):
        FormatReward("(")


def test_rewards_are_weighted_components_and_unscorable_completions_get_no_advantage():
    rewards = instantiate(OmegaConf.create({
        "answer": {"_target_": "post_processors.rewards.ChoiceReward", "name": "answer", "weight": 1.0},
        "format": {"_target_": "post_processors.rewards.FormatReward", "name": "format", "weight": 0.5,
                   "pattern": "^ ?[A-D]$"}}))
    samples = [{"gold": 0, "num_options": 4}] * 2 + [{"gold": None}] * 2
    completions = [" A", "B is it", " A", "x"]
    per_function, weights = reward_table(rewards, [""] * 4, completions, samples)
    assert weights.tolist() == [1.0, 0.5] and torch.isnan(per_function[2:, 0]).all()  # no gold: None -> NaN
    total = weighted_rewards(per_function, weights)
    assert total[:3].tolist() == [1.5, 0.0, 0.5]
    per_function[3, 1] = float("nan")
    total = weighted_rewards(per_function, weights)
    assert torch.isnan(total[3])
    advantages = group_advantages(total, num_generations=2)
    assert advantages[3] == 0 and advantages[0] > 0 > advantages[1]


def test_answer_prompts_from_an_sft_file(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"instruction": "1+1?", "answer": "#### 2", "level": 1},
        {"instruction": "2+2?", "input": "think", "answer": "#### 4"}]) + "\n")
    records = AnswerPrompts(str(path), template="en")
    assert [r["answer"] for r in records] == ["#### 2", "#### 4"] and records[0]["level"] == 1
    assert "1+1?" in records[0]["prompt"] and "think" in records[1]["prompt"]
    assert records[1]["location"] == f"{path}:2"
    path.write_text(json.dumps({"instruction": "no answer"}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: no 'answer' text"):
        AnswerPrompts(str(path))


def test_benchmark_prompts_are_the_evaluators_prompts():
    config = OmegaConf.load(REPO / "conf" / "eval" / "logiqa_v2_zh.yaml")
    node = {"_target_": "data.rl_prompts.BenchmarkPrompts", "data_dir": str(REPO / "data/samples/logiqa_v2"),
            "reader": {**OmegaConf.to_container(config.reader), "split": "train"},
            "prompt": {**OmegaConf.to_container(config.prompt), "seed": 0, "answer_format": "letter"}}
    records = instantiate(OmegaConf.create(node))
    evaluator_prompt = instantiate(OmegaConf.create(node["prompt"]))
    reader = instantiate(OmegaConf.create(node["reader"]))(data_dir=REPO / "data/samples/logiqa_v2")
    assert [r["prompt"] for r in records] == evaluator_prompt.render(reader.items(), [])
    assert [r["answer"] for r in records] == ["ABCD"[item.gold] for item in reader.items()]
