"""The record every benchmark reader yields, and the checks and file readers they share."""
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
