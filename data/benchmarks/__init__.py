"""Multiple-choice benchmarks: readers (file layout → `MultipleChoiceItem`s with provenance) and the
prompt builder. A reader has `items()` (the evaluated split) and `exemplars()` (the few-shot pool)."""
from data.benchmarks.c3 import C3Reader
from data.benchmarks.items import LETTERS, MultipleChoiceItem
from data.benchmarks.logiqa import LogiQAReader
from data.benchmarks.mmlu import CATEGORIES as MMLU_CATEGORIES
from data.benchmarks.mmlu import MMLUReader
from data.benchmarks.prompt import MultipleChoicePrompt
from data.benchmarks.reclor import ReClorReader

__all__ = ["C3Reader", "LETTERS", "LogiQAReader", "MMLUReader", "MMLU_CATEGORIES", "MultipleChoiceItem",
           "MultipleChoicePrompt", "ReClorReader"]
