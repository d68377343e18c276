"""Metrics of multiple-choice predictions: accuracy overall (micro average over labelled items), per
subject and per category where items have them, and the counts that qualify the numbers."""
from collections import defaultdict

ACCURACIES = (("acc", "correct"), ("acc_norm", "correct_norm"))  # metric, prediction field
GROUPS = ("subject", "category")


def accuracies(predictions: list[dict]) -> dict[str, float]:
    """Mean of each correctness field over the predictions that have a gold answer."""
    metrics = {}
    for metric, field in ACCURACIES:
        values = [p[field] for p in predictions if p.get(field) is not None]
        if values:
            metrics[metric] = sum(values) / len(values)
    return metrics


def multiple_choice_metrics(predictions: list[dict]) -> dict[str, float]:
    """`acc`/`acc_norm` (log-likelihood) or `acc` (generation), `<group>/<name>/<metric>` for subjects and
    categories, `n` items, `labelled` items, `truncated` prompts and, for generation, `unparsable` answers."""
    metrics = {"n": len(predictions), "labelled": sum(p["gold"] is not None for p in predictions),
               **accuracies(predictions)}
    for group in GROUPS:
        members = defaultdict(list)
        for p in predictions:
            if p.get(group) is not None:
                members[p[group]].append(p)
        for name in sorted(members):
            metrics.update({f"{group}/{name}/{k}": v for k, v in accuracies(members[name]).items()})
    metrics["truncated"] = sum(p["truncated"] for p in predictions)
    if any("generation" in p for p in predictions):
        metrics["unparsable"] = sum(p["prediction"] is None for p in predictions)
    return metrics
