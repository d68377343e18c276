import torch
import torch.nn.functional as F

from data.labels import IGNORE_INDEX


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Each position's target: the next position's label (-100 after the last)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def batch_targets(batch: dict) -> torch.Tensor:
    """A batch's next-token targets: its `shift_labels` when the labels were shifted before the rows were
    split (sequence parallelism, modules/sequence_parallel.py), else its shifted `labels`."""
    return batch["shift_labels"] if "shift_labels" in batch else next_token_targets(batch["labels"])


def target_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of each position's logits against its target, over targets that are not -100
    (fp32 accumulation). The caller divides by the number of targets of the whole global batch, so the loss
    does not depend on how the batch is split across ranks and accumulation steps."""
    logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.to(logits.device).reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over positions whose label is not -100.
    Shifts the labels, not the logits: slicing the logits would copy them (and their gradient) every step."""
    return target_loss_sum(logits, next_token_targets(labels))


def count_targets(targets: torch.Tensor) -> torch.Tensor:
    """Number of positions `target_loss_sum` counts."""
    return (targets != IGNORE_INDEX).sum()


def count_label_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions `token_loss_sum` counts."""
    return count_targets(next_token_targets(labels))
