"""Run each rank's share of an evaluation in lockstep, and merge the predictions every rank made."""
from collections import Counter
from collections.abc import Callable

import torch

from general_util.dist import all_reduce


def merge_by_index(shards: list[list[dict]], num_items: int) -> list[dict]:
    """All ranks' predictions in item order, checked to hold exactly one per item index 0..num_items-1."""
    merged = sorted((p for shard in shards for p in shard), key=lambda p: p["index"])
    counts = Counter(p["index"] for p in merged)
    if len(merged) != num_items or set(counts) != set(range(num_items)):
        missing = [i for i in range(num_items) if i not in counts]
        extra = sorted(i for i, n in counts.items() if n > 1 or not 0 <= i < num_items)
        raise RuntimeError(f"gathered {len(merged)} predictions for {num_items} items: "
                           f"missing indices {missing[:10]}, duplicated or unknown {extra[:10]}")
    return merged


def run_in_lockstep(batches: list, run: Callable[[object], list], device: torch.device, stand_in,
                    on_batch: Callable[[object], None] = lambda batch: None) -> list:
    """`run` over this rank's `batches`, the results concatenated. Every rank calls `run` the same number of
    times (the most batches any rank has, agreed by an all-reduce MAX): ZeRO-3 gathers parameters inside
    forward, so a rank that stopped early would hang the others. The extra calls run `stand_in` (a batch the
    rank can compute, e.g. its first) and their results are discarded. `on_batch` follows every real batch."""
    num_batches = int(all_reduce(torch.tensor([len(batches)], device=device), "max").item())
    results = []
    for b in range(num_batches):
        if b < len(batches):
            results.extend(run(batches[b]))
            on_batch(batches[b])
        else:
            run(stand_in)
    return results
