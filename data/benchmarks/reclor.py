"""ReClor as its release archive holds it (`reclor_data.zip`, linked from github.com/yuweihao/reclor):
`train.json`, `val.json`, `test.json`, each a JSON list of `{"context", "question", "answers": [4],
"label": int, "id_string": "<split>_<i>"}`. The test split has no `label` (copies that write `"label": -1`
or null are read the same): its items have gold None and are only predicted (the evaluator then writes the
leaderboard's `predictions.npy`, the i-th prediction for `test_i`)."""
from pathlib import Path

from data.benchmarks.items import (MultipleChoiceItem, SplitReader, check_label, check_options, check_record,
                                   check_unique_ids, load_json_list, require_file)
from data.records import DataError
from general_util.errors import ConfigError

FIELDS = ("context", "question", "answers", "id_string")
UNLABELLED_SPLITS = ("test",)
NO_LABEL = (None, -1)  # what copies of the test split write instead of leaving the label out
RELEASE = "ReClor's reclor_data.zip (github.com/yuweihao/reclor, releases) holds train.json, val.json, test.json"


class ReClorReader(SplitReader):
    def __init__(self, data_dir: str | Path, split: str = "val", exemplar_split: str | None = "train"):
        super().__init__(data_dir, split, exemplar_split)
        if exemplar_split in UNLABELLED_SPLITS:
            raise ConfigError(f"ReClor exemplar_split={exemplar_split!r} has no labels; use train or val")

    def read_split(self, split: str) -> list[MultipleChoiceItem]:
        path = require_file(self.data_dir / f"{split}.json", RELEASE)
        source = str(path)
        items = []
        for r, row in enumerate(load_json_list(path)):
            where = f"record {r}"
            check_record(row, FIELDS, source, None, where, "ReClor records hold context, question, answers, label, id_string")
            options = check_options(row["answers"], source, None, where)
            if split in UNLABELLED_SPLITS and row.get("label") in NO_LABEL:
                gold = None
            elif "label" in row:
                gold = check_label(row["label"], len(options), source, None, where)
            else:
                raise DataError(source, None, f"{where}: missing field label (only the test split is unlabelled)")
            items.append(MultipleChoiceItem(
                id=str(row["id_string"]), passage=str(row["context"]), question=str(row["question"]), options=options,
                gold=gold, source=source, position=where))
        return check_unique_ids(items)
