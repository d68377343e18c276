"""Packing: several samples per row, each isolated from its neighbours.

`pack_lengths` decides which samples share a row (when the token cache is built). The collator then
gives each sample its own position ids (restarting at 0) and an attention pattern that cannot cross
into the neighbouring sample: `segment_ids` + `block_causal_mask` for eager/sdpa attention, or position
ids alone for flash-attention's variable-length kernel.
"""
from bisect import bisect_left, insort

import torch


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: sample indices grouped into rows of total length ≤ `capacity`. Deterministic;
    rows are ordered by their first sample, samples within a row by index."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"a sample of {length} tokens does not fit a row of {capacity}")
        slot = bisect_left(free, (length, -1))
        if slot < len(free):
            room, row = free.pop(slot)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        if room > length:
            insort(free, (room - length, row))
    return sorted(sorted(row) for row in rows)


def segment_positions(seq_lens: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment ids, position ids) of one row of `length` slots holding samples of `seq_lens`; the padding
    after them is a segment of its own, so no query is left without a key to attend to."""
    lens = [n for n in seq_lens if n > 0] + ([length - sum(seq_lens)] if length > sum(seq_lens) else [])
    segments = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    positions = torch.cat([torch.arange(n) for n in lens])
    return segments, positions


def block_causal_mask(segment_ids: torch.Tensor, sliding_window: int | None = None) -> torch.Tensor:
    """(batch, 1, L, L) boolean mask, True where query i may attend key j: same segment and j ≤ i, and with a
    `sliding_window` (Mistral's) also i - j < sliding_window, as the model's own mask for one sample has it."""
    length = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if sliding_window:
        causal &= torch.ones(length, length, dtype=torch.bool).triu(-(sliding_window - 1))
    return (same & causal)[:, None]


def attention_window(config) -> int | None:
    """The sliding attention window every layer of a model applies (Mistral's `sliding_window`), or None for
    full attention; a ValueError when only some layers slide (Qwen2 with use_sliding_window, `layer_types`
    mixing both): one packed mask cannot serve both kinds of layer."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if "sliding_attention" not in kinds:
        return None
    if kinds != {"sliding_attention"}:
        raise ValueError(f"some layers use a sliding window of {window} and others full attention "
                         f"({sorted(kinds)}); packed rows need attn_implementation=flash_attention_2 for that")
    return window
