"""Lists of examples → padded tensors. Padding positions get label -100 and attention 0; which token id
pads is irrelevant to the loss.

The batch contract the trainer relies on: model inputs (`input_ids`, optional `attention_mask`,
`position_ids`, ...) plus metadata it never feeds the model: `labels`, `index` (dataset indices),
`num_tokens` (non-pad tokens) and `num_samples` (samples, which differ from rows when packing).
"""
import torch

from data.sft import IGNORE_INDEX

BATCH_METADATA = ("labels", "index", "num_tokens", "num_samples")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The model's inputs of a batch (everything but the metadata), on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in BATCH_METADATA}


class PaddingCollator:
    def __init__(self, tokenizer, pad_to_multiple_of: int = 1):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token in the config")
        self.pad_token_id = tokenizer.pad_token_id
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        length = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "index": torch.tensor([e["index"] for e in examples]),
                "num_tokens": attention_mask.sum(), "num_samples": torch.tensor(len(examples))}
