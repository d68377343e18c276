"""Multiple-choice prompts: instruction, k solved exemplars, then the item, options lettered A–D, ending
with the answer label ("Answer:" / "答案："). What follows the label is the scored continuation — the
option text or its letter (`answer_format`), after one space (lm-evaluation-harness' target delimiter) —
or, for generative scoring, whatever the model writes."""
import random
from dataclasses import dataclass

from data.benchmarks.items import LETTERS, MultipleChoiceItem
from general_util.errors import ConfigError

TARGET_DELIMITER = " "
SHOT_SELECTIONS = ("first", "random")
ANSWER_FORMATS = ("text", "letter")


@dataclass(frozen=True)
class Template:
    instruction: str   # may name the item's `{subject}` (MMLU)
    passage: str
    question: str
    answer: str


TEMPLATES = {
    "zh": Template(instruction="以下是单项选择题，请选出正确答案。", passage="文章：", question="问题：", answer="答案："),
    "en": Template(instruction="The following are multiple choice questions (with answers).", passage="Passage: ",
                   question="Question: ", answer="Answer:"),
}


class MultipleChoicePrompt:
    """`num_shots` exemplars per item from the reader's exemplar pool (same subject where items have one;
    never the item itself): the first ones in file order (`first`), or a sample seeded by `seed` and the
    item id (`random`: the same prompt whichever rank builds it). `instruction` replaces the template's."""

    def __init__(self, language: str = "zh", num_shots: int = 0, shot_selection: str = "first", seed: int = 42,
                 instruction: str | None = None, answer_format: str = "text"):
        if language not in TEMPLATES:
            raise ConfigError(f"prompt language={language!r}: use one of {sorted(TEMPLATES)}")
        if shot_selection not in SHOT_SELECTIONS:
            raise ConfigError(f"shot_selection={shot_selection!r}: use one of {', '.join(SHOT_SELECTIONS)}")
        if answer_format not in ANSWER_FORMATS:
            raise ConfigError(f"answer_format={answer_format!r}: use one of {', '.join(ANSWER_FORMATS)}")
        if num_shots < 0:
            raise ConfigError(f"num_shots={num_shots}: must be ≥ 0")
        self.template = TEMPLATES[language]
        self.instruction = self.template.instruction if instruction is None else instruction
        self.num_shots, self.shot_selection, self.seed = num_shots, shot_selection, seed
        self.answer_format = answer_format

    def render(self, items: list[MultipleChoiceItem], pool: list[MultipleChoiceItem]) -> list[str]:
        """The prompt of every item, ending with the answer label (no trailing space)."""
        by_subject: dict[str | None, list[MultipleChoiceItem]] = {}
        for exemplar in pool:
            if exemplar.gold is not None:
                by_subject.setdefault(exemplar.subject, []).append(exemplar)
        return [self._prompt(item, by_subject.get(item.subject, [])) for item in items]

    def answers(self, item: MultipleChoiceItem) -> list[str]:
        """What each option's answer looks like after the label, without the delimiter (its length in
        characters normalises acc_norm)."""
        return list(item.options) if self.answer_format == "text" else list(LETTERS[:len(item.options)])

    def continuations(self, item: MultipleChoiceItem) -> list[str]:
        return [TARGET_DELIMITER + answer for answer in self.answers(item)]

    def _prompt(self, item: MultipleChoiceItem, candidates: list[MultipleChoiceItem]) -> str:
        shots = self._exemplars(item, candidates)
        parts = [self._instruction(item)] if self.instruction else []
        parts += [self._body(shot) + self.continuations(shot)[shot.gold] for shot in shots]
        parts.append(self._body(item))
        return "\n\n".join(parts)

    def _exemplars(self, item: MultipleChoiceItem, candidates: list[MultipleChoiceItem]) -> list[MultipleChoiceItem]:
        if self.num_shots == 0:
            return []
        candidates = [c for c in candidates if (c.source, c.position) != (item.source, item.position)]
        if len(candidates) < self.num_shots:
            group = f" of subject {item.subject}" if item.subject else ""
            raise ConfigError(f"num_shots={self.num_shots} but only {len(candidates)} labelled exemplars{group} for "
                             f"{item.location}; lower num_shots or choose a larger exemplar split")
        if self.shot_selection == "first":
            return candidates[:self.num_shots]
        return random.Random(f"{self.seed}:{item.id}").sample(candidates, self.num_shots)

    def _instruction(self, item: MultipleChoiceItem) -> str:
        if "{subject}" not in self.instruction:
            return self.instruction
        if item.subject is None:
            raise ConfigError(f"the instruction names {{subject}} but {item.location} has no subject")
        return self.instruction.replace("{subject}", item.subject.replace("_", " "))

    def _body(self, item: MultipleChoiceItem) -> str:
        lines = [self.template.passage + item.passage] if item.passage else []
        lines.append(self.template.question + item.question)
        lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, item.options)]
        lines.append(self.template.answer)
        return "\n".join(lines)
