"""LogiQA 2.0: JSON lines `{"id", "text", "question", "options": [4], "answer": int}` in
`<split>_<language>.txt` (train / dev / test, zh / en)."""
from pathlib import Path

from data.benchmarks.items import MultipleChoiceItem, check_label, check_options, check_unique_ids, require_file
from data.paths import resolve_path
from data.readers import read_jsonl
from data.records import DataError
from general_util.errors import ConfigError

FIELDS = ("id", "text", "question", "options", "answer")


class LogiQAReader:
    """`items()`: the evaluated split; `exemplars()`: the few-shot pool (`exemplar_split`, or the evaluated
    split itself when None — the prompt never uses an item as its own exemplar)."""

    def __init__(self, data_dir: str | Path, language: str = "zh", split: str = "dev", exemplar_split: str | None = "train"):
        if language not in ("zh", "en"):
            raise ConfigError(f"LogiQA language={language!r}: use zh or en")
        self.data_dir, self.language = resolve_path(data_dir), language
        self.split, self.exemplar_split = split, exemplar_split

    def items(self) -> list[MultipleChoiceItem]:
        return self._read(self.split)

    def exemplars(self) -> list[MultipleChoiceItem]:
        return self._read(self.exemplar_split or self.split)

    def _read(self, split: str) -> list[MultipleChoiceItem]:
        path = require_file(self.data_dir / f"{split}_{self.language}.txt")
        items = []
        for record in read_jsonl(path):
            row = record.data
            missing = [key for key in FIELDS if key not in row]
            if missing:
                raise DataError(record.source, record.line, f"missing field(s) {', '.join(missing)}")
            options = check_options(row["options"], record.source, record.line)
            items.append(MultipleChoiceItem(
                id=str(row["id"]), passage=str(row["text"]), question=str(row["question"]), options=options,
                gold=check_label(row["answer"], len(options), record.source, record.line),
                source=record.source, position=f"line {record.line}"))
        return check_unique_ids(items)
