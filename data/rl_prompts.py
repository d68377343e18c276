"""Prompts with checkable answers for reinforcement learning (`objective: grpo`): a list of records
`{id, prompt, answer, ...}` that the reward functions (post_processors/rewards.py) score completions against.

- `BenchmarkPrompts`: any benchmark reader (data/benchmarks/, usually its train split) rendered by a
  `MultipleChoicePrompt` preset, exactly the prompt the evaluators give the model; records add `gold` (the
  option index), `num_options` and `answer` (its letter). Items without a gold label are refused.
- `AnswerPrompts`: SFT files (any format data/readers.py reads) whose records carry an answer field; the prompt is
  the record's instruction (and input) rendered by a prompt template (data/templates.py), the answer kept as it is
  (GSM8K's `#### 72` included: the numeric reward reads the number after `####`)."""
import hashlib
import json
from pathlib import Path

from data.benchmarks.items import LETTERS
from data.readers import expand_files, read_records
from data.records import DataError
from data.templates import PromptTemplate, get_template
from general_util.errors import ConfigError
from general_util.paths import resolve_path


def BenchmarkPrompts(reader, prompt, data_dir: str | Path, limit: int | None = None, tokenizer=None) -> list[dict]:
    """`reader`: a callable taking `data_dir=` (a `_partial_: true` reader node); `prompt`: a MultipleChoicePrompt."""
    benchmark = reader(data_dir=resolve_path(data_dir))
    items = benchmark.items()[:limit]
    unlabelled = [item for item in items if item.gold is None]
    if unlabelled:
        raise DataError(unlabelled[0].source, None, f"{unlabelled[0].position}: no gold answer; reinforcement "
                        "learning needs a labelled split (e.g. split: train)")
    pool = benchmark.exemplars() if prompt.num_shots else []
    return [{"id": item.id, "prompt": text, "gold": item.gold, "num_options": len(item.options),
             "answer": LETTERS[item.gold], "location": item.location}
            for item, text in zip(items, prompt.render(items, pool))]


def AnswerPrompts(files: str | list[str], template: str | dict = "zh", prompt_field: str = "instruction",
                  input_field: str | None = "input", answer_field: str = "answer", limit: int | None = None,
                  tokenizer=None) -> list[dict]:
    """Records of `files` with `prompt_field` (+ `input_field`) and `answer_field`; every other field is kept for
    user reward functions."""
    chosen = get_template(template)
    if not isinstance(chosen, PromptTemplate):
        raise ConfigError("prompts.template=chat: use a text template (zh, en, …) for answer files")
    records = []
    for path in expand_files(files):
        for record in read_records(Path(path)):
            data = record.data
            if not isinstance(data, dict):
                raise DataError(record.source, record.line, "expected a JSON object with an instruction and an answer")
            for field, name in ((prompt_field, "prompt_field"), (answer_field, "answer_field")):
                if not isinstance(data.get(field), (str, int, float)) or isinstance(data.get(field), bool):
                    raise DataError(record.source, record.line, f"no {field!r} text ({name}); an RL prompt file "
                                    f"needs {prompt_field!r} and {answer_field!r} in every record")
            extra = str(data.get(input_field) or "") if input_field else ""
            records.append({**{k: v for k, v in data.items() if k not in ("prompt", "id")},
                            "id": str(data.get("id", record.location)), "location": record.location,
                            "prompt": chosen.format(str(data[prompt_field]), extra),
                            "answer": str(data[answer_field])})
            if limit is not None and len(records) >= limit:
                return records
    return records


class PromptDataset:
    """The prompts of `prompts` (a list of records from BenchmarkPrompts / AnswerPrompts) tokenized as training and
    the evaluators do: the whole prompt text, the tokenizer's BOS first when `add_bos`. Items are the records with
    `prompt_ids` added; `fingerprint` identifies them (resume checks it)."""

    def __init__(self, prompts: list[dict], tokenizer, add_bos: bool = True):
        if not prompts:
            raise ConfigError("train_dataset.prompts: no prompts")
        self.records = [{**record, "prompt_ids": tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]}
                        for record in prompts]
        if add_bos and tokenizer.bos_token_id is not None:
            for record in self.records:
                record["prompt_ids"] = [tokenizer.bos_token_id] + record["prompt_ids"]
        digest = hashlib.sha256(json.dumps([[r["prompt_ids"], r["answer"]] for r in self.records]).encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return {**self.records[index], "index": index}


class PromptCollator:
    """A micro-batch of prompt records, as they are: the GRPO objective generates, then pads the completions to a
    multiple of `pad_to_multiple_of` (modules/grpo.py). `packing` and `attn_implementation` come from base.yaml's
    `collator` node: prompts are never packed, and the completions are padded."""

    def __init__(self, tokenizer=None, pad_to_multiple_of: int | None = None, packing: bool = False,
                 attn_implementation: str = ""):
        if packing:
            raise ConfigError("train_dataset.packing=true: GRPO prompts are not packed; set train_dataset.packing=false")
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, records: list[dict]) -> dict:
        return {"records": list(records), "pad_to_multiple_of": self.pad_to_multiple_of}
