"""Multiple-choice benchmarks: readers (a publisher's file layout → `MultipleChoiceItem`s with provenance) and
the prompt builder. A reader has `items()` (the evaluated split) and `exemplars()` (the few-shot pool)."""
from data.benchmarks.c3 import C3Reader
from data.benchmarks.ceval import CATEGORIES as CEVAL_CATEGORIES
from data.benchmarks.ceval import CEvalReader
from data.benchmarks.cmmlu import CATEGORIES as CMMLU_CATEGORIES
from data.benchmarks.cmmlu import CMMLUReader
from data.benchmarks.items import LETTERS, MultipleChoiceItem
from data.benchmarks.logiqa import LogiQAReader
from data.benchmarks.mmlu import CATEGORIES as MMLU_CATEGORIES
from data.benchmarks.mmlu import MMLUReader
from data.benchmarks.prompt import MultipleChoicePrompt
from data.benchmarks.reclor import ReClorReader

__all__ = ["C3Reader", "CEVAL_CATEGORIES", "CEvalReader", "CMMLU_CATEGORIES", "CMMLUReader", "LETTERS",
           "LogiQAReader", "MMLUReader", "MMLU_CATEGORIES", "MultipleChoiceItem", "MultipleChoicePrompt",
           "ReClorReader"]
