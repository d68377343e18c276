"""Run each rank's share of an evaluation in lockstep, and merge the predictions every rank made."""
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from general_util.dist import all_reduce, current, gather_objects, shard_range
from general_util.logging import progress_bar


def merge_by_index(predictions: list[dict], num_items: int) -> list[dict]:
    """All ranks' predictions in item order, checked to hold exactly one per item index 0..num_items-1."""
    merged = sorted(predictions, key=lambda p: p["index"])
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


def evaluate_in_lockstep(items: Sequence[int], run: Callable[[list[int]], list], batch_size: int, description: str,
                         length: Callable[[int], int] | None = None, unit: str = "item") -> list:
    """Every rank's results of `run(batch of items)` over all of `items` (item indices), on every rank, in rank
    order: this rank takes its contiguous share (`shard_range`: no item twice), longest first by `length` (None:
    in order; batches of similar length pad little, as lm-eval sorts), in batches of `batch_size`, run in
    lockstep with the other ranks (`run_in_lockstep`; a rank with fewer batches runs its first one again, one
    without items the first item, and drops those results), under one progress bar; then gathered."""
    ctx = current()
    share = [items[k] for k in shard_range(len(items), ctx.rank, ctx.world_size)]
    if length is not None:
        share.sort(key=lambda i: -length(i))
    batches = [share[k:k + batch_size] for k in range(0, len(share), batch_size)]
    with progress_bar(description, len(items), ctx, unit=unit) as bar:
        # ranks step together: a batch here stands for one on every rank
        local = run_in_lockstep(batches, run, ctx.device, batches[0] if batches else list(items[:1]),
                                lambda batch: bar.update(min(len(batch) * ctx.world_size, bar.total - bar.n)))
    return [result for shard in gather_objects(local) for result in shard]
