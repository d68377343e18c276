"""Instruction data: labels only on the response + EOS, truncation that keeps EOS, padding, sampling."""
import json
from pathlib import Path

import pytest
import torch

from data.collators import PaddingCollator
from data.records import DataError
from data.sft import IGNORE_INDEX, InstructionDataset, build_example
from models.loading import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("models/tiny_llama", pad_token="<unk>")


def test_labels_cover_exactly_the_response_and_eos():
    example = build_example([10, 11, 12], [20, 21], bos_id=1, eos_id=2, max_seq_length=16)
    assert example.input_ids == [1, 10, 11, 12, 20, 21, 2]
    assert example.labels == [IGNORE_INDEX] * 4 + [20, 21, 2]


def test_truncation_cuts_prompt_first_then_response_never_eos():
    example = build_example([10, 11, 12, 13], [20, 21], bos_id=1, eos_id=2, max_seq_length=6)
    assert example.input_ids == [1, 12, 13, 20, 21, 2]
    assert example.labels == [IGNORE_INDEX] * 3 + [20, 21, 2]
    example = build_example([10, 11], [20, 21, 22, 23, 24], bos_id=1, eos_id=2, max_seq_length=4)
    assert example.input_ids == [1, 20, 21, 2]
    assert example.labels == [IGNORE_INDEX, 20, 21, 2]


def test_dataset_masks_prompt_tokens_of_real_records(tokenizer):
    dataset = InstructionDataset("data/samples/alpaca_zh_en_dev.jsonl", tokenizer, template="zh", max_seq_length=256)
    assert len(dataset) == 24
    item = dataset[0]
    path, line = dataset.locations(0)[0].rsplit(":", 1)
    record = json.loads(Path(path).read_text(encoding="utf-8").splitlines()[int(line) - 1])
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    trained = [label for label in item["labels"] if label != IGNORE_INDEX]
    assert trained == response_ids + [tokenizer.eos_token_id]
    assert item["input_ids"][-len(trained):] == trained and item["input_ids"][0] == tokenizer.bos_token_id


def test_padding_changes_nothing_whatever_the_pad_token(tokenizer):
    """Right padding without a mask: the logits of real tokens equal the unpadded sample's, whichever id pads."""
    rows = [{"input_ids": [1, 5, 6], "labels": [IGNORE_INDEX, 6, 2], "index": 0},
            {"input_ids": [1, 7], "labels": [IGNORE_INDEX, 7], "index": 1}]
    batch = PaddingCollator(tokenizer, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (2, 8) and "attention_mask" not in batch
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 7] + [IGNORE_INDEX] * 6
    assert int(batch["num_tokens"]) == 5
    model = load_causal_lm("models/tiny_llama", "fp32").eval()
    with torch.no_grad():
        for pad_id in (tokenizer.pad_token_id, 9):
            input_ids = batch["input_ids"].clone()
            for i, row in enumerate(rows):
                input_ids[i, len(row["input_ids"]):] = pad_id
            logits = model(input_ids=input_ids).logits
            for i, row in enumerate(rows):
                alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
                torch.testing.assert_close(logits[i, :len(row["input_ids"])], alone, atol=1e-5, rtol=0)


def test_bad_record_names_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: empty response"):
        InstructionDataset(str(path), tokenizer)
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b"\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        InstructionDataset(str(path), tokenizer)
