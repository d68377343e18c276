"""Instruction (SFT) data: records → token ids with labels that train only the responses.

Labels are built from the tokenized pieces themselves (prompt and response are tokenized separately
and concatenated), so no tokenizer boundary merge can shift the mask, and the mask never depends on
which token pads.
"""
from dataclasses import dataclass

from torch.utils.data import Dataset

from data.readers import expand_files, read_jsonl
from data.records import DataError, Record
from data.templates import get_template

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def build_example(prompt_ids: list[int], response_ids: list[int], bos_id: int | None, eos_id: int,
                  max_seq_length: int) -> TokenizedExample:
    """BOS + prompt + response + EOS, truncated to `max_seq_length`: the prompt loses its oldest tokens
    first, then the response body its last ones; the EOS always survives."""
    head = [bos_id] if bos_id is not None else []
    budget = max_seq_length - len(head) - 1  # room for prompt + response body
    if budget < 1:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for a response")
    response_ids = response_ids[:budget]
    prompt_ids = prompt_ids[len(prompt_ids) - min(len(prompt_ids), budget - len(response_ids)):]
    input_ids = head + prompt_ids + response_ids + [eos_id]
    labels = [IGNORE_INDEX] * (len(head) + len(prompt_ids)) + response_ids + [eos_id]
    return TokenizedExample(input_ids, labels)


class InstructionDataset(Dataset):
    """alpaca/BELLE JSONL: `instruction` (string or list of strings), optional `input`, `output`."""

    def __init__(self, files, tokenizer, template: str = "zh", max_seq_length: int = 512):
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.max_seq_length = max_seq_length
        self.records = [r for path in expand_files(files, (".jsonl", ".json")) for r in read_jsonl(path)]
        if not self.records:
            raise DataError(str(files), None, "no records")
        self.examples = [self._tokenize(r) for r in self.records]

    def _tokenize(self, record: Record) -> TokenizedExample:
        instruction, input_text, output = self._fields(record)
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        return build_example(encode(self.template.format(instruction, input_text)), encode(output),
                             self.tokenizer.bos_token_id, self.tokenizer.eos_token_id, self.max_seq_length)

    @staticmethod
    def _fields(record: Record) -> tuple[str, str, str]:
        data = record.data
        instruction = data.get("instruction")
        if isinstance(instruction, list) and all(isinstance(x, str) for x in instruction):
            instruction = "\n".join(instruction)
        if not isinstance(instruction, str):
            raise DataError(record.source, record.line, "field 'instruction' missing or not a string/list of strings")
        input_text = data.get("input") or ""
        output = data.get("output")
        if not isinstance(input_text, str):
            raise DataError(record.source, record.line, "field 'input' is not a string")
        if not isinstance(output, str):
            raise DataError(record.source, record.line, "field 'output' missing or not a string")
        if not output.strip():
            raise DataError(record.source, record.line, "empty response ('output')")
        return instruction, input_text, output

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels, "index": index}
