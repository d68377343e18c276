"""LogiQA 2.0 as github.com/csitfun/LogiQA2.0 ships it in `logiqa/DATA/LOGIQA/`: JSON lines, one question
per line, in `train.txt`, `dev.txt`, `test.txt` (English) and `train_zh.txt`, `dev_zh.txt`, `test_zh.txt`
(Chinese). English records are `{"id", "answer": int, "text", "question", "options": [4], "type": {...}}`,
Chinese ones `{"example_id", "answer", "text", "question", "options"}` (earlier Chinese uploads used `id`;
copies without any id get `<file>-<line>`). Most files end without a newline. All three splits are labelled.

What the release holds, and what is done about it:
- the English files repeat a few ids for different questions (dev: 2, test: 4): a repeat gets its line
  appended (`10882-line1076`), so every item keeps a distinct, stable id;
- with `clean_options` (the default): about 60% of the Chinese options begin with their own letter
  ("A.…", "B．…", "C、…"), a prefix dropped where its letter is the option's position (the prompt letters
  the options itself; kept in the few records whose options bear each other's letters); and four Chinese
  records (dev_zh lines 1303, 1375, 1542; test_zh line 272) have an empty option, twice the gold one: they
  are left out, with a warning naming their lines. `clean_options=False` reads the options exactly as
  published, as the original PandaLLM evaluation did."""
import logging
import re
import unicodedata
from pathlib import Path

from data.benchmarks.items import (LETTERS, MultipleChoiceItem, SplitReader, check_label, check_record,
                                   check_unique_ids)
from data.readers import read_jsonl
from data.records import DataError
from general_util.errors import ConfigError

logger = logging.getLogger(__name__)

FIELDS = ("text", "question", "options", "answer")
ID_FIELDS = ("id", "example_id")
FILE_NAMES = {"en": ("{split}.txt", "{split}_en.txt"), "zh": ("{split}_zh.txt",)}  # the first is the release's
OWN_LETTER = re.compile(r"\s*([A-DＡ-Ｄ])\s*[.．、,，:：]\s*")
RELEASE = "github.com/csitfun/LogiQA2.0 ships {names} in logiqa/DATA/LOGIQA: point data_dir at that folder"


class LogiQAReader(SplitReader):
    """`language`: zh or en; the splits as SplitReader reads them."""

    def __init__(self, data_dir: str | Path, language: str = "zh", split: str = "dev", exemplar_split: str | None = "train",
                 clean_options: bool = True):
        if language not in FILE_NAMES:
            raise ConfigError(f"LogiQA language={language!r}: use zh or en")
        super().__init__(data_dir, split, exemplar_split)
        self.language, self.clean_options = language, clean_options

    def path(self, split: str) -> Path:
        names = [name.format(split=split) for name in FILE_NAMES[self.language]]
        for name in names:
            if (self.data_dir / name).is_file():
                return self.data_dir / name
        shipped = ", ".join(name.format(split=s) for s in ("train", "dev", "test") for name in FILE_NAMES[self.language][:1])
        raise DataError(str(self.data_dir / names[0]), None, "no such file; " + RELEASE.format(names=shipped))

    def read_split(self, split: str) -> list[MultipleChoiceItem]:
        path = self.path(split)
        items, seen, repeated, left_out = [], set(), [], []
        for record in read_jsonl(path):
            row, source, line = record.data, record.source, record.line
            check_record(row, FIELDS, source, line, "", f"LogiQA 2.0 records hold "
                         f"{'example_id' if self.language == 'zh' else 'id'}, {', '.join(FIELDS)}")
            options = self._options(row["options"], source, line)
            if self.clean_options and not all(option.strip() for option in options):
                left_out.append(line)
                continue
            raw_id = next((row[key] for key in ID_FIELDS if key in row), f"{path.stem}-{line}")
            item_id = str(raw_id)
            if item_id in seen:
                repeated.append(item_id)
                item_id = f"{raw_id}-line{line}"
            seen.add(item_id)
            items.append(MultipleChoiceItem(
                id=item_id, passage=str(row["text"]), question=str(row["question"]), options=options,
                gold=check_label(row["answer"], len(options), source, line), source=source, position=f"line {line}"))
        if repeated:
            logger.warning("%s: %d id(s) repeat for different questions (%s); a repeat's id gets its line appended",
                           path, len(repeated), ", ".join(repeated[:5]))
        if left_out:
            logger.warning("%s: left out %d record(s) with an empty option, at line(s) %s", path, len(left_out),
                           ", ".join(map(str, left_out)))
        return check_unique_ids(items)

    def _options(self, options, source: str, line: int) -> tuple[str, ...]:
        if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
            raise DataError(source, line, f"options must be a list of strings, got {options!r}")
        if len(options) != len(LETTERS):
            raise DataError(source, line, f"expected {len(LETTERS)} options, got {len(options)}")
        return strip_own_letters(options) if self.clean_options and self.language == "zh" else tuple(options)


def strip_own_letters(options: list[str]) -> tuple[str, ...]:
    """The options without a leading "A." / "A．" / "A、" (full-width letters too) where that letter is the
    option's own and text follows it; untouched when an option bears another option's letter (a record
    whose options were shuffled after lettering: its label counts positions, not the letters shown)."""
    matches = [OWN_LETTER.match(option) for option in options]
    letters = [unicodedata.normalize("NFKC", match.group(1)) if match else None for match in matches]
    if any(found not in (None, own) for found, own in zip(letters, LETTERS)):
        return tuple(options)
    return tuple(option[match.end():] if match and option[match.end():].strip() else option
                 for option, match in zip(options, matches))
