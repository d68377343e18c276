"""Multiple-choice prompts as data: a layout of format strings (YAML can give any of them) over a named
preset. The prompt of an item is

    instruction + separator + exemplar_1 + separator + ... + exemplar_k + separator + item

where `item` and `exemplar` lay out `{passage}` (written by `passage`, or empty when the item has none),
`{question}`, `{options}` (each option by `option`, joined by `option_separator`) and, in an exemplar,
`{answer}` (the delimiter + the answer as scored), `{letter}` and `{text}` of the gold option. An empty
instruction or exemplar list is left out with its separator, unless `keep_empty_parts` (the original
PandaLLM prompts kept them: four newlines between instruction and item at 0 shots).

What follows the item is the scored continuation — `target_delimiter` + the option text or its letter
(`answer_format`), lm-evaluation-harness' convention — or, for generative scoring, whatever the model writes.

Presets: `zh`, `en` (labelled 文章/问题/答案 or Passage/Question/Answer lines, options `A. text`) and
`panda_zh`, `panda_en` (the original PandaLLM evaluation prompts, byte for byte, see SEED_RECIPES.md)."""
import random
from dataclasses import dataclass, fields, replace

from data.benchmarks.items import LETTERS, MultipleChoiceItem
from general_util.errors import ConfigError

SHOT_SELECTIONS = ("first", "random")
ANSWER_FORMATS = ("text", "letter")
PLACEHOLDERS = {"item": ("passage", "question", "options"), "exemplar": ("passage", "question", "options", "answer",
                                                                        "letter", "text"),
                "passage": ("passage",), "option": ("letter", "text")}


@dataclass(frozen=True)
class PromptLayout:
    instruction: str                 # may name the item's {subject} (MMLU, CMMLU, C-Eval)
    item: str                        # the evaluated item, ending with the answer cue
    exemplar: str                    # a solved exemplar
    passage: str = "{passage}"       # how an item's passage is written into {passage} (nothing when it has none)
    option: str = "{letter}. {text}"  # one option
    option_separator: str = "\n"     # between options
    separator: str = "\n\n"          # after the instruction and after every exemplar
    keep_empty_parts: bool = False   # an empty instruction / no exemplars still leave their separators
    target_delimiter: str = " "      # before each scored answer (and {answer} in exemplars)


ZH_BODY = "{passage}问题：{question}\n{options}\n答案："
EN_BODY = "{passage}Question: {question}\n{options}\nAnswer:"
PANDA_ZH_OPTIONS = dict(option="{letter}: {text}\n", option_separator="", keep_empty_parts=True)
PRESETS = {
    "zh": PromptLayout(instruction="以下是单项选择题，请选出正确答案。", item=ZH_BODY, exemplar=ZH_BODY + "{answer}",
                       passage="文章：{passage}\n"),
    "en": PromptLayout(instruction="The following are multiple choice questions (with answers).", item=EN_BODY,
                       exemplar=EN_BODY + "{answer}", passage="Passage: {passage}\n"),
    "panda_zh": PromptLayout(
        instruction="阅读下面的文章并从选项中选择的答案回答问题：",
        item="{passage}\n\n问题：\n{question}\n\n选项：\n{options}\n\n本题的答案是：",
        exemplar="文章：\n{passage}\n\n问题：\n{question}\n\n选项：\n{options}\n\n答案是 {letter}", **PANDA_ZH_OPTIONS),
    "panda_en": PromptLayout(
        instruction="Answer the following question with the given context:",
        item="Context:\n{passage}\n\nQuestion:\n{question}\n\nOptions:\n{options}\n\nThe answer is",
        exemplar="Context:\n{passage}\n\nQuestion:\n{question}\n\nOptions:\n{options}\n\nThe answer is {letter}",
        **PANDA_ZH_OPTIONS),
}
LAYOUT_FIELDS = [field.name for field in fields(PromptLayout)]


