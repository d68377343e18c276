"""Verifiable rewards for reinforcement learning (`objective: grpo`), each a `_target_` component with a weight.

A reward is called on a batch of completions: `reward(prompts, completions, samples) -> list[float | None]`,
`samples` being the prompt records (data/rl_prompts.py: `prompt`, `answer`, and for benchmark items `gold` and
`num_options`). None marks a completion the function does not score (TRL's convention); a completion no
function scores gets advantage 0.

- `ChoiceReward`: 1 when the letter the project's answer extraction reads (post_processors/answer_extraction.py,
  the evaluators' rule) is the item's gold option, else 0;
- `NumericReward`: 1 when the completion's number (after `answer_trigger`, else its last number) equals the
  record's answer (GSM8K's `#### 72` read after its `####`), else 0;
- `FormatReward`: 1 when a regular expression matches the completion, else 0;
- `FunctionReward`: any function by import path (`package.module:function`), called TRL's way:
  `function(prompts=..., completions=..., **columns)` with every record field as a list."""
import importlib
import math
import re

from data.benchmarks.items import LETTERS
from general_util.errors import ConfigError
from post_processors.answer_extraction import check_rule, extract_choice

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")


class Reward:
    """A weighted reward function; `name` labels its logged mean and std (`rewards/<name>/mean`)."""

    def __init__(self, name: str, weight: float = 1.0):
        self.name, self.weight = name, float(weight)

    def __call__(self, prompts: list[str], completions: list[str], samples: list[dict]) -> list[float | None]:
        return [self.score(p, c, s) for p, c, s in zip(prompts, completions, samples)]

    def score(self, prompt: str, completion: str, sample: dict) -> float | None:
        raise NotImplementedError


class ChoiceReward(Reward):
    """The benchmark answer: the chosen option (read as the generative evaluators read it) against the gold."""

    def __init__(self, name: str = "answer", weight: float = 1.0, answer_trigger: str | None = None,
                 answer_position: str = "first", letter_match: str = "standalone"):
        super().__init__(name, weight)
        check_rule(letter_match, answer_position)
        self.trigger, self.position, self.letter_match = answer_trigger, answer_position, letter_match

    def score(self, prompt: str, completion: str, sample: dict) -> float | None:
        gold = gold_index(sample)
        if gold is None:
            return None
        chosen = extract_choice(completion, sample.get("num_options", len(LETTERS)), self.trigger, self.position,
                                self.letter_match, prompt)
        return float(chosen == gold)


def gold_index(sample: dict) -> int | None:
    """The gold option of a record: its `gold` index, else its `answer` letter (None: neither)."""
    if sample.get("gold") is not None:
        return int(sample["gold"])
    answer = str(sample.get("answer") or "").strip().upper()
    return LETTERS.index(answer) if len(answer) == 1 and answer in LETTERS else None


def parse_number(text: str) -> float | None:
    """`1,234` -> 1234.0, `-3.5`, `3/4` -> 0.75; None when `text` is not a number."""
    text = text.strip().replace(",", "").rstrip(".")
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


class NumericReward(Reward):
    """Maths: the completion's final number against the record's `answer_field` (GSM8K: the number after its
    `####`; else the answer's last number), equal within `tolerance` (relative, and absolute near 0)."""

    def __init__(self, name: str = "numeric", weight: float = 1.0, answer_field: str = "answer",
                 answer_trigger: str | None = None, tolerance: float = 1e-6):
        super().__init__(name, weight)
        self.field, self.trigger, self.tolerance = answer_field, answer_trigger, tolerance

    def score(self, prompt: str, completion: str, sample: dict) -> float | None:
        if sample.get(self.field) is None:
            return None
        gold = last_number(str(sample[self.field]).split("####")[-1])
        if gold is None:
            return None
        if self.trigger:
            at = completion.rfind(self.trigger)
            if at < 0:
                return 0.0
            completion = completion[at + len(self.trigger):]
        found = last_number(completion)
        return float(found is not None and math.isclose(found, gold, rel_tol=self.tolerance, abs_tol=self.tolerance))


class FormatReward(Reward):
    """1 when `pattern` matches the completion (`search`: anywhere; `fullmatch`: the whole text), else 0."""

    def __init__(self, pattern: str, name: str = "format", weight: float = 1.0, match: str = "search"):
        super().__init__(name, weight)
        if match not in ("search", "fullmatch"):
            raise ConfigError(f"rewards.{name}.match={match!r}: use search or fullmatch")
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise ConfigError(f"rewards.{name}.pattern={pattern!r}: not a regular expression ({e})") from None
        self.match = match

    def score(self, prompt: str, completion: str, sample: dict) -> float | None:
        return float(getattr(self.pattern, self.match)(completion) is not None)


def import_function(path: str, where: str):
    """`package.module:function` (or `package.module.function`) -> the function."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{where}={path!r}: cannot import it ({e}); give package.module:function") from None
    if not callable(function):
        raise ConfigError(f"{where}={path!r}: not callable")
    return function


class FunctionReward(Reward):
    """A user function by import path, called as TRL calls reward functions."""

    def __init__(self, function: str, name: str = "function", weight: float = 1.0):
        super().__init__(name, weight)
        self.path = function
        self.function = import_function(function, f"rewards.{name}.function")

    def __call__(self, prompts: list[str], completions: list[str], samples: list[dict]) -> list[float | None]:
        columns = {key: [sample.get(key) for sample in samples] for key in sorted({k for s in samples for k in s})}
        columns.pop("prompt", None)
        values = list(self.function(prompts=prompts, completions=completions, **columns))
        if len(values) != len(completions):
            raise ConfigError(f"rewards.{self.name}: {self.path} returned {len(values)} rewards for "
                              f"{len(completions)} completions")
        return [None if v is None else float(v) for v in values]
