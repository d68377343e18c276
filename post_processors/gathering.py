"""Merge the predictions every rank made for its share of the items."""
from collections import Counter


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
