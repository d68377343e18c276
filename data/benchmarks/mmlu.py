"""MMLU: one header-less CSV per subject and split, `<split>/<subject>_<split>.csv` with rows
`question, A, B, C, D, answer letter`. Few-shot exemplars come from `dev/` of the same subject.

Categories follow the MMLU paper (STEM, humanities, social sciences, other). `CATEGORIES` lists the
bundled sample's subjects only; pass `categories=` to score the other subjects by category too (a
subject missing from the table is still scored, per subject and overall)."""
import csv
import logging
from pathlib import Path

from data.benchmarks.items import LETTERS, MultipleChoiceItem, check_options, require_file
from data.paths import resolve_path
from data.records import DataError

logger = logging.getLogger(__name__)

CATEGORIES = {
    "abstract_algebra": "STEM",
    "high_school_geography": "social_sciences",
    "nutrition": "other",
    "philosophy": "humanities",
}


class MMLUReader:
    """`subjects`: the subjects to evaluate, or None for every `<subject>_<split>.csv` in `<split>/`."""

    def __init__(self, data_dir: str | Path, split: str = "test", subjects: list[str] | None = None,
                 exemplar_split: str = "dev", categories: dict[str, str] | None = None):
        self.data_dir, self.split, self.exemplar_split = resolve_path(data_dir), split, exemplar_split
        self.subjects = list(subjects) if subjects is not None else None
        self.categories = dict(CATEGORIES if categories is None else categories)

    def items(self) -> list[MultipleChoiceItem]:
        return self._read(self.split)

    def exemplars(self) -> list[MultipleChoiceItem]:
        return self._read(self.exemplar_split)

    def subject_names(self) -> list[str]:
        if self.subjects is not None:
            return self.subjects
        suffix = f"_{self.split}.csv"
        names = sorted(p.name[:-len(suffix)] for p in (self.data_dir / self.split).glob(f"*{suffix}"))
        if not names:
            raise DataError(str(self.data_dir / self.split), None, f"no files named <subject>{suffix}")
        return names

    def _read(self, split: str) -> list[MultipleChoiceItem]:
        subjects = self.subject_names()
        uncategorised = [s for s in subjects if s not in self.categories]
        if uncategorised and split == self.split:
            logger.warning("MMLU subjects without a category (scored per subject and overall only): %s",
                           ", ".join(uncategorised))
        items = []
        for subject in subjects:
            items.extend(read_subject(require_file(self.data_dir / split / f"{subject}_{split}.csv"), subject,
                                      self.categories.get(subject)))
        return items


def read_subject(path: Path, subject: str, category: str | None) -> list[MultipleChoiceItem]:
    source, items = str(path), []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            start = 1
            for row in reader:
                line, start = start, reader.line_num + 1  # a quoted field may span lines: report where the row starts
                if not row:
                    continue
                if len(row) != 6:
                    raise DataError(source, line, f"expected 6 fields (question, A, B, C, D, answer), got {len(row)}")
                answer = row[5].strip()
                if answer not in LETTERS:
                    raise DataError(source, line, f"answer must be one of {', '.join(LETTERS)}, got {row[5]!r}")
                items.append(MultipleChoiceItem(
                    id=f"{path.stem}-{len(items)}", passage="", question=row[0],
                    options=check_options(row[1:5], source, line), gold=LETTERS.index(answer), source=source,
                    position=f"line {line}", subject=subject, category=category))
    except UnicodeDecodeError as e:
        raise DataError(source, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(source, reader.line_num, f"malformed CSV ({e})") from None
    return items
