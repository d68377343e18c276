"""Lists of dataset rows → padded tensors. Padding positions get label -100 and are never attended to by a
real token; which token id pads is irrelevant to the loss.

The batch contract the trainer relies on: model inputs (`input_ids`, optional `attention_mask`,
`position_ids`, ...) plus metadata it never feeds the model: `labels`, `index` (dataset indices),
`num_tokens` (non-pad tokens) and `num_samples` (samples, which differ from rows when packing); a
sequence-parallel shard (modules/sequence_parallel.py) carries `shift_labels` (next-token targets) instead of `labels`.

A dataset row is `{"input_ids", "labels", "index"}` and, from `data.datasets`, `seq_lens`: the lengths
of the samples packed into it (one entry unless the dataset was built with `packing: true`).
"""
import torch

from data.labels import IGNORE_INDEX
from data.packing import block_causal_mask, segment_positions
from general_util.errors import ConfigError

BATCH_METADATA = ("labels", "shift_labels", "index", "num_tokens", "num_samples", "ref_logps")
MASKED_ATTENTION = ("eager", "sdpa")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The model's inputs of a batch (everything but the metadata), on `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in BATCH_METADATA}


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; set tokenizer.pad_token in the config")
    return tokenizer.pad_token_id


def _padded(rows: list[dict], pad_token_id: int, pad_to_multiple_of: int) -> dict[str, torch.Tensor]:
    longest = max(len(row["input_ids"]) for row in rows)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.as_tensor(row["input_ids"])
        labels[i, :n] = torch.as_tensor(row["labels"])
    return {"input_ids": input_ids, "labels": labels, "index": torch.tensor([row["index"] for row in rows])}


class PaddingCollator:
    """One sample per row, padded on the right, and no attention mask: under causal attention a real
    token only attends to the positions before it, which are all real, and padding positions carry no
    label, so a mask would change nothing that is trained or scored; without one, SDPA keeps its fast
    causal kernel (the masked path cost ~12% per step on the small model of bench/train_throughput.py)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int = 1):
        self.pad_token_id = _pad_token_id(tokenizer)
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if any(len(row.get("seq_lens", ())) > 1 for row in rows):
            raise ConfigError("the dataset packs several samples per row (packing: true); use "
                             "collator._target_=data.collators.PackedCollator")
        batch = _padded(rows, self.pad_token_id, self.pad_to_multiple_of)
        num_tokens = torch.tensor(sum(len(row["input_ids"]) for row in rows))
        return {**batch, "num_tokens": num_tokens, "num_samples": torch.tensor(len(rows))}


class PreferenceCollator:
    """Rows of preference pairs (data.datasets.PreferenceDataset: `seq_lens` [chosen, rejected]) → 2B rows, the B
    chosen sides first, then the B rejected sides in the same order (TRL's layout), padded on the right without an
    attention mask (as PaddingCollator). `num_samples` counts pairs. Rows carrying precomputed reference
    log-probabilities (`ref_logps`: chosen, rejected) give `ref_logps` [2B] in the same order."""

    def __init__(self, tokenizer, pad_to_multiple_of: int = 1):
        self.pad_token_id = _pad_token_id(tokenizer)
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        sides = [[], []]
        for row in rows:
            lengths = list(row.get("seq_lens", ()))
            if len(lengths) != 2:
                raise ConfigError("PreferenceCollator needs rows of pairs (data.datasets.PreferenceDataset)")
            for side, (start, end) in zip(sides, ((0, lengths[0]), (lengths[0], sum(lengths)))):
                side.append({"input_ids": row["input_ids"][start:end], "labels": row["labels"][start:end],
                             "index": row["index"]})
        batch = _padded(sides[0] + sides[1], self.pad_token_id, self.pad_to_multiple_of)
        batch["index"] = torch.tensor([row["index"] for row in rows])
        if all("ref_logps" in row for row in rows):
            batch["ref_logps"] = torch.tensor([row["ref_logps"][k] for k in (0, 1) for row in rows], dtype=torch.float64)
        num_tokens = torch.tensor(sum(len(row["input_ids"]) for row in rows))
        return {**batch, "num_tokens": num_tokens, "num_samples": torch.tensor(len(rows))}


class PackedCollator:
    """Rows holding several samples (`seq_lens`), each isolated: position ids restart at 0 for every
    sample, and attention cannot cross a sample boundary.

    `attn_implementation` must be the model's (`${model.attn_implementation}`):
      sdpa      4-D boolean block-causal mask (True = attend), as transformers' sdpa path expects
      eager     the same mask as additive float32 (0 / finfo.min), as eager attention adds it
      flash_*   every sample of the batch concatenated into one row without padding, position ids only;
                transformers then runs flash-attention's variable-length kernel (its padding-free format)
    A 4-D mask is passed to the model as it is (transformers.masking_utils returns 4-D masks unchanged).
    """

    def __init__(self, tokenizer, attn_implementation: str, pad_to_multiple_of: int = 1):
        if attn_implementation not in MASKED_ATTENTION and not attn_implementation.startswith("flash"):
            raise ConfigError(f"attn_implementation={attn_implementation!r}: packing supports "
                             f"{', '.join(MASKED_ATTENTION)} and flash_attention_*")
        self.pad_token_id = _pad_token_id(tokenizer)
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        self.attn_implementation = attn_implementation

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seq_lens = [list(row.get("seq_lens", [len(row["input_ids"])])) for row in rows]
        meta = {"num_tokens": torch.tensor(sum(map(sum, seq_lens))),
                "num_samples": torch.tensor(sum(map(len, seq_lens)))}
        if self.attn_implementation.startswith("flash"):
            input_ids, labels = (torch.cat([torch.as_tensor(row[key], dtype=torch.long) for row in rows])[None]
                                 for key in ("input_ids", "labels"))
            _, positions = segment_positions([n for lens in seq_lens for n in lens], input_ids.shape[1])
            return {"input_ids": input_ids, "labels": labels, "position_ids": positions[None],
                    "index": torch.tensor([row["index"] for row in rows]), **meta}
        batch = _padded(rows, self.pad_token_id, self.pad_to_multiple_of)
        length = batch["input_ids"].shape[1]
        segments, positions = zip(*(segment_positions(lens, length) for lens in seq_lens))
        mask = block_causal_mask(torch.stack(segments))
        if self.attn_implementation == "eager":
            mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return {**batch, "attention_mask": mask, "position_ids": torch.stack(positions), **meta}
