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
from data.packing import attention_window, block_causal_mask, segment_positions
from general_util.errors import ConfigError

BATCH_METADATA = ("labels", "shift_labels", "index", "num_tokens", "num_samples", "ref_logps", "kto_label",
                  "kl_input_ids", "kl_labels")
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
            raise ConfigError("the dataset packs several samples per row: set the data node's packing: true, "
                             "which picks data.collators.PackedCollator (base.yaml's collator)")
        batch = _padded(rows, self.pad_token_id, self.pad_to_multiple_of)
        num_tokens = torch.tensor(sum(len(row["input_ids"]) for row in rows))
        return {**batch, "num_tokens": num_tokens, "num_samples": torch.tensor(len(rows))}


class PreferenceCollator:
    """Rows of preference pairs (data.datasets.PreferenceDataset: `seq_lens` [chosen, rejected]) → 2B rows, the B
    chosen sides first, then the B rejected sides in the same order (TRL's layout), padded on the right without an
    attention mask (as PaddingCollator). `num_samples` counts pairs. Rows carrying precomputed reference
    log-probabilities (`ref_logps`: chosen, rejected) give `ref_logps` [2B] in the same order. `packing` and
    `attn_implementation` come from base.yaml's `collator` node (the data node's packing, the model's attention):
    pairs are never packed, and padded rows need nothing of the attention implementation."""

    def __init__(self, tokenizer, pad_to_multiple_of: int = 1, packing: bool = False, attn_implementation: str = ""):
        if packing:
            raise ConfigError("train_dataset.packing=true: preference pairs are not packed (a row holds one pair); "
                              "set train_dataset.packing=false")
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


class KtoCollator(PreferenceCollator):
    """Rows of KTO examples (data.datasets.KtoDataset: one example and its `label`) → B rows padded as
    PaddingCollator, `kto_label` [B] (bool), and the B mismatched rows TRL's KTOTrainer estimates the KL term from:
    `kl_input_ids`, `kl_labels` [B], row i = row i's prompt + row i-1's completion (row 0 takes the last row's),
    the completions rotated by one within the micro-batch as TRL does (trl 1.16.0 KTOTrainer `_prepare_dataset`,
    `add_kl_completion_ids`); a completion is the row's labelled tokens, its prompt what precedes them (token ids
    joined as TRL joins prompt and completion ids). A mismatched row longer than the micro-batch's longest row loses
    the tail of its completion. `num_samples` counts the examples."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not all("label" in row and len(row.get("seq_lens", ())) == 1 for row in rows):
            raise ConfigError("KtoCollator needs rows of KTO examples (data.datasets.KtoDataset)")
        batch = _padded(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch["kto_label"] = torch.tensor([bool(row["label"]) for row in rows])
        parts = []
        for row in rows:
            scored = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
            parts.append((list(row["input_ids"][:scored[0]]), list(row["input_ids"][scored[0]:scored[-1] + 1])))
        longest = max(len(row["input_ids"]) for row in rows)
        mismatched = []
        for i, (prompt, _) in enumerate(parts):
            completion = parts[i - 1][1][:longest - len(prompt)]
            mismatched.append({"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion,
                               "index": rows[i]["index"]})
        kl = _padded(mismatched, self.pad_token_id, self.pad_to_multiple_of)
        batch["kl_input_ids"], batch["kl_labels"] = kl["input_ids"], kl["labels"]
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
    A 4-D mask is passed to the model as it is (transformers.masking_utils returns 4-D masks unchanged), so a
    model's sliding window (Mistral) must be in it: `sliding_window`, set from the model by `fit_to_model`.
    """

    def __init__(self, tokenizer, attn_implementation: str, pad_to_multiple_of: int = 1,
                 sliding_window: int | None = None):
        if attn_implementation not in MASKED_ATTENTION and not attn_implementation.startswith("flash"):
            raise ConfigError(f"attn_implementation={attn_implementation!r}: packing supports "
                             f"{', '.join(MASKED_ATTENTION)} and flash_attention_*")
        self.pad_token_id = _pad_token_id(tokenizer)
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        self.attn_implementation = attn_implementation
        self.sliding_window = sliding_window

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
        mask = block_causal_mask(torch.stack(segments), self.sliding_window)
        if self.attn_implementation == "eager":
            mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return {**batch, "attention_mask": mask, "position_ids": torch.stack(positions), **meta}


def fit_to_model(collator, model_config) -> None:
    """Give a PackedCollator the model's sliding attention window (flash attention applies it from the model's
    config itself; a 4-D mask must carry it); other collators need nothing from the model."""
    if isinstance(collator, PackedCollator) and not collator.attn_implementation.startswith("flash"):
        try:
            collator.sliding_window = attention_window(model_config)
        except ValueError as error:
            raise ConfigError(f"packing with attn_implementation={collator.attn_implementation}: {error}") from None


def training_collator(tokenizer, packing: bool, attn_implementation: str, pad_to_multiple_of: int = 1):
    """The training batches' collator, picked by the data node's `packing` (conf/base.yaml `collator`): packed
    rows need their samples isolated for the model's attention implementation, one sample per row is padded."""
    if packing:
        return PackedCollator(tokenizer, attn_implementation, pad_to_multiple_of)
    return PaddingCollator(tokenizer, pad_to_multiple_of)
