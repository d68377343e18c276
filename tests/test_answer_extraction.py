"""Generative scoring: the letter read from a generated continuation, and generation itself."""
import functools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.benchmarks import C3Reader, LogiQAReader, MultipleChoicePrompt
from modules.generation import generate_continuations
from modules.loss_impl import LossSettings
from post_processors.answer_extraction import extract_choice
from post_processors.multiple_choice import MultipleChoiceEvaluator

TINY = "models/tiny_llama"


@pytest.mark.parametrize("text, trigger, expected", [
    (" C", None, 2),
    ("B. because A is wrong", None, 1),
    ("Let me think: A is wrong. The answer is C.", "The answer is", 2),
    ("Let me think: A is wrong, so C.", "The answer is", None),        # trigger set but absent → unparsable
    ("分析：A项错误。本题的答案是：Ｂ", "本题的答案是", 1),                 # full-width letter after the trigger
    ("选C", None, 2),                                                   # letters next to Chinese characters count
    ("Bob and Carol", None, None),                                      # letters inside words do not
    ("The answer is", "The answer is", None),
    ("", None, None),
])
def test_extract_choice(text, trigger, expected):
    assert extract_choice(text, 4, trigger) == expected


def test_only_letters_of_the_item_options_are_valid():
    assert extract_choice("D, or rather B", 3) == 1  # a three-choice C3 item has no D
    assert extract_choice("D", 3) is None


class ScriptedModel(torch.nn.Module):
    """`generate` continues every prompt with the same reply (whatever the prompt says)."""

    def __init__(self, tokenizer, reply: str):
        super().__init__()
        self.reply = tokenizer(reply, add_special_tokens=False)["input_ids"]

    def generate(self, input_ids, attention_mask, **kwargs):
        assert attention_mask.shape == input_ids.shape
        return torch.cat([input_ids, torch.tensor([self.reply] * input_ids.shape[0])], dim=1)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY)


def generative_evaluator(**kwargs) -> MultipleChoiceEvaluator:
    return MultipleChoiceEvaluator("c3", C3Reader, MultipleChoicePrompt("zh", answer_format="letter"), scoring="generate",
                                   batch_size=4, max_seq_length=1024, data_dir="data/samples/c3", **kwargs)


def read_predictions(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_answer_is_read_from_the_continuation_not_the_prompt(tmp_path, tokenizer):
    metrics = generative_evaluator()(ScriptedModel(tokenizer, " B"), tokenizer, tmp_path, LossSettings())
    predictions = read_predictions(tmp_path)
    assert all("A. " in p["prompt"] for p in predictions)  # the prompt letters its options from A
    assert [p["prediction"] for p in predictions] == [1] * 11
    assert [p["generation"] for p in predictions] == [" B"] * 11
    assert metrics["acc"] == sum(p["gold"] == 1 for p in predictions) / 11 and metrics["unparsable"] == 0


def test_trigger_and_unparsable_answers_count_as_wrong(tmp_path, tokenizer):
    reply = "A项不对。本题的答案是B"
    evaluator = generative_evaluator(answer_trigger="本题的答案是")
    metrics = evaluator(ScriptedModel(tokenizer, reply), tokenizer, tmp_path / "t", LossSettings())
    assert {p["prediction"] for p in read_predictions(tmp_path / "t")} == {1}
    evaluator = generative_evaluator(answer_trigger="The answer is")
    metrics = evaluator(ScriptedModel(tokenizer, reply), tokenizer, tmp_path / "u", LossSettings())
    predictions = read_predictions(tmp_path / "u")
    assert {p["prediction"] for p in predictions} == {None} and {p["correct"] for p in predictions} == {False}
    assert metrics["unparsable"] == 11 and metrics["acc"] == 0.0


def test_generate_needs_letter_answers():
    with pytest.raises(ValueError, match="answer_format=letter"):
        MultipleChoiceEvaluator("c3", C3Reader, MultipleChoicePrompt("zh"), scoring="generate", data_dir="data/samples/c3")


def test_batched_generation_equals_one_prompt_at_a_time(tokenizer):
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    prompts = [[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in ("Question: who?\nAnswer:", "答案：", "A much longer prompt that needs left padding.\nAnswer:")]
    cpu = torch.device("cpu")
    for generation in ({"max_new_tokens": 6}, {"max_new_tokens": 6, "num_beams": 2}):
        batched = generate_continuations(model, tokenizer, prompts, generation, cpu)
        single = [generate_continuations(model, tokenizer, [p], generation, cpu)[0] for p in prompts]
        assert batched == single and all(text for text in batched)


def test_evaluator_generates_with_the_tiny_model(tmp_path, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    evaluator = MultipleChoiceEvaluator("logiqa", functools.partial(LogiQAReader, language="en"),
                                        MultipleChoicePrompt("en", answer_format="letter"), scoring="generate",
                                        batch_size=4, generation={"max_new_tokens": 4}, data_dir="data/samples/logiqa_v2",
                                        limit=5)
    metrics = evaluator(model, tokenizer, tmp_path, LossSettings())
    predictions = read_predictions(tmp_path)
    assert len(predictions) == 5 and metrics["n"] == 5
    assert metrics["unparsable"] == sum(p["prediction"] is None for p in predictions)
    assert all(not p["generation"].startswith(p["prompt"][:20]) for p in predictions)
