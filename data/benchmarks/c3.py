"""C3 (Chinese multiple-choice reading comprehension) as github.com/nlpdata/c3 ships it in `data/`:
`c3-d-{train,dev,test}.json` (dialogue) and `c3-m-{train,dev,test}.json` (mixed genre), all labelled. A
JSON list of documents `[[context lines], [{"question", "choice": [2–4 texts], "answer": <choice text>},
...], "<id>"]` (pretty-printed, no newline at the end); one item per question, id `<document id>-<question
number>`. A few questions repeat a choice text; the answer is then its first occurrence (`answer_occurrence`; the
original PandaLLM `DreamReader` took the last). The passage is the document's lines joined by `line_join` ("\n";
that reader joined them with one space)."""
from pathlib import Path

from data.benchmarks.items import (MultipleChoiceItem, SplitReader, check_options, check_unique_ids, load_json_list,
                                   require_file)
from data.records import DataError
from general_util.errors import ConfigError

RELEASE = "github.com/nlpdata/c3 ships c3-{d,m}-{train,dev,test}.json in data/: point data_dir at that folder"


class C3Reader(SplitReader):
    """`subset`: d (dialogue) or m (mixed); the splits as SplitReader reads them; `line_join` joins a
    document's lines (its dialogue turns) into the passage; `answer_occurrence`: which of repeated equal choices
    is the answer."""

    def __init__(self, data_dir: str | Path, subset: str = "d", split: str = "dev", exemplar_split: str | None = None,
                 line_join: str = "\n", answer_occurrence: str = "first"):
        if subset not in ("d", "m"):
            raise ConfigError(f"C3 subset={subset!r}: use d (dialogue) or m (mixed)")
        super().__init__(data_dir, split, exemplar_split)
        if answer_occurrence not in ("first", "last"):
            raise ConfigError(f"C3 answer_occurrence={answer_occurrence!r}: use first or last")
        self.subset, self.line_join, self.answer_occurrence = subset, line_join, answer_occurrence

    def read_split(self, split: str) -> list[MultipleChoiceItem]:
        path = require_file(self.data_dir / f"c3-{self.subset}-{split}.json", RELEASE)
        source = str(path)
        items = []
        for r, document in enumerate(load_json_list(path)):
            if not (isinstance(document, list) and len(document) == 3 and isinstance(document[0], list)
                    and isinstance(document[1], list) and isinstance(document[2], str)):
                raise DataError(source, None, f"record {r}: expected [[context lines], [questions], id] (the C3 layout)")
            lines, questions, doc_id = document
            if not all(isinstance(line, str) for line in lines):
                raise DataError(source, None, f"record {r} ({doc_id}): context lines must be strings")
            for q, entry in enumerate(questions):
                where = f"record {r} ({doc_id}), question {q}"
                if not isinstance(entry, dict) or not {"question", "choice", "answer"} <= entry.keys():
                    raise DataError(source, None, f"{where}: expected {{question, choice, answer}}")
                options = check_options(entry["choice"], source, None, where, counts=range(2, 5))
                if entry["answer"] not in options:
                    raise DataError(source, None, f"{where}: answer {entry['answer']!r} is not among the choices "
                                                  f"{list(options)}")
                gold = options.index(entry["answer"]) if self.answer_occurrence == "first" else \
                    len(options) - 1 - options[::-1].index(entry["answer"])
                items.append(MultipleChoiceItem(
                    id=f"{doc_id}-{q}", passage=self.line_join.join(lines), question=str(entry["question"]), options=options,
                    gold=gold, source=source, position=f"record {r}, question {q}"))
        return check_unique_ids(items)