def check_layout(layout: PromptLayout) -> None:
    for name, placeholders in PLACEHOLDERS.items():
        text = getattr(layout, name)
        try:
            text.format(**{p: "" for p in placeholders})
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"prompt.{name}={text!r}: may only use "
                              f"{', '.join('{' + p + '}' for p in placeholders)} ({e})") from None


class MultipleChoicePrompt:
    """`preset` (a PRESETS name) with any PromptLayout field overridden (`instruction`, `item`, `option`, …);
    `num_shots` exemplars per item from the reader's exemplar pool (same subject where items have one;
    never the item itself): the first ones in file order (`first`), or a sample seeded by `seed` and the
    item id (`random`: the same prompt whichever rank builds it)."""

    def __init__(self, preset: str = "zh", num_shots: int = 0, shot_selection: str = "first", seed: int = 42,
                 answer_format: str = "text", **layout):
        if preset not in PRESETS:
            raise ConfigError(f"prompt preset={preset!r}: use one of {sorted(PRESETS)}")
        if shot_selection not in SHOT_SELECTIONS:
            raise ConfigError(f"shot_selection={shot_selection!r}: use one of {', '.join(SHOT_SELECTIONS)}")
        if answer_format not in ANSWER_FORMATS:
            raise ConfigError(f"answer_format={answer_format!r}: use one of {', '.join(ANSWER_FORMATS)}")
        if num_shots < 0:
            raise ConfigError(f"num_shots={num_shots}: must be ≥ 0")
        unknown = sorted(set(layout) - set(LAYOUT_FIELDS))
        if unknown:
            raise ConfigError(f"prompt.{unknown[0]}: not a prompt field; use {', '.join(LAYOUT_FIELDS)}")
        self.layout = replace(PRESETS[preset], **{k: v for k, v in layout.items() if v is not None})
        check_layout(self.layout)
        self.num_shots, self.shot_selection, self.seed = num_shots, shot_selection, seed
        self.answer_format = answer_format

    def render(self, items: list[MultipleChoiceItem], pool: list[MultipleChoiceItem]) -> list[str]:
        """The prompt of every item, ending with the item's answer cue."""
        by_subject: dict[str | None, list[MultipleChoiceItem]] = {}
        for exemplar in pool:
            if exemplar.gold is not None:
                by_subject.setdefault(exemplar.subject, []).append(exemplar)
        return [self._prompt(item, by_subject.get(item.subject, [])) for item in items]

    def answers(self, item: MultipleChoiceItem) -> list[str]:
        """What each option's answer looks like after the cue, without the delimiter (its length in
        characters normalises acc_norm)."""
        return list(item.options) if self.answer_format == "text" else list(LETTERS[:len(item.options)])

    def continuations(self, item: MultipleChoiceItem) -> list[str]:
        return [self.layout.target_delimiter + answer for answer in self.answers(item)]

    def _prompt(self, item: MultipleChoiceItem, candidates: list[MultipleChoiceItem]) -> str:
        layout = self.layout
        shots = [self._fill(layout.exemplar, shot, gold=True) for shot in self._exemplars(item, candidates)]
        parts = [self._instruction(item), layout.separator.join(shots)]
        if not layout.keep_empty_parts:
            parts = [part for part in parts if part]
        return "".join(part + layout.separator for part in parts) + self._fill(layout.item, item)

    def _fill(self, text: str, item: MultipleChoiceItem, gold: bool = False) -> str:
        layout = self.layout
        options = layout.option_separator.join(layout.option.format(letter=letter, text=option)
                                               for letter, option in zip(LETTERS, item.options))
        values = {"passage": layout.passage.format(passage=item.passage) if item.passage else "",
                  "question": item.question, "options": options}
        if gold:
            values.update(answer=self.continuations(item)[item.gold], letter=LETTERS[item.gold],
                          text=item.options[item.gold])
        return text.format(**values)

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
        instruction = self.layout.instruction
        if "{subject}" not in instruction:
            return instruction
        if item.subject is None:
            raise ConfigError(f"the instruction names {{subject}} but {item.location} has no subject")
        return instruction.replace("{subject}", item.subject_name or item.subject.replace("_", " "))
