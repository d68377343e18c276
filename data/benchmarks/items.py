"""The record every benchmark reader yields, and the checks and file readers they share."""
import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from general_util.paths import resolve_path
from data.records import DataError

LETTERS = "ABCD"


@dataclass(frozen=True)
class MultipleChoiceItem:
    id: str                     # stable: taken from the file, or built from file name and position
    passage: str                # context / dialogue; "" when the benchmark has none (MMLU)
    question: str
    options: tuple[str, ...]    # 2–4 option texts, lettered A–D in prompts
    gold: int | None            # index of the right option; None where the split has no labels
    source: str                 # file path
    position: str               # where in the file: "line 3", "record 2, question 1"
    subject: str | None = None  # MMLU / CMMLU / C-Eval subject handle (exemplars come from the same subject)
    category: str | None = None
    subject_name: str | None = None  # the subject as its publisher names it (CMMLU, C-Eval: in Chinese)

    @property
    def location(self) -> str:
        return f"{self.source} ({self.position})"


def check_record(row, fields, source: str, line: int | None, where: str, layout: str) -> dict:
    """`row` when it is a JSON object holding every one of `fields`, else a DataError naming what is missing
    (`layout`: what the release's records hold, for the message)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(row, dict):
        raise DataError(source, line, f"{prefix}expected a JSON object ({layout}), got {type(row).__name__}")
    missing = [key for key in fields if key not in row]
    if missing:
        raise DataError(source, line, f"{prefix}missing field(s) {', '.join(missing)} ({layout})")
    return row


def check_options(options, source: str, line: int | None, where: str = "", counts: range = range(4, 5)) -> tuple[str, ...]:
    """`options` as a tuple of non-empty strings, or a DataError saying why not."""
    prefix = f"{where}: " if where else ""
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(source, line, f"{prefix}options must be a list of non-empty strings, got {options!r}")
    if len(options) not in counts:
        expected = f"{counts.start}–{counts.stop - 1}" if len(counts) > 1 else str(counts.start)
        raise DataError(source, line, f"{prefix}expected {expected} options, got {len(options)}")
    return tuple(options)


def check_label(label, num_options: int, source: str, line: int | None, where: str = "") -> int:
    prefix = f"{where}: " if where else ""
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_options:
        raise DataError(source, line, f"{prefix}label must be an integer in [0, {num_options}), got {label!r}")
    return label


def check_letter(answer: str, source: str, line: int | None, field: str = "answer") -> int:
    """The option index of an answer letter (A–D, surrounding blanks ignored), or a DataError naming `field`."""
    letter = answer.strip()
    if letter not in LETTERS:
        raise DataError(source, line, f"{field} must be one of {', '.join(LETTERS)}, got {answer!r}")
    return LETTERS.index(letter)


def check_unique_ids(items: list[MultipleChoiceItem]) -> list[MultipleChoiceItem]:
    seen: dict[str, MultipleChoiceItem] = {}
    for item in items:
        if item.id in seen:
            raise DataError(item.source, None, f"{item.position}: duplicate id {item.id!r} "
                                               f"(first at {seen[item.id].location})")
        seen[item.id] = item
    return items


def load_json_list(path: Path) -> list:
    """A JSON file whose top level is a list (C3, ReClor)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(str(path), e.lineno, f"malformed JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(str(path), None, f"expected a JSON list at the top level, got {type(data).__name__}")
    return data


def read_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The rows of a CSV file with the line each starts on (a quoted field may span lines); blank rows are
    skipped, a UTF-8 byte-order mark and a last line without newline are accepted."""
    source = str(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        start = 1
        while True:
            try:
                row = next(reader, None)
            except UnicodeDecodeError as e:
                raise DataError(source, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            except csv.Error as e:
                raise DataError(source, reader.line_num, f"malformed CSV ({e})") from None
            if row is None:
                return
            line, start = start, reader.line_num + 1
            if any(field.strip() for field in row):
                yield line, row


def require_file(path: Path, hint: str = "") -> Path:
    """`path`, or a DataError saying it is missing (and `hint`: where the official release keeps it)."""
    if not path.is_file():
        raise DataError(str(path), None, f"no such file{'; ' + hint if hint else ''}")
    return path


class SplitReader:
    """A benchmark read one split at a time. `items()`: the evaluated split; `exemplars()`: the few-shot pool,
    `exemplar_split` or, when None, the evaluated split itself (a prompt never uses an item as its own
    exemplar). Subclasses implement `read_split`."""

    def __init__(self, data_dir: str | Path, split: str, exemplar_split: str | None):
        self.data_dir, self.split, self.exemplar_split = resolve_path(data_dir), split, exemplar_split

    def items(self) -> list[MultipleChoiceItem]:
        return self.read_split(self.split)

    def exemplars(self) -> list[MultipleChoiceItem]:
        return self.read_split(self.exemplar_split or self.split)

    def read_split(self, split: str) -> list[MultipleChoiceItem]:
        raise NotImplementedError


class SubjectFilesReader(SplitReader):
    """A benchmark shipped as one CSV file per subject and split (MMLU, CMMLU, C-Eval). `subjects`: the
    subjects to evaluate, or None for every file of the split; `categories`: subject -> category (None: the
    benchmark's own table); a subject missing from it is scored per subject and overall. Subclasses name the
    benchmark, its files (`file_name`), its tables and how one file is read (`read_file`)."""

    benchmark: str
    release: str                         # where the official files come from (said when one is missing)
    default_categories: dict[str, str]

    def __init__(self, data_dir: str | Path, split: str, subjects: list[str] | None = None,
                 exemplar_split: str = "dev", categories: dict[str, str] | None = None):
        super().__init__(data_dir, split, exemplar_split)
        self.subjects = list(subjects) if subjects is not None else None
        self.categories = dict(self.default_categories if categories is None else categories)

    @staticmethod
    def file_name(subject: str, split: str) -> str:
        return f"{subject}_{split}.csv"

    def read_file(self, path: Path, subject: str, split: str) -> list[MultipleChoiceItem]:
        raise NotImplementedError

    def subject_names(self) -> list[str]:
        if self.subjects is not None:
            return self.subjects
        prefix, suffix = self.file_name("\0", self.split).split("\0")
        names = sorted(p.name[len(prefix):len(p.name) - len(suffix)] for p in (self.data_dir / self.split).glob(f"*{suffix}"))
        if not names:
            raise DataError(str(self.data_dir / self.split), None, f"no files named {self.file_name('<subject>', self.split)}; "
                            f"{self.release}")
        return names

    def read_split(self, split: str) -> list[MultipleChoiceItem]:
        subjects = self.subject_names()
        uncategorised = [s for s in subjects if s not in self.categories]
        if uncategorised and split == self.split:
            logging.getLogger(type(self).__module__).warning(
                "%s subjects without a category (scored per subject and overall only): %s", self.benchmark,
                ", ".join(uncategorised))
        items = []
        for subject in subjects:
            path = require_file(self.data_dir / split / self.file_name(subject, split), self.release)
            items.extend(self.read_file(path, subject, split))
        return items
